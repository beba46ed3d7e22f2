//! Compute metrics (the CATS C-SMA): L0 samples as the host and its services report them, each
//! with its unit, source, statistic and timestamp so that a receiver can judge them.

pub mod files;
pub mod health;
pub mod host;
pub mod reporting;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The three kinds of compute (CPN survey): logical (CPU, TOPS), parallel (GPU, FLOPS), neural
/// (NPU/TPU, FLOPS). Capacities are stored in operations per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeKind {
    Cpu,
    Gpu,
    Npu,
}

impl ComputeKind {
    pub const ALL: [Self; 3] = [Self::Cpu, Self::Gpu, Self::Npu];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Npu => "npu",
        }
    }
}

/// How a value was obtained (CATS metric draft, "Source").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Nominal,
    Measured,
    Estimated,
    Aggregated,
}

/// The statistic a value is (CATS metric draft, "Statistics").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    Cur,
    Mean,
    Max,
    Min,
}

/// Units of the L0 metrics cpn knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Operations per second (TOPS and FLOPS scaled to 1).
    OpsPerSecond,
    /// A fraction in 0..=1 (utilisation, loss).
    Ratio,
    /// Run-queue length (load average).
    Tasks,
    Bytes,
    /// Requests in flight or queued.
    Requests,
    Watts,
    /// Price per hour of compute, in the operator's currency.
    PricePerHour,
    Milliseconds,
}

/// A network measurement (round-trip time, jitter, loss, path latency), or `Unknown` because
/// nothing measured it: a neighbor that never answered a link probe, a path learned through a
/// reflector that is not on it. Unknown is never 0 or 100 %; whoever decides on the value says
/// what unknown means there. It has no order on purpose: `Unknown > max` must not compile.
/// In JSON, the value or `null`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Measure<T> {
    #[default]
    Unknown,
    Known(T),
}

impl<T> Measure<T> {
    pub fn known(self) -> Option<T> {
        match self {
            Self::Unknown => None,
            Self::Known(value) => Some(value),
        }
    }

    pub const fn is_known(&self) -> bool {
        matches!(self, Self::Known(_))
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Measure<U> {
        match self {
            Self::Unknown => Measure::Unknown,
            Self::Known(value) => Measure::Known(f(value)),
        }
    }
}

impl<T: Serialize> Serialize for Measure<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Unknown => serializer.serialize_none(),
            Self::Known(value) => serializer.serialize_some(value),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Measure<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::deserialize(deserializer).map(Self::from)
    }
}

impl<T> From<Option<T>> for Measure<T> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Unknown, Self::Known)
    }
}

impl<T> From<Measure<T>> for Option<T> {
    fn from(value: Measure<T>) -> Self {
        value.known()
    }
}

/// One L0 value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub value: f64,
    pub unit: Unit,
    pub source: Source,
    pub statistic: Statistic,
    /// When it was measured or last confirmed.
    pub at: SystemTime,
}

impl Sample {
    pub fn nominal(value: f64, unit: Unit, at: SystemTime) -> Self {
        Self {
            value,
            unit,
            source: Source::Nominal,
            statistic: Statistic::Cur,
            at,
        }
    }

    pub fn measured(value: f64, unit: Unit, at: SystemTime) -> Self {
        Self {
            value,
            unit,
            source: Source::Measured,
            statistic: Statistic::Cur,
            at,
        }
    }
}

/// Capacity of one compute kind: what the node has, and what is free now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub total: Sample,
    pub free: Sample,
}

/// Everything a node reports about its compute, for one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Per kind; kinds the node lacks are absent.
    pub capacity: Vec<(ComputeKind, Capacity)>,
    pub cpu_utilisation: Option<Sample>,
    pub load_average: Option<Sample>,
    pub memory_available: Option<Sample>,
    /// Requests the service has in flight or queued, and how many it takes at most.
    pub in_flight: Option<Sample>,
    pub max_in_flight: Option<f64>,
    pub power: Option<Sample>,
    pub price: Option<Sample>,
}

impl NodeMetrics {
    pub fn capacity(&self, kind: ComputeKind) -> Option<&Capacity> {
        self.capacity
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| c)
    }

    /// The oldest timestamp among the samples that selection uses: the metrics are as fresh
    /// as their stalest part.
    pub fn oldest(&self) -> Option<SystemTime> {
        let samples = self
            .capacity
            .iter()
            .flat_map(|(_, c)| [c.total.at, c.free.at])
            .chain(
                [&self.cpu_utilisation, &self.in_flight]
                    .into_iter()
                    .flatten()
                    .map(|s| s.at),
            );
        samples.min()
    }
}

/// What a compute agent publishes about itself for static peers (`[metrics] publish_file`,
/// read through `[[remote]] metrics_file`). BGP carries the same content in a later version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub node: String,
    pub services: Vec<PublishedService>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedService {
    /// As `address`, `protocol`, `port`.
    #[serde(flatten)]
    pub service: crate::dataplane::ServiceAddr,
    pub metrics: NodeMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other agents and operators read the published file: a service in it is `address`,
    /// `protocol` and `port`, as before the key had one type, and a file that gives only one
    /// of the last two is refused rather than read as another service.
    #[test]
    fn a_published_service_reads_as_address_protocol_and_port() {
        let service = crate::dataplane::ServiceAddr {
            addr: "2001:db8::5".parse().unwrap(),
            port: Some((6, 443)),
        };
        let published = PublishedService {
            service,
            metrics: NodeMetrics::default(),
        };
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(json["address"], "2001:db8::5");
        assert_eq!(json["protocol"], 6);
        assert_eq!(json["port"], 443);
        let back: PublishedService = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, published);

        let mut half = json;
        half["port"] = serde_json::Value::Null;
        let err = serde_json::from_value::<PublishedService>(half).unwrap_err();
        assert!(
            err.to_string().contains("protocol and port go together"),
            "{err}"
        );
    }
}
