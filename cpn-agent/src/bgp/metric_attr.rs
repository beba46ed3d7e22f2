//! The CPN metric attribute: a node's compute metrics (L0, each with unit, source, statistic
//! and timestamp) in an optional transitive BGP path attribute. Layout (docs/BGP.md):
//!
//! ```text
//!   version (1) = 1, then TLVs: type (1) | length (2, network order) | value
//!   1 node name        UTF-8
//!   2 normalisation    UTF-8 name of the scoring function the sender uses ("cpn-norm-v1")
//!   3 capacity         kind (1) source (1) statistic (1) reserved (1) timestamp ms (8)
//!                      total (8, IEEE 754 binary64) free (8)                        = 28 bytes
//!   4 metric           id (1) unit (1) source (1) statistic (1) timestamp ms (8) value (8)
//!                                                                                   = 20 bytes
//!   5 score            computing L1 (8) L2 (8), both binary64 in 0..=1              = 16 bytes
//! ```
//! The score is the sender's own view (its policy for the service, no network path): the
//! one-number summary CATS calls L2. An ingress recomputes L1/L2 from the L0 values with its
//! own path and policy, since latency and the objective weights are only known there.
//! Unknown TLV types are skipped, so later versions can add some; a TLV running past the end
//! of the attribute, or a known TLV of the wrong length, makes the attribute malformed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{Capacity, ComputeKind, NodeMetrics, Sample, Source, Statistic, Unit};

pub const VERSION: u8 = 1;
/// Default path attribute type code: 255, "reserved for development" (RFC 2042).
pub const DEFAULT_TYPE_CODE: u8 = 255;

const TLV_NAME: u8 = 1;
const TLV_NORMALISATION: u8 = 2;
const TLV_CAPACITY: u8 = 3;
const TLV_METRIC: u8 = 4;
const TLV_SCORE: u8 = 5;

/// What the attribute carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpnMetrics {
    pub node: String,
    pub normalisation: String,
    pub metrics: NodeMetrics,
    pub score: Option<NodeScore>,
}

/// The sender's L1 computing score and L2 score (TLV 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeScore {
    pub computing: f64,
    pub l2: f64,
}

/// Why an attribute could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty attribute")]
    Empty,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("TLV {kind} at offset {offset} runs past the end of the attribute")]
    Truncated { kind: u8, offset: usize },
    #[error("TLV {kind} has length {len}, expected {expected}")]
    Length {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("TLV {kind}: {what}")]
    Value { kind: u8, what: &'static str },
}

/// A metric id of TLV 4 with how to read and write it in [`NodeMetrics`].
type MetricField = (
    u8,
    fn(&NodeMetrics) -> Option<Sample>,
    fn(&mut NodeMetrics, Sample),
);

/// Metric ids of TLV 4.
const METRICS: [MetricField; 6] = [
    (1, |m| m.cpu_utilisation, |m, s| m.cpu_utilisation = Some(s)),
    (2, |m| m.load_average, |m, s| m.load_average = Some(s)),
    (
        3,
        |m| m.memory_available,
        |m, s| m.memory_available = Some(s),
    ),
    (4, |m| m.in_flight, |m, s| m.in_flight = Some(s)),
    (6, |m| m.power, |m, s| m.power = Some(s)),
    (7, |m| m.price, |m, s| m.price = Some(s)),
];
/// `max_in_flight` is a plain number; it travels as metric 5 with unit "requests".
const MAX_IN_FLIGHT: u8 = 5;

pub fn encode(value: &CpnMetrics) -> Vec<u8> {
    let mut out = vec![VERSION];
    tlv(&mut out, TLV_NAME, value.node.as_bytes());
    tlv(&mut out, TLV_NORMALISATION, value.normalisation.as_bytes());
    for (kind, capacity) in &value.metrics.capacity {
        let mut v = vec![
            kind_code(*kind),
            source_code(capacity.free.source),
            statistic_code(capacity.free.statistic),
            0,
        ];
        v.extend_from_slice(&millis(capacity.free.at).to_be_bytes());
        v.extend_from_slice(&capacity.total.value.to_be_bytes());
        v.extend_from_slice(&capacity.free.value.to_be_bytes());
        tlv(&mut out, TLV_CAPACITY, &v);
    }
    for (id, get, _) in METRICS {
        if let Some(sample) = get(&value.metrics) {
            tlv(&mut out, TLV_METRIC, &metric(id, &sample));
        }
    }
    if let Some(max) = value.metrics.max_in_flight {
        let sample = Sample::nominal(max, Unit::Requests, UNIX_EPOCH);
        tlv(&mut out, TLV_METRIC, &metric(MAX_IN_FLIGHT, &sample));
    }
    if let Some(score) = value.score {
        let mut v = score.computing.to_be_bytes().to_vec();
        v.extend_from_slice(&score.l2.to_be_bytes());
        tlv(&mut out, TLV_SCORE, &v);
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<CpnMetrics, Malformed> {
    let (&version, mut rest) = bytes.split_first().ok_or(Malformed::Empty)?;
    if version != VERSION {
        return Err(Malformed::Version(version));
    }
    let mut out = CpnMetrics::default();
    let mut offset = 1;
    while !rest.is_empty() {
        let kind = rest[0];
        let len = match rest.get(1..3) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(Malformed::Truncated { kind, offset }),
        };
        let value = rest
            .get(3..3 + len)
            .ok_or(Malformed::Truncated { kind, offset })?;
        let exact = |expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(Malformed::Length {
                    kind,
                    len,
                    expected,
                })
            }
        };
        match kind {
            TLV_NAME | TLV_NORMALISATION => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| Malformed::Value {
                        kind,
                        what: "not UTF-8",
                    })?
                    .to_owned();
                if kind == TLV_NAME {
                    out.node = text;
                } else {
                    out.normalisation = text;
                }
            }
            TLV_CAPACITY => {
                exact(28)?;
                out.metrics.capacity.push(decode_capacity(value)?);
            }
            TLV_METRIC => {
                exact(20)?;
                let (id, sample) = decode_metric(value)?;
                if id == MAX_IN_FLIGHT {
                    out.metrics.max_in_flight = Some(sample.value);
                } else if let Some((_, _, set)) = METRICS.iter().find(|(m, _, _)| *m == id) {
                    set(&mut out.metrics, sample);
                }
            }
            TLV_SCORE => {
                exact(16)?;
                let (computing, l2) = (be_f64(&value[..8]), be_f64(&value[8..]));
                if !((0.0..=1.0).contains(&computing) && (0.0..=1.0).contains(&l2)) {
                    return Err(Malformed::Value {
                        kind,
                        what: "score outside 0..=1",
                    });
                }
                out.score = Some(NodeScore { computing, l2 });
            }
            _ => {} // Unknown TLVs are skipped.
        }
        offset += 3 + len;
        rest = &rest[3 + len..];
    }
    Ok(out)
}

/// Source, statistic and timestamp, as both value TLVs carry them.
fn sample_header(
    kind: u8,
    source: u8,
    statistic: u8,
    millis: &[u8],
) -> Result<(Source, Statistic, SystemTime), Malformed> {
    let source = source_from(source).ok_or(Malformed::Value {
        kind,
        what: "unknown source",
    })?;
    let statistic = statistic_from(statistic).ok_or(Malformed::Value {
        kind,
        what: "unknown statistic",
    })?;
    Ok((
        source,
        statistic,
        UNIX_EPOCH + Duration::from_millis(be_u64(millis)),
    ))
}

fn decode_capacity(v: &[u8]) -> Result<(ComputeKind, Capacity), Malformed> {
    let kind = kind_from(v[0]).ok_or(Malformed::Value {
        kind: TLV_CAPACITY,
        what: "unknown compute kind",
    })?;
    let (source, statistic, at) = sample_header(TLV_CAPACITY, v[1], v[2], &v[4..12])?;
    let total = Sample::nominal(be_f64(&v[12..20]), Unit::OpsPerSecond, at);
    let free = Sample {
        value: be_f64(&v[20..28]),
        unit: Unit::OpsPerSecond,
        source,
        statistic,
        at,
    };
    Ok((kind, Capacity { total, free }))
}

fn decode_metric(v: &[u8]) -> Result<(u8, Sample), Malformed> {
    let unit = unit_from(v[1]).ok_or(Malformed::Value {
        kind: TLV_METRIC,
        what: "unknown unit",
    })?;
    let (source, statistic, at) = sample_header(TLV_METRIC, v[2], v[3], &v[4..12])?;
    Ok((
        v[0],
        Sample {
            value: be_f64(&v[12..20]),
            unit,
            source,
            statistic,
            at,
        },
    ))
}

fn be_f64(bytes: &[u8]) -> f64 {
    f64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(value);
}

fn metric(id: u8, sample: &Sample) -> Vec<u8> {
    let mut v = vec![
        id,
        unit_code(sample.unit),
        source_code(sample.source),
        statistic_code(sample.statistic),
    ];
    v.extend_from_slice(&millis(sample.at).to_be_bytes());
    v.extend_from_slice(&sample.value.to_be_bytes());
    v
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

macro_rules! codes {
    ($code:ident, $from:ident, $ty:ty, { $($variant:path = $n:literal),+ $(,)? }) => {
        const fn $code(v: $ty) -> u8 {
            match v { $($variant => $n),+ }
        }
        const fn $from(n: u8) -> Option<$ty> {
            match n { $($n => Some($variant),)+ _ => None }
        }
    };
}

codes!(kind_code, kind_from, ComputeKind, { ComputeKind::Cpu = 1, ComputeKind::Gpu = 2, ComputeKind::Npu = 3 });
codes!(source_code, source_from, Source, {
    Source::Nominal = 1, Source::Measured = 2, Source::Estimated = 3, Source::Aggregated = 4,
});
codes!(statistic_code, statistic_from, Statistic, {
    Statistic::Cur = 1, Statistic::Mean = 2, Statistic::Max = 3, Statistic::Min = 4,
});
codes!(unit_code, unit_from, Unit, {
    Unit::OpsPerSecond = 1, Unit::Ratio = 2, Unit::Tasks = 3, Unit::Bytes = 4, Unit::Requests = 5,
    Unit::Watts = 6, Unit::PricePerHour = 7, Unit::Milliseconds = 8,
});

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn example() -> CpnMetrics {
        let t = at(1_700_000_000_123);
        CpnMetrics {
            node: "edge1".into(),
            normalisation: "cpn-norm-v1".into(),
            metrics: NodeMetrics {
                capacity: vec![(
                    ComputeKind::Cpu,
                    Capacity {
                        total: Sample {
                            value: 2e12,
                            unit: Unit::OpsPerSecond,
                            source: Source::Nominal,
                            statistic: Statistic::Cur,
                            at: t,
                        },
                        free: Sample {
                            value: 1.5e12,
                            unit: Unit::OpsPerSecond,
                            source: Source::Estimated,
                            statistic: Statistic::Cur,
                            at: t,
                        },
                    },
                )],
                in_flight: Some(Sample::measured(17.0, Unit::Requests, t)),
                max_in_flight: Some(100.0),
                ..NodeMetrics::default()
            },
            score: Some(NodeScore {
                computing: 0.625,
                l2: 0.8125,
            }),
        }
    }

    /// The exact bytes of a known value, both ways.
    #[test]
    fn bytes_and_struct_agree() {
        let bytes = encode(&example());
        let mut expected = vec![1, 1, 0, 5];
        expected.extend_from_slice(b"edge1");
        expected.extend_from_slice(&[2, 0, 11]);
        expected.extend_from_slice(b"cpn-norm-v1");
        expected.extend_from_slice(&[3, 0, 28, 1, 3, 1, 0]);
        expected.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        expected.extend_from_slice(&2e12f64.to_be_bytes());
        expected.extend_from_slice(&1.5e12f64.to_be_bytes());
        expected.extend_from_slice(&[4, 0, 20, 4, 5, 2, 1]);
        expected.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        expected.extend_from_slice(&17f64.to_be_bytes());
        expected.extend_from_slice(&[4, 0, 20, 5, 5, 1, 1]);
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&100f64.to_be_bytes());
        expected.extend_from_slice(&[5, 0, 16]);
        expected.extend_from_slice(&0.625f64.to_be_bytes());
        expected.extend_from_slice(&0.8125f64.to_be_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(decode(&expected).unwrap(), example());
    }

    #[test]
    fn unknown_tlvs_are_skipped() {
        let mut bytes = encode(&example());
        bytes.extend_from_slice(&[99, 0, 2, 0xab, 0xcd]);
        assert_eq!(decode(&bytes).unwrap(), example());
    }

    #[test]
    fn malformed_attributes_are_named() {
        assert_eq!(decode(&[]), Err(Malformed::Empty));
        assert_eq!(decode(&[2]), Err(Malformed::Version(2)));
        assert_eq!(
            decode(&[1, 1, 0, 9, b'a']),
            Err(Malformed::Truncated { kind: 1, offset: 1 })
        );
        assert_eq!(
            decode(&[1, 3, 0, 1, 0]),
            Err(Malformed::Length {
                kind: 3,
                len: 1,
                expected: 28
            })
        );
        assert!(matches!(
            decode(&[1, 1, 0, 1, 0xff]),
            Err(Malformed::Value { kind: 1, .. })
        ));
        let mut score = vec![1, 5, 0, 16];
        score.extend_from_slice(&2f64.to_be_bytes());
        score.extend_from_slice(&0.5f64.to_be_bytes());
        assert!(matches!(
            decode(&score),
            Err(Malformed::Value { kind: 5, .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn round_trip(total in 0f64..1e18, free in 0f64..1e18, inflight in 0f64..1e6, ms in 0u64..4_000_000_000_000) {
            let mut value = example();
            value.metrics.capacity[0].1.total.value = total;
            value.metrics.capacity[0].1.free.value = free;
            value.metrics.capacity[0].1.total.at = at(ms);
            value.metrics.capacity[0].1.free.at = at(ms);
            value.metrics.in_flight = Some(Sample::measured(inflight, Unit::Requests, at(ms)));
            prop_assert_eq!(decode(&encode(&value)).unwrap(), value);
        }
    }
}
