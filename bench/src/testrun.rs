//! Part 1: the cost of one packet through `BPF_PROG_TEST_RUN`.
//!
//! Every call runs the program once (`repeat = 1`) on a fresh copy of the packet: with
//! `repeat > 1` the kernel runs an encapsulating program again on its own output, so that
//! figure would be the cost of some other packet. The time is the kernel's own `duration` for
//! the call (program run plus the test timer's fixed overhead, without the syscall and the
//! copies), so the same overhead is in every arm, the no-op included: ratios to the no-op and
//! net costs (arm minus no-op, per round) take it out. Arms run in interleaved rounds (each
//! round one batch of every arm, in a rotated order); a round's figure is its batch median,
//! and an arm reports the median and the 10th-90th percentiles over rounds.
//!
//! The TC arms run `cpn_steer_tc_ingress` on a socket buffer the kernel builds for each call;
//! their no-op is a TC no-op (`tc_noop`), so their net cost is the program's own work, as the
//! XDP arms' is.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::{
        ProgramError, ProgramInfo, SchedClassifier, TestRun as _, TestRunOptions, TestRunResult,
        Xdp,
    },
};
use cpn_agent::dataplane::{
    Dataplane, Hook, Node, NodeState, Pinning, Program, ServiceAddr, ServiceConfig, SidBehavior,
    addr16,
};
use cpn_common::maps::{FlowEntry, FlowKey, MAX_SIDS};
use cpn_tests::{
    dut::{CLIENT4, CLIENT6, CORE_MAC, Dut, NEXT_HOP_MAC},
    packet::{self, Encap, Frame},
};
use serde::Serialize;

use crate::{peers::Peers, stats::Spread};

/// Room for what a program pushes in front of the packet.
const HEADROOM: usize = 512;
/// UDP payload of the measured packets.
const PAYLOAD: [u8; 64] = [0x5a; 64];
const ENCAP_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
/// The flow-affinity table of every measured data plane: room for the largest fill.
const FLOW_TABLE: u32 = 1 << 20;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

/// How long to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    pub rounds: usize,
    pub batch: usize,
    /// Flows in the affinity table for the hit/miss arms.
    pub flow_counts: Vec<u32>,
}

/// One measured arm.
#[derive(Debug, Serialize)]
pub struct ArmResult {
    pub name: String,
    pub group: &'static str,
    pub program: String,
    /// Inner (client) packet family; the Katran-like arm of the same family is its peer.
    pub family: &'static str,
    pub frame_bytes: usize,
    pub verdict: &'static str,
    /// Kernel-measured ns per call (program + timer overhead).
    pub ns: Spread,
    /// Per round: this arm's ns minus the no-op's.
    pub net_ns: Spread,
    /// Per round: ns / no-op ns.
    pub vs_noop: Spread,
    /// Per round: ns / Katran-like ns (same family).
    pub vs_katran: Spread,
    /// Per round: net ns / Katran-like net ns.
    pub net_vs_katran: Spread,
}

/// The same programs with `repeat` > 1 on packets they do not change: a check of the
/// `repeat = 1` method (the timer's overhead is paid once per call, not per run).
#[derive(Debug, Serialize)]
pub struct Amortized {
    pub name: String,
    pub repeat: u32,
    /// ns per run with `repeat` runs per call.
    pub ns: Spread,
    /// The same arm's net ns with `repeat = 1`, in the same rounds.
    pub net_repeat_1_ns: Spread,
    /// Per round: net ns with `repeat = 1` / ns per run with `repeat`.
    pub ratio: Spread,
}

/// A loaded program's size as the kernel reports it (what `bpftool prog show` prints).
#[derive(Debug, Serialize)]
pub struct ProgramSize {
    pub program: String,
    pub xlated_insns: Option<u32>,
    pub jited_bytes: Option<u32>,
    pub verified_insns: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct PerPacket {
    pub method: &'static str,
    pub rounds: usize,
    pub batch: usize,
    pub katran_source: String,
    pub arms: Vec<ArmResult>,
    pub amortized: Vec<Amortized>,
    pub programs: Vec<ProgramSize>,
    /// Share of a sample of pre-filled flows still in the table after filling (LRU check).
    pub flow_table_residency: Vec<(u32, f64)>,
}

pub const METHOD: &str = "BPF_PROG_TEST_RUN, repeat=1 per call on a fresh copy of the packet; \
    kernel-reported duration per call; arms interleaved in rounds, a round's value is the \
    batch median; spread = p10-p90 over rounds; ratios and net costs are taken per round";

/// Which loaded program an arm runs.
#[derive(Clone, Copy, Debug)]
enum Prog {
    Noop,
    /// The TC no-op: the floor of the TC arms.
    TcNoop,
    /// The LRU floor: one lookup and one insert, nothing else (`bench/bpf/baselines.c`).
    FlowInsert,
    KatranV4,
    KatranV6,
    /// `cpn_steer` of the data plane at this index.
    Steer(usize),
    /// `cpn_steer_tc_ingress` of the first data plane.
    SteerTc,
    Endpoint,
}

impl Prog {
    const fn is_tc(self) -> bool {
        matches!(self, Self::TcNoop | Self::SteerTc)
    }
}

/// A loaded program of either kind, run the same way.
enum Runnable<'a> {
    Xdp(&'a Xdp),
    Tc(&'a SchedClassifier),
}

impl Runnable<'_> {
    fn test_run(&self, options: TestRunOptions<'_>) -> Result<TestRunResult, ProgramError> {
        match self {
            Self::Xdp(p) => p.test_run(options),
            Self::Tc(p) => p.test_run(options),
        }
    }

    fn info(&self) -> Result<ProgramInfo, ProgramError> {
        match self {
            Self::Xdp(p) => p.info(),
            Self::Tc(p) => p.info(),
        }
    }
}

/// Where an arm's packets come from.
#[derive(Clone, Debug)]
enum Packets {
    Fixed(Vec<u8>),
    /// Flow `i` is `template` with `i` written at `src_offset` (the low 32 bits of the source
    /// address). `Hit` walks the `n` flows in the table in a scattered order; `Miss` uses flows
    /// that are not there, and removes them again after each batch so the table keeps its size.
    Hit {
        template: Vec<u8>,
        n: u32,
    },
    Miss {
        template: Vec<u8>,
        first: u32,
    },
}

#[derive(Debug)]
struct Arm {
    name: String,
    group: &'static str,
    prog: Prog,
    family: &'static str,
    ifindex: u32,
    packets: Packets,
    expect: u32,
}

/// Everything loaded for the measurement.
struct Loaded {
    noop: Ebpf,
    katran: Ebpf,
    /// One data plane per affinity table fill (index = position in `flow_counts`); the first
    /// also runs the steer, parse and endpoint arms.
    planes: Vec<Dataplane>,
}

impl Loaded {
    fn program(&self, prog: Prog) -> Result<Runnable<'_>> {
        Ok(match prog {
            Prog::TcNoop => Runnable::Tc(
                self.noop
                    .program("tc_noop")
                    .and_then(|p| <&SchedClassifier>::try_from(p).ok())
                    .context("no TC program tc_noop")?,
            ),
            Prog::SteerTc => Runnable::Tc(self.planes[0].steer_tc(Hook::TcIngress)?),
            prog => Runnable::Xdp(self.xdp(prog)?),
        })
    }

    fn xdp(&self, prog: Prog) -> Result<&Xdp> {
        let (ebpf, name) = match prog {
            Prog::TcNoop | Prog::SteerTc => bail!("{prog:?} is not an XDP program"),
            Prog::Noop => (&self.noop, "xdp_noop"),
            Prog::FlowInsert => (&self.noop, "xdp_flow_insert"),
            Prog::KatranV4 => (&self.katran, "balancer_ingress_v4"),
            Prog::KatranV6 => (&self.katran, "balancer_ingress_v6"),
            Prog::Steer(i) => return Ok(self.planes[i].program(Program::Steer)?),
            Prog::Endpoint => return Ok(self.planes[0].program(Program::Endpoint)?),
        };
        ebpf.program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .with_context(|| format!("no XDP program {name}"))
    }
}

// Addresses of the measured services and nodes (cpn_steer's node SIDs go out dut:eth1).
fn svc6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, last)
}
fn svc4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}
const AFFINITY_SVC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 1);
const DT6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xe, 0, 0, 0, 0, 0, 0xd6);
const DT4: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xe, 0, 0, 0, 0, 0, 0xd4);

/// The encapsulations measured: (label, segments, reduced).
fn encaps() -> Vec<(String, usize, bool)> {
    vec![
        ("reduced, 1 SID".to_owned(), 1, true),
        ("1 SID".to_owned(), 1, false),
        ("3 SIDs".to_owned(), 3, false),
        (format!("{MAX_SIDS} SIDs (max)"), MAX_SIDS, false),
    ]
}

fn segments(node: u16, count: usize) -> Vec<Ipv6Addr> {
    (1..=u16::try_from(count).expect("few SIDs"))
        .map(|i| Ipv6Addr::new(0xfc00, node, 0, 0, 0, 0, 0, i))
        .collect()
}

/// Services, nodes and SIDs of a measured data plane.
fn configure(dp: &mut Dataplane) -> Result<()> {
    for (i, (_, count, reduced)) in encaps().into_iter().enumerate() {
        let id = u32::try_from(i)?;
        let node = u16::try_from(i + 1)?;
        dp.set_node(
            id + 1,
            &Node {
                segments: segments(node, count),
                encap_src: ENCAP_SRC,
                reduced,
                state: NodeState::Active,
            },
        )?;
        for (service, addr) in [
            (id, IpAddr::from(svc6(node))),
            (id + 10, IpAddr::from(svc4(u8::try_from(node)?))),
        ] {
            dp.set_service(
                &ServiceAddr { addr, port: None },
                &ServiceConfig {
                    id: service,
                    affinity: None,
                },
            )?;
            dp.publish_ring(service, &[id + 1])?;
        }
    }
    // Flow affinity, entries kept until the LRU evicts them; ring = node 2 (one SID).
    dp.set_service(
        &ServiceAddr {
            addr: AFFINITY_SVC.into(),
            port: None,
        },
        &ServiceConfig {
            id: 20,
            affinity: Some(None),
        },
    )?;
    dp.publish_ring(20, &[2])?;
    // The same one-SID node once more, for the arm that asks the FIB on every packet: the
    // agent leaves a node there when it cannot cache its next hop (ECMP, policy rules...).
    dp.set_node(
        FIB_NODE,
        &Node {
            segments: segments(2, 1),
            encap_src: ENCAP_SRC,
            reduced: false,
            state: NodeState::Active,
        },
    )?;
    dp.set_service(
        &ServiceAddr {
            addr: FIB_SVC.into(),
            port: None,
        },
        &ServiceConfig {
            id: 21,
            affinity: None,
        },
    )?;
    dp.publish_ring(21, &[FIB_NODE])?;
    dp.set_sid(DT6, SidBehavior::EndDt6 { table: 0 }, 0)?;
    dp.set_sid(DT4, SidBehavior::EndDt4 { table: 0 }, 1)?;
    // The FIB answer cache on, as the agent's routing follower turns it on when it starts.
    dp.bump_fib_generation()?;
    cache_next_hops(dp)
}

/// Node whose next hop stays uncached: `cpn_steer` asks `bpf_fib_lookup` for its packets.
const FIB_NODE: u32 = 9;
const FIB_SVC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);

/// Caches the measured nodes' next hops as the agent does: resolved by the agent's resolver
/// from the dut namespace's routes and neighbours (this thread is inside it).
fn cache_next_hops(dp: &mut Dataplane) -> Result<()> {
    for (i, (_, count, _)) in encaps().into_iter().enumerate() {
        let node = u16::try_from(i + 1)?;
        let first = segments(node, count)[0];
        let next_hop = cpn_agent::dataplane::resolver::resolve_now(first)?
            .map_err(|why| anyhow::anyhow!("the next hop of {first} is not cacheable: {why}"))?;
        dp.set_nexthop(u32::from(node), Some(next_hop))?;
    }
    Ok(())
}

/// The data plane's flow table, opened by id (the data plane keeps it private).
/// The floor program's LRU hash (`floor_flows`, keyed by the two IPv6 addresses and 8 zero
/// bytes, values of 16 bytes).
fn floor_table(xdp: &Xdp) -> Result<HashMap<MapData, [u8; 40], [u8; 16]>> {
    for id in xdp.info()?.map_ids()?.unwrap_or_default() {
        if MapInfo::from_id(id)?.name_as_str() == Some("floor_flows") {
            let map = Map::from_map_data(MapData::from_id(id)?)?;
            return Ok(HashMap::try_from(map)?);
        }
    }
    bail!("xdp_flow_insert has no floor_flows map")
}

/// The floor program's key of a packet from `src` to the affinity service.
fn floor_key(src: &Ipv6Addr) -> [u8; 40] {
    let mut key = [0; 40];
    key[..16].copy_from_slice(&src.octets());
    key[16..32].copy_from_slice(&AFFINITY_SVC.octets());
    key
}

fn flow_table(dp: &Dataplane) -> Result<HashMap<MapData, FlowKey, FlowEntry>> {
    let info = dp.program(Program::Steer)?.info()?;
    for id in info.map_ids()?.unwrap_or_default() {
        if MapInfo::from_id(id)?.name_as_str() == Some(cpn_common::maps::FLOWS) {
            let map = Map::from_map_data(MapData::from_id(id)?)?;
            return Ok(HashMap::try_from(map)?);
        }
    }
    bail!("cpn_steer has no {} map", cpn_common::maps::FLOWS)
}

/// Source address of affinity flow `i`.
fn flow_src(i: u32) -> Ipv6Addr {
    let [a, b] = [(i >> 16) as u16, (i & 0xffff) as u16];
    Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, a, b)
}

const FLOW_PORTS: (u16, u16) = (40_000, 443);

fn flow_key(i: u32) -> FlowKey {
    FlowKey {
        src: addr16(flow_src(i).into()),
        dst: addr16(AFFINITY_SVC.into()),
        src_port: FLOW_PORTS.0.to_be_bytes(),
        dst_port: FLOW_PORTS.1.to_be_bytes(),
        protocol: 17,
        _pad: [0; 3],
    }
}

/// Byte offset of the low 32 bits of the IPv6 source address in an untagged frame.
const SRC_LOW_OFFSET: usize = 14 + 8 + 12;

fn with_flow(template: &[u8], i: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    out[SRC_LOW_OFFSET..SRC_LOW_OFFSET + 4].copy_from_slice(&i.to_be_bytes());
}

/// Fills the table with flows `0..n`, as the program itself would have remembered them.
fn fill_flows(dp: &Dataplane, n: u32) -> Result<f64> {
    let mut table = flow_table(dp)?;
    let entry = FlowEntry {
        node: 2,
        _pad: 0,
        last_seen_jiffies: 0,
    };
    for i in 0..n {
        table.insert(flow_key(i), entry, 0)?;
    }
    // The LRU may have evicted a few while filling; look at a sample.
    let step = (n / 1000).max(1);
    let (mut present, mut looked) = (0u32, 0u32);
    for i in (0..n).step_by(step as usize) {
        looked += 1;
        if table.get(&flow_key(i), 0).is_ok() {
            present += 1;
        }
    }
    Ok(f64::from(present) / f64::from(looked.max(1)))
}

/// Katran-like balancer maps: one VIP per family (the program hashes only the source address
/// and ports, and its selftest build accepts only the hashes of all-zero ones, so both
/// families' packets come from `0.0.0.0`/`::` port 0), each to one real.
fn configure_katran(katran: &mut Ebpf) -> Result<()> {
    // struct vip_definition { be32 vip[4]; u16 port; u16 family; u8 proto; } (24 bytes).
    fn vip_key(addr: [u8; 16]) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(&addr);
        key[20] = 6;
        key
    }
    let mut v4 = [0u8; 16];
    v4[..4].copy_from_slice(&KATRAN_VIP4.octets());
    {
        let mut vips: HashMap<_, [u8; 24], [u32; 2]> =
            HashMap::try_from(katran.map_mut("vip_map").context("vip_map")?)?;
        vips.insert(vip_key(v4), [0, 1], 0)?;
        vips.insert(vip_key(KATRAN_VIP6.octets()), [0, 2], 0)?;
    }
    {
        // Ring of VIP n: slots 2n and 2n+1.
        let mut rings: Array<_, u32> =
            Array::try_from(katran.map_mut("ch_rings").context("ch_rings")?)?;
        for (slot, real) in [(2, 1), (3, 1), (4, 2), (5, 2)] {
            rings.set(slot, real, 0)?;
        }
    }
    {
        // struct real_definition { be32 dst[4]; u8 flags; } (20 bytes); flag 1: IPv6 real.
        let mut reals: Array<_, [u8; 20]> =
            Array::try_from(katran.map_mut("reals").context("reals")?)?;
        let mut v4_real = [0u8; 20];
        v4_real[..4].copy_from_slice(&KATRAN_REAL4.octets());
        let mut v6_real = [0u8; 20];
        v6_real[..16].copy_from_slice(&KATRAN_REAL6.octets());
        v6_real[16] = 1;
        reals.set(1, v4_real, 0)?;
        reals.set(2, v6_real, 0)?;
    }
    let mut ctl: Array<_, [u8; 8]> =
        Array::try_from(katran.map_mut("ctl_array").context("ctl_array")?)?;
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&NEXT_HOP_MAC);
    ctl.set(0, mac, 0)?;
    Ok(())
}

const KATRAN_VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const KATRAN_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);
const KATRAN_REAL4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const KATRAN_REAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);

fn katran_packets() -> Result<(Vec<u8>, Vec<u8>)> {
    let mut v4 = Vec::new();
    etherparse::PacketBuilder::ethernet2(packet::CLIENT_MAC, packet::ROUTER_MAC)
        .ipv4([0; 4], KATRAN_VIP4.octets(), 64)
        .tcp(0, 0, 1, 65535)
        .write(&mut v4, &PAYLOAD)?;
    let mut v6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(packet::CLIENT_MAC, packet::ROUTER_MAC)
        .ipv6([0; 16], KATRAN_VIP6.octets(), 64)
        .tcp(0, 0, 1, 65535)
        .write(&mut v6, &PAYLOAD)?;
    Ok((v4, v6))
}

/// Loads `programs` (XDP) and `tc_programs` (TC) from the object at `path`.
fn load_object(path: &Path, programs: &[&str], tc_programs: &[&str]) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load_file(path)
        .with_context(|| format!("loading {}", path.display()))?;
    for name in programs {
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{} has no program {name}", path.display()))?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("verifying {name} from {}", path.display()))?;
    }
    for name in tc_programs {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{} has no program {name}", path.display()))?
            .try_into()?;
        tc.load()
            .with_context(|| format!("verifying {name} from {}", path.display()))?;
    }
    Ok(ebpf)
}

#[expect(clippy::too_many_lines, reason = "one table of arms")]
fn arms(settings: &Settings, dut: &Dut, katran: &(Vec<u8>, Vec<u8>)) -> Vec<Arm> {
    let udp6 = |dst: Ipv6Addr| Frame::ethernet().ipv6_udp(CLIENT6, dst, (40_000, 443), &PAYLOAD);
    let udp4 = |dst: Ipv4Addr| Frame::ethernet().ipv4_udp(CLIENT4, dst, (40_000, 443), &PAYLOAD);
    let arm = |name: String, group, prog, family, ifindex, packets, expect| Arm {
        name,
        group,
        prog,
        family,
        ifindex,
        packets,
        expect,
    };
    let mut arms = vec![
        arm(
            "XDP no-op".into(),
            "baseline",
            Prog::Noop,
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(svc6(1))),
            XDP_PASS,
        ),
        arm(
            "Katran-like, IPv6".into(),
            "peer",
            Prog::KatranV6,
            "IPv6",
            dut.eth0,
            Packets::Fixed(katran.1.clone()),
            XDP_DROP,
        ),
        arm(
            "Katran-like, IPv4".into(),
            "peer",
            Prog::KatranV4,
            "IPv4",
            dut.eth0,
            Packets::Fixed(katran.0.clone()),
            XDP_DROP,
        ),
        arm(
            "parse only (no service: pass)".into(),
            "parse",
            Prog::Steer(0),
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 9))),
            XDP_PASS,
        ),
    ];
    arms.push(arm(
        "steer, IPv6 inner, 1 SID, next hop by bpf_fib_lookup".into(),
        "steer",
        Prog::Steer(0),
        "IPv6",
        dut.eth0,
        Packets::Fixed(udp6(FIB_SVC)),
        XDP_REDIRECT,
    ));
    for (i, (label, _, _)) in encaps().into_iter().enumerate() {
        let node = u16::try_from(i + 1).expect("few encaps");
        arms.push(arm(
            format!("steer, IPv6 inner, {label}"),
            "steer",
            Prog::Steer(0),
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(svc6(node))),
            XDP_REDIRECT,
        ));
        arms.push(arm(
            format!("steer, IPv4 inner, {label}"),
            "steer",
            Prog::Steer(0),
            "IPv4",
            dut.eth0,
            Packets::Fixed(udp4(svc4(u8::try_from(node).expect("few")))),
            XDP_REDIRECT,
        ));
    }
    // The TC program on the same packets as XDP's "1 SID" arms.
    let one_sid = encaps()
        .iter()
        .position(|(label, _, _)| label == "1 SID")
        .map_or(1, |i| i + 1);
    let one_sid = u16::try_from(one_sid).expect("few encaps");
    arms.extend([
        arm(
            "TC no-op".into(),
            "baseline",
            Prog::TcNoop,
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(svc6(1))),
            TC_ACT_OK,
        ),
        arm(
            "TC: parse only (no service: pass)".into(),
            "parse",
            Prog::SteerTc,
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 9))),
            TC_ACT_OK,
        ),
        arm(
            "TC: steer, IPv6 inner, 1 SID".into(),
            "steer",
            Prog::SteerTc,
            "IPv6",
            dut.eth0,
            Packets::Fixed(udp6(svc6(one_sid))),
            TC_ACT_REDIRECT,
        ),
        arm(
            "TC: steer, IPv4 inner, 1 SID".into(),
            "steer",
            Prog::SteerTc,
            "IPv4",
            dut.eth0,
            Packets::Fixed(udp4(svc4(u8::try_from(one_sid).expect("few")))),
            TC_ACT_REDIRECT,
        ),
    ]);
    let template = Frame::ethernet().ipv6_udp(flow_src(0), AFFINITY_SVC, FLOW_PORTS, &PAYLOAD);
    for (table, &n) in settings.flow_counts.iter().enumerate() {
        let flows = flow_count_label(n);
        arms.push(arm(
            format!("affinity hit, {flows} in table"),
            "affinity",
            Prog::Steer(table),
            "IPv6",
            dut.eth0,
            Packets::Hit {
                template: template.clone(),
                n,
            },
            XDP_REDIRECT,
        ));
        arms.push(arm(
            format!("affinity miss, {flows} in table"),
            "affinity",
            Prog::Steer(table),
            "IPv6",
            dut.eth0,
            Packets::Miss {
                template: template.clone(),
                first: 0x4000_0000,
            },
            XDP_REDIRECT,
        ));
    }
    arms.push(arm(
        "floor: kernel LRU hash, lookup + insert alone".into(),
        "floor",
        Prog::FlowInsert,
        "IPv6",
        dut.eth0,
        Packets::Miss {
            template: template.clone(),
            first: 0x4000_0000,
        },
        XDP_DROP,
    ));
    let inner6 = {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv6(svc6(1).octets(), CLIENT6.octets(), 63)
            .udp(443, 40_000)
            .write(&mut v, &PAYLOAD)
            .expect("writing to a Vec");
        v
    };
    let inner4 = {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(svc4(1).octets(), CLIENT4.octets(), 63)
            .udp(443, 40_000)
            .write(&mut v, &PAYLOAD)
            .expect("writing to a Vec");
        v
    };
    for (label, sid, inner, family) in [
        ("End.DT6", DT6, inner6, "IPv6"),
        ("End.DT4", DT4, inner4, "IPv4"),
    ] {
        let encap = Encap {
            src: ENCAP_SRC,
            segments: &[sid],
            reduced: false,
            traffic_class: 0,
            flow_label: 0x12345,
            hop_limit: 61,
        };
        arms.push(arm(
            format!("endpoint decap, {label} (SRH, 1 SID)"),
            "endpoint",
            Prog::Endpoint,
            family,
            dut.eth1,
            Packets::Fixed(packet::srv6_encap(CORE_MAC, NEXT_HOP_MAC, &encap, &inner)),
            XDP_REDIRECT,
        ));
    }
    arms
}

fn flow_count_label(n: u32) -> String {
    match n {
        1 => "1 flow".to_owned(),
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M flows", n / 1_000_000),
        n if n >= 1000 && n.is_multiple_of(1000) => format!("{}k flows", n / 1000),
        n => format!("{n} flows"),
    }
}

/// One call: the kernel's duration in ns and the verdict.
fn run_once(
    program: &Runnable<'_>,
    input: &[u8],
    ctx: &[u8],
    out: &mut [u8],
) -> Result<(u64, u32, usize)> {
    let result = program.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(out),
        ctx_in: Some(ctx),
        ..TestRunOptions::default()
    })?;
    Ok((
        u64::try_from(result.duration.as_nanos())?,
        result.return_value,
        usize::try_from(result.data_size_out)?,
    ))
}

/// The context of one run of `prog` on a `len`-byte frame arriving on `ifindex`.
fn context(prog: Prog, ifindex: u32, len: usize) -> Vec<u8> {
    if prog.is_tc() {
        // struct __sk_buff with only `ifindex` (offset 40) set: the kernel gives the socket
        // buffer that device.
        let mut skb = vec![0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        skb
    } else {
        xdp_md(ifindex, len)
    }
}

fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    [
        0,
        u32::try_from(len).expect("small frame"),
        0,
        ifindex,
        0,
        0,
    ]
    .iter()
    .flat_map(|v| v.to_ne_bytes())
    .collect()
}

/// Runs one batch of `arm`; returns the batch median ns.
#[expect(clippy::cast_precision_loss, reason = "ns per call fit f64 exactly")]
fn batch(
    loaded: &Loaded,
    arm: &Arm,
    size: usize,
    cursor: &mut u32,
    scratch: &mut (Vec<u8>, Vec<u8>),
) -> Result<f64> {
    let program = loaded.program(arm.prog)?;
    let mut times = Vec::with_capacity(size);
    let (frame, out) = scratch;
    let mut misses = Vec::new();
    for _ in 0..size {
        let input: &[u8] = match &arm.packets {
            Packets::Fixed(bytes) => bytes,
            Packets::Hit { template, n } => {
                // A stride coprime to n scatters consecutive packets over the table.
                let i = u32::try_from(u64::from(*cursor) * 2_654_435_761 % u64::from(*n))?;
                *cursor = cursor.wrapping_add(1);
                with_flow(template, i, frame);
                frame
            }
            Packets::Miss { template, first } => {
                let i = first + *cursor;
                *cursor = cursor.wrapping_add(1);
                misses.push(i);
                with_flow(template, i, frame);
                frame
            }
        };
        out.resize(input.len() + HEADROOM, 0);
        let ctx = context(arm.prog, arm.ifindex, input.len());
        let (ns, verdict, _) = run_once(&program, input, &ctx, out)?;
        ensure!(
            verdict == arm.expect,
            "{}: verdict {verdict}, expected {}",
            arm.name,
            arm.expect
        );
        times.push(ns as f64);
    }
    if !misses.is_empty() {
        match arm.prog {
            Prog::Steer(table) => {
                let mut flows = flow_table(&loaded.planes[table])?;
                for i in misses {
                    flows.remove(&flow_key(i))?;
                }
            }
            Prog::FlowInsert => {
                let mut flows = floor_table(loaded.xdp(Prog::FlowInsert)?)?;
                for i in misses {
                    flows.remove(&floor_key(&flow_src(i)))?;
                }
            }
            _ => {}
        }
    }
    Ok(crate::stats::median(&mut times))
}

fn program_size(name: &str, program: &Runnable<'_>) -> Result<ProgramSize> {
    let info = program.info()?;
    Ok(ProgramSize {
        program: name.to_owned(),
        xlated_insns: info.size_translated().map(|b| b / 8),
        jited_bytes: info.size_jitted().into(),
        verified_insns: info.verified_instruction_count(),
    })
}

/// The size of every measured program, as the kernel reports it.
fn program_sizes(loaded: &Loaded) -> Result<Vec<ProgramSize>> {
    let mut programs = vec![
        program_size("xdp_noop", &loaded.program(Prog::Noop)?)?,
        program_size("tc_noop", &loaded.program(Prog::TcNoop)?)?,
        program_size(
            "katran-like balancer_ingress_v4",
            &loaded.program(Prog::KatranV4)?,
        )?,
        program_size(
            "katran-like balancer_ingress_v6",
            &loaded.program(Prog::KatranV6)?,
        )?,
    ];
    for program in Program::ALL {
        let (xlated, verified) = loaded.planes[0].verified_size(program)?;
        let jited = loaded.planes[0].program(program)?.info()?.size_jitted();
        programs.push(ProgramSize {
            program: program.name().to_owned(),
            xlated_insns: xlated,
            jited_bytes: Some(jited),
            verified_insns: verified,
        });
    }
    programs.push(program_size(
        Hook::TcIngress.program(),
        &loaded.program(Prog::SteerTc)?,
    )?);
    Ok(programs)
}

/// Runs part 1 inside a fresh fixture namespace.
pub fn run(settings: &Settings, peers: &Peers) -> Result<PerPacket> {
    let dut = Dut::new()?;
    let _inside = dut.enter()?;
    let noop = load_object(
        &peers.baselines,
        &["xdp_noop", "xdp_flow_insert"],
        &["tc_noop"],
    )?;
    let mut katran = load_object(
        &peers.katran,
        &["balancer_ingress_v4", "balancer_ingress_v6"],
        &[],
    )?;
    configure_katran(&mut katran)?;
    let mut planes = Vec::new();
    let mut residency = Vec::new();
    for &n in &settings.flow_counts {
        let started = Instant::now();
        let mut dp = Dataplane::load_with(
            &Pinning::Unpinned,
            &cpn_agent::dataplane::LoadOptions {
                flows: FLOW_TABLE,
                ..Default::default()
            },
        )
        .context("loading cpn's data plane (build it with `cargo xtask build-ebpf`)")?;
        configure(&mut dp)?;
        if planes.is_empty() {
            dp.load_tc(Hook::TcIngress)?;
        }
        let resident = fill_flows(&dp, n)?;
        eprintln!(
            "bench: data plane with {n} flows ready in {:.1} s ({:.1}% of sampled flows resident)",
            started.elapsed().as_secs_f64(),
            resident * 100.0
        );
        residency.push((n, resident));
        planes.push(dp);
    }
    let loaded = Loaded {
        noop,
        katran,
        planes,
    };
    let katran_packets = katran_packets()?;
    let arms = arms(settings, &dut, &katran_packets);
    check_outputs(&loaded, &arms)?;

    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut amortized_rounds: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut cursors = vec![0u32; arms.len()];
    let mut scratch = (Vec::new(), Vec::new());
    let started = Instant::now();
    for round in 0..settings.rounds {
        for k in 0..arms.len() {
            let a = (k + round) % arms.len();
            let median = batch(
                &loaded,
                &arms[a],
                settings.batch,
                &mut cursors[a],
                &mut scratch,
            )?;
            per_round[a].push(median);
            if amortizable(&arms[a]) {
                amortized_rounds[a].push(amortized_once(&loaded, &arms[a])?);
            }
        }
    }
    eprintln!(
        "bench: {} arms × {} rounds × {} packets in {:.1} s",
        arms.len(),
        settings.rounds,
        settings.batch,
        started.elapsed().as_secs_f64()
    );
    let amortized = amortized(&arms, &per_round, &amortized_rounds)?;
    let results = summarize(&arms, &per_round, &loaded)?;
    let programs = program_sizes(&loaded)?;
    Ok(PerPacket {
        method: METHOD,
        rounds: settings.rounds,
        batch: settings.batch,
        katran_source: peers.katran_source.clone(),
        arms: results,
        amortized,
        programs,
        flow_table_residency: residency,
    })
}

/// Before timing anything: every arm gives its verdict, and the outputs are what the arm
/// claims (an encapsulation of the right size, the Katran-like program's real in front).
fn check_outputs(loaded: &Loaded, arms: &[Arm]) -> Result<()> {
    let mut frame = Vec::new();
    for arm in arms {
        let input: &[u8] = match &arm.packets {
            Packets::Fixed(bytes) => bytes,
            Packets::Hit { template, .. } => {
                with_flow(template, 0, &mut frame);
                &frame
            }
            Packets::Miss { template, first } => {
                with_flow(template, first - 1, &mut frame);
                &frame
            }
        };
        let mut out = vec![0u8; input.len() + HEADROOM];
        let ctx = context(arm.prog, arm.ifindex, input.len());
        let (_, verdict, len) = run_once(&loaded.program(arm.prog)?, input, &ctx, &mut out)?;
        ensure!(
            verdict == arm.expect,
            "{}: verdict {verdict}, expected {}",
            arm.name,
            arm.expect
        );
        out.truncate(len);
        match arm.prog {
            Prog::KatranV4 => ensure!(
                out[..4] == KATRAN_REAL4.octets() && len == input.len(),
                "Katran-like IPv4 did not pick its real"
            ),
            Prog::KatranV6 => ensure!(
                out[..4] == KATRAN_REAL6.octets()[..4] && len == input.len() + 40,
                "Katran-like IPv6 did not encapsulate towards its real"
            ),
            Prog::Steer(_) | Prog::SteerTc
                if arm.expect == XDP_REDIRECT || arm.expect == TC_ACT_REDIRECT =>
            {
                ensure!(len > input.len(), "{}: nothing was pushed", arm.name);
                cpn_tests::packet::verify(&out)
                    .map_err(|e| anyhow::anyhow!("{}: output does not decode: {e}", arm.name))?;
            }
            Prog::Endpoint => ensure!(len < input.len(), "{}: nothing was removed", arm.name),
            _ => {}
        }
    }
    // The miss arms' probe flow went in; take it out again.
    for plane in &loaded.planes {
        let _ = flow_table(plane)?.remove(&flow_key(0x4000_0000 - 1));
    }
    let _ =
        floor_table(loaded.xdp(Prog::FlowInsert)?)?.remove(&floor_key(&flow_src(0x4000_0000 - 1)));
    Ok(())
}

/// Runs per call of the `repeat` > 1 cross-check.
const AMORTIZED_REPEAT: u32 = 1000;

/// The arms whose packet the program leaves as it is: they may run with `repeat` > 1.
fn amortizable(arm: &Arm) -> bool {
    matches!(arm.group, "baseline" | "parse") && matches!(arm.packets, Packets::Fixed(_))
}

/// One call of `arm` with [`AMORTIZED_REPEAT`] runs: ns per run.
#[expect(clippy::cast_precision_loss, reason = "ns fit f64")]
fn amortized_once(loaded: &Loaded, arm: &Arm) -> Result<f64> {
    let Packets::Fixed(input) = &arm.packets else {
        bail!("{} changes its packets", arm.name);
    };
    let ctx = context(arm.prog, arm.ifindex, input.len());
    let mut out = vec![0u8; input.len() + HEADROOM];
    let result = loaded.program(arm.prog)?.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat: AMORTIZED_REPEAT,
        ..TestRunOptions::default()
    })?;
    Ok(result.duration.as_nanos() as f64)
}

fn amortized(
    arms: &[Arm],
    per_round: &[Vec<f64>],
    amortized_rounds: &[Vec<f64>],
) -> Result<Vec<Amortized>> {
    let noop = |tc: bool| {
        arms.iter()
            .position(|a| matches!(a.prog, Prog::Noop | Prog::TcNoop) && a.prog.is_tc() == tc)
            .context("no no-op arm")
    };
    let (noop, tc_noop) = (noop(false)?, noop(true)?);
    Ok(arms
        .iter()
        .enumerate()
        .filter(|(_, arm)| amortizable(arm))
        .map(|(i, arm)| {
            let noop = if arm.prog.is_tc() { tc_noop } else { noop };
            let net: Vec<f64> = per_round[i]
                .iter()
                .zip(&per_round[noop])
                .map(|(x, y)| x - y)
                .collect();
            let ratio: Vec<f64> = net
                .iter()
                .zip(&amortized_rounds[i])
                .map(|(n, a)| n / a)
                .collect();
            Amortized {
                name: arm.name.clone(),
                repeat: AMORTIZED_REPEAT,
                ns: Spread::of(&amortized_rounds[i]),
                net_repeat_1_ns: Spread::of(&net),
                ratio: Spread::of(&ratio),
            }
        })
        .collect())
}

fn summarize(arms: &[Arm], per_round: &[Vec<f64>], loaded: &Loaded) -> Result<Vec<ArmResult>> {
    let index = |prog: fn(&Prog) -> bool| {
        arms.iter()
            .position(|a| prog(&a.prog))
            .context("baseline arm missing")
    };
    let noop = index(|p| matches!(p, Prog::Noop))?;
    let tc_noop = index(|p| matches!(p, Prog::TcNoop))?;
    let katran6 = index(|p| matches!(p, Prog::KatranV6))?;
    let katran4 = index(|p| matches!(p, Prog::KatranV4))?;
    let pairwise = |a: &[f64], b: &[f64], f: fn(f64, f64) -> f64| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    };
    let mut results = Vec::new();
    for (i, arm) in arms.iter().enumerate() {
        let mine = &per_round[i];
        let base = &per_round[if arm.prog.is_tc() { tc_noop } else { noop }];
        let peer = &per_round[if arm.family == "IPv4" {
            katran4
        } else {
            katran6
        }];
        let net: Vec<f64> = pairwise(mine, base, |x, y| x - y);
        // The peer is XDP: its net cost is taken from the XDP no-op.
        let peer_net: Vec<f64> = pairwise(peer, &per_round[noop], |x, y| x - y);
        let frame_bytes = match &arm.packets {
            Packets::Fixed(b) => b.len(),
            Packets::Hit { template, .. } | Packets::Miss { template, .. } => template.len(),
        };
        results.push(ArmResult {
            name: arm.name.clone(),
            group: arm.group,
            program: match arm.prog {
                Prog::Noop => "xdp_noop".to_owned(),
                Prog::TcNoop => "tc_noop".to_owned(),
                Prog::FlowInsert => "xdp_flow_insert".to_owned(),
                Prog::KatranV4 => "balancer_ingress_v4".to_owned(),
                Prog::KatranV6 => "balancer_ingress_v6".to_owned(),
                p => loaded
                    .program(p)?
                    .info()?
                    .name_as_str()
                    .unwrap_or("?")
                    .to_owned(),
            },
            family: arm.family,
            frame_bytes,
            verdict: match (arm.prog.is_tc(), arm.expect) {
                (false, XDP_DROP) => "drop",
                (false, XDP_PASS) | (true, TC_ACT_OK) => "pass",
                (false, XDP_REDIRECT) | (true, TC_ACT_REDIRECT) => "redirect",
                _ => "other",
            },
            ns: Spread::of(mine),
            net_ns: Spread::of(&net),
            vs_noop: Spread::of(&pairwise(mine, base, |x, y| x / y)),
            vs_katran: Spread::of(&pairwise(mine, peer, |x, y| x / y)),
            net_vs_katran: Spread::of(&pairwise(&net, &peer_net, |x, y| x / y)),
        });
    }
    Ok(results)
}
