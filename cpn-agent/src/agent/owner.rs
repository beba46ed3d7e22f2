//! The single owner of the data plane: every map write goes through its channel, in order, so
//! "nodes before the ring that names them" holds by construction. It runs on a thread of its
//! own (`spawn_blocking`): a ring is 65 537 map writes, and the async tasks (BGP keepalives,
//! link probe answers) must not wait for them.

use std::net::Ipv6Addr;

use tokio::sync::mpsc;

use crate::dataplane::{Dataplane, Node, NodeState, ServiceAddr, ServiceConfig, SidBehavior};

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
}

/// Applies commands until every sender is gone, then hands the data plane back (to detach).
/// Blocking: run it with `spawn_blocking`.
pub fn run(mut dataplane: Dataplane, mut commands: mpsc::Receiver<Command>) -> Dataplane {
    while let Some(command) = commands.blocking_recv() {
        if let Err(error) = apply(&mut dataplane, &command) {
            tracing::error!(?command, error = %error, "data-plane update failed");
        }
    }
    dataplane
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
    }
}
