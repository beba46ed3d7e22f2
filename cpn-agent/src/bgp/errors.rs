//! What a bad message costs (RFC 4271 §6, revised by RFC 7606): an attribute, the routes of
//! one UPDATE, or the session.
//!
//! - A message the codec cannot frame or decode ends the session with the NOTIFICATION RFC 4271
//!   §6 names ([`notification`]); so does any message over 4096 bytes ([`Codec`]: we do not
//!   offer RFC 8654 extended messages).
//! - A malformed attribute inside an UPDATE that is otherwise readable costs what RFC 7606 §7
//!   (and the attribute's own RFC) says ([`check`]): *attribute discard* for attributes that do
//!   not affect route selection, *treat-as-withdraw* for those that do, *session reset* only
//!   where the NLRI themselves cannot be trusted (`MP_REACH_NLRI` / `MP_UNREACH_NLRI`).

use bytes::BytesMut;
use netgauze_bgp_pkt::{
    BgpMessage,
    codec::{BgpCodec, BgpCodecDecoderError},
    iana::PathAttributeType,
    notification::{
        BgpNotificationMessage, MessageHeaderError, OpenMessageError, RouteRefreshError,
        UpdateMessageError,
    },
    path_attribute::PathAttributeValue,
    update::BgpUpdateMessage,
    wire::{
        deserializer::{
            BgpMessageParsingError, BgpParsingIgnoredErrors,
            path_attribute::PathAttributeParsingError, update::BgpUpdateMessageParsingError,
        },
        serializer::BgpMessageWritingError,
    },
};
use tokio_util::codec::{Decoder, Encoder};

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
    /// Every route it announces is withdrawn instead (RFC 7606 §2).
    TreatAsWithdraw { why: String },
    /// End the session with this NOTIFICATION.
    SessionReset {
        notification: BgpNotificationMessage,
        why: String,
    },
}

/// RFC 7606 §7 per attribute type code; `internal` for iBGP (`LOCAL_PREF` only counts there).
pub fn handling(code: u8, internal: bool) -> Handling {
    const TREAT_AS_WITHDRAW: [PathAttributeType; 10] = [
        PathAttributeType::Origin,                 // §7.1
        PathAttributeType::AsPath,                 // §7.2
        PathAttributeType::NextHop,                // §7.3
        PathAttributeType::MultiExitDiscriminator, // §7.4
        PathAttributeType::Communities,            // §7.8
        PathAttributeType::OriginatorId,           // §7.9
        PathAttributeType::ClusterList,            // §7.10
        PathAttributeType::ExtendedCommunities,    // §7.14
        PathAttributeType::ExtendedCommunitiesIpv6,
        PathAttributeType::LargeCommunities, // RFC 8092 §6
    ];
    let is = |t: PathAttributeType| code == t as u8;
    if is(PathAttributeType::MpReachNlri) || is(PathAttributeType::MpUnreachNlri) {
        Handling::SessionReset // §7.11: the NLRI cannot be located
    } else if TREAT_AS_WITHDRAW.into_iter().any(is)
        || is(PathAttributeType::OnlyToCustomer) // RFC 9234 §5
        || (is(PathAttributeType::LocalPreference) && internal)
    // §7.5
    {
        Handling::TreatAsWithdraw
    } else {
        // ATOMIC_AGGREGATE and AGGREGATOR (§7.6, §7.7), LOCAL_PREF over eBGP (§7.5), AIGP,
        // Prefix-SID (RFC 8669 §5), our CPN metric attribute and unknown optional attributes.
        Handling::AttributeDiscard
    }
}

/// The type code of the attribute an error is about, if known.
fn attribute_code(error: &PathAttributeParsingError) -> Option<u8> {
    use PathAttributeParsingError as E;
    use PathAttributeType as T;
    let t = match error {
        E::OriginError(_) => T::Origin,
        E::AsPathError(_) => T::AsPath,
        E::NextHopError(_) => T::NextHop,
        E::MultiExitDiscriminatorError(_) => T::MultiExitDiscriminator,
        E::LocalPreferenceError(_) => T::LocalPreference,
        E::AtomicAggregateError(_) => T::AtomicAggregate,
        E::AggregatorError(_) => T::Aggregator,
        E::CommunitiesError(_) => T::Communities,
        E::ExtendedCommunitiesError(_) => T::ExtendedCommunities,
        E::ExtendedCommunitiesErrorIpv6(_) => T::ExtendedCommunitiesIpv6,
        E::LargeCommunitiesError(_) => T::LargeCommunities,
        E::OriginatorError(_) => T::OriginatorId,
        E::ClusterListError(_) => T::ClusterList,
        E::MpReachErrorError(_) => T::MpReachNlri,
        E::MpUnreachErrorError(_) => T::MpUnreachNlri,
        E::OnlyToCustomerError(_) => T::OnlyToCustomer,
        E::AigpError(_) => T::AccumulatedIgp,
        E::BgpLsError(_) => T::BgpLsAttribute,
        E::SegmentIdentifierParsingError(_) => T::BgpPrefixSid,
        E::InvalidPathAttribute { value, .. } => {
            return Some(match value {
                Ok(t) => *t as u8,
                Err(code) => *code,
            });
        }
        E::Parse(_) | E::UnknownAttributeError(_) => return None,
    };
    Some(t as u8)
}

/// RFC 7606 for one UPDATE: the attribute errors the codec skipped (`ignored`), repeated
/// attributes (§3 g) and missing well-known mandatory attributes (§3 d).
pub fn check(
    update: &BgpUpdateMessage,
    ignored: &BgpParsingIgnoredErrors,
    internal: bool,
) -> Verdict {
    let mut discarded = Vec::new();
    let mut withdraw = None;
    for error in ignored.path_attr_errors() {
        let code = attribute_code(error);
        match code.map_or(Handling::AttributeDiscard, |c| handling(c, internal)) {
            Handling::AttributeDiscard => discarded.push(error.to_string()),
            Handling::TreatAsWithdraw => withdraw = Some(error.to_string()),
            Handling::SessionReset => {
                return Verdict::SessionReset {
                    notification: BgpNotificationMessage::UpdateMessageError(
                        UpdateMessageError::OptionalAttributeError {
                            value: Box::new([]),
                        },
                    ),
                    why: error.to_string(),
                };
            }
        }
    }
    let attributes = update.path_attributes();
    let count =
        |f: fn(&PathAttributeValue) -> bool| attributes.iter().filter(|a| f(a.value())).count();
    if count(|v| matches!(v, PathAttributeValue::MpReach(_))) > 1
        || count(|v| matches!(v, PathAttributeValue::MpUnreach(_))) > 1
    {
        return Verdict::SessionReset {
            notification: BgpNotificationMessage::UpdateMessageError(
                UpdateMessageError::MalformedAttributeList {
                    value: Box::new([]),
                },
            ),
            why: "MP_REACH_NLRI or MP_UNREACH_NLRI more than once".into(),
        };
    }
    let announces = !update.nlri().is_empty()
        || attributes
            .iter()
            .any(|a| matches!(a.value(), PathAttributeValue::MpReach(r) if !mp_reach_is_empty(r)));
    if announces && withdraw.is_none() {
        for (missing, name) in [
            (
                count(|v| matches!(v, PathAttributeValue::Origin(_))) == 0,
                "ORIGIN",
            ),
            (
                count(|v| matches!(v, PathAttributeValue::AsPath(_))) == 0,
                "AS_PATH",
            ),
        ] {
            if missing {
                withdraw = Some(format!("missing well-known attribute {name}"));
            }
        }
    }
    match withdraw {
        Some(why) => Verdict::TreatAsWithdraw { why },
        None => Verdict::Accept { discarded },
    }
}

fn mp_reach_is_empty(reach: &netgauze_bgp_pkt::path_attribute::MpReach) -> bool {
    use netgauze_bgp_pkt::path_attribute::MpReach;
    match reach {
        MpReach::Ipv6Unicast { nlri, .. } => nlri.is_empty(),
        MpReach::Ipv4Unicast { nlri, .. } => nlri.is_empty(),
        _ => false,
    }
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
/// RFC 8654 sizes for UPDATEs, which we never negotiate).
#[derive(Debug)]
pub struct Codec(pub BgpCodec);

impl Decoder for Codec {
    type Item = (BgpMessage, BgpParsingIgnoredErrors);
    type Error = BgpCodecDecoderError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if buf.len() >= HEADER_LEN {
            let length = u16::from_be_bytes([buf[16], buf[17]]);
            if length > MAX_MESSAGE_LEN {
                return Err(BgpCodecDecoderError::BgpMessageParsingError(
                    BgpMessageParsingError::BadMessageLength { offset: 16, length },
                ));
            }
        }
        self.0.decode(buf)
    }
}

impl Encoder<BgpMessage> for Codec {
    type Error = BgpMessageWritingError;

    fn encode(&mut self, message: BgpMessage, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(message, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::{route::AddPath, speaker::codec};

    const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
    const EMPTY_AS_PATH: [u8; 3] = [0x40, 2, 0];

    /// `MP_REACH_NLRI` announcing `fc00::5/128` via `fe80::1`.
    fn mp_reach() -> Vec<u8> {
        let mut value = vec![0, 2, 1, 16];
        value.extend_from_slice(&"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        value.extend_from_slice(&[0, 128]);
        value.extend_from_slice(&"fc00::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let mut attr = vec![0x80, 14, u8::try_from(value.len()).unwrap()];
        attr.extend(value);
        attr
    }

    /// An UPDATE with these raw path attributes.
    fn update(attributes: &[&[u8]]) -> BytesMut {
        let attrs: Vec<u8> = attributes.concat();
        let len = u16::try_from(HEADER_LEN + 4 + attrs.len()).unwrap();
        let mut out = vec![0xff; 16];
        out.extend_from_slice(&len.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        out.extend(attrs);
        BytesMut::from(&out[..])
    }

    fn verdict(bytes: &mut BytesMut, internal: bool) -> Verdict {
        let (message, skipped) = codec(AddPath::default()).decode(bytes).unwrap().unwrap();
        let BgpMessage::Update(u) = message else {
            panic!("{message:?}")
        };
        check(&u, &skipped, internal)
    }

    fn decode_error(bytes: &mut BytesMut) -> Option<BgpNotificationMessage> {
        let error = codec(AddPath::default()).decode(bytes).unwrap_err();
        notification(&error)
    }

    #[test]
    fn a_well_formed_update_is_accepted() {
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, &mp_reach()]);
        assert_eq!(
            verdict(&mut u, false),
            Verdict::Accept { discarded: vec![] }
        );
    }

    #[test]
    fn a_bad_origin_withdraws_the_routes() {
        let mut u = update(&[&[0x40, 1, 1, 7], &EMPTY_AS_PATH, &mp_reach()]);
        assert!(
            matches!(verdict(&mut u, false), Verdict::TreatAsWithdraw { .. }),
            "§7.1"
        );
    }

    #[test]
    fn a_missing_as_path_withdraws_the_routes() {
        let mut u = update(&[&ORIGIN_IGP, &mp_reach()]);
        let Verdict::TreatAsWithdraw { why } = verdict(&mut u, false) else {
            panic!()
        };
        assert!(why.contains("AS_PATH"), "{why}");
    }

    #[test]
    fn a_bad_atomic_aggregate_is_discarded_alone() {
        // ATOMIC_AGGREGATE is well-known; flagged optional here (RFC 7606 §3 c, §7.6).
        let atomic_aggregate: &[u8] = &[0xc0, 6, 0];
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, atomic_aggregate, &mp_reach()]);
        let Verdict::Accept { discarded } = verdict(&mut u, false) else {
            panic!()
        };
        assert_eq!(discarded.len(), 1, "{discarded:?}");
    }

    #[test]
    fn local_pref_counts_only_over_ibgp() {
        // LOCAL_PREF is well-known; flagged optional here (RFC 7606 §3 c).
        let bad_local_pref: &[u8] = &[0xc0, 5, 4, 0, 0, 0, 100];
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, bad_local_pref, &mp_reach()]);
        assert!(matches!(
            verdict(&mut u.clone(), true),
            Verdict::TreatAsWithdraw { .. }
        ));
        assert!(matches!(verdict(&mut u, false), Verdict::Accept { .. }));
    }

    #[test]
    fn mp_reach_twice_resets_the_session() {
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
    fn a_message_over_4096_bytes_is_a_header_error() {
        let big = vec![0u8; 4100];
        let mut attr = vec![0xd0, 255];
        attr.extend_from_slice(&u16::try_from(big.len()).unwrap().to_be_bytes());
        attr.extend(big);
        let mut u = update(&[&ORIGIN_IGP, &EMPTY_AS_PATH, &attr, &mp_reach()]);
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
    fn an_attribute_running_past_the_message_resets_the_session() {
        // ORIGIN claims 200 bytes: the attribute list cannot be parsed (RFC 7606 §4).
        let mut u = update(&[&[0x40, 1, 200, 0]]);
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
        assert_eq!(handling(14, false), Handling::SessionReset);
        assert_eq!(handling(40, false), Handling::AttributeDiscard, "RFC 8669");
        assert_eq!(handling(255, true), Handling::AttributeDiscard, "ours");
    }
}
