//! `cpnctl show nodes`: the data plane's node entries, with names, ring slots and counters.

use std::fmt::Write as _;

use super::{columns, or_dash};
use crate::{
    api::NodeView,
    dataplane::{Node, kernel},
};

/// The table, then a warning for each node whose encapsulated packets would leave this host by
/// an interface too small for them (looked up in this host's routes, as the agent does).
pub fn table_and_warnings(nodes: Vec<NodeView>) -> String {
    let paths: Vec<(String, std::net::Ipv6Addr, u32)> = nodes
        .iter()
        .filter_map(|n| {
            let first = *n.entry.segments.first()?;
            let node = Node {
                segments: n.entry.segments.clone(),
                encap_src: n.entry.encap_src,
                reduced: n.entry.reduced,
                state: crate::dataplane::NodeState::Active,
            };
            let name = n.name.clone().unwrap_or_else(|| n.entry.node.to_string());
            Some((name, first, node.encap_len()))
        })
        .collect();
    let mut out = table(nodes);
    match kernel::encap_mtu_warnings_now(paths) {
        Ok(warnings) => {
            for warning in warnings {
                let _ = writeln!(out, "warning: {warning}");
            }
        }
        Err(error) => {
            let _ = writeln!(out, "(egress MTUs not checked: {error:#})");
        }
    }
    out
}

pub fn table(nodes: Vec<NodeView>) -> String {
    let rows: Vec<Vec<String>> = nodes
        .into_iter()
        .map(|n| {
            let slots: Vec<String> = n
                .slots
                .iter()
                .map(|(service, slots)| format!("{slots} ({service})"))
                .collect();
            let segments: Vec<String> = n.entry.segments.iter().map(ToString::to_string).collect();
            vec![
                n.entry.node.to_string(),
                or_dash(n.name),
                n.entry.state,
                segments.join(" "),
                n.entry.encap_src.to_string(),
                if n.entry.reduced { "reduced" } else { "full" }.to_owned(),
                or_dash((!slots.is_empty()).then(|| slots.join(", "))),
                n.packets.to_string(),
                n.bytes.to_string(),
            ]
        })
        .collect();
    columns(
        &[
            "ID",
            "NODE",
            "STATE",
            "SEGMENTS",
            "ENCAP SRC",
            "ENCAP",
            "RING SLOTS",
            "PACKETS",
            "BYTES",
        ],
        &rows,
    )
}
