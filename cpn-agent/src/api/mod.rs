//! What operators ask the agent: the control socket (here) and Prometheus (`prometheus`),
//! both answered from the same typed views (`views`) that `cpnctl` deserializes.
//!
//! The control socket is a Unix stream socket (owner-only, 0600) where `cpnctl` asks for the
//! agent's state. One request per connection: a JSON line in, a JSON line out (`{"ok": …}` or
//! `{"error": "…"}`). The answers' shapes are documented in docs/OPERATIONS.md and are what
//! `cpnctl --json` prints.

pub mod prometheus;
mod views;

pub use crate::dataplane::protocol_name;
pub use views::{
    CacheState, Count, ExplainRequest, Explained, ExplainedFlow, FlowFilter, FlowView, NextHopView,
    NodeView, RingShare, SidView, Stats,
};

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::{
    bgp::{
        fsm,
        graceful::Family,
        metric_attr::NodeScore,
        session::{MessageCounts, SessionStats},
    },
    core::{Event as CoreEvent, View as CoreView},
    metrics::NodeMetrics,
    selection::steering::Explanation,
};

/// Where the agent listens unless `[control] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cpn/cpn-agent.sock";

/// What `cpnctl` can ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Neighbors,
    /// The BFD sessions and the packets BFD dropped.
    Bfd,
    /// What STAMP measured of each candidate's path.
    Paths,
    /// The health of this node's checked services, with their latest outcomes.
    Health,
    Routes,
    Services,
    /// The data plane's node entries, named, with ring slots and counters.
    Nodes,
    /// The flow affinity table, filtered.
    Flows(FlowFilter),
    Sids,
    Stats,
    /// The next-hop cache: per node, its cached next hop or why it has none.
    NextHops,
    /// Where the data plane sends a flow, and why.
    Explain(ExplainRequest),
    /// No new flows to the node (by name); its open flows stay. Answers the drained nodes.
    Drain {
        node: String,
    },
    Undrain {
        node: String,
    },
    /// A service's requests in flight now, from the service itself: advertised at once.
    /// Answers the report.
    Load(LoadRequest),
}

/// A service's own load report (`cpnctl load`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The service, as one of this node's `[[service]]`s names it.
    #[serde(flatten)]
    pub service: crate::dataplane::ServiceAddr,
    pub in_flight: f64,
}

impl Eq for LoadRequest {}

/// One BGP neighbor (`cpnctl show neighbors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    pub address: IpAddr,
    pub asn: u32,
    /// RFC 4271 §8.2.2 state: `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`,
    /// `Established`.
    pub state: fsm::State,
    /// Paths received from it (Adj-RIB-In).
    pub paths: usize,
    /// Of those, the ones kept while it restarts (RFC 4724), not sent again yet.
    pub stale_paths: usize,
    /// The families whose End-of-RIB it sent in this session: its routes there are complete.
    pub end_of_rib: Vec<Family>,
    /// Its BFD session, when it is configured (`cpnctl show bfd`).
    #[serde(default)]
    pub bfd: Option<crate::sensing::bfd::Status>,
    /// BGP messages received and sent, by type.
    pub messages: MessageCounts,
    /// Paths it sent that the import policy dropped (neither services nor cpn locators).
    #[serde(default)]
    pub filtered: u64,
}

/// `cpnctl show health`: one checked service of this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceHealth {
    #[serde(flatten)]
    pub service: crate::dataplane::ServiceAddr,
    #[serde(flatten)]
    pub health: crate::metrics::health::Health,
}

/// `cpnctl show paths`: one candidate node's path, as STAMP measured it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathView {
    pub node: String,
    #[serde(flatten)]
    pub stats: crate::sensing::stamp::session::PathStats,
}

/// `cpnctl show bfd`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BfdView {
    pub sessions: Vec<BfdSession>,
    /// Received packets that reached no session, by reason.
    pub dropped: crate::sensing::bfd::Drops,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BfdSession {
    pub neighbor: IpAddr,
    #[serde(flatten)]
    pub status: crate::sensing::bfd::Status,
}

/// One path in the Adj-RIB-In (`cpnctl show routes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedPath {
    pub neighbor: IpAddr,
    /// Kept while the neighbor restarts (RFC 4724), not sent again yet.
    pub stale: bool,
    pub prefix: String,
    pub path_id: u32,
    pub next_hop: Ipv6Addr,
    pub as_path: Vec<u32>,
    /// Accumulated path latency, microseconds.
    pub aigp: Option<u64>,
    pub sid: Option<Ipv6Addr>,
    /// RFC 8986 endpoint behaviour code of the SID.
    pub behavior: Option<u16>,
    /// Free capacity from the Link Bandwidth community.
    pub link_bandwidth: Option<f32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// From the CPN metric attribute.
    pub node: Option<String>,
    pub score: Option<NodeScore>,
    pub metrics: Option<NodeMetrics>,
    /// For a cpn locator: its kernel route (`via GATEWAY dev INTERFACE`) or why there is
    /// none; absent for other paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

/// The agent state the socket serves.
#[derive(Clone, Debug)]
pub struct AgentState {
    /// Configured neighbors and their AS numbers.
    pub neighbors: Vec<(IpAddr, u32)>,
    /// The routing core's snapshots (RIB, links, drains) ...
    pub core: CoreView,
    /// ... and its inbox, for the operator's drains.
    pub operator: tokio::sync::mpsc::Sender<CoreEvent>,
    /// The reporting loop's inbox for the services' own load reports (closed when this node
    /// reports nothing).
    pub reports: tokio::sync::mpsc::Sender<crate::metrics::reporting::LoadReport>,
    /// The version of the core's snapshot the last step of steering applied.
    pub steered: watch::Receiver<u64>,
    /// Each BGP session's state and counters.
    pub sessions: BTreeMap<IpAddr, watch::Receiver<SessionStats>>,
    /// BFD's dropped packets, when it runs.
    pub bfd_drops: Option<watch::Receiver<crate::sensing::bfd::Drops>>,
    /// The health checks of this node's services, when it has any.
    pub health: Option<watch::Receiver<crate::metrics::health::Healths>>,
    /// The learned locators and what the kernel has for each, when this agent installs them.
    pub locators: Option<crate::dataplane::locators::Installed>,
    /// The latest selection explanations, one per service.
    pub explanations: watch::Receiver<Vec<Explanation>>,
    /// The next-hop cache's latest answers, by node id.
    pub nexthops: watch::Receiver<crate::dataplane::nexthop_cache::Answers>,
    /// Node ids and names, as the agent numbers nodes in the maps.
    /// Node id → name, as steering numbers them.
    pub node_names: tokio::sync::watch::Receiver<std::collections::BTreeMap<u32, String>>,
    /// Where the data plane's maps are pinned (none: unpinned, no data-plane views).
    pub pin_dir: Option<PathBuf>,
}

impl AgentState {
    fn answer(&self, request: &Request) -> anyhow::Result<serde_json::Value> {
        Ok(match request {
            Request::Neighbors => serde_json::to_value(self.neighbors())?,
            Request::Bfd => serde_json::to_value(self.bfd())?,
            Request::Paths => serde_json::to_value(self.paths_measured())?,
            Request::Health => serde_json::to_value(self.health())?,
            Request::Routes => serde_json::to_value(self.paths())?,
            Request::Services => serde_json::to_value(&*self.explanations.borrow())?,
            Request::Nodes => serde_json::to_value(self.nodes()?)?,
            Request::Flows(filter) => serde_json::to_value(self.flows(filter)?)?,
            Request::Sids => serde_json::to_value(self.sids()?)?,
            Request::Stats => serde_json::to_value(self.stats()?)?,
            Request::NextHops => serde_json::to_value(self.nexthops()?)?,
            Request::Explain(asked) => serde_json::to_value(self.explain(asked)?)?,
            Request::Drain { node } | Request::Undrain { node } => {
                let drain = matches!(request, Request::Drain { .. });
                serde_json::to_value(self.drain(node, drain)?)?
            }
            Request::Load(load) => {
                self.report_load(load)?;
                serde_json::to_value(load)?
            }
        })
    }

    /// Drains `node` (or undrains it), through the routing core; answers the drained nodes
    /// once steering has stepped on the core's snapshot that says so (the rings do). Blocking
    /// is fine here: requests are answered off the runtime's threads.
    fn drain(&self, node: &str, drain: bool) -> anyhow::Result<Vec<String>> {
        let (published, version) = tokio::sync::oneshot::channel();
        let event = CoreEvent::Drain {
            node: node.to_owned(),
            drain,
            published,
        };
        self.operator
            .blocking_send(event)
            .map_err(|_| anyhow::anyhow!("the routing core has stopped"))?;
        let version = version
            .blocking_recv()
            .map_err(|_| anyhow::anyhow!("the routing core stopped before the drain applied"))?;
        let mut steered = self.steered.clone();
        tokio::runtime::Handle::current()
            .block_on(steered.wait_for(|&stepped| stepped >= version))
            .map_err(|_| anyhow::anyhow!("steering stopped before the drain applied"))?;
        Ok(self.core.borrow().drained.iter().cloned().collect())
    }

    /// Hands a service's load report to the reporting loop; once it has taken it (it
    /// advertises it at once), or why it refused it.
    fn report_load(&self, load: &LoadRequest) -> anyhow::Result<()> {
        let (taken, answer) = tokio::sync::oneshot::channel();
        let report = crate::metrics::reporting::LoadReport {
            service: load.service,
            in_flight: load.in_flight,
            taken,
        };
        self.reports.blocking_send(report).map_err(|_| {
            anyhow::anyhow!(
                "this node reports no load: it serves no [[service]], or has neither [bgp] \
                 nor [metrics] publish_file to report it to"
            )
        })?;
        answer
            .blocking_recv()
            .map_err(|_| anyhow::anyhow!("the reporting loop stopped"))?
            .map_err(anyhow::Error::msg)
    }

    /// Each checked service's health.
    pub fn health(&self) -> Vec<ServiceHealth> {
        self.health
            .as_ref()
            .map(|h| {
                h.borrow()
                    .iter()
                    .map(|(service, health)| ServiceHealth {
                        service: *service,
                        health: health.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What STAMP measured, by candidate node.
    pub fn paths_measured(&self) -> Vec<PathView> {
        let paths = self.core.borrow().paths.clone();
        let mut views: Vec<PathView> = paths
            .iter()
            .map(|(node, stats)| PathView {
                node: node.clone(),
                stats: *stats,
            })
            .collect();
        views.sort_by(|a, b| a.node.cmp(&b.node));
        views
    }

    /// Every BFD session, by neighbor, and what BFD dropped.
    pub fn bfd(&self) -> BfdView {
        let statuses = self.core.borrow().bfd.clone();
        let mut sessions: Vec<BfdSession> = statuses
            .iter()
            .map(|(&neighbor, &status)| BfdSession { neighbor, status })
            .collect();
        sessions.sort_by_key(|s| s.neighbor);
        BfdView {
            sessions,
            dropped: self
                .bfd_drops
                .as_ref()
                .map(|d| d.borrow().clone())
                .unwrap_or_default(),
        }
    }

    /// The configured neighbors with their sessions and links now.
    pub fn neighbors(&self) -> Vec<Neighbor> {
        let snapshot = self.core.borrow().clone();
        let (rib, bfd) = (snapshot.rib, snapshot.bfd);
        self.neighbors
            .iter()
            .map(|&(address, asn)| {
                let session = self
                    .sessions
                    .get(&address)
                    .map(|s| s.borrow().clone())
                    .unwrap_or_default();
                Neighbor {
                    address,
                    asn,
                    state: session.state,
                    paths: rib.paths_from(address),
                    stale_paths: rib.stale_from(address),
                    end_of_rib: rib.end_of_rib(address).iter().collect(),
                    bfd: bfd.get(&address).copied(),
                    messages: session.messages,
                    filtered: session.filtered,
                }
            })
            .collect()
    }

    fn paths(&self) -> Vec<LearnedPath> {
        let locators = self
            .locators
            .as_ref()
            .map(|l| l.borrow().clone())
            .unwrap_or_default();
        let rib = self.core.borrow().rib.clone();
        rib.routes()
            .map(|l| {
                let stale = rib.is_stale(&l);
                let r = l.route;
                let kernel = match r.prefix {
                    ipnet::IpNet::V6(net) => locators
                        .get(&(net.network(), net.prefix_len()))
                        .filter(|locator| locator.next_hop() == r.next_hop)
                        .map(crate::dataplane::locators::Locator::describe),
                    ipnet::IpNet::V4(_) => None,
                };
                LearnedPath {
                    kernel,
                    neighbor: l.neighbor,
                    stale,
                    prefix: r.prefix.to_string(),
                    path_id: r.path_id,
                    next_hop: r.next_hop,
                    as_path: r.as_path,
                    aigp: r.aigp,
                    sid: r.service.map(|s| s.sid),
                    behavior: r.service.map(|s| s.behavior),
                    link_bandwidth: r.link_bandwidth,
                    originator_id: r.originator_id,
                    cluster_list: r.cluster_list,
                    node: r.metrics.as_ref().map(|m| m.node.clone()),
                    score: r.metrics.as_ref().and_then(|m| m.score),
                    metrics: r.metrics.map(|m| m.metrics),
                }
            })
            .collect()
    }
}

/// Listens on `path` (replacing a stale socket file) and answers until the task is dropped.
pub fn spawn(path: &Path, state: AgentState) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    // Root-only: the socket shows the whole routing state and changes it (drains, loads).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // The file mode can be loosened by anyone who owns it; the peer's credentials,
            // which the kernel vouches for, cannot.
            let peer = stream.peer_cred().map(|c| c.uid());
            if !matches!(peer, Ok(uid) if uid == 0 || uid == me) {
                tokio::spawn(refuse(stream, peer.ok()));
                continue;
            }
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(error) = serve(stream, state).await {
                    tracing::debug!(%error, "control connection");
                }
            });
        }
    }))
}

/// Tells a peer that is neither root nor the agent's own user why it gets nothing.
async fn refuse(stream: UnixStream, uid: Option<u32>) {
    let who = uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
    tracing::warn!(uid = %who, "control socket: a connection from another user refused");
    let reply = serde_json::json!({
        "error": format!(
            "refused: the control socket answers root (and the agent's own user) only, not \
             uid {who}; run cpnctl as root"
        )
    });
    let (read, mut write) = stream.into_split();
    // Its request is read (4 KiB at most) and dropped, so that the answer reaches it rather
    // than a broken pipe.
    let mut line = String::new();
    let _ = BufReader::new(read.take(4096)).read_line(&mut line).await;
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
}

async fn serve(stream: UnixStream, state: AgentState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        // Off the runtime thread: reading a ring is 65 537 map lookups, and the BGP sessions
        // and STAMP reflections this thread serves must not wait for them.
        Ok(request) => match tokio::task::spawn_blocking(move || state.answer(&request)).await {
            Ok(Ok(answer)) => serde_json::json!({ "ok": answer }),
            Ok(Err(e)) => serde_json::json!({ "error": format!("{e:#}") }),
            Err(e) => serde_json::json!({ "error": format!("the request failed: {e}") }),
        },
        Err(e) => serde_json::json!({ "error": format!("bad request {:?}: {e}", line.trim()) }),
    };
    let mut text = reply.to_string();
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Asks the agent listening on `socket` (blocking; for `cpnctl`).
pub fn ask(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the agent at {}: {e} (is it running? as root? `--socket` names \
             another one)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    let mut reply: serde_json::Value = serde_json::from_str(&answer)?;
    if let Some(error) = reply.get("error") {
        anyhow::bail!(
            "the agent says: {}",
            error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned)
        );
    }
    Ok(reply["ok"].take())
}

/// The socket path of a configuration (`[control] socket`, else [`DEFAULT_SOCKET`]).
pub fn socket_of(configured: Option<&PathBuf>) -> PathBuf {
    configured
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        assert_eq!(
            serde_json::to_string(&Request::Neighbors).unwrap(),
            r#"{"command":"neighbors"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"routes"}"#).unwrap(),
            Request::Routes
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::NextHops).unwrap(),
            r#"{"command":"next_hops"}"#
        );
        let explain = Request::Explain(ExplainRequest {
            client: "2001:db8:1::1".parse().unwrap(),
            service: "2001:db8:cafe::1".parse().unwrap(),
            protocol: 6,
            port: 7000,
            source_port: Some(40000),
        });
        assert_eq!(
            serde_json::to_string(&explain).unwrap(),
            r#"{"command":"explain","client":"2001:db8:1::1","service":"2001:db8:cafe::1","protocol":6,"port":7000,"source_port":40000}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"flows","node":"edge1"}"#).unwrap(),
            Request::Flows(FlowFilter {
                node: Some("edge1".into()),
                ..FlowFilter::default()
            })
        );
    }
}
