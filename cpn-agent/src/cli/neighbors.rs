//! `cpnctl show neighbors`.

use std::time::Duration;

use super::{columns, millis};
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
    use crate::sensing::bfd::{
        Dropped, Status,
        packet::{Diagnostic, State},
    };

    fn status(state: State) -> Status {
        Status {
            state,
            remote_state: state,
            diagnostic: Diagnostic::None,
            multihop: false,
            local_discriminator: 0x1234,
            remote_discriminator: 0xabcd,
            interval_us: 10_000,
            multiplier: 3,
            transmit_interval_us: 10_000,
            detection_time_us: Some(30_000),
            changed_at_unix_us: None,
            down_at_unix_us: None,
        }
    }

    #[test]
    fn a_neighbor_without_bfd_reads_a_dash_not_down() {
        let neighbor = |address: &str, bfd: Option<Status>| Neighbor {
            address: address.parse().unwrap(),
            asn: 65000,
            state: crate::bgp::fsm::State::Established,
            paths: 2,
            stale_paths: 0,
            end_of_rib: Vec::new(),
            bfd,
            messages: crate::bgp::session::MessageCounts::default(),
            filtered: 0,
        };
        let text = table(vec![
            neighbor("2001:db8::1", Some(status(State::Up))),
            neighbor("2001:db8::2", None),
        ]);
        let bfd: Vec<&str> = super::super::cells(&text).iter().map(|r| r[6]).collect();
        assert_eq!(bfd, ["BFD", "up", "-"], "{text}");
    }

    #[test]
    fn the_bfd_table_shows_timers_discriminators_and_drops() {
        let view = BfdView {
            sessions: vec![crate::api::BfdSession {
                neighbor: "2001:db8::1".parse().unwrap(),
                status: status(State::Up),
            }],
            dropped: [(Dropped::Ttl, 2)].into(),
        };
        let text = bfd_table(&view);
        assert_eq!(
            super::super::cells(&text)[1],
            [
                "2001:db8::1",
                "up",
                "-",
                "up",
                "none",
                "single hop",
                "10.00 ms × 3",
                "10.00 ms",
                "30.00 ms",
                "0x00001234/0x0000abcd"
            ],
            "{text}"
        );
        assert!(text.ends_with("dropped: ttl 2\n"), "{text}");
    }
}
