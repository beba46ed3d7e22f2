//! Part 2: packets per second through a veth path, one generator and one sink for every arm.
//!
//! ```text
//!   [gen] g0 ──veth── d0 [dut] d1 ──veth── s1 [sink]
//!   xdp_gen, live     XDP on d0:            xdp_sink: count, drop
//!   frames (IPv6/UDP, plain, seg6: xdp_noop (pass to the kernel)
//!   one thread)       cpn:         cpn_steer (encap + redirect to d1)
//! ```
//!
//! - plain: the kernel forwards to a sink-side prefix;
//! - seg6: the kernel's `encap seg6 mode encap` route (outer IPv6 + SRH with one SID);
//! - cpn: `cpn_steer` pushes the same encapsulation and redirects.
//!
//! The generator's frames reach the dut through veth's XDP path, so d0 always has an XDP
//! program (the no-op for the kernel's arms). Arms take turns in rounds; each window counts
//! the frames reaching the sink, and the CPU time all cores spent (from /proc/stat), so a
//! rate per busy core can be given as well.

use std::{
    net::Ipv6Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use cpn_agent::dataplane::{
    AttachMode, Dataplane, Node, NodeState, Pinning, Program, ServiceAddr, ServiceConfig,
};
use cpn_tests::lab::Lab;
use serde::Serialize;

use crate::stats::Spread;

const GEN_MAC: &str = "02:00:00:00:0a:01";
const D0_MAC: &str = "02:00:00:00:0a:02";
const D1_MAC: &str = "02:00:00:00:0b:01";
const SINK_MAC: &str = "02:00:00:00:0b:02";
const GEN_ADDR: &str = "2001:db8:a::1";
/// A prefix behind the sink (plain forwarding).
const PLAIN_DST: &str = "2001:db8:100::1";
/// The service address (kernel seg6 route and cpn service).
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
const SID: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0xd6);
const ENCAP_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

#[derive(Clone, Debug)]
pub struct Settings {
    pub rounds: usize,
    pub window: Duration,
}

#[derive(Debug, Serialize)]
pub struct ThroughputArm {
    pub name: String,
    /// Millions of frames per second reaching the sink.
    pub mpps: Spread,
    /// Per round: this arm's rate / plain forwarding's.
    pub vs_plain: Spread,
    /// Frames reaching the sink per frame the generator sent.
    pub delivered: Spread,
    /// Millions of frames per second per busy core (all CPU time, generator included).
    pub mpps_per_busy_core: Spread,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub method: String,
    pub rounds: usize,
    pub window_s: f64,
    pub arms: Vec<ThroughputArm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Plain,
    Seg6,
    Cpn,
}

impl Arm {
    const ALL: [Self; 3] = [Self::Plain, Self::Seg6, Self::Cpn];

    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain IPv6 forwarding (kernel)",
            Self::Seg6 => "kernel `encap seg6` route (SRH, 1 SID)",
            Self::Cpn => "cpn_steer (SRH, 1 SID, XDP redirect)",
        }
    }

    fn destination(self) -> String {
        match self {
            Self::Plain => PLAIN_DST.to_owned(),
            Self::Seg6 | Self::Cpn => VIP.to_string(),
        }
    }
}

fn build_lab() -> Result<Lab> {
    let lab = Lab::builder("bench-veth")
        .node("gen")
        .node("dut")
        .node("sink")
        .link(("gen", "g0"), ("dut", "d0"))
        .link(("dut", "d1"), ("sink", "s1"))
        .build()?;
    let (generator, dut, sink) = (lab.node("gen")?, lab.node("dut")?, lab.node("sink")?);
    generator.ip(&format!("link set g0 address {GEN_MAC}"))?;
    dut.ip(&format!("link set d0 address {D0_MAC}"))?;
    dut.ip(&format!("link set d1 address {D1_MAC}"))?;
    sink.ip(&format!("link set s1 address {SINK_MAC}"))?;
    generator.add_address("g0", &format!("{GEN_ADDR}/64"))?;
    dut.add_address("d0", "2001:db8:a::2/64")?;
    dut.add_address("d1", "2001:db8:b::1/64")?;
    sink.add_address("s1", "2001:db8:b::2/64")?;
    dut.enable_forwarding()?;
    dut.ip(&format!(
        "-6 neigh replace 2001:db8:b::2 lladdr {SINK_MAC} nud permanent dev d1"
    ))?;
    dut.add_route(&["2001:db8:100::/48", "via", "2001:db8:b::2", "dev", "d1"])?;
    dut.add_route(&["fc00::/16", "via", "2001:db8:b::2", "dev", "d1"])?;
    dut.ip(&format!(
        "-6 route add {VIP}/128 encap seg6 mode encap segs {SID} dev d1"
    ))?;
    Ok(lab)
}

fn load(path: &Path) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new().load_file(path)?;
    for name in ["xdp_noop", "xdp_sink"] {
        let xdp: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
        xdp.load()?;
    }
    Ok(ebpf)
}

fn sink_count(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("sink_packets").context("sink_packets")?)?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// Busy jiffies of all CPUs (everything but idle and iowait).
fn busy_jiffies() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() >= 5, "unexpected /proc/stat: {cpu}");
    Ok(fields.iter().sum::<u64>() - fields[3] - fields[4])
}

/// Ethernet + IPv6 + UDP: what `xdp_gen` rewrites on every run (`GEN_HEADERS` in baselines.c).
const GEN_HEADERS: usize = 62;
/// Frames per generator call; the stop flag is looked at between calls.
const GENERATOR_REPEAT: u32 = 1 << 16;

/// Sends `frame` out of `g0` with `xdp_gen` in live-frames mode until `stop` is set; returns
/// how many frames it sent. Runs on its own thread, created inside the generator's namespace.
fn generate(object: &Path, g0: u32, frame: &[u8], stop: &AtomicBool) -> Result<u64> {
    let headers: [u8; GEN_HEADERS] = frame
        .get(..GEN_HEADERS)
        .and_then(|h| h.try_into().ok())
        .context("the generator's frame is shorter than its headers")?;
    let mut ebpf = EbpfLoader::new()
        .override_global("gen_ifindex", &g0, true)
        .override_global("gen_headers", &headers, true)
        .load_file(object)?;
    let xdp: &mut Xdp = ebpf.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
    xdp.load()?;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: GENERATOR_REPEAT,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN in live-frames mode (kernel 5.18 or later)")?;
        sent += u64::from(GENERATOR_REPEAT);
    }
    Ok(sent)
}

/// The generator's frame: IPv6/UDP, 18 bytes of payload (a 80-byte frame), to `destination`.
fn frame(destination: Ipv6Addr) -> Result<Vec<u8>> {
    let mac = |text: &str| -> Result<[u8; 6]> {
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
    };
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(GEN_MAC)?, mac(D0_MAC)?)
        .ipv6(
            GEN_ADDR.parse::<Ipv6Addr>()?.octets(),
            destination.octets(),
            64,
        )
        .udp(40_000, 443)
        .write(&mut out, &[0x5a; 18])?;
    Ok(out)
}

/// One window of one arm: (sink frames/s, sink/sent, frames/s per busy core).
#[expect(clippy::cast_precision_loss, reason = "counts fit f64")]
fn window(
    lab: &Lab,
    sink: &Ebpf,
    object: &Path,
    arm: Arm,
    length: Duration,
) -> Result<(f64, f64, f64)> {
    let frame = frame(arm.destination().parse()?)?;
    let generator = lab.node("gen")?;
    let g0 = generator.ifindex("g0")?;
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        // A thread starts in the namespace of the thread that creates it.
        let _inside = generator.enter()?;
        let (object, stop) = (object.to_path_buf(), Arc::clone(&stop));
        std::thread::spawn(move || generate(&object, g0, &frame, &stop))
    };
    // Let it reach its pace.
    std::thread::sleep(Duration::from_millis(300));
    let (sink0, busy0) = (sink_count(sink)?, busy_jiffies()?);
    let started = Instant::now();
    std::thread::sleep(length);
    let (sink1, busy1) = (sink_count(sink)?, busy_jiffies()?);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent_total = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
    let frames = (sink1 - sink0) as f64;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy_cores = (busy1 - busy0) as f64 / hz / elapsed;
    ensure!(frames > 0.0, "{}: no frame reached the sink", arm.name());
    let total = sink_count(sink)? - sink0;
    Ok((
        frames / elapsed,
        total as f64 / sent_total as f64,
        frames / elapsed / busy_cores.max(1e-9),
    ))
}

/// cpn's data plane with one service (the VIP) to one node (the SID, with an SRH), its next
/// hop cached.
fn steer_dataplane() -> Result<Dataplane> {
    let mut dataplane = Dataplane::load(&Pinning::Unpinned)?;
    dataplane.set_node(
        1,
        &Node {
            segments: vec![SID],
            encap_src: ENCAP_SRC,
            reduced: false,
            state: NodeState::Active,
        },
    )?;
    dataplane.set_service(
        &ServiceAddr {
            addr: VIP.into(),
            port: None,
        },
        &ServiceConfig {
            id: 0,
            affinity: None,
        },
    )?;
    dataplane.publish_ring(0, &[1])?;
    // The next hop cached as the agent caches it (this thread is in the dut namespace).
    let next_hop = cpn_agent::dataplane::resolver::resolve_now(SID)?
        .map_err(|why| anyhow::anyhow!("the next hop of {SID} is not cacheable: {why}"))?;
    dataplane.set_nexthop(1, Some(next_hop))?;
    Ok(dataplane)
}

pub fn run(settings: &Settings, object: &Path) -> Result<Throughput> {
    let lab = build_lab()?;
    let sink = {
        let _inside = lab.node("sink")?.enter()?;
        let mut sink = load(object)?;
        let xdp: &mut Xdp = sink
            .program_mut("xdp_sink")
            .context("xdp_sink")?
            .try_into()?;
        xdp.attach("s1", XdpMode::Driver)
            .context("attaching the sink to s1")?;
        sink
    };
    let dut = lab.node("dut")?;
    let inside = dut.enter()?;
    let mut noop = load(object)?;
    let mut dataplane = steer_dataplane()?;
    drop(inside);

    let mut samples: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); Arm::ALL.len()];
    for round in 0..settings.rounds {
        for k in 0..Arm::ALL.len() {
            let index = (k + round) % Arm::ALL.len();
            let arm = Arm::ALL[index];
            let inside = lab.node("dut")?.enter()?;
            let noop_link = if arm == Arm::Cpn {
                dataplane.attach(Program::Steer, "d0", AttachMode::Native)?;
                None
            } else {
                let xdp: &mut Xdp = noop
                    .program_mut("xdp_noop")
                    .context("xdp_noop")?
                    .try_into()?;
                Some(xdp.attach("d0", XdpMode::Driver)?)
            };
            drop(inside);
            let result = window(&lab, &sink, object, arm, settings.window);
            let _inside = lab.node("dut")?.enter()?;
            if let Some(link) = noop_link {
                let xdp: &mut Xdp = noop
                    .program_mut("xdp_noop")
                    .context("xdp_noop")?
                    .try_into()?;
                xdp.detach(link)?;
            } else {
                dataplane.detach_all()?;
            }
            samples[index].push(result?);
        }
    }
    let plain: Vec<f64> = samples[0].iter().map(|s| s.0).collect();
    let arms = Arm::ALL
        .iter()
        .zip(&samples)
        .map(|(arm, s)| ThroughputArm {
            name: arm.name().to_owned(),
            mpps: Spread::of(&s.iter().map(|x| x.0 / 1e6).collect::<Vec<_>>()),
            vs_plain: Spread::of(
                &s.iter()
                    .zip(&plain)
                    .map(|(x, p)| x.0 / p)
                    .collect::<Vec<_>>(),
            ),
            delivered: Spread::of(&s.iter().map(|x| x.1).collect::<Vec<_>>()),
            mpps_per_busy_core: Spread::of(&s.iter().map(|x| x.2 / 1e6).collect::<Vec<_>>()),
        })
        .collect();
    Ok(Throughput {
        method: format!(
            "gen ─veth─ dut ─veth─ sink, three namespaces. One generator thread (our xdp_gen \
             run by BPF_PROG_TEST_RUN in live-frames mode, as xdp-trafficgen does; 1 flow of \
             IPv6/UDP, 80-byte frames) sends into the dut; XDP on the dut's \
             ingress veth is xdp_noop for the kernel's arms and cpn_steer for ours; the sink \
             counts and drops in XDP. {} rounds, arms in rotated order, {:.1} s windows after \
             0.3 s warm-up; ratio to plain forwarding per round.",
            settings.rounds,
            settings.window.as_secs_f64()
        ),
        rounds: settings.rounds,
        window_s: settings.window.as_secs_f64(),
        arms,
    })
}
