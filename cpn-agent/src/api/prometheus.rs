//! Prometheus `/metrics` (`[control] prometheus = "ADDRESS:PORT"`), in the `OpenMetrics` text
//! format of prometheus-client. Every scrape takes a fresh snapshot of the agent's state (the
//! control socket's view, control.rs) and of the data-plane counters in the pinned maps, so
//! nothing here keeps state of its own.
//!
//! Names are `cpn_*`, in base units (seconds, bytes), counters end in `_total`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::api::{AgentState, Count};

type Labels = Vec<(String, String)>;
/// The labels of one data-plane counter.
type LabelsOf<'a> = dyn Fn(&Count) -> Labels + 'a;

/// What a scrape reads.
#[derive(Debug)]
struct Sources {
    state: AgentState,
    scrapes: AtomicU64,
}

/// Serves `/metrics` on `address` until the task is dropped.
pub async fn spawn(
    address: SocketAddr,
    state: AgentState,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let sources = Arc::new(Sources {
        state,
        scrapes: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(sources);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the Prometheus endpoint stopped");
        }
    }))
}

async fn metrics(State(sources): State<Arc<Sources>>) -> impl IntoResponse {
    sources.scrapes.fetch_add(1, Ordering::Relaxed);
    // The pinned counters are read off the runtime thread (see control::serve).
    let text = tokio::task::spawn_blocking(move || render(&sources))
        .await
        .unwrap_or_else(|e| format!("# the scrape failed: {e}\n"));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// One scrape's text.
fn render(sources: &Sources) -> String {
    let mut registry = Registry::with_prefix("cpn");
    registry.register(
        "build",
        "cpn-agent build information",
        Info::new(vec![(
            "version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    );
    let scrapes = Counter::<u64>::default();
    scrapes.inc_by(sources.scrapes.load(Ordering::Relaxed));
    registry.register("scrapes", "Scrapes of this endpoint", scrapes);
    bgp(&mut registry, &sources.state);
    bfd(&mut registry, &sources.state);
    paths(&mut registry, &sources.state);
    health(&mut registry, &sources.state);
    selection(&mut registry, &sources.state);
    dataplane(&mut registry, &sources.state);
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text = "# encoding failed\n".into();
    }
    text
}

fn bgp(registry: &mut Registry, state: &AgentState) {
    let established = Family::<Labels, Gauge>::default();
    let paths = Family::<Labels, Gauge>::default();
    let messages = Family::<Labels, Counter>::default();
    let filtered = Family::<Labels, Counter>::default();
    for n in state.neighbors() {
        let l = labels(&[("neighbor", n.address.to_string())]);
        for (direction, counts) in [
            ("received", &n.messages.received),
            ("sent", &n.messages.sent),
        ] {
            for (kind, count) in counts {
                let m = labels(&[
                    ("neighbor", n.address.to_string()),
                    ("direction", direction.to_owned()),
                    ("type", kind.clone()),
                ]);
                messages.get_or_create(&m).inc_by(*count);
            }
        }
        filtered.get_or_create(&l).inc_by(n.filtered);
        established
            .get_or_create(&l)
            .set(i64::from(n.state == crate::bgp::fsm::State::Established));
        paths
            .get_or_create(&l)
            .set(i64::try_from(n.paths).unwrap_or(i64::MAX));
    }
    registry.register(
        "bgp_session_established",
        "1 while the BGP session with the neighbor is Established",
        established,
    );
    registry.register("bgp_paths", "Paths received from the neighbor", paths);
    registry.register(
        "bgp_paths_filtered",
        "Paths from the neighbor the import policy dropped (neither services nor cpn locators)",
        filtered,
    );
    registry.register(
        "bgp_messages",
        "BGP messages exchanged with the neighbor, by direction and type",
        messages,
    );
}

fn bfd(registry: &mut Registry, state: &AgentState) {
    let view = state.bfd();
    let up = Family::<Labels, Gauge>::default();
    let detection = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for s in &view.sessions {
        let l = labels(&[("neighbor", s.neighbor.to_string())]);
        up.get_or_create(&l).set(i64::from(
            s.status.state == crate::sensing::bfd::packet::State::Up,
        ));
        if let Some(us) = s.status.detection_time_us {
            #[expect(clippy::cast_precision_loss, reason = "microseconds")]
            detection.get_or_create(&l).set(us as f64 / 1e6);
        }
    }
    let dropped = Family::<Labels, Counter>::default();
    for (reason, count) in &view.dropped {
        dropped
            .get_or_create(&labels(&[("reason", reason.name().to_owned())]))
            .inc_by(*count);
    }
    registry.register(
        "bfd_session_up",
        "1 while the BFD session with the neighbor is Up",
        up,
    );
    registry.register(
        "bfd_detection_time_seconds",
        "How long the neighbor may be silent before its BFD session goes down",
        detection,
    );
    registry.register(
        "bfd_dropped_packets",
        "Received BFD packets that reached no session, by reason",
        dropped,
    );
}

/// This node's checked services; one still checking has no `healthy` sample (unknown).
fn health(registry: &mut Registry, state: &AgentState) {
    let healthy = Family::<Labels, Gauge>::default();
    let checks = Family::<Labels, Counter>::default();
    for s in state.health() {
        let service = s.service.to_string();
        if s.health.state != crate::metrics::health::State::Checking {
            healthy
                .get_or_create(&labels(&[("service", service.clone())]))
                .set(i64::from(s.health.healthy()));
        }
        for (result, count) in [("passed", s.health.passed), ("failed", s.health.failed)] {
            checks
                .get_or_create(&labels(&[
                    ("service", service.clone()),
                    ("result", result.to_owned()),
                ]))
                .inc_by(count);
        }
    }
    registry.register(
        "service_healthy",
        "1 while this node's service passes its health check and is advertised",
        healthy,
    );
    registry.register(
        "health_checks",
        "Health checks of this node's service, by result",
        checks,
    );
}

/// What STAMP measured; a path part nobody measured is left out, not 0 or 1.
fn paths(registry: &mut Registry, state: &AgentState) {
    let delay = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let jitter = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let loss = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let sent = Family::<Labels, Counter>::default();
    let received = Family::<Labels, Counter>::default();
    for p in state.paths_measured() {
        let l = labels(&[("node", p.node.clone())]);
        if let Some(d) = p.stats.delay.known() {
            delay.get_or_create(&l).set(d.as_secs_f64());
        }
        if let Some(j) = p.stats.jitter.known() {
            jitter.get_or_create(&l).set(j.as_secs_f64());
        }
        if let Some(v) = p.stats.loss.known() {
            loss.get_or_create(&l).set(v);
        }
        sent.get_or_create(&l).inc_by(p.stats.sent);
        received.get_or_create(&l).inc_by(p.stats.received);
    }
    registry.register(
        "path_delay_seconds",
        "One-way delay to the candidate node along its encapsulation (STAMP, half the round trip)",
        delay,
    );
    registry.register(
        "path_jitter_seconds",
        "Mean deviation of successive STAMP round trips to the candidate node",
        jitter,
    );
    registry.register(
        "path_loss_ratio",
        "Share of recent STAMP test packets to the candidate node without an answer",
        loss,
    );
    registry.register(
        "path_test_packets_sent",
        "STAMP test packets sent to the candidate node",
        sent,
    );
    registry.register(
        "path_test_packets_received",
        "STAMP test packets the candidate node reflected back",
        received,
    );
}

fn selection(registry: &mut Registry, state: &AgentState) {
    let weight = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let score = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let changes = Family::<Labels, Counter>::default();
    let updates = Family::<Labels, Counter>::default();
    for e in state.explanations.borrow().iter() {
        let l = labels(&[("service", e.key.addr.to_string())]);
        changes.get_or_create(&l).inc_by(e.target_changes);
        updates.get_or_create(&l).inc_by(e.ring_updates);
        for c in &e.decision.evaluations {
            let l = labels(&[
                ("service", e.key.addr.to_string()),
                ("node", c.name.clone()),
            ]);
            weight.get_or_create(&l).set(c.weight);
            if let Some(s) = c.scores {
                score.get_or_create(&l).set(s.l2);
            }
            if let Some(a) = c.metric_age {
                age.get_or_create(&l).set(a.as_secs_f64());
            }
        }
    }
    registry.register(
        "selection_weight",
        "Share of new flows the ingress gives the node for the service (0..1)",
        weight,
    );
    registry.register(
        "selection_score",
        "The node's L2 score for the service (0..1, cpn-norm-v1)",
        score,
    );
    registry.register(
        "metric_age_seconds",
        "Age of the node's newest compute metrics at the last selection",
        age,
    );
    registry.register(
        "selection_changes",
        "New target rings for the service: the weights moved past hysteresis",
        changes,
    );
    registry.register(
        "ring_updates",
        "Rings written to the data plane for the service (steps towards a target)",
        updates,
    );
}

fn dataplane(registry: &mut Registry, agent: &AgentState) {
    // Unpinned maps (or none yet): no data-plane families.
    let Ok(stats) = agent.stats() else {
        return;
    };
    let by_program = |c: &Count| {
        let (program, protocol) = c.name.split_once('/').unwrap_or((&c.name, ""));
        labels(&[
            ("program", program.to_owned()),
            ("protocol", protocol.to_owned()),
        ])
    };
    let by = |key: &'static str| move |c: &Count| labels(&[(key, c.name.clone())]);
    let (service, node, sid, reason) = (by("service"), by("node"), by("sid"), by("reason"));
    let groups: [(&str, &[Count], &LabelsOf, &str); 5] = [
        (
            "dataplane",
            &stats.protocols,
            &by_program,
            "seen by the program (XDP, or TC at a hook), by protocol",
        ),
        (
            "service",
            &stats.services,
            &service,
            "steered to the service's nodes",
        ),
        (
            "node",
            &stats.nodes,
            &node,
            "encapsulated towards the compute node",
        ),
        ("sid", &stats.sids, &sid, "processed by the local SID"),
        (
            "exception",
            &stats.reasons,
            &reason,
            "that left the fast path (passed, answered or dropped), by reason",
        ),
    ];
    for (prefix, counts, label, help) in groups {
        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        for c in counts {
            let l = label(c);
            packets.get_or_create(&l).inc_by(c.packets);
            bytes.get_or_create(&l).inc_by(c.bytes);
        }
        registry.register(
            format!("{prefix}_packets"),
            format!("Packets {help}"),
            packets,
        );
        registry.register(format!("{prefix}_bytes"), format!("Bytes {help}"), bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::*;
    use crate::{metrics::Measure, sensing::stamp::session::PathStats};

    /// A path STAMP never measured (its node reflects nothing) exports no delay or loss at all
    /// (not 0, not 1), only what was sent.
    #[test]
    fn unknown_path_gauges_are_left_out() {
        let (measured, silent): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let paths = std::sync::Arc::new(crate::sensing::stamp::Paths::from([
            (
                "near".to_owned(),
                PathStats {
                    rtt: Measure::Known(Duration::from_millis(8)),
                    delay: Measure::Known(Duration::from_millis(4)),
                    jitter: Measure::Known(Duration::ZERO),
                    loss: Measure::Known(0.0),
                    inner_hops: Measure::Known(0),
                    sent: 20,
                    received: 20,
                },
            ),
            (
                "legacy".to_owned(),
                PathStats {
                    sent: 20,
                    ..PathStats::default()
                },
            ),
        ]));
        let (_explained, explanations) = tokio::sync::watch::channel(Vec::new());
        let sources = Sources {
            state: AgentState {
                neighbors: vec![(measured, 65001), (silent, 65002)],
                core: tokio::sync::watch::channel(crate::core::Snapshot {
                    paths,
                    ..crate::core::Snapshot::default()
                })
                .1,
                operator: tokio::sync::mpsc::channel(1).0,
                reports: tokio::sync::mpsc::channel(1).0,
                steered: tokio::sync::watch::channel(0).1,
                sessions: std::collections::BTreeMap::new(),
                health: None,
                bfd_drops: Some(
                    tokio::sync::watch::channel(crate::sensing::bfd::Drops::from([(
                        crate::sensing::bfd::Dropped::Ttl,
                        3,
                    )]))
                    .1,
                ),
                locators: None,
                explanations,
                nexthops: tokio::sync::watch::channel(std::collections::BTreeMap::new()).1,
                node_names: tokio::sync::watch::channel(std::collections::BTreeMap::new()).1,
                pin_dir: None,
            },
            scrapes: AtomicU64::new(0),
        };
        let text = render(&sources);
        let samples = |name: &str| -> Vec<&str> {
            text.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .collect()
        };
        assert_eq!(
            samples("cpn_path_delay_seconds"),
            ["cpn_path_delay_seconds{node=\"near\"} 0.004"],
            "{text}"
        );
        assert_eq!(
            samples("cpn_path_loss_ratio"),
            ["cpn_path_loss_ratio{node=\"near\"} 0.0"],
            "{text}"
        );
        assert_eq!(
            samples("cpn_path_test_packets_sent_total").len(),
            2,
            "both paths count what was sent: {text}"
        );
        assert_eq!(
            samples("cpn_bgp_paths{").len(),
            2,
            "both neighbors are there"
        );
        assert_eq!(
            samples("cpn_bfd_dropped_packets_total"),
            ["cpn_bfd_dropped_packets_total{reason=\"ttl\"} 3"],
            "{text}"
        );
    }
}
