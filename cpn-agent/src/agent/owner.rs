//! The single owner of the data plane: every map write goes through its channel, in order, so
//! "nodes before the ring that names them" holds by construction. It runs on a thread of its
//! own (`spawn_blocking`): a ring is 65 537 map writes, and the async tasks (BGP keepalives,
//! link probe answers) must not wait for them.

use std::{collections::BTreeMap, net::Ipv6Addr};

use tokio::sync::{mpsc, watch};

use crate::dataplane::{
    Dataplane, NextHop, Node, NodeState, ServiceAddr, ServiceConfig, SidBehavior,
};

/// Node id → first segment (the outer destination) of every node in the data plane, as the
/// owner has written them: what the next-hop cache resolves.
pub type FirstSegments = BTreeMap<u32, Ipv6Addr>;

/// A change to the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    SetSid {
        sid: Ipv6Addr,
        behavior: SidBehavior,
        stats_index: u32,
    },
    RemoveSid(Ipv6Addr),
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
}

/// Applies commands until every sender is gone, then hands the data plane back (to detach).
/// Publishes the nodes' first segments on `first_segments` as it writes them. Cached next hops
/// are turned off at the start and at the end: only a running agent keeps them current.
/// Blocking: run it with `spawn_blocking`.
pub fn run(
    mut dataplane: Dataplane,
    mut commands: mpsc::Receiver<Command>,
    first_segments: &watch::Sender<FirstSegments>,
) -> Dataplane {
    clear_nexthops(&mut dataplane);
    while let Some(command) = commands.blocking_recv() {
        if let Command::SetNextHop {
            node,
            first_segment,
            ..
        } = &command
            && first_segments.borrow().get(node) != Some(first_segment)
        {
            tracing::debug!(node, %first_segment, "next hop for a first segment the node no longer has: dropped");
            continue;
        }
        match apply(&mut dataplane, &command) {
            Ok(()) => track(first_segments, &command),
            Err(error) => tracing::error!(?command, error = %error, "data-plane update failed"),
        }
    }
    clear_nexthops(&mut dataplane);
    dataplane
}

fn clear_nexthops(dataplane: &mut Dataplane) {
    if let Err(error) = dataplane.clear_nexthops() {
        tracing::error!(%error, "turning the cached next hops off failed");
    }
}

/// Follows the nodes' first segments through the commands that set and remove nodes.
fn track(first_segments: &watch::Sender<FirstSegments>, command: &Command) {
    match command {
        Command::SetNode { id, node } => {
            let first = node.segments.first().copied();
            first_segments.send_if_modified(|segments| match first {
                Some(first) => segments.insert(*id, first) != Some(first),
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
    }
}
