//! `cpnctl show neighbors`.

use std::time::Duration;

use super::{columns, millis, or_unknown};
use crate::api::{BfdView, Neighbor};

pub fn table(neighbors: Vec<Neighbor>) -> String {
    let rows: Vec<Vec<String>> = neighbors
        .into_iter()
        .map(|n| {
            vec![
                n.address.to_string(),
                n.asn.to_string(),
                format!("{:?}", n.state),
                if n.stale_paths > 0 {
                    format!("{} ({} stale)", n.paths, n.stale_paths)
                } else {
                    n.paths.to_string()
                },
                n.filtered.to_string(),
                if n.end_of_rib.is_empty() {
                    "-".to_owned()
                } else {
                    n.end_of_rib
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                or_unknown(n.rtt_us.map(millis)),
                or_unknown(n.jitter_us.map(millis)),
                or_unknown(n.loss.map(|l| format!("{:.0} %", l * 100.0))),
                n.bfd
                    .map_or_else(|| "-".to_owned(), |b| b.state.to_string()),
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
            "FILTERED",
            "END-OF-RIB",
            "RTT",
            "JITTER",
            "LOSS",
            "BFD",
            "MSG RCVD",
            "MSG SENT",
        ],
        &rows,
    )
}

/// `cpnctl show bfd`: the sessions, then what BFD dropped.
pub fn bfd_table(view: &BfdView) -> String {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let since = |at: u64| {
        let ago = Duration::from_micros(now_us.saturating_sub(at));
        format!("{:.1} s", ago.as_secs_f64())
    };
    let rows: Vec<Vec<String>> = view
        .sessions
        .iter()
        .map(|s| {
            let b = s.status;
            vec![
                s.neighbor.to_string(),
                b.state.to_string(),
                b.changed_at_unix_us.map_or_else(|| "-".to_owned(), since),
                b.remote_state.to_string(),
                b.diagnostic.to_string(),
                if b.multihop { "multihop" } else { "single hop" }.to_owned(),
                format!("{} × {}", millis(b.interval_us), b.multiplier),
                millis(b.transmit_interval_us),
                b.detection_time_us.map_or_else(|| "-".to_owned(), millis),
                format!(
                    "{:#010x}/{:#010x}",
                    b.local_discriminator, b.remote_discriminator
                ),
            ]
        })
        .collect();
    let table = columns(
        &[
            "NEIGHBOR",
            "STATE",
            "SINCE",
            "REMOTE",
            "DIAGNOSTIC",
            "MODE",
            "CONFIGURED",
            "TX",
            "DETECT",
            "DISCRIMINATORS",
        ],
        &rows,
    );
    let dropped: Vec<String> = view
        .dropped
        .iter()
        .map(|(reason, n)| format!("{} {n}", reason.name()))
        .collect();
    if dropped.is_empty() {
        table + "dropped: none\n"
    } else {
        format!("{table}dropped: {}\n", dropped.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbor_that_never_answered_reads_unknown_not_down() {
        let neighbor = |address: &str, answered: bool| Neighbor {
            address: address.parse().unwrap(),
            asn: 65000,
            state: crate::bgp::fsm::State::Established,
            paths: 2,
            stale_paths: 0,
            end_of_rib: Vec::new(),
            rtt_us: answered.then_some(1_500),
            jitter_us: answered.then_some(100),
            loss: answered.then_some(0.02),
            bfd: None,
            messages: crate::bgp::session::MessageCounts::default(),
            filtered: 0,
        };
        let text = table(vec![
            neighbor("2001:db8::1", true),
            neighbor("2001:db8::2", false),
        ]);
        let links: Vec<Vec<&str>> = text
            .lines()
            .map(|l| {
                let cells: Vec<&str> = l
                    .split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                cells[6..10].to_vec()
            })
            .collect();
        assert_eq!(links[0], ["RTT", "JITTER", "LOSS", "BFD"], "{text}");
        assert_eq!(links[1], ["1.50 ms", "0.10 ms", "2 %", "-"], "{text}");
        assert_eq!(links[2], ["unknown", "unknown", "unknown", "-"], "{text}");
    }
}
