//! The Adj-RIB-In: every path from every neighbor, as the routing core (core.rs) owns it.
//! Sessions describe what their peer changed as typed commands ([`RibCommand`]); the core
//! applies them in order and publishes the RIB in its snapshots.
//!
//! A peer with Graceful Restart whose connection closes without a NOTIFICATION keeps its paths,
//! marked stale, until it sends them again and its End-of-RIB, or until its restart time
//! (RFC 4724 §4.2). After our own restart, the RIB also holds the wait for the peers'
//! End-of-RIB (RFC 4724 §4.1), which the core ends at its deadline.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use ipnet::IpNet;
use tokio::sync::oneshot;

use super::{
    fsm::Down,
    graceful::{Deferral, Families, Family, Retain},
    policy::Received,
    route::Route,
};

/// A route learned from a neighbor.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    pub neighbor: IpAddr,
    pub route: Route,
}

/// A path in the Adj-RIB-In: neighbor, prefix, path identifier.
type PathKey = (IpAddr, IpNet, u32);

/// One change an UPDATE makes to its sender's paths.
#[derive(Clone, Debug, PartialEq)]
pub enum PathChange {
    /// The path is (again) this one: no longer stale.
    Announce(Box<Received>),
    /// The path goes (withdrawn, treated as withdrawn, looped or filtered): stale or not.
    Withdraw { prefix: IpNet, path_id: u32 },
}

/// Adj-RIB-In: every path from every neighbor (ADD-PATH keeps all sites of a prefix).
#[derive(Clone, Debug, Default)]
pub struct RibIn {
    routes: BTreeMap<PathKey, Received>,
    /// The paths kept from restarting neighbors (RFC 4724 §4.2); used as any other until they
    /// are sent again or go.
    stale: BTreeSet<PathKey>,
    /// The families whose End-of-RIB each neighbor has sent in its current session.
    end_of_rib: BTreeMap<IpAddr, Families>,
    /// Our wait for the neighbors' End-of-RIB after a restart (RFC 4724 §4.1).
    deferral: Deferral,
    /// Paths per neighbor in `routes`, kept along with it: the prefix limit reads it on every
    /// UPDATE, and counting a neighbor's paths would walk its whole table each time.
    paths: BTreeMap<IpAddr, usize>,
}

impl RibIn {
    /// A RIB that, after our restart, waits for the End-of-RIB of the peers in `deferral`.
    pub fn new(deferral: Deferral) -> Self {
        Self {
            deferral,
            ..Self::default()
        }
    }

    pub fn routes(&self) -> impl Iterator<Item = Learned> + '_ {
        self.routes.values().map(|r| Learned {
            neighbor: r.from.address,
            route: r.route.clone(),
        })
    }

    /// Every path as received, for export.
    pub fn received(&self) -> impl Iterator<Item = &Received> + '_ {
        self.routes.values()
    }

    /// A path kept from a neighbor that restarts, not sent again yet.
    pub fn is_stale(&self, learned: &Learned) -> bool {
        self.stale.contains(&(
            learned.neighbor,
            learned.route.prefix,
            learned.route.path_id,
        ))
    }

    /// The families whose End-of-RIB `neighbor` has sent since its session came up: its
    /// routes of those families are complete.
    pub fn end_of_rib(&self, neighbor: IpAddr) -> Families {
        self.end_of_rib.get(&neighbor).copied().unwrap_or_default()
    }

    /// Paths from `neighbor` in the RIB, stale ones included.
    pub fn paths_from(&self, neighbor: IpAddr) -> usize {
        self.paths.get(&neighbor).copied().unwrap_or(0)
    }

    /// Paths from `neighbor` kept stale from its last session.
    pub fn stale_from(&self, neighbor: IpAddr) -> usize {
        self.stale.iter().filter(|key| key.0 == neighbor).count()
    }

    /// Whether the wait for the peers' End-of-RIB is over (or there was none): we may send
    /// ours (RFC 4724 §4.1).
    pub const fn deferral_over(&self) -> bool {
        self.deferral.over()
    }

    /// When the wait for the peers' End-of-RIB ends at the latest, while it lasts.
    pub(crate) const fn deferral_deadline(&self) -> Option<Instant> {
        self.deferral.deadline()
    }

    /// The wait for the peers' End-of-RIB has reached its deadline (RFC 4724 §4.1).
    pub(crate) fn expire_deferral(&mut self) {
        self.deferral.expire();
    }

    /// Ends the wait for the peers' End-of-RIB if every peer it waits for has sent its own.
    pub(crate) fn settle_deferral(&mut self) {
        self.deferral.settle();
    }

    /// `neighbor`'s session is up: its End-of-RIB is awaited again, and after our restart we
    /// wait for the families in `awaited`.
    fn session_up(&mut self, neighbor: IpAddr, awaited: Families) {
        self.end_of_rib.remove(&neighbor);
        self.deferral.peer_up(neighbor, awaited);
    }

    /// Applies an UPDATE's changes from `neighbor`; whether the RIB changed.
    fn learn(&mut self, neighbor: IpAddr, changes: Vec<PathChange>) -> bool {
        let mut any = false;
        for change in changes {
            match change {
                PathChange::Withdraw { prefix, path_id } => {
                    any |= self.remove(&(neighbor, prefix, path_id));
                }
                PathChange::Announce(received) => {
                    let key = (neighbor, received.route.prefix, received.route.path_id);
                    self.stale.remove(&key);
                    self.insert(key, *received);
                    any = true;
                }
            }
        }
        any
    }

    /// Paths from `neighbor` sent in its current session: what its prefix limit counts.
    fn fresh_from(&self, neighbor: IpAddr) -> usize {
        self.paths_from(neighbor) - self.stale_from(neighbor)
    }

    /// `neighbor`'s session ended: its paths go, or stay stale (RFC 4724 §4.2).
    fn session_down(&mut self, neighbor: IpAddr, retain: Retain) {
        let stale = &mut self.stale;
        self.routes.retain(|key, _| {
            if key.0 != neighbor {
                return true;
            }
            let was_stale = stale.contains(key);
            let keep = match retain {
                Retain::Nothing => false,
                // Paths still stale from an earlier restart go (consecutive restarts).
                Retain::MarkStale(families) => !was_stale && families.contains(Family::of(&key.1)),
                Retain::StaleOnly => was_stale,
            };
            if keep {
                stale.insert(*key);
            } else {
                stale.remove(key);
            }
            keep
        });
        let left = self.routes.keys().filter(|key| key.0 == neighbor).count();
        if left == 0 {
            self.paths.remove(&neighbor);
        } else {
            self.paths.insert(neighbor, left);
        }
        self.end_of_rib.remove(&neighbor);
    }

    /// `neighbor`'s End-of-RIB for `family`: its routes of it are complete, the stale ones
    /// go; how many went.
    fn peer_end_of_rib(&mut self, neighbor: IpAddr, family: Family) -> usize {
        let gone = self.remove_stale(neighbor, [family].into_iter().collect());
        self.end_of_rib.entry(neighbor).or_default().insert(family);
        self.deferral.end_of_rib(neighbor, family);
        gone
    }

    /// Removes `neighbor`'s stale paths of `families`; how many went.
    fn remove_stale(&mut self, neighbor: IpAddr, families: Families) -> usize {
        let gone: Vec<PathKey> = self
            .stale
            .iter()
            .filter(|key| key.0 == neighbor && families.contains(Family::of(&key.1)))
            .copied()
            .collect();
        for key in &gone {
            self.remove(key);
        }
        gone.len()
    }

    fn insert(&mut self, key: PathKey, received: Received) {
        if self.routes.insert(key, received).is_none() {
            *self.paths.entry(key.0).or_default() += 1;
        }
    }

    /// Removes a path (stale or not); whether there was one.
    fn remove(&mut self, key: &PathKey) -> bool {
        self.stale.remove(key);
        let removed = self.routes.remove(key).is_some();
        if removed && let Some(n) = self.paths.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.paths.remove(&key.0);
            }
        }
        removed
    }

    /// Applies one command; whether the RIB (or the wait for End-of-RIB) changed.
    pub fn apply(&mut self, command: RibCommand) -> bool {
        match command {
            RibCommand::Up { neighbor, awaited } => {
                self.session_up(neighbor, awaited);
                true
            }
            RibCommand::Learn {
                neighbor,
                changes,
                fresh,
            } => {
                let changed = self.learn(neighbor, changes);
                if let Some(fresh) = fresh {
                    let _ = fresh.send(self.fresh_from(neighbor));
                }
                changed
            }
            RibCommand::EndOfRib { neighbor, family } => {
                let gone = self.peer_end_of_rib(neighbor, family);
                tracing::info!(%neighbor, family = family.name(), stale_paths_removed = gone, "End-of-RIB received");
                true
            }
            RibCommand::RemoveStale { neighbor, families } => {
                let gone = self.remove_stale(neighbor, families);
                tracing::info!(%neighbor, ?families, gone, "stale paths removed: the neighbor did not bring them back in time or kept no forwarding state (RFC 4724 §4.2)");
                gone > 0
            }
            RibCommand::Down {
                neighbor,
                why,
                retain,
            } => {
                self.session_down(neighbor, retain);
                let stale = self.stale_from(neighbor);
                if stale > 0 {
                    tracing::info!(%neighbor, reason = %why, stale, "BGP session down; the neighbor restarts: its paths stay, stale (RFC 4724 §4.2)");
                } else {
                    tracing::info!(%neighbor, reason = %why, "BGP session down");
                }
                true
            }
        }
    }

    /// A path as if `neighbor` (AS 65000) had sent it, for other modules' tests.
    #[cfg(test)]
    pub fn insert_for_test(&mut self, neighbor: IpAddr, route: Route) {
        use super::{policy::Peer, route::AddPath};
        let from = Peer {
            address: neighbor,
            asn: 65000,
            rr_client: false,
            add_path: AddPath::default(),
        };
        let key = (neighbor, route.prefix, route.path_id);
        self.insert(
            key,
            Received {
                from,
                from_id: std::net::Ipv4Addr::UNSPECIFIED,
                route,
            },
        );
    }
}

#[cfg(test)]
impl PathChange {
    /// `route` as `neighbor` (AS 65002) announced it, for other modules' tests.
    pub fn announce_for_test(neighbor: IpAddr, route: Route) -> Self {
        use super::{policy::Peer, route::AddPath};
        Self::Announce(Box::new(Received {
            from: Peer {
                address: neighbor,
                asn: 65002,
                rr_client: false,
                add_path: AddPath::default(),
            },
            from_id: std::net::Ipv4Addr::UNSPECIFIED,
            route,
        }))
    }
}

/// What a session tells the routing core of its peer's paths, in the order it happens.
#[derive(Debug)]
pub enum RibCommand {
    /// The session is up; after our restart we wait for its End-of-RIB of `awaited`.
    Up { neighbor: IpAddr, awaited: Families },
    /// An UPDATE's changes. With `fresh`, the task answers how many paths the neighbor has
    /// sent in its current session once they are applied (for its prefix limit).
    Learn {
        neighbor: IpAddr,
        changes: Vec<PathChange>,
        fresh: Option<oneshot::Sender<usize>>,
    },
    /// The neighbor's End-of-RIB for `family`.
    EndOfRib { neighbor: IpAddr, family: Family },
    /// The neighbor's restart time is over, or it kept no forwarding state (RFC 4724 §4.2).
    RemoveStale {
        neighbor: IpAddr,
        families: Families,
    },
    /// The session ended.
    Down {
        neighbor: IpAddr,
        why: Down,
        retain: Retain,
    },
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn route(prefix: &str, path_id: u32) -> Route {
        Route {
            path_id,
            as_path: vec![65002],
            ..Route::for_test(prefix)
        }
    }

    fn announce(neighbor: IpAddr, prefix: &str, path_id: u32) -> PathChange {
        PathChange::announce_for_test(neighbor, route(prefix, path_id))
    }

    #[test]
    fn paths_per_neighbor_follow_the_rib() {
        let mut rib = RibIn::default();
        rib.insert_for_test(A, route("2001:db8:1::/48", 1));
        rib.insert_for_test(A, route("2001:db8:1::/48", 1)); // replaces the path
        rib.insert_for_test(A, route("2001:db8:2::/48", 1));
        rib.insert_for_test(B, route("2001:db8:1::/48", 1));
        assert_eq!((rib.paths_from(A), rib.paths_from(B)), (2, 1));
        let key = (A, "2001:db8:2::/48".parse().unwrap(), 1);
        assert!(rib.remove(&key));
        assert!(!rib.remove(&key));
        assert_eq!(rib.paths_from(A), 1);
        rib.session_down(A, Retain::Nothing);
        assert_eq!((rib.paths_from(A), rib.paths_from(B)), (0, 1));
        assert_eq!(rib.routes().count(), 1);
        // A restart keeps the path stale, and counted, until it goes.
        rib.insert_for_test(A, route("2001:db8:3::/48", 1));
        rib.session_down(A, Retain::MarkStale(Families::ALL));
        assert_eq!(rib.paths_from(A), 1);
        assert_eq!(rib.remove_stale(A, Families::ALL), 1);
        assert_eq!(rib.paths_from(A), 0);
    }

    #[test]
    fn a_path_sent_again_is_fresh_and_only_fresh_paths_count_for_the_limit() {
        let mut rib = RibIn::default();
        rib.learn(
            A,
            vec![announce(A, "fc00:1::/32", 1), announce(A, "fc00:2::/32", 1)],
        );
        rib.session_down(A, Retain::MarkStale(Families::ALL));
        assert_eq!((rib.paths_from(A), rib.fresh_from(A)), (2, 0));
        rib.learn(A, vec![announce(A, "fc00:1::/32", 1)]);
        assert_eq!((rib.paths_from(A), rib.fresh_from(A)), (2, 1));
        // A withdrawal of a path that is not there changes nothing.
        assert!(!rib.learn(
            A,
            vec![PathChange::Withdraw {
                prefix: "fc00:9::/32".parse().unwrap(),
                path_id: 1
            }]
        ));
        // End-of-RIB: the stale path that did not come back goes.
        assert_eq!(rib.peer_end_of_rib(A, Family::Ipv6Unicast), 1);
        assert_eq!(
            rib.end_of_rib(A),
            [Family::Ipv6Unicast].into_iter().collect()
        );
        let fresh: Vec<_> = rib
            .routes()
            .map(|l| (l.route.prefix.to_string(), rib.is_stale(&l)))
            .collect();
        assert_eq!(fresh, [("fc00:1::/32".to_owned(), false)]);
    }
}
