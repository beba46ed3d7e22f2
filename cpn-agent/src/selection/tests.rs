use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;

use super::{hysteresis::*, maglev::Weighted, *};
use crate::metrics::{Capacity, Measure, Sample, Unit};

fn node(id: u32, kind: ComputeKind, total: f64, free: f64, at: SystemTime) -> Candidate {
    Candidate {
        node: id,
        name: format!("n{id}"),
        metrics: NodeMetrics {
            capacity: vec![(
                kind,
                Capacity {
                    total: Sample::nominal(total, Unit::OpsPerSecond, at),
                    free: Sample::measured(free, Unit::OpsPerSecond, at),
                },
            )],
            ..NodeMetrics::default()
        },
        path: Path {
            latency: Measure::Known(Duration::from_millis(5)),
            loss: Measure::Known(0.0),
        },
        admin: Admin::Up,
    }
}

fn policy(kind: ComputeKind) -> Policy {
    Policy {
        kind,
        min_grade: Grade::G4,
        max_latency: None,
        max_loss: None,
        objective: Objective {
            latency: 0.0,
            load: 1.0,
            energy: 0.0,
            price: 0.0,
        },
        max_metric_age: Duration::from_secs(10),
    }
}

fn weight(d: &Decision, node: u32) -> f64 {
    d.evaluations
        .iter()
        .find(|e| e.node == node)
        .unwrap()
        .weight
}

fn excluded(d: &Decision, node: u32) -> Option<Exclusion> {
    d.evaluations
        .iter()
        .find(|e| e.node == node)
        .unwrap()
        .excluded
        .clone()
}

#[test]
fn idle_nodes_share_by_capacity() {
    let now = SystemTime::now();
    let nodes = [
        node(1, ComputeKind::Cpu, 100.0, 100.0, now),
        node(2, ComputeKind::Cpu, 300.0, 300.0, now),
    ];
    let d = select(&policy(ComputeKind::Cpu), &nodes, now);
    assert!((weight(&d, 1) - 0.25).abs() < 1e-9);
    assert!((weight(&d, 2) - 0.75).abs() < 1e-9);
    assert_eq!(d.normalisation, "cpn-norm-v1");
}

#[test]
fn load_shifts_weight_away() {
    let now = SystemTime::now();
    let nodes = [
        node(1, ComputeKind::Cpu, 100.0, 10.0, now),
        node(2, ComputeKind::Cpu, 100.0, 90.0, now),
    ];
    let d = select(&policy(ComputeKind::Cpu), &nodes, now);
    assert!((weight(&d, 1) - 0.1).abs() < 1e-9, "{d:?}");
    assert!((weight(&d, 2) - 0.9).abs() < 1e-9);
}

#[test]
fn policy_filters_explain_themselves() {
    let now = SystemTime::now();
    let old = now - Duration::from_mins(1);
    let mut far = node(5, ComputeKind::Gpu, 2e13, 2e13, now);
    far.path.latency = Measure::Known(Duration::from_millis(80));
    let mut lossy = node(6, ComputeKind::Gpu, 2e13, 2e13, now);
    lossy.path.loss = Measure::Known(0.2);
    let mut drained = node(7, ComputeKind::Gpu, 2e13, 2e13, now);
    drained.admin = Admin::Drained;
    let nodes = [
        node(1, ComputeKind::Gpu, 2e13, 2e13, now),
        node(2, ComputeKind::Cpu, 2e13, 2e13, now),
        node(3, ComputeKind::Gpu, 1e12, 1e12, now),
        node(4, ComputeKind::Gpu, 2e13, 2e13, old),
        far,
        lossy,
        drained,
        node(8, ComputeKind::Gpu, 2e13, 0.0, now),
    ];
    let p = Policy {
        min_grade: Grade::G2,
        max_latency: Some(Duration::from_millis(50)),
        max_loss: Some(0.01),
        ..policy(ComputeKind::Gpu)
    };
    let d = select(&p, &nodes, now);
    assert_eq!(excluded(&d, 1), None);
    assert!((weight(&d, 1) - 1.0).abs() < 1e-9);
    assert_eq!(
        excluded(&d, 2),
        Some(Exclusion::NoCapacity {
            kind: ComputeKind::Gpu
        })
    );
    assert_eq!(
        excluded(&d, 3),
        Some(Exclusion::BelowGrade {
            capacity: 1e12,
            needed: 10e12
        })
    );
    assert!(matches!(excluded(&d, 4), Some(Exclusion::Stale { .. })));
    assert!(matches!(
        excluded(&d, 5),
        Some(Exclusion::LatencyTooHigh { .. })
    ));
    assert!(matches!(
        excluded(&d, 6),
        Some(Exclusion::LossTooHigh { .. })
    ));
    assert_eq!(excluded(&d, 7), Some(Exclusion::Drained));
    assert_eq!(excluded(&d, 8), Some(Exclusion::NoScore));
}

/// Behind a BIRD, FRR or GoBGP reflector nothing measures the path: such a candidate passes
/// `max_loss` and `max_latency_ms`, while a measured path above them is still excluded.
#[test]
fn unknown_path_is_never_excluded_by_the_maxima() {
    let now = SystemTime::now();
    let mut unmeasured = node(1, ComputeKind::Cpu, 100.0, 100.0, now);
    unmeasured.path = Path::default();
    let mut lossy = node(2, ComputeKind::Cpu, 100.0, 100.0, now);
    lossy.path.loss = Measure::Known(1.0);
    let mut far = node(3, ComputeKind::Cpu, 100.0, 100.0, now);
    far.path.latency = Measure::Known(Duration::from_millis(80));
    // Latency from AIGP, loss unknown: the reflector case with AIGP.
    let mut aigp_only = node(4, ComputeKind::Cpu, 100.0, 100.0, now);
    aigp_only.path.loss = Measure::Unknown;
    let p = Policy {
        max_latency: Some(Duration::from_millis(50)),
        max_loss: Some(0.01),
        ..policy(ComputeKind::Cpu)
    };
    let d = select(&p, &[unmeasured, lossy, far, aigp_only], now);
    assert_eq!(excluded(&d, 1), None);
    assert_eq!(excluded(&d, 4), None);
    assert_eq!(
        excluded(&d, 2),
        Some(Exclusion::LossTooHigh {
            loss: 1.0,
            max: 0.01
        })
    );
    assert!(matches!(
        excluded(&d, 3),
        Some(Exclusion::LatencyTooHigh { .. })
    ));
    assert!((weight(&d, 1) - 0.5).abs() < 1e-9, "{d:?}");
    // The explanation says what was unknown.
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(
        json["evaluations"][0]["path"],
        serde_json::json!({"latency": null, "loss": null})
    );
    assert_eq!(
        json["evaluations"][3]["path"]["loss"],
        serde_json::Value::Null
    );
    assert_eq!(
        json["evaluations"][3]["path"]["latency"],
        serde_json::json!({"secs": 0, "nanos": 5_000_000})
    );
}

/// An unknown latency or loss scores as the mean of the measured candidates' factors, or 1
/// when none is measured: neither the 0 ms / 0 % that would put it first nor the 100 % loss
/// that put it last.
#[test]
fn unknown_path_scores_the_measured_mean() {
    let now = SystemTime::now();
    let p = Policy {
        objective: Objective {
            latency: 1.0,
            load: 0.0,
            energy: 0.0,
            price: 0.0,
        },
        ..policy(ComputeKind::Cpu)
    };
    let at = |latency_ms: Option<u64>, loss: Option<f64>| {
        let mut c = node(1, ComputeKind::Cpu, 100.0, 100.0, now);
        c.path = Path {
            latency: latency_ms.map(Duration::from_millis).into(),
            loss: loss.into(),
        };
        c
    };
    // Default references: 100 ms and 5 %.
    let near = at(Some(10), Some(0.0)); // 0.9 × 1
    let far = at(Some(70), Some(0.025)); // 0.3 × 0.5
    let unmeasured = at(None, None);
    let all = [near.clone(), far.clone(), unmeasured.clone()];
    let communication = |c: &Candidate| score::score(&p, c, &all).communication;
    assert!((communication(&near) - 0.9).abs() < 1e-9);
    assert!((communication(&far) - 0.15).abs() < 1e-9);
    let neutral = f64::midpoint(0.9, 0.3) * f64::midpoint(1.0, 0.5);
    assert!((communication(&unmeasured) - neutral).abs() < 1e-9);
    // Unknown loss alone: the measured latency counts, the loss factor is the mean.
    let half = at(Some(50), None);
    let all = [near.clone(), far.clone(), half.clone()];
    let s = score::score(&p, &half, &all);
    assert!((s.communication - 0.5 * 0.75).abs() < 1e-9, "{s:?}");
    // Nobody measured: the factor is 1 for every candidate.
    let all = [unmeasured.clone(), at(None, None)];
    assert_eq!(score::score(&p, &unmeasured, &all).communication, 1.0);
    let aigp_only = at(Some(20), None);
    let all = [aigp_only.clone(), unmeasured.clone()];
    assert!((score::score(&p, &aigp_only, &all).communication - 0.8).abs() < 1e-9);
    assert!((score::score(&p, &unmeasured, &all).communication - 0.8).abs() < 1e-9);
}

#[test]
fn normalisation_bounds_and_relative_price() {
    let now = SystemTime::now();
    let mut cheap = node(1, ComputeKind::Cpu, 100.0, 100.0, now);
    cheap.metrics.price = Some(Sample::nominal(1.0, Unit::PricePerHour, now));
    let mut dear = node(2, ComputeKind::Cpu, 100.0, 100.0, now);
    dear.metrics.price = Some(Sample::nominal(4.0, Unit::PricePerHour, now));
    dear.metrics.cpu_utilisation = Some(Sample::measured(1.5, Unit::Ratio, now)); // nonsense: clamped
    let all = [cheap.clone(), dear.clone()];
    let p = Policy {
        objective: Objective {
            latency: 0.0,
            load: 0.0,
            energy: 0.0,
            price: 1.0,
        },
        ..policy(ComputeKind::Cpu)
    };
    let s1 = score::score(&p, &cheap, &all);
    let s2 = score::score(&p, &dear, &all);
    assert!((s1.price - 1.0).abs() < 1e-9 && (s2.price - 0.25).abs() < 1e-9);
    assert_eq!(s2.computing, 0.0);
    for s in [s1, s2] {
        for v in [s.computing, s.communication, s.energy, s.price, s.l2] {
            assert!((0.0..=1.0).contains(&v));
        }
    }
}

fn weights(pairs: &[(u32, f64)]) -> Vec<Weighted> {
    pairs
        .iter()
        .map(|&(node, weight)| Weighted { node, weight })
        .collect()
}

#[test]
fn membership_changes_publish_at_once() {
    let settings = Settings {
        threshold: 0.1,
        min_dwell: Duration::from_mins(1),
        max_churn: 0.2,
    };
    let mut h = Hysteresis::default();
    let t = Instant::now();
    assert_eq!(
        h.decide(&settings, &weights(&[(1, 0.5), (2, 0.5)]), t),
        Verdict::First
    );
    assert_eq!(
        h.decide(&settings, &weights(&[(1, 1.0)]), t),
        Verdict::Membership
    );
    assert_eq!(
        h.decide(&settings, &weights(&[(1, 0.5), (2, 0.5)]), t),
        Verdict::Membership
    );
    assert_eq!(
        h.decide(&settings, &weights(&[(1, 0.8), (2, 0.2)]), t),
        Verdict::Dwelling
    );
    let later = t + Duration::from_mins(1) + Duration::from_secs(1);
    assert_eq!(
        h.decide(&settings, &weights(&[(1, 0.8), (2, 0.2)]), later),
        Verdict::Moved
    );
}

proptest! {
    /// A metric oscillating just under the threshold never rewrites the ring, however long.
    #[test]
    fn oscillation_under_threshold_never_publishes(
        threshold in 0.01f64..0.3,
        swings in prop::collection::vec(0.0f64..0.999, 1..200),
    ) {
        let settings = Settings { threshold, min_dwell: Duration::from_millis(1), max_churn: 0.2 };
        let mut h = Hysteresis::default();
        let mut t = Instant::now();
        prop_assert!(h.decide(&settings, &weights(&[(1, 0.5), (2, 0.5)]), t).publishes());
        for swing in swings {
            t += Duration::from_hours(1);
            let delta = swing * threshold; // strictly under the threshold
            let verdict = h.decide(&settings, &weights(&[(1, 0.5 + delta), (2, 0.5 - delta)]), t);
            prop_assert!(!verdict.publishes(), "{verdict:?} at delta {delta}");
        }
    }
}
