//! Sensing in namespace labs, each figure a ratio to what was configured:
//! - BFD: two agents, one link; the link goes down on one side; the other's detection time
//!   (its session's own timestamp of going down, less the moment of the cut) over its
//!   interval. RFC 5880 bounds it by the multiplier (3) from the last packet heard.
//! - Health checks: a compute agent checking its service (TCP, at the service's address); the
//!   service process is killed; the time until the agent declares it unhealthy over the
//!   check interval. With `fall` 3 it lies between 2 and 3 intervals (the first failed check
//!   comes within one interval of the death).
//! - STAMP: the `stamp_lab` (a plain router, delay lines of 2, 5 and 20 ms one way, one of 5
//!   ms losing every 10th SRv6 frame); the ingress's measured one-way delay and loss against
//!   the lines'.

use std::{
    fs,
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use cpn_agent::{
    api::{BfdView, PathView, Request, ServiceHealth},
    metrics::health::State as Health,
    sensing::bfd::packet::State,
};
use cpn_tests::{
    bgp_lab::compute_config,
    lab::{Lab, wait_for},
    stamp_lab::{self, Line},
    steering_lab::VIP,
};
use serde::Serialize;

use crate::stats::Spread;

const MULTIPLIER: u32 = 3;
const FALL: u32 = 3;

#[derive(Debug, Serialize)]
pub struct Sensing {
    pub bfd: Vec<Detection>,
    pub health: Vec<Detection>,
    pub stamp: Vec<Accuracy>,
}

/// How long detection took, over the configured interval.
#[derive(Debug, Serialize)]
pub struct Detection {
    pub interval_ms: u64,
    /// BFD's Detect Mult, or the check's fall count.
    pub multiplier: u32,
    pub rounds: usize,
    pub took_ms: Spread,
    pub ratio: Spread,
}

/// One delay line against what STAMP measured through it.
#[derive(Debug, Serialize)]
pub struct Accuracy {
    pub delay_ms: f64,
    /// 0: none; else every how many SRv6 frames towards the node the line loses one.
    pub drop_every: u32,
    pub measured_delay_ms: Spread,
    /// Measured minus configured.
    pub delay_error_ms: Spread,
    pub measured_loss: Spread,
    pub loss_error_points: Spread,
}

pub fn run(quick: bool) -> Result<Sensing> {
    let rounds = if quick { 2 } else { 10 };
    let bfd_intervals: &[u64] = if quick { &[10] } else { &[10, 50, 100] };
    let health_intervals: &[u64] = if quick { &[100] } else { &[50, 200, 1000] };
    let bfd = bfd_intervals
        .iter()
        .map(|&i| bfd_detection(i, rounds))
        .collect::<Result<_>>()?;
    let health = health_intervals
        .iter()
        .map(|&i| health_detection(i, if quick { 2 } else { 5 }))
        .collect::<Result<_>>()?;
    let stamp = stamp_accuracy(if quick { 2 } else { 20 })?;
    Ok(Sensing { bfd, health, stamp })
}

fn unix_us(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(0)
}

#[expect(clippy::cast_precision_loss, reason = "milliseconds")]
fn ratios(detections_ms: &[f64], interval_ms: u64) -> Spread {
    let ratios: Vec<f64> = detections_ms
        .iter()
        .map(|d| d / interval_ms as f64)
        .collect();
    Spread::of(&ratios)
}

/// Two agents (no data plane: reflectors), BFD between them at `interval_ms` × 3.
fn bfd_detection(interval_ms: u64, rounds: usize) -> Result<Detection> {
    let mut lab = Lab::builder(&format!("bench-bfd{interval_ms}"))
        .node("a")
        .node("b")
        .link(("a", "eth0"), ("b", "eth0"))
        .build()?;
    let (a, b) = ("2001:db8:77::1", "2001:db8:77::2");
    lab.node("a")?.add_address("eth0", &format!("{a}/64"))?;
    let node_b = lab.node("b")?.clone();
    node_b.add_address("eth0", &format!("{b}/64"))?;
    // The address stays while the link is down: the cut is the link alone.
    node_b.sysctl("net.ipv6.conf.eth0.keep_addr_on_down=1")?;
    for (me, asn, peer, peer_asn) in [("a", 65001, b, 65002), ("b", 65002, a, 65001)] {
        let config = format!(
            "[node]\nname = \"{me}\"\nroles = [\"reflector\"]\n\n\
             [bgp]\nasn = {asn}\nrouter_id = \"10.0.0.{}\"\n\n\
             [[bgp.neighbor]]\naddress = \"{peer}\"\nasn = {peer_asn}\n\
             route_reflector_client = true\n\
             bfd = {{ interval_ms = {interval_ms}, multiplier = {MULTIPLIER} }}\n",
            asn - 65000
        );
        lab.start_agent(me, &config)?;
    }
    let peer: IpAddr = b.parse()?;
    let session = |lab: &Lab| -> Result<Option<cpn_agent::sensing::bfd::Status>> {
        let view: BfdView = lab.ask("a", &Request::Bfd)?;
        Ok(view
            .sessions
            .into_iter()
            .find(|s| s.neighbor == peer)
            .map(|s| s.status))
    };
    let mut detections = Vec::new();
    for _ in 0..rounds {
        wait_for("BFD up at its interval", Duration::from_secs(20), || {
            Ok(session(&lab)?
                .filter(|s| s.state == State::Up && s.transmit_interval_us == interval_ms * 1000))
        })?;
        // A little past the Poll Sequence, so that the cut finds the session steady.
        std::thread::sleep(Duration::from_millis(interval_ms * 5));
        let cut = SystemTime::now();
        node_b.ip("link set eth0 down")?;
        let down = wait_for("BFD to notice", Duration::from_secs(10), || {
            Ok(session(&lab)?.and_then(|s| s.down_at_unix_us.filter(|at| *at > unix_us(cut))))
        })?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        detections.push((down - unix_us(cut)) as f64 / 1e3);
        node_b.ip("link set eth0 up")?;
    }
    Ok(Detection {
        interval_ms,
        multiplier: MULTIPLIER,
        rounds,
        ratio: ratios(&detections, interval_ms),
        took_ms: Spread::of(&detections),
    })
}

/// A TCP server at the service's address, as long as it lives.
const LISTENER: &str = r"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen(64)
while True:
    s.accept()[0].close()
";

/// A compute agent checking its service every `interval_ms` (fall 3, rise 1).
fn health_detection(interval_ms: u64, rounds: usize) -> Result<Detection> {
    let mut lab = Lab::builder(&format!("bench-health{interval_ms}"))
        .node("compute1")
        .node("peer")
        .link(("compute1", "eth0"), ("peer", "eth0"))
        .build()?;
    let node = lab.node("compute1")?.clone();
    node.add_address("eth0", "2001:db8:11::2/64")?;
    node.add_address("lo", &format!("{VIP}/128"))?;
    let inflight = lab.workdir().join("compute1.inflight");
    fs::write(&inflight, "0\n")?;
    let config = compute_config(1, 1e12, &inflight, "").replacen(
        "\n\n[metrics]",
        &format!(
            "\nhealth = {{ check = \"tcp\", port = 7000, interval_ms = {interval_ms}, \
             fall = {FALL}, rise = 1 }}\n\n[metrics]"
        ),
        1,
    );
    if !config.contains("health = ") {
        bail!("the compute configuration has no [[service]] to check: {config}");
    }
    lab.start_agent("compute1", &config)?;
    let state = |lab: &Lab| -> Result<Option<(Health, Option<u64>)>> {
        let health: Vec<ServiceHealth> = lab.ask("compute1", &Request::Health)?;
        Ok(health
            .first()
            .map(|h| (h.health.state, h.health.since_unix_us)))
    };
    let mut detections = Vec::new();
    for _ in 0..rounds {
        let pid = lab.spawn("compute1", &["python3", "-c", LISTENER, VIP], None)?;
        wait_for("the service healthy", Duration::from_secs(20), || {
            Ok(state(&lab)?
                .filter(|(s, _)| *s == Health::Healthy)
                .map(drop))
        })?;
        // Somewhere between two checks, as a real death would be.
        std::thread::sleep(Duration::from_millis(interval_ms * 2 + interval_ms / 3));
        let killed = SystemTime::now();
        lab.kill(pid)?;
        let since = wait_for("the service unhealthy", Duration::from_secs(30), || {
            Ok(state(&lab)?
                .and_then(|(s, since)| (s == Health::Unhealthy).then_some(since).flatten()))
        })?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        detections.push(since.saturating_sub(unix_us(killed)) as f64 / 1e3);
    }
    Ok(Detection {
        interval_ms,
        multiplier: FALL,
        rounds,
        ratio: ratios(&detections, interval_ms),
        took_ms: Spread::of(&detections),
    })
}

/// The stamp lab, sampled `samples` times 500 ms apart once every path has a full window.
fn stamp_accuracy(samples: usize) -> Result<Vec<Accuracy>> {
    let lines = [
        Line {
            delay_ms: 2.0,
            drop_every: 0,
        },
        Line {
            delay_ms: 5.0,
            drop_every: 0,
        },
        Line {
            delay_ms: 20.0,
            drop_every: 0,
        },
        Line {
            delay_ms: 5.0,
            drop_every: 10,
        },
    ];
    let lab = stamp_lab::start("bench-stamp", &lines, 20)?;
    let measured = |lab: &Lab| -> Result<Vec<PathView>> { lab.ask("ingress", &Request::Paths) };
    wait_for("every path measured", Duration::from_mins(1), || {
        let paths = measured(&lab)?;
        Ok((paths.len() == lines.len()
            && paths
                .iter()
                .all(|p| p.stats.received >= 150 && p.stats.loss.is_known()))
        .then_some(()))
    })?;
    let mut delays = vec![Vec::new(); lines.len()];
    let mut losses = vec![Vec::new(); lines.len()];
    let started = Instant::now();
    for _ in 0..samples {
        for p in measured(&lab)? {
            let n: usize = p
                .node
                .strip_prefix("compute")
                .and_then(|n| n.parse().ok())
                .context("a compute node's name")?;
            if let (Some(d), Some(l)) = (p.stats.delay.known(), p.stats.loss.known()) {
                delays[n - 1].push(d.as_secs_f64() * 1e3);
                losses[n - 1].push(l);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("bench: STAMP sampled for {:?}", started.elapsed());
    Ok(lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let expected_loss = if line.drop_every == 0 {
                0.0
            } else {
                1.0 / f64::from(line.drop_every)
            };
            let errors: Vec<f64> = delays[i].iter().map(|d| d - line.delay_ms).collect();
            let loss_errors: Vec<f64> = losses[i]
                .iter()
                .map(|l| (l - expected_loss) * 100.0)
                .collect();
            Accuracy {
                delay_ms: line.delay_ms,
                drop_every: line.drop_every,
                measured_delay_ms: Spread::of(&delays[i]),
                delay_error_ms: Spread::of(&errors),
                measured_loss: Spread::of(&losses[i]),
                loss_error_points: Spread::of(&loss_errors),
            }
        })
        .collect())
}
