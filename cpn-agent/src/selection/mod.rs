//! Selection at the ingress (the CATS C-PS): candidates → policy filters → L1/L2 scores →
//! weights → weighted Maglev ring, with hysteresis so the network never oscillates.
//!
//! Every step is recorded in a [`Decision`] so that `cpnctl explain` can say why a flow goes
//! where it goes.

pub mod hysteresis;
pub mod maglev;
pub mod score;
pub mod steering;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::metrics::{ComputeKind, Measure, NodeMetrics};

/// The four demand grades of the CPN survey, by the compute a node must offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grade {
    /// Under 500 GFLOPS: anything qualifies.
    G4 = 4,
    /// 500 GFLOPS to 10 TFLOPS.
    G3 = 3,
    /// 10 TFLOPS to 1 PFLOPS.
    G2 = 2,
    /// Over 1 PFLOPS.
    G1 = 1,
}

impl Grade {
    /// The least total capacity (operations per second) a node needs for this grade.
    pub const fn min_capacity(self) -> f64 {
        match self {
            Self::G4 => 0.0,
            Self::G3 => 500e9,
            Self::G2 => 10e12,
            Self::G1 => 1e15,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::G1,
            2 => Self::G2,
            3 => Self::G3,
            4 => Self::G4,
            _ => return None,
        })
    }
}

/// Relative importance of the objectives (normalised when used). Omitted ones take their
/// defaults: latency 1, load 1, energy 0, price 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    pub latency: f64,
    pub load: f64,
    pub energy: f64,
    pub price: f64,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            latency: 1.0,
            load: 1.0,
            energy: 0.0,
            price: 0.0,
        }
    }
}

/// What a service asks of the nodes that serve it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub kind: ComputeKind,
    pub min_grade: Grade,
    pub max_latency: Option<Duration>,
    /// Fraction 0..=1.
    pub max_loss: Option<f64>,
    pub objective: Objective,
    /// Metrics older than this exclude a node.
    pub max_metric_age: Duration,
}

impl Policy {
    /// A service without a `[[policy]]`: any grade, no latency or loss bound, default weights.
    pub fn default_for(kind: ComputeKind) -> Self {
        Self {
            kind,
            min_grade: Grade::G4,
            max_latency: None,
            max_loss: None,
            objective: Objective::default(),
            max_metric_age: Duration::from_secs(10),
        }
    }
}

/// The network path to a candidate, as the ingress sees it; either part may be unknown (no
/// policy maximum excludes on it; the score gives it a neutral value, score.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// One way.
    pub latency: Measure<Duration>,
    /// Fraction 0..=1.
    pub loss: Measure<f64>,
}

impl Path {
    /// A node's path to itself.
    pub const LOCAL: Self = Self {
        latency: Measure::Known(Duration::ZERO),
        loss: Measure::Known(0.0),
    };
}

/// Whether a node takes new flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    #[default]
    Up,
    /// Weight 0: no new flows; flows it has stay (affinity).
    Drained,
    /// Weight 0 until STAMP has measured its path (or given up waiting): a node just learned.
    Measuring,
}

/// A node that serves the service, with what is known about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: u32,
    pub name: String,
    pub metrics: NodeMetrics,
    pub path: Path,
    pub admin: Admin,
}

/// Why a candidate gets no new flows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Its metrics are older than the policy allows.
    Stale {
        age: Duration,
    },
    /// It has no capacity of the kind the service needs.
    NoCapacity {
        kind: ComputeKind,
    },
    /// Its capacity is below the service's grade.
    BelowGrade {
        capacity: f64,
        needed: f64,
    },
    LatencyTooHigh {
        latency: Duration,
        max: Duration,
    },
    LossTooHigh {
        loss: f64,
        max: f64,
    },
    /// Drained by the operator.
    Drained,
    /// Just learned: its path is being measured (STAMP) before it takes flows.
    Measuring,
    /// Its score came out 0 (e.g. fully loaded).
    NoScore,
}

/// One candidate's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub node: u32,
    pub name: String,
    /// The L0 metrics it was judged on, and the path to it (`null` parts were unknown).
    pub metrics: NodeMetrics,
    pub path: Path,
    pub metric_age: Option<Duration>,
    pub scores: Option<score::Scores>,
    /// Share of new flows it should get (0..=1); 0 when excluded.
    pub weight: f64,
    pub excluded: Option<Exclusion>,
}

/// The outcome of selection for one service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub normalisation: &'static str,
    pub evaluations: Vec<Evaluation>,
}

impl Decision {
    /// Nodes with a weight, for the ring.
    pub fn weighted(&self) -> Vec<maglev::Weighted> {
        self.evaluations
            .iter()
            .filter(|e| e.weight > 0.0)
            .map(|e| maglev::Weighted {
                node: e.node,
                weight: e.weight,
            })
            .collect()
    }
}

/// Evaluates every candidate against the policy and weighs the eligible ones: weight is the
/// node's capacity of the service's kind times its L2 score, normalised to sum 1.
pub fn select(policy: &Policy, candidates: &[Candidate], now: SystemTime) -> Decision {
    let mut evaluations: Vec<Evaluation> = candidates
        .iter()
        .map(|c| evaluate(policy, c, candidates, now))
        .collect();
    let total: f64 = evaluations.iter().map(|e| e.weight).sum();
    if total > 0.0 {
        for e in &mut evaluations {
            e.weight /= total;
        }
    }
    Decision {
        normalisation: score::NORMALISATION,
        evaluations,
    }
}

fn evaluate(
    policy: &Policy,
    candidate: &Candidate,
    all: &[Candidate],
    now: SystemTime,
) -> Evaluation {
    let metric_age = candidate
        .metrics
        .oldest()
        .map(|t| now.duration_since(t).unwrap_or_default());
    let mut evaluation = Evaluation {
        node: candidate.node,
        name: candidate.name.clone(),
        metrics: candidate.metrics.clone(),
        path: candidate.path,
        metric_age,
        scores: None,
        weight: 0.0,
        excluded: None,
    };
    evaluation.excluded = exclusion(policy, candidate, metric_age);
    if evaluation.excluded.is_some() {
        return evaluation;
    }
    let scores = score::score(policy, candidate, all);
    let capacity = candidate
        .metrics
        .capacity(policy.kind)
        .map_or(0.0, |c| c.total.value);
    evaluation.weight = capacity * scores.l2;
    if evaluation.weight <= 0.0 {
        evaluation.excluded = Some(Exclusion::NoScore);
        evaluation.weight = 0.0;
    }
    evaluation.scores = Some(scores);
    evaluation
}

fn exclusion(
    policy: &Policy,
    candidate: &Candidate,
    metric_age: Option<Duration>,
) -> Option<Exclusion> {
    match candidate.admin {
        Admin::Drained => return Some(Exclusion::Drained),
        Admin::Measuring => return Some(Exclusion::Measuring),
        Admin::Up => {}
    }
    let age = metric_age.unwrap_or(Duration::MAX);
    if age > policy.max_metric_age {
        return Some(Exclusion::Stale { age });
    }
    let Some(capacity) = candidate.metrics.capacity(policy.kind) else {
        return Some(Exclusion::NoCapacity { kind: policy.kind });
    };
    let needed = policy.min_grade.min_capacity();
    if capacity.total.value <= 0.0 {
        return Some(Exclusion::NoCapacity { kind: policy.kind });
    }
    if capacity.total.value < needed {
        return Some(Exclusion::BelowGrade {
            capacity: capacity.total.value,
            needed,
        });
    }
    // Only what was measured can break a maximum: an unknown path is not a bad one.
    if let (Some(max), Measure::Known(latency)) = (policy.max_latency, candidate.path.latency)
        && latency > max
    {
        return Some(Exclusion::LatencyTooHigh { latency, max });
    }
    if let (Some(max), Measure::Known(loss)) = (policy.max_loss, candidate.path.loss)
        && loss > max
    {
        return Some(Exclusion::LossTooHigh { loss, max });
    }
    None
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "scores of exactly 0 or 1 are exact")]
mod tests;
