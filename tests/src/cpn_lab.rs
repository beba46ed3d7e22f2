//! A lab described by a topology file: clients, one ingress, one transit router and compute
//! nodes, each with an agent speaking BGP (distributed mode: one AS per node), each compute
//! node serving real TCP services. The demo and the scenario tests run on it.
//!
//! ```text
//!   client1 ─┐                      ┌─ [wan1] ── compute1     [wanN]: a delay line giving
//!   client2 ─┼─ ingress ── transit ─┼─ [wan2] ── compute2     computeN's path its configured
//!      …     ┘  cpn_steer  endpoint └─    …         …         latency (the kernel here has no
//!               + tc-egress                                    netem)
//! ```
//!
//! The ingress steers what its clients send in XDP, and what it sends itself with
//! `cpn_steer_tc_egress` on its uplink (its route to a service address points at the transit,
//! which would send an unsteered packet straight back: only a steered one arrives).
//!
//! Addresses are derived from positions: client `i` is `2001:db8:i::1` and `10.0.i.1` behind
//! the ingress's `eth{i}`; the ingress-transit link is `2001:db8:100::/64` and
//! `10.100.0.0/24`; compute `n` is `2001:db8:2nn::2` and `10.200.n.2` behind the transit's
//! `eth{n}`, with locator `fc00:n::/32` and one End.DT46 SID `fc00:n::d6` for all its services.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use serde::Deserialize;

use crate::lab::{Agent, Lab, Node, wait_for};

const INGRESS_AS: u32 = 4_200_000_100;
const TRANSIT_AS: u32 = 4_200_000_050;
/// Where the ingress serves Prometheus metrics (inside its namespace).
pub const INGRESS_PROMETHEUS: &str = "[::1]:9464";
/// The port a service without one listens on.
pub const DEFAULT_PORT: u16 = 7000;
/// Requests a service can have in flight (its `max_in_flight`).
pub const MAX_IN_FLIGHT: u32 = 1000;

/// A lab's description (see `tests/topologies/demo.toml` for a commented example).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(rename = "service")]
    pub services: Vec<ServiceSpec>,
    #[serde(rename = "client")]
    pub clients: Vec<ClientSpec>,
    #[serde(rename = "compute")]
    pub computes: Vec<ComputeSpec>,
    /// How fast the agents find a dead neighbor: BFD between them (default 3 × 100 ms).
    pub detection: Option<Detection>,
    /// How routes travel (default: distributed).
    #[serde(default)]
    pub mode: Mode,
    /// A TCP health check of every service on every compute node (default: none).
    pub health: Option<HealthSpec>,
    /// The transit also has a neighbor at [`ROGUE_PEER`] (AS [`ROGUE_AS`], no BFD), on the
    /// ingress's link, that no agent speaks for: the soak's rogue peer. Not in topology files.
    #[serde(skip)]
    pub rogue_peer: bool,
}

/// The address of the transit's rogue neighbor (see [`Topology::rogue_peer`]).
pub const ROGUE_PEER: &str = "2001:db8:100::99";
/// An address on the same link that the transit has no neighbor for.
pub const UNCONFIGURED_PEER: &str = "2001:db8:100::98";
/// The rogue neighbor's AS.
pub const ROGUE_AS: u32 = 65099;
/// The transit's BGP session address.
pub const TRANSIT: &str = "2001:db8:100::2";

/// The compute agents' check of their services: a TCP connect to the service's own address
/// every `interval_ms`; `fall` failures withdraw it, `rise` passes bring it back.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub interval_ms: u64,
    pub fall: u32,
    pub rise: u32,
}

/// The lab's BGP design.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One AS per node, eBGP everywhere: each hop passes routes on with itself as next hop.
    #[default]
    Distributed,
    /// One AS, iBGP: the transit agent is the route reflector of every other agent (RFC 4456).
    /// Routes keep the compute node's own address as next hop, which the ingress reaches over
    /// a static route through the transit (what an IGP would give it): not on-link.
    Reflector,
}

/// The AS of every agent in [`Mode::Reflector`].
const LAB_AS: u32 = 4_200_000_000;

/// How fast neighbouring agents notice a dead link: BFD every `interval_ms`, dead after
/// `multiplier` silent intervals.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub interval_ms: u64,
    pub multiplier: u32,
}

impl Topology {
    fn ingress_as(&self) -> u32 {
        self.asn(INGRESS_AS)
    }

    fn transit_as(&self) -> u32 {
        self.asn(TRANSIT_AS)
    }

    fn compute_as(&self, n: usize) -> u32 {
        self.asn(4_200_000_000 + u32::try_from(n).expect("at most 99 nodes"))
    }

    fn asn(&self, distributed: u32) -> u32 {
        match self.mode {
            Mode::Distributed => distributed,
            Mode::Reflector => LAB_AS,
        }
    }

    /// How the transit's neighbors are configured: passive, and its clients if it reflects.
    fn transit_neighbor_lines(&self) -> &'static str {
        match self.mode {
            Mode::Distributed => "passive = true\n",
            Mode::Reflector => "passive = true\nroute_reflector_client = true\n",
        }
    }

    /// The line every neighbor gets: all of them are agents, which run BFD with each other.
    fn bfd_line(&self) -> String {
        let d = self.detection.unwrap_or(Detection {
            interval_ms: 100,
            multiplier: 3,
        });
        format!(
            "bfd = {{ interval_ms = {}, multiplier = {} }}\n",
            d.interval_ms, d.multiplier
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Anycast address, IPv6 or IPv4.
    pub address: IpAddr,
    /// The TCP port the ingress's policy names; without one the policy covers every port and
    /// the service listens on [`DEFAULT_PORT`].
    pub port: Option<u16>,
    #[serde(default = "cpu")]
    pub kind: String,
    pub min_grade: Option<u8>,
    pub max_latency_ms: Option<f64>,
    /// Objective weights, as in the agent's `[[policy]]` (default: latency 1, load 1).
    pub latency_weight: Option<f64>,
    pub load_weight: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    pub name: String,
    /// Capacity per kind, operations per second, e.g. `{ cpu = 2e12 }`.
    pub capacity: BTreeMap<String, f64>,
    /// One-way latency the delay line adds between the transit and this node (0: none).
    #[serde(default)]
    pub latency_ms: f64,
    /// Names of the services it serves (default: all).
    pub services: Option<Vec<String>>,
}

fn cpu() -> String {
    "cpu".into()
}

impl ServiceSpec {
    pub fn listen_port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
}

impl ComputeSpec {
    pub fn serves(&self, service: &ServiceSpec) -> bool {
        self.services
            .as_ref()
            .is_none_or(|names| names.contains(&service.name))
    }
}

impl Topology {
    /// Reads and checks a topology; errors name the file.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let topology: Self =
            toml::from_str(text).with_context(|| format!("topology {}", path.display()))?;
        ensure!(
            !topology.clients.is_empty() && !topology.computes.is_empty(),
            "topology {}: needs at least one [[client]] and one [[compute]]",
            path.display()
        );
        ensure!(
            topology.clients.len() <= 99 && topology.computes.len() <= 99,
            "topology {}: at most 99 clients and 99 compute nodes",
            path.display()
        );
        for compute in &topology.computes {
            for name in compute.services.iter().flatten() {
                ensure!(
                    topology.services.iter().any(|s| &s.name == name),
                    "topology {}: compute {} serves `{name}`, which no [[service]] defines",
                    path.display(),
                    compute.name
                );
            }
        }
        Ok(topology)
    }
}

/// A running lab.
#[derive(Debug)]
pub struct CpnLab {
    pub lab: Lab,
    pub topology: Topology,
    pub agents: BTreeMap<String, Agent>,
    /// Each compute node's load knob: extra requests its services report in flight.
    pub knobs: BTreeMap<String, PathBuf>,
    /// The service processes, by compute node and service name.
    services: BTreeMap<(String, String), u32>,
}

impl CpnLab {
    /// Builds the lab, starts every agent and service, and waits until every service answers
    /// through the ingress from the first client.
    pub fn start(name: &str, topology: Topology) -> Result<Self> {
        let mut builder = Lab::builder(name).node("ingress").node("transit");
        builder = builder.link(("ingress", "eth0"), ("transit", "eth0"));
        for (i, client) in topology.clients.iter().enumerate() {
            builder = builder.node(&client.name).link(
                ("ingress", &format!("eth{}", i + 1)),
                (&client.name, "eth0"),
            );
        }
        for (i, compute) in topology.computes.iter().enumerate() {
            let n = i + 1;
            builder = builder.node(&compute.name);
            if compute.latency_ms > 0.0 {
                let wan = format!("wan{n}");
                builder = builder
                    .node(&wan)
                    .link(("transit", &format!("eth{n}")), (&wan, "eth0"))
                    .link((&wan, "eth1"), (&compute.name, "eth0"));
            } else {
                builder = builder.link(("transit", &format!("eth{n}")), (&compute.name, "eth0"));
            }
        }
        let mut lab = builder.build()?;
        address_plan(&lab, &topology)?;
        let mut agents = BTreeMap::new();
        agents.insert(
            "transit".to_owned(),
            lab.start_agent("transit", &transit_config(&topology))?,
        );
        let explain = lab.workdir().join("explain.json");
        agents.insert(
            "ingress".to_owned(),
            lab.start_agent("ingress", &ingress_config(&topology, &explain))?,
        );
        let mut knobs = BTreeMap::new();
        let mut services = BTreeMap::new();
        for (i, compute) in topology.computes.iter().enumerate() {
            let n = i + 1;
            if compute.latency_ms > 0.0 {
                start_delay_line(&mut lab, &format!("wan{n}"), compute.latency_ms, 0)?;
            }
            let knob = lab.workdir().join(format!("{}.load", compute.name));
            fs::write(&knob, "0\n")?;
            let mut served = Vec::new();
            for service in topology.services.iter().filter(|s| compute.serves(s)) {
                let inflight = lab
                    .workdir()
                    .join(format!("{}-{}.inflight", compute.name, service.name));
                let pid = start_service(&mut lab, &compute.name, service, &inflight, &knob)?;
                services.insert((compute.name.clone(), service.name.clone()), pid);
                served.push((service, inflight));
            }
            let config = compute_config(n, compute, &served, &topology);
            agents.insert(
                compute.name.clone(),
                lab.start_agent(&compute.name, &config)?,
            );
            knobs.insert(compute.name.clone(), knob);
        }
        let lab = Self {
            lab,
            topology,
            agents,
            knobs,
            services,
        };
        lab.wait_until_serving()?;
        Ok(lab)
    }

    fn wait_until_serving(&self) -> Result<()> {
        let client = &self.topology.clients[0].name;
        for service in &self.topology.services {
            wait_for(
                &format!("service {} through the ingress", service.name),
                Duration::from_secs(30),
                || {
                    Ok(self
                        .split(client, service, 3)
                        .ok()
                        .filter(|s| s.values().sum::<u32>() == 3))
                },
            )
            .with_context(|| self.logs())?;
        }
        Ok(())
    }

    /// Opens `count` new connections from `client` to `service`; connections per node.
    pub fn split(
        &self,
        client: &str,
        service: &ServiceSpec,
        count: u32,
    ) -> Result<BTreeMap<String, u32>> {
        split_from(
            self.lab.node(client)?,
            &service.address.to_string(),
            service.listen_port(),
            count,
        )
    }

    /// `service`'s process on `compute` dies (SIGKILL); the node and its agent stay up.
    pub fn kill_service(&mut self, compute: &str, service: &str) -> Result<()> {
        let pid = self
            .services
            .remove(&(compute.to_owned(), service.to_owned()))
            .with_context(|| format!("{compute} runs no {service}"))?;
        self.lab.kill(pid)
    }

    /// Makes `compute`'s services report `percent` % of their maximum in flight as extra load.
    pub fn set_load(&self, compute: &str, percent: u32) -> Result<()> {
        let knob = self.knobs.get(compute).context("no such compute node")?;
        fs::write(knob, format!("{}\n", MAX_IN_FLIGHT * percent / 100))?;
        Ok(())
    }

    /// `compute` crashes: its link goes down, then its agent is killed (SIGKILL), so nothing
    /// it says on the way out reaches anyone; its neighbor's BFD must notice.
    pub fn fail(&mut self, compute: &str) -> Result<()> {
        let agent = self
            .agents
            .remove(compute)
            .with_context(|| format!("{compute} has no running agent"))?;
        self.lab.node(compute)?.ip("link set eth0 down")?;
        self.lab.kill(agent.pid)?;
        Ok(())
    }

    /// Brings a failed compute node back: link up, addresses and routes, then its agent.
    pub fn recover(&mut self, compute: &str) -> Result<()> {
        // As a host boots: its network works before its services (and the agent) start.
        self.link_up(compute)?;
        self.join(compute)
    }

    /// `compute` leaves the network in order: its agent stops (and withdraws its routes); the
    /// host and its services stay up.
    pub fn leave(&mut self, compute: &str) -> Result<()> {
        let agent = self
            .agents
            .remove(compute)
            .with_context(|| format!("{compute} has no running agent"))?;
        let status = self.lab.stop(agent.pid)?;
        ensure!(status.success(), "{compute}'s agent exited with {status}");
        Ok(())
    }

    /// A compute node that left (or failed and is reachable again) joins: its agent starts.
    pub fn join(&mut self, compute: &str) -> Result<()> {
        let config = self.agent_config(compute)?;
        let agent = self.lab.start_agent(compute, &config)?;
        self.agents.insert(compute.to_owned(), agent);
        Ok(())
    }

    /// `node`'s agent as the lab configures it.
    fn agent_config(&self, node: &str) -> Result<String> {
        match node {
            "ingress" => Ok(ingress_config(
                &self.topology,
                &self.lab.workdir().join("explain.json"),
            )),
            "transit" => Ok(transit_config(&self.topology)),
            compute => {
                let n = self.position(compute)?;
                let spec = &self.topology.computes[n - 1];
                let served: Vec<(&ServiceSpec, PathBuf)> = self
                    .topology
                    .services
                    .iter()
                    .filter(|s| spec.serves(s))
                    .map(|s| {
                        let inflight = self
                            .lab
                            .workdir()
                            .join(format!("{}-{}.inflight", spec.name, s.name));
                        (s, inflight)
                    })
                    .collect();
                Ok(compute_config(n, spec, &served, &self.topology))
            }
        }
    }

    /// `node`'s agent crashes (SIGKILL): its programs and pinned maps stay, as after a crash.
    /// Returns the agent, for [`CpnLab::restart`].
    pub fn kill_agent(&mut self, node: &str) -> Result<Agent> {
        let agent = self
            .agents
            .remove(node)
            .with_context(|| format!("{node} has no running agent"))?;
        self.lab.kill(agent.pid)?;
        Ok(agent)
    }

    /// Starts `node`'s agent again over the pin directory of the one that crashed: it takes
    /// over its data plane. The old log is kept next to the new one, numbered.
    pub fn restart(&mut self, node: &str, crashed: &Agent) -> Result<()> {
        for k in 1.. {
            let kept = crashed.log.with_extension(format!("log.{k}"));
            if !kept.exists() {
                fs::rename(&crashed.log, kept)?;
                break;
            }
        }
        let config = self.agent_config(node)?;
        let agent = self
            .lab
            .start_agent_pinned_at(node, &crashed.pin_dir, &config)?;
        self.agents.insert(node.to_owned(), agent);
        Ok(())
    }

    /// `compute`'s link goes down (its agent keeps running).
    pub fn link_down(&self, compute: &str) -> Result<()> {
        self.lab.node(compute)?.ip("link set eth0 down").map(drop)
    }

    /// `compute`'s link comes back with its addresses and routes, as after [`CpnLab::link_down`]
    /// or [`CpnLab::fail`].
    pub fn link_up(&self, compute: &str) -> Result<()> {
        let n = self.position(compute)?;
        let node = self.lab.node(compute)?;
        node.ip("link set eth0 up")?;
        // IPv6 drops the link's addresses and routes when it goes down.
        node.ip(&format!(
            "-6 addr replace 2001:db8:2{n:02}::2/64 dev eth0 nodad"
        ))?;
        node.ip(&format!("-6 route replace default via 2001:db8:2{n:02}::1"))?;
        node.ip(&format!("-4 route replace default via 10.200.{n}.1"))?;
        let transit = format!("2001:db8:2{n:02}::1");
        wait_for(
            &format!("{compute} to reach the transit again"),
            Duration::from_secs(10),
            || {
                let ping = node.output(&["ping", "-c", "1", "-W", "0.2", &transit])?;
                Ok(ping.status.success().then_some(()))
            },
        )
    }

    /// The path to `compute` gains `extra_delay_ms` and loses `loss_percent` % of its frames,
    /// both ways (0 and 0: as configured). Only for compute nodes behind a delay line.
    pub fn impair(&self, compute: &str, extra_delay_ms: f64, loss_percent: f64) -> Result<()> {
        let n = self.position(compute)?;
        ensure!(
            self.topology.computes[n - 1].latency_ms > 0.0,
            "{compute} has no delay line to impair"
        );
        let file = impairment_file(&self.lab, &format!("wan{n}"));
        let tmp = file.with_extension("tmp");
        fs::write(&tmp, format!("{extra_delay_ms} {loss_percent}\n"))?;
        fs::rename(tmp, file)?;
        Ok(())
    }

    /// Whether `node`'s agent has exited on its own, and how.
    pub fn agent_exited(&mut self, node: &str) -> Result<Option<std::process::ExitStatus>> {
        let pid = self
            .agents
            .get(node)
            .with_context(|| format!("{node} has no running agent"))?
            .pid;
        self.lab.exited(pid)
    }

    /// `compute`'s locator, as `ip route` prints it.
    pub fn locator(&self, compute: &str) -> Result<String> {
        Ok(locator(self.position(compute)?))
    }

    /// `compute`'s position in the topology, from 1 (its addresses are derived from it).
    fn position(&self, compute: &str) -> Result<usize> {
        self.topology
            .computes
            .iter()
            .position(|c| c.name == compute)
            .map(|i| i + 1)
            .with_context(|| format!("no compute node {compute}"))
    }

    /// The ingress's latest selection explanations (one per service).
    pub fn explanations(&self) -> Result<serde_json::Value> {
        let text = fs::read_to_string(self.lab.workdir().join("explain.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Every agent's log, for error messages.
    pub fn logs(&self) -> String {
        self.lab.logs(self.agents.keys().map(String::as_str))
    }
}

fn address_plan(lab: &Lab, topology: &Topology) -> Result<()> {
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:100::1/64")?;
    ingress.add_address("eth0", "10.100.0.1/24")?;
    ingress.enable_forwarding()?;
    for service in &topology.services {
        let (prefix, via) = if service.address.is_ipv6() {
            (128, "2001:db8:100::2")
        } else {
            (32, "10.100.0.2")
        };
        ingress.add_route(&[&format!("{}/{prefix}", service.address), "via", via])?;
    }
    if topology.mode == Mode::Reflector {
        // The compute nodes' links, through the transit: the next hops of their routes.
        ingress.add_route(&["2001:db8:200::/40", "via", "2001:db8:100::2"])?;
    }
    if topology.rogue_peer {
        for address in [ROGUE_PEER, UNCONFIGURED_PEER] {
            // Deprecated at once, so the ingress never picks them as its own source.
            ingress.ip(&format!(
                "-6 addr add {address}/64 dev eth0 nodad preferred_lft 0"
            ))?;
        }
    }
    let transit = lab.node("transit")?;
    transit.add_address("eth0", "2001:db8:100::2/64")?;
    transit.add_address("eth0", "10.100.0.2/24")?;
    transit.add_route(&["default", "via", "2001:db8:100::1"])?;
    transit.add_route(&["default", "via", "10.100.0.1"])?;
    transit.enable_forwarding()?;
    for (i, client) in topology.clients.iter().enumerate() {
        let i = i + 1;
        ingress.add_address(&format!("eth{i}"), &format!("2001:db8:{i}::2/64"))?;
        ingress.add_address(&format!("eth{i}"), &format!("10.0.{i}.2/24"))?;
        let node = lab.node(&client.name)?;
        node.add_address("eth0", &format!("2001:db8:{i}::1/64"))?;
        node.add_address("eth0", &format!("10.0.{i}.1/24"))?;
        node.add_route(&["default", "via", &format!("2001:db8:{i}::2")])?;
        node.add_route(&["default", "via", &format!("10.0.{i}.2")])?;
        node.checksum_in_software("eth0")?;
    }
    for (i, compute) in topology.computes.iter().enumerate() {
        let n = i + 1;
        transit.add_address(&format!("eth{n}"), &format!("2001:db8:2{n:02}::1/64"))?;
        transit.add_address(&format!("eth{n}"), &format!("10.200.{n}.1/24"))?;
        let node = lab.node(&compute.name)?;
        // No duplicate address detection: the link-local address must work at once when the
        // link comes back after a failure (the lab's addresses are unique anyway).
        node.sysctl("net.ipv6.conf.eth0.accept_dad=0")?;
        node.add_address("eth0", &format!("2001:db8:2{n:02}::2/64"))?;
        node.add_address("eth0", &format!("10.200.{n}.2/24"))?;
        node.add_route(&["default", "via", &format!("2001:db8:2{n:02}::1")])?;
        node.add_route(&["default", "via", &format!("10.200.{n}.1")])?;
        for service in topology.services.iter().filter(|s| compute.serves(s)) {
            let prefix = if service.address.is_ipv6() { 128 } else { 32 };
            node.add_address("lo", &format!("{}/{prefix}", service.address))?;
        }
        if compute.latency_ms > 0.0 {
            // The delay line copies frames as they are: both ends must send complete
            // checksums and no offloaded segments.
            node.checksum_in_software("eth0")?;
            transit.checksum_in_software(&format!("eth{n}"))?;
            let wan = lab.node(&format!("wan{n}"))?;
            for interface in ["eth0", "eth1"] {
                wan.sysctl(&format!("net.ipv6.conf.{interface}.disable_ipv6=1"))?;
            }
        }
    }
    Ok(())
}

/// A `[bgp]` section for `topology`, with BFD at its detection timers for every neighbor.
fn bgp_section(
    topology: &Topology,
    asn: u32,
    router_id: &str,
    neighbors: &[(String, u32, &str)],
) -> String {
    let mut text = format!("[bgp]\nasn = {asn}\nrouter_id = \"{router_id}\"\nhold_time_s = 3\n");
    let bfd = topology.bfd_line();
    for (address, asn, more) in neighbors {
        let _ = write!(
            text,
            "\n[[bgp.neighbor]]\naddress = \"{address}\"\nasn = {asn}\n{more}{bfd}"
        );
    }
    text
}

fn ingress_config(topology: &Topology, explain: &Path) -> String {
    let mut text = format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n[control]\nprometheus = \"{INGRESS_PROMETHEUS}\"\n\n"
    );
    for i in 1..=topology.clients.len() {
        let _ = write!(
            text,
            "[[interface]]\nname = \"eth{i}\"\nprogram = \"steer\"\n\n"
        );
    }
    text.push_str("[[interface]]\nname = \"eth0\"\nprogram = \"steer\"\nhook = \"tc-egress\"\n\n");
    text.push_str("[srv6]\nsource = \"2001:db8:100::1\"\n\n");
    for s in &topology.services {
        let _ = write!(
            text,
            "[[policy]]\nservice = \"{}\"\nkind = \"{}\"\naffinity = true\n\
             objective = {{ latency = {}, load = {} }}\n",
            s.address,
            s.kind,
            s.latency_weight.unwrap_or(1.0),
            s.load_weight.unwrap_or(1.0),
        );
        if let Some(port) = s.port {
            let _ = writeln!(text, "protocol = \"tcp\"\nport = {port}");
        }
        if let Some(grade) = s.min_grade {
            let _ = writeln!(text, "min_grade = {grade}");
        }
        if let Some(ms) = s.max_latency_ms {
            let _ = writeln!(text, "max_latency_ms = {ms}");
        }
        text.push('\n');
    }
    let _ = write!(
        text,
        "[selection]\ninterval_ms = 200\nmin_dwell_ms = 500\nmax_churn = 1.0\nexplain_file = \"{}\"\n\n",
        explain.display()
    );
    text.push_str(&bgp_section(
        topology,
        topology.ingress_as(),
        "10.0.0.100",
        &[("2001:db8:100::2".into(), topology.transit_as(), "")],
    ));
    text
}

fn transit_config(topology: &Topology) -> String {
    let client = topology.transit_neighbor_lines();
    let mut neighbors = vec![("2001:db8:100::1".to_owned(), topology.ingress_as(), client)];
    for n in 1..=topology.computes.len() {
        neighbors.push((
            format!("2001:db8:2{n:02}::2"),
            topology.compute_as(n),
            client,
        ));
    }
    let mut text = format!(
        "[node]\nname = \"transit\"\nroles = [\"transit\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n{}",
        bgp_section(topology, topology.transit_as(), "10.0.0.50", &neighbors)
    );
    if topology.rogue_peer {
        let _ = write!(
            text,
            "\n[[bgp.neighbor]]\naddress = \"{ROGUE_PEER}\"\nasn = {ROGUE_AS}\npassive = true\n"
        );
    }
    text
}

/// The locator of the compute node at position `n` (from 1).
fn locator(n: usize) -> String {
    format!("fc00:{n}::/32")
}

fn compute_config(
    n: usize,
    spec: &ComputeSpec,
    served: &[(&ServiceSpec, PathBuf)],
    topology: &Topology,
) -> String {
    let capacity = spec
        .capacity
        .iter()
        .map(|(kind, ops)| format!("{kind} = {ops:e}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "[node]\nname = \"{}\"\nroles = [\"compute\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
         [srv6]\nsource = \"2001:db8:2{n:02}::2\"\nlocator = \"{}\"\n\n\
         [[srv6.sid]]\nsid = \"fc00:{n}::d6\"\nbehavior = \"End.DT46\"\n\n",
        spec.name,
        locator(n)
    );
    for (service, inflight) in served {
        let _ = write!(
            text,
            "[[service]]\naddress = \"{}\"\nsid = \"fc00:{n}::d6\"\ncapacity = {{ {capacity} }}\n\
             in_flight_file = \"{}\"\nmax_in_flight = {MAX_IN_FLIGHT}\n",
            service.address,
            inflight.display()
        );
        if let Some(h) = topology.health {
            let _ = writeln!(
                text,
                "health = {{ check = \"tcp\", port = {}, interval_ms = {}, fall = {}, rise = {} }}",
                service.listen_port(),
                h.interval_ms,
                h.fall,
                h.rise
            );
        }
        text.push('\n');
    }
    text.push_str("[metrics]\ninterval_ms = 200\nsample_host = false\n\n");
    text.push_str(&bgp_section(
        topology,
        topology.compute_as(n),
        &format!("10.0.1.{n}"),
        &[(format!("2001:db8:2{n:02}::1"), topology.transit_as(), "")],
    ));
    text
}

/// A TCP service answering every line with `<node> <requests in flight>`; like a real service
/// it reports its in-flight count (its open connections plus the extra load a test or the demo
/// puts in the knob file) when it changes, renaming the new value into place.
pub const SERVICE: &str = r#"
import os, socket, sys, threading, time
name, addr, port, inflight, knob = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
active = 0
lock = threading.Lock()
def load():
    try:
        return active + int(open(knob).read().strip() or 0)
    except (OSError, ValueError):
        return active
def report():
    # Pushes its load: at once when it changes (seen within 10 ms), and every 0.2 s anyway.
    last, quiet = None, 0
    while True:
        now = load()
        if now != last or quiet >= 20:
            with open(inflight + ".tmp", "w") as f:
                f.write(f"{now}\n")
            os.replace(inflight + ".tmp", inflight)
            last, quiet = now, 0
        quiet += 1
        time.sleep(0.01)
threading.Thread(target=report, daemon=True).start()
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1024)
def serve(c):
    global active
    with lock:
        active += 1
    f = c.makefile("rb")
    try:
        for line in f:
            c.sendall(f"{name} {load()}\n".encode())
    except OSError:
        pass
    with lock:
        active -= 1
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Opens `count` new connections from `client` to `address`:`port`, one request each;
/// connections per answering node.
pub fn split_from(
    client: &Node,
    address: &str,
    port: u16,
    count: u32,
) -> Result<BTreeMap<String, u32>> {
    let out = client.output(&[
        "python3",
        "-c",
        SPLIT_CLIENT,
        address,
        &port.to_string(),
        &count.to_string(),
    ])?;
    ensure!(
        out.status.success(),
        "split client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("split client output")
}

/// `count` new connections, one request each; prints {"node": connections}. The timeout is
/// long because a loaded machine can delay a SYN retransmission or two; a test fails on a real
/// loss anyway, since every connection must complete.
pub const SPLIT_CLIENT: &str = r#"
import json, socket, sys
addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = {}
for _ in range(count):
    c = socket.create_connection((addr, port), timeout=15)
    c.sendall(b"hi\n")
    name = c.makefile("rb").readline().decode().split()[0]
    seen[name] = seen.get(name, 0) + 1
    c.close()
print(json.dumps(seen))
"#;

/// A delay line: copies every frame between `eth0` and `eth1` after the given one-way delay,
/// as a long link would (a lab stand-in for netem, which this kernel does not have). With a
/// second argument N > 0 it also loses every Nth SRv6 frame (IPv6 with a Routing header) on its
/// way from `eth0` to `eth1`: the steered traffic, and only that, crosses a lossy link.
const DELAY_LINE: &str = r#"
import heapq, os, random, select, socket, struct, sys, time
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
delay = float(sys.argv[1]) / 1000
drop_every = int(sys.argv[2]) if len(sys.argv) > 2 else 0
# An impairment file, read again every 50 ms: "<extra delay ms> <loss %>" of every frame.
impair = sys.argv[3] if len(sys.argv) > 3 else None
extra, loss, read_at = 0.0, 0.0, 0.0
srv6_seen = 0
ends = {}
for name in ("eth0", "eth1"):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    # The kernel's arrival time, so that a late wake-up of this process adds nothing.
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((name, 0)); s.setblocking(False)
    ends[name] = s
other = {ends["eth0"].fileno(): ends["eth1"], ends["eth1"].fileno(): ends["eth0"]}
by_fd = {s.fileno(): s for s in ends.values()}
queue, seq = [], 0
while True:
    if impair and time.monotonic() >= read_at:
        read_at = time.monotonic() + 0.05
        try:
            extra_ms, loss = (float(x) for x in open(impair).read().split())
            extra = extra_ms / 1000
        except (OSError, ValueError):
            extra, loss = 0.0, 0.0
    timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
    if impair:
        timeout = 0.05 if timeout is None else min(timeout, 0.05)
    ready, _, _ = select.select(list(by_fd), [], [], timeout)
    for fd in ready:
        while True:
            try:
                frame, ancillary, _, addr = by_fd[fd].recvmsg(65535, socket.CMSG_SPACE(16))
            except BlockingIOError:
                break
            arrived = time.monotonic()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    arrived -= max(0.0, time.time() - (sec + nsec / 1e9))
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            if drop_every and by_fd[fd] is ends["eth0"] and frame[12:14] == b"\x86\xdd" and frame[20] == 43:
                srv6_seen += 1
                if srv6_seen % drop_every == 0:
                    continue
            if loss and random.random() * 100 < loss:
                continue
            seq += 1
            heapq.heappush(queue, (arrived + delay + extra, seq, other[fd], frame))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, out, frame = heapq.heappop(queue)
        try:
            out.send(frame)
        except OSError:
            pass
"#;

/// Starts `service` in `node`; answers its pid.
fn start_service(
    lab: &mut Lab,
    node: &str,
    service: &ServiceSpec,
    inflight: &Path,
    knob: &Path,
) -> Result<u32> {
    lab.spawn(
        node,
        &[
            "python3",
            "-c",
            SERVICE,
            node,
            &service.address.to_string(),
            &service.listen_port().to_string(),
            inflight.to_str().context("path")?,
            knob.to_str().context("path")?,
        ],
        None,
    )
}

/// A delay line in `node` (between its `eth0` and `eth1`): `latency_ms` one way, every
/// `drop_every`-th SRv6 frame from `eth0` to `eth1` lost (0: none), and the extra delay and loss
/// [`CpnLab::impair`] writes to its impairment file (none until it does).
pub fn start_delay_line(lab: &mut Lab, node: &str, latency_ms: f64, drop_every: u32) -> Result<()> {
    let impairment = impairment_file(lab, node);
    lab.spawn(
        node,
        &[
            "python3",
            "-c",
            DELAY_LINE,
            &latency_ms.to_string(),
            &drop_every.to_string(),
            impairment.to_str().context("lab path is not UTF-8")?,
        ],
        None,
    )?;
    Ok(())
}

/// The file the delay line in `wan` reads its extra delay and loss from.
fn impairment_file(lab: &Lab, wan: &str) -> PathBuf {
    lab.workdir().join(format!("{wan}.impairment"))
}
