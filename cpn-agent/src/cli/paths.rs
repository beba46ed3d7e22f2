//! `cpnctl show paths`: what STAMP measured along each candidate's encapsulation.

use super::{columns, millis, or_unknown};
use crate::api::PathView;

pub fn table(paths: &[PathView]) -> String {
    let us = |d: std::time::Duration| millis(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let rows: Vec<Vec<String>> = paths
        .iter()
        .map(|p| {
            let s = &p.stats;
            vec![
                p.node.clone(),
                or_unknown(s.delay.known().map(us)),
                or_unknown(s.rtt.known().map(us)),
                or_unknown(s.jitter.known().map(us)),
                or_unknown(s.loss.known().map(|l| format!("{:.1} %", l * 100.0))),
                or_unknown(s.inner_hops.known()),
                s.sent.to_string(),
                s.received.to_string(),
            ]
        })
        .collect();
    columns(
        &[
            "NODE", "DELAY", "RTT", "JITTER", "LOSS", "HOPS", "SENT", "RECEIVED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{metrics::Measure, sensing::stamp::session::PathStats};

    #[test]
    fn a_path_never_answered_reads_unknown_not_lossy() {
        let measured = PathStats {
            rtt: Measure::Known(Duration::from_micros(40_500)),
            delay: Measure::Known(Duration::from_micros(20_250)),
            jitter: Measure::Known(Duration::from_micros(300)),
            loss: Measure::Known(0.1),
            inner_hops: Measure::Known(0),
            sent: 200,
            received: 180,
        };
        let silent = PathStats {
            sent: 50,
            ..PathStats::default()
        };
        let text = table(&[
            PathView {
                node: "compute1".into(),
                stats: measured,
            },
            PathView {
                node: "legacy".into(),
                stats: silent,
            },
        ]);
        let rows = super::super::cells(&text);
        assert_eq!(
            rows[1],
            [
                "compute1", "20.25 ms", "40.50 ms", "0.30 ms", "10.0 %", "0", "200", "180"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "legacy", "unknown", "unknown", "unknown", "unknown", "unknown", "50", "0"
            ]
        );
    }
}
