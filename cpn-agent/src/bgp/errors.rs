//! What a bad message costs (RFC 4271 §6, revised by RFC 7606): an attribute, the routes of
//! one UPDATE, or the session.
//!
//! - A message the codec cannot frame or decode ends the session with the NOTIFICATION RFC 4271
//!   §6 names ([`notification`]); so does any message over 4096 bytes ([`Codec`]: we do not
//!   offer RFC 8654 extended messages).
//! - A malformed attribute inside an UPDATE is cut out of it before netgauze reads the message
//!   (attributes.rs), and costs what RFC 7606 (and the attribute's own RFC) says ([`check`]):
//!   *attribute discard* for attributes that do not affect route selection, *treat-as-withdraw*
//!   for those that do, *session reset* only where the NLRI themselves cannot be trusted
//!   (`MP_REACH_NLRI` / `MP_UNREACH_NLRI`, or an UPDATE whose NLRI are nowhere to be seen).

use std::collections::HashMap;

use bytes::{Buf as _, BytesMut};
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::BgpCapability,
    codec::{BgpCodec, BgpCodecDecoderError},
    iana::PathAttributeType,
    nlri::{Ipv4UnicastAddress, Ipv6UnicastAddress},
    notification::{
        BgpNotificationMessage, MessageHeaderError, OpenMessageError, RouteRefreshError,
        UpdateMessageError,
    },
    open::BgpOpenMessage,
    path_attribute::{MpReach, PathAttributeValue},
    update::BgpUpdateMessage,
    wire::{
        deserializer::{
            BgpMessageParsingError, BgpParsingContext, update::BgpUpdateMessageParsingError,
        },
        serializer::BgpMessageWritingError,
    },
};
use netgauze_iana::address_family::AddressType;
use tokio_util::codec::{Decoder, Encoder};

use super::{
    attributes::{Fault, Malformed, Validator},
    route::{AddPath, Withdrawn},
};

/// RFC 4271 §4: the largest message without extended messages (RFC 8654).
pub const MAX_MESSAGE_LEN: u16 = 4096;
const HEADER_LEN: usize = 19;

/// The cost of one malformed attribute (RFC 7606 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    AttributeDiscard,
    TreatAsWithdraw,
    SessionReset,
}

/// What to do with one UPDATE.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Use it (`discarded` lists attributes dropped as malformed).
    Accept { discarded: Vec<String> },
    /// Every route it announces (`withdrawn`, whether or not it could be read as a route) is
    /// withdrawn instead (RFC 7606 §2).
    TreatAsWithdraw {
        why: String,
        withdrawn: Vec<Withdrawn>,
    },
    /// End the session with this NOTIFICATION.
    SessionReset {
        notification: BgpNotificationMessage,
        why: String,
    },
}

/// What only counts on iBGP: from an external neighbor these are discarded, whatever they
/// hold (RFC 7606 §7.5, §7.9, §7.10).
const INTERNAL_ONLY: [PathAttributeType; 3] = [
    PathAttributeType::LocalPreference,
    PathAttributeType::OriginatorId,
    PathAttributeType::ClusterList,
];

fn is_mp(code: u8) -> bool {
    code == PathAttributeType::MpReachNlri as u8 || code == PathAttributeType::MpUnreachNlri as u8
}

/// RFC 7606 §7 per attribute type code; `internal` for iBGP.
pub fn handling(code: u8, internal: bool) -> Handling {
    const TREAT_AS_WITHDRAW: [PathAttributeType; 8] = [
        PathAttributeType::Origin,                 // §7.1
        PathAttributeType::AsPath,                 // §7.2
        PathAttributeType::NextHop,                // §7.3
        PathAttributeType::MultiExitDiscriminator, // §7.4
        PathAttributeType::Communities,            // §7.8
        PathAttributeType::ExtendedCommunities,    // §7.14
        PathAttributeType::ExtendedCommunitiesIpv6,
        PathAttributeType::LargeCommunities, // RFC 8092 §6
    ];
    let is = |t: PathAttributeType| code == t as u8;
    if is_mp(code) {
        Handling::SessionReset // §7.11: the NLRI cannot be located
    } else if TREAT_AS_WITHDRAW.into_iter().any(is)
        || is(PathAttributeType::OnlyToCustomer) // RFC 9234 §5
        || (internal && INTERNAL_ONLY.into_iter().any(is))
    // §7.5, §7.9, §7.10
    {
        Handling::TreatAsWithdraw
    } else {
        // ATOMIC_AGGREGATE and AGGREGATOR (§7.6, §7.7), LOCAL_PREF, ORIGINATOR_ID and
        // CLUSTER_LIST over eBGP, AIGP (RFC 7311 §3.2), Prefix-SID (RFC 8669 §5), our CPN
        // metric attribute and unknown optional attributes.
        Handling::AttributeDiscard
    }
}

/// RFC 7606 §3 c: Optional or Transitive bits in conflict with the type's make it malformed
/// and cost treat-as-withdraw, unless the type's own rules say otherwise.
fn flags_handling(code: u8, internal: bool) -> Handling {
    let is = |t: PathAttributeType| code == t as u8;
    if is_mp(code) {
        Handling::SessionReset // §7.11, §3 j: treat-as-withdraw needs their NLRI read
    } else if is(PathAttributeType::AccumulatedIgp)
        || (!internal && INTERNAL_ONLY.into_iter().any(is))
    {
        // RFC 7311 §3.2 (any malformed AIGP); §7.5, §7.9, §7.10 over eBGP.
        Handling::AttributeDiscard
    } else {
        Handling::TreatAsWithdraw
    }
}

/// What one attribute cut out of an UPDATE costs.
fn cost(attribute: &Malformed, internal: bool) -> Handling {
    let mp = attribute.code.is_some_and(is_mp);
    match attribute.fault {
        Fault::Value(_) => attribute
            .code
            .map_or(Handling::TreatAsWithdraw, |c| handling(c, internal)),
        Fault::Flags(_) => attribute
            .code
            .map_or(Handling::TreatAsWithdraw, |c| flags_handling(c, internal)),
        // §3 g: only the first of each is kept, and a second MP_REACH or MP_UNREACH is fatal.
        // §4 relies on the Total Attribute Length to find the NLRI field, but the NLRI of an
        // MP_REACH or MP_UNREACH cut short are lost (§3 j).
        Fault::Repeated | Fault::Framing if mp => Handling::SessionReset,
        Fault::Repeated => Handling::AttributeDiscard,
        Fault::Framing => Handling::TreatAsWithdraw,
    }
}

/// The NOTIFICATION for an attribute that resets the session (RFC 4271 §6.3).
fn reset_notification(attribute: &Malformed) -> BgpNotificationMessage {
    let value = Box::new([]);
    BgpNotificationMessage::UpdateMessageError(match attribute.fault {
        Fault::Flags(_) => UpdateMessageError::AttributeFlagsError { value },
        Fault::Value(_) => UpdateMessageError::OptionalAttributeError { value },
        Fault::Repeated | Fault::Framing => UpdateMessageError::MalformedAttributeList { value },
    })
}

/// RFC 7606 for one UPDATE: the attributes the codec cut out of it (`malformed`), then missing
/// well-known attributes (§3 d) and NLRI that cannot be withdrawn (§5.2).
pub fn check(update: &BgpUpdateMessage, malformed: &[Malformed], internal: bool) -> Verdict {
    let mut discarded = Vec::new();
    let mut withdraw = None;
    // §3 h: the strongest cost of all wins.
    for attribute in malformed {
        match cost(attribute, internal) {
            Handling::AttributeDiscard => discarded.push(attribute.to_string()),
            Handling::TreatAsWithdraw => {
                withdraw.get_or_insert_with(|| attribute.to_string());
            }
            Handling::SessionReset => {
                return Verdict::SessionReset {
                    notification: reset_notification(attribute),
                    why: attribute.to_string(),
                };
            }
        }
    }
    let announced = announced(update);
    if !announced.is_empty() && withdraw.is_none() {
        withdraw = missing(update).map(|name| format!("missing well-known attribute {name}"));
    }
    match withdraw {
        None => Verdict::Accept { discarded },
        // §5.2: without NLRI, the attribute that made this UPDATE malformed may have been
        // hiding them, so there is nothing trustworthy to withdraw.
        Some(why) if announced.is_empty() => Verdict::SessionReset {
            notification: BgpNotificationMessage::UpdateMessageError(
                UpdateMessageError::MalformedAttributeList {
                    value: Box::new([]),
                },
            ),
            why: format!("{why}, in an UPDATE that announces nothing (RFC 7606 §5.2)"),
        },
        Some(why) => Verdict::TreatAsWithdraw {
            why,
            withdrawn: announced,
        },
    }
}

/// The well-known mandatory attribute an announcing UPDATE lacks (RFC 7606 §3 d); `NEXT_HOP` is
/// only needed by NLRI outside `MP_REACH_NLRI` (RFC 4760 §3).
fn missing(update: &BgpUpdateMessage) -> Option<&'static str> {
    let has =
        |f: fn(&PathAttributeValue) -> bool| update.path_attributes().iter().any(|a| f(a.value()));
    if !has(|v| matches!(v, PathAttributeValue::Origin(_))) {
        Some("ORIGIN")
    } else if !has(|v| matches!(v, PathAttributeValue::AsPath(_))) {
        Some("AS_PATH")
    } else if !update.nlri().is_empty() && !has(|v| matches!(v, PathAttributeValue::NextHop(_))) {
        Some("NEXT_HOP")
    } else {
        None
    }
}

/// Every unicast prefix an UPDATE announces, with its path id, in or outside `MP_REACH_NLRI`.
fn announced(update: &BgpUpdateMessage) -> Vec<Withdrawn> {
    let v4 = |a: &Ipv4UnicastAddress| Withdrawn {
        prefix: a.network().address().into(),
        path_id: a.path_id().unwrap_or(0),
    };
    let v6 = |a: &Ipv6UnicastAddress| Withdrawn {
        prefix: a.network().address().into(),
        path_id: a.path_id().unwrap_or(0),
    };
    let mut announced: Vec<Withdrawn> = update.nlri().iter().map(v4).collect();
    for attribute in update.path_attributes() {
        match attribute.value() {
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast { nlri, .. }) => {
                announced.extend(nlri.iter().map(v6));
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast { nlri, .. }) => {
                announced.extend(nlri.iter().map(v4));
            }
            _ => {}
        }
    }
    announced
}

/// The NOTIFICATION for a message that could not be decoded (RFC 4271 §6.1-6.3, RFC 7313
/// §5), or `None` for a broken NOTIFICATION (never answered) and I/O errors.
pub fn notification(error: &BgpCodecDecoderError) -> Option<BgpNotificationMessage> {
    use BgpMessageParsingError as M;
    let BgpCodecDecoderError::BgpMessageParsingError(error) = error else {
        return None;
    };
    let header = |e: MessageHeaderError| Some(BgpNotificationMessage::MessageHeaderError(e));
    let update = |e: UpdateMessageError| Some(BgpNotificationMessage::UpdateMessageError(e));
    match error {
        M::ConnectionNotSynchronized { .. } => {
            header(MessageHeaderError::ConnectionNotSynchronized {
                value: Box::new([]),
            })
        }
        M::BadMessageLength { length, .. } | M::UnparseableBytes { length, .. } => {
            header(MessageHeaderError::BadMessageLength {
                value: Box::new(length.to_be_bytes()),
            })
        }
        M::UndefinedBgpMessageType { code, .. } => header(MessageHeaderError::BadMessageType {
            value: Box::new([*code]),
        }),
        M::Parse(_) => header(MessageHeaderError::Unspecific {
            value: Box::new([]),
        }),
        M::BgpOpenMessageParsingError(_) => Some(BgpNotificationMessage::OpenMessageError(
            OpenMessageError::Unspecific {
                value: Box::new([]),
            },
        )),
        M::BgpUpdateMessageParsingError(
            BgpUpdateMessageParsingError::Ipv4PrefixError(_)
            | BgpUpdateMessageParsingError::InvalidIpv4UnicastNetwork { .. },
        ) => update(UpdateMessageError::InvalidNetworkField {
            value: Box::new([]),
        }),
        M::BgpUpdateMessageParsingError(_) => update(UpdateMessageError::MalformedAttributeList {
            value: Box::new([]),
        }),
        M::BgpRouteRefreshMessageParsingError(_) => Some(
            BgpNotificationMessage::RouteRefreshError(RouteRefreshError::InvalidMessageLength {
                value: Box::new([]),
            }),
        ),
        M::BgpNotificationMessageParsingError(_) => None,
    }
}

/// netgauze's codec held to [`MAX_MESSAGE_LEN`] for every message type (netgauze itself allows
/// RFC 8654 sizes for UPDATEs, which we never negotiate), with each UPDATE's malformed
/// attributes cut out before netgauze reads it; each message comes with the attributes cut.
#[derive(Debug)]
pub struct Codec {
    netgauze: BgpCodec,
    attributes: Validator,
    /// Whether our OPEN and the peer's offer 4-byte AS numbers: netgauze reads them only when
    /// both do, and attributes read alone must be read alike.
    asn4_sent: bool,
    asn4_received: bool,
}

impl Codec {
    /// A session's codec: path identifiers in the `add_path` families (once ADD-PATH is
    /// negotiated), the CPN metric attribute under `metric_code`.
    pub fn new(add_path: AddPath, metric_code: u8) -> Self {
        let families = HashMap::from([
            (AddressType::Ipv6Unicast, add_path.ipv6),
            (AddressType::Ipv4Unicast, add_path.ipv4),
        ]);
        // Every malformed attribute is cut out before netgauze reads a message, so one it
        // would still find fails the message instead of going through its recovery.
        let context =
            BgpParsingContext::new(true, HashMap::new(), families, false, false, false, true);
        Self {
            netgauze: BgpCodec::new_from_ctx(true, context.clone()),
            attributes: Validator::new(context, metric_code),
            asn4_sent: true,
            asn4_received: true,
        }
    }
}

fn offers_asn4(open: &BgpOpenMessage) -> bool {
    open.capabilities()
        .into_iter()
        .any(|c| matches!(c, BgpCapability::FourOctetAs(_)))
}

impl Decoder for Codec {
    type Item = (BgpMessage, Vec<Malformed>);
    type Error = BgpCodecDecoderError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = u16::from_be_bytes([buf[16], buf[17]]);
        if length > MAX_MESSAGE_LEN {
            return Err(BgpCodecDecoderError::BgpMessageParsingError(
                BgpMessageParsingError::BadMessageLength { offset: 16, length },
            ));
        }
        let length = usize::from(length);
        if buf.len() < length {
            return Ok(None);
        }
        self.attributes
            .set_asn4(self.asn4_sent && self.asn4_received);
        let (decoded, malformed) = match self.attributes.clean(&buf[..length]) {
            Some(cleaned) => {
                buf.advance(length);
                let mut message = BytesMut::from(&cleaned.message[..]);
                (self.netgauze.decode(&mut message)?, cleaned.malformed)
            }
            None => (self.netgauze.decode(buf)?, Vec::new()),
        };
        if let Some((BgpMessage::Open(open), _)) = &decoded {
            self.asn4_received = offers_asn4(open);
        }
        // What netgauze itself let pass (NLRI of other families in the NLRI field, unknown
        // capabilities) costs nothing.
        Ok(decoded.map(|(message, _)| (message, malformed)))
    }
}

impl Encoder<BgpMessage> for Codec {
    type Error = BgpMessageWritingError;

    fn encode(&mut self, message: BgpMessage, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if let BgpMessage::Open(open) = &message {
            self.asn4_sent = offers_asn4(open);
        }
        self.netgauze.encode(message, dst)
    }
}

#[cfg(test)]
mod tests {
    //! RFC 7606 at our boundary: raw bytes through the session codec, then [`check`].

    use std::net::Ipv6Addr;

    use super::*;
    use crate::bgp::{metric_attr, speaker::codec};

    const METRIC_CODE: u8 = metric_attr::DEFAULT_TYPE_CODE;
    const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
    const EMPTY_AS_PATH: [u8; 3] = [0x40, 2, 0];
    /// IPv4 NLRI outside `MP_REACH_NLRI`: 198.51.100.1/32.
    const CLASSIC_NLRI: [u8; 5] = [32, 198, 51, 100, 1];

    fn v6(address: &str) -> [u8; 16] {
        address.parse::<Ipv6Addr>().unwrap().octets()
    }

    /// An attribute with a 1-byte length.
    fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![flags, code, u8::try_from(value.len()).unwrap()];
        out.extend_from_slice(value);
        out
    }

    /// The value of an IPv6 unicast `MP_REACH_NLRI`.
    fn mp_reach_value(next_hop: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut value = vec![0, 2, 1, u8::try_from(next_hop.len()).unwrap()];
        value.extend_from_slice(next_hop);
        value.push(0);
        value.extend_from_slice(nlri);
        value
    }

    /// `fc00::5/128` as NLRI.
    fn nlri_fc00_5() -> Vec<u8> {
        let mut nlri = vec![128];
        nlri.extend_from_slice(&v6("fc00::5"));
        nlri
    }

    /// `MP_REACH_NLRI` announcing `fc00::5/128` via `fe80::1`.
    fn mp_reach() -> Vec<u8> {
        attr(0x80, 14, &mp_reach_value(&v6("fe80::1"), &nlri_fc00_5()))
    }

    /// What `mp_reach` announces, withdrawn.
    fn its_route() -> Vec<Withdrawn> {
        vec![Withdrawn {
            prefix: "fc00::5/128".parse().unwrap(),
            path_id: 0,
        }]
    }

    fn aigp_value(metric: u64) -> Vec<u8> {
        let mut value = vec![1, 0, 11];
        value.extend_from_slice(&metric.to_be_bytes());
        value
    }

    /// Prefix-SID: SRv6 L3 Service TLV, SID Information sub-TLV for `fc00:1::d6`, End.DT6.
    fn prefix_sid_value() -> Vec<u8> {
        let mut value = vec![5, 0, 25, 0, 1, 0, 21, 0];
        value.extend_from_slice(&v6("fc00:1::d6"));
        value.extend_from_slice(&[0, 0, 18, 0]);
        value
    }

    fn metrics_value() -> Vec<u8> {
        metric_attr::encode(&metric_attr::CpnMetrics {
            node: "edge1".into(),
            normalisation: "cpn-norm-v1".into(),
            ..metric_attr::CpnMetrics::default()
        })
    }

    /// One well-formed attribute of each type we read, `MP_REACH_NLRI` first: (type, bytes).
    fn well_formed() -> Vec<(u8, Vec<u8>)> {
        vec![
            (14, mp_reach()),
            (1, ORIGIN_IGP.to_vec()),
            (2, attr(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xe9])),
            (3, attr(0x40, 3, &[10, 0, 0, 2])),
            (4, attr(0x80, 4, &[0, 0, 0, 10])),
            (5, attr(0x40, 5, &[0, 0, 0, 100])),
            (6, attr(0x40, 6, &[])),
            (7, attr(0xc0, 7, &[0, 0, 0xfd, 0xe9, 10, 0, 0, 1])),
            (8, attr(0xc0, 8, &[0xfd, 0xe9, 0, 1])),
            (9, attr(0x80, 9, &[10, 0, 0, 1])),
            (10, attr(0x80, 10, &[10, 0, 0, 9])),
            // Link Bandwidth, AS 65001, 2e9 operations per second.
            (
                16,
                attr(0xc0, 16, &[0x40, 4, 0xfd, 0xe9, 0x4e, 0xee, 0x6b, 0x28]),
            ),
            (26, attr(0x80, 26, &aigp_value(2500))),
            (
                32,
                attr(0xc0, 32, &[0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2]),
            ),
            (40, attr(0xc0, 40, &prefix_sid_value())),
            (METRIC_CODE, attr(0xc0, METRIC_CODE, &metrics_value())),
        ]
    }

    /// A message of this type with this body.
    fn message(kind: u8, body: &[u8]) -> BytesMut {
        let mut out = vec![0xff; 16];
        out.extend_from_slice(
            &u16::try_from(HEADER_LEN + body.len())
                .unwrap()
                .to_be_bytes(),
        );
        out.push(kind);
        out.extend_from_slice(body);
        BytesMut::from(&out[..])
    }

    /// An UPDATE with these raw path attributes and NLRI outside `MP_REACH_NLRI`.
    fn update_with_nlri(attributes: &[&[u8]], nlri: &[u8]) -> BytesMut {
        let attrs: Vec<u8> = attributes.concat();
        let mut body = vec![0, 0];
        body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        body.extend(attrs);
        body.extend_from_slice(nlri);
        message(2, &body)
    }

    fn update(attributes: &[&[u8]]) -> BytesMut {
        update_with_nlri(attributes, &[])
    }

    /// What the session codec and [`check`] make of one UPDATE.
    fn decode(bytes: &mut BytesMut, internal: bool) -> (BgpUpdateMessage, Verdict) {
        let (message, malformed) = codec(AddPath::default(), METRIC_CODE)
            .decode(bytes)
            .unwrap()
            .unwrap();
        let BgpMessage::Update(update) = message else {
            panic!("{message:?}")
        };
        let verdict = check(&update, &malformed, internal);
        (update, verdict)
    }

    fn verdict(bytes: &mut BytesMut, internal: bool) -> Verdict {
        decode(bytes, internal).1
    }

    fn decode_error(bytes: &mut BytesMut) -> Option<BgpNotificationMessage> {
        let error = codec(AddPath::default(), METRIC_CODE)
            .decode(bytes)
            .unwrap_err();
        notification(&error)
    }

    /// A malformed attribute and what RFC 7606 makes it cost over eBGP and over iBGP.
    struct Case {
        rule: &'static str,
        /// The type of the well-formed attribute it stands in for.
        code: u8,
        bytes: Vec<u8>,
        external: Handling,
        internal: Handling,
    }

    fn case(
        rule: &'static str,
        code: u8,
        bytes: Vec<u8>,
        external: Handling,
        internal: Handling,
    ) -> Case {
        Case {
            rule,
            code,
            bytes,
            external,
            internal,
        }
    }

    /// Puts each malformed attribute, instead of its well-formed one, first, in the middle,
    /// last and just before `MP_REACH_NLRI` among the well-formed others, over eBGP and iBGP;
    /// checks its cost, and that every other attribute and the NLRI survive (withdrawn, for
    /// treat-as-withdraw).
    fn assert_costs(cases: &[Case]) {
        for case in cases {
            let rest: Vec<Vec<u8>> = well_formed()
                .into_iter()
                .filter(|(code, _)| *code != case.code)
                .map(|(_, bytes)| bytes)
                .collect();
            let mut positions = vec![
                ("first", rest.clone(), 0),
                ("middle", rest.clone(), rest.len() / 2),
                ("last", rest.clone(), rest.len()),
            ];
            // ExaBGP's order.
            if rest[0] == mp_reach() {
                let mut reach_last = rest[1..].to_vec();
                reach_last.push(rest[0].clone());
                let at = reach_last.len() - 1;
                positions.push(("before MP_REACH_NLRI", reach_last, at));
            }
            for (position, others, at) in positions {
                let mut attributes = others.clone();
                attributes.insert(at, case.bytes.clone());
                let attributes: Vec<&[u8]> = attributes.iter().map(Vec::as_slice).collect();
                let others: Vec<&[u8]> = others.iter().map(Vec::as_slice).collect();
                for (internal, expected) in [(false, case.external), (true, case.internal)] {
                    let what = format!(
                        "{} ({position}, {})",
                        case.rule,
                        if internal { "iBGP" } else { "eBGP" }
                    );
                    let (update, verdict) = decode(&mut self::update(&attributes), internal);
                    match (expected, verdict) {
                        (Handling::SessionReset, Verdict::SessionReset { .. }) => continue,
                        (Handling::AttributeDiscard, Verdict::Accept { discarded }) => {
                            assert_eq!(discarded.len(), 1, "{what}: {discarded:?}");
                        }
                        (Handling::TreatAsWithdraw, Verdict::TreatAsWithdraw { withdrawn, .. }) => {
                            assert_eq!(withdrawn, its_route(), "{what}");
                        }
                        (expected, verdict) => panic!("{what}: {expected:?} expected, {verdict:?}"),
                    }
                    let (clean, _) = decode(&mut self::update(&others), internal);
                    assert_eq!(
                        update.path_attributes(),
                        clean.path_attributes(),
                        "{what}: the other attributes"
                    );
                }
            }
        }
    }

    #[test]
    fn every_well_formed_attribute_is_accepted_as_it_is() {
        let attributes: Vec<Vec<u8>> = well_formed().into_iter().map(|(_, a)| a).collect();
        let attributes: Vec<&[u8]> = attributes.iter().map(Vec::as_slice).collect();
        for internal in [false, true] {
            let (update, verdict) = decode(&mut update(&attributes), internal);
            assert_eq!(verdict, Verdict::Accept { discarded: vec![] });
            assert_eq!(update.path_attributes().len(), attributes.len());
        }
    }

    #[test]
    fn rfc7606_7_malformed_attributes_that_select_routes_withdraw_them() {
        use Handling::TreatAsWithdraw as W;
        assert_costs(&[
            case("§7.1 ORIGIN of length 2", 1, attr(0x40, 1, &[0, 0]), W, W),
            case("§7.1 ORIGIN 7", 1, attr(0x40, 1, &[7]), W, W),
            case(
                "§7.2 AS_PATH segment of type 9",
                2,
                attr(0x40, 2, &[9, 1, 0, 0, 0xfd, 0xe9]),
                W,
                W,
            ),
            case(
                "§7.2 AS_PATH segment longer than the attribute",
                2,
                attr(0x40, 2, &[2, 2, 0, 0, 0xfd, 0xe9]),
                W,
                W,
            ),
            case(
                "§7.2 AS_PATH segment of length 0",
                2,
                attr(0x40, 2, &[2, 0]),
                W,
                W,
            ),
            case(
                "§7.3 NEXT_HOP of length 5",
                3,
                attr(0x40, 3, &[10, 0, 0, 2, 0]),
                W,
                W,
            ),
            case("§7.4 MED of length 3", 4, attr(0x80, 4, &[0, 0, 10]), W, W),
            case(
                "§7.8 COMMUNITIES of length 5",
                8,
                attr(0xc0, 8, &[0xfd, 0xe9, 0, 1, 0]),
                W,
                W,
            ),
            case("§7.8 COMMUNITIES empty", 8, attr(0xc0, 8, &[]), W, W),
            case(
                "§7.14 EXTENDED_COMMUNITIES of length 7",
                16,
                attr(0xc0, 16, &[0x40, 4, 0xfd, 0xe9, 0x4e, 0xee, 0x6b]),
                W,
                W,
            ),
            case(
                "§7.14 EXTENDED_COMMUNITIES empty",
                16,
                attr(0xc0, 16, &[]),
                W,
                W,
            ),
            case(
                "RFC 8092 §6 LARGE_COMMUNITY of length 11",
                32,
                attr(0xc0, 32, &[0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0]),
                W,
                W,
            ),
            case(
                "RFC 8092 §6 LARGE_COMMUNITY empty",
                32,
                attr(0xc0, 32, &[]),
                W,
                W,
            ),
        ]);
    }

    #[test]
    fn rfc7606_7_5_7_9_7_10_local_pref_originator_id_cluster_list_withdraw_only_over_ibgp() {
        use Handling::{AttributeDiscard as D, TreatAsWithdraw as W};
        assert_costs(&[
            case(
                "§7.5 LOCAL_PREF of length 2",
                5,
                attr(0x40, 5, &[0, 100]),
                D,
                W,
            ),
            case(
                "§7.9 ORIGINATOR_ID of length 5",
                9,
                attr(0x80, 9, &[10, 0, 0, 1, 0]),
                D,
                W,
            ),
            case(
                "§7.10 CLUSTER_LIST of length 5",
                10,
                attr(0x80, 10, &[10, 0, 0, 9, 0]),
                D,
                W,
            ),
            case("§7.10 CLUSTER_LIST empty", 10, attr(0x80, 10, &[]), D, W),
        ]);
    }

    #[test]
    fn rfc7606_7_malformed_attributes_that_do_not_select_routes_are_discarded_alone() {
        use Handling::AttributeDiscard as D;
        assert_costs(&[
            case(
                "§7.6 ATOMIC_AGGREGATE of length 1",
                6,
                attr(0x40, 6, &[0]),
                D,
                D,
            ),
            case(
                "§7.7 AGGREGATOR of length 7",
                7,
                attr(0xc0, 7, &[0, 0, 0xfd, 0xe9, 10, 0, 0]),
                D,
                D,
            ),
            case(
                "RFC 7311 §3.2 AIGP TLV of length 10 in 11 bytes",
                26,
                attr(0x80, 26, &[1, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
                D,
                D,
            ),
            case(
                "RFC 7311 §3.2 AIGP TLV running past the attribute",
                26,
                attr(0x80, 26, &[1, 0, 11, 0, 0, 0]),
                D,
                D,
            ),
            case(
                "RFC 7311 §3.2 AIGP at its maximum",
                26,
                attr(0x80, 26, &aigp_value(u64::MAX)),
                D,
                D,
            ),
            case(
                "RFC 8669 §5 Prefix-SID TLV running past the attribute",
                40,
                attr(0xc0, 40, &[5, 0, 30, 0]),
                D,
                D,
            ),
            case(
                "RFC 8669 §5 Prefix-SID with a cut SRv6 SID Information sub-TLV",
                40,
                attr(0xc0, 40, &[5, 0, 4, 0, 1, 0, 1, 0]),
                D,
                D,
            ),
            case(
                "docs/BGP.md CPN metric attribute of version 9",
                METRIC_CODE,
                attr(0xc0, METRIC_CODE, &[9]),
                D,
                D,
            ),
            case(
                "docs/BGP.md CPN metric TLV running past the attribute",
                METRIC_CODE,
                attr(0xc0, METRIC_CODE, &[1, 1, 0, 9, b'x']),
                D,
                D,
            ),
        ]);
    }

    #[test]
    fn rfc7606_7_11_malformed_mp_reach_or_mp_unreach_resets_the_session() {
        use Handling::SessionReset as R;
        let mut nlri_129 = vec![129];
        nlri_129.extend_from_slice(&[0xfc; 17]);
        assert_costs(&[
            case(
                "§7.11 MP_REACH_NLRI announcing a /129",
                14,
                attr(0x80, 14, &mp_reach_value(&v6("fe80::1"), &nlri_129)),
                R,
                R,
            ),
            case(
                "§7.11 MP_REACH_NLRI with a 5-byte IPv6 next hop",
                14,
                attr(0x80, 14, &mp_reach_value(&[1, 2, 3, 4, 5], &nlri_fc00_5())),
                R,
                R,
            ),
            // Added to the others: there is no well-formed one of type 15 among them.
            case(
                "§7.11 MP_UNREACH_NLRI prefix running past the attribute",
                15,
                attr(0x80, 15, &[0, 2, 1, 128, 0xfc, 0xfc]),
                R,
                R,
            ),
        ]);
    }

    #[test]
    fn rfc7606_3c_flags_in_conflict_with_the_type_withdraw_unless_its_rfc_says_otherwise() {
        use Handling::{AttributeDiscard as D, SessionReset as R, TreatAsWithdraw as W};
        let reach = mp_reach_value(&v6("fe80::1"), &nlri_fc00_5());
        assert_costs(&[
            case("§3 c ORIGIN flagged optional", 1, attr(0xc0, 1, &[0]), W, W),
            case(
                "§3 c MED flagged transitive",
                4,
                attr(0xc0, 4, &[0, 0, 0, 10]),
                W,
                W,
            ),
            case(
                "§3 c ATOMIC_AGGREGATE flagged optional",
                6,
                attr(0xc0, 6, &[]),
                W,
                W,
            ),
            case(
                "§3 c Prefix-SID flagged non-transitive",
                40,
                attr(0x80, 40, &prefix_sid_value()),
                W,
                W,
            ),
            case(
                "§3 c, §7.5 LOCAL_PREF flagged optional",
                5,
                attr(0xc0, 5, &[0, 0, 0, 100]),
                D,
                W,
            ),
            case(
                "§3 c, RFC 7311 §3.2 AIGP flagged transitive",
                26,
                attr(0xc0, 26, &aigp_value(2500)),
                D,
                D,
            ),
            case(
                "§3 c, §7.11 MP_REACH_NLRI flagged transitive",
                14,
                attr(0xc0, 14, &reach),
                R,
                R,
            ),
            case(
                "§3 c, docs/BGP.md CPN metric attribute flagged well-known",
                METRIC_CODE,
                attr(0x40, METRIC_CODE, &metrics_value()),
                D,
                D,
            ),
        ]);
    }

    #[test]
    fn rfc7606_4_an_attribute_running_past_the_block_withdraws_what_mp_reach_announced() {
        // AIGP claims 200 bytes; what precedes it is kept, the NLRI are withdrawn.
        let reach = mp_reach();
        let mut u = update(&[&reach, &ORIGIN_IGP, &EMPTY_AS_PATH, &[0x80, 26, 200, 1]]);
        let (update, verdict) = decode(&mut u, false);
        let Verdict::TreatAsWithdraw { withdrawn, why } = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(withdrawn, its_route(), "{why}");
        assert_eq!(update.path_attributes().len(), 3);
    }

    #[test]
    fn rfc7606_4_a_header_cut_short_withdraws_what_mp_reach_announced() {
        // Two bytes left: flags and type, no length.
        let reach = mp_reach();
        let mut u = update(&[&reach, &ORIGIN_IGP, &EMPTY_AS_PATH, &[0x80, 26]]);
        assert!(matches!(
            verdict(&mut u, false),
            Verdict::TreatAsWithdraw { withdrawn, .. } if withdrawn == its_route()
        ));
    }

    #[test]
    fn rfc7606_4_nlri_found_by_the_total_attribute_length_are_withdrawn() {
        let mut u = update_with_nlri(
            &[
                &ORIGIN_IGP,
                &EMPTY_AS_PATH,
                &[0x40, 3, 4, 10, 0, 0, 2],
                &[0xc0, 8, 9, 0],
            ],
            &CLASSIC_NLRI,
        );
        let Verdict::TreatAsWithdraw { withdrawn, .. } = verdict(&mut u, false) else {
            panic!()
        };
        assert_eq!(
            withdrawn,
            vec![Withdrawn {
                prefix: "198.51.100.1/32".parse().unwrap(),
                path_id: 0
            }]
        );
    }

    #[test]
    fn rfc7606_5_2_an_attribute_running_past_mp_reach_resets_the_session() {
        // ORIGIN claims 200 bytes: MP_REACH_NLRI behind it cannot be found, and an UPDATE
        // without NLRI cannot be treated as withdraw.
        let reach = mp_reach();
        let mut u = update(&[&[0x40, 1, 200, 0], &reach]);
        assert!(matches!(
            verdict(&mut u, false),
            Verdict::SessionReset {
                notification: BgpNotificationMessage::UpdateMessageError(
                    UpdateMessageError::MalformedAttributeList { .. }
                ),
                ..
            }
        ));
    }

    #[test]
    fn rfc7606_5_2_a_malformed_attribute_in_an_update_without_nlri_resets_the_session() {
        let mut u = update(&[&[0x40, 1, 1, 7], &EMPTY_AS_PATH]);
        assert!(matches!(
            verdict(&mut u, false),
            Verdict::SessionReset { .. }
        ));
    }

    #[test]
    fn rfc7606_7_3_a_malformed_next_hop_withdraws_the_nlri_it_was_for() {
        // `parse` cannot make routes of NLRI without a next hop: they are withdrawn all the same.
        let mut u = update_with_nlri(
            &[&ORIGIN_IGP, &EMPTY_AS_PATH, &[0x40, 3, 5, 10, 0, 0, 2, 0]],
            &CLASSIC_NLRI,
        );
        let Verdict::TreatAsWithdraw { withdrawn, .. } = verdict(&mut u, false) else {
            panic!()
        };
        assert_eq!(withdrawn.len(), 1);
    }

    #[test]
    fn rfc7606_3d_a_missing_well_known_attribute_withdraws_the_routes() {
        let reach = mp_reach();
        let mut u = update(&[&ORIGIN_IGP, &reach]);
        let Verdict::TreatAsWithdraw { why, withdrawn } = verdict(&mut u, false) else {
            panic!()
        };
        assert!(why.contains("AS_PATH"), "{why}");
        assert_eq!(withdrawn, its_route());
        // NEXT_HOP only matters to NLRI outside MP_REACH_NLRI.
        let mut u = update_with_nlri(&[&ORIGIN_IGP, &EMPTY_AS_PATH], &CLASSIC_NLRI);
        let Verdict::TreatAsWithdraw { why, .. } = verdict(&mut u, false) else {
            panic!()
        };
        assert!(why.contains("NEXT_HOP"), "{why}");
    }

    #[test]
    fn rfc7606_3g_a_repeated_attribute_is_discarded_and_the_first_kept() {
        let reach = mp_reach();
        let first = attr(0x80, 26, &aigp_value(1));
        let second = attr(0x80, 26, &aigp_value(2));
        let mut u = update(&[&reach, &ORIGIN_IGP, &EMPTY_AS_PATH, &first, &second]);
        let (update, verdict) = decode(&mut u, false);
        let Verdict::Accept { discarded } = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(discarded.len(), 1);
        let aigp: Vec<_> = update
            .path_attributes()
            .iter()
            .filter_map(|a| match a.value() {
                PathAttributeValue::Aigp(aigp) => Some(aigp.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            aigp,
            vec![netgauze_bgp_pkt::path_attribute::Aigp::AccumulatedIgpMetric(1)]
        );
    }

    #[test]
    fn rfc7606_3g_mp_reach_twice_resets_the_session() {
        let reach = mp_reach();
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, &reach, &reach]);
        assert!(matches!(
            verdict(&mut u, false),
            Verdict::SessionReset {
                notification: BgpNotificationMessage::UpdateMessageError(
                    UpdateMessageError::MalformedAttributeList { .. }
                ),
                ..
            }
        ));
    }

    #[test]
    fn attributes_are_read_with_the_as_number_size_of_the_session() {
        // The peer's OPEN offers no 4-byte AS numbers (RFC 6793): AGGREGATOR has 6 bytes.
        let mut codec = codec(AddPath::default(), METRIC_CODE);
        let mut open = message(1, &[4, 0xfd, 0xe9, 0, 90, 10, 0, 0, 1, 0]);
        codec.decode(&mut open).unwrap().unwrap();
        let reach = mp_reach();
        let two_byte_as_path = attr(0x40, 2, &[2, 1, 0xfd, 0xe9]);
        for (aggregator, malformed) in [
            (attr(0xc0, 7, &[0xfd, 0xe9, 10, 0, 0, 1]), 0),
            (attr(0xc0, 7, &[0, 0, 0xfd, 0xe9, 10, 0, 0, 1]), 1),
        ] {
            let mut u = update(&[&reach, &ORIGIN_IGP, &two_byte_as_path, &aggregator]);
            let (_, cut) = codec.decode(&mut u).unwrap().unwrap();
            assert_eq!(cut.len(), malformed, "{cut:?}");
        }
    }

    #[test]
    fn a_message_over_4096_bytes_is_a_header_error() {
        let big = vec![0u8; 4100];
        let mut attr = vec![0xd0, 255];
        attr.extend_from_slice(&u16::try_from(big.len()).unwrap().to_be_bytes());
        attr.extend(big);
        let reach = mp_reach();
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, &attr, &reach]);
        let length = u16::from_be_bytes([u[16], u[17]]);
        assert_eq!(
            decode_error(&mut u),
            Some(BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::BadMessageLength {
                    value: Box::new(length.to_be_bytes())
                }
            ))
        );
    }

    #[test]
    fn header_errors_get_their_subcodes() {
        let mut bad_marker = update(&[]);
        bad_marker[0] = 0;
        assert!(matches!(
            decode_error(&mut bad_marker),
            Some(BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::ConnectionNotSynchronized { .. }
            ))
        ));
        let mut bad_type = update(&[]);
        bad_type[18] = 9;
        assert_eq!(
            decode_error(&mut bad_type),
            Some(BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::BadMessageType {
                    value: Box::new([9])
                }
            ))
        );
    }

    #[test]
    fn a_total_attribute_length_past_the_message_is_a_malformed_attribute_list() {
        let mut u = update(&[&ORIGIN_IGP]);
        u[22] = 200;
        assert!(matches!(
            decode_error(&mut u),
            Some(BgpNotificationMessage::UpdateMessageError(
                UpdateMessageError::MalformedAttributeList { .. }
            ))
        ));
    }

    #[test]
    fn handling_follows_rfc_7606_section_7() {
        assert_eq!(handling(1, false), Handling::TreatAsWithdraw);
        assert_eq!(handling(6, false), Handling::AttributeDiscard);
        assert_eq!(handling(9, false), Handling::AttributeDiscard, "§7.9");
        assert_eq!(handling(9, true), Handling::TreatAsWithdraw, "§7.9");
        assert_eq!(handling(14, false), Handling::SessionReset);
        assert_eq!(handling(40, false), Handling::AttributeDiscard, "RFC 8669");
        assert_eq!(handling(255, true), Handling::AttributeDiscard, "ours");
    }
}
