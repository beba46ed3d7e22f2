//! L1 and L2 scores. The normalisation is named and versioned ([`NORMALISATION`]): every node
//! must use the same one (CATS framework §5.4), so a change of formula is a new name.
//!
//! `cpn-norm-v1`, all scores in 0..=1, higher is better:
//! - computing L1 = free / total capacity of the service's kind × (1 − CPU utilisation)
//!   × (1 − in-flight / max in-flight), for the factors that are known;
//! - communication L1 = (1 − latency / reference) × (1 − loss / reference), the references
//!   being the policy's maxima (default 100 ms and 5 %); an unknown latency or loss takes
//!   the neutral value of its factor ([`or_neutral`]);
//! - energy L1 and price L1 = the lowest value among the candidates / this node's value (1 when
//!   unknown);
//! - L2 = the objective-weighted mean of the L1 scores.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Candidate, Path, Policy};
use crate::metrics::Measure;

pub const NORMALISATION: &str = "cpn-norm-v1";

const DEFAULT_LATENCY_REFERENCE: Duration = Duration::from_millis(100);
const DEFAULT_LOSS_REFERENCE: f64 = 0.05;

/// A candidate's L1 scores per category and its L2 score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub computing: f64,
    pub communication: f64,
    pub energy: f64,
    pub price: f64,
    pub l2: f64,
}

pub fn score(policy: &Policy, candidate: &Candidate, all: &[Candidate]) -> Scores {
    let m = &candidate.metrics;
    let mut computing = 1.0;
    if let Some(c) = m.capacity(policy.kind)
        && c.total.value > 0.0
    {
        computing *= unit(c.free.value / c.total.value);
    }
    if let Some(u) = m.cpu_utilisation {
        computing *= unit(1.0 - u.value);
    }
    if let (Some(n), Some(max)) = (m.in_flight, m.max_in_flight)
        && max > 0.0
    {
        computing *= unit(1.0 - n.value / max);
    }
    let latency_ref = policy
        .max_latency
        .unwrap_or(DEFAULT_LATENCY_REFERENCE)
        .as_secs_f64();
    let loss_ref = policy.max_loss.unwrap_or(DEFAULT_LOSS_REFERENCE);
    let latency_factor = |p: &Path| {
        p.latency
            .map(|l| unit(1.0 - l.as_secs_f64() / latency_ref.max(1e-9)))
    };
    let loss_factor = |p: &Path| p.loss.map(|l| unit(1.0 - l / loss_ref.max(1e-9)));
    let communication = or_neutral(
        latency_factor(&candidate.path),
        all.iter().map(|c| latency_factor(&c.path)),
    ) * or_neutral(
        loss_factor(&candidate.path),
        all.iter().map(|c| loss_factor(&c.path)),
    );
    let energy = relative(
        m.power.map(|s| s.value),
        all.iter().filter_map(|c| c.metrics.power.map(|s| s.value)),
    );
    let price = relative(
        m.price.map(|s| s.value),
        all.iter().filter_map(|c| c.metrics.price.map(|s| s.value)),
    );
    let o = policy.objective;
    let total = o.latency + o.load + o.energy + o.price;
    let l2 = if total > 0.0 {
        (o.latency * communication + o.load * computing + o.energy * energy + o.price * price)
            / total
    } else {
        computing
    };
    Scores {
        computing,
        communication,
        energy,
        price,
        l2: unit(l2),
    }
}

/// A communication factor, or for an unknown one its neutral value: the mean of that factor
/// over the candidates that have it measured, so that being unmeasured neither wins against
/// the measured paths (as 0 ms or 0 % would) nor loses against them (as 100 % loss did); 1
/// when no candidate has it, since a factor that every candidate shares changes no ranking
/// and 1 leaves the other factor as it is.
fn or_neutral(factor: Measure<f64>, all: impl Iterator<Item = Measure<f64>>) -> f64 {
    if let Measure::Known(factor) = factor {
        return factor;
    }
    let (sum, count) = all
        .filter_map(Measure::known)
        .fold((0.0, 0_u32), |(sum, count), f| (sum + f, count + 1));
    if count == 0 {
        1.0
    } else {
        sum / f64::from(count)
    }
}

fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Best (lowest) value among all / this value; 1 when unknown.
fn relative(value: Option<f64>, all: impl Iterator<Item = f64>) -> f64 {
    let Some(value) = value else { return 1.0 };
    let best = all.fold(f64::INFINITY, f64::min);
    if value <= 0.0 || !best.is_finite() {
        1.0
    } else {
        unit(best / value)
    }
}
