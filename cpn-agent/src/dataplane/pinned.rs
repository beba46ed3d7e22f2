//! Reading the data plane's maps from their pins, typed and decoded: for `cpnctl maps dump`
//! (which works with the agent stopped) and for the agent's control socket and exporter, which
//! read beside the owner's writes. Read-only: the owner stays the one writer (tables.rs).
//!
//! [`Pinned::lookup`] walks a flow through the maps exactly as `cpn_steer` does (service,
//! affinity, ring, node), so `cpnctl explain` says where the data plane sends it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use cpn_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    maps::{
        self, ANY_PROTOCOL, Behavior, FibCacheSlot, FlowEntry, FlowKey, NextHopEntry,
        NextHopSelector, NodeEntry, NodeState, RING_ATTEMPTS, RING_CAPACITY, RingSelector,
        SERVICE_AFFINITY, SERVICE_PORTS, SERVICE_PORTS_ONLY, ServiceEntry, ServiceKey, SidEntry,
        TokenBucket, nexthop_index, ring_index, ring_slot,
    },
    stats::Counter,
};
use serde::{Deserialize, Serialize};

use super::{Error, MacAddr, TickClock, addr16, nexthops};

/// The maps pinned under one directory (the agent's `[dataplane] pin_dir`).
#[derive(Clone, Debug)]
pub struct Pinned {
    dir: PathBuf,
}

/// A services map entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub address: IpAddr,
    /// IP protocol number; 0 = any (with port 0).
    pub protocol: u8,
    pub port: u16,
    /// Service id: its ring, selector and counter.
    pub service: u32,
    pub affinity: bool,
    /// Affinity idle timeout; 0 = until the LRU evicts the flow.
    pub idle_timeout_s: u32,
}

/// A service's live ring: which half, how many slots, and slots per node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRow {
    pub service: u32,
    pub half: u32,
    pub size: u32,
    pub slots: BTreeMap<u32, u32>,
}

/// A node entry in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: u32,
    /// `active`, `draining` or `down`.
    pub state: String,
    /// In travel order: the first is the outer destination, the last the node's SID.
    pub segments: Vec<Ipv6Addr>,
    pub encap_src: Ipv6Addr,
    /// H.Encaps.Red.
    pub reduced: bool,
}

/// A cached next hop (one half of a node's two next-hop slots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopRow {
    pub node: u32,
    /// Which of the node's two slots.
    pub half: u32,
    /// The egress interface.
    pub ifindex: u32,
    pub mtu: u32,
    /// The neighbour's MAC (gateway, or the first segment on a connected subnet).
    pub dst_mac: MacAddr,
    /// The egress interface's MAC.
    pub src_mac: MacAddr,
}

/// A cached FIB answer (`fib_cache`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FibCacheRow {
    pub destination: IpAddr,
    /// The interface the question came from (0: none).
    pub from_ifindex: u32,
    /// The table looked up alone; 0: through the policy rules.
    pub table: u32,
    /// The CPU whose slot holds it (each CPU caches its own answers).
    pub cpu: u32,
    pub ifindex: u32,
    pub dst_mac: super::nexthops::MacAddr,
    pub src_mac: super::nexthops::MacAddr,
    /// The longest packet the FIB let through.
    pub fits_len: u32,
    /// Taken in an older generation than `fib_gen`'s: never used again.
    pub stale: bool,
}

/// One ICMP rate-limit bucket (`icmp_budget`, or `icmp_peers` with its destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpBucketRow {
    /// The errors' destination (the invoking packets' source); none for the bucket of all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    pub cpu: u32,
    /// Credit left, in nanoseconds of the bucket's interval (one error costs one interval).
    pub credit_ns: u64,
    /// `bpf_ktime_get_ns` of the last error this bucket judged.
    pub last_ns: u64,
}

/// A flow affinity entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub node: u32,
    /// Milliseconds since the flow's last packet.
    pub idle_ms: u64,
}

/// A local SID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidRow {
    pub sid: Ipv6Addr,
    /// Its behaviour, by its RFC 8986 name in JSON (`End.DT6`, …); `None` for a code this
    /// agent does not know (a map written by another version), shown in `code`.
    pub behavior: Option<Behavior>,
    /// The behaviour's code in the SID map.
    pub code: u32,
    /// End.X / End.DX*: the outgoing interface index; End.DT*: the lookup table.
    pub oif_or_table: u32,
    pub nexthop: Option<IpAddr>,
    /// Index of its counter in the SID counter map.
    pub counter: u32,
}

/// One non-zero slot of a counter map, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    pub index: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// A flow, as `cpn_steer` keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
}

impl Flow {
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: addr16(self.source),
            dst: addr16(self.destination),
            src_port: self.source_port.to_be_bytes(),
            dst_port: self.destination_port.to_be_bytes(),
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// Where `cpn_steer` sends a flow, step by step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub flow: Flow,
    /// The matching services entry (the exact address, protocol and port, else the address
    /// alone); none: the packet is not for a service and passes to the kernel.
    pub service: Option<ServiceRow>,
    /// The flow hash (ring slot, outer flow label).
    pub hash: u32,
    /// The flow's affinity entry, if the service keeps affinity and the flow has one.
    pub affinity: Option<AffinityStep>,
    /// The ring step, when affinity did not decide.
    pub ring: Option<RingStep>,
    /// The node the packet is encapsulated towards; none: passed to the kernel
    /// (`no_usable_node`).
    pub node: Option<u32>,
    /// `affinity` or `ring`.
    pub decided_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityStep {
    pub node: u32,
    pub idle_ms: u64,
    /// Within the service's idle timeout.
    pub fresh: bool,
    /// The node's entry still takes flows (`active` or `draining`).
    pub usable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingStep {
    pub half: u32,
    pub size: u32,
    /// The slot that decided: `hash % size`, or a re-hashed one (`maps::ring_slot`) when the
    /// node of the slots tried before is not usable.
    pub slot: u32,
    pub node: u32,
    pub usable: bool,
    /// The nodes of the slots tried before this one (down or gone), in order.
    #[serde(default)]
    pub skipped: Vec<u32>,
}

/// An address from 16 bytes: IPv4-mapped ones as IPv4.
pub fn ip_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The operator's word for a node state.
pub fn state_name(state: u8) -> &'static str {
    match state {
        s if s == NodeState::Active as u8 => "active",
        s if s == NodeState::Draining as u8 => "draining",
        s if s == NodeState::Down as u8 => "down",
        _ => "unused",
    }
}

fn map_error(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, source }
}

impl Pinned {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is pinned here.
    pub fn has(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    fn open(&self, name: &'static str) -> Result<Map, Error> {
        MapData::from_pin(self.dir.join(name))
            .and_then(Map::from_map_data)
            .map_err(map_error(name))
    }

    pub fn services(&self) -> Result<Vec<ServiceRow>, Error> {
        let map = self.open(maps::SERVICES)?;
        let services: HashMap<_, ServiceKey, ServiceEntry> =
            HashMap::try_from(map).map_err(map_error(maps::SERVICES))?;
        let mut rows: Vec<ServiceRow> = services
            .iter()
            .filter_map(Result::ok)
            // An address's marker for its port entries is no service of its own.
            .filter(|(_, v)| v.flags & SERVICE_PORTS_ONLY == 0)
            .map(|(k, v)| service_row(&k, &v))
            .collect::<Result<_, _>>()?;
        rows.sort_by_key(|r| r.service);
        Ok(rows)
    }

    fn selectors(&self) -> Result<Vec<(u32, RingSelector)>, Error> {
        let map = self.open(maps::RING_SELECTORS)?;
        let selectors: Array<_, RingSelector> =
            Array::try_from(map).map_err(map_error(maps::RING_SELECTORS))?;
        Ok(selectors
            .iter()
            .enumerate()
            .filter_map(|(id, s)| Some((u32::try_from(id).ok()?, s.ok()?)))
            .filter(|(_, s)| s.size() > 0)
            .collect())
    }

    /// Every live ring, as slots per node.
    pub fn rings(&self) -> Result<Vec<RingRow>, Error> {
        let map = self.open(maps::RINGS)?;
        let rings: Array<_, u32> = Array::try_from(map).map_err(map_error(maps::RINGS))?;
        let mut out = Vec::new();
        for (service, selector) in self.selectors()? {
            let mut slots = BTreeMap::new();
            for slot in 0..selector.size().min(RING_CAPACITY) {
                let node = rings
                    .get(&ring_index(service, selector.half(), slot), 0)
                    .map_err(map_error(maps::RINGS))?;
                *slots.entry(node).or_default() += 1;
            }
            out.push(RingRow {
                service,
                half: selector.half(),
                size: selector.size(),
                slots,
            });
        }
        Ok(out)
    }

    /// The node entries in use.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, Error> {
        let map = self.open(maps::NODES)?;
        let nodes: Array<_, NodeEntry> = Array::try_from(map).map_err(map_error(maps::NODES))?;
        Ok(nodes
            .iter()
            .enumerate()
            .filter_map(|(id, n)| Some((u32::try_from(id).ok()?, n.ok()?)))
            .filter(|(_, n)| n.state != NodeState::Unused as u8)
            .map(|(id, n)| node_row(id, &n))
            .collect())
    }

    /// The live selector of every node with a cached next hop, by node id.
    pub fn nexthop_selectors(&self) -> Result<BTreeMap<u32, NextHopSelector>, Error> {
        let name = maps::NEXTHOP_SELECTORS;
        let selectors: Array<_, NextHopSelector> =
            Array::try_from(self.open(name)?).map_err(map_error(name))?;
        let mut live = BTreeMap::new();
        for (id, selector) in selectors.iter().enumerate() {
            let selector = selector.map_err(map_error(name))?;
            if selector.is_live() {
                live.insert(u32::try_from(id).unwrap_or(u32::MAX), selector);
            }
        }
        Ok(live)
    }

    /// The live cached next hop of every node that has one (the others take the FIB path).
    pub fn nexthops(&self) -> Result<Vec<NextHopRow>, Error> {
        let name = maps::NEXTHOPS;
        let entries: Array<_, NextHopEntry> =
            Array::try_from(self.open(name)?).map_err(map_error(name))?;
        self.nexthop_selectors()?
            .into_iter()
            .map(|(id, selector)| {
                let entry = entries
                    .get(&nexthop_index(id, selector.half()), 0)
                    .map_err(map_error(name))?;
                Ok(nexthops::row(id, selector.half(), &entry))
            })
            .collect()
    }

    /// Every next-hop slot that was ever written (not all zero), live or idle: the raw map.
    pub fn nexthop_slots(&self) -> Result<Vec<(NextHopRow, bool)>, Error> {
        let name = maps::NEXTHOPS;
        let live = self.nexthop_selectors()?;
        let entries: Array<_, NextHopEntry> =
            Array::try_from(self.open(name)?).map_err(map_error(name))?;
        let mut rows = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.map_err(map_error(name))?;
            if entry == NextHopEntry::default() {
                continue;
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let (node, half) = (index / 2, index % 2);
            let is_live = live.get(&node).is_some_and(|s| s.half() == half);
            rows.push((nexthops::row(node, half, &entry), is_live));
        }
        Ok(rows)
    }

    /// The flow affinity table.
    pub fn flows(&self) -> Result<Vec<FlowRow>, Error> {
        let map = self.open(maps::FLOWS)?;
        let flows: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(map).map_err(map_error(maps::FLOWS))?;
        let clock = TickClock::kernel()?;
        let now = clock.now();
        Ok(flows
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| FlowRow {
                source: ip_of(k.src),
                destination: ip_of(k.dst),
                protocol: k.protocol,
                source_port: u16::from_be_bytes(k.src_port),
                destination_port: u16::from_be_bytes(k.dst_port),
                node: v.node,
                idle_ms: clock.ticks_to_ms(now.saturating_sub(v.last_seen_jiffies)),
            })
            .collect())
    }

    /// The local SIDs.
    pub fn sids(&self) -> Result<Vec<SidRow>, Error> {
        let map = self.open(maps::LOCAL_SIDS)?;
        let sids: HashMap<_, [u8; 16], SidEntry> =
            HashMap::try_from(map).map_err(map_error(maps::LOCAL_SIDS))?;
        let mut rows: Vec<SidRow> = sids
            .iter()
            .filter_map(Result::ok)
            .map(|(sid, e)| {
                let behavior = Behavior::from_u32(e.behavior);
                let has_nexthop = behavior.is_some_and(Behavior::cross_connects);
                SidRow {
                    sid: Ipv6Addr::from(sid),
                    behavior,
                    code: e.behavior,
                    oif_or_table: e.oif_or_table,
                    nexthop: has_nexthop.then(|| ip_of(e.nexthop)),
                    counter: e.stats_index,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.sid);
        Ok(rows)
    }

    /// The non-zero slots of a per-CPU counter map.
    pub fn counters(&self, name: &'static str) -> Result<Vec<CounterRow>, Error> {
        let map = self.open(name)?;
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map).map_err(map_error(name))?;
        let mut out = Vec::new();
        for (index, values) in array.iter().enumerate() {
            let sum = Counter::sum(values.map_err(map_error(name))?.iter());
            if sum.packets > 0 {
                out.push(CounterRow {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    packets: sum.packets,
                    bytes: sum.bytes,
                });
            }
        }
        Ok(out)
    }

    /// The ICMP rate limit's bucket of all errors, one per CPU that has sent any.
    pub fn icmp_budget(&self) -> Result<Vec<IcmpBucketRow>, Error> {
        let name = maps::ICMP_BUDGET;
        let array: PerCpuArray<_, TokenBucket> =
            PerCpuArray::try_from(self.open(name)?).map_err(map_error(name))?;
        let values = array.get(&0, 0).map_err(map_error(name))?;
        Ok(values
            .iter()
            .enumerate()
            .filter(|(_, b)| b.last_ns != 0)
            .map(|(cpu, b)| IcmpBucketRow {
                destination: None,
                cpu: u32::try_from(cpu).unwrap_or(u32::MAX),
                credit_ns: b.credit_ns,
                last_ns: b.last_ns,
            })
            .collect())
    }

    /// The generation of the kernel's routing state the cached FIB answers must carry.
    pub fn fib_generation(&self) -> Result<u64, Error> {
        let name = maps::FIB_GENERATION;
        let generation: Array<_, u64> =
            Array::try_from(self.open(name)?).map_err(map_error(name))?;
        generation.get(&0, 0).map_err(map_error(name))
    }

    /// The cached FIB answers, per CPU.
    pub fn fib_cache(&self) -> Result<Vec<FibCacheRow>, Error> {
        let current = self.fib_generation()?;
        let name = maps::FIB_CACHE;
        let cache: PerCpuArray<_, FibCacheSlot> =
            PerCpuArray::try_from(self.open(name)?).map_err(map_error(name))?;
        let mut rows = Vec::new();
        for values in cache.iter() {
            let values = values.map_err(map_error(name))?;
            for (cpu, slot) in values.iter().enumerate() {
                // Never written: generation 0 is no answer.
                if slot.answer.generation == 0 {
                    continue;
                }
                rows.push(FibCacheRow {
                    destination: ip_of(slot.key.dst),
                    from_ifindex: slot.key.ifindex,
                    table: slot.key.table,
                    cpu: u32::try_from(cpu).unwrap_or(u32::MAX),
                    ifindex: slot.answer.ifindex,
                    dst_mac: super::nexthops::MacAddr(slot.answer.dst_mac),
                    src_mac: super::nexthops::MacAddr(slot.answer.src_mac),
                    fits_len: slot.answer.fits_len,
                    stale: slot.answer.generation != current,
                });
            }
        }
        rows.sort_by_key(|r| (r.destination, r.from_ifindex, r.table, r.cpu));
        Ok(rows)
    }

    /// The ICMP rate limit's buckets per destination, per CPU that has sent errors there.
    pub fn icmp_destinations(&self) -> Result<Vec<IcmpBucketRow>, Error> {
        let name = maps::ICMP_PEERS;
        let peers: PerCpuHashMap<_, [u8; 16], TokenBucket> =
            PerCpuHashMap::try_from(self.open(name)?).map_err(map_error(name))?;
        let mut rows = Vec::new();
        for entry in &peers {
            let (destination, values) = entry.map_err(map_error(name))?;
            for (cpu, b) in values.iter().enumerate().filter(|(_, b)| b.last_ns != 0) {
                rows.push(IcmpBucketRow {
                    destination: Some(ip_of(destination)),
                    cpu: u32::try_from(cpu).unwrap_or(u32::MAX),
                    credit_ns: b.credit_ns,
                    last_ns: b.last_ns,
                });
            }
        }
        rows.sort_by_key(|r| (r.destination, r.cpu));
        Ok(rows)
    }

    /// Where `cpn_steer` sends `flow` now (without touching the affinity table).
    pub fn lookup(&self, flow: Flow) -> Result<Lookup, Error> {
        let key = flow.key();
        let hash = flow_hash(&key, FLOW_HASH_SEED);
        let mut lookup = Lookup {
            flow,
            service: None,
            hash,
            affinity: None,
            ring: None,
            node: None,
            decided_by: None,
        };
        let Some((service_key, service)) = self.service_of(&key)? else {
            return Ok(lookup);
        };
        lookup.service = Some(service_row(&service_key, &service)?);
        let nodes: Array<_, NodeEntry> =
            Array::try_from(self.open(maps::NODES)?).map_err(map_error(maps::NODES))?;
        let usable = |id: u32| {
            nodes
                .get(&id, 0)
                .is_ok_and(|n| NodeState::keeps_flows(n.state))
        };
        if service.flags & SERVICE_AFFINITY != 0
            && let Some(entry) = self.flow_entry(&key)?
        {
            let clock = TickClock::kernel()?;
            let idle = clock.now().saturating_sub(entry.last_seen_jiffies);
            let timeout = u64::from(service.affinity_timeout_jiffies);
            let step = AffinityStep {
                node: entry.node,
                idle_ms: clock.ticks_to_ms(idle),
                fresh: timeout == 0 || idle < timeout,
                usable: usable(entry.node),
            };
            if step.fresh && step.usable {
                lookup.node = Some(step.node);
                lookup.decided_by = Some("affinity".to_owned());
                lookup.affinity = Some(step);
                return Ok(lookup);
            }
            lookup.affinity = Some(step);
        }
        let selectors: Array<_, RingSelector> = Array::try_from(self.open(maps::RING_SELECTORS)?)
            .map_err(map_error(maps::RING_SELECTORS))?;
        let selector = selectors
            .get(&service.id, 0)
            .map_err(map_error(maps::RING_SELECTORS))?;
        if selector.size() == 0 {
            return Ok(lookup);
        }
        let rings: Array<_, u32> =
            Array::try_from(self.open(maps::RINGS)?).map_err(map_error(maps::RINGS))?;
        // As `cpn_steer` does: the flow's own slot, then re-hashed ones past unusable nodes.
        let mut step = RingStep {
            half: selector.half(),
            size: selector.size(),
            slot: 0,
            node: 0,
            usable: false,
            skipped: Vec::new(),
        };
        for attempt in 0..RING_ATTEMPTS {
            if attempt > 0 {
                step.skipped.push(step.node);
            }
            step.slot = ring_slot(hash, attempt, selector.size());
            step.node = rings
                .get(&ring_index(service.id, selector.half(), step.slot), 0)
                .map_err(map_error(maps::RINGS))?;
            step.usable = usable(step.node);
            if step.usable {
                break;
            }
        }
        let node = step.node;
        if step.usable {
            lookup.node = Some(node);
            lookup.decided_by = Some("ring".to_owned());
        }
        lookup.ring = Some(step);
        Ok(lookup)
    }

    /// The service of a flow as `cpn_steer` finds it: the address entry, and the exact key
    /// first when that entry says the address has port entries.
    fn service_of(&self, flow: &FlowKey) -> Result<Option<(ServiceKey, ServiceEntry)>, Error> {
        let services: HashMap<_, ServiceKey, ServiceEntry> =
            HashMap::try_from(self.open(maps::SERVICES)?).map_err(map_error(maps::SERVICES))?;
        let get = |key: &ServiceKey| match services.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(maps::SERVICES)(e)),
        };
        let any = ServiceKey {
            addr: flow.dst,
            port: [0; 2],
            protocol: ANY_PROTOCOL,
            _pad: [0; 5],
        };
        let Some(by_address) = get(&any)? else {
            return Ok(None);
        };
        if by_address.flags & SERVICE_PORTS != 0 {
            let exact = ServiceKey {
                port: flow.dst_port,
                protocol: flow.protocol,
                ..any
            };
            if let Some(entry) = get(&exact)? {
                return Ok(Some((exact, entry)));
            }
        }
        Ok((by_address.flags & SERVICE_PORTS_ONLY == 0).then_some((any, by_address)))
    }

    fn flow_entry(&self, key: &FlowKey) -> Result<Option<FlowEntry>, Error> {
        let flows: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(self.open(maps::FLOWS)?).map_err(map_error(maps::FLOWS))?;
        match flows.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(maps::FLOWS)(e)),
        }
    }
}

fn service_row(key: &ServiceKey, entry: &ServiceEntry) -> Result<ServiceRow, Error> {
    let timeout = entry.affinity_timeout_jiffies;
    let idle_timeout_s = if timeout == 0 {
        0
    } else {
        TickClock::kernel()?.ticks_to_seconds(timeout)
    };
    Ok(ServiceRow {
        address: ip_of(key.addr),
        protocol: key.protocol,
        port: u16::from_be_bytes(key.port),
        service: entry.id,
        affinity: entry.flags & SERVICE_AFFINITY != 0,
        idle_timeout_s,
    })
}

fn node_row(id: u32, n: &NodeEntry) -> NodeRow {
    let count = usize::from(n.segment_count).min(maps::MAX_SIDS);
    NodeRow {
        node: id,
        state: state_name(n.state).to_owned(),
        // Stored in SRH order (last segment first); shown in travel order.
        segments: n.segments[..count]
            .iter()
            .rev()
            .map(|s| Ipv6Addr::from(*s))
            .collect(),
        encap_src: Ipv6Addr::from(n.encap_src),
        reduced: n.flags & maps::NODE_REDUCED != 0,
    }
}
