//! What a session knows and decides about its peer, without I/O: how an UPDATE changes the
//! peer's paths (RFC 7606, loop prevention, the import policy) and what to send it when our
//! routes or the RIB change (export policy, then the UPDATE diff). session.rs moves the
//! bytes; these functions are tested with plain values.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage, notification::BgpNotificationMessage, update::BgpUpdateMessage,
};

use super::{
    attributes::Malformed,
    errors::{self, Verdict},
    fsm::Negotiated,
    policy::{self, Local, PathIds, Peer, Received},
    rib::{PathChange, RibIn},
    route::{self, Route},
};

/// What an UPDATE does.
#[derive(Debug, PartialEq)]
pub enum Learnt {
    /// These changes to the peer's paths; `filtered` routes were dropped by the import policy.
    Changes {
        changes: Vec<PathChange>,
        filtered: u64,
    },
    /// It ends the session with this NOTIFICATION (RFC 7606 session reset).
    Reset {
        notification: BgpNotificationMessage,
        why: String,
    },
}

/// One peer as its session's logic sees it.
#[derive(Debug)]
pub struct PeerState {
    pub me: Local,
    /// The neighbor as policy sees it (ADD-PATH once negotiated).
    pub peer: Peer,
    /// The neighbor's BGP identifier, once the session is up.
    pub peer_id: Ipv4Addr,
    /// No next hop configured: routes we pass on carry our address on this session.
    pub next_hop_self: bool,
    /// The neighbor takes IPv4 routes with an IPv6 next hop (RFC 8950), once the session is up.
    pub ipv4_over_ipv6: bool,
    pub metric_code: u8,
    pub import: policy::Import,
    path_ids: PathIds,
    /// What this session has announced to the peer.
    advertised: Vec<Route>,
}

impl PeerState {
    pub fn new(me: Local, peer: Peer, metric_code: u8, import: policy::Import) -> Self {
        Self {
            me,
            peer,
            peer_id: Ipv4Addr::UNSPECIFIED,
            next_hop_self: me.next_hop.is_unspecified(),
            ipv4_over_ipv6: false,
            metric_code,
            import,
            path_ids: PathIds::default(),
            advertised: Vec::new(),
        }
    }

    const fn internal(&self) -> bool {
        self.peer.asn == self.me.asn
    }

    /// The session is up with what was negotiated; `local` is our end of its connection.
    /// Everything is to be announced again.
    pub fn up(&mut self, negotiated: &Negotiated, local: Option<IpAddr>) {
        // Without a configured next hop, next-hop-self is our end of this session.
        if self.next_hop_self
            && let Some(IpAddr::V6(local)) = local
        {
            self.me.next_hop = local;
        }
        self.peer.add_path = negotiated.add_path_tx;
        self.peer_id = negotiated.peer_router_id;
        self.ipv4_over_ipv6 = negotiated.ipv4_over_ipv6;
        self.advertised.clear();
    }

    /// The session is down (or the peer asked for everything again): nothing is announced.
    pub fn forget_advertised(&mut self) {
        self.advertised.clear();
    }

    /// How an UPDATE changes the peer's paths, weighed by RFC 7606 (errors.rs; `skipped` are
    /// the attributes the codec cut out of it), loop prevention and the import policy.
    pub fn learn(&self, update: &BgpUpdateMessage, skipped: &[Malformed]) -> Learnt {
        let neighbor = self.peer.address;
        let mut parsed = route::parse(update, self.metric_code);
        match errors::check(update, skipped, self.internal()) {
            Verdict::Accept { discarded } => parsed.discarded.extend(discarded),
            Verdict::TreatAsWithdraw { why, withdrawn } => {
                tracing::warn!(%neighbor, %why, "UPDATE treated as withdraw (RFC 7606)");
                // Every prefix announced, also those `parse` could not make a route of.
                parsed.announced.clear();
                parsed.withdrawn.extend(withdrawn);
            }
            Verdict::SessionReset { notification, why } => {
                return Learnt::Reset { notification, why };
            }
        }
        for discarded in &parsed.discarded {
            tracing::warn!(%neighbor, %discarded, "attribute discarded (RFC 7606)");
        }
        let mut changes: Vec<PathChange> = parsed
            .withdrawn
            .into_iter()
            .map(|w| PathChange::Withdraw {
                prefix: w.prefix,
                path_id: w.path_id,
            })
            .collect();
        let mut filtered = 0;
        for r in parsed.announced {
            let withdraw = PathChange::Withdraw {
                prefix: r.prefix,
                path_id: r.path_id,
            };
            if let Err(looped) = policy::accept(&self.me, &r) {
                // Treated as withdrawn: an earlier copy of the path goes too.
                tracing::debug!(%neighbor, prefix = %r.prefix, %looped, "route ignored");
                changes.push(withdraw);
            } else if self.import.classify(&r) == policy::Imported::Filtered {
                // Not a route cpn keeps (import policy): dropped and counted; an earlier copy
                // of the path goes too.
                filtered += 1;
                changes.push(withdraw);
            } else {
                changes.push(PathChange::Announce(Box::new(Received {
                    from: self.peer,
                    from_id: self.peer_id,
                    route: r,
                })));
            }
        }
        Learnt::Changes { changes, filtered }
    }

    /// The UPDATEs that bring the peer from what we announced to what we export now: our
    /// `originated` routes and those of `rib` we pass on.
    pub fn export(&mut self, originated: &[Route], rib: &RibIn) -> Vec<BgpMessage> {
        let received: Vec<Received> = rib.received().cloned().collect();
        let mut current = policy::export(
            &self.me,
            originated,
            &received,
            &self.peer,
            &mut self.path_ids,
        );
        // Our IPv4 routes carry an IPv6 next hop: only for a neighbor that takes them.
        current.retain(|r| self.ipv4_over_ipv6 || matches!(r.prefix, IpNet::V6(_)));
        let encoding = route::Encoding {
            metric_code: self.metric_code,
            add_path: self.peer.add_path,
            local_asn: self.me.asn,
            internal: self.internal(),
        };
        let messages = route::changes(&self.advertised, &current, encoding);
        self.advertised = current;
        messages
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use bytes::BytesMut;
    use tokio_util::codec::Decoder as _;

    use super::*;
    use crate::bgp::route::AddPath;

    const US: u32 = 65001;

    fn state(peer_asn: u32) -> PeerState {
        PeerState::new(
            Local {
                asn: US,
                router_id: Ipv4Addr::new(10, 0, 0, 1),
                cluster_id: Ipv4Addr::new(10, 0, 0, 1),
                next_hop: "2001:db8::1".parse().unwrap(),
            },
            Peer {
                address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                asn: peer_asn,
                rr_client: false,
                add_path: AddPath::default(),
            },
            255,
            policy::Import {
                keep_other: false,
                ..policy::Import::default()
            },
        )
    }

    /// An UPDATE announcing `prefix` with this `AS_PATH` (one `AS_SEQUENCE`), read by the codec.
    fn update(prefix: &str, as_path: &[u32]) -> (BgpUpdateMessage, Vec<Malformed>) {
        let net: ipnet::Ipv6Net = prefix.parse().unwrap();
        let mut path = vec![2, u8::try_from(as_path.len()).unwrap()];
        for asn in as_path {
            path.extend_from_slice(&asn.to_be_bytes());
        }
        let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, u8::try_from(path.len()).unwrap()];
        attrs.extend(path);
        let mut reach = vec![0, 2, 1, 16];
        reach.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        reach.push(0);
        reach.push(net.prefix_len());
        reach.extend_from_slice(
            &net.network().octets()[..usize::from(net.prefix_len().div_ceil(8))],
        );
        attrs.extend([0x80, 14, u8::try_from(reach.len()).unwrap()]);
        attrs.extend(reach);
        let mut body = vec![0, 0];
        body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        body.extend(attrs);
        let mut bytes = vec![0xff; 16];
        bytes.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        bytes.push(2);
        bytes.extend(body);
        let mut codec = super::super::speaker::codec(AddPath::default(), 255);
        let (message, skipped) = codec
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        let BgpMessage::Update(update) = message else {
            panic!("{message:?}")
        };
        (update, skipped)
    }

    #[test]
    fn a_cpn_locator_is_announced_a_plain_prefix_filtered_and_a_loop_withdrawn() {
        let peer = state(65002);
        let withdraw = |prefix: &str| PathChange::Withdraw {
            prefix: prefix.parse().unwrap(),
            path_id: 0,
        };
        let (plain, skipped) = update("2001:db8:99::/48", &[65002]);
        assert_eq!(
            peer.learn(&plain, &skipped),
            Learnt::Changes {
                changes: vec![withdraw("2001:db8:99::/48")],
                filtered: 1
            }
        );
        let (looped, skipped) = update("2001:db8:98::/48", &[65002, US]);
        assert_eq!(
            peer.learn(&looped, &skipped),
            Learnt::Changes {
                changes: vec![withdraw("2001:db8:98::/48")],
                filtered: 0
            }
        );
        let mut keep_all = state(65002);
        keep_all.import.keep_other = true;
        let Learnt::Changes { changes, filtered } = keep_all.learn(&plain, &skipped) else {
            panic!()
        };
        assert_eq!(filtered, 0);
        assert!(
            matches!(&changes[..], [PathChange::Announce(r)] if r.route.prefix.to_string() == "2001:db8:99::/48" && r.from.asn == 65002),
            "{changes:?}"
        );
    }

    #[test]
    fn export_sends_only_what_changed_and_everything_again_after_a_reset() {
        let mut peer = state(65002);
        let locator = Route {
            next_hop: Ipv6Addr::UNSPECIFIED,
            aigp: Some(0),
            ..Route::for_test("fc00:1::/32")
        };
        let rib = RibIn::default();
        let first = peer.export(std::slice::from_ref(&locator), &rib);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(peer.export(std::slice::from_ref(&locator), &rib).is_empty());
        peer.forget_advertised();
        assert_eq!(peer.export(std::slice::from_ref(&locator), &rib), first);
        // Withdrawn when we stop originating it.
        let gone = peer.export(&[], &rib);
        let [BgpMessage::Update(update)] = &gone[..] else {
            panic!("{gone:?}")
        };
        assert_eq!(route::parse(update, 255).withdrawn.len(), 1);
    }
}
