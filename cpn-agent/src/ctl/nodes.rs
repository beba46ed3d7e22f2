//! `cpnctl show nodes`: the data plane's node entries, with names, ring slots and counters.

use super::{columns, or_dash};
use crate::control::NodeView;

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
