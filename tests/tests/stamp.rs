//! STAMP (RFC 8762) along the steered paths: the ingress measures each compute node with test
//! packets inside that node's own SRv6 encapsulation, across a plain Linux router that runs
//! nothing of ours and through delay lines, one of them lossy; the compute agents reflect.
//!
//! ```text
//!   ingress ── eth0 router eth1 ── line1 (20 ms each way) ──────────────── compute1
//!   (AS 4200000100)    eth2 ── line2 (5 ms each way, loses every 10th SRv6 frame) ── compute2
//!   ingress 2001:db8:1::2, router 2001:db8:1::1 / 2001:db8:1N::1, computeN 2001:db8:1N::2
//! ```
//! The router forwards on static routes (the compute subnets and locators: what an IGP would
//! give it); the ingress reaches the compute subnets through it and peers with each compute
//! node in eBGP multihop, learning their SIDs and locators.

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, ensure};
use cpn_agent::api::{PathView, Request};
use cpn_tests::{
    bgp_lab::{bgp_section, compute_config},
    cpn_lab::start_lossy_line,
    lab::{Lab, wait_for},
    steering_lab::VIP,
};

const INGRESS_AS: u32 = 4_200_000_100;
/// One-way delay of each line, ms.
const DELAY_MS: [f64; 2] = [20.0, 5.0];
/// compute2's line loses every 10th test packet on its way there.
const DROP_EVERY: u32 = 10;

fn lab() -> Result<Lab> {
    let mut lab = Lab::builder("stamp")
        .node("ingress")
        .node("router")
        .node("line1")
        .node("line2")
        .node("compute1")
        .node("compute2")
        .link(("ingress", "eth0"), ("router", "eth0"))
        .link(("router", "eth1"), ("line1", "eth0"))
        .link(("line1", "eth1"), ("compute1", "eth0"))
        .link(("router", "eth2"), ("line2", "eth0"))
        .link(("line2", "eth1"), ("compute2", "eth0"))
        .build()?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    let router = lab.node("router")?;
    router.add_address("eth0", "2001:db8:1::1/64")?;
    router.enable_forwarding()?;
    for n in 1..=2 {
        ingress.add_route(&[&format!("2001:db8:1{n}::/64"), "via", "2001:db8:1::1"])?;
        router.add_address(&format!("eth{n}"), &format!("2001:db8:1{n}::1/64"))?;
        router.add_route(&[
            &format!("fc00:{n}::/32"),
            "via",
            &format!("2001:db8:1{n}::2"),
        ])?;
        // The lines copy frames as they are: both ends must send complete checksums.
        router.checksum_in_software(&format!("eth{n}"))?;
        let compute = lab.node(&format!("compute{n}"))?;
        compute.checksum_in_software("eth0")?;
        compute.add_address("eth0", &format!("2001:db8:1{n}::2/64"))?;
        compute.add_address("lo", &format!("{VIP}/128"))?;
        compute.add_route(&["default", "via", &format!("2001:db8:1{n}::1")])?;
    }
    start_lossy_line(&mut lab, "line1", DELAY_MS[0], 0)?;
    start_lossy_line(&mut lab, "line2", DELAY_MS[1], DROP_EVERY)?;
    Ok(lab)
}

fn start_agents(lab: &mut Lab) -> Result<()> {
    let neighbors = [
        ("2001:db8:11::2", 4_200_000_001, "passive = true\n"),
        ("2001:db8:12::2", 4_200_000_002, "passive = true\n"),
    ];
    let bgp = bgp_section(INGRESS_AS, "10.0.0.100", &neighbors);
    lab.start_agent(
        "ingress",
        &format!(
            "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
             [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
             [srv6]\nsource = \"2001:db8:1::2\"\n\n\
             [stamp]\ninterval_ms = 20\n\n\
             [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\n\n{bgp}"
        ),
    )?;
    for n in 1..=2u32 {
        let inflight = lab.workdir().join(format!("compute{n}.inflight"));
        fs::write(&inflight, "0\n")?;
        let bgp = bgp_section(
            4_200_000_000 + n,
            &format!("10.0.0.{n}"),
            &[("2001:db8:1::2", INGRESS_AS, "")],
        );
        lab.start_agent(
            &format!("compute{n}"),
            &compute_config(n, 1e12, &inflight, &bgp),
        )?;
    }
    Ok(())
}

fn paths(lab: &Lab) -> Result<Vec<PathView>> {
    lab.ask("ingress", &Request::Paths)
}

/// Delay through each line within 1 ms of the line's, loss on the lossy one within 2 points
/// of its 10 %, none on the other: all measured end to end across a router that knows nothing
/// of STAMP or of us, the test packets decapsulated by each node's own SID.
#[test]
fn stamp_measures_delay_and_loss_along_each_nodes_encapsulation() -> Result<()> {
    let mut lab = lab()?;
    start_agents(&mut lab)?;
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
            (ms - delay).abs() <= 1.0,
            "compute{}: {ms:.2} ms one way, the line's is {delay} ms",
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
        let delay = if e["name"] == "compute1" {
            0.020
        } else {
            0.005
        };
        ensure!(
            (secs - delay).abs() <= 0.001,
            "selection's path latency is STAMP's: {e}"
        );
    }
    Ok(())
}
