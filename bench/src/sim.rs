//! Part 3, simulated: many agents in one process, linked in memory, for each announcement
//! mode. Each agent runs the agent's own announcement code: `policy::accept` and
//! `policy::export` per session with its own `PathIds`, `route::changes` against what the session
//! advertised before (one UPDATE per changed route, one for the withdrawals), and real UPDATE
//! bytes through the session codec and `route::parse` on the other side.
//!
//! Time is simulated: a message arrives after its link's one-way delay; an agent handles one
//! message at a time, and handling takes as long as it really took here (measured). A metric
//! change at one compute node is counted from the moment it re-originates its route until the
//! last message it caused has been handled.
//!
//! ```text
//!   distributed: a random meshed graph of eBGP speakers, one private AS each (hop by hop):
//!                a random tree plus N/2 more links
//!   centralized: every agent an iBGP client of one reflector
//!   hybrid:      √N regional reflectors, clients iBGP to theirs; the reflectors a full
//!                iBGP mesh among themselves (RFC 4456: client routes go everywhere,
//!                non-client routes only to clients)
//! ```
//!
//! Under ADD-PATH an agent passes on each site of a prefix by its best path (`policy::export`),
//! so a mesh multiplies the sessions a change crosses, not the paths. (An earlier agent passed
//! on every loop-free path; on a mesh their number grew exponentially, which this benchmark
//! found.)

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{Context as _, Result};
use bytes::BytesMut;
use cpn_agent::bgp::{
    errors::Codec,
    metric_attr::NodeScore,
    policy::{self, Local, PathIds, Peer, Received},
    route::{self, AddPath, Encoding, Route, ServiceSid},
    speaker,
};
use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use serde::Serialize;
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::stats::Spread;

/// Sites of the service (compute nodes); the other agents are ingress and transit routers.
const SITES: usize = 8;
const METRIC_CODE: u8 = 255;
const SHARED_ASN: u32 = 4_200_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Distributed,
    Centralized,
    Hybrid,
}

impl Mode {
    pub const ALL: [Self; 3] = [Self::Distributed, Self::Centralized, Self::Hybrid];
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Distributed => "distributed",
            Self::Centralized => "centralized",
            Self::Hybrid => "hybrid",
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub agents: usize,
    pub mode: Mode,
    pub sessions: usize,
    /// Change → last message it caused handled (simulated ms).
    pub convergence_ms: Spread,
    /// Change → the ingress has the new metrics (simulated ms).
    pub ingress_ms: Spread,
    pub messages_per_change: Spread,
    pub bytes_per_change: Spread,
    /// Real time this process spent on one change (all agents' handling).
    pub wall_ms: Spread,
}

#[derive(Debug, Serialize)]
pub struct Simulation {
    pub method: String,
    pub runs: Vec<Run>,
}

/// A small deterministic generator (no dependency, same labs on every machine).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `low..high`.
    #[expect(clippy::cast_precision_loss, reason = "31-bit values")]
    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * (self.next() as f64 / f64::from(1u32 << 31))
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next()).unwrap_or(0) % n.max(1)
    }
}

struct Session {
    to: usize,
    /// The neighbor as this agent's rules see it.
    peer: Peer,
    /// One-way delay, ms.
    delay_ms: f64,
    ids: PathIds,
    advertised: Vec<Route>,
    codec: Codec,
}

struct Agent {
    local: Local,
    originated: Vec<Route>,
    /// (session index, prefix, path id) → route.
    rib_in: BTreeMap<(usize, IpNet, u32), Received>,
    sessions: Vec<Session>,
    busy_until: f64,
    codec: Codec,
}

fn address(i: usize) -> Ipv6Addr {
    let i = u16::try_from(i).expect("fewer than 65 536 agents");
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, i + 1)
}

fn router_id(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("few agents");
    Ipv4Addr::from(0x0a00_0000 + i + 1)
}

fn site_route(i: usize, score: f64) -> Route {
    let mut r = crate::control::sample_route(u32::try_from(i).expect("few agents"));
    r.path_id = 1;
    r.next_hop = address(i);
    // Each site has its own SID (`fc00:<i>::d6`), as every compute node does.
    let i16 = |shift: u32| u16::try_from((i >> shift) & 0xffff).expect("masked");
    r.service = r.service.map(|s| ServiceSid {
        sid: Ipv6Addr::new(0xfc00, i16(16), i16(0), 0, 0, 0, 0, 0xd6),
        ..s
    });
    if let Some(m) = &mut r.metrics {
        m.score = Some(NodeScore {
            computing: score,
            l2: score,
        });
    }
    r.aigp = Some(0);
    r.as_path.clear();
    r
}

/// Builds the agents and their sessions.
fn build(n: usize, mode: Mode, rng: &mut Lcg) -> Vec<Agent> {
    let asn = |i: usize| match mode {
        Mode::Distributed => 4_200_000_001 + u32::try_from(i).expect("few agents"),
        Mode::Centralized | Mode::Hybrid => SHARED_ASN,
    };
    let mut agents: Vec<Agent> = (0..n)
        .map(|i| Agent {
            local: Local {
                asn: asn(i),
                router_id: router_id(i),
                cluster_id: router_id(i),
                next_hop: address(i),
            },
            originated: Vec::new(),
            rib_in: BTreeMap::new(),
            sessions: Vec::new(),
            busy_until: 0.0,
            codec: speaker::codec(AddPath::BOTH, METRIC_CODE),
        })
        .collect();
    // (a, b, a is b's reflector, delay)
    let mut links: Vec<(usize, usize, bool, f64)> = Vec::new();
    match mode {
        Mode::Distributed => {
            for i in 1..n {
                let parent = rng.below(i);
                links.push((parent, i, false, rng.between(1.0, 5.0)));
            }
            // A mesh, not a tree: N/2 more links between agents not linked yet.
            let mut extra = n / 2;
            while extra > 0 && n > 2 {
                let (a, b) = (rng.below(n), rng.below(n));
                let linked = |&(x, y, _, _): &(usize, usize, bool, f64)| {
                    (x, y) == (a, b) || (x, y) == (b, a)
                };
                if a != b && !links.iter().any(linked) {
                    links.push((a, b, false, rng.between(1.0, 5.0)));
                    extra -= 1;
                }
            }
        }
        Mode::Centralized => {
            // Agent 0 is the reflector (and no site); agent 1 the ingress.
            for i in 1..n {
                links.push((0, i, true, rng.between(1.0, 10.0)));
            }
        }
        Mode::Hybrid => {
            let regions = n.isqrt().max(2);
            for r in 0..regions {
                for s in r + 1..regions {
                    links.push((r, s, false, rng.between(5.0, 20.0)));
                }
            }
            for i in regions..n {
                links.push((i % regions, i, true, rng.between(1.0, 5.0)));
            }
        }
    }
    for (a, b, reflector, delay_ms) in links {
        let peer_of = |other: usize, client: bool| Peer {
            address: IpAddr::V6(address(other)),
            asn: asn(other),
            rr_client: client,
            add_path: AddPath::BOTH,
        };
        let pa = peer_of(b, reflector);
        let pb = peer_of(a, false);
        agents[a].sessions.push(Session {
            to: b,
            peer: pa,
            delay_ms,
            ids: PathIds::default(),
            advertised: Vec::new(),
            codec: speaker::codec(AddPath::BOTH, METRIC_CODE),
        });
        agents[b].sessions.push(Session {
            to: a,
            peer: pb,
            delay_ms,
            ids: PathIds::default(),
            advertised: Vec::new(),
            codec: speaker::codec(AddPath::BOTH, METRIC_CODE),
        });
    }
    agents
}

/// The ingress (never a site) and the sites (the last agents).
fn roles(n: usize, mode: Mode) -> (usize, Vec<usize>) {
    let ingress = match mode {
        Mode::Distributed => 0,
        Mode::Centralized => 1,
        // The first client (agents below it are the regional reflectors).
        Mode::Hybrid => n.isqrt().max(2),
    };
    (ingress, (n - SITES..n).collect())
}

/// A simulated time that orders totally (the event queue needs `Ord`).
#[derive(Debug)]
struct At(f64);
impl PartialEq for At {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for At {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// (arrival ms, sequence, to, from-session index at `to`, bytes)
type Event = (Reverse<At>, Reverse<u64>, usize, usize, BytesMut);

struct World {
    agents: Vec<Agent>,
    queue: BinaryHeap<Event>,
    seq: u64,
    messages: u64,
    bytes: u64,
}

impl World {
    /// Re-exports to every session of `a`: the UPDATEs for what changed, as (to, the
    /// session's index at `to`, delay ms, bytes).
    fn advertise(&mut self, a: usize) -> Result<Vec<(usize, usize, f64, BytesMut)>> {
        let received: Vec<Received> = self.agents[a].rib_in.values().cloned().collect();
        let agent = &mut self.agents[a];
        let mut outgoing = Vec::new();
        for session in &mut agent.sessions {
            let current = policy::export(
                &agent.local,
                &agent.originated,
                &received,
                &session.peer,
                &mut session.ids,
            );
            let messages = route::changes(
                &session.advertised,
                &current,
                Encoding {
                    metric_code: METRIC_CODE,
                    add_path: session.peer.add_path,
                    local_asn: agent.local.asn,
                    internal: session.peer.asn == agent.local.asn,
                },
            );
            session.advertised = current;
            for message in messages {
                let mut wire = BytesMut::new();
                session
                    .codec
                    .encode(message, &mut wire)
                    .context("encoding an UPDATE")?;
                outgoing.push((session.to, session.delay_ms, wire));
            }
        }
        outgoing
            .into_iter()
            .map(|(to, delay, wire)| {
                let back = self.agents[to]
                    .sessions
                    .iter()
                    .position(|s| s.to == a)
                    .context("a session has two ends")?;
                Ok((to, back, delay, wire))
            })
            .collect()
    }

    /// Puts UPDATEs that leave at `now` on their links.
    fn send(&mut self, now: f64, outgoing: Vec<(usize, usize, f64, BytesMut)>) {
        for (to, back, delay, wire) in outgoing {
            self.messages += 1;
            self.bytes += wire.len() as u64;
            self.seq += 1;
            self.queue
                .push((Reverse(At(now + delay)), Reverse(self.seq), to, back, wire));
        }
    }

    /// Handles every queued message; returns (time of the last handling, first time `watch`
    /// handled a message that `seen` accepts).
    fn run(&mut self, watch: usize, seen: impl Fn(&Agent) -> bool) -> Result<(f64, Option<f64>)> {
        let mut last = 0.0f64;
        let mut watched = None;
        while let Some((Reverse(At(at)), _, to, session, mut wire)) = self.queue.pop() {
            let started = Instant::now();
            let agent = &mut self.agents[to];
            let start = at.max(agent.busy_until);
            while let Some((message, _)) = agent.codec.decode(&mut wire)? {
                let BgpMessage::Update(update) = message else {
                    continue;
                };
                let parsed = route::parse(&update, METRIC_CODE);
                for w in parsed.withdrawn {
                    agent.rib_in.remove(&(session, w.prefix, w.path_id));
                }
                let from = agent.sessions[session].peer;
                for r in parsed.announced {
                    let key = (session, r.prefix, r.path_id);
                    if policy::accept(&agent.local, &r).is_err() {
                        agent.rib_in.remove(&key);
                        continue;
                    }
                    agent.rib_in.insert(
                        key,
                        Received {
                            from,
                            from_id: router_id_of(&from),
                            route: r,
                        },
                    );
                }
            }
            let outgoing = self.advertise(to)?;
            let end = start + started.elapsed().as_secs_f64() * 1e3;
            self.send(end, outgoing);
            self.agents[to].busy_until = end;
            last = last.max(end);
            if to == watch && watched.is_none() && seen(&self.agents[to]) {
                watched = Some(end);
            }
        }
        Ok((last, watched))
    }
}

/// The router id of a neighbor, from its address (as the OPEN would have said).
fn router_id_of(peer: &Peer) -> Ipv4Addr {
    match peer.address {
        IpAddr::V6(v6) => {
            let last = v6.segments()[7];
            router_id(usize::from(last) - 1)
        }
        IpAddr::V4(v4) => v4,
    }
}

/// One lab: build, converge, then change one site's metrics and measure.
/// Returns (sessions, convergence ms, ingress ms, messages, bytes, wall ms).
#[expect(clippy::cast_precision_loss, reason = "counts fit f64")]
fn one(n: usize, mode: Mode, seed: u64) -> Result<(usize, f64, f64, f64, f64, f64)> {
    let mut rng = Lcg(seed);
    let agents = build(n, mode, &mut rng);
    let sessions = agents.iter().map(|a| a.sessions.len()).sum::<usize>() / 2;
    let mut world = World {
        agents,
        queue: BinaryHeap::new(),
        seq: 0,
        messages: 0,
        bytes: 0,
    };
    let (ingress, sites) = roles(n, mode);
    for &s in &sites {
        world.agents[s].originated = vec![site_route(s, 0.5)];
        let outgoing = world.advertise(s)?;
        world.send(0.0, outgoing);
    }
    let (settled, _) = world.run(ingress, |_| false)?;
    let site_count = world.agents[ingress].rib_in.len();
    anyhow::ensure!(
        site_count >= SITES,
        "{mode} with {n} agents: the ingress learned {site_count} of {SITES} sites"
    );
    // The change: the last site's score moves.
    let changed = *sites.last().context("sites")?;
    let t0 = settled + 1000.0;
    for agent in &mut world.agents {
        agent.busy_until = agent.busy_until.max(t0);
    }
    world.messages = 0;
    world.bytes = 0;
    world.agents[changed].originated = vec![site_route(changed, 0.9)];
    let wall = Instant::now();
    let outgoing = world.advertise(changed)?;
    world.send(t0, outgoing);
    let changed_node = format!("edge{changed}");
    let (last, heard) = world.run(ingress, |agent| {
        agent.rib_in.values().any(|rx| {
            rx.route
                .metrics
                .as_ref()
                .is_some_and(|m| m.node == changed_node && m.score.is_some_and(|s| s.l2 > 0.8))
        })
    })?;
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    let heard = heard.context("the ingress never heard of the change")?;
    Ok((
        sessions,
        last - t0,
        heard - t0,
        world.messages as f64,
        world.bytes as f64,
        wall_ms,
    ))
}

pub fn run(sizes: &[usize], seeds: u64) -> Result<Simulation> {
    let mut runs = Vec::new();
    for &n in sizes {
        for mode in Mode::ALL {
            let mut samples = Vec::new();
            let mut sessions = 0;
            for seed in 0..seeds {
                let (s, converge, ingress, messages, bytes, wall) = one(n, mode, seed + 1)?;
                sessions = s;
                samples.push((converge, ingress, messages, bytes, wall));
            }
            let pick = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
                Spread::of(&samples.iter().map(f).collect::<Vec<_>>())
            };
            eprintln!("bench: simulated {n} agents, {mode}");
            runs.push(Run {
                agents: n,
                mode,
                sessions,
                convergence_ms: pick(|s| s.0),
                ingress_ms: pick(|s| s.1),
                messages_per_change: pick(|s| s.2),
                bytes_per_change: pick(|s| s.3),
                wall_ms: pick(|s| s.4),
            });
        }
    }
    Ok(Simulation {
        method: format!(
            "{SITES} sites of one anycast service among N agents; one site's metrics change \
             once the labs have converged. Link delays: mesh links 1-5 ms (distributed), \
             client-reflector 1-10 ms (centralized) or 1-5 ms (hybrid), reflector-reflector \
             5-20 ms; handling times as measured in this process. {seeds} random labs per \
             row (spread over labs)."
        ),
        runs,
    })
}
