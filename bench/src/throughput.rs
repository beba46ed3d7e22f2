//! Part 2: packets per second through a veth path, one generator and one sink for every arm.
//!
//! ```text
//!   [gen] g0 ──veth── d0 [dut] d1 ──veth── s1 [sink]
//!   xdp_gen, live     XDP on d0:            xdp_sink: count, drop
//!   frames (IPv6/UDP, plain, seg6: xdp_noop (pass to the kernel)
//!   1 thread, or one  cpn:         cpn_steer (encap + redirect to d1)
//!   pinned per CPU)
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
//!
//! Two tables, the same arms: [`run`], one flow from one thread over single-queue veths; and
//! [`run_multi_queue`], several flows over veths with one queue per CPU. How veth picks a
//! receive queue decides what spreads there: a frame that XDP sends into a veth (the
//! generator's, `cpn_steer`'s redirect) lands in the peer's queue of the sending CPU (CPU number
//! modulo queues), a packet the kernel forwards in the queue its flow hash picked on the way
//! out. So the multi-queue table runs one generator thread pinned to each CPU, each with flows
//! of its own, and counts frames per queue (`ethtool -S`) and per CPU (the sink's map).

use std::{
    net::Ipv6Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use cpn_agent::dataplane::{
    AttachMode, Dataplane, Node, NodeState, Pinning, Program, ServiceAddr, ServiceConfig,
};
use cpn_tests::lab::{self, Lab};
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
/// The generator's first UDP source port; further flows take the ports after it.
const FIRST_PORT: u16 = 40_000;
/// Flows in the multi-queue table, split evenly among the generator threads.
const MULTI_QUEUE_FLOWS: u16 = 64;
/// A queue carries an arm's traffic if it took at least this share of the arm's frames.
const BUSY_QUEUE_SHARE: f64 = 0.05;
/// `XDP_REDIRECT`, what `xdp_gen` returns.
const XDP_REDIRECT: u32 = 4;

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

/// The single-flow table.
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub method: String,
    pub rounds: usize,
    pub window_s: f64,
    pub arms: Vec<ThroughputArm>,
}

/// The table with several flows over multi-queue veths.
#[derive(Debug, Serialize)]
pub struct MultiQueue {
    pub method: String,
    /// Transmit and receive queues of every veth end.
    pub queues: u32,
    /// Distinct UDP flows, split evenly among the generator threads.
    pub flows: u32,
    /// The CPU each generator thread was pinned to.
    pub generator_cpus: Vec<usize>,
    pub rounds: usize,
    pub window_s: f64,
    /// `ethtool -l` of every veth end, as "g0: RX 2, TX 2".
    pub channels: Vec<String>,
    /// Empty when the kernel refused the setup (see `limit`).
    pub arms: Vec<ThroughputArm>,
    /// Where each arm's frames went (same order as `arms`), summed over its windows.
    pub spread: Vec<LoadSpread>,
    /// Why this is not a multi-queue measurement, if it is not: what the kernel refused, or
    /// which arm's traffic stayed on one queue. The report then shows this instead of the
    /// table.
    pub limit: Option<String>,
}

/// Frame counts of one arm, over its windows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSpread {
    pub arm: String,
    /// Frames sent, per generator thread (in the order of `generator_cpus`; warm-up included).
    pub generator_sent: Vec<u64>,
    /// Frames per receive queue of the dut's ingress veth d0 (`ethtool -S`:
    /// `rx_queue_N_xdp_packets`, every frame its NAPI handled).
    pub dut_rx_queues: Vec<u64>,
    /// Frames per receive queue of the sink's veth s1 (the same counter).
    pub sink_rx_queues: Vec<u64>,
    /// Frames the sink counted, per CPU (its per-CPU map).
    pub sink_cpus: Vec<u64>,
}

impl LoadSpread {
    fn add(&mut self, other: &Self) {
        let sum = |into: &mut Vec<u64>, from: &[u64]| {
            if into.len() < from.len() {
                into.resize(from.len(), 0);
            }
            for (a, b) in into.iter_mut().zip(from) {
                *a += b;
            }
        };
        sum(&mut self.generator_sent, &other.generator_sent);
        sum(&mut self.dut_rx_queues, &other.dut_rx_queues);
        sum(&mut self.sink_rx_queues, &other.sink_rx_queues);
        sum(&mut self.sink_cpus, &other.sink_cpus);
    }
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

/// The veth ends, as (node, interface).
const VETH_ENDS: [(&str, &str); 4] = [("gen", "g0"), ("dut", "d0"), ("dut", "d1"), ("sink", "s1")];

/// The three namespaces; every veth end with `queues` queues, or veth's default (one).
fn build_lab(queues: Option<u32>) -> Result<Lab> {
    let builder = Lab::builder("bench-veth")
        .node("gen")
        .node("dut")
        .node("sink");
    let lab = match queues {
        None => builder
            .link(("gen", "g0"), ("dut", "d0"))
            .link(("dut", "d1"), ("sink", "s1")),
        Some(n) => builder
            .multi_queue_link(("gen", "g0"), ("dut", "d0"), n)
            .multi_queue_link(("dut", "d1"), ("sink", "s1"), n),
    }
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

/// The lab and the programs every window uses. Fields drop in order: the programs before the
/// lab's namespaces.
struct Bench {
    sink: Ebpf,
    noop: Ebpf,
    dataplane: Dataplane,
    lab: Lab,
}

impl Bench {
    /// Builds the lab, attaches the sink to s1 and loads the dut's programs.
    fn new(object: &Path, queues: Option<u32>) -> Result<Self> {
        let lab = build_lab(queues)?;
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
        let inside = lab.node("dut")?.enter()?;
        let noop = load(object)?;
        let dataplane = steer_dataplane()?;
        drop(inside);
        Ok(Self {
            sink,
            noop,
            dataplane,
            lab,
        })
    }

    /// Attaches the dut's program for `arm` to d0, runs `what`, detaches it again.
    fn with_arm<T>(&mut self, arm: Arm, what: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let inside = self.lab.node("dut")?.enter()?;
        let noop_link = if arm == Arm::Cpn {
            self.dataplane
                .attach(Program::Steer, "d0", AttachMode::Native)?;
            None
        } else {
            let xdp: &mut Xdp = self
                .noop
                .program_mut("xdp_noop")
                .context("xdp_noop")?
                .try_into()?;
            Some(xdp.attach("d0", XdpMode::Driver)?)
        };
        drop(inside);
        let result = what(self);
        let _inside = self.lab.node("dut")?.enter()?;
        if let Some(link) = noop_link {
            let xdp: &mut Xdp = self
                .noop
                .program_mut("xdp_noop")
                .context("xdp_noop")?
                .try_into()?;
            xdp.detach(link)?;
        } else {
            self.dataplane.detach_all()?;
        }
        result
    }

    /// Every arm in every round, in rotated order: the samples of each arm, in `Arm::ALL`'s
    /// order.
    fn measure(
        &mut self,
        settings: &Settings,
        object: &Path,
        traffic: &Traffic,
    ) -> Result<Vec<Vec<Sample>>> {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Arm::ALL.len()];
        for round in 0..settings.rounds {
            for k in 0..Arm::ALL.len() {
                let index = (k + round) % Arm::ALL.len();
                let arm = Arm::ALL[index];
                let sample = self.with_arm(arm, |bench| {
                    bench.window(object, arm, settings.window, traffic)
                })?;
                samples[index].push(sample);
            }
        }
        Ok(samples)
    }

    /// One window of one arm.
    #[expect(clippy::cast_precision_loss, reason = "counts fit f64")]
    fn window(
        &self,
        object: &Path,
        arm: Arm,
        length: Duration,
        traffic: &Traffic,
    ) -> Result<Sample> {
        let destination: Ipv6Addr = arm.destination().parse()?;
        let generator = self.lab.node("gen")?;
        let g0 = generator.ifindex("g0")?;
        let frames = traffic
            .generators
            .iter()
            .map(|g| frame(destination, g.first_port))
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<JoinHandle<Result<u64>>> = {
            // A thread starts in the namespace of the thread that creates it.
            let _inside = generator.enter()?;
            traffic
                .generators
                .iter()
                .zip(frames)
                .map(|(g, frame)| {
                    let (object, stop) = (object.to_path_buf(), Arc::clone(&stop));
                    let (cpu, flows) = (g.cpu, g.flows);
                    std::thread::spawn(move || generate(&object, g0, &frame, flows, cpu, &stop))
                })
                .collect()
        };
        // Whatever happens while measuring, the generators are stopped and joined.
        let measured = (|| -> Result<_> {
            // Let them reach their pace.
            std::thread::sleep(Duration::from_millis(300));
            let queues0 = traffic.count_queues.then(|| self.queues()).transpose()?;
            let (sink0, busy0) = (self.sink_per_cpu()?, busy_jiffies()?);
            let started = Instant::now();
            std::thread::sleep(length);
            let (sink1, busy1) = (self.sink_per_cpu()?, busy_jiffies()?);
            let elapsed = started.elapsed().as_secs_f64();
            let queues1 = traffic.count_queues.then(|| self.queues()).transpose()?;
            Ok((sink0, busy0, sink1, busy1, elapsed, queues0.zip(queues1)))
        })();
        stop.store(true, Ordering::Relaxed);
        let sent = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a generator thread panicked"))?
            })
            .collect::<Result<Vec<u64>>>()?;
        let (sink0, busy0, sink1, busy1, elapsed, queues) = measured?;
        let frames = (total(&sink1) - total(&sink0)) as f64;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy_cores = (busy1 - busy0) as f64 / hz / elapsed;
        ensure!(frames > 0.0, "{}: no frame reached the sink", arm.name());
        let counted = total(&self.sink_per_cpu()?) - total(&sink0);
        let spread = queues.map_or_else(LoadSpread::default, |(before, after)| LoadSpread {
            arm: arm.name().to_owned(),
            generator_sent: sent.clone(),
            dut_rx_queues: difference(&after.dut_rx, &before.dut_rx),
            sink_rx_queues: difference(&after.sink_rx, &before.sink_rx),
            sink_cpus: difference(&sink1, &sink0),
        });
        Ok(Sample {
            rate: frames / elapsed,
            delivered: counted as f64 / sent.iter().sum::<u64>() as f64,
            per_core: frames / elapsed / busy_cores.max(1e-9),
            spread,
        })
    }

    /// The sink's count, per CPU.
    fn sink_per_cpu(&self) -> Result<Vec<u64>> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.sink.map("sink_packets").context("sink_packets")?)?;
        Ok(map.get(&0, 0)?.iter().copied().collect())
    }

    fn queues(&self) -> Result<QueueCounts> {
        Ok(QueueCounts {
            dut_rx: rx_queue_packets(self.lab.node("dut")?, "d0")?,
            sink_rx: rx_queue_packets(self.lab.node("sink")?, "s1")?,
        })
    }
}

fn total(per_cpu: &[u64]) -> u64 {
    per_cpu.iter().sum()
}

fn difference(after: &[u64], before: &[u64]) -> Vec<u64> {
    after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect()
}

/// What the generator threads send.
struct Traffic {
    generators: Vec<Generator>,
    /// Read the per-queue counters around every window.
    count_queues: bool,
}

/// One generator thread.
struct Generator {
    /// The CPU it is pinned to (none: wherever the scheduler puts it).
    cpu: Option<usize>,
    first_port: u16,
    /// It cycles through the source ports `first_port..first_port + flows`.
    flows: u16,
}

/// One window of one arm: sink frames/s, sink/sent, frames/s per busy core, and where the
/// frames went (empty unless `Traffic::count_queues`).
#[derive(Clone, Debug)]
struct Sample {
    rate: f64,
    delivered: f64,
    per_core: f64,
    spread: LoadSpread,
}

/// `rx_queue_N_xdp_packets` of both veths at one instant.
struct QueueCounts {
    dut_rx: Vec<u64>,
    sink_rx: Vec<u64>,
}

/// Frames every receive queue of `interface` handled (veth's `ethtool -S` counter
/// `rx_queue_N_xdp_packets`, which counts every frame its NAPI took, XDP frame or skb).
fn rx_queue_packets(node: &lab::Node, interface: &str) -> Result<Vec<u64>> {
    let out = node.run(&["ethtool", "-S", interface])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let queues = parse_rx_queue_packets(&text);
    ensure!(
        !queues.is_empty(),
        "`ethtool -S {interface}` in {} shows no rx_queue_N_xdp_packets:\n{text}",
        node.name()
    );
    Ok(queues)
}

/// `rx_queue_N_xdp_packets: V` lines of `ethtool -S`, as V in the order of N.
fn parse_rx_queue_packets(text: &str) -> Vec<u64> {
    let mut queues: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            let queue = name
                .strip_prefix("rx_queue_")?
                .strip_suffix("_xdp_packets")?;
            Some((queue.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect();
    queues.sort_unstable();
    queues.into_iter().map(|(_, packets)| packets).collect()
}

/// `ethtool -l interface`'s current receive and transmit queues.
fn channels(node: &lab::Node, interface: &str) -> Result<(u32, u32)> {
    let out = node.run(&["ethtool", "-l", interface])?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_channels(&text).with_context(|| {
        format!("`ethtool -l {interface}` shows no current RX and TX queues:\n{text}")
    })
}

/// The RX and TX counts under "Current hardware settings:" of `ethtool -l`.
fn parse_channels(text: &str) -> Option<(u32, u32)> {
    let current = text.split("Current hardware settings:").nth(1)?;
    let field = |name: &str| -> Option<u32> {
        current
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("RX:")?, field("TX:")?))
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

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        set
    };
    let size = usize::try_from(libc::CPU_SETSIZE)?;
    // SAFETY: CPU_ISSET reads within the set for cpu < CPU_SETSIZE.
    Ok((0..size)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    ensure!(
        cpu < usize::try_from(libc::CPU_SETSIZE)?,
        "CPU {cpu} is out of range"
    );
    // SAFETY: an all-zero cpu_set_t is the empty set, CPU_SET writes within it (cpu <
    // CPU_SETSIZE), and sched_setaffinity(0, ..) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            bail!(
                "pinning a generator thread to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Blocks every signal on the calling thread. A live-frames test run stops with EINTR when a
/// signal is pending for its thread, and the kernel hands a process's signal to any thread not
/// blocking it: the SIGCHLD of an `ethtool` the main thread ran lands on a generator while the
/// main thread spawns the next one (glibc's `posix_spawn` blocks all signals meanwhile).
/// Blocked here, such signals wait for the main thread. Faults are delivered regardless.
fn block_signals() -> Result<()> {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes this thread's mask only.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut())
    };
    ensure!(
        rc == 0,
        "blocking signals on a generator thread: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    Ok(())
}

/// Ethernet + IPv6 + UDP: what `xdp_gen` rewrites on every run (`GEN_HEADERS` in baselines.c).
const GEN_HEADERS: usize = 62;
/// Frames per generator call; the stop flag is looked at between calls.
const GENERATOR_REPEAT: u32 = 1 << 16;

/// `xdp_gen` loaded to send `frame`'s headers out of `g0`, cycling through `flows` source
/// ports from the frame's own.
fn load_generator(object: &Path, g0: u32, frame: &[u8], flows: u16) -> Result<Ebpf> {
    let headers: [u8; GEN_HEADERS] = frame
        .get(..GEN_HEADERS)
        .and_then(|h| h.try_into().ok())
        .context("the generator's frame is shorter than its headers")?;
    let flows = u32::from(flows);
    let mut ebpf = EbpfLoader::new()
        .override_global("gen_ifindex", &g0, true)
        .override_global("gen_headers", &headers, true)
        .override_global("gen_flows", &flows, true)
        .load_file(object)?;
    let xdp: &mut Xdp = ebpf.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
    xdp.load()?;
    Ok(ebpf)
}

/// Sends `frame` out of `g0` with `xdp_gen` in live-frames mode until `stop` is set; returns
/// how many frames it sent. Runs on its own thread, created inside the generator's namespace,
/// pinned to `cpu` if given.
fn generate(
    object: &Path,
    g0: u32,
    frame: &[u8],
    flows: u16,
    cpu: Option<usize>,
    stop: &AtomicBool,
) -> Result<u64> {
    block_signals()?;
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let mut ebpf = load_generator(object, g0, frame, flows)?;
    let xdp: &mut Xdp = ebpf.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
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

/// Runs `xdp_gen` with `flows` flows (not live: the frames come back) on one pinned thread and
/// checks that run n carries source port `FIRST_PORT + n % flows` with a valid UDP checksum,
/// so that every frame of the multi-queue table is one the sink counts.
fn check_generator(object: &Path, cpu: usize, flows: u16) -> Result<()> {
    let object = object.to_path_buf();
    std::thread::spawn(move || -> Result<()> {
        pin_to(cpu)?;
        let frame = frame(VIP, FIRST_PORT)?;
        let mut ebpf = load_generator(&object, 1, &frame, flows)?;
        let xdp: &mut Xdp = ebpf.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
        for run in 0..2 * flows {
            let mut out = vec![0u8; frame.len() + 64];
            let result = xdp.test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })?;
            ensure!(
                result.return_value == XDP_REDIRECT,
                "xdp_gen returned {} instead of XDP_REDIRECT",
                result.return_value
            );
            out.truncate(usize::try_from(result.data_size_out)?);
            let packet = etherparse::SlicedPacket::from_ethernet(&out)
                .map_err(|e| anyhow::anyhow!("xdp_gen's frame {run} does not parse: {e}"))?;
            let (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Udp(udp))) =
                (&packet.net, &packet.transport)
            else {
                bail!("xdp_gen's frame {run} is not IPv6/UDP: {out:02x?}");
            };
            let want = FIRST_PORT + run % flows;
            ensure!(
                udp.source_port() == want,
                "xdp_gen's frame {run} has source port {}, not {want}",
                udp.source_port()
            );
            let checksum = udp.to_header().calc_checksum_ipv6_raw(
                ip.header().source(),
                ip.header().destination(),
                udp.payload(),
            )?;
            ensure!(
                udp.checksum() == checksum,
                "xdp_gen's frame {run} (port {want}) has UDP checksum {:#06x}, not {checksum:#06x}",
                udp.checksum()
            );
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the generator check panicked"))?
}

/// The generator's frame: IPv6/UDP from `source_port`, 18 bytes of payload (a 80-byte frame),
/// to `destination`.
fn frame(destination: Ipv6Addr, source_port: u16) -> Result<Vec<u8>> {
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
        .udp(source_port, 443)
        .write(&mut out, &[0x5a; 18])?;
    Ok(out)
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

/// The columns of a table: per arm, its samples summed up.
fn arms(samples: &[Vec<Sample>]) -> Vec<ThroughputArm> {
    let plain: Vec<f64> = samples[0].iter().map(|s| s.rate).collect();
    Arm::ALL
        .iter()
        .zip(samples)
        .map(|(arm, s)| ThroughputArm {
            name: arm.name().to_owned(),
            mpps: Spread::of(&s.iter().map(|x| x.rate / 1e6).collect::<Vec<_>>()),
            vs_plain: Spread::of(
                &s.iter()
                    .zip(&plain)
                    .map(|(x, p)| x.rate / p)
                    .collect::<Vec<_>>(),
            ),
            delivered: Spread::of(&s.iter().map(|x| x.delivered).collect::<Vec<_>>()),
            mpps_per_busy_core: Spread::of(&s.iter().map(|x| x.per_core / 1e6).collect::<Vec<_>>()),
        })
        .collect()
}

/// The single-flow table: one generator thread, single-queue veths.
pub fn run(settings: &Settings, object: &Path) -> Result<Throughput> {
    let mut bench = Bench::new(object, None)?;
    let traffic = Traffic {
        generators: vec![Generator {
            cpu: None,
            first_port: FIRST_PORT,
            flows: 1,
        }],
        count_queues: false,
    };
    let samples = bench.measure(settings, object, &traffic)?;
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
        arms: arms(&samples),
    })
}

/// The multi-queue table: every veth end with one queue per CPU (at least two), one generator
/// thread pinned to each CPU, `MULTI_QUEUE_FLOWS` flows split among them. If the kernel
/// refuses the setup, or an arm's frames stay on one queue, `limit` says so.
pub fn run_multi_queue(settings: &Settings, object: &Path) -> Result<MultiQueue> {
    let cpus = allowed_cpus()?;
    ensure!(!cpus.is_empty(), "sched_getaffinity returned no CPU");
    let generators = u16::try_from(cpus.len()).context("too many CPUs")?;
    let queues = u32::from(generators.max(2));
    let per_generator = (MULTI_QUEUE_FLOWS / generators).max(1);
    let traffic = Traffic {
        generators: cpus
            .iter()
            .zip(0..generators)
            .map(|(&cpu, i)| Generator {
                cpu: Some(cpu),
                first_port: FIRST_PORT + i * per_generator,
                flows: per_generator,
            })
            .collect(),
        count_queues: true,
    };
    let flows = u32::from(per_generator) * u32::from(generators);
    let mut table = MultiQueue {
        method: String::new(),
        queues,
        flows,
        generator_cpus: cpus.clone(),
        rounds: settings.rounds,
        window_s: settings.window.as_secs_f64(),
        channels: Vec::new(),
        arms: Vec::new(),
        spread: Vec::new(),
        limit: None,
    };
    check_generator(object, cpus[0], per_generator)?;
    let setup = Bench::new(object, Some(queues)).and_then(|mut bench| {
        table.channels = bench.probe(queues)?;
        Ok(bench)
    });
    table.method = multi_queue_method(settings, &table, per_generator);
    let mut bench = match setup {
        Ok(bench) => bench,
        Err(e) => {
            table.limit = Some(format!("the multi-queue setup failed: {e:#}"));
            return Ok(table);
        }
    };
    let samples = bench.measure(settings, object, &traffic)?;
    table.arms = arms(&samples);
    table.spread = Arm::ALL
        .iter()
        .zip(&samples)
        .map(|(arm, s)| {
            let mut sum = LoadSpread {
                arm: arm.name().to_owned(),
                ..LoadSpread::default()
            };
            for sample in s {
                sum.add(&sample.spread);
            }
            sum
        })
        .collect();
    table.limit = spread_limit(&table.spread);
    Ok(table)
}

impl Bench {
    /// What the kernel may refuse on a multi-queue veth: checks that `ethtool -l` shows
    /// `queues` queues on every end, and attaches every program of the dut to d0 once. Returns
    /// the channels, as "g0: RX 2, TX 2".
    fn probe(&mut self, queues: u32) -> Result<Vec<String>> {
        let mut shown = Vec::new();
        for (node, interface) in VETH_ENDS {
            let (rx, tx) = channels(self.lab.node(node)?, interface)?;
            ensure!(
                rx == queues && tx == queues,
                "`ethtool -l {interface}` shows RX {rx}, TX {tx}, not the {queues} queues asked for"
            );
            shown.push(format!("{interface}: RX {rx}, TX {tx}"));
        }
        for arm in [Arm::Plain, Arm::Cpn] {
            self.with_arm(arm, |_| Ok(()))
                .with_context(|| format!("attaching {} to d0", arm.name()))?;
        }
        Ok(shown)
    }
}

fn multi_queue_method(settings: &Settings, table: &MultiQueue, per_generator: u16) -> String {
    let last_port = u32::from(FIRST_PORT) + table.flows - 1;
    format!(
        "The same path and arms, every veth end with {q} transmit and {q} receive queues \
         (`numtxqueues`/`numrxqueues`; `ethtool -l`: {channels}). One generator thread per \
         CPU, pinned with sched_setaffinity (CPUs {cpus:?}), each cycling through its own {per} \
         of {flows} UDP flows (source ports {FIRST_PORT}–{last_port}: xdp_gen takes the next \
         port on every frame and updates the UDP checksum). veth puts a frame that XDP sends \
         (the generator's, cpn_steer's redirect) into the peer's queue of the sending CPU, and a \
         packet the kernel forwards into the queue its flow hash picks. Spread: frames per \
         receive queue of d0 and s1 (`ethtool -S`, rx_queue_N_xdp_packets) and per CPU at the \
         sink, summed over the rounds. {rounds} rounds, arms in rotated order, {window:.1} s \
         windows after 0.3 s warm-up; ratio to plain forwarding per round.",
        q = table.queues,
        channels = if table.channels.is_empty() {
            "not read".to_owned()
        } else {
            table.channels.join("; ")
        },
        cpus = table.generator_cpus,
        per = per_generator,
        flows = table.flows,
        rounds = settings.rounds,
        window = settings.window.as_secs_f64(),
    )
}

/// Why the frames did not spread, if they did not: an arm whose d0 or s1 had fewer than two
/// queues carrying at least `BUSY_QUEUE_SHARE` of its frames.
#[expect(clippy::cast_precision_loss, reason = "counts fit f64")]
fn spread_limit(spread: &[LoadSpread]) -> Option<String> {
    let mut problems = Vec::new();
    for s in spread {
        for (what, counts) in [
            ("the dut's ingress d0", &s.dut_rx_queues),
            ("the sink's s1", &s.sink_rx_queues),
        ] {
            let total = total(counts) as f64;
            let busy = counts
                .iter()
                .filter(|&&c| total > 0.0 && c as f64 >= BUSY_QUEUE_SHARE * total)
                .count();
            if busy < 2 {
                problems.push(format!(
                    "{}: {busy} of the {} receive queues of {what} carried traffic \
                     (frames per queue {counts:?})",
                    s.arm,
                    counts.len()
                ));
            }
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "the frames did not spread over the veth queues: {}",
            problems.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ethtool -S` of a 2-queue veth on kernel 6.18 (shortened).
    const STATS: &str = "NIC statistics:
     peer_ifindex: 2
     rx_queue_0_xdp_packets: 10
     rx_queue_0_xdp_bytes: 800
     rx_queue_1_xdp_packets: 7
     rx_queue_1_drops: 3
     tx_queue_0_xdp_xmit: 4
";

    const CHANNELS: &str = "Channel parameters for d0:
Pre-set maximums:
RX:\t\t4
TX:\t\t4
Other:\t\tn/a
Combined:\tn/a
Current hardware settings:
RX:\t\t2
TX:\t\t2
Other:\t\tn/a
Combined:\tn/a
";

    #[test]
    fn ethtool_counters_and_channels_are_read() {
        assert_eq!(parse_rx_queue_packets(STATS), vec![10, 7]);
        assert!(parse_rx_queue_packets("NIC statistics:\n     peer_ifindex: 2\n").is_empty());
        assert_eq!(parse_channels(CHANNELS), Some((2, 2)));
        assert_eq!(parse_channels("Pre-set maximums:\nRX:\t\t4\n"), None);
    }

    fn spread(dut: &[u64], sink: &[u64]) -> LoadSpread {
        LoadSpread {
            arm: "arm".to_owned(),
            dut_rx_queues: dut.to_vec(),
            sink_rx_queues: sink.to_vec(),
            ..LoadSpread::default()
        }
    }

    #[test]
    fn traffic_on_one_queue_is_named_as_the_limit() {
        assert_eq!(spread_limit(&[spread(&[50, 50], &[60, 40])]), None);
        let limit = spread_limit(&[spread(&[50, 50], &[100, 2])]).expect("s1 used one queue");
        assert!(
            limit.contains("1 of the 2 receive queues of the sink's s1"),
            "{limit}"
        );
        assert!(spread_limit(&[spread(&[0, 0], &[0, 0])]).is_some());
    }
}
