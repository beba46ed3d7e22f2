//! The single owner of the data plane: every map write goes through its channel, in order, so
//! "nodes before the ring that names them" holds by construction. It runs on a thread of its
//! own (`spawn_blocking`): a ring is 65 537 map writes, and the async tasks (BGP keepalives,
//! STAMP reflections) must not wait for them.

use std::{collections::BTreeMap, net::Ipv6Addr};

use tokio::sync::{mpsc, watch};

use crate::dataplane::{
    Dataplane, NextHop, Node, NodeState, ServiceAddr, ServiceConfig, SidBehavior,
};

/// A node's first segment (the outer destination) as the owner wrote it: what the next-hop
/// cache resolves for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstSegment {
    pub address: Ipv6Addr,
    /// Changes whenever the owner has turned the node's cached next hop off itself (a new first
    /// segment, or the node removed and written again), so that the next-hop cache knows to
    /// write it again even when the address is the same as before.
    pub epoch: u64,
}

/// Node id → first segment of every node in the data plane.
pub type FirstSegments = BTreeMap<u32, FirstSegment>;

/// A change to the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    SetSid {
        sid: Ipv6Addr,
        behavior: SidBehavior,
        stats_index: u32,
    },
    RemoveSid(Ipv6Addr),
    /// Replaces the SR domain (`None`: every source).
    SetSrDomain(Option<Vec<ipnet::Ipv6Net>>),
    SetService {
        addr: ServiceAddr,
        config: ServiceConfig,
    },
    RemoveService(ServiceAddr),
    SetNode {
        id: u32,
        node: Node,
    },
    SetNodeState {
        id: u32,
        state: NodeState,
    },
    RemoveNode(u32),
    /// Writes the idle ring half, then flips the selector.
    PublishRing {
        service: u32,
        ring: Vec<u32>,
    },
    /// Caches how node `node`'s first segment is reached (`None`: not cached, the FIB path).
    /// Applied only while that is still the node's first segment: an answer for a segment the
    /// node no longer has is dropped.
    SetNextHop {
        node: u32,
        first_segment: Ipv6Addr,
        next_hop: Option<NextHop>,
    },
    /// The kernel's routing state changed: every cached FIB answer is stale.
    BumpFibGeneration,
    /// Every command sent before it is applied: the owner publishes the number on its
    /// `applied` watch, which steering waits for before it reports a step (its weights, the
    /// nodes in use) as done, so that what it reports is what the data plane does.
    Barrier(u64),
}

/// Runs [`run`] on a thread of its own; the nodes' first segments it publishes, and the
/// barriers it has applied.
pub fn spawn(
    dataplane: Dataplane,
    commands: mpsc::Receiver<Command>,
) -> (
    tokio::task::JoinHandle<Dataplane>,
    watch::Receiver<FirstSegments>,
    watch::Receiver<u64>,
) {
    let (first_segments, nodes) = watch::channel(FirstSegments::new());
    let (barriers, applied) = watch::channel(0);
    let owner =
        tokio::task::spawn_blocking(move || run(dataplane, commands, &first_segments, &barriers));
    (owner, nodes, applied)
}

/// Applies commands until every sender is gone, then hands the data plane back (to detach).
/// Publishes the nodes' first segments on `first_segments` as it writes them. Cached next hops
/// are turned off at the start and at the end: only a running agent keeps them current.
/// Blocking: run it with `spawn_blocking`.
pub fn run(
    mut dataplane: Dataplane,
    mut commands: mpsc::Receiver<Command>,
    first_segments: &watch::Sender<FirstSegments>,
    applied: &watch::Sender<u64>,
) -> Dataplane {
    clear_nexthops(&mut dataplane);
    let mut epochs = 0..;
    while let Some(command) = commands.blocking_recv() {
        if let Command::Barrier(mark) = command {
            applied.send_replace(mark);
            continue;
        }
        if let Command::SetNextHop {
            node,
            first_segment,
            ..
        } = &command
            && first_segments.borrow().get(node).map(|f| f.address) != Some(*first_segment)
        {
            tracing::debug!(node, %first_segment, "next hop for a first segment the node no longer has: dropped");
            continue;
        }
        match apply(&mut dataplane, &command) {
            Ok(()) => track(first_segments, &command, &mut epochs),
            Err(error) => tracing::error!(?command, error = %error, "data-plane update failed"),
        }
    }
    clear_nexthops(&mut dataplane);
    dataplane
}

/// Turns the caches that only a running agent keeps current off: the cached next hops, and the
/// FIB answer cache (its generation 0; the routing follower turns it on with its first bump).
fn clear_nexthops(dataplane: &mut Dataplane) {
    if let Err(error) = dataplane.clear_nexthops() {
        tracing::error!(%error, "turning the cached next hops off failed");
    }
    if let Err(error) = dataplane.disable_fib_cache() {
        tracing::error!(%error, "turning the FIB answer cache off failed");
    }
}

/// Follows the nodes' first segments through the commands that set and remove nodes (as
/// `Dataplane::set_node` and `remove_node` turn their next hops off).
fn track(
    first_segments: &watch::Sender<FirstSegments>,
    command: &Command,
    epochs: &mut std::ops::RangeFrom<u64>,
) {
    match command {
        Command::SetNode { id, node } => {
            let first = node.segments.first().copied();
            first_segments.send_if_modified(|segments| match first {
                Some(address) if segments.get(id).map(|f| f.address) == Some(address) => false,
                Some(address) => {
                    let epoch = epochs.next().unwrap_or(u64::MAX);
                    segments.insert(*id, FirstSegment { address, epoch });
                    true
                }
                None => segments.remove(id).is_some(),
            });
        }
        Command::RemoveNode(id) => {
            first_segments.send_if_modified(|segments| segments.remove(id).is_some());
        }
        _ => {}
    }
}

fn apply(dp: &mut Dataplane, command: &Command) -> Result<(), crate::dataplane::Error> {
    match command {
        Command::SetSid {
            sid,
            behavior,
            stats_index,
        } => dp.set_sid(*sid, *behavior, *stats_index),
        Command::RemoveSid(sid) => dp.remove_sid(*sid),
        Command::SetSrDomain(prefixes) => dp.set_sr_domain(prefixes.as_deref()),
        Command::SetService { addr, config } => dp.set_service(addr, config),
        Command::RemoveService(addr) => dp.remove_service(addr),
        Command::SetNode { id, node } => dp.set_node(*id, node),
        Command::SetNodeState { id, state } => dp.set_node_state(*id, *state),
        Command::RemoveNode(id) => dp.remove_node(*id),
        Command::PublishRing { service, ring } => {
            tracing::info!(service, slots = ring.len(), "publishing ring");
            dp.publish_ring(*service, ring)
        }
        Command::SetNextHop { node, next_hop, .. } => dp.set_nexthop(*node, *next_hop),
        Command::BumpFibGeneration => dp.bump_fib_generation(),
        // Handled by `run` before it applies anything.
        Command::Barrier(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(first: Ipv6Addr) -> Node {
        Node {
            segments: vec![first, Ipv6Addr::new(0xfc00, 9, 0, 0, 0, 0, 0, 0xd6)],
            encap_src: Ipv6Addr::UNSPECIFIED,
            reduced: false,
            state: NodeState::Active,
        }
    }

    /// The next-hop cache must write a node's next hop again whenever the owner turned it off,
    /// even when the first segment it ends up with is the one it had.
    #[test]
    fn each_node_write_that_turns_its_next_hop_off_is_a_new_epoch() {
        let (sender, mut receiver) = watch::channel(FirstSegments::new());
        let mut epochs = 0..;
        let a = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 2);
        let b = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 2);
        let set = |first| Command::SetNode {
            id: 3,
            node: node(first),
        };
        track(&sender, &set(a), &mut epochs);
        let first = receiver.borrow_and_update()[&3];
        assert_eq!(first.address, a);
        // The same first segment (a state or SID change): nothing to do.
        track(&sender, &set(a), &mut epochs);
        assert!(!receiver.has_changed().unwrap());
        track(&sender, &set(b), &mut epochs);
        let second = receiver.borrow_and_update()[&3];
        assert_eq!(second.address, b);
        // Removed and written again with the same segment, seen only once both happened.
        track(&sender, &Command::RemoveNode(3), &mut epochs);
        track(&sender, &set(b), &mut epochs);
        let third = receiver.borrow_and_update()[&3];
        assert_eq!(third.address, b);
        assert_ne!(third, second);
        track(&sender, &Command::RemoveNode(3), &mut epochs);
        assert!(receiver.borrow_and_update().is_empty());
    }
}
