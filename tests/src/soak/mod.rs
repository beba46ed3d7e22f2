//! The chaos soak (`cargo xtask soak --minutes N`): the demo's lab under traffic while a
//! scheduler breaks it, epoch after epoch, and every promise is checked as it goes.
//!
//! ```text
//!   epoch (10 s): hold connections ── fault at 1 s, 2–4 s long ── heal ── settle ── judge
//!   faults, in turn: a compute agent SIGKILLed and restarted over its pins · the ingress's
//!                    then the transit's agent likewise · a compute node's link flapped ·
//!                    extra delay and loss on its path · a storm of load changes on it
//!   all along:       new flows from both clients, a rogue BGP peer (rogue.rs)
//! ```
//!
//! Checked: no new flow is answered by a node more than [`FAILOVER_BOUND`] after it died
//! (agent killed, link down) and before it came back; held connections on nodes the epoch's
//! fault spared keep their node; no agent exits unless killed; every agent's RSS stays within
//! [`RSS_TOLERANCE`] of its value after warm-up; the rogue peer's messages are answered as
//! RFC 7606 says; after the run, every namespace's routes and every agent's pins are those
//! of the start, and once the lab is gone nothing of it is left.

mod rogue;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use rand::{RngExt as _, SeedableRng as _, rngs::SmallRng};

pub use self::rogue::RogueReport;
use crate::{
    cpn_lab::{CpnLab, Topology},
    demo::FAILOVER_BOUND,
    lab::{Agent, wait_for},
    traffic::{Held, Request, Traffic},
};

/// The soak's lab: the demo's.
const TOPOLOGY: &str = include_str!("../../topologies/demo.toml");
/// The demo topology's transit router, which every path crosses and the rogue peer talks to.
const TRANSIT_NODE: &str = "transit";
const EPOCH: Duration = Duration::from_secs(10);
/// When in its epoch a fault begins.
const FAULT_AT: Duration = Duration::from_secs(1);
/// New connections per second from each client (lighter than the demo: the soak also runs
/// its faults and checks on the same two cores).
const RATE_PER_CLIENT: u32 = 20;
/// Connections held through each epoch.
const HELD: usize = 8;
/// How often agents are checked for life and load knobs flipped in a storm.
const TICK: Duration = Duration::from_millis(100);
/// An agent's resident memory may grow by this share of its value after warm-up.
pub const RSS_TOLERANCE: f64 = 0.10;
/// Warm-up: an agent's RSS is judged from this age on ...
const RSS_WARMUP: Duration = Duration::from_secs(30);
/// ... if it lives at least this long.
const RSS_MIN_LIFE: Duration = Duration::from_mins(1);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub duration: Duration,
    /// The fault schedule's seed.
    pub seed: u64,
}

/// What the soak saw: a readable report, and every broken promise.
#[derive(Debug, Default)]
pub struct Outcome {
    pub report: String,
    pub failures: Vec<String>,
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// The node's agent is killed (SIGKILL), and restarted over its pins when the fault ends.
    KillAgent(String),
    /// The compute node's link goes down, and up when the fault ends.
    LinkFlap(String),
    /// Extra delay and loss on the path to the compute node.
    Impair {
        node: String,
        delay_ms: u32,
        loss_percent: u32,
    },
    /// The compute node's load jumps between none and all its capacity every tick.
    MetricStorm(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KillAgent(n) => write!(f, "{n}'s agent SIGKILLed"),
            Self::LinkFlap(n) => write!(f, "{n}'s link flapped"),
            Self::Impair {
                node,
                delay_ms,
                loss_percent,
            } => write!(f, "{node}'s path +{delay_ms} ms, {loss_percent} % loss"),
            Self::MetricStorm(n) => write!(f, "load storm on {n}"),
        }
    }
}

/// A time a compute node was dead: from its death until it came back (traffic clock).
#[derive(Clone, Debug)]
struct Death {
    node: String,
    from: Duration,
    until: Duration,
}

/// One agent process's resident memory over its life.
#[derive(Debug)]
struct Incarnation {
    node: String,
    pid: u32,
    born: Duration,
    /// (age, kB)
    samples: Vec<(Duration, u64)>,
}

/// Runs the soak.
pub fn run(options: Options) -> Result<Outcome> {
    let mut topology = Topology::parse(Path::new("tests/topologies/demo.toml"), TOPOLOGY)?;
    topology.rogue_peer = true;
    let mut lab = CpnLab::start("soak", topology)?;
    let resources = lab.lab.resources();
    let mut soak = Soak::new(&mut lab, options)?;
    let result = soak.run();
    let Soak {
        mut outcome,
        traffic,
        ..
    } = soak;
    drop(traffic);
    if let Err(error) = result {
        outcome.failures.push(format!(
            "the soak stopped: {error:#}\n{}",
            tail(&lab.logs())
        ));
    }
    if !outcome.failures.is_empty() {
        match keep_logs(lab.lab.workdir(), options.seed) {
            Ok(dir) => outcome.failures.push(format!(
                "the agents' logs (a crashed agent's numbered) are kept in {}",
                dir.display()
            )),
            Err(error) => outcome
                .failures
                .push(format!("could not keep the agents' logs: {error:#}")),
        }
    }
    drop(lab);
    let left: Vec<String> = resources
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if left.is_empty() {
        outcome
            .report
            .push_str("leaks: none (namespaces, pin directories and the lab's files are gone)\n");
    } else {
        outcome
            .failures
            .push(format!("left behind by the lab: {}", left.join(", ")));
    }
    Ok(outcome)
}

struct Soak<'a> {
    lab: &'a mut CpnLab,
    options: Options,
    rng: SmallRng,
    traffic: Traffic,
    target: SocketAddr,
    computes: Vec<String>,
    deaths: Vec<Death>,
    /// When the transit's agent was killed, and restarted (the rogue's sessions end then).
    transit_down: Vec<(Instant, Option<Instant>)>,
    memory: Vec<Incarnation>,
    /// Routes of every namespace, and pins of every agent, at the start.
    routes: BTreeMap<String, BTreeSet<String>>,
    pins: BTreeMap<String, BTreeSet<PathBuf>>,
    /// The node whose load storms, while it does.
    storm: Option<String>,
    ticks: u64,
    last_sample: Option<Instant>,
    outcome: Outcome,
}

impl<'a> Soak<'a> {
    fn new(lab: &'a mut CpnLab, options: Options) -> Result<Self> {
        let service = lab.topology.services[0].clone();
        let target = SocketAddr::new(service.address, service.listen_port());
        let clients = lab
            .topology
            .clients
            .iter()
            .map(|c| lab.lab.node(&c.name).cloned())
            .collect::<Result<Vec<_>>>()?;
        let computes = lab
            .topology
            .computes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        wait_for_locators(lab)?;
        let routes = routes(lab)?;
        let pins = pins(lab);
        Ok(Self {
            traffic: Traffic::start(&clients, target, RATE_PER_CLIENT),
            rng: SmallRng::seed_from_u64(options.seed),
            lab,
            options,
            target,
            computes,
            deaths: Vec::new(),
            transit_down: Vec::new(),
            memory: Vec::new(),
            routes,
            pins,
            storm: None,
            ticks: 0,
            last_sample: None,
            outcome: Outcome::default(),
        })
    }

    fn run(&mut self) -> Result<()> {
        let _ = writeln!(
            self.outcome.report,
            "soak: {} s, seed {}, epochs of {} s",
            self.options.duration.as_secs(),
            self.options.seed,
            EPOCH.as_secs()
        );
        let mut rogue = rogue::Rogue::start(self.lab.lab.node("ingress")?);
        let mut epoch = 0;
        while self.traffic.now() + EPOCH <= self.options.duration {
            epoch += 1;
            self.epoch(epoch)?;
        }
        let rogue = rogue.finish()?;
        self.judge_rogue(&rogue);
        let requests = self.traffic.between(Duration::ZERO, self.traffic.now());
        self.judge_deaths(&requests);
        self.judge_memory();
        self.settle()?;
        self.judge_leaks()?;
        Ok(())
    }

    /// One epoch: connections held through one fault, judged at its end.
    fn epoch(&mut self, epoch: u32) -> Result<()> {
        let start = self.traffic.now();
        let fault = self.next_fault(epoch);
        let mut held = Held::open(self.lab.lab.node("client1")?, self.target, HELD)
            .context("holding connections")?;
        self.wait_until(start + FAULT_AT)?;
        let length = Duration::from_millis(self.rng.random_range(2000..=4000));
        let crashed = self.begin(&fault)?;
        self.wait_until(self.traffic.now() + length)?;
        self.end(&fault, crashed)?;
        self.wait_until(start + EPOCH)?;
        let report = held.close()?;
        let spared: Vec<&String> = self.computes.iter().filter(|n| !hit(&fault, n)).collect();
        let lost: Vec<String> = report
            .lost_on
            .iter()
            .filter(|(node, lost)| **lost > 0 && spared.contains(node))
            .map(|(node, lost)| format!("{lost} on {node}"))
            .collect();
        let requests = self.traffic.between(start, self.traffic.now());
        let disrupted = requests.iter().filter(|r| r.disrupted()).count();
        let _ = writeln!(
            self.outcome.report,
            "epoch {epoch:>3} at {:>5.0} s: {fault:<38} held {} ({} lost), {} new flows ({} \
             disrupted)",
            start.as_secs_f64(),
            report.connections,
            report.lost_on.values().sum::<u64>(),
            requests.len(),
            disrupted
        );
        if !lost.is_empty() {
            self.outcome.failures.push(format!(
                "epoch {epoch} ({fault}): held connections lost their node on nodes the fault \
                 spared: {} (of all held: {} answered by another node, {} broken: {:?})",
                lost.join(", "),
                report.moved,
                report.broken,
                report.why_broken
            ));
        }
        Ok(())
    }

    /// The schedule: the kinds of fault in turn, each on a node drawn from the seed.
    fn next_fault(&mut self, epoch: u32) -> Fault {
        let compute = self.computes[self.rng.random_range(0..self.computes.len())].clone();
        match epoch % 5 {
            1 => Fault::KillAgent(compute),
            2 => Fault::Impair {
                node: compute,
                delay_ms: self.rng.random_range(5..=30),
                loss_percent: self.rng.random_range(1..=3),
            },
            // The ingress and the transit in turn.
            3 => Fault::KillAgent(if epoch % 10 == 3 {
                "ingress".into()
            } else {
                TRANSIT_NODE.into()
            }),
            4 => Fault::LinkFlap(compute),
            _ => Fault::MetricStorm(compute),
        }
    }

    /// Starts a fault; a killed agent is returned, to restart.
    fn begin(&mut self, fault: &Fault) -> Result<Option<Agent>> {
        let now = self.traffic.now();
        match fault {
            Fault::KillAgent(node) => {
                if node == TRANSIT_NODE {
                    self.transit_down.push((Instant::now(), None));
                }
                let crashed = self.lab.kill_agent(node)?;
                if self.computes.contains(node) {
                    self.deaths.push(Death {
                        node: node.clone(),
                        from: now,
                        until: Duration::MAX,
                    });
                }
                return Ok(Some(crashed));
            }
            Fault::LinkFlap(node) => {
                self.lab.link_down(node)?;
                self.deaths.push(Death {
                    node: node.clone(),
                    from: now,
                    until: Duration::MAX,
                });
            }
            Fault::Impair {
                node,
                delay_ms,
                loss_percent,
            } => self
                .lab
                .impair(node, f64::from(*delay_ms), f64::from(*loss_percent))?,
            Fault::MetricStorm(node) => self.storm = Some(node.clone()),
        }
        Ok(None)
    }

    /// Ends a fault: the node comes back. Its death ends as the repair begins, for the node may
    /// take flows before the lab's call returns (`link_up` waits for a ping through, `restart`
    /// for the agent's log line): the 30-minute soak saw a flow answered by edge1 30 ms before.
    fn end(&mut self, fault: &Fault, crashed: Option<Agent>) -> Result<()> {
        let now = self.traffic.now();
        match fault {
            Fault::KillAgent(node) => {
                let crashed = crashed.context("no crashed agent to restart")?;
                self.lab.restart(node, &crashed)?;
                if let Some((_, until)) = self.transit_down.last_mut()
                    && node == TRANSIT_NODE
                {
                    *until = Some(Instant::now());
                }
            }
            Fault::LinkFlap(node) => self.lab.link_up(node)?,
            Fault::Impair { node, .. } => self.lab.impair(node, 0.0, 0.0)?,
            Fault::MetricStorm(node) => {
                self.storm = None;
                self.lab.set_load(node, 0)?;
            }
        }
        for death in &mut self.deaths {
            if death.until == Duration::MAX {
                death.until = now;
            }
        }
        Ok(())
    }

    /// Ticks until `until` (traffic clock): agents checked, memory sampled, storms blown.
    fn wait_until(&mut self, until: Duration) -> Result<()> {
        while self.traffic.now() < until {
            std::thread::sleep(TICK.min(until.saturating_sub(self.traffic.now())));
            self.tick()?;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.ticks += 1;
        let nodes: Vec<String> = self.lab.agents.keys().cloned().collect();
        for node in &nodes {
            if let Some(status) = self.lab.agent_exited(node)? {
                let log = self.lab.agents.get(node).map(|a| a.log.clone());
                let text = log
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default();
                self.outcome.failures.push(format!(
                    "{node}'s agent died ({status}) at {:.1} s, not killed:\n{}",
                    self.traffic.now().as_secs_f64(),
                    tail(&text)
                ));
                self.lab.agents.remove(node);
            }
        }
        if let Some(node) = &self.storm {
            let percent = if self.ticks.is_multiple_of(2) { 100 } else { 0 };
            self.lab.set_load(node, percent)?;
        }
        if self
            .last_sample
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_sample = Some(Instant::now());
            self.sample_memory();
        }
        Ok(())
    }

    fn sample_memory(&mut self) {
        let now = self.traffic.now();
        for (node, agent) in &self.lab.agents {
            let Some(kb) = rss_kb(agent.pid) else {
                continue;
            };
            let index = self
                .memory
                .iter()
                .position(|i| i.pid == agent.pid)
                .unwrap_or_else(|| {
                    self.memory.push(Incarnation {
                        node: node.clone(),
                        pid: agent.pid,
                        born: now,
                        samples: Vec::new(),
                    });
                    self.memory.len() - 1
                });
            let incarnation = &mut self.memory[index];
            let age = now.saturating_sub(incarnation.born);
            incarnation.samples.push((age, kb));
        }
    }

    /// No new flow reached a node later than [`FAILOVER_BOUND`] after its death, before it
    /// came back.
    fn judge_deaths(&mut self, requests: &[Request]) {
        let mut late = 0;
        for death in &self.deaths {
            for r in requests {
                let answered_at = r.at + r.took;
                if r.node.as_deref() == Some(death.node.as_str())
                    && r.at >= death.from + FAILOVER_BOUND
                    && answered_at < death.until
                {
                    late += 1;
                    if late <= 5 {
                        self.outcome.failures.push(format!(
                            "a new flow from {} reached {} {:.2} s after it died (it came back \
                             {:.2} s after)",
                            r.client,
                            death.node,
                            r.at.saturating_sub(death.from).as_secs_f64(),
                            death.until.saturating_sub(death.from).as_secs_f64()
                        ));
                    }
                }
            }
        }
        let total = requests.len();
        let disrupted = requests.iter().filter(|r| r.disrupted()).count();
        let _ = writeln!(
            self.outcome.report,
            "new flows: {total} ({disrupted} disrupted); {} node deaths; {late} flows steered \
             to a dead node after {:.1} s",
            self.deaths.len(),
            FAILOVER_BOUND.as_secs_f64()
        );
    }

    /// Every agent that lived long enough kept its RSS within [`RSS_TOLERANCE`].
    fn judge_memory(&mut self) {
        let mut judged = 0;
        for i in &self.memory {
            let life = i.samples.last().map(|s| s.0).unwrap_or_default();
            if life < RSS_MIN_LIFE {
                continue;
            }
            let Some(&(_, base)) = i.samples.iter().find(|s| s.0 >= RSS_WARMUP) else {
                continue;
            };
            judged += 1;
            let peak = i
                .samples
                .iter()
                .filter(|s| s.0 >= RSS_WARMUP)
                .map(|s| s.1)
                .max()
                .unwrap_or(base);
            let last = i.samples.last().map_or(base, |s| s.1);
            #[expect(clippy::cast_precision_loss, reason = "kB of a process fit in f64")]
            let growth = (peak as f64 - base as f64) / base as f64;
            let _ = writeln!(
                self.outcome.report,
                "memory: {} (pid {}, {:.0} s): {} kB after warm-up, peak {} kB, last {} kB \
                 ({:+.1} %)",
                i.node,
                i.pid,
                life.as_secs_f64(),
                base,
                peak,
                last,
                growth * 100.0
            );
            if growth > RSS_TOLERANCE {
                self.outcome.failures.push(format!(
                    "{}'s agent (pid {}) grew from {base} kB to {peak} kB ({:+.1} %, more than \
                     {:.0} %)",
                    i.node,
                    i.pid,
                    growth * 100.0,
                    RSS_TOLERANCE * 100.0
                ));
            }
        }
        if judged == 0 {
            self.outcome.failures.push(format!(
                "no agent lived {} s to have its memory judged: run the soak longer",
                RSS_MIN_LIFE.as_secs()
            ));
        }
    }

    fn judge_rogue(&mut self, rogue: &RogueReport) {
        let _ = writeln!(
            self.outcome.report,
            "rogue peer: {} sessions, {} malformed messages, {} NOTIFICATIONs back, {} treated \
             as withdraw (session kept), {} attempts from an unconfigured address refused",
            rogue.sessions, rogue.malformed, rogue.notifications, rogue.survived, rogue.refused
        );
        self.outcome
            .failures
            .extend(rogue.violations.iter().map(|v| format!("rogue peer: {v}")));
        let transit_was_down = |at: Instant| {
            self.transit_down
                .iter()
                .any(|(from, until)| *from <= at && until.is_none_or(|until| at <= until))
        };
        let (killed, unexplained): (Vec<_>, Vec<_>) = rogue
            .bare_closes
            .iter()
            .partition(|(at, _)| transit_was_down(*at));
        let _ = writeln!(
            self.outcome.report,
            "rogue peer: {} sessions closed by the transit's agent being killed",
            killed.len()
        );
        self.outcome
            .failures
            .extend(unexplained.iter().map(|(_, after)| {
                format!(
                    "rogue peer: after {after}, the transit closed the session while its agent ran"
                )
            }));
        if rogue.sessions == 0 || rogue.refused == 0 {
            self.outcome.failures.push(
                "the rogue peer never got a session up, or never tried an unconfigured one".into(),
            );
        }
    }

    /// After the last epoch: nothing impaired, every node takes new flows again.
    fn settle(&mut self) -> Result<()> {
        let client = self.lab.topology.clients[0].name.clone();
        let service = self.lab.topology.services[0].clone();
        let computes = self.computes.clone();
        let lab = &*self.lab;
        wait_for(
            "every compute node to take new flows again",
            Duration::from_secs(30),
            || {
                let split = lab.split(&client, &service, 30)?;
                Ok(computes
                    .iter()
                    .all(|c| split.get(c).is_some_and(|n| *n > 0))
                    .then_some(()))
            },
        )
        .with_context(|| tail(&self.lab.logs()))
    }

    /// Every namespace's routes and every agent's pins are those of the start.
    fn judge_leaks(&mut self) -> Result<()> {
        let now = routes(self.lab)?;
        for (node, before) in &self.routes {
            let after = now.get(node).cloned().unwrap_or_default();
            let gained: Vec<&String> = after.difference(before).collect();
            let lost: Vec<&String> = before.difference(&after).collect();
            if !gained.is_empty() || !lost.is_empty() {
                self.outcome.failures.push(format!(
                    "{node}'s routes changed over the soak: gained {gained:?}, lost {lost:?}"
                ));
            }
        }
        let pins_now = pins(self.lab);
        for (node, before) in &self.pins {
            let after = pins_now.get(node).cloned().unwrap_or_default();
            if after != *before {
                self.outcome.failures.push(format!(
                    "{node}'s pins changed over the soak: gained {:?}, lost {:?}",
                    after.difference(before).collect::<Vec<_>>(),
                    before.difference(&after).collect::<Vec<_>>()
                ));
            }
        }
        let _ = writeln!(
            self.outcome.report,
            "routes and pins: {} namespaces, {} routes, {} pins, as at the start",
            self.routes.len(),
            self.routes.values().map(BTreeSet::len).sum::<usize>(),
            self.pins.values().map(BTreeSet::len).sum::<usize>()
        );
        Ok(())
    }
}

/// Whether `fault` may cost `compute` its held connections: it dies, its path is impaired
/// (BFD may then call it dead), or the transit every path crosses loses its agent.
fn hit(fault: &Fault, compute: &str) -> bool {
    match fault {
        Fault::KillAgent(node) => node == compute || node == TRANSIT_NODE,
        Fault::LinkFlap(node) | Fault::Impair { node, .. } => node == compute,
        Fault::MetricStorm(_) => false,
    }
}

/// Waits until every agent has learned every other compute node's locator. The lab serves as
/// soon as one node answers; the routes the soak must find again at its end are those of the
/// converged lab (a first run took its baseline before one node's session was up).
fn wait_for_locators(lab: &CpnLab) -> Result<()> {
    let locators = lab
        .topology
        .computes
        .iter()
        .map(|c| Ok((c.name.clone(), format!("{} ", lab.locator(&c.name)?))))
        .collect::<Result<Vec<_>>>()?;
    wait_for(
        "every agent to learn every compute node's locator",
        Duration::from_secs(30),
        || {
            let converged = routes(lab)?.iter().all(|(node, routes)| {
                locators
                    .iter()
                    .filter(|(compute, _)| compute != node)
                    .all(|(_, locator)| routes.iter().any(|r| r.starts_with(locator)))
            });
            Ok(converged.then_some(()))
        },
    )
    .with_context(|| tail(&lab.logs()))
}

/// Every route of every node's namespace (all tables, both families), as `ip` prints them.
fn routes(lab: &CpnLab) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for node in lab.agents.keys() {
        let ns = lab.lab.node(node)?;
        let mut set = BTreeSet::new();
        for family in ["-4", "-6"] {
            let text = ns.output(&["ip", family, "route", "show", "table", "all"])?;
            set.extend(
                String::from_utf8_lossy(&text.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        out.insert(node.clone(), set);
    }
    Ok(out)
}

/// Every file pinned under each agent's pin directory.
fn pins(lab: &CpnLab) -> BTreeMap<String, BTreeSet<PathBuf>> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if let Ok(relative) = path.strip_prefix(base) {
                out.insert(relative.to_path_buf());
            }
        }
    }
    lab.agents
        .iter()
        .map(|(node, agent)| {
            let mut set = BTreeSet::new();
            walk(&agent.pin_dir, &agent.pin_dir, &mut set);
            (node.clone(), set)
        })
        .collect()
}

/// Copies the lab's logs out of its work directory (removed with the lab) for a post-mortem.
fn keep_logs(workdir: &Path, seed: u64) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cpn-soak-{seed}-logs"));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(workdir)?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().contains(".log") {
            std::fs::copy(entry.path(), dir.join(name))?;
        }
    }
    Ok(dir)
}

/// A process's resident memory, kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
