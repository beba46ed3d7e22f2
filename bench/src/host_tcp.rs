//! Part 2, host path: one bulk TCP upload from a host to a service address, encapsulated by
//! the host itself, by `cpn_steer_tc_egress` or by the kernel's own `encap seg6` route.
//!
//! ```text
//!   [host] eth0 ──veth── eth0 [compute]
//!   2001:db8:1::1        2001:db8:1::2, the VIP on lo, Linux End.DT6 at fc00:c::d6
//!   kernel: ip route VIP encap seg6 mode encap segs fc00:c::d6 dev eth0 mtu 1436
//!   cpn:    ip route VIP via 2001:db8:1::2; tc-egress on eth0 (H.Encaps to fc00:c::d6)
//! ```
//!
//! Default offloads on both veths (TSO, GSO, checksum offload), as a host has them. The
//! kernel's route gets the MTU the encapsulation leaves (1500 − 64), as an operator would
//! set it: without, its TCP sends segments that no longer fit once encapsulated. cpn clamps
//! the MSS of the SYNs it steers to the same size instead. The arms take turns in rounds, a
//! new connection each time; a round's ratio is cpn's rate over the kernel's in that round.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cpn_agent::dataplane::{Dataplane, Hook, Node, NodeState, Pinning, ServiceAddr, ServiceConfig};
use cpn_tests::lab::Lab;
use serde::Serialize;

use crate::stats::Spread;

const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
const SID: &str = "fc00:c::d6";
const PORT: u16 = 9200;
/// The encapsulation: outer IPv6 (40) + SRH with one segment (8 + 16).
const ENCAP: u32 = 64;
const MTU: u32 = 1500;

#[derive(Clone, Debug)]
pub struct Settings {
    pub rounds: usize,
    pub window: Duration,
}

#[derive(Debug, Serialize)]
pub struct HostTcp {
    pub method: String,
    pub rounds: usize,
    /// Bulk TCP rate through the kernel's `encap seg6` route, Gbit/s.
    pub kernel_gbps: Spread,
    /// The same through `cpn_steer_tc_egress`, Gbit/s.
    pub cpn_gbps: Spread,
    /// Per round: cpn / kernel (goal ≥ 1.0).
    pub ratio: Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Kernel,
    Cpn,
}

fn build_lab() -> Result<Lab> {
    let lab = Lab::builder("bench-host-tcp")
        .node("host")
        .node("compute")
        .link(("host", "eth0"), ("compute", "eth0"))
        .build()?;
    let host = lab.node("host")?;
    let compute = lab.node("compute")?;
    host.add_address("eth0", "2001:db8:1::1/64")?;
    compute.add_address("eth0", "2001:db8:1::2/64")?;
    compute.add_address("lo", &format!("{VIP}/128"))?;
    compute.sysctl("net.ipv6.conf.all.seg6_enabled=1")?;
    compute.sysctl("net.ipv6.conf.eth0.seg6_enabled=1")?;
    compute.ip(&format!(
        "-6 route add {SID}/128 encap seg6local action End.DT6 table 255 dev eth0"
    ))?;
    // The kernel's FIB helper answers only on an interface that forwards (it refuses with
    // `BPF_FIB_LKUP_RET_FWD_DISABLED` otherwise, and the TC program passes the packet
    // unsteered): forwarding on the uplink alone (docs/OPERATIONS.md, "Which hook").
    host.sysctl("net.ipv6.conf.eth0.forwarding=1")?;
    host.add_route(&["fc00:c::/32", "via", "2001:db8:1::2"])?;
    host.add_route(&[&format!("{VIP}/128"), "via", "2001:db8:1::2"])?;
    Ok(lab)
}

/// cpn's data plane in the host, steering the VIP to the compute node's SID (attached on
/// demand).
fn dataplane(lab: &Lab) -> Result<Dataplane> {
    let _inside = lab.node("host")?.enter()?;
    let mut dp = Dataplane::load(&Pinning::Unpinned)?;
    dp.set_node(
        1,
        &Node {
            segments: vec![SID.parse()?],
            encap_src: "2001:db8:1::1".parse()?,
            reduced: false,
            state: NodeState::Active,
        },
    )?;
    dp.set_service(
        &ServiceAddr {
            addr: VIP.into(),
            port: None,
        },
        &ServiceConfig {
            id: 0,
            affinity: Some(None),
        },
    )?;
    dp.publish_ring(0, &[1])?;
    Ok(dp)
}

/// Puts the host's path to the VIP in `arm`'s hands.
fn switch(lab: &Lab, dp: &mut Dataplane, arm: Arm) -> Result<()> {
    let host = lab.node("host")?;
    match arm {
        Arm::Kernel => {
            dp.detach_all()?;
            host.ip(&format!(
                "-6 route replace {VIP}/128 encap seg6 mode encap segs {SID} dev eth0 mtu {}",
                MTU - ENCAP
            ))?;
        }
        Arm::Cpn => {
            host.ip(&format!(
                "-6 route replace {VIP}/128 via 2001:db8:1::2 dev eth0"
            ))?;
            // Attached afresh: the kernel's arm may have run in between, or not.
            dp.detach_all()?;
            let _inside = host.enter()?;
            dp.attach_tc("eth0", Hook::TcEgress)?;
        }
    }
    // Cached routes of the last arm (the route's MTU) go with the replaced route.
    host.ip("-6 route flush cache")?;
    Ok(())
}

/// The compute node's sink: for each connection, counts bytes until the end and answers with
/// the count and the nanoseconds from the first byte to the last.
fn sink(lab: &Lab) -> Result<thread::JoinHandle<()>> {
    let listener = {
        let _inside = lab.node("compute")?.enter()?;
        TcpListener::bind(SocketAddr::from((VIP, PORT))).context("binding the sink")?
    };
    Ok(thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 18];
        for connection in listener.incoming() {
            let Ok(mut c) = connection else { return };
            let mut bytes = 0u64;
            let mut first = None;
            while let Ok(n) = c.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                bytes += n as u64;
            }
            let nanos = first.map_or(0, |t| t.elapsed().as_nanos());
            let _ = c.write_all(format!("{bytes} {nanos}").as_bytes());
        }
    }))
}

/// One upload of `window`; the rate the sink saw, in Gbit/s.
#[expect(clippy::cast_precision_loss, reason = "byte counts and ns fit f64")]
fn upload(lab: &Lab, window: Duration) -> Result<f64> {
    let mut c = {
        let _inside = lab.node("host")?.enter()?;
        TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_secs(5))
            .context("connecting to the VIP")?
    };
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let chunk = vec![0x5au8; 1 << 18];
    let started = Instant::now();
    while started.elapsed() < window {
        c.write_all(&chunk).context("uploading")?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    let (bytes, nanos) = answer
        .split_once(' ')
        .and_then(|(b, n)| Some((b.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        .with_context(|| format!("the sink answered {answer:?}"))?;
    ensure!(nanos > 0 && bytes > 0, "nothing arrived");
    Ok(bytes as f64 * 8.0 / nanos as f64)
}

pub fn run(settings: &Settings) -> Result<HostTcp> {
    let lab = build_lab()?;
    let mut dp = dataplane(&lab)?;
    let _sink = sink(&lab)?;
    let mut kernel = Vec::new();
    let mut cpn = Vec::new();
    let mut ratio = Vec::new();
    for round in 0..settings.rounds {
        // Alternate which arm goes first.
        let order = if round % 2 == 0 {
            [Arm::Kernel, Arm::Cpn]
        } else {
            [Arm::Cpn, Arm::Kernel]
        };
        let mut rates = [0.0; 2];
        for arm in order {
            switch(&lab, &mut dp, arm)?;
            let rate = upload(&lab, settings.window).with_context(|| format!("{arm:?} arm"))?;
            rates[usize::from(arm == Arm::Cpn)] = rate;
        }
        if round == 0 {
            // The first pair warms up (routes, neighbours, the sink's thread).
            continue;
        }
        kernel.push(rates[0]);
        cpn.push(rates[1]);
        ratio.push(rates[1] / rates[0]);
    }
    let steered = dp.counter(cpn_common::maps::NODE_STATS, 1)?.packets;
    ensure!(steered > 0, "cpn_steer_tc_egress steered nothing");
    dp.detach_all()?;
    Ok(HostTcp {
        method: format!(
            "one TCP connection from a host to a service address on the other end of a veth \
             pair (default offloads), encapsulated by the host: the kernel's `encap seg6` \
             route (MTU {} on the route) or `cpn_steer_tc_egress` on eth0 (MSS clamped to \
             the same), 1 SID, decapsulated by Linux End.DT6; {} s per upload, arms \
             alternating, first round discarded; rate = bytes the sink read / time from its \
             first byte to its last",
            MTU - ENCAP,
            settings.window.as_secs_f64()
        ),
        rounds: kernel.len(),
        kernel_gbps: Spread::of(&kernel),
        cpn_gbps: Spread::of(&cpn),
        ratio: Spread::of(&ratio),
    })
}
