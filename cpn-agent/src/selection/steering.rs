//! The ingress's steering loop: every interval, for every service, evaluate the candidates,
//! pass the weights through hysteresis, and move the ring towards the new target with bounded
//! churn.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};

use crate::dataplane::{Ids, locators, owner::Command};
use crate::{
    bgp::rib::{Learned, RibIn},
    config::{CapacityConfig, Config, PolicyConfig},
    core::{Snapshot, View},
    dataplane::{Node, NodeState, ServiceAddr},
    metrics::{Capacity, ComputeKind, Measure, NodeMetrics, Sample, Unit, files::RemoteMetrics},
    selection::{
        self, Admin, Candidate, Path, Policy,
        hysteresis::{Hysteresis, Settings, Verdict},
        maglev,
    },
};

/// What to steer, derived from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub ring_size: u32,
    pub hysteresis: Settings,
    pub interval: Duration,
    pub services: Vec<PlannedService>,
    pub explain_file: Option<PathBuf>,
    /// The configured compute nodes (`[[remote]]`), programmed before any ring names them.
    pub remotes: Vec<PlannedRemote>,
    /// Increases with every new plan; `run` reports the last one it has published rings for.
    pub generation: u64,
    /// Nodes learned over BGP, when the node speaks it.
    pub learned: Option<Learning>,
}

/// How to program the nodes of BGP-learned candidates (the routing core's snapshot has the
/// routes and the links they come over).
#[derive(Clone, Debug)]
pub struct Learning {
    /// Outer source address for their encapsulation.
    pub encap_src: Ipv6Addr,
    /// The learned locator routes in the kernel, when this agent installs them: a node whose
    /// SID lies in a learned locator joins the rings only once that route is in (make before
    /// break, the joining side).
    pub locators: Option<locators::Installed>,
    /// Which learned routes are cpn locators.
    pub import: crate::bgp::policy::Import,
    /// How long a learned node waits for STAMP's first measurement of its path before it
    /// joins unmeasured (a node that reflects nothing): its delay could be anything, and a far
    /// node must not take flows for looking unknown.
    pub measure_wait: Duration,
}

/// A `[[remote]]` and its data-plane node.
#[derive(Clone, Debug)]
pub struct PlannedRemote {
    pub name: String,
    pub node: Node,
}

#[derive(Clone, Debug)]
pub struct PlannedService {
    pub id: u32,
    /// The service (BGP routes are per address: its learned candidates are those of its
    /// address).
    pub key: ServiceAddr,
    pub policy: Policy,
    pub candidates: Vec<StaticCandidate>,
}

/// A `[[remote]]` that serves the service.
#[derive(Clone, Debug)]
pub struct StaticCandidate {
    /// The `[[remote]]`'s name (steering gives it its node id).
    pub name: String,
    pub capacity: CapacityConfig,
    pub path: Path,
    pub metrics_file: Option<PathBuf>,
    pub drained: bool,
    pub service: ServiceAddr,
}

pub fn planned_service(id: u32, policy: &PolicyConfig, config: &Config) -> PlannedService {
    let key = policy.key();
    let candidates = config
        .remotes
        .iter()
        .filter_map(|remote| {
            let served = remote.services.iter().find(|s| s.key() == key)?;
            Some(StaticCandidate {
                name: remote.name.clone(),
                capacity: served.capacity,
                path: Path {
                    latency: remote.latency_ms.map_or(Measure::Unknown, |ms| {
                        Measure::Known(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                    }),
                    loss: remote.loss.map_or(Measure::Unknown, Measure::Known),
                },
                metrics_file: remote.metrics_file.clone(),
                drained: remote.drained,
                service: key,
            })
        })
        .collect();
    PlannedService {
        id,
        key,
        policy: policy.policy(),
        candidates,
    }
}

impl StaticCandidate {
    /// The candidate with its current metrics: from its published file if it has one, as the
    /// core last read it (a node whose file is missing has no fresh metrics and is excluded
    /// as stale), else idle at its configured capacity.
    fn resolve(&self, node: u32, remote: &RemoteMetrics, now: SystemTime) -> Candidate {
        let metrics = match &self.metrics_file {
            Some(path) => remote
                .get(path)
                .and_then(|published| {
                    published
                        .services
                        .iter()
                        .find(|s| s.service == self.service)
                })
                .map(|s| s.metrics.clone())
                .unwrap_or_default(),
            None => NodeMetrics {
                capacity: ComputeKind::ALL
                    .iter()
                    .filter(|k| self.capacity.get(**k) > 0.0)
                    .map(|k| {
                        let total = Sample::nominal(self.capacity.get(*k), Unit::OpsPerSecond, now);
                        (*k, Capacity { total, free: total })
                    })
                    .collect(),
                ..NodeMetrics::default()
            },
        };
        Candidate {
            node,
            name: self.name.clone(),
            metrics,
            path: self.path,
            admin: if self.drained {
                Admin::Drained
            } else {
                Admin::Up
            },
        }
    }
}

#[derive(Debug, Default)]
struct ServiceState {
    hysteresis: Hysteresis,
    current: Vec<u32>,
    target: Vec<u32>,
    last_move: Option<Instant>,
    explanation: Option<Explanation>,
    target_changes: u64,
    ring_updates: u64,
}

/// Why a service's flows go where they go: the latest decision and the hysteresis state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// The service's id (its ring, its counters) ...
    pub service: u32,
    /// ... and the service (as `address`, `protocol`, `port`).
    #[serde(flatten)]
    pub key: ServiceAddr,
    pub decision: selection::Decision,
    /// What hysteresis made of the latest weights.
    pub verdict: Verdict,
    /// The weights the current target ring was built from.
    pub published: Option<std::collections::BTreeMap<u32, f64>>,
    /// Ring slots still to move towards the target (churn limit).
    pub pending_slots: usize,
    /// New target rings built (hysteresis let the weights through), since the agent started.
    pub target_changes: u64,
    /// Rings written to the data plane (each a step towards a target), since the agent started.
    pub ring_updates: u64,
}

/// What steering reports back to the agent's other tasks.
#[derive(Debug)]
pub struct Outputs {
    /// The plan generation rings have been published for.
    pub settled: watch::Sender<u64>,
    /// The version of the routing core's snapshot the last applied step acted on (an
    /// operator's drain is in the rings once this reaches the version that published it).
    pub stepped: watch::Sender<u64>,
    pub explained: watch::Sender<Vec<Explanation>>,
    /// The segments of the nodes in the data plane: the kernel routes of learned locators must
    /// stay until no node needs them (make before break; see locators.rs).
    pub in_use: watch::Sender<BTreeSet<Ipv6Addr>>,
    /// Node id → name, for the operator's views.
    pub names: watch::Sender<BTreeMap<u32, String>>,
    /// The candidates' nodes, for STAMP to measure their paths.
    pub targets: watch::Sender<crate::sensing::stamp::Targets>,
}

/// Publishes why each service's ring is what it is (and writes it to the explain file).
fn explain(
    plan: &Plan,
    states: &HashMap<u32, ServiceState>,
    explained: &watch::Sender<Vec<Explanation>>,
) {
    let explanations: Vec<Explanation> = plan
        .services
        .iter()
        .filter_map(|s| states.get(&s.id).and_then(|st| st.explanation.clone()))
        .collect();
    if let Some(path) = &plan.explain_file
        && let Err(error) = crate::write_json(path, &explanations)
    {
        tracing::warn!(path = %path.display(), %error, "writing the explanation");
    }
    explained.send_replace(explanations);
}

/// Sends the owner a barrier and waits until it has applied everything sent before it; false
/// once the owner is gone.
async fn applied_by_owner(
    commands: &mpsc::Sender<Command>,
    applied: &mut watch::Receiver<u64>,
    barriers: &mut u64,
) -> bool {
    *barriers += 1;
    let mark = *barriers;
    commands.send(Command::Barrier(mark)).await.is_ok()
        && applied.wait_for(|&done| done >= mark).await.is_ok()
}

/// Follows the plans until their sender goes, and the routing core's snapshots. `owner` is
/// the data-plane owner's command channel and its watch of applied barriers: a step's weights
/// and nodes in use are reported once the owner has applied what the step sent. A step runs on
/// a new plan, on news in the core's snapshot (routes, drains, a link's liveness), on every
/// installed locator route (a node waiting for its route joins at once), and at least every
/// `plan.interval` (metric ages, dwell times, link measurements).
pub async fn run(
    mut plans: watch::Receiver<Plan>,
    mut core: View,
    owner: (mpsc::Sender<Command>, watch::Receiver<u64>),
    outputs: Outputs,
    inherited: BTreeMap<u32, Vec<Ipv6Addr>>,
) {
    if !inherited.is_empty() {
        tracing::info!(
            nodes = inherited.len(),
            "taking over a data plane that forwards: its nodes keep their ids, and steering waits for the peers' routes before it changes anything (RFC 4724 §4.1)"
        );
    }
    // The channel starts with a placeholder (generation 0) until the agent has read its
    // configuration: a step on it would steer nothing and take down every node a previous
    // agent left, moving the flows it held.
    if plans.wait_for(|plan| plan.generation > 0).await.is_err() {
        return;
    }
    let mut steering = Steering::new(owner, outputs, inherited);
    let mut locator_changes: Option<locators::Installed> = None;
    let mut core_running = true;
    loop {
        let plan = plans.borrow_and_update().clone();
        if locator_changes.is_none()
            && let Some(learning) = &plan.learned
        {
            locator_changes.clone_from(&learning.locators);
        }
        // Marked seen before they are read below, so no change between is missed.
        if let Some(changes) = &mut locator_changes {
            changes.mark_unchanged();
        }
        let snapshot = core.borrow_and_update().clone();
        if steering.step(&plan, &snapshot).await.is_none() {
            return;
        }
        let regular = tokio::time::Instant::now() + plan.interval.max(Duration::from_millis(10));
        // A burst of snapshots while the step ran is one wake; one without news waits on.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(regular) => break,
                changed = plans.changed() => if changed.is_err() { return } else { break },
                changed = core.changed(), if core_running => match changed {
                    Ok(()) if core.borrow().news_since(&snapshot) => break,
                    Ok(()) => {}
                    // The agent is stopping; the plans' sender goes next.
                    Err(_) => core_running = false,
                },
                () = changed_or_never(locator_changes.as_mut()) => break,
            }
        }
    }
}

/// Steering's own state between steps.
struct Steering {
    commands: mpsc::Sender<Command>,
    applied: watch::Receiver<u64>,
    barriers: u64,
    outputs: Outputs,
    states: HashMap<u32, ServiceState>,
    /// BGP-learned nodes programmed into the data plane, by id.
    programmed: BTreeMap<u32, Node>,
    /// Node ids by name, static and learned alike, stable while the node exists (node 0 stays
    /// unused: a zeroed ring slot then never names a real node). Steering owns them, not the
    /// routing core: an id is free again only once no ring names it.
    ids: Ids<String>,
    /// When each learned node was first seen: it waits for STAMP from then on.
    appeared: HashMap<String, Instant>,
    /// The nodes a previous agent left in the data plane this one took over (a restart over
    /// its pins), by id, with their segments. A node that leads to the same segments takes
    /// the same id, so that the flows on it stay there; the others go once this agent has
    /// the peers' routes.
    inherited: BTreeMap<u32, Vec<Ipv6Addr>>,
    /// When the peers' routes were in (the deferral's end) while inherited nodes were still
    /// held: from then on they wait [`LOCATOR_WAIT`] at most for their locator routes.
    routes_in_at: Option<Instant>,
}

/// How long inherited nodes wait, once the peers' routes are in, for the kernel routes of their
/// locators (installed by the locators task on the same snapshot, moments later): a node
/// without one is no candidate yet, and taking it down would move the flows it holds.
const LOCATOR_WAIT: Duration = Duration::from_secs(5);

impl Steering {
    fn new(
        owner: (mpsc::Sender<Command>, watch::Receiver<u64>),
        outputs: Outputs,
        inherited: BTreeMap<u32, Vec<Ipv6Addr>>,
    ) -> Self {
        let (commands, applied) = owner;
        Self {
            commands,
            applied,
            barriers: 0,
            outputs,
            states: HashMap::new(),
            programmed: BTreeMap::new(),
            ids: Ids::starting_at(1),
            appeared: HashMap::new(),
            inherited,
            routes_in_at: None,
        }
    }

    /// Whether the inherited nodes (if any, and nodes are learned) are still held: until the
    /// peers' End-of-RIB (or the deferral's end), then while the locator route of one of them
    /// is still to come (at most [`LOCATOR_WAIT`]).
    fn holds_inherited(&mut self, plan: &Plan, snapshot: &Snapshot) -> bool {
        let Some(learning) = plan.learned.as_ref().filter(|_| !self.inherited.is_empty()) else {
            return false;
        };
        if !snapshot.rib.deferral_over() {
            return true;
        }
        let routes_in_at = *self.routes_in_at.get_or_insert_with(Instant::now);
        let unrouted = unrouted_locators(learning, &snapshot.rib);
        let waiting = self
            .inherited
            .values()
            .flatten()
            .any(|segment| unrouted.iter().any(|net| net.contains(segment)));
        waiting && routes_in_at.elapsed() < LOCATOR_WAIT
    }

    /// One step on `snapshot`: nodes, rings, removals, then the reports. `None` once the owner
    /// is gone.
    async fn step(&mut self, plan: &Plan, snapshot: &Snapshot) -> Option<()> {
        // Restarted over a data plane that forwards: it goes on doing so, untouched, until the
        // peers' End-of-RIB (or the deferral's end) says what the routes are (RFC 4724 §4.1).
        // Rings built from a half-learned RIB would move new flows, and ids handed out in the
        // order routes arrive would move the old ones.
        if self.holds_inherited(plan, snapshot) {
            self.report(plan, snapshot.version);
            return Some(());
        }
        let mut sent = false;
        self.states
            .retain(|id, _| plan.services.iter().any(|s| s.id == *id));
        let learned = plan.learned.as_ref().map_or_else(Vec::new, |learning| {
            learned_candidates(learning, snapshot, &mut self.ids, &self.inherited)
        });
        let started = Instant::now();
        self.note_appearances(&learned, started);
        let measure_wait = plan
            .learned
            .as_ref()
            .map_or(Duration::ZERO, |l| l.measure_wait);
        // Every node the rings may name: the configured ones, then the learned ones (a name
        // both configured and learned is the configured node).
        let mut nodes: BTreeMap<u32, (&Node, &str)> = BTreeMap::new();
        for remote in &plan.remotes {
            let preferred = inherited_id(&self.inherited, &remote.node.segments);
            let id = self.ids.get_preferring(&remote.name, preferred, |id| {
                self.inherited.contains_key(&id)
            });
            nodes.insert(id, (&remote.node, &remote.name));
        }
        for (id, node, (_, candidate)) in &learned {
            nodes.entry(*id).or_insert((node, &candidate.name));
        }
        // Nodes no longer there (removed from the configuration, withdrawn, their session or
        // link down), and those the previous agent left that did not come back.
        let inherited = std::mem::take(&mut self.inherited);
        let vanished = self
            .programmed
            .keys()
            .chain(inherited.keys())
            .copied()
            .filter(|id| !nodes.contains_key(id))
            .collect::<BTreeSet<u32>>();
        sent |= program_nodes(&nodes, &vanished, &mut self.programmed, &self.commands).await?;
        let now = SystemTime::now();
        let mut targets = crate::sensing::stamp::Targets::new();
        for service in &plan.services {
            let state = self.states.entry(service.id).or_default();
            let mut candidates: Vec<Candidate> = service
                .candidates
                .iter()
                .map(|c| c.resolve(self.ids.get(&c.name), &snapshot.remote, now))
                .chain(
                    learned
                        .iter()
                        .filter(|(_, _, c)| c.0 == service.key.addr)
                        .map(|(_, _, c)| c.1.clone()),
                )
                .collect();
            for c in &mut candidates {
                measured_path(&mut c.path, snapshot.paths.get(&c.name));
                let waiting = self
                    .appeared
                    .get(&c.name)
                    .is_some_and(|at| started.duration_since(*at) < measure_wait);
                if waiting && !c.path.latency.is_known() && c.admin == Admin::Up {
                    c.admin = Admin::Measuring;
                }
                if let (IpAddr::V6(address), Some((node, _))) =
                    (service.key.addr, nodes.get(&c.node))
                {
                    targets.entry(c.name.clone()).or_insert_with(|| {
                        crate::sensing::stamp::Target {
                            node: (*node).clone(),
                            address,
                        }
                    });
                }
            }
            if let Some(ring) = step(plan, service, &candidates, &snapshot.drained, state) {
                let publish = Command::PublishRing {
                    service: service.id,
                    ring,
                };
                self.commands.send(publish).await.ok()?;
                sent = true;
            }
        }
        // Vanished nodes go once the rings above no longer name them.
        for id in vanished {
            self.programmed.remove(&id);
            self.ids.forget(id);
            self.commands.send(Command::RemoveNode(id)).await.ok()?;
            sent = true;
        }
        // Report the step only once the data plane does what it says.
        if sent && !applied_by_owner(&self.commands, &mut self.applied, &mut self.barriers).await {
            return None;
        }
        self.outputs.targets.send_if_modified(|old| {
            let changed = *old != targets;
            *old = targets;
            changed
        });
        self.report(plan, snapshot.version);
        Some(())
    }

    /// A learned node that serves an IPv6 service is measured by STAMP: it waits for that
    /// from when it first appeared.
    fn note_appearances(&mut self, learned: &[(u32, Node, (IpAddr, Candidate))], now: Instant) {
        self.appeared.retain(|name, _| {
            learned
                .iter()
                .any(|(_, _, (address, c))| &c.name == name && address.is_ipv6())
        });
        for (_, _, (address, c)) in learned {
            if address.is_ipv6() {
                self.appeared.entry(c.name.clone()).or_insert(now);
            }
        }
    }

    fn report(&self, plan: &Plan, version: u64) {
        self.outputs.settled.send_replace(plan.generation);
        let programmed = &self.programmed;
        self.outputs.in_use.send_if_modified(|used| {
            let now = programmed
                .values()
                .flat_map(|n| n.segments.iter().copied())
                .collect();
            let changed = *used != now;
            *used = now;
            changed
        });
        explain(plan, &self.states, &self.outputs.explained);
        let names = self.ids.names();
        self.outputs.names.send_if_modified(|shown| {
            let changed = *shown != names;
            *shown = names;
            changed
        });
        // Last: whoever waits for this version finds the views above up to date.
        self.outputs.stepped.send_replace(version);
    }
}

/// Programs the nodes (configured and learned) that are new or changed (before any ring names them) and marks
/// the vanished ones down: they stop taking flows now, one write each, and the data plane
/// re-hashes their flows over the ring (`ring_slot`) while rings without them are built and
/// written. Whether anything was sent; `None` once the owner is gone.
async fn program_nodes(
    nodes: &BTreeMap<u32, (&Node, &str)>,
    vanished: &BTreeSet<u32>,
    programmed: &mut BTreeMap<u32, Node>,
    commands: &mpsc::Sender<Command>,
) -> Option<bool> {
    let mut sent = false;
    for (&id, &(node, name)) in nodes {
        if programmed.get(&id) != Some(node) {
            programmed.insert(id, node.clone());
            warn_if_path_too_small(name.to_owned(), node);
            let program = Command::SetNode {
                id,
                node: node.clone(),
            };
            commands.send(program).await.ok()?;
            sent = true;
        }
    }
    for &id in vanished {
        let down = Command::SetNodeState {
            id,
            state: NodeState::Down,
        };
        commands.send(down).await.ok()?;
        sent = true;
    }
    Some(sent)
}

/// Resolves when the watched value changes; never without one (or once its sender is gone).
async fn changed_or_never<T>(changes: Option<&mut watch::Receiver<T>>) {
    if let Some(changes) = changes
        && changes.changed().await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Warns (in the background) when a node's encapsulated packets would leave by an interface
/// whose MTU cannot carry a 1280-byte IPv6 packet plus the encapsulation.
pub fn warn_if_path_too_small(name: String, node: &Node) {
    let Some(first) = node.segments.first().copied() else {
        return;
    };
    let encap_len = node.encap_len();
    tokio::spawn(async move {
        let checked = match crate::dataplane::kernel::KernelRoutes::connect() {
            Ok(kernel) => kernel.encap_mtu_warnings([(name, first, encap_len)]).await,
            Err(error) => Err(error),
        };
        match checked {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
            }
            Err(error) => tracing::debug!(error = %format!("{error:#}"), "egress MTU not checked"),
        }
    });
}

/// Candidates from the snapshot's Adj-RIB-In: (node id, its node entry, (service address,
/// candidate)). A node is named by the name in its CPN metric attribute, else by its SID. A
/// site heard over several paths is one candidate (its packets follow the SID's route
/// whichever path brought it), by the path of lowest AIGP. Its path is unknown until STAMP has
/// measured it (`measured_path`).
fn learned_candidates(
    learning: &Learning,
    snapshot: &Snapshot,
    ids: &mut Ids<String>,
    inherited: &BTreeMap<u32, Vec<Ipv6Addr>>,
) -> Vec<(u32, Node, (IpAddr, Candidate))> {
    let routes: Vec<Learned> = snapshot
        .rib
        .routes()
        .filter(|l| l.route.is_service())
        .collect();
    let unrouted = unrouted_locators(learning, &snapshot.rib);
    let mut candidates: Vec<_> = routes
        .into_iter()
        .filter_map(|Learned { route, .. }| {
            let sid = route.service?.sid;
            if unrouted.iter().any(|net| net.contains(&sid)) {
                tracing::debug!(%sid, "waiting for the locator route of a learned node");
                return None;
            }
            let aigp = route.aigp.unwrap_or(u64::MAX);
            let (name, metrics) = match route.metrics {
                Some(m) => (m.node, m.metrics),
                None => (sid.to_string(), NodeMetrics::default()),
            };
            let id = ids.get_preferring(&name, inherited_id(inherited, &[sid]), |id| {
                inherited.contains_key(&id)
            });
            let node = Node {
                segments: vec![sid],
                encap_src: learning.encap_src,
                reduced: false,
                state: NodeState::Active,
            };
            let candidate = Candidate {
                node: id,
                name,
                metrics,
                path: Path::default(),
                admin: Admin::Up,
            };
            Some((aigp, (id, node, (route.prefix.addr(), candidate))))
        })
        .collect();
    candidates.sort_by_key(|(aigp, (id, _, (prefix, _)))| (*prefix, *id, *aigp));
    candidates.dedup_by_key(|(_, (id, _, (prefix, _)))| (*prefix, *id));
    candidates.into_iter().map(|(_, c)| c).collect()
}

/// The id of the inherited node that leads to `segments`, if one does.
fn inherited_id(inherited: &BTreeMap<u32, Vec<Ipv6Addr>>, segments: &[Ipv6Addr]) -> Option<u32> {
    inherited
        .iter()
        .find(|(_, s)| s.as_slice() == segments)
        .map(|(id, _)| *id)
}

/// What STAMP measured along the candidate's own encapsulation replaces what the configuration
/// said (a `[[remote]]`'s `latency_ms` and `loss`), part by part: a part it has not measured
/// stays as it was.
fn measured_path(path: &mut Path, measured: Option<&crate::sensing::stamp::session::PathStats>) {
    let Some(m) = measured else { return };
    if m.delay.is_known() {
        path.latency = m.delay;
    }
    if m.loss.is_known() {
        path.loss = m.loss;
    }
}

/// The locators learned in BGP whose kernel route is not installed yet (none when this agent
/// does not install locator routes).
fn unrouted_locators(learning: &Learning, rib: &RibIn) -> Vec<ipnet::Ipv6Net> {
    let Some(installed) = &learning.locators else {
        return Vec::new();
    };
    let installed = installed.borrow().clone();
    locators::wanted(rib, None, &learning.import)
        .into_keys()
        .filter(|key| {
            !installed
                .get(key)
                .is_some_and(locators::Locator::is_installed)
        })
        .filter_map(|(prefix, len)| ipnet::Ipv6Net::new(prefix, len).ok())
        .collect()
}

/// One steering step for one service (its static candidates plus `learned` ones); the ring to
/// publish, if any.
fn step(
    plan: &Plan,
    service: &PlannedService,
    candidates: &[Candidate],
    drained: &BTreeSet<String>,
    state: &mut ServiceState,
) -> Option<Vec<u32>> {
    let now = SystemTime::now();
    let mut candidates = candidates.to_vec();
    for c in candidates.iter_mut().filter(|c| drained.contains(&c.name)) {
        c.admin = Admin::Drained;
    }
    let decision = selection::select(&service.policy, &candidates, now);
    let weighted = decision.weighted();
    let instant = Instant::now();
    let verdict = state
        .hysteresis
        .decide(&plan.hysteresis, &weighted, instant);
    if verdict.publishes() {
        state.target = maglev::build(plan.ring_size, &weighted);
        state.target_changes += 1;
        let shares: Vec<String> = decision
            .evaluations
            .iter()
            .map(|e| match &e.excluded {
                Some(why) => format!("{}=excluded({why:?})", e.name),
                None => format!("{}={:.3}", e.name, e.weight),
            })
            .collect();
        tracing::info!(service = service.id, ?verdict, weights = %shares.join(" "), "new target ring");
    }
    let pending_slots = state
        .current
        .iter()
        .zip(&state.target)
        .filter(|(a, b)| a != b)
        .count()
        + state.current.len().abs_diff(state.target.len());
    state.explanation = Some(Explanation {
        service: service.id,
        key: service.key,
        decision,
        verdict,
        published: state.hysteresis.published().cloned(),
        pending_slots,
        target_changes: state.target_changes,
        ring_updates: state.ring_updates,
    });
    if state.current == state.target {
        return None;
    }
    let urgent =
        matches!(verdict, Verdict::First | Verdict::Membership) || state.current.is_empty();
    let rested = state
        .last_move
        .is_none_or(|at| instant.duration_since(at) >= plan.hysteresis.min_dwell);
    if !urgent && !rested {
        return None;
    }
    let next = if state.current.is_empty() || state.target.is_empty() {
        state.target.clone()
    } else {
        let budget = (plan.hysteresis.max_churn * f64::from(plan.ring_size)).ceil();
        // Lossless: the budget is at most the ring size, far below 2^52.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "see above"
        )]
        let budget = budget as usize;
        maglev::limit_churn(&state.current, &state.target, budget).0
    };
    state.current.clone_from(&next);
    state.last_move = Some(instant);
    state.ring_updates += 1;
    if let Some(e) = &mut state.explanation {
        e.ring_updates = state.ring_updates;
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::route::{Route, ServiceSid};

    /// The example ingress sets latency but no loss for its remotes: loss is unknown, not 0.
    #[test]
    fn a_remote_path_not_configured_is_unknown() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/ingress.toml");
        let config = crate::config::load(&path).unwrap();
        let planned = planned_service(0, &config.policies[0], &config);
        let edge1 = planned
            .candidates
            .iter()
            .find(|c| c.name == "edge1")
            .expect("edge1 serves the first policy's service");
        assert_eq!(edge1.path.latency, Measure::Known(Duration::from_millis(2)));
        assert_eq!(edge1.path.loss, Measure::Unknown);
    }

    fn route(prefix: &str, sid: Option<&str>) -> Route {
        Route {
            prefix: prefix.parse().unwrap(),
            path_id: 1,
            next_hop: "2001:db8:100::2".parse().unwrap(),
            service: sid.map(|s| ServiceSid {
                sid: s.parse().unwrap(),
                behavior: 20,
            }),
            aigp: None,
            // A cpn agent's locator route names its node (the import policy's mark).
            metrics: sid.is_none().then(|| crate::bgp::metric_attr::CpnMetrics {
                node: "edge1".into(),
                ..Default::default()
            }),
            link_bandwidth: None,
            as_path: vec![65000],
            originator_id: None,
            cluster_list: vec![],
        }
    }

    /// After a restart over a running data plane, a learned node that leads where an
    /// inherited node entry leads takes its id (the flows on it name that id); the others get
    /// free ones.
    #[test]
    fn a_learned_node_takes_the_id_of_the_inherited_node_with_its_segments() {
        let peer: IpAddr = "2001:db8:11::2".parse().unwrap();
        let site = |path_id, sid: &str| Route {
            path_id,
            next_hop: "2001:db8:11::2".parse().unwrap(),
            aigp: Some(0),
            ..route("2001:db8:cafe::1/128", Some(sid))
        };
        let mut rib = crate::bgp::rib::RibIn::default();
        rib.insert_for_test(peer, site(1, "fc00:1::d6"));
        rib.insert_for_test(peer, site(2, "fc00:2::d6"));
        let snapshot = Snapshot {
            rib: std::sync::Arc::new(rib),
            ..Snapshot::default()
        };
        let learning = Learning {
            encap_src: Ipv6Addr::LOCALHOST,
            locators: None,
            import: crate::bgp::policy::Import::default(),
            measure_wait: Duration::from_secs(1),
        };
        let inherited = BTreeMap::from([(1, vec!["fc00:2::d6".parse().unwrap()])]);
        let learned =
            learned_candidates(&learning, &snapshot, &mut Ids::starting_at(1), &inherited);
        let ids: BTreeMap<&str, u32> = learned
            .iter()
            .map(|(id, _, (_, c))| (c.name.as_str(), *id))
            .collect();
        assert_eq!(ids, BTreeMap::from([("fc00:1::d6", 2), ("fc00:2::d6", 1)]));
    }

    /// The soak's finding: steering started before the agent's first plan stepped on the
    /// channel's placeholder, took every inherited node down and so moved every held flow.
    #[tokio::test]
    async fn steering_waits_for_the_first_plan_before_it_touches_inherited_nodes() {
        let segment: Ipv6Addr = "fc00:2::d6".parse().unwrap();
        let (plan_sender, plans) = watch::channel(Plan::default());
        let (_core, view) = watch::channel(Snapshot::default());
        let (commands, mut received) = mpsc::channel(16);
        let (_applied_sender, applied) = watch::channel(0);
        let outputs = Outputs {
            settled: watch::channel(0).0,
            stepped: watch::channel(0).0,
            explained: watch::channel(Vec::new()).0,
            in_use: watch::channel(BTreeSet::new()).0,
            names: watch::channel(BTreeMap::new()).0,
            targets: watch::channel(crate::sensing::stamp::Targets::new()).0,
        };
        let inherited = BTreeMap::from([(1, vec![segment])]);
        let steering = tokio::spawn(run(plans, view, (commands, applied), outputs, inherited));
        // Steering runs until it waits (one thread: it runs while this test yields).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            received.try_recv().is_err(),
            "steering acted before it had a plan"
        );
        let node = Node {
            segments: vec![segment],
            encap_src: Ipv6Addr::LOCALHOST,
            reduced: false,
            state: NodeState::Active,
        };
        plan_sender.send_replace(Plan {
            generation: 1,
            interval: Duration::from_secs(1),
            remotes: vec![PlannedRemote {
                name: "edge2".into(),
                node: node.clone(),
            }],
            ..Plan::default()
        });
        let first = received.recv().await.expect("steering sends the node");
        assert!(
            matches!(&first, Command::SetNode { id: 1, node: n } if *n == node),
            "the node keeps its id and is not taken down first: {first:?}"
        );
        steering.abort();
    }

    /// A site heard over several paths is one candidate; its path is unknown until STAMP
    /// measures it, whatever AIGP says (agents add no IGP distance to it), and then STAMP's,
    /// part by part.
    #[test]
    fn a_learned_path_is_what_stamp_measured_and_unknown_before() {
        let direct: IpAddr = "2001:db8:11::2".parse().unwrap();
        let reflector: IpAddr = "2001:db8:13::2".parse().unwrap();
        let via = |path_id, sid, next_hop: &str, aigp| Route {
            path_id,
            next_hop: next_hop.parse().unwrap(),
            aigp,
            ..route("2001:db8:cafe::1/128", Some(sid))
        };
        let rib = {
            let mut rib = crate::bgp::rib::RibIn::default();
            rib.insert_for_test(direct, via(1, "fc00:1::d6", "2001:db8:11::2", Some(100)));
            rib.insert_for_test(reflector, via(1, "fc00:1::d6", "2001:db8:11::2", Some(0)));
            rib.insert_for_test(reflector, via(2, "fc00:2::d6", "2001:db8:12::2", Some(300)));
            std::sync::Arc::new(rib)
        };
        let snapshot = Snapshot {
            rib,
            ..Snapshot::default()
        };
        let learning = Learning {
            encap_src: Ipv6Addr::LOCALHOST,
            locators: None,
            import: crate::bgp::policy::Import::default(),
            measure_wait: Duration::from_secs(1),
        };
        let learned = learned_candidates(
            &learning,
            &snapshot,
            &mut Ids::starting_at(1),
            &BTreeMap::new(),
        );
        let names: Vec<&str> = learned
            .iter()
            .map(|(_, _, (_, c))| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["fc00:1::d6", "fc00:2::d6"],
            "one candidate per site"
        );
        assert!(
            learned
                .iter()
                .all(|(_, _, (_, c))| c.path == Path::default()),
            "unknown until measured: {learned:?}"
        );

        let mut path = Path::default();
        let mut stats = crate::sensing::stamp::session::PathStats {
            loss: Measure::Known(0.1),
            ..Default::default()
        };
        measured_path(&mut path, Some(&stats));
        assert_eq!(
            (path.latency, path.loss),
            (Measure::Unknown, Measure::Known(0.1)),
            "part by part"
        );
        stats.delay = Measure::Known(Duration::from_millis(20));
        measured_path(&mut path, Some(&stats));
        assert_eq!(path.latency, Measure::Known(Duration::from_millis(20)));
        let configured = Path {
            latency: Measure::Known(Duration::from_millis(5)),
            loss: Measure::Unknown,
        };
        let mut kept = configured;
        measured_path(&mut kept, None);
        assert_eq!(
            kept, configured,
            "nothing measured: the configured path stays"
        );
    }

    #[test]
    fn a_learned_node_joins_once_its_locator_is_routed() {
        let neighbor: IpAddr = "2001:db8:100::2".parse().unwrap();
        let rib = {
            let mut rib = crate::bgp::rib::RibIn::default();
            rib.insert_for_test(neighbor, route("2001:db8:cafe::1/128", Some("fc00:1::d6")));
            rib.insert_for_test(neighbor, route("fc00:1::/32", None));
            Snapshot {
                rib: std::sync::Arc::new(rib),
                ..Snapshot::default()
            }
        };
        let (publish, installed) = watch::channel(locators::Locators::new());
        let mut learning = Learning {
            encap_src: Ipv6Addr::LOCALHOST,
            locators: Some(installed.clone()),
            import: crate::bgp::policy::Import::default(),
            measure_wait: Duration::from_secs(1),
        };
        assert!(
            learned_candidates(&learning, &rib, &mut Ids::starting_at(1), &BTreeMap::new())
                .is_empty(),
            "no route to fc00:1::/32 yet"
        );
        let next_hop = "2001:db8:100::2".parse().unwrap();
        publish.send_modify(|l| {
            l.insert(
                ("fc00:1::".parse().unwrap(), 32),
                locators::Locator::Unresolved {
                    next_hop,
                    why: crate::dataplane::kernel::Unresolved::NoRoute,
                },
            );
        });
        assert!(
            learned_candidates(&learning, &rib, &mut Ids::starting_at(1), &BTreeMap::new())
                .is_empty(),
            "the locator's next hop does not resolve"
        );
        publish.send_modify(|l| {
            l.insert(
                ("fc00:1::".parse().unwrap(), 32),
                locators::Locator::Installed {
                    next_hop,
                    via: crate::dataplane::kernel::Resolved {
                        gateway: next_hop,
                        oif: 2,
                    },
                },
            );
        });
        let joined =
            learned_candidates(&learning, &rib, &mut Ids::starting_at(1), &BTreeMap::new());
        assert_eq!(joined.len(), 1);
        assert_eq!(
            joined[0].1.segments,
            vec!["fc00:1::d6".parse::<Ipv6Addr>().unwrap()]
        );
        // An agent that installs no locator routes relies on other routing.
        publish.send_modify(BTreeMap::clear);
        learning.locators = None;
        assert_eq!(
            learned_candidates(&learning, &rib, &mut Ids::starting_at(1), &BTreeMap::new()).len(),
            1
        );
    }
}
