//! Health checks: a compute node's service process dies while its agent and host stay up (the
//! case BFD and BGP cannot see). The agent's TCP check of the service's own address fails
//! `fall` times, the service is withdrawn, and new flows go to the other nodes; connections
//! held on them are untouched. Then the service comes back and, after `rise` passes, takes
//! flows again.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use cpn_agent::{
    api::{Request, ServiceHealth},
    metrics::health::State,
};
use cpn_tests::{
    cpn_lab::{CpnLab, Topology},
    lab::wait_for,
    traffic::{Held, Traffic},
};

const INTERVAL_MS: u64 = 200;
const FALL: u32 = 3;
/// From the withdrawal the compute agent sends to the ingress's ring without the node: BGP
/// UPDATE, the ingress's routing core and steering step, the ring write (measured at 0.1-0.3 s
/// elsewhere; `tests/tests/bgp_end_to_end.rs`).
const REACTION: Duration = Duration::from_secs(1);

const TOPOLOGY: &str = r#"
health = { interval_ms = 200, fall = 3, rise = 2 }
[[service]]
name = "app"
address = "2001:db8:aaaa::1"
port = 8080
[[client]]
name = "client1"
[[compute]]
name = "c1"
capacity = { cpu = 1e12 }
[[compute]]
name = "c2"
capacity = { cpu = 1e12 }
[[compute]]
name = "c3"
capacity = { cpu = 1e12 }
"#;

fn health(lab: &CpnLab, node: &str) -> Result<Vec<ServiceHealth>> {
    lab.lab.ask(node, &Request::Health)
}

#[test]
fn health_check_withdraws_a_dead_service_within_fall_intervals_and_spares_other_nodes() -> Result<()>
{
    let topology = Topology::parse(Path::new("health"), TOPOLOGY)?;
    let mut lab = CpnLab::start("health", topology)?;
    let app = lab.topology.services[0].clone();
    let target = SocketAddr::new(app.address, app.listen_port());
    wait_for("c1's service healthy", Duration::from_secs(10), || {
        Ok(health(&lab, "c1")?
            .first()
            .filter(|h| h.health.state == State::Healthy)
            .map(drop))
    })?;
    let client = lab.lab.node("client1")?.clone();
    let mut held = Held::open(&client, target, 30)?;
    let traffic = Traffic::start(std::slice::from_ref(&client), target, 40);
    std::thread::sleep(Duration::from_secs(2));

    let killed = traffic.now();
    let killed_at = Instant::now();
    lab.kill_service("c1", "app")?;
    // The agent stays; its check fails FALL times and the service is withdrawn.
    let withdrawn = wait_for("c1's service unhealthy", Duration::from_secs(10), || {
        Ok(health(&lab, "c1")?
            .into_iter()
            .next()
            .filter(|h| h.health.state == State::Unhealthy))
    })?;
    let detected = killed_at.elapsed();
    eprintln!(
        "c1's service unhealthy {detected:?} after it died; last check: {:?}",
        withdrawn.health.history.back()
    );
    std::thread::sleep(Duration::from_secs(3));
    let late = killed + Duration::from_millis(INTERVAL_MS * u64::from(FALL + 1)) + REACTION;
    let after = traffic.between(late, traffic.now());
    let failed: Vec<_> = traffic
        .between(killed, traffic.now())
        .into_iter()
        .filter(|r| r.node.is_none())
        .collect();
    let last_failed = failed.iter().map(|r| r.at.saturating_sub(killed)).max();
    eprintln!(
        "{} new flows failed after the kill, the last {last_failed:?} after it; {} new flows \
         after {:?}, by node: {:?}",
        failed.len(),
        after.len(),
        late.saturating_sub(killed),
        after
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, r| {
                *m.entry(r.node.clone()).or_insert(0) += 1;
                m
            })
    );
    ensure!(!after.is_empty(), "traffic went on");
    ensure!(
        after
            .iter()
            .all(|r| r.node.as_deref().is_some_and(|n| n != "c1")),
        "no new flow reached c1 later than {FALL} × {INTERVAL_MS} ms + an interval + {REACTION:?}"
    );
    let report = held.close()?;
    eprintln!("held: {report:?}");
    for (node, lost) in &report.lost_on {
        ensure!(
            node == "c1",
            "{lost} held connections on {node} broke or moved: {report:?}"
        );
    }
    ensure!(
        report.on.keys().any(|n| n != "c1"),
        "held connections on the other nodes: {report:?}"
    );
    let _ = traffic.finish();
    Ok(())
}

#[test]
fn cpnctl_shows_a_services_health_and_history() -> Result<()> {
    let topology = Topology::parse(Path::new("health-cli"), TOPOLOGY)?;
    let lab = CpnLab::start("health-cli", topology)?;
    // Three passes in a row (a check before the service listened may have failed).
    let shown = wait_for("a history", Duration::from_secs(10), || {
        let h = health(&lab, "c2")?;
        Ok(h.first()
            .filter(|h| {
                h.health.history.len() >= 3
                    && h.health.history.iter().rev().take(3).all(|o| o.passed)
            })
            .cloned())
    })?;
    ensure!(shown.health.state == State::Healthy, "{shown:?}");
    ensure!(
        shown
            .health
            .history
            .back()
            .is_some_and(|o| o.detail == "connected"),
        "{shown:?}"
    );
    let cpnctl = cpn_tests::lab::agent_binary()?.with_file_name("cpnctl");
    let out = std::process::Command::new(cpnctl)
        .arg("--socket")
        .arg(lab.lab.control_socket("c2"))
        .args(["show", "services"])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains("served here") && text.contains("healthy") && text.contains("+++"),
        "cpnctl show services: {text}"
    );
    Ok(())
}
