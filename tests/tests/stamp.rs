//! STAMP (RFC 8762) along the steered paths: the ingress measures each compute node with test
//! packets inside that node's own SRv6 encapsulation, across a plain Linux router that runs
//! nothing of ours and through delay lines, one of them lossy; the compute agents reflect.
//!
//! ```text
//!   ingress ── eth0 router eth1 ── line1 (20 ms each way) ──────────────── compute1
//!   (AS 4200000100)    eth2 ── line2 (5 ms each way, loses every 10th SRv6 frame) ── compute2
//!   ingress 2001:db8:1::2, router 2001:db8:1::1 / 2001:db8:1N::1, computeN 2001:db8:1N::2
//! ```
//! (`cpn_tests::stamp_lab`.)

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use cpn_agent::api::{PathView, Request};
use cpn_tests::{
    lab::{Lab, wait_for},
    stamp_lab::{self, Line},
};

/// One-way delay of each line, ms.
const DELAY_MS: [f64; 2] = [20.0, 5.0];
/// compute2's line loses every 10th test packet on its way there.
const DROP_EVERY: u32 = 10;
/// How far a measured one-way delay may lie from its line's, ms. The lines are a Python process
/// that sends each frame when it wakes after the frame's time: a busy machine adds delay, and
/// nothing takes any away (CI saw 21.09 ms through the 20 ms line).
const BELOW_MS: f64 = 0.5;
const ABOVE_MS: f64 = 2.0;

/// Whether `ms` is what a line of `line_ms` gives.
fn through_line(ms: f64, line_ms: f64) -> bool {
    (line_ms - BELOW_MS..=line_ms + ABOVE_MS).contains(&ms)
}

fn paths(lab: &Lab) -> Result<Vec<PathView>> {
    lab.ask("ingress", &Request::Paths)
}

/// Delay through each line as the line's (see `through_line`), loss on the lossy one within 2 points
/// of its 10 %, none on the other: all measured end to end across a router that knows nothing
/// of STAMP or of us, the test packets decapsulated by each node's own SID.
#[test]
fn stamp_measures_delay_and_loss_along_each_nodes_encapsulation() -> Result<()> {
    let lines = [
        Line {
            delay_ms: DELAY_MS[0],
            drop_every: 0,
        },
        Line {
            delay_ms: DELAY_MS[1],
            drop_every: DROP_EVERY,
        },
    ];
    let lab = stamp_lab::start("stamp", &lines, 20)?;
    let logs = |lab: &Lab| lab.logs(["ingress", "compute1", "compute2"]);
    // A full loss window (100 packets at 20 ms) past the first answers, and a timeout.
    let measured = wait_for("both paths measured", Duration::from_secs(40), || {
        let paths = paths(&lab)?;
        let full = paths.len() == 2
            && paths
                .iter()
                .all(|p| p.stats.received >= 150 && p.stats.loss.is_known());
        Ok(full.then_some(paths))
    })
    .with_context(|| logs(&lab))?;
    for p in &measured {
        eprintln!("{}: {:?}", p.node, p.stats);
    }
    let path = |name: &str| {
        measured
            .iter()
            .find(|p| p.node == name)
            .with_context(|| format!("{name} measured: {measured:?}"))
    };
    for (n, delay) in DELAY_MS.iter().enumerate() {
        let stats = path(&format!("compute{}", n + 1))?.stats;
        let ms = stats.delay.known().context("delay known")?.as_secs_f64() * 1000.0;
        ensure!(
            through_line(ms, *delay),
            "compute{}: {ms:.2} ms one way, the line's is {delay} ms (-{BELOW_MS}/+{ABOVE_MS} ms)",
            n + 1
        );
        ensure!(
            stats.inner_hops.known() == Some(0),
            "decapsulated by the node itself, no router after: {stats:?}"
        );
    }
    let clean = path("compute1")?.stats.loss.known().context("loss")?;
    ensure!(clean < 0.02, "compute1's line loses nothing: {clean}");
    let lossy = path("compute2")?.stats.loss.known().context("loss")?;
    let expected = 1.0 / f64::from(DROP_EVERY);
    ensure!(
        (lossy - expected).abs() <= 0.02,
        "compute2's line loses every {DROP_EVERY}th: {lossy}"
    );

    // What selection sees is what STAMP measured: the service's candidates carry it.
    let services: serde_json::Value = lab.ask("ingress", &Request::Services)?;
    let evaluations = services[0]["decision"]["evaluations"]
        .as_array()
        .context("evaluations")?;
    for e in evaluations {
        let secs = e["path"]["latency"]["secs"].as_f64().unwrap_or(-1.0)
            + e["path"]["latency"]["nanos"].as_f64().unwrap_or(0.0) / 1e9;
        let line_ms = if e["name"] == "compute1" {
            DELAY_MS[0]
        } else {
            DELAY_MS[1]
        };
        ensure!(
            through_line(secs * 1000.0, line_ms),
            "selection's path latency is STAMP's: {e}"
        );
    }
    Ok(())
}
