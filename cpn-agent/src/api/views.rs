//! The control socket's data-plane answers: the pinned maps (dataplane/pinned.rs) with the
//! agent's names for what the maps only number (node ids, service ids), and `explain`, which
//! puts the data plane's lookup for one flow beside the selection that built its ring.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::AgentState;
use crate::{
    dataplane::{Flow, FlowRow, Lookup, MacAddr, NodeRow, NotCached, Pinned, Seen, SidRow},
    selection::steering::Explanation,
};
use cpn_common::{
    maps,
    stats::{ProtoCounter, Reason},
};

/// A node entry with its name, ring slots and counter (`cpnctl show nodes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub entry: NodeRow,
    pub name: Option<String>,
    /// Ring slots per service address in the live rings.
    pub slots: BTreeMap<String, u32>,
    pub packets: u64,
    pub bytes: u64,
}

/// One node's next-hop cache entry (`cpnctl show nexthops`): the agent's latest answer for its
/// first segment, and what the data plane's map holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopView {
    pub node: u32,
    pub name: Option<String>,
    pub first_segment: std::net::Ipv6Addr,
    #[serde(flatten)]
    pub state: CacheState,
    /// From the live map entry (none: the data plane asks the FIB for every packet).
    pub ifindex: Option<u32>,
    pub dev: Option<String>,
    /// The gateway (or the first segment itself, on-link) whose MAC is cached.
    pub gateway: Option<std::net::Ipv6Addr>,
    pub dst_mac: Option<MacAddr>,
    pub src_mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// Which of the node's two next-hop slots is live.
    pub half: Option<u32>,
}

/// Whether a node's next hop is cached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CacheState {
    /// The data plane uses the cached next hop.
    Cached,
    /// The FIB path, for this reason.
    NotCached { why: NotCached },
    /// Resolved, not (yet) in the map: the owner has not applied it.
    Pending,
}

/// An affinity entry with its node's name (`cpnctl show flows`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    #[serde(flatten)]
    pub entry: FlowRow,
    pub name: Option<String>,
}

/// Which flows to show; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    pub client: Option<IpAddr>,
    pub service: Option<IpAddr>,
    /// Node name (or id).
    pub node: Option<String>,
    /// At most this many, most recently active first.
    pub limit: Option<usize>,
}

/// A local SID with its counter (`cpnctl show sids`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidView {
    #[serde(flatten)]
    pub entry: SidRow,
    pub packets: u64,
    pub bytes: u64,
}

/// One counter with what it counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Service address, node name, SID, reason or `program/protocol`.
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The data plane's counters by name (`cpnctl show stats`); zero counters left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets steered, per service.
    pub services: Vec<Count>,
    /// Packets encapsulated towards each node.
    pub nodes: Vec<Count>,
    /// Packets processed by each local SID.
    pub sids: Vec<Count>,
    /// Exceptions and drops, by reason.
    pub reasons: Vec<Count>,
    /// Packets each program saw, by protocol (`program/protocol`).
    pub protocols: Vec<Count>,
}

/// `cpnctl explain`: where the data plane sends the flows asked about, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Explained {
    /// The flow asked about, or (no source port given) the client's open flows to the service
    /// from the affinity table.
    pub flows: Vec<ExplainedFlow>,
    /// The live ring of the matched service, as shares per node.
    pub ring: Vec<RingShare>,
    /// The agent's latest selection for the service: score breakdown and hysteresis state.
    pub selection: Option<Explanation>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExplainedFlow {
    #[serde(flatten)]
    pub lookup: Lookup,
    /// The chosen node's name.
    pub name: Option<String>,
    /// The chosen node's segments (travel order).
    pub segments: Vec<std::net::Ipv6Addr>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RingShare {
    pub node: u32,
    pub name: Option<String>,
    pub slots: u32,
    pub share: f64,
}

/// What `explain` was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRequest {
    pub client: IpAddr,
    pub service: IpAddr,
    pub protocol: u8,
    /// The service port (0 for protocols without ports).
    pub port: u16,
    /// The client's port; none: explain the client's open flows.
    pub source_port: Option<u16>,
}

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

impl AgentState {
    fn pinned(&self) -> anyhow::Result<Pinned> {
        self.pin_dir
            .as_ref()
            .map(Pinned::new)
            .ok_or_else(|| anyhow::anyhow!("this agent keeps its maps unpinned (pin_dir = \"\")"))
    }

    /// Node id → name, for every node the agent has named.
    fn names(&self) -> BTreeMap<u32, String> {
        self.node_names.borrow().clone()
    }

    pub(super) fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let pinned = self.pinned()?;
        let names = self.names();
        let services = service_names(&pinned)?;
        let rings = pinned.rings()?;
        let counters: BTreeMap<u32, _> = pinned
            .counters(maps::NODE_STATS)?
            .into_iter()
            .map(|c| (c.index, c))
            .collect();
        Ok(pinned
            .nodes()?
            .into_iter()
            .map(|entry| {
                let id = entry.node;
                let slots = rings
                    .iter()
                    .filter_map(|r| {
                        let service = services.get(&r.service)?.clone();
                        Some((service, *r.slots.get(&id)?))
                    })
                    .collect();
                let counter = counters.get(&id);
                NodeView {
                    entry,
                    name: names.get(&id).cloned(),
                    slots,
                    packets: counter.map_or(0, |c| c.packets),
                    bytes: counter.map_or(0, |c| c.bytes),
                }
            })
            .collect())
    }

    pub(super) fn nexthops(&self) -> anyhow::Result<Vec<NextHopView>> {
        let pinned = self.pinned()?;
        let names = self.names();
        let live: BTreeMap<u32, _> = pinned
            .nexthops()?
            .into_iter()
            .map(|row| (row.node, row))
            .collect();
        let answers = self.nexthops.borrow().clone();
        Ok(answers
            .into_iter()
            .map(|(node, resolution)| {
                let row = live.get(&node);
                let state = match (&resolution.answer, row) {
                    (Err(why), _) => CacheState::NotCached { why: why.clone() },
                    (Ok(_), Some(_)) => CacheState::Cached,
                    (Ok(_), None) => CacheState::Pending,
                };
                NextHopView {
                    node,
                    name: names.get(&node).cloned(),
                    first_segment: resolution.first_segment,
                    state,
                    ifindex: row.map(|r| r.ifindex),
                    dev: row.map(|r| crate::dataplane::kernel::interface_name(r.ifindex)),
                    gateway: resolution.answer.as_ref().ok().map(|n| n.neighbour),
                    dst_mac: row.map(|r| r.dst_mac),
                    src_mac: row.map(|r| r.src_mac),
                    mtu: row.map(|r| r.mtu),
                    half: row.map(|r| r.half),
                }
            })
            .collect())
    }

    pub(super) fn flows(&self, filter: &FlowFilter) -> anyhow::Result<Vec<FlowView>> {
        let names = self.names();
        let mut flows: Vec<FlowView> = self
            .pinned()?
            .flows()?
            .into_iter()
            .map(|entry| FlowView {
                name: names.get(&entry.node).cloned(),
                entry,
            })
            .filter(|f| {
                filter.client.is_none_or(|c| f.entry.source == c)
                    && filter.service.is_none_or(|s| f.entry.destination == s)
                    && filter.node.as_ref().is_none_or(|n| {
                        f.name.as_ref() == Some(n) || f.entry.node.to_string() == *n
                    })
            })
            .collect();
        flows.sort_by_key(|f| f.entry.idle_ms);
        if let Some(limit) = filter.limit {
            flows.truncate(limit);
        }
        Ok(flows)
    }

    pub(super) fn sids(&self) -> anyhow::Result<Vec<SidView>> {
        let pinned = self.pinned()?;
        let counters: BTreeMap<u32, _> = pinned
            .counters(maps::SID_STATS)?
            .into_iter()
            .map(|c| (c.index, c))
            .collect();
        Ok(pinned
            .sids()?
            .into_iter()
            .map(|entry| {
                let counter = counters.get(&entry.counter);
                SidView {
                    packets: counter.map_or(0, |c| c.packets),
                    bytes: counter.map_or(0, |c| c.bytes),
                    entry,
                }
            })
            .collect())
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let pinned = self.pinned()?;
        let named = |map: &'static str, name: &dyn Fn(u32) -> String| -> anyhow::Result<_> {
            Ok(pinned
                .counters(map)?
                .into_iter()
                .map(|c| Count {
                    name: name(c.index),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect::<Vec<_>>())
        };
        let services = service_names(&pinned)?;
        let nodes = self.names();
        let sids: BTreeMap<u32, String> = pinned
            .sids()?
            .into_iter()
            .map(|s| (s.counter, s.sid.to_string()))
            .collect();
        let or_index = |names: &BTreeMap<u32, String>, i: u32| {
            names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"))
        };
        let mut protocols = Vec::new();
        for seen in Seen::ALL {
            let map = seen.map();
            if !pinned.has(map) {
                continue;
            }
            let counts = pinned.counters(map)?;
            protocols.extend(ProtoCounter::ALL.iter().filter_map(|&counter| {
                let c = counts.iter().find(|c| c.index == seen.index(counter))?;
                Some(Count {
                    name: format!("{}/{}", seen.program(), counter.name()),
                    packets: c.packets,
                    bytes: c.bytes,
                })
            }));
        }
        Ok(Stats {
            services: named(maps::SERVICE_STATS, &|i| or_index(&services, i))?,
            nodes: named(maps::NODE_STATS, &|i| or_index(&nodes, i))?,
            sids: named(maps::SID_STATS, &|i| or_index(&sids, i))?,
            reasons: named(maps::REASON_STATS, &|i| {
                Reason::ALL
                    .get(usize::try_from(i).unwrap_or(usize::MAX))
                    .map_or_else(|| format!("#{i}"), |r| r.name().to_owned())
            })?,
            protocols,
        })
    }

    pub(super) fn explain(&self, request: &ExplainRequest) -> anyhow::Result<Explained> {
        let pinned = self.pinned()?;
        let names = self.names();
        let ports = has_ports(request.protocol);
        let flow = |source_port| Flow {
            source: request.client,
            destination: request.service,
            protocol: request.protocol,
            source_port,
            destination_port: if ports { request.port } else { 0 },
        };
        let asked: Vec<Flow> = match request.source_port {
            Some(port) => vec![flow(if ports { port } else { 0 })],
            None if !ports => vec![flow(0)],
            // The ring slot depends on the source port: explain the client's open flows.
            None => pinned
                .flows()?
                .into_iter()
                .filter(|f| {
                    f.source == request.client
                        && f.destination == request.service
                        && f.protocol == request.protocol
                        && f.destination_port == request.port
                })
                .map(|f| flow(f.source_port))
                .collect(),
        };
        let nodes: BTreeMap<u32, NodeRow> =
            pinned.nodes()?.into_iter().map(|n| (n.node, n)).collect();
        let flows = asked
            .into_iter()
            .map(|f| {
                let lookup = pinned.lookup(f)?;
                Ok(ExplainedFlow {
                    name: lookup.node.and_then(|n| names.get(&n).cloned()),
                    segments: lookup
                        .node
                        .and_then(|n| nodes.get(&n))
                        .map(|n| n.segments.clone())
                        .unwrap_or_default(),
                    lookup,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The service the flow matched (even with no open flow to look up).
        let service = pinned.lookup(flow(0))?.service;
        let ring = pinned
            .rings()?
            .into_iter()
            .find(|r| service.as_ref().is_some_and(|s| s.service == r.service))
            .map(|r| {
                r.slots
                    .iter()
                    .map(|(&node, &slots)| RingShare {
                        node,
                        name: names.get(&node).cloned(),
                        slots,
                        share: f64::from(slots) / f64::from(r.size.max(1)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let selection = service.and_then(|s| {
            self.explanations
                .borrow()
                .iter()
                .find(|e| e.service == s.service)
                .cloned()
        });
        Ok(Explained {
            flows,
            ring,
            selection,
        })
    }
}

/// Service id → its address as operators write it (`addr`, `addr tcp/443`).
fn service_names(pinned: &Pinned) -> anyhow::Result<BTreeMap<u32, String>> {
    Ok(pinned
        .services()?
        .into_iter()
        .map(|s| {
            let any = s.port == 0 && s.protocol == maps::ANY_PROTOCOL;
            let service = crate::dataplane::ServiceAddr {
                addr: s.address,
                port: (!any).then_some((s.protocol, s.port)),
            };
            (s.service, service.to_string())
        })
        .collect())
}
