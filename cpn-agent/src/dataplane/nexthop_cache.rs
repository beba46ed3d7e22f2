//! The next-hop cache: keeps each data-plane node's cached next hop (`nexthop_sel`,
//! `nexthops`) equal to what `bpf_fib_lookup` would answer for its first segment, so that
//! `cpn_steer` needs no FIB lookup per packet.
//!
//! ```text
//!   owner ── watch: node id → first segment ──▶ nexthops ── Command::SetNextHop ──▶ owner
//!   kernel ── netlink notifications ─────────▶ (resolver)  ── watch: answers ──▶ control socket
//!                                                          ── managed neighbours ──▶ kernel
//! ```
//! The owner publishes the first segment of every node it writes (static and learned nodes
//! alike), so this task learns them from the one place that knows what the maps hold. It
//! resolves every node again when routes, rules, links, next-hop objects or forwarding change,
//! or when notifications were lost; the nodes through one gateway only when its neighbour
//! entry changes. Commands go only when an answer changes. Every gateway in use gets a managed
//! neighbour entry, which the kernel keeps resolved: XDP-redirected traffic never confirms a
//! neighbour.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, hash_map::Entry},
    net::Ipv6Addr,
    time::Duration,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::owner::{Command, FirstSegments};
use crate::{
    dataplane::kernel::KernelRoutes,
    dataplane::{
        NextHop, NotCached,
        resolver::{self, Change, Changes, Link, Neighbour, Route},
    },
};

/// The resolver's latest answer for one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub first_segment: Ipv6Addr,
    /// The next hop, or why there is none (the FIB path).
    pub answer: Result<NextHop, NotCached>,
}

/// The latest answers, by node id.
pub type Answers = BTreeMap<u32, Resolution>;

/// The managed neighbour entries this agent made (interface, address), to remove when no node
/// uses them; the task owns them (at stop, the agent removes every entry tagged as ours).
type ManagedNeighbours = BTreeSet<(u32, Ipv6Addr)>;

/// How long to wait before subscribing again when the notification socket failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How long to wait before resolving again when a netlink request failed.
const RETRY: Duration = Duration::from_secs(1);

/// What the task follows and where it reports.
#[derive(Debug)]
pub struct Io {
    /// The owner's nodes.
    pub nodes: watch::Receiver<FirstSegments>,
    pub commands: mpsc::Sender<Command>,
    pub answers: watch::Sender<Answers>,
}

/// What one pass resolves again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    Everything,
    /// The nodes whose next hop goes through one of these neighbours.
    Through(BTreeSet<(u32, Ipv6Addr)>),
}

/// The scope a batch of notifications asks for.
fn scope_of(changes: &[Change]) -> Option<Scope> {
    if changes
        .iter()
        .any(|c| matches!(c, Change::Everything | Change::Lost))
    {
        return Some(Scope::Everything);
    }
    let neighbours: BTreeSet<(u32, Ipv6Addr)> = changes
        .iter()
        .filter_map(|c| match *c {
            Change::Neighbour { ifindex, address } => Some((ifindex, address)),
            _ => None,
        })
        .collect();
    (!neighbours.is_empty()).then_some(Scope::Through(neighbours))
}

/// The command that brings the map from `sent` (what this task last wrote for the node) to
/// `answer`, if it must change.
fn command_for(
    node: u32,
    first_segment: Ipv6Addr,
    answer: &Result<NextHop, NotCached>,
    sent: Option<&NextHop>,
) -> Option<Command> {
    let next_hop = answer.as_ref().ok().copied();
    (next_hop.as_ref() != sent).then_some(Command::SetNextHop {
        node,
        first_segment,
        next_hop,
    })
}

/// The task's state between passes.
#[derive(Debug, Default)]
struct Cache {
    nodes: FirstSegments,
    /// Whether anything may be cached (forwarding, policy rules), as of the last full pass.
    allowed: Option<Result<(), NotCached>>,
    /// Each node's route, when it resolved: which neighbour its next hop goes through.
    routes: BTreeMap<u32, Route>,
    answers: Answers,
    /// What the map holds for each node, as this task wrote it (absent: not cached). The owner
    /// turns a node's next hop off itself when its first segment changes or it goes.
    sent: BTreeMap<u32, NextHop>,
}

/// One pass's memo: a gateway shared by many nodes is asked about once.
#[derive(Default)]
struct Memo {
    routes: HashMap<Ipv6Addr, Result<Route, NotCached>>,
    links: HashMap<u32, Option<Link>>,
    neighbours: HashMap<(u32, Ipv6Addr), Option<Neighbour>>,
}

/// Keeps the next-hop cache until aborted or until the owner stops.
pub async fn run(kernel: KernelRoutes, io: Io) {
    let Io {
        mut nodes,
        commands,
        answers,
    } = io;
    let mut managed = ManagedNeighbours::new();
    match resolver::our_managed_neighbours(&kernel).await {
        // Left by an agent that did not stop cleanly: ours again, removed if unused.
        Ok(left) => managed.extend(left),
        Err(error) => {
            tracing::debug!(error = %format!("{error:#}"), "looking for managed neighbours left behind");
        }
    }
    let mut notifications = subscribe();
    let mut cache = Cache::default();
    let mut managed_supported = true;
    let mut scope = Scope::Everything;
    loop {
        let current = nodes.borrow_and_update().clone();
        if current != cache.nodes {
            // The owner turned off the next hop of every node whose first segment changed (or
            // that was removed and written again: a new epoch).
            cache
                .sent
                .retain(|id, _| cache.nodes.get(id) == current.get(id));
            cache.nodes = current;
            scope = Scope::Everything;
        }
        let retry = match cache
            .pass(&kernel, &scope, &mut managed, &mut managed_supported)
            .await
        {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "resolving next hops; trying again in a second");
                Some(RETRY)
            }
        };
        for (id, resolution) in &cache.answers {
            let Some(command) = command_for(
                *id,
                resolution.first_segment,
                &resolution.answer,
                cache.sent.get(id),
            ) else {
                continue;
            };
            match &resolution.answer {
                Ok(next_hop) => {
                    cache.sent.insert(*id, *next_hop);
                }
                Err(_) => {
                    cache.sent.remove(id);
                }
            }
            if commands.send(command).await.is_err() {
                return;
            }
        }
        answers.send_if_modified(|published| {
            let changed = *published != cache.answers;
            published.clone_from(&cache.answers);
            changed
        });
        scope = tokio::select! {
            changed = nodes.changed() => match changed {
                Ok(()) => Scope::Everything,
                Err(_) => return,
            },
            next = next_change(&mut notifications) => next,
            () = sleep_or_never(retry) => Scope::Everything,
        };
    }
}

async fn sleep_or_never(pause: Option<Duration>) {
    match pause {
        Some(pause) => tokio::time::sleep(pause).await,
        None => std::future::pending().await,
    }
}

fn subscribe() -> Option<Changes> {
    match Changes::subscribe() {
        Ok(changes) => Some(changes),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "no netlink notifications: next hops are not cached until they work");
            None
        }
    }
}

/// The scope of the next batch of notifications that concerns us. A failed socket is
/// replaced (after a pause) and everything resolved again, as after an overflow.
async fn next_change(changes: &mut Option<Changes>) -> Scope {
    loop {
        let Some(socket) = changes else {
            tokio::time::sleep(RESUBSCRIBE).await;
            *changes = subscribe();
            if changes.is_some() {
                return Scope::Everything;
            }
            continue;
        };
        match socket.next().await {
            Ok(batch) => {
                if batch.contains(&Change::Lost) {
                    tracing::info!(
                        "netlink notifications were lost: resolving every next hop again"
                    );
                }
                if let Some(scope) = scope_of(&batch) {
                    return scope;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "netlink notifications failed: subscribing again");
                *changes = None;
            }
        }
    }
}

impl Cache {
    /// Resolves the nodes in `scope` and brings the managed neighbours in line.
    async fn pass(
        &mut self,
        kernel: &KernelRoutes,
        scope: &Scope,
        managed: &mut ManagedNeighbours,
        managed_supported: &mut bool,
    ) -> Result<()> {
        self.answers.retain(|id, _| self.nodes.contains_key(id));
        self.routes.retain(|id, _| self.nodes.contains_key(id));
        let ids: Vec<u32> = match scope {
            Scope::Everything => {
                self.allowed = Some(resolver::cache_allowed(kernel).await?);
                self.nodes.keys().copied().collect()
            }
            Scope::Through(neighbours) => self
                .routes
                .iter()
                .filter(|(_, r)| neighbours.contains(&(r.oif, r.neighbour)))
                .map(|(id, _)| *id)
                .collect(),
        };
        let allowed = self.allowed.clone().unwrap_or(Ok(()));
        let mut memo = Memo::default();
        for id in ids {
            let Some(first_segment) = self.nodes.get(&id).map(|f| f.address) else {
                continue;
            };
            let answer = match &allowed {
                Err(why) => {
                    self.routes.remove(&id);
                    Err(why.clone())
                }
                Ok(()) => {
                    self.resolve(
                        kernel,
                        id,
                        first_segment,
                        &mut memo,
                        managed,
                        managed_supported,
                    )
                    .await?
                }
            };
            let resolution = Resolution {
                first_segment,
                answer,
            };
            if self.answers.get(&id) != Some(&resolution) {
                match &resolution.answer {
                    Ok(next_hop) => tracing::info!(
                        node = id, %first_segment, ifindex = next_hop.ifindex,
                        neighbour = %next_hop.neighbour, mac = %next_hop.dst_mac, mtu = next_hop.mtu,
                        "next hop cached"
                    ),
                    Err(why) => {
                        tracing::info!(node = id, %first_segment, %why, "next hop not cached");
                    }
                }
                self.answers.insert(id, resolution);
            }
        }
        self.release_unused(kernel, managed).await;
        Ok(())
    }

    async fn resolve(
        &mut self,
        kernel: &KernelRoutes,
        id: u32,
        first_segment: Ipv6Addr,
        memo: &mut Memo,
        managed: &mut ManagedNeighbours,
        managed_supported: &mut bool,
    ) -> Result<Result<NextHop, NotCached>> {
        let route = if let Some(route) = memo.routes.get(&first_segment) {
            route.clone()
        } else {
            let route = resolver::route(kernel, first_segment).await?;
            memo.routes.insert(first_segment, route.clone());
            route
        };
        let route = match route {
            Ok(route) => route,
            Err(why) => {
                self.routes.remove(&id);
                return Ok(Err(why));
            }
        };
        self.routes.insert(id, route);
        let key = (route.oif, route.neighbour);
        if let Entry::Vacant(slot) = memo.neighbours.entry(key) {
            let mut neighbour = resolver::neighbour(kernel, route.oif, route.neighbour).await?;
            if *managed_supported
                && keep_resolved(kernel, key, neighbour.as_ref(), managed, managed_supported).await
            {
                neighbour = resolver::neighbour(kernel, route.oif, route.neighbour).await?;
            }
            slot.insert(neighbour);
        }
        if let Entry::Vacant(slot) = memo.links.entry(route.oif) {
            slot.insert(resolver::link(kernel, route.oif).await?);
        }
        let Some(link) = &memo.links[&route.oif] else {
            return Ok(Err(NotCached::InterfaceDown {
                interface: format!("#{}", route.oif),
            }));
        };
        Ok(resolver::next_hop(
            &route,
            link,
            memo.neighbours[&key].as_ref(),
        ))
    }

    /// Removes the managed entries we made that no node goes through any more.
    async fn release_unused(&self, kernel: &KernelRoutes, managed: &mut ManagedNeighbours) {
        let used: BTreeSet<(u32, Ipv6Addr)> =
            self.routes.values().map(|r| (r.oif, r.neighbour)).collect();
        let unused: Vec<(u32, Ipv6Addr)> = managed
            .iter()
            .filter(|n| !used.contains(n))
            .copied()
            .collect();
        for (ifindex, address) in unused {
            match resolver::unmanage_neighbour(kernel, ifindex, address).await {
                Ok(()) => {
                    tracing::info!(%address, ifindex, "managed neighbour no longer used: removed");
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "removing a managed neighbour");
                }
            }
            managed.remove(&(ifindex, address));
        }
    }
}

/// Makes the neighbour entry of a gateway in use managed, unless it is static (an operator's
/// `permanent` or `noarp` entry needs no resolving) or already managed. Whether it made one
/// (the caller reads the entry again).
async fn keep_resolved(
    kernel: &KernelRoutes,
    (ifindex, address): (u32, Ipv6Addr),
    neighbour: Option<&Neighbour>,
    managed: &mut ManagedNeighbours,
    supported: &mut bool,
) -> bool {
    if managed.contains(&(ifindex, address)) && neighbour.is_some_and(|n| n.managed) {
        return false;
    }
    match neighbour {
        Some(n) if n.is_static() => return false,
        // Someone else's managed entry: the kernel keeps it resolved already.
        Some(n) if n.managed && !n.ours => return false,
        _ => {}
    }
    match resolver::manage_neighbour(kernel, ifindex, address).await {
        Ok(()) => {
            tracing::info!(%address, ifindex, "gateway kept resolved by a managed neighbour entry");
            managed.insert((ifindex, address));
            true
        }
        Err(error) => {
            *supported = false;
            tracing::warn!(
                error = %format!("{error:#}"),
                "no managed neighbour entries: a cached next hop stays only while its neighbour \
                 is resolved by other traffic"
            );
            false
        }
    }
}

/// Removes the managed neighbour entries the agent made (at shutdown): every one the kernel
/// holds with the agent's tag.
pub async fn release_all(kernel: &KernelRoutes) {
    let ours = match resolver::our_managed_neighbours(kernel).await {
        Ok(ours) => ours,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "the managed neighbour entries stay (ip -6 neigh show proto 201)");
            return;
        }
    };
    for (ifindex, address) in ours {
        if let Err(error) = resolver::unmanage_neighbour(kernel, ifindex, address).await {
            tracing::warn!(error = %format!("{error:#}"), "removing a managed neighbour");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::MacAddr;

    const SEGMENT: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0xd6);
    const GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 2);

    fn next_hop(last: u8) -> NextHop {
        NextHop {
            ifindex: 4,
            mtu: 1500,
            neighbour: GATEWAY,
            dst_mac: MacAddr([2, 0, 0, 0, 0, last]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }
    }

    #[test]
    fn a_command_goes_only_when_the_map_must_change() {
        let cached = Ok(next_hop(2));
        assert_eq!(
            command_for(3, SEGMENT, &cached, None),
            Some(Command::SetNextHop {
                node: 3,
                first_segment: SEGMENT,
                next_hop: Some(next_hop(2))
            })
        );
        assert_eq!(command_for(3, SEGMENT, &cached, Some(&next_hop(2))), None);
        assert!(command_for(3, SEGMENT, &Ok(next_hop(9)), Some(&next_hop(2))).is_some());
        let gone = Err(NotCached::NoRoute);
        assert_eq!(
            command_for(3, SEGMENT, &gone, Some(&next_hop(2))),
            Some(Command::SetNextHop {
                node: 3,
                first_segment: SEGMENT,
                next_hop: None
            })
        );
        // Another reason, still nothing cached: the map stays as it is.
        assert_eq!(command_for(3, SEGMENT, &gone, None), None);
    }

    #[test]
    fn a_neighbour_change_resolves_only_the_nodes_behind_it() {
        let neighbour = Change::Neighbour {
            ifindex: 4,
            address: GATEWAY,
        };
        assert_eq!(
            scope_of(&[neighbour]),
            Some(Scope::Through(BTreeSet::from([(4, GATEWAY)])))
        );
        assert_eq!(
            scope_of(&[neighbour, Change::Everything]),
            Some(Scope::Everything)
        );
        assert_eq!(scope_of(&[Change::Lost]), Some(Scope::Everything));
        assert_eq!(scope_of(&[]), None);
    }
}
