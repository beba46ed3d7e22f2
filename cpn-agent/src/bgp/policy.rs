//! Which routes we accept and which we send to each neighbor: hop-by-hop propagation with
//! `AS_PATH` loop prevention (RFC 4271 §9) for the distributed mode, and route reflection
//! (RFC 4456) for the centralized mode. Pure functions over routes, so the rules are tested
//! without sockets.
//!
//! A route keeps its SID, AIGP and CPN metric attribute unchanged on the way: the ingress
//! steers by what the compute node said, not by what a router in between thought of it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv6Net};

use super::route::{AddPath, Route};

/// This speaker, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// RFC 4456 cluster identifier (the router id unless configured).
    pub cluster_id: Ipv4Addr,
    /// Next hop we put on routes sent over eBGP (next-hop-self).
    pub next_hop: Ipv6Addr,
}

/// Which learned routes the agent keeps (import policy), and which of them are cpn locators:
/// the only plain prefixes it ever installs in the kernel. A router that sends a full table
/// must not fill the host's FIB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Prefixes that hold cpn locators besides those a cpn agent marks as its own (for
    /// locators another router originates, e.g. from its IGP).
    pub locators: Vec<Ipv6Net>,
    /// Keep routes that are neither services nor locators in the Adj-RIB-In (shown by
    /// `cpnctl show routes`, never installed) instead of dropping them on arrival.
    pub keep_other: bool,
}

/// What the import policy does with a received route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// A service route: its anycast prefix with the site's SID (RFC 9252).
    Service,
    /// A cpn node's SRv6 locator: installed in the kernel once its next hop resolves.
    Locator,
    /// Anything else, kept for inspection (`keep_other`).
    Other,
    /// Anything else, dropped and counted.
    Filtered,
}

impl Import {
    /// A route is a cpn locator when it is an IPv6 prefix without a SID that either names its
    /// node in the CPN metric attribute (as every cpn agent's locator route does) or lies in
    /// one of the configured locator prefixes.
    pub fn classify(&self, route: &Route) -> Imported {
        if route.service.is_some() {
            return Imported::Service;
        }
        let locator = match route.prefix {
            IpNet::V6(net) => {
                route.metrics.is_some() || self.locators.iter().any(|block| block.contains(&net))
            }
            IpNet::V4(_) => false,
        };
        if locator {
            Imported::Locator
        } else if self.keep_other {
            Imported::Other
        } else {
            Imported::Filtered
        }
    }
}

/// A neighbor, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub asn: u32,
    /// We reflect routes to and from this iBGP neighbor (we are its route reflector).
    pub rr_client: bool,
    /// Families where the peer receives ADD-PATH: every path there, else only the best per
    /// prefix.
    pub add_path: AddPath,
}

impl Peer {
    fn internal(&self, local: &Local) -> bool {
        self.asn == local.asn
    }
}

/// A route in the Adj-RIB-In and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub from: Peer,
    /// The sending neighbor's BGP identifier (becomes `ORIGINATOR_ID` when we reflect).
    pub from_id: Ipv4Addr,
    pub route: Route,
}

/// Why a received route is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Loop {
    #[error("our AS {0} is in the AS_PATH")]
    OwnAs(u32),
    #[error("ORIGINATOR_ID is our router id")]
    OwnOriginator,
    #[error("our cluster id is in the CLUSTER_LIST")]
    OwnCluster,
}

/// Loop prevention on receipt: RFC 4271 §9.1.2 (`AS_PATH`) and RFC 4456 §8 (`ORIGINATOR_ID`,
/// `CLUSTER_LIST`). A looped route is treated as withdrawn.
pub fn accept(local: &Local, route: &Route) -> Result<(), Loop> {
    if route.as_path.contains(&local.asn) {
        return Err(Loop::OwnAs(local.asn));
    }
    if route.originator_id == Some(local.router_id) {
        return Err(Loop::OwnOriginator);
    }
    if route.cluster_list.contains(&local.cluster_id) {
        return Err(Loop::OwnCluster);
    }
    Ok(())
}

/// Path identifiers we send: one per site of a prefix (its service SID; a locator is one site),
/// stable while the site is reachable, so a metric refresh or a better path to the same site
/// replaces the path instead of adding one, and never reused.
#[derive(Debug, Default)]
pub struct PathIds {
    ids: HashMap<(IpNet, Option<Ipv6Addr>), u32>,
    last: u32,
}

impl PathIds {
    /// Identifiers for `paths` (one per site); those of sites no longer present are forgotten.
    fn assign(&mut self, paths: Vec<Route>) -> Vec<Route> {
        let mut previous = std::mem::take(&mut self.ids);
        paths
            .into_iter()
            .map(|mut r| {
                let key = (r.prefix, site(&r));
                let id = previous.remove(&key).unwrap_or_else(|| {
                    self.last = self.last.wrapping_add(1);
                    self.last
                });
                self.ids.insert(key, id);
                r.path_id = id;
                r
            })
            .collect()
    }
}

/// The site a path leads to: its service SID (each compute node has its own).
fn site(route: &Route) -> Option<Ipv6Addr> {
    route.service.map(|s| s.sid)
}

/// The routes to send to `to`: ours, and those learned from other neighbors that RFC 4271 and
/// RFC 4456 let us pass on, rewritten for the hop (`AS_PATH` prepend and next-hop-self over eBGP,
/// `ORIGINATOR_ID` and `CLUSTER_LIST` when reflecting).
pub fn export(
    local: &Local,
    originated: &[Route],
    received: &[Received],
    to: &Peer,
    ids: &mut PathIds,
) -> Vec<Route> {
    let ebgp = !to.internal(local);
    let mut out: Vec<(Option<IpAddr>, Route)> = originated
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if ebgp {
                r.as_path.insert(0, local.asn);
            }
            (None, r)
        })
        .collect();
    for rx in received {
        if rx.from.address == to.address {
            continue;
        }
        let reflect = rx.from.internal(local) && !ebgp;
        if reflect && !(rx.from.rr_client || to.rr_client) {
            // RFC 4271 §9.1.1: iBGP routes go to iBGP peers only through a reflector.
            continue;
        }
        let mut r = rx.route.clone();
        if ebgp {
            if r.as_path.contains(&to.asn) {
                continue; // the peer would drop it as a loop
            }
            r.as_path.insert(0, local.asn);
            r.next_hop = local.next_hop;
            // AIGP as it came: RFC 7311 §3.4 adds the IGP distance to the previous next hop,
            // and the agent runs no IGP. Path delay is STAMP's, measured at the ingress.
            r.originator_id = None;
            r.cluster_list.clear();
        } else if reflect {
            r.originator_id.get_or_insert(rx.from_id);
            r.cluster_list.insert(0, local.cluster_id);
        }
        out.push((Some(rx.from.address), r));
    }
    let (every_site, best_only): (Vec<_>, Vec<_>) = out
        .into_iter()
        .partition(|(_, r)| to.add_path.covers(&r.prefix));
    // ADD-PATH carries every site of a prefix, each by its best path: passing on every path
    // instead would multiply them by the AS paths of a meshed topology.
    let mut routes = ids.assign(best_by(every_site, |r| (r.prefix, site(r))));
    routes.extend(best_by(best_only, |r| r.prefix).into_iter().map(|mut r| {
        r.path_id = 0;
        r
    }));
    routes
}

/// The best path per `key`: ours first, then the lowest AIGP, then the shortest `AS_PATH`
/// (RFC 7311 §3.4 puts AIGP before `AS_PATH` length). Without ADD-PATH the key is the prefix.
fn best_by<K: PartialEq>(
    paths: Vec<(Option<IpAddr>, Route)>,
    key: impl Fn(&Route) -> K,
) -> Vec<Route> {
    let rank = |(source, r): &(Option<IpAddr>, Route)| {
        (
            source.is_some(),
            r.aigp.unwrap_or(u64::MAX),
            r.as_path.len(),
        )
    };
    let mut best: Vec<(Option<IpAddr>, Route)> = Vec::new();
    for path in paths {
        match best.iter_mut().find(|(_, b)| key(b) == key(&path.1)) {
            Some(current) if rank(&path) < rank(current) => *current = path,
            Some(_) => {}
            None => best.push(path),
        }
    }
    best.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::{super::route::ServiceSid, *};

    const ME: Local = Local {
        asn: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        cluster_id: Ipv4Addr::new(10, 0, 0, 1),
        next_hop: Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 1),
    };

    fn peer(last: u8, asn: u32, rr_client: bool) -> Peer {
        Peer {
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last.into())),
            asn,
            rr_client,
            add_path: AddPath::BOTH,
        }
    }

    fn route(path_id: u32, as_path: Vec<u32>) -> Route {
        Route {
            prefix: "2001:db8:cafe::1/128".parse().unwrap(),
            path_id,
            next_hop: "fc00:9::1".parse().unwrap(),
            service: Some(ServiceSid {
                sid: "fc00:9::d6".parse().unwrap(),
                behavior: cpn_common::maps::Behavior::EndDt6.code_point(),
            }),
            aigp: Some(500),
            metrics: None,
            link_bandwidth: Some(1e12),
            as_path,
            originator_id: None,
            cluster_list: Vec::new(),
        }
    }

    #[test]
    fn only_services_and_cpn_locators_are_imported() {
        let service = route(1, vec![65001]);
        let mut marked = route(2, vec![65001]);
        marked.prefix = "fc00:9::/32".parse().unwrap();
        marked.service = None;
        marked.metrics = Some(crate::bgp::metric_attr::CpnMetrics {
            node: "edge9".into(),
            ..Default::default()
        });
        let mut in_block = marked.clone();
        in_block.prefix = "5f00:1::/32".parse().unwrap();
        in_block.metrics = None;
        let mut foreign6 = in_block.clone();
        foreign6.prefix = "2001:db8:77::/48".parse().unwrap();
        let mut foreign4 = foreign6.clone();
        foreign4.prefix = "203.0.113.0/24".parse().unwrap();
        let strict = Import::default();
        let with_block = Import {
            locators: vec!["5f00::/16".parse().unwrap()],
            keep_other: false,
        };
        let keeping = Import {
            keep_other: true,
            ..Import::default()
        };
        assert_eq!(strict.classify(&service), Imported::Service);
        assert_eq!(strict.classify(&marked), Imported::Locator);
        assert_eq!(strict.classify(&in_block), Imported::Filtered);
        assert_eq!(with_block.classify(&in_block), Imported::Locator);
        assert_eq!(with_block.classify(&foreign6), Imported::Filtered);
        assert_eq!(strict.classify(&foreign4), Imported::Filtered);
        assert_eq!(keeping.classify(&foreign4), Imported::Other);
        assert_eq!(keeping.classify(&marked), Imported::Locator);
    }

    fn at_site(mut route: Route, sid: &str) -> Route {
        route.service = route.service.map(|s| ServiceSid {
            sid: sid.parse().unwrap(),
            ..s
        });
        route
    }

    fn received(from: Peer, route: Route) -> Received {
        Received {
            from,
            from_id: Ipv4Addr::new(10, 0, 0, 9),
            route,
        }
    }

    #[test]
    fn a_route_with_our_as_our_id_or_our_cluster_is_a_loop() {
        assert_eq!(accept(&ME, &route(1, vec![65001, 65002])), Ok(()));
        assert_eq!(
            accept(&ME, &route(1, vec![65001, 65000])),
            Err(Loop::OwnAs(65000))
        );
        let mut r = route(1, vec![]);
        r.originator_id = Some(ME.router_id);
        assert_eq!(accept(&ME, &r), Err(Loop::OwnOriginator));
        let mut r = route(1, vec![]);
        r.cluster_list = vec![Ipv4Addr::new(10, 9, 9, 9), ME.cluster_id];
        assert_eq!(accept(&ME, &r), Err(Loop::OwnCluster));
    }

    #[test]
    fn ebgp_hop_prepends_our_as_sets_next_hop_self_and_keeps_sid_aigp_metrics() {
        let a = peer(1, 65001, false);
        let b = peer(2, 65002, false);
        let learned = [received(a, route(7, vec![65001]))];
        let mut ids = PathIds::default();
        let out = export(&ME, &[], &learned, &b, &mut ids);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_path, vec![65000, 65001]);
        assert_eq!(out[0].next_hop, ME.next_hop);
        assert_eq!(out[0].service, learned[0].route.service);
        assert_eq!(
            out[0].aigp,
            Some(500),
            "AIGP as it came: we add no IGP distance"
        );
        // Never back to where it came from, nor to an AS already on the path.
        assert!(export(&ME, &[], &learned, &a, &mut ids).is_empty());
        let c = peer(3, 65001, false);
        assert!(export(&ME, &[], &learned, &c, &mut ids).is_empty());
    }

    #[test]
    fn originated_routes_get_our_as_only_over_ebgp() {
        let mut ids = PathIds::default();
        let ours = [route(1, vec![])];
        let ebgp = export(&ME, &ours, &[], &peer(1, 65001, false), &mut ids);
        assert_eq!(ebgp[0].as_path, vec![65000]);
        let ibgp = export(&ME, &ours, &[], &peer(2, 65000, false), &mut ids);
        assert!(ibgp[0].as_path.is_empty());
        assert_eq!(ibgp[0].next_hop, ours[0].next_hop);
    }

    #[test]
    fn ibgp_routes_reach_other_ibgp_peers_only_through_a_reflector() {
        let client_a = peer(1, 65000, true);
        let client_b = peer(2, 65000, true);
        let plain_c = peer(3, 65000, false);
        let plain_d = peer(4, 65000, false);
        let mut ids = PathIds::default();
        let from_client = [received(client_a, route(1, vec![]))];
        // Client to client and client to non-client: reflected with ORIGINATOR_ID and our cluster.
        for to in [client_b, plain_c] {
            let out = export(&ME, &[], &from_client, &to, &mut ids);
            assert_eq!(out.len(), 1, "{to:?}");
            assert_eq!(out[0].originator_id, Some(Ipv4Addr::new(10, 0, 0, 9)));
            assert_eq!(out[0].cluster_list, vec![ME.cluster_id]);
            assert_eq!(out[0].next_hop, from_client[0].route.next_hop);
            assert!(out[0].as_path.is_empty());
        }
        // Non-client to client: reflected; non-client to non-client: not (RFC 4456 §6).
        let from_plain = [received(plain_c, route(1, vec![]))];
        assert_eq!(export(&ME, &[], &from_plain, &client_a, &mut ids).len(), 1);
        assert!(export(&ME, &[], &from_plain, &plain_d, &mut ids).is_empty());
        // An ORIGINATOR_ID already set is kept; the cluster list grows at the front.
        let mut r = route(1, vec![]);
        r.originator_id = Some(Ipv4Addr::new(10, 0, 0, 42));
        r.cluster_list = vec![Ipv4Addr::new(10, 0, 0, 77)];
        let out = export(&ME, &[], &[received(client_a, r)], &client_b, &mut ids);
        assert_eq!(out[0].originator_id, Some(Ipv4Addr::new(10, 0, 0, 42)));
        assert_eq!(
            out[0].cluster_list,
            vec![ME.cluster_id, Ipv4Addr::new(10, 0, 0, 77)]
        );
    }

    #[test]
    fn add_path_ids_are_unique_per_source_and_stable_across_refreshes() {
        let a = peer(1, 65001, false);
        let b = peer(2, 65002, false);
        let to = peer(3, 65003, false);
        // Both neighbors use path id 1 for their own site: we must tell them apart.
        let learned = [
            received(a, at_site(route(1, vec![65001]), "fc00:1::d6")),
            received(b, at_site(route(1, vec![65002]), "fc00:2::d6")),
        ];
        let mut ids = PathIds::default();
        let first = export(&ME, &[route(1, vec![])], &learned, &to, &mut ids);
        let mut sent: Vec<u32> = first.iter().map(|r| r.path_id).collect();
        sent.sort_unstable();
        sent.dedup();
        assert_eq!(sent.len(), 3);
        let again = export(&ME, &[route(1, vec![])], &learned, &to, &mut ids);
        assert_eq!(
            first.iter().map(|r| r.path_id).collect::<Vec<_>>(),
            again.iter().map(|r| r.path_id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn without_add_path_only_the_best_path_per_prefix_goes_out() {
        let a = peer(1, 65001, false);
        let b = peer(2, 65002, false);
        let mut far = route(1, vec![65001]);
        far.aigp = Some(900);
        let mut near = route(1, vec![65002, 65005]);
        near.aigp = Some(100);
        let learned = [received(a, far), received(b, near)];
        let to = Peer {
            add_path: AddPath::default(),
            ..peer(3, 65003, false)
        };
        let out = export(&ME, &[], &learned, &to, &mut PathIds::default());
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].aigp,
            Some(100),
            "lowest AIGP wins over a shorter AS_PATH"
        );
        assert_eq!(out[0].path_id, 0);
        let out = export(
            &ME,
            &[route(9, vec![])],
            &learned,
            &to,
            &mut PathIds::default(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_path, vec![65000], "our own site is preferred");
    }

    #[test]
    fn add_path_sends_each_site_once_by_its_best_path() {
        // A meshed neighbourhood: site 1 heard from two neighbors over different AS paths.
        let a = peer(1, 65001, false);
        let b = peer(2, 65002, false);
        let to = peer(3, 65003, false);
        let mut long = at_site(route(1, vec![65002, 65004, 65001]), "fc00:1::d6");
        long.aigp = Some(900);
        let learned = [
            received(a, at_site(route(1, vec![65001]), "fc00:1::d6")),
            received(b, long),
            received(b, at_site(route(2, vec![65002]), "fc00:2::d6")),
        ];
        let mut ids = PathIds::default();
        let out = export(&ME, &[], &learned, &to, &mut ids);
        assert_eq!(out.len(), 2, "one path per site: {out:#?}");
        let one = out
            .iter()
            .find(|r| site(r) == "fc00:1::d6".parse().ok())
            .unwrap();
        assert_eq!(one.as_path, vec![65000, 65001], "the site's best path");
        // The best path goes away: the other path to the same site replaces it, same id.
        let id = one.path_id;
        let out = export(&ME, &[], &learned[1..], &to, &mut ids);
        let one = out
            .iter()
            .find(|r| site(r) == "fc00:1::d6".parse().ok())
            .unwrap();
        assert_eq!((one.path_id, one.as_path.len()), (id, 4));
    }
}
