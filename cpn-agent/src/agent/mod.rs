//! The running agent: who talks to whom.
//!
//! ```text
//!   /proc ──(interval)──▶ reporting ◀──(inotify)── in-flight files        (compute role)
//!                             └──▶ publish_file (JSON), own routes (watch) ──▶ BGP
//!
//!   BGP sessions ── RibCommand ──┐                                         (ingress role)
//!   STAMP ── Paths ──────────────┤
//!   BFD ── Event::Bfd ───────────┼──▶ routing core ── Snapshot (watch) ──┬──▶ sessions (export,
//!   control socket: drain ───────┘    (crate::core)                      │    BFD down)
//!                                                                        ├──▶ locators ──▶ kernel
//!                                                                        ▼
//!   [[remote]] + metrics files ─────▶ steering ── Command (mpsc, in order) ──┐
//!   config at start / on SIGHUP ──▶ reconcile ──(owns node ids)─────────────┼──▶ owner
//!                     steering ◀── barriers applied ────────────────────────┤      │
//!   netlink (routes, rules, neighbours) ──▶ nexthops ◀── first segments ─────┘  pinned
//!   netlink (both families, all of it) ──▶ follow_routing_changes ──▶ owner     BPF maps
//! ```
//! The owner task is the only one that touches the maps. Steering steps on news in the core's
//! snapshot (routes, drains, a link's liveness), on a new plan and an installed locator, and
//! at least every `[selection] interval_ms`; it reports a step once the owner has applied it
//! (a barrier).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, watch};

use crate::{
    bgp::rib::RibIn,
    config::{Config, Decap},
    dataplane::{
        Dataplane, Ids, Node, NodeState, ServiceAddr, ServiceConfig, SidBehavior,
        kernel::{KernelRoutes, KernelSid},
        locators, nexthop_cache,
        owned_routes::{self, OwnedRoute},
        owner::{self, Command, FirstSegments},
    },
    metrics::reporting,
    selection::steering::{self, Explanation},
};

/// The agent's long-lived state.
#[derive(Debug)]
pub struct Agent {
    commands: mpsc::Sender<Command>,
    /// The routing core's inbox.
    core: mpsc::Sender<crate::core::Event>,
    /// The task that follows the `[[remote]]` metrics files, and the files it follows.
    remote_metrics: Option<(Vec<std::path::PathBuf>, tokio::task::JoinHandle<()>)>,
    owner: tokio::task::JoinHandle<Dataplane>,
    service_ids: Ids<ServiceAddr>,
    /// BGP-learned candidates, when `[bgp]` is configured.
    learning: Option<steering::Learning>,
    /// What was applied from the last configuration (to remove what a reload drops).
    applied: Applied,
    steering: watch::Sender<steering::Plan>,
    /// The last plan generation steering has published rings for.
    settled: watch::Receiver<u64>,
    generation: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Opened on first use: nodes without kernel routes need no netlink socket.
    kernel: Option<KernelRoutes>,
    /// The kernel routes the configuration asks for, kept in place by their task once there
    /// are any.
    owned_routes: Option<watch::Sender<Vec<OwnedRoute>>>,
    /// Locator routes learned in BGP and installed in the kernel.
    learned_locators: locators::Installed,
    /// Each BGP session's state and counters, for operators.
    sessions: BTreeMap<IpAddr, watch::Receiver<crate::bgp::session::SessionStats>>,
    /// BFD's dropped packets, when it runs.
    bfd_drops: Option<watch::Receiver<crate::sensing::bfd::Drops>>,
}

/// What the routing core and the sensing around it give the rest of the agent.
struct Started {
    core: crate::core::Core,
    /// The core's task and link sensing's.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// BFD's dropped packets, when it runs.
    bfd_drops: Option<watch::Receiver<crate::sensing::bfd::Drops>>,
    /// Where steering names the candidates STAMP measures.
    stamp_targets: watch::Sender<crate::sensing::stamp::Targets>,
}

/// Starts the routing core, which every other task talks to, and sensing (STAMP, BFD), which
/// feeds it. `took_over`: a previous agent's data plane goes on forwarding under this one.
async fn start_core(config: &Config, took_over: bool) -> Result<Started> {
    let mut tasks = Vec::new();
    let rib = config.bgp.as_ref().map_or_else(RibIn::default, |bgp| {
        RibIn::new(crate::bgp::speaker::deferral(
            &speaker_config(config, bgp),
            took_over,
        ))
    });
    let (stamp_targets, targets) = watch::channel(crate::sensing::stamp::Targets::new());
    let mut paths = None;
    // An ingress measures its candidates' paths from its encapsulation source; a compute node
    // reflects.
    if let (false, Some(source)) = (config.policies.is_empty(), config.srv6.source) {
        let (measured, sender) =
            crate::sensing::stamp::spawn_sender(config.stamp.settings(), source, targets)
                .context("starting STAMP (a raw IPv6 socket: the agent needs CAP_NET_RAW)")?;
        tasks.push(sender);
        paths = Some(measured);
    }
    if !config.services.is_empty() {
        let port = config.stamp.port;
        let reflector = crate::sensing::stamp::spawn_reflector(port)
            .with_context(|| format!("starting the STAMP reflector on UDP port {port}"))?;
        tasks.push(reflector);
    }
    let (core, task) = crate::core::spawn(rib, paths);
    tasks.push(task);
    let mut bfd_drops = None;
    if let Some(bgp) = &config.bgp {
        let peers: Vec<crate::sensing::bfd::Peer> = bgp
            .neighbors
            .iter()
            .filter_map(|n| {
                let bfd = n.bfd.as_ref()?.get_ref();
                Some(crate::sensing::bfd::Peer {
                    address: *n.address.get_ref(),
                    multihop: bfd.multihop,
                    timers: crate::sensing::bfd::session::Timers {
                        interval: Duration::from_millis(bfd.interval_ms),
                        // Checked at load: 1 to 255.
                        multiplier: u8::try_from(bfd.multiplier).unwrap_or(u8::MAX),
                    },
                })
            })
            .collect();
        if !peers.is_empty() {
            let drops = crate::sensing::bfd::spawn(&peers, core.events.clone())
                .await
                .context("starting BFD on UDP ports 3784 and 4784")?;
            bfd_drops = Some(drops);
        }
    }
    Ok(Started {
        core,
        tasks,
        bfd_drops,
        stamp_targets,
    })
}

/// What steering shows the operator's interfaces.
struct SteeringViews {
    explanations: watch::Receiver<Vec<Explanation>>,
    /// The version of the core's snapshot the last applied step acted on.
    steered: watch::Receiver<u64>,
    node_names: watch::Receiver<BTreeMap<u32, String>>,
}

#[derive(Debug, Default)]
struct Applied {
    sids: Vec<Ipv6Addr>,
    services: Vec<ServiceAddr>,
    /// Kernel routes installed (seg6local SIDs, remote locators), as prefix and length.
    kernel_routes: Vec<(Ipv6Addr, u8)>,
}

impl Agent {
    /// Takes ownership of the loaded data plane and applies `config`. Call inside a tokio
    /// runtime.
    pub async fn start(dataplane: Dataplane, config: &Config) -> Result<Self> {
        let inherited = inherited_nodes(&dataplane);
        let (commands, receiver) = mpsc::channel(1024);
        let (owner, nodes, applied) = owner::spawn(dataplane, receiver);
        let (steering, plans) = watch::channel(steering::Plan::default());
        let (settle, settled) = watch::channel(0);
        let Started {
            core,
            tasks,
            bfd_drops,
            stamp_targets,
        } = start_core(config, !inherited.is_empty()).await?;
        let mut agent = Self {
            commands,
            core: core.events.clone(),
            remote_metrics: None,
            owner,
            service_ids: Ids::starting_at(0),
            learning: None,
            applied: Applied::default(),
            steering,
            settled,
            generation: 0,
            tasks,
            kernel: None,
            owned_routes: None,
            // Nothing learned until a locators task publishes.
            learned_locators: watch::channel(locators::Locators::new()).1,
            sessions: BTreeMap::new(),
            bfd_drops,
        };
        let nexthop_answers = agent.spawn_nexthop_cache(nodes);
        let mut local_routes = None;
        let (in_use, nodes_in_use) = watch::channel(std::collections::BTreeSet::new());
        if let Some(bgp) = &config.bgp {
            let own_locator = reporting::locator_route(config);
            let (local, routes) = watch::channel(own_locator.iter().cloned().collect());
            let speaker = crate::bgp::speaker::spawn(
                speaker_config(config, bgp),
                (core.events.clone(), core.view.clone()),
                routes,
            )
            .await
            .with_context(|| format!("starting BGP on port {}", bgp.port))?;
            agent.tasks.extend(speaker.tasks);
            agent.sessions = speaker.sessions;
            let mut locators = None;
            if !config.interfaces.is_empty() {
                let (publish, installed) = watch::channel(locators::Locators::new());
                agent.learned_locators = installed.clone();
                locators = Some(installed);
                let inputs = locators::Inputs {
                    core: core.view.clone(),
                    own: own_locator.as_ref().and_then(ipv6_prefix),
                    import: bgp.import(),
                    in_use: nodes_in_use,
                };
                agent.tasks.push(tokio::spawn(locators::run(
                    inputs,
                    KernelRoutes::connect()?,
                    publish,
                )));
            }
            agent.learning = Some(steering::Learning {
                encap_src: config.srv6.source.unwrap_or(Ipv6Addr::UNSPECIFIED),
                locators,
                import: bgp.import(),
                // The first test packet goes out at once; its answer is late after this.
                measure_wait: config.stamp.settings().interval + config.stamp.settings().timeout,
            });
            local_routes = Some(local);
        }
        let steering = agent.spawn_steering(
            plans,
            core.view.clone(),
            applied,
            settle,
            (in_use, stamp_targets),
            inherited,
        );
        let (reports, report_inbox) = mpsc::channel(64);
        let health = agent.spawn_health_checks(config);
        let mut state = agent.control_state(
            config,
            (core.events, core.view),
            steering,
            nexthop_answers,
            reports,
        );
        state.health.clone_from(&health);
        agent
            .tasks
            .extend(operator_interfaces(config, state).await?);
        agent.reconcile(config).await?;
        if let Some(task) = reporting::spawn(config, local_routes, report_inbox, health) {
            agent.tasks.push(task);
        }
        Ok(agent)
    }

    /// Starts the health checks of this node's services, if any has one; their health.
    fn spawn_health_checks(
        &mut self,
        config: &Config,
    ) -> Option<watch::Receiver<crate::metrics::health::Healths>> {
        let checks: Vec<_> = config
            .services
            .iter()
            .filter_map(crate::config::ServedService::check)
            .collect();
        if checks.is_empty() {
            return None;
        }
        let (healths, tasks) = crate::metrics::health::spawn(checks);
        self.tasks.extend(tasks);
        Some(healths)
    }

    /// Starts the caches that follow the kernel's routing: the next-hop cache on the nodes the
    /// owner writes (its answers are returned), and the FIB answer cache's generation.
    fn spawn_nexthop_cache(
        &mut self,
        nodes: watch::Receiver<FirstSegments>,
    ) -> watch::Receiver<nexthop_cache::Answers> {
        self.tasks
            .push(tokio::spawn(follow_routing_changes(self.commands.clone())));
        let (answers, receiver) = watch::channel(nexthop_cache::Answers::new());
        match KernelRoutes::connect() {
            Ok(kernel) => self.tasks.push(tokio::spawn(nexthop_cache::run(
                kernel,
                nexthop_cache::Io {
                    nodes,
                    commands: self.commands.clone(),
                    answers,
                },
            ))),
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                "no next-hop cache: every packet takes the FIB path"
            ),
        }
        receiver
    }

    /// Starts steering on `plans`; returns what the operator's interfaces need of it.
    fn spawn_steering(
        &mut self,
        plans: watch::Receiver<steering::Plan>,
        core: crate::core::View,
        applied: watch::Receiver<u64>,
        settled: watch::Sender<u64>,
        (in_use, targets): (
            watch::Sender<std::collections::BTreeSet<Ipv6Addr>>,
            watch::Sender<crate::sensing::stamp::Targets>,
        ),
        inherited: BTreeMap<u32, Vec<Ipv6Addr>>,
    ) -> SteeringViews {
        let (explained, explanations) = watch::channel(Vec::new());
        let (names, node_names) = watch::channel(BTreeMap::new());
        let (stepped, steered) = watch::channel(0);
        let outputs = steering::Outputs {
            settled,
            stepped,
            explained,
            in_use,
            names,
            targets,
        };
        self.tasks.push(tokio::spawn(steering::run(
            plans,
            core,
            (self.commands.clone(), applied),
            outputs,
            inherited,
        )));
        SteeringViews {
            explanations,
            steered,
            node_names,
        }
    }

    /// What the control socket and the exporter read.
    fn control_state(
        &self,
        config: &Config,
        core: (mpsc::Sender<crate::core::Event>, crate::core::View),
        steering: SteeringViews,
        nexthops: watch::Receiver<nexthop_cache::Answers>,
        reports: mpsc::Sender<reporting::LoadReport>,
    ) -> crate::api::AgentState {
        let SteeringViews {
            explanations,
            steered,
            node_names,
        } = steering;
        crate::api::AgentState {
            neighbors: config
                .bgp
                .iter()
                .flat_map(|b| &b.neighbors)
                .map(|n| (*n.address.get_ref(), n.asn))
                .collect(),
            core: core.1,
            operator: core.0,
            reports,
            steered,
            sessions: self.sessions.clone(),
            bfd_drops: self.bfd_drops.clone(),
            health: None,
            locators: self.learning.as_ref().and_then(|l| l.locators.clone()),
            explanations,
            nexthops,
            node_names,
            pin_dir: match config.pinning() {
                crate::dataplane::Pinning::Dir(dir) => Some(dir),
                crate::dataplane::Pinning::Unpinned => None,
            },
        }
    }

    /// Brings the data plane to what `config` describes (at start and on SIGHUP).
    pub async fn reconcile(&mut self, config: &Config) -> Result<()> {
        // The SR domain first: no SID is ever open to sources outside it.
        let mut commands = vec![Command::SetSrDomain(config.srv6.domain_prefixes())];
        let sids = sid_commands(config)?;
        let sid_addrs: Vec<Ipv6Addr> = sids.iter().map(|(sid, _)| *sid).collect();
        for (stats_index, (sid, behavior)) in (0..).zip(sids) {
            commands.push(Command::SetSid {
                sid,
                behavior,
                stats_index,
            });
        }
        for gone in self.applied.sids.iter().filter(|s| !sid_addrs.contains(s)) {
            commands.push(Command::RemoveSid(*gone));
        }
        let (service_commands, services, plan) = self.services(config);
        commands.extend(service_commands);
        for command in commands {
            self.commands
                .send(command)
                .await
                .context("the data-plane owner stopped")?;
        }
        self.follow_remote_metrics(config).await?;
        // Steering programs the nodes before its rings name them, and removes the nodes gone
        // from the configuration once its rings no longer name them (a membership change skips
        // the dwell time): until then their slots still lead somewhere that works.
        self.steer(plan).await;
        let kernel_routes = self.reconcile_kernel_routes(config).await?;
        self.applied = Applied {
            sids: sid_addrs,
            services,
            kernel_routes,
        };
        Ok(())
    }

    /// Hands steering a new plan and waits (up to 2 s) until it has published rings for it.
    async fn steer(&mut self, mut plan: steering::Plan) {
        self.generation += 1;
        plan.generation = self.generation;
        self.steering.send_replace(plan);
        let settled = self.settled.wait_for(|g| *g >= self.generation);
        if tokio::time::timeout(Duration::from_secs(2), settled)
            .await
            .is_err()
        {
            tracing::warn!("steering took over 2 s to apply the new configuration");
        }
    }

    /// The service commands, the services now configured, and the steering plan.
    fn services(&mut self, config: &Config) -> (Vec<Command>, Vec<ServiceAddr>, steering::Plan) {
        let mut plan = steering::Plan {
            ring_size: *config.selection.ring_size.get_ref(),
            hysteresis: crate::selection::hysteresis::Settings {
                threshold: config.selection.threshold,
                min_dwell: Duration::from_millis(config.selection.min_dwell_ms),
                max_churn: config.selection.max_churn,
            },
            interval: Duration::from_millis(config.selection.interval_ms.max(10)),
            services: Vec::new(),
            explain_file: config.selection.explain_file.clone(),
            remotes: config
                .remotes
                .iter()
                .map(|remote| steering::PlannedRemote {
                    name: remote.name.clone(),
                    node: static_node(config, remote),
                })
                .collect(),
            generation: 0, // set by `steer`
            learned: self.learning.clone(),
        };
        let mut commands = Vec::new();
        let mut services = Vec::new();
        for policy in &config.policies {
            let addr = policy.key();
            let id = self.service_ids.get(&addr);
            let affinity = policy
                .affinity
                .then(|| policy.idle_timeout_s.map(Duration::from_secs));
            commands.push(Command::SetService {
                addr,
                config: ServiceConfig { id, affinity },
            });
            services.push(addr);
            plan.services
                .push(steering::planned_service(id, policy, config));
        }
        for gone in self
            .applied
            .services
            .iter()
            .filter(|s| !services.contains(s))
        {
            commands.push(Command::RemoveService(*gone));
        }
        for id in self.service_ids.forget_except(&services) {
            commands.push(Command::PublishRing {
                service: id,
                ring: Vec::new(),
            });
        }
        (commands, services, plan)
    }

    /// Follows the `[[remote]]` metrics files of `config` (a reload with other files starts
    /// another follower). The core has their content before steering sees the plan that
    /// names them, so the first step already weighs those nodes.
    async fn follow_remote_metrics(&mut self, config: &Config) -> Result<()> {
        let files: Vec<std::path::PathBuf> = config
            .remotes
            .iter()
            .filter_map(|r| r.metrics_file.clone())
            .collect();
        if self
            .remote_metrics
            .as_ref()
            .is_some_and(|(following, _)| *following == files)
        {
            return Ok(());
        }
        if let Some((_, task)) = self.remote_metrics.take() {
            task.abort();
        }
        let watched = crate::metrics::files::RemoteFiles::watch(files.clone());
        let (published, version) = tokio::sync::oneshot::channel();
        let first = crate::core::Event::RemoteMetrics {
            metrics: watched.metrics().clone(),
            published: Some(published),
        };
        self.core
            .send(first)
            .await
            .context("the routing core stopped")?;
        version.await.context("the routing core stopped")?;
        let fallback = Duration::from_millis(config.selection.interval_ms.max(10));
        let task = tokio::spawn(watched.follow(self.core.clone(), fallback));
        self.remote_metrics = Some((files, task));
        Ok(())
    }

    /// Installs the kernel routes `config` asks for (seg6local SIDs, remote locators) and
    /// removes those a previous configuration installed and this one drops.
    async fn reconcile_kernel_routes(&mut self, config: &Config) -> Result<Vec<(Ipv6Addr, u8)>> {
        let wanted = kernel_routes(config)?;
        if wanted.is_empty() && self.applied.kernel_routes.is_empty() {
            return Ok(Vec::new());
        }
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => self.kernel.insert(KernelRoutes::connect()?).clone(),
        };
        if wanted.iter().any(|r| matches!(r, OwnedRoute::Sid { .. })) {
            enable_seg6(config);
        }
        let mut installed = Vec::new();
        for route in &wanted {
            route.install(&kernel).await?;
            installed.push(route.destination());
        }
        // Kept in place from now on (the kernel deletes a route whose interface goes down).
        if let Some(owned) = &self.owned_routes {
            owned.send_replace(wanted);
        } else {
            let (owned, watched) = watch::channel(wanted);
            self.tasks
                .push(tokio::spawn(owned_routes::keep(watched, kernel.clone())));
            self.owned_routes = Some(owned);
        }
        for (prefix, len) in self
            .applied
            .kernel_routes
            .iter()
            .filter(|r| !installed.contains(r))
        {
            if let Err(error) = kernel.remove(*prefix, *len).await {
                tracing::warn!(error = %format!("{error:#}"), "removing a route no longer configured");
            }
        }
        Ok(installed)
    }

    /// Stops the tasks and returns the data plane (for the caller to detach or keep). With
    /// `remove_kernel_routes`, the kernel routes the agent installed go too.
    pub async fn stop(self, remove_kernel_routes: bool) -> Result<Dataplane> {
        for task in &self.tasks {
            task.abort();
        }
        match KernelRoutes::connect() {
            Ok(kernel) => nexthop_cache::release_all(&kernel).await,
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                "the managed neighbour entries stay (ip -6 neigh show proto 201)"
            ),
        }
        if remove_kernel_routes && let Some(kernel) = &self.kernel {
            for (prefix, len) in &self.applied.kernel_routes {
                if let Err(error) = kernel.remove(*prefix, *len).await {
                    tracing::warn!(error = %format!("{error:#}"), "removing a kernel route");
                }
            }
        }
        // The tasks are aborted: this is the last of what the locators task installed.
        let learned = self.learned_locators.borrow().clone();
        if remove_kernel_routes && !learned.is_empty() {
            let kernel = KernelRoutes::connect()?;
            for (prefix, len) in learned
                .iter()
                .filter(|(_, l)| l.is_installed())
                .map(|(k, _)| k)
            {
                if let Err(error) = kernel.remove_learned(*prefix, *len).await {
                    tracing::warn!(error = %format!("{error:#}"), "removing a learned locator");
                }
            }
        }
        drop(self.commands);
        drop(self.steering);
        self.owner.await.context("the data-plane owner panicked")
    }
}

/// The data-plane node of a `[[remote]]`.
pub fn static_node(config: &Config, remote: &crate::config::RemoteNode) -> Node {
    Node {
        segments: remote.segments.get_ref().clone(),
        encap_src: config.srv6.source.unwrap_or(Ipv6Addr::UNSPECIFIED),
        reduced: remote.reduced,
        state: if remote.drained {
            NodeState::Draining
        } else {
            NodeState::Active
        },
    }
}

/// The control socket for `cpnctl` and, if configured, Prometheus `/metrics`.
async fn operator_interfaces(
    config: &Config,
    state: crate::api::AgentState,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let Some(address) = config.control.prometheus {
        let exporter = crate::api::prometheus::spawn(address, state.clone());
        tasks.push(
            exporter
                .await
                .with_context(|| format!("serving Prometheus metrics on {address}"))?,
        );
    }
    let socket = crate::api::socket_of(config.control.socket.as_ref());
    tasks.push(
        crate::api::spawn(&socket, state)
            .with_context(|| format!("opening the control socket {}", socket.display()))?,
    );
    Ok(tasks)
}

fn speaker_config(
    config: &Config,
    bgp: &crate::config::BgpConfig,
) -> crate::bgp::speaker::SpeakerConfig {
    crate::bgp::speaker::SpeakerConfig {
        asn: bgp.asn,
        router_id: bgp.router_id,
        cluster_id: bgp.cluster_id,
        next_hop: config.bgp_next_hop(),
        listen: std::net::SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), bgp.port),
        hold_time: Duration::from_secs(bgp.hold_time_s),
        connect_retry: Duration::from_secs(bgp.connect_retry_s),
        metric_code: *bgp.metric_attribute_type.get_ref(),
        import: bgp.import(),
        graceful: crate::bgp::graceful::Ours {
            restart_time: Duration::from_secs(*bgp.graceful_restart_s.get_ref()),
            forwarding_preserved: config.dataplane.keep_attached_on_exit,
        },
        selection_deferral: Duration::from_secs(bgp.selection_deferral_s),
        neighbors: bgp
            .neighbors
            .iter()
            .map(|n| crate::bgp::speaker::NeighborConfig {
                address: *n.address.get_ref(),
                port: n.port,
                asn: n.asn,
                passive: n.passive,
                rr_client: n.route_reflector_client,
                max_prefixes: n.max_prefixes,
                md5_key: n.password.as_ref().map(|p| p.get_ref().as_bytes().to_vec()),
                ttl_security_hops: n.ttl_security_hops.as_ref().map(|h| *h.get_ref()),
            })
            .collect(),
    }
}

/// A route's prefix as address and length, if it is IPv6.
fn ipv6_prefix(route: &crate::bgp::route::Route) -> Option<(Ipv6Addr, u8)> {
    match route.prefix {
        ipnet::IpNet::V6(net) => Some((net.network(), net.prefix_len())),
        ipnet::IpNet::V4(_) => None,
    }
}

/// The nodes a previous agent left in the data plane (a restart over its pins), read before
/// anything is written.
fn inherited_nodes(dataplane: &Dataplane) -> BTreeMap<u32, Vec<Ipv6Addr>> {
    dataplane.nodes_in_use().unwrap_or_else(|error| {
        tracing::warn!(%error, "the data plane's nodes could not be read: a previous agent's flows may move");
        BTreeMap::new()
    })
}

/// The kernel processes SRH packets only on interfaces with `seg6_enabled`: turn it on for
/// `all` and the configured interfaces when the kernel decapsulates some of our SIDs.
fn enable_seg6(config: &Config) {
    let names =
        std::iter::once("all").chain(config.interfaces.iter().map(|i| i.name.get_ref().as_str()));
    for name in names {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/seg6_enabled");
        if let Err(error) = std::fs::write(&path, "1") {
            tracing::warn!(%path, %error, "could not enable SRv6 processing in the kernel");
        }
    }
}

/// The kernel routes `config` asks for, with interfaces resolved: one for every local SID (the
/// kernel owns each, so it never forwards a packet addressed to one: with `decap = "xdp"` it
/// is the kernel's copy of the behaviour, for what XDP hands it), and the static locators.
fn kernel_routes(config: &Config) -> Result<Vec<OwnedRoute>> {
    let mut routes = Vec::new();
    for sid in &config.srv6.sids {
        let spec = sid.spec().map_err(anyhow::Error::msg)?;
        let kernel_only = sid.decap == Decap::Kernel;
        let dev = match &spec {
            SidBehavior::EndX { oif, .. }
            | SidBehavior::EndDx6 { oif, .. }
            | SidBehavior::EndDx4 { oif, .. } => oif.clone(),
            _ => sid
                .interface
                .clone()
                .or_else(|| config.interfaces.first().map(|i| i.name.get_ref().clone()))
                .unwrap_or_else(|| "lo".to_owned()),
        };
        let what = kernel_sid(&spec);
        if kernel_only && matches!(spec, SidBehavior::EndDt46 { table: 0 }) {
            anyhow::bail!(
                "{}: End.DT46 in the kernel needs `table` = the table of a VRF (or decap = \"xdp\")",
                sid.sid
            );
        }
        routes.push(OwnedRoute::Sid {
            sid: sid.sid,
            what,
            dev: ifindex(&dev)?,
            kernel_only,
        });
    }
    for remote in &config.remotes {
        if let (Some(locator), Some(via)) = (&remote.locator, remote.via)
            && let Some((prefix, len)) = crate::dataplane::kernel::parse_prefix(locator.get_ref())
        {
            routes.push(OwnedRoute::Locator { prefix, len, via });
        }
    }
    Ok(routes)
}

/// The kernel's `seg6local` action for a SID's behaviour. Without a table (0), End.DT* take
/// the host's own routing, as `cpn_endpoint` does: the kernel's End.DX6 / End.DX4 with an
/// unspecified next hop decapsulate and route the inner packet that way.
fn kernel_sid(spec: &SidBehavior<String>) -> KernelSid {
    match *spec {
        SidBehavior::End => KernelSid::End,
        SidBehavior::EndX { nexthop, .. } => KernelSid::EndX { nexthop },
        SidBehavior::EndDx6 { nexthop, .. } => KernelSid::EndDx6 { nexthop },
        SidBehavior::EndDx4 { nexthop, .. } => KernelSid::EndDx4 { nexthop },
        SidBehavior::EndDt6 { table: 0 } | SidBehavior::EndDt46 { table: 0 } => KernelSid::EndDx6 {
            nexthop: Ipv6Addr::UNSPECIFIED,
        },
        SidBehavior::EndDt6 { table } => KernelSid::EndDt6 { table },
        SidBehavior::EndDt4 { table: 0 } => KernelSid::EndDx4 {
            nexthop: std::net::Ipv4Addr::UNSPECIFIED,
        },
        SidBehavior::EndDt4 { table } => KernelSid::EndDt4 { vrftable: table },
        SidBehavior::EndDt46 { table } => KernelSid::EndDt46 { vrftable: table },
    }
}

/// The XDP-processed SIDs of `config` with interfaces resolved to indexes.
fn sid_commands(config: &Config) -> Result<Vec<(Ipv6Addr, SidBehavior)>> {
    config
        .srv6
        .sids
        .iter()
        .filter(|sid| sid.decap == Decap::Xdp)
        .map(|sid| {
            let behavior = sid.spec().map_err(anyhow::Error::msg)?;
            Ok((sid.sid, behavior.map_interface(|name| ifindex(&name))?))
        })
        .collect()
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(
        index != 0,
        "no interface `{name}` here (check `ip link` in this namespace)"
    );
    Ok(index)
}

/// Makes the data plane's cached FIB answers stale (`fib_cache`) on every change of the
/// kernel's routes, rules, neighbours, links or forwarding, in both families: a burst of
/// notifications is one bump. A lost batch (overflow) is a change too; a broken subscription
/// is renewed after a second, with a bump (the TTL covers the gap).
async fn follow_routing_changes(commands: mpsc::Sender<Command>) {
    use crate::dataplane::resolver::Changes;
    loop {
        match Changes::subscribe_both_families() {
            Ok(mut changes) => loop {
                // Also right after subscribing: what changed before it is unknown.
                if commands.send(Command::BumpFibGeneration).await.is_err() {
                    return;
                }
                if let Err(error) = changes.next().await {
                    tracing::warn!(%error, "routing notifications lost; subscribing again");
                    break;
                }
            },
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot follow routing changes; cached FIB answers only age out");
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::kernel_sid;
    use crate::dataplane::{SidBehavior, kernel::KernelSid};

    #[test]
    fn the_kernel_owns_each_sid_with_the_same_behaviour() {
        let nh6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let nh4 = Ipv4Addr::new(192, 0, 2, 1);
        let oif = || "eth1".to_owned();
        let cases = [
            (SidBehavior::End, KernelSid::End),
            (
                SidBehavior::EndX {
                    nexthop: nh6,
                    oif: oif(),
                },
                KernelSid::EndX { nexthop: nh6 },
            ),
            (
                SidBehavior::EndDx4 {
                    nexthop: nh4,
                    oif: oif(),
                },
                KernelSid::EndDx4 { nexthop: nh4 },
            ),
            (
                SidBehavior::EndDt6 { table: 100 },
                KernelSid::EndDt6 { table: 100 },
            ),
            (
                SidBehavior::EndDt4 { table: 100 },
                KernelSid::EndDt4 { vrftable: 100 },
            ),
            // No table: the host's own routing after decapsulation.
            (
                SidBehavior::EndDt6 { table: 0 },
                KernelSid::EndDx6 {
                    nexthop: Ipv6Addr::UNSPECIFIED,
                },
            ),
            (
                SidBehavior::EndDt4 { table: 0 },
                KernelSid::EndDx4 {
                    nexthop: Ipv4Addr::UNSPECIFIED,
                },
            ),
        ];
        for (behavior, expected) in cases {
            assert_eq!(kernel_sid(&behavior), expected, "{behavior:?}");
        }
    }
}
