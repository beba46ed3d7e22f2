//! The compute node's reporting loop: sample the host and each service; publish the result to
//! a file for static peers and, with `[bgp]`, as this node's service routes (re-advertised when
//! a value moves by more than the threshold, and at least every refresh interval).
//!
//! A service's load is pushed, not only sampled: the loop wakes when an in-flight file is
//! written and closed, or renamed into place (inotify on its directory), and advertises at once
//! if the value moved, at most once per [`ADVERTISE_GAP`]. The host's own samples (CPU, memory)
//! follow `[metrics] interval_ms`.

use std::{
    net::Ipv6Addr,
    path::{Path as FsPath, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use cpn_common::maps::Behavior;

use crate::{
    bgp::{
        metric_attr::{CpnMetrics, NodeScore},
        route::{Route, ServiceSid},
    },
    config::{CapacityConfig, Config, PolicyConfig},
    dataplane::ServiceAddr,
    metrics::{
        Capacity, ComputeKind, NodeMetrics, Published, PublishedService, Sample, Source, Unit,
        health::{Health, Healths},
        host,
    },
    selection::{Admin, Candidate, Path, Policy, score},
};

/// One `[[service]]`, as the loop needs it.
#[derive(Clone, Debug)]
struct Served {
    key: ServiceAddr,
    sid: Ipv6Addr,
    behavior: u16,
    capacity: CapacityConfig,
    in_flight_file: Option<PathBuf>,
    max_in_flight: Option<f64>,
    power: Option<f64>,
    price: Option<f64>,
    /// This node's policy for the service (its own `[[policy]]`, else the default for its
    /// main compute kind): what its advertised score is computed with.
    policy: Policy,
}

/// How this node advertises itself in BGP.
#[derive(Clone, Debug)]
struct Origin {
    path_id: u32,
    next_hop: Ipv6Addr,
    threshold: f64,
    refresh: Duration,
    routes: watch::Sender<Vec<Route>>,
    /// Sent along with the service routes.
    locator: Option<Route>,
}

/// A service's own report of its requests in flight, pushed over the control socket
/// (`cpnctl load`): it counts from now, as a newer in-flight file would, and the loop
/// advertises it at once (within [`ADVERTISE_GAP`]).
#[derive(Debug)]
pub struct LoadReport {
    pub service: ServiceAddr,
    pub in_flight: f64,
    /// Answered once the loop has taken the report, or why it refused it.
    pub taken: oneshot::Sender<Result<(), String>>,
}

/// Starts the loop if this node serves anything and has somewhere to report it; it also takes
/// the services' own `reports`, and follows their `health` (a service with a check is reported
/// only while it passes).
pub fn spawn(
    config: &Config,
    routes: Option<watch::Sender<Vec<Route>>>,
    mut reports: mpsc::Receiver<LoadReport>,
    mut health: Option<watch::Receiver<Healths>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let file = config.metrics.publish_file.clone();
    if config.services.is_empty() || (file.is_none() && routes.is_none()) {
        return None;
    }
    let origin = match (&config.bgp, routes) {
        (Some(bgp), Some(routes)) => Some(Origin {
            path_id: u32::from(bgp.router_id),
            next_hop: config.bgp_next_hop(),
            threshold: bgp.metric_threshold,
            refresh: Duration::from_secs(bgp.refresh_s.max(1)),
            routes,
            locator: locator_route(config),
        }),
        _ => None,
    };
    let services = served(config);
    let node = config.node.name.clone();
    let interval = Duration::from_millis(config.metrics.interval_ms.max(10));
    let sample_host = config.metrics.sample_host;
    Some(tokio::spawn(async move {
        let mut sampler = host::HostSampler::new();
        // What went out last: each service's metrics, whether it was in, and when.
        let mut last_sent: Option<(Vec<NodeMetrics>, Vec<bool>, Instant)> = None;
        let files: Vec<&FsPath> = services
            .iter()
            .filter_map(|s| s.in_flight_file.as_deref())
            .collect();
        let mut written = super::files::Writes::watch(&files, "in-flight files");
        let mut pushed = Pushed::new();
        let mut next_sample = Instant::now();
        let mut host = host::HostSamples::default();
        // The host is sampled on the interval only (its CPU utilisation is over the time since
        // the last sample); a written in-flight file, or the end of an advertisement gap,
        // re-reads the services alone.
        let mut next_host_sample = Instant::now();
        loop {
            let now = SystemTime::now();
            if sample_host && Instant::now() >= next_host_sample {
                host = sampler.sample(now);
                next_host_sample = Instant::now() + interval;
            }
            let metrics: Vec<NodeMetrics> = services
                .iter()
                .map(|s| sample(s, &host, pushed.get(&s.key).copied(), now))
                .collect();
            let healthy: Vec<bool> = services
                .iter()
                .map(|s| advertised(health.as_ref(), &s.key))
                .collect();
            if let Some(file) = &file {
                publish(file, &node, &services, &metrics, &healthy);
            }
            if let Some(origin) = &origin {
                let due = last_sent.as_ref().is_none_or(|(sent, was_healthy, at)| {
                    at.elapsed() >= origin.refresh
                        || *was_healthy != healthy
                        || sent
                            .iter()
                            .zip(&metrics)
                            .any(|(a, b)| moved(a, b, origin.threshold))
                });
                // At most one advertisement per gap: a change inside it waits for its end.
                let held = last_sent
                    .as_ref()
                    .map(|(_, _, at)| *at + ADVERTISE_GAP)
                    .filter(|end| *end > Instant::now());
                if due && let Some(end) = held {
                    next_sample = next_sample.min(end);
                } else if due {
                    let routes = origin
                        .locator
                        .iter()
                        .cloned()
                        .chain(
                            services
                                .iter()
                                .zip(&metrics)
                                .zip(&healthy)
                                .filter(|(_, healthy)| **healthy)
                                .map(|((s, m), _)| route(origin, &node, s, m.clone())),
                        )
                        .collect();
                    origin.routes.send_replace(routes);
                    last_sent = Some((metrics.clone(), healthy, Instant::now()));
                }
            }
            let woke = Instant::now();
            if next_sample <= woke {
                next_sample = woke + interval;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next_sample.into()) => {}
                () = written.next() => {}
                Some(report) = reports.recv() => take(report, &services, &mut pushed),
                () = health_changed(&mut health) => {}
            }
        }
    }))
}

/// Writes the metrics of the services that go out to `file`, for static peers.
fn publish(
    file: &FsPath,
    node: &str,
    services: &[Served],
    metrics: &[NodeMetrics],
    healthy: &[bool],
) {
    let published = Published {
        node: node.to_owned(),
        services: services
            .iter()
            .zip(metrics)
            .zip(healthy)
            .filter(|(_, healthy)| **healthy)
            .map(|((s, m), _)| PublishedService {
                service: s.key,
                metrics: m.clone(),
            })
            .collect(),
    };
    if let Err(e) = crate::write_json(file, &published) {
        tracing::warn!(path = %file.display(), error = %e, "publishing metrics");
    }
}

/// Whether the service goes out: it passes its health check, or has none.
fn advertised(health: Option<&watch::Receiver<Healths>>, service: &ServiceAddr) -> bool {
    health.is_none_or(|h| h.borrow().get(service).is_none_or(Health::healthy))
}

/// The next change of the services' health; never, once the checks are gone (or there are
/// none).
async fn health_changed(health: &mut Option<watch::Receiver<Healths>>) {
    if let Some(receiver) = health {
        if receiver.changed().await.is_ok() {
            return;
        }
        *health = None;
    }
    std::future::pending::<()>().await;
}

/// The shortest time between two advertisements of this node's routes.
pub const ADVERTISE_GAP: Duration = Duration::from_millis(10);

/// The in-flight counts services pushed, by service.
type Pushed = std::collections::HashMap<ServiceAddr, Sample>;

/// Takes a service's report if it is one of ours and its count makes sense.
fn take(report: LoadReport, services: &[Served], pushed: &mut Pushed) {
    let answer = if !services.iter().any(|s| s.key == report.service) {
        Err(format!(
            "{}: not one of this node's [[service]]s",
            report.service
        ))
    } else if !report.in_flight.is_finite() || report.in_flight < 0.0 {
        Err(format!(
            "{} requests in flight: give a count of 0 or more",
            report.in_flight
        ))
    } else {
        let now = SystemTime::now();
        let sample = Sample::measured(report.in_flight, Unit::Requests, now);
        tracing::debug!(service = %report.service, in_flight = report.in_flight, "load reported");
        pushed.insert(report.service, sample);
        Ok(())
    };
    // The operator may have given up waiting; nothing to tell then.
    let _ = report.taken.send(answer);
}

/// Each `[[service]]` with what the loop needs of it.
fn served(config: &Config) -> Vec<Served> {
    config
        .services
        .iter()
        .map(|s| Served {
            key: s.key(),
            sid: *s.sid.get_ref(),
            behavior: config
                .srv6
                .sids
                .iter()
                .find(|c| c.sid == *s.sid.get_ref())
                .and_then(|c| c.spec().ok())
                .map_or(Behavior::EndDt6, |spec| spec.kind())
                .code_point(),
            capacity: s.capacity,
            in_flight_file: s.in_flight_file.clone(),
            max_in_flight: s.max_in_flight,
            power: s.power_watts,
            price: s.price_per_hour,
            policy: config
                .policies
                .iter()
                .find(|p| p.key() == s.key())
                .map_or_else(
                    || {
                        let main_kind = ComputeKind::ALL
                            .into_iter()
                            .find(|k| s.capacity.get(*k) > 0.0)
                            .unwrap_or(ComputeKind::Cpu);
                        Policy::default_for(main_kind)
                    },
                    PolicyConfig::policy,
                ),
        })
        .collect()
}

/// One service's L0 metrics now. Free capacity is estimated from the host's CPU utilisation;
/// the requests in flight are the newer of its file's count and the one it `pushed`.
fn sample(
    s: &Served,
    host: &host::HostSamples,
    pushed: Option<Sample>,
    now: SystemTime,
) -> NodeMetrics {
    let busy = host.cpu_utilisation.map_or(0.0, |u| u.value);
    let capacity = ComputeKind::ALL
        .iter()
        .filter(|k| s.capacity.get(**k) > 0.0)
        .map(|k| {
            let total = s.capacity.get(*k);
            let free = Sample {
                source: Source::Estimated,
                ..Sample::measured(total * (1.0 - busy), Unit::OpsPerSecond, now)
            };
            (
                *k,
                Capacity {
                    total: Sample::nominal(total, Unit::OpsPerSecond, now),
                    free,
                },
            )
        })
        .collect();
    let from_file = s.in_flight_file.as_deref().and_then(|path| {
        host::read_in_flight(path)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "in-flight source"))
            .ok()
    });
    let in_flight = match (from_file, pushed) {
        (Some(file), Some(pushed)) => Some(if pushed.at > file.at { pushed } else { file }),
        (file, pushed) => file.or(pushed),
    };
    NodeMetrics {
        capacity,
        cpu_utilisation: host.cpu_utilisation,
        load_average: host.load_average,
        memory_available: host.memory_available,
        in_flight,
        max_in_flight: s.max_in_flight,
        power: s.power.map(|w| Sample::nominal(w, Unit::Watts, now)),
        price: s.price.map(|p| Sample::nominal(p, Unit::PricePerHour, now)),
    }
}

/// Whether any value that selection uses moved by more than `threshold` (relative).
fn moved(a: &NodeMetrics, b: &NodeMetrics, threshold: f64) -> bool {
    let differs = |x: f64, y: f64| (x - y).abs() > threshold * x.abs().max(y.abs()).max(1e-9);
    let free = |m: &NodeMetrics| m.capacity.iter().map(|(_, c)| c.free.value).sum::<f64>();
    let value = |s: Option<Sample>| s.map_or(0.0, |s| s.value);
    differs(free(a), free(b))
        || differs(value(a.in_flight), value(b.in_flight))
        || differs(value(a.cpu_utilisation), value(b.cpu_utilisation))
}

fn route(origin: &Origin, node: &str, s: &Served, metrics: NodeMetrics) -> Route {
    let free: f64 = metrics.capacity.iter().map(|(_, c)| c.free.value).sum();
    // Our own view: no network path between us and ourselves.
    let me = Candidate {
        node: 0,
        name: node.to_owned(),
        metrics: metrics.clone(),
        path: Path::LOCAL,
        admin: Admin::Up,
    };
    let scores = score::score(&s.policy, &me, std::slice::from_ref(&me));
    Route {
        prefix: s.key.addr.into(),
        path_id: origin.path_id,
        next_hop: origin.next_hop,
        service: Some(ServiceSid {
            sid: s.sid,
            behavior: s.behavior,
        }),
        aigp: Some(0),
        // Lossy by design: Link Bandwidth is a 32-bit float.
        #[expect(clippy::cast_possible_truncation, reason = "see above")]
        link_bandwidth: Some(free as f32),
        metrics: Some(CpnMetrics {
            node: node.to_owned(),
            normalisation: score::NORMALISATION.to_owned(),
            metrics,
            score: Some(NodeScore {
                computing: scores.computing,
                l2: scores.l2,
            }),
        }),
        as_path: Vec::new(), // our AS is prepended per eBGP peer (policy.rs)
        originator_id: None,
        cluster_list: Vec::new(),
    }
}

/// This node's SRv6 locator as a plain route (no SID), so peers can reach its SIDs. It names
/// its node in the CPN metric attribute (no metrics in it): that is how receivers tell a cpn
/// locator from other routes (`bgp::policy::Import`) and install it.
pub fn locator_route(config: &Config) -> Option<Route> {
    let bgp = config.bgp.as_ref()?;
    let (prefix, len) = crate::dataplane::kernel::parse_prefix(config.srv6.locator.as_deref()?)?;
    Some(Route {
        prefix: ipnet::IpNet::V6(ipnet::Ipv6Net::new(prefix, len).ok()?.trunc()),
        path_id: u32::from(bgp.router_id),
        next_hop: config.bgp_next_hop(),
        service: None,
        aigp: Some(0),
        metrics: Some(CpnMetrics {
            node: config.node.name.clone(),
            ..CpnMetrics::default()
        }),
        link_bandwidth: None,
        as_path: Vec::new(),
        originator_id: None,
        cluster_list: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(in_flight_file: Option<PathBuf>) -> Served {
        Served {
            key: ServiceAddr {
                addr: "2001:db8:cafe::1".parse().unwrap(),
                port: None,
            },
            sid: "fc00:1::d6".parse().unwrap(),
            behavior: Behavior::EndDt6.code_point(),
            capacity: CapacityConfig {
                cpu: 1e12,
                ..CapacityConfig::default()
            },
            in_flight_file,
            max_in_flight: Some(100.0),
            power: None,
            price: None,
            policy: Policy::default_for(ComputeKind::Cpu),
        }
    }

    fn report(
        service: ServiceAddr,
        in_flight: f64,
    ) -> (LoadReport, oneshot::Receiver<Result<(), String>>) {
        let (taken, answer) = oneshot::channel();
        let report = LoadReport {
            service,
            in_flight,
            taken,
        };
        (report, answer)
    }

    /// A report counts from the moment it is taken, as a newer write of the in-flight file
    /// would; the file counts again once it is written after it. What is not one of this node's
    /// services, or not a count, is refused with the reason.
    #[test]
    fn a_pushed_load_counts_until_the_file_is_newer() {
        let dir = std::env::temp_dir().join(format!("cpn-pushed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("in_flight");
        std::fs::write(&file, "5\n").unwrap();
        let services = [served(Some(file.clone()))];
        let mut pushed = Pushed::new();
        let in_flight = |pushed: &Pushed| {
            let s = &services[0];
            let metrics = sample(
                s,
                &host::HostSamples::default(),
                pushed.get(&s.key).copied(),
                SystemTime::now(),
            );
            metrics.in_flight.map(|i| i.value)
        };
        assert_eq!(in_flight(&pushed), Some(5.0), "the file alone");

        // File times come from the kernel's coarse clock: well apart.
        std::thread::sleep(Duration::from_millis(50));
        let (taken, mut answer) = report(services[0].key, 42.0);
        take(taken, &services, &mut pushed);
        assert_eq!(answer.try_recv().unwrap(), Ok(()));
        assert_eq!(in_flight(&pushed), Some(42.0), "the newer report");

        // File times come from the kernel's coarse clock: well apart.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&file, "7\n").unwrap();
        assert_eq!(
            in_flight(&pushed),
            Some(7.0),
            "the file, written after the report"
        );

        let elsewhere = ServiceAddr {
            port: Some((6, 443)),
            ..services[0].key
        };
        let (taken, mut answer) = report(elsewhere, 1.0);
        take(taken, &services, &mut pushed);
        let refused = answer.try_recv().unwrap().unwrap_err();
        assert!(
            refused.contains("2001:db8:cafe::1 tcp/443: not one of this node's [[service]]s"),
            "{refused}"
        );
        let (taken, mut answer) = report(services[0].key, -1.0);
        take(taken, &services, &mut pushed);
        assert!(answer.try_recv().unwrap().is_err(), "a count below 0");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
