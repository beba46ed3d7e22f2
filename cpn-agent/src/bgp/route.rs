//! Service routes in BGP UPDATE messages (netgauze-bgp-pkt does the wire format).
//!
//! One route is one site of an anycast service: the prefix (/128 or /32) as MP-BGP NLRI with an
//! ADD-PATH path identifier (RFC 7911; an ingress needs every site, not a best path), the site's
//! decapsulating SID in the BGP Prefix-SID attribute's SRv6 L3 Service TLV (RFC 9252), the
//! accumulated path latency in AIGP (RFC 7311, microseconds), the compute metrics in the CPN
//! metric attribute, and the free capacity as a Link Bandwidth extended community (so a plain
//! router can weigh ECMP by it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::{
    BgpMessage,
    community::{ExtendedCommunity, NonTransitiveTwoOctetExtendedCommunity},
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    path_attribute::{
        Aigp, As4PathSegment, AsPath, AsPathSegmentType, BgpSidAttribute, ClusterId, ClusterList,
        ExtendedCommunities, LocalPreference, MpReach, MpUnreach, Origin, Originator,
        PathAttribute, PathAttributeValue, PrefixSegmentIdentifier, SRv6ServiceSubTlv,
        UnknownAttribute,
    },
    update::BgpUpdateMessage,
};
use netgauze_parse_utils::WritablePdu as _;

use super::metric_attr::{self, CpnMetrics};

/// A route as we send and learn it: a service site (its anycast address as /128 or /32, with
/// a service SID) or a node's SRv6 locator (a plain prefix, no SID).
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub prefix: IpNet,
    /// ADD-PATH path identifier: one per site.
    pub path_id: u32,
    pub next_hop: Ipv6Addr,
    /// The site's decapsulating SID; `None` for a locator.
    pub service: Option<ServiceSid>,
    /// Accumulated path latency, microseconds.
    pub aigp: Option<u64>,
    pub metrics: Option<CpnMetrics>,
    /// Free capacity, as the Link Bandwidth community's float (operations per second).
    pub link_bandwidth: Option<f32>,
    pub as_path: Vec<u32>,
    /// Route reflection (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
}

/// An SRv6 service SID and its RFC 8986 §10.2 behaviour code point (RFC 9252 SRv6 L3 Service
/// TLV): a peer's may be one cpn does not implement, so it stays the number on the wire
/// (`Behavior::from_code_point` names ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSid {
    pub sid: Ipv6Addr,
    pub behavior: u16,
}

#[cfg(test)]
impl Route {
    /// A plain route to `prefix` (path 1, next hop `::1`, no attributes, an empty AS path), for
    /// tests to build on with struct update syntax.
    pub fn for_test(prefix: &str) -> Self {
        Self {
            prefix: prefix.parse().unwrap(),
            path_id: 1,
            next_hop: Ipv6Addr::LOCALHOST,
            service: None,
            aigp: None,
            metrics: None,
            link_bandwidth: None,
            as_path: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
        }
    }
}

impl Route {
    /// A service site: its SID, and its address as a host prefix.
    pub fn is_service(&self) -> bool {
        self.service.is_some() && self.prefix.prefix_len() == self.prefix.max_prefix_len()
    }
}

/// A withdrawn route: prefix and path identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Withdrawn {
    pub prefix: IpNet,
    pub path_id: u32,
}

/// What an UPDATE said about service routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub announced: Vec<Route>,
    pub withdrawn: Vec<Withdrawn>,
    /// Attributes dropped as malformed (RFC 7606 attribute discard), for counters and logs.
    pub discarded: Vec<String>,
}

/// `LOCAL_PREF` on iBGP: the usual default, so that operators' policies can rank against it.
const DEFAULT_LOCAL_PREF: u32 = 100;

/// An attribute we send. RFC 4271 §4.3 lets the Extended Length bit be set on any attribute;
/// we set it only where the length needs two bytes, as other speakers do.
fn attribute(optional: bool, transitive: bool, value: PathAttributeValue) -> PathAttribute {
    let with = |extended_length, value| {
        PathAttribute::from(optional, transitive, false, extended_length, value)
            .unwrap_or_else(|(_, e)| panic!("attribute flags: {e:?}"))
    };
    let short = with(false, value);
    // Flags, type and a 1-byte length, then the value.
    if u8::try_from(short.len() - 3).is_ok() {
        short
    } else {
        with(true, short.value().clone())
    }
}

/// The order we send attributes in: `MP_REACH_NLRI` / `MP_UNREACH_NLRI` first, so that a
/// receiver finds the NLRI even when a later attribute is malformed (RFC 7606 §5.1), then
/// ascending type codes (RFC 4271 §5).
fn in_sending_order(mut attributes: Vec<PathAttribute>) -> Vec<PathAttribute> {
    attributes.sort_by_key(|a| {
        let mp = matches!(
            a.value(),
            PathAttributeValue::MpReach(_) | PathAttributeValue::MpUnreach(_)
        );
        let code = a.path_attribute_type().map_or_else(|code| code, u8::from);
        (!mp, code)
    });
    attributes
}

/// ADD-PATH in one direction, per address family (RFC 7911 negotiates each direction and
/// family on its own: a peer may receive path identifiers without sending any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddPath {
    pub ipv6: bool,
    pub ipv4: bool,
}

impl AddPath {
    pub const BOTH: Self = Self {
        ipv6: true,
        ipv4: true,
    };

    /// Whether routes of `prefix`'s family carry path identifiers.
    pub const fn covers(self, prefix: &IpNet) -> bool {
        match prefix {
            IpNet::V6(_) => self.ipv6,
            IpNet::V4(_) => self.ipv4,
        }
    }
}

/// How one session encodes the routes it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// The CPN metric attribute's type code.
    pub metric_code: u8,
    /// Path identifiers go out only in the families where the peer receives them.
    pub add_path: AddPath,
    /// Our AS: the Link Bandwidth community's AS for the routes we originate.
    pub local_asn: u32,
    /// An iBGP peer: `LOCAL_PREF` is sent (RFC 4271 §5.1.5).
    pub internal: bool,
}

/// The UPDATE announcing `route`.
pub fn announce(route: &Route, encoding: Encoding) -> BgpMessage {
    let path_id = encoding
        .add_path
        .covers(&route.prefix)
        .then_some(route.path_id);
    let reach = match route.prefix {
        IpNet::V6(v6) => MpReach::Ipv6Unicast {
            next_hop_global: route.next_hop,
            next_hop_local: None,
            nlri: vec![v6_nlri(v6, path_id)].into(),
        },
        IpNet::V4(v4) => MpReach::Ipv4Unicast {
            next_hop: IpAddr::V6(route.next_hop),
            next_hop_local: None,
            nlri: vec![v4_nlri(v4, path_id)].into(),
        },
    };
    // An empty AS_PATH (iBGP, our own routes) has no segment at all: an empty AS_SEQUENCE is
    // malformed (RFC 4271 §4.3; GoBGP treats the UPDATE as a withdraw).
    let segments: Vec<As4PathSegment> = if route.as_path.is_empty() {
        Vec::new()
    } else {
        vec![As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            route.as_path.clone(),
        )]
    };
    let mut attrs = vec![
        attribute(false, true, PathAttributeValue::Origin(Origin::IGP)),
        attribute(
            false,
            true,
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segments.into())),
        ),
        attribute(true, false, PathAttributeValue::MpReach(reach)),
    ];
    if let Some(service) = route.service {
        attrs.push(attribute(true, true, srv6_service(service)));
    }
    if encoding.internal {
        attrs.push(attribute(
            false,
            true,
            PathAttributeValue::LocalPreference(LocalPreference::new(DEFAULT_LOCAL_PREF)),
        ));
    }
    if let Some(aigp) = route.aigp {
        attrs.push(attribute(
            true,
            false,
            PathAttributeValue::Aigp(Aigp::AccumulatedIgpMetric(aigp)),
        ));
    }
    if let Some(bandwidth) = route.link_bandwidth {
        let community = ExtendedCommunity::NonTransitiveTwoOctet(
            NonTransitiveTwoOctetExtendedCommunity::LinkBandwidth {
                // The AS the bandwidth belongs to: the route's origin, AS_TRANS when it
                // needs 4 bytes.
                global_admin: u16::try_from(
                    route.as_path.last().copied().unwrap_or(encoding.local_asn),
                )
                .unwrap_or(super::fsm::AS_TRANS),
                local_admin: bandwidth.to_bits(),
            },
        );
        attrs.push(attribute(
            true,
            true,
            PathAttributeValue::ExtendedCommunities(ExtendedCommunities::new(vec![community])),
        ));
    }
    if let Some(originator) = route.originator_id {
        attrs.push(attribute(
            true,
            false,
            PathAttributeValue::Originator(Originator::new(originator)),
        ));
    }
    if !route.cluster_list.is_empty() {
        let ids: Vec<ClusterId> = route
            .cluster_list
            .iter()
            .map(|id| ClusterId::new(*id))
            .collect();
        attrs.push(attribute(
            true,
            false,
            PathAttributeValue::ClusterList(ClusterList::new(ids)),
        ));
    }
    if let Some(metrics) = &route.metrics {
        let value = UnknownAttribute::new(encoding.metric_code, metric_attr::encode(metrics));
        attrs.push(attribute(
            true,
            true,
            PathAttributeValue::UnknownAttribute(value),
        ));
    }
    BgpMessage::Update(BgpUpdateMessage::new(
        vec![],
        in_sending_order(attrs),
        vec![],
    ))
}

/// The UPDATEs that take a neighbor from the routes it was sent (`advertised`) to `current`:
/// withdrawals for the (prefix, path id) pairs gone, an announcement for each route new or
/// changed (the same path id replaces a path). Plain prefixes (locators) are announced before
/// the services whose SIDs they route: a receiver that takes a service before the locator
/// reaches it would steer flows into a SID it has no route for.
pub fn changes(advertised: &[Route], current: &[Route], encoding: Encoding) -> Vec<BgpMessage> {
    let key = |r: &Route| (r.prefix, r.path_id);
    let withdrawn: Vec<Withdrawn> = advertised
        .iter()
        .filter(|old| !current.iter().any(|r| key(r) == key(old)))
        .map(|r| Withdrawn {
            prefix: r.prefix,
            path_id: r.path_id,
        })
        .collect();
    let mut messages = withdraw(&withdrawn, encoding.add_path);
    let (services, plain): (Vec<&Route>, Vec<&Route>) = current
        .iter()
        .filter(|r| !advertised.contains(r))
        .partition(|r| r.is_service());
    messages.extend(
        plain
            .into_iter()
            .chain(services)
            .map(|r| announce(r, encoding)),
    );
    messages
}

/// Withdrawals per UPDATE: 21 bytes each at most (path id, length, 16 address bytes), so
/// that a message stays within RFC 4271's 4096 bytes.
pub const MAX_WITHDRAWN_PER_UPDATE: usize = 180;

/// The UPDATEs withdrawing sites: one address family each, since an UPDATE carries at most
/// one `MP_UNREACH_NLRI` (RFC 7606 §5.1; a second one resets the session, §3 g).
pub fn withdraw(withdrawn: &[Withdrawn], add_path: AddPath) -> Vec<BgpMessage> {
    let v6: Vec<Ipv6UnicastAddress> = withdrawn
        .iter()
        .filter_map(|w| match w.prefix {
            IpNet::V6(p) => Some(v6_nlri(p, add_path.ipv6.then_some(w.path_id))),
            IpNet::V4(_) => None,
        })
        .collect();
    let v4: Vec<Ipv4UnicastAddress> = withdrawn
        .iter()
        .filter_map(|w| match w.prefix {
            IpNet::V4(p) => Some(v4_nlri(p, add_path.ipv4.then_some(w.path_id))),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6 = v6
        .chunks(MAX_WITHDRAWN_PER_UPDATE)
        .map(|nlri| MpUnreach::Ipv6Unicast { nlri: nlri.into() });
    let v4 = v4
        .chunks(MAX_WITHDRAWN_PER_UPDATE)
        .map(|nlri| MpUnreach::Ipv4Unicast { nlri: nlri.into() });
    v6.chain(v4).map(withdraw_one).collect()
}

/// The UPDATE carrying one `MP_UNREACH_NLRI`.
fn withdraw_one(unreach: MpUnreach) -> BgpMessage {
    let attribute = attribute(true, false, PathAttributeValue::MpUnreach(unreach));
    BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![attribute], vec![]))
}

/// The BGP Prefix-SID attribute with the SRv6 L3 Service TLV for one SID (RFC 9252 §3.1).
fn srv6_service(ServiceSid { sid, behavior }: ServiceSid) -> PathAttributeValue {
    PathAttributeValue::PrefixSegmentIdentifier(PrefixSegmentIdentifier::new(vec![
        BgpSidAttribute::SRv6ServiceL3 {
            reserved: 0,
            subtlvs: vec![SRv6ServiceSubTlv::SRv6SIDInformation {
                reserved1: 0,
                sid,
                service_sid_flags: 0,
                endpoint_behaviour: behavior,
                reserved2: 0,
                subsubtlvs: vec![].into(),
            }]
            .into(),
        },
    ]))
}

fn v6_nlri(prefix: Ipv6Net, path_id: Option<u32>) -> Ipv6UnicastAddress {
    let net = Ipv6Unicast::from_net(prefix).expect("a unicast service address");
    Ipv6UnicastAddress::new(path_id, net)
}

fn v4_nlri(prefix: Ipv4Net, path_id: Option<u32>) -> Ipv4UnicastAddress {
    let net = Ipv4Unicast::from_net(prefix).expect("a unicast service address");
    Ipv4UnicastAddress::new(path_id, net)
}

/// The SID and behaviour of the SRv6 L3 Service TLV (RFC 9252).
fn srv6_service_sid(psid: &PrefixSegmentIdentifier) -> Option<ServiceSid> {
    psid.tlvs().iter().find_map(|tlv| match tlv {
        BgpSidAttribute::SRv6ServiceL3 { subtlvs, .. } => {
            subtlvs.iter().find_map(|sub| match sub {
                SRv6ServiceSubTlv::SRv6SIDInformation {
                    sid,
                    endpoint_behaviour,
                    ..
                } => Some(ServiceSid {
                    sid: *sid,
                    behavior: *endpoint_behaviour,
                }),
                SRv6ServiceSubTlv::Unknown { .. } => None,
            })
        }
        _ => None,
    })
}

fn link_bandwidth(communities: &ExtendedCommunities) -> Option<f32> {
    communities.communities().iter().find_map(|c| match c {
        ExtendedCommunity::NonTransitiveTwoOctet(
            NonTransitiveTwoOctetExtendedCommunity::LinkBandwidth { local_admin, .. },
        ) => Some(f32::from_bits(*local_admin)),
        _ => None,
    })
}

/// Reads the routes of an UPDATE: service sites (with an SRv6 L3 Service SID) and plain
/// prefixes such as locators; a malformed CPN attribute is discarded (the route stays, without
/// metrics, and selection then treats it as stale).
/// IPv4 prefixes outside `MP_REACH` / `MP_UNREACH`, with their path ids.
fn classic(prefixes: &[Ipv4UnicastAddress]) -> impl Iterator<Item = (IpNet, u32)> + '_ {
    prefixes
        .iter()
        .map(|a| (IpNet::V4(a.network().address()), a.path_id().unwrap_or(0)))
}

pub fn parse(update: &BgpUpdateMessage, metric_code: u8) -> Parsed {
    let mut parsed = Parsed::default();
    let mut nlri: Vec<(IpNet, u32)> = Vec::new();
    let mut next_hop = None;
    // IPv4 unicast the RFC 4271 way (as FRR sends it): NLRI and withdrawals outside MP_REACH /
    // MP_UNREACH, next hop in NEXT_HOP; kept as an IPv4-mapped address.
    let mut classic_next_hop = None;
    parsed.withdrawn.extend(
        classic(update.withdraw_routes()).map(|(prefix, path_id)| Withdrawn { prefix, path_id }),
    );
    let mut template = Route {
        prefix: IpNet::V6(Ipv6Net::default()),
        path_id: 0,
        next_hop: Ipv6Addr::UNSPECIFIED,
        service: None,
        aigp: None,
        metrics: None,
        link_bandwidth: None,
        as_path: Vec::new(),
        originator_id: None,
        cluster_list: Vec::new(),
    };
    for attr in update.path_attributes() {
        match attr.value() {
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                nlri: n,
                ..
            }) => {
                next_hop = Some(*next_hop_global);
                nlri.extend(
                    n.iter()
                        .map(|a| (IpNet::V6(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast {
                next_hop: IpAddr::V6(nh),
                nlri: n,
                ..
            }) => {
                next_hop = Some(*nh);
                nlri.extend(
                    n.iter()
                        .map(|a| (IpNet::V4(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: n }) => {
                parsed.withdrawn.extend(n.iter().map(|a| Withdrawn {
                    prefix: IpNet::V6(a.network().address()),
                    path_id: a.path_id().unwrap_or(0),
                }));
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri: n }) => {
                parsed.withdrawn.extend(n.iter().map(|a| Withdrawn {
                    prefix: IpNet::V4(a.network().address()),
                    path_id: a.path_id().unwrap_or(0),
                }));
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segments)) => {
                template.as_path = segments
                    .iter()
                    .flat_map(|s| s.as_numbers().iter().copied())
                    .collect();
            }
            PathAttributeValue::PrefixSegmentIdentifier(psid) => {
                template.service = srv6_service_sid(psid);
            }
            PathAttributeValue::NextHop(nh) => {
                classic_next_hop = Some(nh.next_hop().to_ipv6_mapped());
            }
            PathAttributeValue::Aigp(Aigp::AccumulatedIgpMetric(v)) => template.aigp = Some(*v),
            PathAttributeValue::ExtendedCommunities(c) => {
                template.link_bandwidth = link_bandwidth(c);
            }
            PathAttributeValue::Originator(o) => template.originator_id = Some(o.id()),
            PathAttributeValue::ClusterList(list) => {
                template.cluster_list = list.cluster_list().iter().map(ClusterId::id).collect();
            }
            PathAttributeValue::UnknownAttribute(u) if u.code() == metric_code => {
                match metric_attr::decode(u.value()) {
                    Ok(metrics) => template.metrics = Some(metrics),
                    Err(e) => parsed.discarded.push(format!("CPN metric attribute: {e}")),
                }
            }
            _ => {}
        }
    }
    let announced = nlri
        .into_iter()
        .filter_map(|n| Some((n, next_hop?)))
        .chain(classic(update.nlri()).filter_map(|n| Some((n, classic_next_hop?))));
    parsed.announced = announced
        .map(|((prefix, path_id), next_hop)| Route {
            prefix,
            path_id,
            next_hop,
            ..template.clone()
        })
        .collect();
    parsed
}

/// The End-of-RIB marker for `family` (RFC 4724 §2): for IPv4 unicast an UPDATE with nothing
/// in it, for IPv6 unicast one with only an empty `MP_UNREACH_NLRI`.
pub fn end_of_rib(family: super::graceful::Family) -> BgpMessage {
    let attrs = match family {
        super::graceful::Family::Ipv4Unicast => Vec::new(),
        super::graceful::Family::Ipv6Unicast => vec![attribute(
            true,
            false,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                nlri: Vec::new().into(),
            }),
        )],
    };
    BgpMessage::Update(BgpUpdateMessage::new(vec![], attrs, vec![]))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::UNIX_EPOCH};

    use bytes::BytesMut;
    use netgauze_bgp_pkt::{codec::BgpCodec, wire::deserializer::BgpParsingContext};
    use netgauze_iana::address_family::AddressType;
    use tokio_util::codec::{Decoder as _, Encoder as _};

    use super::*;
    use crate::metrics::{Capacity, ComputeKind, NodeMetrics, Sample, Unit};

    fn codec() -> BgpCodec {
        let add_path = HashMap::from([
            (AddressType::Ipv6Unicast, true),
            (AddressType::Ipv4Unicast, true),
        ]);
        BgpCodec::new_from_ctx(
            true,
            BgpParsingContext::new(true, HashMap::new(), add_path, false, false, false, false),
        )
    }

    fn route(prefix: IpAddr) -> Route {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let total = Sample::nominal(2e12, Unit::OpsPerSecond, t);
        Route {
            prefix: prefix.into(),
            path_id: 7,
            next_hop: "2001:db8:3::2".parse().unwrap(),
            service: Some(ServiceSid {
                sid: "fc00:1::d6".parse().unwrap(),
                behavior: cpn_common::maps::Behavior::EndDt6.code_point(),
            }),
            aigp: Some(2500),
            metrics: Some(CpnMetrics {
                node: "edge1".into(),
                normalisation: "cpn-norm-v1".into(),
                metrics: NodeMetrics {
                    capacity: vec![(ComputeKind::Cpu, Capacity { total, free: total })],
                    ..NodeMetrics::default()
                },
                score: Some(crate::bgp::metric_attr::NodeScore {
                    computing: 1.0,
                    l2: 1.0,
                }),
            }),
            link_bandwidth: Some(2e12),
            as_path: vec![4_200_000_001],
            originator_id: Some("10.0.0.1".parse().unwrap()),
            cluster_list: vec!["10.0.0.9".parse().unwrap()],
        }
    }

    fn wire(message: BgpMessage) -> Vec<u8> {
        let mut buf = BytesMut::new();
        codec().encode(message, &mut buf).expect("encodes");
        buf.to_vec()
    }

    fn unwire(bytes: &[u8]) -> BgpMessage {
        let mut buf = BytesMut::from(bytes);
        codec()
            .decode(&mut buf)
            .expect("decodes")
            .expect("a whole message")
            .0
    }

    const EBGP: Encoding = Encoding {
        metric_code: 255,
        add_path: AddPath::BOTH,
        local_asn: 4_200_000_100,
        internal: false,
    };

    #[test]
    fn announcements_round_trip_through_the_wire() {
        for prefix in ["2001:db8:cafe::1", "198.18.0.1"] {
            let r = route(prefix.parse().unwrap());
            let bytes = wire(announce(&r, EBGP));
            let BgpMessage::Update(update) = unwire(&bytes) else {
                panic!("not an UPDATE")
            };
            let parsed = parse(&update, 255);
            assert_eq!(parsed.announced, vec![r], "{prefix}");
            assert!(parsed.withdrawn.is_empty() && parsed.discarded.is_empty());
        }
    }

    /// IPv4 unicast the RFC 4271 way, as FRR sends it: NLRI and withdrawals outside `MP_REACH`,
    /// next hop in `NEXT_HOP` (ADD-PATH path ids in front of each prefix).
    #[test]
    fn classic_ipv4_nlri_and_withdrawals_are_read() {
        let mut bytes = vec![0xff; 16];
        bytes.extend_from_slice(&[0, 61, 2]);
        bytes.extend_from_slice(&[0, 9, 0, 0, 0, 9, 32, 10, 9, 9, 9]); // withdrawn, id 9
        bytes.extend_from_slice(&[0, 20]);
        bytes.extend_from_slice(&[0x40, 1, 1, 0]); // ORIGIN IGP
        bytes.extend_from_slice(&[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9]); // AS_PATH 65001
        bytes.extend_from_slice(&[0x40, 3, 4, 10, 0, 0, 2]); // NEXT_HOP 10.0.0.2
        bytes.extend_from_slice(&[0, 0, 0, 7, 32, 198, 51, 100, 1]); // NLRI, id 7
        assert_eq!(bytes.len(), 61);
        let BgpMessage::Update(update) = unwire(&bytes) else {
            panic!("not an UPDATE")
        };
        let parsed = parse(&update, 255);
        assert_eq!(
            parsed.withdrawn,
            vec![Withdrawn {
                prefix: "10.9.9.9/32".parse().unwrap(),
                path_id: 9
            }]
        );
        let [r] = &parsed.announced[..] else {
            panic!("{parsed:?}")
        };
        assert_eq!(r.prefix, "198.51.100.1/32".parse::<IpNet>().unwrap());
        assert_eq!((r.path_id, r.as_path.clone()), (7, vec![65001]));
        assert_eq!(r.next_hop, "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap());
    }

    /// Gone paths are withdrawn, changed and new ones announced, unchanged ones not sent.
    #[test]
    fn changes_withdraw_the_gone_and_announce_the_new_and_changed() {
        let with_id = |id, aigp| Route {
            path_id: id,
            aigp: Some(aigp),
            ..route("2001:db8:cafe::1".parse().unwrap())
        };
        let before = [with_id(1, 100), with_id(2, 100), with_id(3, 100)];
        let after = [with_id(1, 100), with_id(2, 900), with_id(4, 100)];
        let messages = changes(&before, &after, EBGP);
        let parsed: Vec<Parsed> = messages
            .into_iter()
            .map(|m| {
                let BgpMessage::Update(u) = unwire(&wire(m)) else {
                    panic!("not an UPDATE")
                };
                parse(&u, 255)
            })
            .collect();
        let withdrawn: Vec<u32> = parsed
            .iter()
            .flat_map(|p| &p.withdrawn)
            .map(|w| w.path_id)
            .collect();
        let announced: Vec<u32> = parsed
            .iter()
            .flat_map(|p| &p.announced)
            .map(|r| r.path_id)
            .collect();
        assert_eq!((withdrawn, announced), (vec![3], vec![2, 4]));
    }

    /// A locator goes out before the service whose SID it routes, whatever their order.
    #[test]
    fn changes_announce_locators_before_services() {
        let service = route("2001:db8:cafe::1".parse().unwrap());
        assert!(service.is_service());
        let locator = Route {
            prefix: "fc00:1::/32".parse().unwrap(),
            service: None,
            ..service.clone()
        };
        let messages = changes(&[], &[service, locator], EBGP);
        let prefixes: Vec<String> = messages
            .into_iter()
            .flat_map(|m| {
                let BgpMessage::Update(u) = unwire(&wire(m)) else {
                    panic!("not an UPDATE")
                };
                parse(&u, 255).announced
            })
            .map(|r| r.prefix.to_string())
            .collect();
        assert_eq!(prefixes, ["fc00:1::/32", "2001:db8:cafe::1/128"]);
    }

    /// The attributes we add carry the bytes their RFCs define.
    #[test]
    fn attribute_bytes() {
        let bytes = wire(announce(
            &route("2001:db8:cafe::1".parse().unwrap()),
            Encoding {
                internal: true,
                ..EBGP
            },
        ));
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // AIGP (type 26): optional, TLV type 1, length 11, value 2500.
        let mut aigp = vec![0x80, 26, 11, 1, 0, 11];
        aigp.extend_from_slice(&2500u64.to_be_bytes());
        assert!(find(&aigp), "AIGP");
        // Link Bandwidth (non-transitive two-octet AS, subtype 4): AS_TRANS for the 4-byte
        // origin AS 4200000001, then 2e12 as an IEEE 754 binary32.
        let mut bandwidth = vec![0x40, 0x04, 0x5b, 0xa0];
        bandwidth.extend_from_slice(&2e12f32.to_bits().to_be_bytes());
        assert!(find(&bandwidth), "Link Bandwidth");
        // AS_PATH (type 2): one AS_SEQUENCE of one 4-byte AS.
        assert!(find(&[0x40, 2, 6, 2, 1, 0xfa, 0x56, 0xea, 0x01]), "AS_PATH");
        let ours = Route {
            as_path: Vec::new(),
            ..route("2001:db8:cafe::1".parse().unwrap())
        };
        let empty = wire(announce(&ours, EBGP));
        assert!(
            empty.windows(3).any(|w| w == [0x40, 2, 0]),
            "an empty AS_PATH is an empty attribute"
        );
        // LOCAL_PREF (type 5) on iBGP: well-known transitive, 100.
        assert!(find(&[0x40, 5, 4, 0, 0, 0, 100]), "LOCAL_PREF");
        // Prefix-SID (type 40): SRv6 L3 Service TLV (5) → SID Information sub-TLV (1): SID, flags,
        // behaviour 18 (End.DT6).
        let mut sid = vec![1, 0, 21, 0];
        sid.extend_from_slice(&"fc00:1::d6".parse::<Ipv6Addr>().unwrap().octets());
        sid.extend_from_slice(&[0, 0, 18, 0]);
        assert!(find(&sid), "SRv6 SID Information sub-TLV");
        assert!(
            find(&[0xc0, 40]),
            "Prefix-SID attribute, optional transitive"
        );
        // CPN metric attribute: optional transitive, type 255, version 1, name TLV.
        assert!(
            find(&[0xc0, 255]) && find(&[1, 1, 0, 5, b'e', b'd', b'g', b'e', b'1']),
            "CPN metric attribute"
        );
        // NLRI with ADD-PATH: path id 7, /128.
        let mut nlri = 7u32.to_be_bytes().to_vec();
        nlri.push(128);
        nlri.extend_from_slice(&"2001:db8:cafe::1".parse::<Ipv6Addr>().unwrap().octets());
        assert!(find(&nlri), "NLRI");
    }

    #[test]
    fn withdrawals_round_trip() {
        let w = vec![
            Withdrawn {
                prefix: "2001:db8:cafe::1/128".parse().unwrap(),
                path_id: 7,
            },
            Withdrawn {
                prefix: "198.18.0.1/32".parse().unwrap(),
                path_id: 3,
            },
        ];
        let messages = withdraw(&w, AddPath::BOTH);
        let parsed: Vec<Parsed> = messages
            .into_iter()
            .map(|m| {
                let BgpMessage::Update(update) = unwire(&wire(m)) else {
                    panic!("not an UPDATE")
                };
                parse(&update, 255)
            })
            .collect();
        let withdrawn: Vec<Withdrawn> = parsed.iter().flat_map(|p| p.withdrawn.clone()).collect();
        assert_eq!(withdrawn, w);
        assert!(parsed.iter().all(|p| p.announced.is_empty()));
    }

    /// (flags, type code, value length) of each path attribute of an encoded UPDATE.
    fn attribute_headers(bytes: &[u8]) -> Vec<(u8, u8, usize)> {
        let u16_at = |at: usize| usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        let mut at = 21 + u16_at(19);
        let end = at + 2 + u16_at(at);
        at += 2;
        let mut headers = Vec::new();
        while at < end {
            let (flags, code) = (bytes[at], bytes[at + 1]);
            let (header, len) = if flags & 0x10 == 0 {
                (3, usize::from(bytes[at + 2]))
            } else {
                (4, u16_at(at + 2))
            };
            headers.push((flags, code, len));
            at += header + len;
        }
        assert_eq!(at, end, "attributes fill the block exactly");
        headers
    }

    /// Whether the Extended Length bit is set exactly on the attributes longer than 255 bytes.
    fn extended_length_only_past_255(headers: &[(u8, u8, usize)]) -> bool {
        headers
            .iter()
            .all(|(flags, _, len)| (flags & 0x10 != 0) == (*len > 255))
    }

    #[test]
    fn rfc7606_5_1_announcements_put_mp_reach_first_then_ascending_type_codes() {
        let mut r = route("2001:db8:cafe::1".parse().unwrap());
        let ibgp = Encoding {
            internal: true,
            ..EBGP
        };
        let headers = attribute_headers(&wire(announce(&r, ibgp)));
        let codes: Vec<u8> = headers.iter().map(|h| h.1).collect();
        assert_eq!(codes, [14, 1, 2, 5, 9, 10, 16, 26, 40, 255]);
        assert!(extended_length_only_past_255(&headers), "{headers:?}");
        assert!(headers.iter().all(|h| h.0 & 0x10 == 0), "{headers:?}");
        // The metric attribute's type code is configurable: it takes its place in the order.
        let headers = attribute_headers(&wire(announce(
            &r,
            Encoding {
                metric_code: 30,
                ..ibgp
            },
        )));
        let codes: Vec<u8> = headers.iter().map(|h| h.1).collect();
        assert_eq!(codes, [14, 1, 2, 5, 9, 10, 16, 26, 30, 40]);
        // A metric attribute over 255 bytes alone gets the Extended Length bit.
        let metrics = r.metrics.as_mut().unwrap();
        metrics.node = "n".repeat(crate::config::MAX_NODE_NAME);
        metrics.normalisation = "n".repeat(200);
        let headers = attribute_headers(&wire(announce(&r, ibgp)));
        assert!(extended_length_only_past_255(&headers), "{headers:?}");
        assert!(
            headers
                .iter()
                .any(|&(flags, code, _)| code == 255 && flags & 0x10 != 0),
            "{headers:?}"
        );
    }

    #[test]
    fn rfc7606_5_1_withdrawals_carry_one_mp_unreach_each() {
        let v6 = |i: u32| Withdrawn {
            prefix: IpNet::V6(Ipv6Net::new(Ipv6Addr::from(u128::from(i)), 128).unwrap()),
            path_id: i,
        };
        let v4 = Withdrawn {
            prefix: "198.18.0.1/32".parse().unwrap(),
            path_id: 3,
        };
        // One family per UPDATE: a second MP_UNREACH_NLRI would reset the session (§3 g).
        let messages = withdraw(&[v6(1), v4], AddPath::BOTH);
        assert_eq!(messages.len(), 2);
        for m in messages {
            let headers = attribute_headers(&wire(m));
            assert_eq!(headers.iter().map(|h| h.1).collect::<Vec<_>>(), [15]);
            assert!(extended_length_only_past_255(&headers), "{headers:?}");
        }
        // 180 IPv6 withdrawals take 3780 bytes: two length bytes.
        let many: Vec<Withdrawn> = (0..180).map(v6).collect();
        let [m] = &withdraw(&many, AddPath::BOTH)[..] else {
            panic!("one UPDATE")
        };
        let headers = attribute_headers(&wire(m.clone()));
        assert_eq!(headers, [(0x90, 15, 3 + 180 * 21)]);
    }

    #[test]
    fn a_malformed_metric_attribute_is_discarded_not_the_route() {
        let mut r = route("2001:db8:cafe::1".parse().unwrap());
        let BgpMessage::Update(update) = announce(&r, EBGP) else {
            unreachable!()
        };
        let attrs: Vec<PathAttribute> = update
            .path_attributes()
            .iter()
            .map(|a| match a.value() {
                PathAttributeValue::UnknownAttribute(u) if u.code() == 255 => attribute(
                    true,
                    true,
                    PathAttributeValue::UnknownAttribute(UnknownAttribute::new(
                        255,
                        vec![1, 3, 0, 1, 0],
                    )),
                ),
                _ => a.clone(),
            })
            .collect();
        let parsed = parse(&BgpUpdateMessage::new(vec![], attrs, vec![]), 255);
        r.metrics = None;
        assert_eq!(parsed.announced, vec![r]);
        assert_eq!(parsed.discarded.len(), 1, "{:?}", parsed.discarded);
    }

    #[test]
    fn every_message_we_send_fits_in_4096_bytes() {
        let max = usize::from(crate::bgp::errors::MAX_MESSAGE_LEN);
        let many: Vec<Withdrawn> = (0..1000u32)
            .map(|i| Withdrawn {
                prefix: IpNet::V6(Ipv6Net::new(Ipv6Addr::from(u128::from(i)), 128).unwrap()),
                path_id: u32::MAX,
            })
            .collect();
        let messages = withdraw(&many, AddPath::BOTH);
        assert_eq!(messages.len(), 1000usize.div_ceil(MAX_WITHDRAWN_PER_UPDATE));
        for m in messages {
            assert!(wire(m).len() <= max);
        }
        // The largest route: longest node name, every metric, long AS path and cluster list.
        let mut r = route("2001:db8:cafe::1".parse().unwrap());
        let metrics = r.metrics.as_mut().unwrap();
        metrics.node = "n".repeat(crate::config::MAX_NODE_NAME);
        let sample = metrics.metrics.capacity[0].1.total;
        metrics.metrics.capacity = crate::metrics::ComputeKind::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    Capacity {
                        total: sample,
                        free: sample,
                    },
                )
            })
            .collect();
        for s in [
            &mut metrics.metrics.cpu_utilisation,
            &mut metrics.metrics.load_average,
            &mut metrics.metrics.memory_available,
            &mut metrics.metrics.in_flight,
            &mut metrics.metrics.power,
            &mut metrics.metrics.price,
        ] {
            *s = Some(sample);
        }
        metrics.metrics.max_in_flight = Some(1e6);
        r.as_path = (0..255).collect();
        r.cluster_list = vec![Ipv4Addr::LOCALHOST; 64];
        r.originator_id = Some(Ipv4Addr::LOCALHOST);
        let size = wire(announce(&r, EBGP)).len();
        assert!(size <= max, "{size} bytes");
    }

    #[test]
    fn end_of_rib_markers_are_an_empty_update_and_an_empty_mp_unreach() {
        use crate::bgp::graceful::Family;
        // Header (marker, length 23, type 2), no withdrawn routes, no attributes.
        let ipv4 = wire(end_of_rib(Family::Ipv4Unicast));
        assert_eq!(&ipv4[16..], &[0, 23, 2, 0, 0, 0, 0]);
        // Attributes (6 bytes): MP_UNREACH_NLRI (optional, 15; a 1-byte length, RFC 7606
        // §5.1: Extended Length only when needed), length 3, AFI 2, SAFI 1, no NLRI.
        let ipv6 = wire(end_of_rib(Family::Ipv6Unicast));
        assert_eq!(&ipv6[16..], &[0, 29, 2, 0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]);
        for family in Family::ALL {
            let BgpMessage::Update(update) = unwire(&wire(end_of_rib(family))) else {
                panic!("not an UPDATE")
            };
            assert_eq!(update.end_of_rib(), Some(family.address_type()));
            assert_eq!(parse(&update, 255), Parsed::default(), "announces nothing");
        }
    }
}
