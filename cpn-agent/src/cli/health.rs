//! `cpnctl show health`, and the served-services part of `cpnctl show services`: each checked
//! service of this node, its state and its latest outcomes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::columns;
use crate::api::ServiceHealth;

/// The outcomes shown, newest last: `+` passed, `-` failed.
const SHOWN: usize = 10;

pub fn table(services: &[ServiceHealth]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let h = &s.health;
            let recent: String = h
                .history
                .iter()
                .skip(h.history.len().saturating_sub(SHOWN))
                .map(|o| if o.passed { '+' } else { '-' })
                .collect();
            let last = h.history.back();
            vec![
                s.service.to_string(),
                h.state.to_string(),
                h.since_unix_us.map_or_else(
                    || "-".to_owned(),
                    |at| {
                        let ago = Duration::from_micros(now.saturating_sub(at));
                        format!("{:.1} s", ago.as_secs_f64())
                    },
                ),
                format!("{}/{}", h.rise, h.fall),
                if recent.is_empty() {
                    "-".to_owned()
                } else {
                    recent
                },
                last.map_or_else(|| "-".to_owned(), |o| o.detail.clone()),
                format!("{}/{}", h.passed, h.failed),
            ]
        })
        .collect();
    columns(
        &[
            "SERVICE",
            "HEALTH",
            "SINCE",
            "RISE/FALL",
            "RECENT",
            "LAST",
            "PASSED/FAILED",
        ],
        &rows,
    )
}
