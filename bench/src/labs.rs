//! Part 3 in namespace labs: real agents speaking BGP over veth links (`cpn_tests::cpn_lab`:
//! one client, the ingress, a transit router and compute nodes; distributed mode), real TCP
//! connections through `cpn_steer`, and the ingress's pinned maps read directly.
//!
//! Per round, with new connections arriving steadily:
//! 1. metric change → new ring: compute node `c1` reports itself full (the policy weighs load
//!    only, so a full node gets no slots), then empty again; each time until the ingress's
//!    ring selector flips;
//! 2. metric change → first packet at the node: from `c1` reporting itself empty to the first
//!    new connection it answers;
//! 3. death → last packet: `c1`'s link goes down and its agent is killed; until the ingress's
//!    per-node packet counter for `c1` last moves (the ingress stops steering to it).

use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use cpn_common::{
    maps::{self, MAX_NODES, MAX_SERVICES, NodeEntry, RingSelector},
    stats::Counter,
};
use cpn_tests::{
    cpn_lab::{CpnLab, Topology},
    traffic::Traffic,
};
use serde::Serialize;

use crate::stats::Spread;

const SERVICE: &str = "2001:db8:cafe::1";
const PORT: u16 = 7000;
/// New connections per second from the client.
const RATE: u32 = 200;
const POLL: Duration = Duration::from_millis(2);
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct LabRun {
    /// Agents in the lab: ingress, transit and compute nodes.
    pub agents: usize,
    pub rounds: usize,
    /// Seconds from starting the lab until the service answered through the ingress.
    pub start_s: f64,
    pub metric_to_ring_ms: Spread,
    pub metric_to_first_packet_ms: Spread,
    pub death_to_last_packet_ms: Spread,
}

fn topology(computes: usize) -> Result<Topology> {
    let mut text = format!(
        "[[service]]\nname = \"web\"\naddress = \"{SERVICE}\"\nport = {PORT}\nkind = \"cpu\"\n\
         latency_weight = 0\nload_weight = 1\n\n[[client]]\nname = \"client1\"\n"
    );
    for n in 1..=computes {
        let _ = write!(
            text,
            "\n[[compute]]\nname = \"c{n}\"\ncapacity = {{ cpu = 1e12 }}\nlatency_ms = 0\n"
        );
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

/// Waits for the first connection started after `from` that `node` answered; ms after `from`.
fn first_answer(traffic: &Traffic, node: &str, from: Duration) -> Result<f64> {
    while traffic.now() < from + DEADLINE {
        if let Some(r) = traffic
            .between(from, traffic.now())
            .iter()
            .filter(|r| r.node.as_deref() == Some(node))
            .min_by_key(|r| r.at)
        {
            return Ok(r.at.saturating_sub(from).as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{node} answered no new connection within {DEADLINE:?}")
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

pub fn run(computes: usize, rounds: usize) -> Result<LabRun> {
    let started = Instant::now();
    let mut lab = CpnLab::start("bench-cp", topology(computes)?)?;
    let start_s = started.elapsed().as_secs_f64();
    let pin_dir = lab
        .agents
        .get("ingress")
        .context("the lab has no ingress agent")?
        .pin_dir
        .clone();
    let target = SocketAddr::new(SERVICE.parse()?, PORT);
    let traffic = Traffic::start(&[lab.lab.node("client1")?.clone()], target, RATE);
    let (mut to_ring, mut to_packet, mut to_last) = (Vec::new(), Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for _ in 0..rounds {
            // c1 takes flows before anything happens.
            first_answer(&traffic, "c1", traffic.now())?;
            for (load, first) in [(100, false), (0, true)] {
                let before = selectors(&pin_dir)?;
                let (since, from) = (Instant::now(), traffic.now());
                lab.set_load("c1", load)?;
                to_ring.push(ring_change(&pin_dir, &before, since)?);
                if first {
                    to_packet.push(first_answer(&traffic, "c1", from)?);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            let id = node_id(&pin_dir, sid_of(1))?.context("the ingress has no node c1")?;
            let since = Instant::now();
            lab.fail("c1")?;
            to_last.push(last_move(&pin_dir, id, since, Duration::from_secs(4))?);
            lab.recover("c1")?;
        }
        Ok(())
    })();
    drop(traffic.finish());
    result.map_err(|e| e.context(format!("agent logs:\n{}", tail(&lab.logs()))))?;
    Ok(LabRun {
        agents: computes + 2,
        rounds,
        start_s,
        metric_to_ring_ms: Spread::of(&to_ring),
        metric_to_first_packet_ms: Spread::of(&to_packet),
        death_to_last_packet_ms: Spread::of(&to_last),
    })
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
