//! Part 3 in namespace labs: real agents speaking BGP over veth links (`cpn_tests::cpn_lab`:
//! one client, the ingress, a transit router and compute nodes; distributed mode), and the
//! ingress's pinned maps read directly.
//!
//! The client sends a UDP datagram from a new source port every millisecond: a new flow each
//! time, which the ingress steers by its ring. (Not TCP: a client whose connection attempt goes
//! to a dead node waits a second for the SYN to be sent again, so a few such clients would
//! stop all traffic just when it is measured.) Per round:
//! 1. metric change → new ring: compute node `c1` reports itself full (the policy weighs load
//!    only, so a full node gets no slots), then empty again; each time until the ingress's
//!    ring selector flips;
//! 2. metric change → first packet to the node: from `c1` reporting itself empty to the first
//!    new packet the ingress steers to it (its per-node packet counter moves), and to the first
//!    packet `c1`'s `cpn_endpoint` decapsulates (its SID counter, in its own pinned maps);
//! 3. death → last packet: `c1`'s link goes down and its agent is killed; until that counter
//!    last moves (the ingress stops steering to it).

use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use cpn_common::{
    maps::{self, MAX_NODES, MAX_SERVICES, NodeEntry, RingSelector, SidEntry},
    stats::Counter,
};
use cpn_tests::cpn_lab::{CpnLab, Mode, Topology};
use serde::Serialize;

use crate::stats::Spread;

const SERVICE: &str = "2001:db8:cafe::1";
/// The service's port (the policy covers every port and protocol).
const PORT: u16 = cpn_tests::cpn_lab::DEFAULT_PORT;
const POLL: Duration = Duration::from_millis(2);
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct LabRun {
    /// Agents in the lab: ingress, transit and compute nodes.
    pub agents: usize,
    /// `distributed` (eBGP hop by hop) or `reflector` (iBGP, the transit reflecting).
    pub mode: &'static str,
    pub rounds: usize,
    /// Seconds from starting the lab until the service answered through the ingress.
    pub start_s: f64,
    pub metric_to_ring_ms: Spread,
    /// Metric change → first new packet the ingress steers to the node.
    pub metric_to_first_packet_ms: Spread,
    /// Metric change → first packet the node's `cpn_endpoint` decapsulates.
    pub metric_to_first_packet_at_node_ms: Spread,
    pub death_to_last_packet_ms: Spread,
}

fn topology(computes: usize, mode: Mode) -> Result<Topology> {
    let mut text = format!(
        "[[service]]\nname = \"web\"\naddress = \"{SERVICE}\"\nkind = \"cpu\"\n\
         latency_weight = 0\nload_weight = 1\n\n[[client]]\nname = \"client1\"\n"
    );
    for n in 1..=computes {
        let _ = write!(
            text,
            "\n[[compute]]\nname = \"c{n}\"\ncapacity = {{ cpu = 1e12 }}\nlatency_ms = 0\n"
        );
    }
    // Neighbours notice a dead link after 3 silent probes 30 ms apart.
    text.push_str("\n[detection]\ninterval_ms = 30\nmultiplier = 3\n");
    if mode == Mode::Reflector {
        text.insert_str(0, "mode = \"reflector\"\n\n");
    }
    Topology::parse(Path::new("bench-lab.toml"), &text)
}

fn open<T>(pin_dir: &Path, name: &str, from: fn(Map) -> Result<T>) -> Result<T> {
    let data = MapData::from_pin(pin_dir.join(name))
        .with_context(|| format!("opening the ingress's pinned {name}"))?;
    from(Map::from_map_data(data)?)
}

/// Every service's ring selector at the ingress.
fn selectors(pin_dir: &Path) -> Result<Vec<u32>> {
    let map: Array<MapData, RingSelector> =
        open(pin_dir, maps::RING_SELECTORS, |m| Ok(Array::try_from(m)?))?;
    (0..MAX_SERVICES).map(|i| Ok(map.get(&i, 0)?.0)).collect()
}

/// The ingress's node id for the node whose last segment is `sid`.
fn node_id(pin_dir: &Path, sid: Ipv6Addr) -> Result<Option<u32>> {
    let map: Array<MapData, NodeEntry> = open(pin_dir, maps::NODES, |m| Ok(Array::try_from(m)?))?;
    for id in 0..MAX_NODES {
        let node = map.get(&id, 0)?;
        // segments[0] is the last segment: the node's decapsulating SID.
        if node.segment_count > 0 && node.segments[0] == sid.octets() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn node_packets(pin_dir: &Path, id: u32) -> Result<u64> {
    let map: PerCpuArray<MapData, Counter> =
        open(pin_dir, maps::NODE_STATS, |m| Ok(PerCpuArray::try_from(m)?))?;
    Ok(map.get(&id, 0)?.iter().map(|c| c.packets).sum())
}

/// Polls until the ingress's ring selectors differ from `before`; ms since `since`.
fn ring_change(pin_dir: &Path, before: &[u32], since: Instant) -> Result<f64> {
    while since.elapsed() < DEADLINE {
        if selectors(pin_dir)? != before {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(POLL);
    }
    bail!("the ingress published no new ring within {DEADLINE:?}")
}

/// Polls until `node`'s counter at the ingress moves; ms since `since`.
fn first_move(pin_dir: &Path, id: u32, since: Instant) -> Result<f64> {
    Ok(first_moves(&[&|| node_packets(pin_dir, id)], since)?[0])
}

/// Polls the counters until each has moved; for each, ms from `since` to its first move.
fn first_moves(counters: &[&dyn Fn() -> Result<u64>], since: Instant) -> Result<Vec<f64>> {
    let before: Vec<u64> = counters.iter().map(|c| c()).collect::<Result<_>>()?;
    let mut moved: Vec<Option<f64>> = vec![None; counters.len()];
    while since.elapsed() < DEADLINE {
        for (i, counter) in counters.iter().enumerate() {
            if moved[i].is_none() && counter()? != before[i] {
                moved[i] = Some(since.elapsed().as_secs_f64() * 1e3);
            }
        }
        if moved.iter().all(Option::is_some) {
            return Ok(moved.into_iter().flatten().collect());
        }
        std::thread::sleep(POLL);
    }
    bail!("no new packet for the node within {DEADLINE:?}")
}

/// Packets `cpn_endpoint` on a compute node processed for its `sid` (its own pinned maps).
fn sid_packets(pin_dir: &Path, sid: Ipv6Addr) -> Result<u64> {
    let sids: HashMap<MapData, [u8; 16], SidEntry> =
        open(pin_dir, maps::LOCAL_SIDS, |m| Ok(HashMap::try_from(m)?))?;
    let index = sids.get(&sid.octets(), 0)?.stats_index;
    let stats: PerCpuArray<MapData, Counter> =
        open(pin_dir, maps::SID_STATS, |m| Ok(PerCpuArray::try_from(m)?))?;
    Ok(stats.get(&index, 0)?.iter().map(|c| c.packets).sum())
}

/// New UDP flows to the service, one per millisecond, from the calling thread's namespace,
/// until `stop`.
fn probe_flows(target: SocketAddr, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // A new socket, a new source port: a new flow.
        if let Ok(socket) = UdpSocket::bind("[::]:0") {
            let _ = socket.send_to(b"cpn-bench", target);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Watches `node`'s counter at the ingress for `watch`; ms from `since` to its last move.
fn last_move(pin_dir: &Path, id: u32, since: Instant, watch: Duration) -> Result<f64> {
    let mut last_value = node_packets(pin_dir, id)?;
    let mut last_at = 0.0;
    while since.elapsed() < watch {
        let value = node_packets(pin_dir, id)?;
        if value != last_value {
            last_value = value;
            last_at = since.elapsed().as_secs_f64() * 1e3;
        }
        std::thread::sleep(POLL);
    }
    Ok(last_at)
}

/// The ingress's node id for `sid`, once it has learned the node (again).
fn wait_for_node(pin_dir: &Path, sid: Ipv6Addr) -> Result<u32> {
    let since = Instant::now();
    while since.elapsed() < DEADLINE {
        if let Some(id) = node_id(pin_dir, sid)? {
            return Ok(id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the ingress did not learn {sid} within {DEADLINE:?}")
}

fn sid_of(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfc00,
        u16::try_from(n).expect("few nodes"),
        0,
        0,
        0,
        0,
        0,
        0xd6,
    )
}

pub fn run(computes: usize, mode: Mode, rounds: usize) -> Result<LabRun> {
    let started = Instant::now();
    let mut lab = CpnLab::start("bench-cp", topology(computes, mode)?)?;
    let start_s = started.elapsed().as_secs_f64();
    let pin_dir = lab
        .agents
        .get("ingress")
        .context("the lab has no ingress agent")?
        .pin_dir
        .clone();
    let target = SocketAddr::new(SERVICE.parse()?, PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        // A thread starts in the namespace of the thread that creates it.
        let _inside = lab.lab.node("client1")?.enter()?;
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || probe_flows(target, &stop))
    };
    let (mut to_ring, mut to_packet, mut at_node, mut to_last) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for _ in 0..rounds {
            let id = wait_for_node(&pin_dir, sid_of(1))?;
            // c1 takes flows before anything happens.
            first_move(&pin_dir, id, Instant::now())?;
            for (load, first) in [(100, false), (0, true)] {
                let before = selectors(&pin_dir)?;
                let since = Instant::now();
                lab.set_load("c1", load)?;
                to_ring.push(ring_change(&pin_dir, &before, since)?);
                if first {
                    let node_pins = lab.agents.get("c1").context("c1's agent")?.pin_dir.clone();
                    let moves = first_moves(
                        &[&|| node_packets(&pin_dir, id), &|| {
                            sid_packets(&node_pins, sid_of(1))
                        }],
                        since,
                    )?;
                    to_packet.push(moves[0]);
                    at_node.push(moves[1]);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            let since = Instant::now();
            lab.fail("c1")?;
            to_last.push(last_move(&pin_dir, id, since, Duration::from_secs(4))?);
            lab.recover("c1")?;
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    result.map_err(|e| e.context(format!("agent logs:\n{}", tail(&lab.logs()))))?;
    Ok(LabRun {
        agents: computes + 2,
        mode: match mode {
            Mode::Distributed => "distributed",
            Mode::Reflector => "reflector",
        },
        rounds,
        start_s,
        metric_to_ring_ms: Spread::of(&to_ring),
        metric_to_first_packet_ms: Spread::of(&to_packet),
        metric_to_first_packet_at_node_ms: Spread::of(&at_node),
        death_to_last_packet_ms: Spread::of(&to_last),
    })
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
