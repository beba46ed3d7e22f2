//! The STAMP lab: an ingress agent, a plain Linux router (nothing of ours runs there), and
//! behind it compute agents, each through a delay line, some of them lossy.
//!
//! ```text
//!   ingress ── eth0 router ethN ── lineN (delay, maybe lossy) ── computeN
//!   ingress 2001:db8:1::2, router 2001:db8:1::1 / 2001:db8:1N::1, computeN 2001:db8:1N::2
//! ```
//! The router forwards on static routes (the compute subnets and locators: what an IGP would
//! give it); the ingress reaches the compute subnets through it and peers with each compute
//! node in eBGP multihop, learning their SIDs and locators.

use std::fs;

use anyhow::Result;

use crate::{
    bgp_lab::{bgp_section, compute_config},
    cpn_lab::start_delay_line,
    lab::Lab,
    steering_lab::VIP,
};

const INGRESS_AS: u32 = 4_200_000_100;

/// One compute node behind its line: one-way delay, and every how many SRv6 frames towards
/// it the line loses one (0: none).
#[derive(Clone, Copy, Debug)]
pub struct Line {
    pub delay_ms: f64,
    pub drop_every: u32,
}

/// Builds the lab with one compute node per line (at most 9) and starts every agent; the
/// ingress sends STAMP test packets every `stamp_interval_ms`.
pub fn start(name: &str, lines: &[Line], stamp_interval_ms: u64) -> Result<Lab> {
    let mut builder = Lab::builder(name)
        .node("ingress")
        .node("router")
        .link(("ingress", "eth0"), ("router", "eth0"));
    for n in 1..=lines.len() {
        let (line, compute) = (format!("line{n}"), format!("compute{n}"));
        builder = builder
            .node(&line)
            .node(&compute)
            .link(("router", &format!("eth{n}")), (&line, "eth0"))
            .link((&line, "eth1"), (&compute, "eth0"));
    }
    let mut lab = builder.build()?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    let router = lab.node("router")?;
    router.add_address("eth0", "2001:db8:1::1/64")?;
    router.enable_forwarding()?;
    for n in 1..=lines.len() {
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
        compute.add_address("eth0", &format!("2001:db8:1{n}::2/64"))?;
        compute.checksum_in_software("eth0")?;
        compute.add_address("lo", &format!("{VIP}/128"))?;
        compute.add_route(&["default", "via", &format!("2001:db8:1{n}::1")])?;
    }
    for (i, line) in lines.iter().enumerate() {
        start_delay_line(
            &mut lab,
            &format!("line{}", i + 1),
            line.delay_ms,
            line.drop_every,
        )?;
    }
    start_agents(&mut lab, lines.len(), stamp_interval_ms)?;
    Ok(lab)
}

fn start_agents(lab: &mut Lab, computes: usize, stamp_interval_ms: u64) -> Result<()> {
    let neighbors: Vec<(String, u32)> = (1..=computes)
        .map(|n| {
            (
                format!("2001:db8:1{n}::2"),
                4_200_000_000 + u32::try_from(n).unwrap_or(0),
            )
        })
        .collect();
    let neighbors: Vec<(&str, u32, &str)> = neighbors
        .iter()
        .map(|(address, asn)| (address.as_str(), *asn, "passive = true\n"))
        .collect();
    let bgp = bgp_section(INGRESS_AS, "10.0.0.100", &neighbors);
    lab.start_agent(
        "ingress",
        &format!(
            "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
             [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
             [srv6]\nsource = \"2001:db8:1::2\"\n\n\
             [stamp]\ninterval_ms = {stamp_interval_ms}\n\n\
             [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\n\n{bgp}"
        ),
    )?;
    for n in 1..=u32::try_from(computes).unwrap_or(0) {
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
