//! The compute node's reporting loop: sample the host and each service, and publish the result
//! for static peers (BGP will carry the same in a later version).

use std::time::{Duration, SystemTime};

use crate::{
    config::{Config, Protocol},
    metrics::{
        Capacity, ComputeKind, NodeMetrics, Published, PublishedService, Sample, Unit, host,
    },
};

/// Starts the loop if this node serves anything and has somewhere to publish.
pub fn spawn(config: &Config) -> Option<tokio::task::JoinHandle<()>> {
    let file = config.metrics.publish_file.clone()?;
    if config.services.is_empty() {
        return None;
    }
    let node = config.node.name.clone();
    let interval = Duration::from_millis(config.metrics.interval_ms.max(10));
    let sample_host = config.metrics.sample_host;
    let services: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            (
                s.address,
                s.protocol.map(Protocol::number),
                s.port,
                s.capacity,
                s.in_flight_file.clone(),
                s.max_in_flight,
                s.power_watts,
                s.price_per_hour,
            )
        })
        .collect();
    Some(tokio::spawn(async move {
        let mut sampler = host::HostSampler::new();
        loop {
            let now = SystemTime::now();
            let host = if sample_host {
                sampler.sample(now)
            } else {
                host::HostSamples::default()
            };
            let busy = host.cpu_utilisation.map_or(0.0, |u| u.value);
            let published = Published {
                node: node.clone(),
                services: services
                    .iter()
                    .map(|(address, protocol, port, capacity, in_flight_file, max_in_flight, power, price)| {
                        let capacity = ComputeKind::ALL
                            .iter()
                            .filter(|k| capacity.get(**k) > 0.0)
                            .map(|k| {
                                let total = capacity.get(*k);
                                let free = Sample {
                                    source: crate::metrics::Source::Estimated,
                                    ..Sample::measured(total * (1.0 - busy), Unit::OpsPerSecond, now)
                                };
                                (*k, Capacity { total: Sample::nominal(total, Unit::OpsPerSecond, now), free })
                            })
                            .collect();
                        let in_flight = in_flight_file.as_deref().and_then(|path| {
                            host::read_in_flight(path)
                                .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "in-flight source"))
                                .ok()
                        });
                        PublishedService {
                            address: *address,
                            protocol: *protocol,
                            port: *port,
                            metrics: NodeMetrics {
                                capacity,
                                cpu_utilisation: host.cpu_utilisation,
                                load_average: host.load_average,
                                memory_available: host.memory_available,
                                in_flight,
                                max_in_flight: *max_in_flight,
                                power: power.map(|w| Sample::nominal(w, Unit::Watts, now)),
                                price: price.map(|p| Sample::nominal(p, Unit::PricePerHour, now)),
                            },
                        }
                    })
                    .collect(),
            };
            if let Err(e) = super::steering::write_json(&file, &published) {
                tracing::warn!(path = %file.display(), error = %e, "publishing metrics");
            }
            tokio::time::sleep(interval).await;
        }
    }))
}
