//! When to write a new ring. Load moves all the time; rings should not. A new set of weights is
//! published only when some node's share moved by more than `threshold` and at least
//! `min_dwell` has passed since the last publication. Membership changes (a node appears,
//! disappears or is drained) are published at once: they are about correctness, not balance.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::maglev::Weighted;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Largest change of any node's share (0..=1) that is ignored.
    pub threshold: f64,
    pub min_dwell: Duration,
    /// At most this share of ring slots move per publication (slots of vanished nodes always
    /// move).
    pub max_churn: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold: 0.05,
            min_dwell: Duration::from_secs(2),
            max_churn: 0.25,
        }
    }
}

/// The state of one service's ring: what was published and when.
#[derive(Clone, Debug, Default)]
pub struct Hysteresis {
    published: Option<(BTreeMap<u32, f64>, Instant)>,
}

/// Why [`Hysteresis::decide`] did or did not publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing published yet.
    First,
    /// A node appeared, vanished or got weight 0.
    Membership,
    /// Shares moved beyond the threshold and the dwell time has passed.
    Moved,
    /// Shares moved, but not beyond the threshold.
    WithinThreshold,
    /// Shares moved beyond the threshold, but too soon after the last publication.
    Dwelling,
}

impl Verdict {
    pub const fn publishes(self) -> bool {
        matches!(self, Self::First | Self::Membership | Self::Moved)
    }
}

impl Hysteresis {
    /// Decides whether `weights` should replace the published ones at `now`, and records them
    /// as published if so.
    pub fn decide(&mut self, settings: &Settings, weights: &[Weighted], now: Instant) -> Verdict {
        let next: BTreeMap<u32, f64> = weights
            .iter()
            .filter(|w| w.weight > 0.0)
            .map(|w| (w.node, w.weight))
            .collect();
        let verdict = match &self.published {
            None => Verdict::First,
            Some((current, _)) if current.keys().ne(next.keys()) => Verdict::Membership,
            Some((current, at)) => {
                let moved = current
                    .iter()
                    .map(|(node, w)| (w - next[node]).abs())
                    .fold(0.0, f64::max);
                if moved <= settings.threshold {
                    Verdict::WithinThreshold
                } else if now.duration_since(*at) < settings.min_dwell {
                    Verdict::Dwelling
                } else {
                    Verdict::Moved
                }
            }
        };
        if verdict.publishes() {
            self.published = Some((next, now));
        }
        verdict
    }

    /// The weights last published.
    pub fn published(&self) -> Option<&BTreeMap<u32, f64>> {
        self.published.as_ref().map(|(w, _)| w)
    }
}
