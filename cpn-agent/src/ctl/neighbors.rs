//! `cpnctl show neighbors`.

use super::{columns, millis, or_dash};
use crate::control::Neighbor;

pub fn table(neighbors: Vec<Neighbor>) -> String {
    let rows: Vec<Vec<String>> = neighbors
        .into_iter()
        .map(|n| {
            vec![
                n.address.to_string(),
                n.asn.to_string(),
                n.state,
                if n.stale_paths > 0 {
                    format!("{} ({} stale)", n.paths, n.stale_paths)
                } else {
                    n.paths.to_string()
                },
                if n.end_of_rib.is_empty() {
                    "-".to_owned()
                } else {
                    n.end_of_rib
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                or_dash(n.rtt_us.map(millis)),
                or_dash(n.jitter_us.map(millis)),
                or_dash(n.loss.map(|l| format!("{:.0} %", l * 100.0))),
                or_dash(n.link_alive.map(|a| if a { "up" } else { "down" })),
                n.messages.received.values().sum::<u64>().to_string(),
                n.messages.sent.values().sum::<u64>().to_string(),
            ]
        })
        .collect();
    columns(
        &[
            "NEIGHBOR",
            "AS",
            "STATE",
            "PATHS",
            "END-OF-RIB",
            "RTT",
            "JITTER",
            "LOSS",
            "LINK",
            "MSG RCVD",
            "MSG SENT",
        ],
        &rows,
    )
}
