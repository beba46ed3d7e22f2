//! The compute node's reporting loop: sample the host and each service; publish the result to
//! a file for static peers and, with `[bgp]`, as this node's service routes (re-advertised when
//! a value moves by more than the threshold, and at least every refresh interval).

use std::{
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use crate::{
    bgp::{
        metric_attr::{CpnMetrics, NodeScore},
        route::{Route, ServiceSid, behavior},
    },
    config::{CapacityConfig, Config, PolicyConfig, Protocol},
    metrics::{
        Capacity, ComputeKind, NodeMetrics, Published, PublishedService, Sample, Source, Unit, host,
    },
    selection::{Admin, Candidate, Path, Policy, score},
};

/// One `[[service]]`, as the loop needs it.
#[derive(Clone, Debug)]
struct Served {
    address: IpAddr,
    protocol: Option<u8>,
    port: Option<u16>,
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

/// Starts the loop if this node serves anything and has somewhere to report it.
pub fn spawn(
    config: &Config,
    routes: Option<watch::Sender<Vec<Route>>>,
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
        let mut last_sent: Option<(Vec<NodeMetrics>, Instant)> = None;
        loop {
            let now = SystemTime::now();
            let host = if sample_host {
                sampler.sample(now)
            } else {
                host::HostSamples::default()
            };
            let metrics: Vec<NodeMetrics> =
                services.iter().map(|s| sample(s, &host, now)).collect();
            if let Some(file) = &file {
                let published = Published {
                    node: node.clone(),
                    services: services
                        .iter()
                        .zip(&metrics)
                        .map(|(s, m)| PublishedService {
                            address: s.address,
                            protocol: s.protocol,
                            port: s.port,
                            metrics: m.clone(),
                        })
                        .collect(),
                };
                if let Err(e) = super::steering::write_json(file, &published) {
                    tracing::warn!(path = %file.display(), error = %e, "publishing metrics");
                }
            }
            if let Some(origin) = &origin {
                let due = last_sent.as_ref().is_none_or(|(sent, at)| {
                    at.elapsed() >= origin.refresh
                        || sent
                            .iter()
                            .zip(&metrics)
                            .any(|(a, b)| moved(a, b, origin.threshold))
                });
                if due {
                    let routes = origin
                        .locator
                        .iter()
                        .cloned()
                        .chain(
                            services
                                .iter()
                                .zip(&metrics)
                                .map(|(s, m)| route(origin, &node, s, m.clone())),
                        )
                        .collect();
                    origin.routes.send_replace(routes);
                    last_sent = Some((metrics.clone(), Instant::now()));
                }
            }
            tokio::time::sleep(interval).await;
        }
    }))
}

/// Each `[[service]]` with what the loop needs of it.
fn served(config: &Config) -> Vec<Served> {
    config
        .services
        .iter()
        .map(|s| Served {
            address: s.address,
            protocol: s.protocol.map(Protocol::number),
            port: s.port,
            sid: *s.sid.get_ref(),
            behavior: config
                .srv6
                .sids
                .iter()
                .find(|c| c.sid == *s.sid.get_ref())
                .map_or(behavior::END_DT6, |c| behavior_code(c.behavior.get_ref())),
            capacity: s.capacity,
            in_flight_file: s.in_flight_file.clone(),
            max_in_flight: s.max_in_flight,
            power: s.power_watts,
            price: s.price_per_hour,
            policy: config
                .policies
                .iter()
                .find(|p| p.is_for(s.address, s.protocol, s.port))
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

/// One service's L0 metrics now. Free capacity is estimated from the host's CPU utilisation.
fn sample(s: &Served, host: &host::HostSamples, now: SystemTime) -> NodeMetrics {
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
    let in_flight = s.in_flight_file.as_deref().and_then(|path| {
        host::read_in_flight(path)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "in-flight source"))
            .ok()
    });
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
        prefix: s.address.into(),
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
    let (prefix, len) = crate::kernel::parse_prefix(config.srv6.locator.as_deref()?)?;
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

fn behavior_code(name: &str) -> u16 {
    match name {
        "End.DX6" => behavior::END_DX6,
        "End.DX4" => behavior::END_DX4,
        "End.DT4" => behavior::END_DT4,
        "End.DT46" => behavior::END_DT46,
        _ => behavior::END_DT6,
    }
}
