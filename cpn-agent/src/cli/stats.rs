//! `cpnctl show stats`: the data plane's counters by name, one table per kind.

use std::fmt::Write as _;

use super::columns;
use crate::api::{Count, Stats};

pub fn table(stats: &Stats) -> String {
    let mut out = String::new();
    let groups: [(&str, &str, &[Count]); 5] = [
        ("steered, per service", "SERVICE", &stats.services),
        ("encapsulated, per node", "NODE", &stats.nodes),
        ("processed, per local SID", "SID", &stats.sids),
        ("exceptions and drops", "REASON", &stats.reasons),
        (
            "seen, per program and protocol",
            "PROGRAM/PROTOCOL",
            &stats.protocols,
        ),
    ];
    for (title, header, counts) in groups {
        let _ = writeln!(out, "{title}");
        if counts.is_empty() {
            out.push_str("(none)\n\n");
            continue;
        }
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|c| vec![c.name.clone(), c.packets.to_string(), c.bytes.to_string()])
            .collect();
        out.push_str(&columns(&[header, "PACKETS", "BYTES"], &rows));
        out.push('\n');
    }
    out
}
