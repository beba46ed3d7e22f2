//! Writing the data plane's tables: services, nodes, rings and local SIDs (next hops:
//! nexthops.rs).
//!
//! This is the only way anything (agent, tests, tools) sets up the maps, so the layouts and the
//! update order live in one place. A ring switch writes the inactive half first and then flips
//! the service's selector with one store, so no packet ever sees a half-written ring.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{
    Array, HashMap, MapError, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use cpn_common::{
    maps::{
        self, ANY_PROTOCOL, Behavior, FlowEntry, FlowKey, MAX_LOCAL_SIDS, MAX_NODES, MAX_SERVICES,
        MAX_SIDS, NODE_REDUCED, NodeEntry, NodeState, RING_CAPACITY, RingSelector,
        SERVICE_AFFINITY, SERVICE_PORTS, SERVICE_PORTS_ONLY, SR_DOMAIN_PREFIXES, ServiceEntry,
        ServiceKey, SidEntry, ring_index,
    },
    stats::{Counter, Reason},
};
use ipnet::Ipv6Net;

use super::{Dataplane, Error, TickClock};

/// A service: its address, and optionally protocol and port. The one key of a service in the
/// configuration, the data plane's service map, steering and the published metrics (as JSON
/// `address`, `protocol`, `port`, the last two both present or both absent).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "ServiceFields", into = "ServiceFields")]
pub struct ServiceAddr {
    pub addr: IpAddr,
    /// `(protocol, port)`, e.g. `(6, 443)`; `None` matches any protocol and port.
    pub port: Option<(u8, u16)>,
}

/// How a [`ServiceAddr`] reads in JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct ServiceFields {
    address: IpAddr,
    protocol: Option<u8>,
    port: Option<u16>,
}

impl TryFrom<ServiceFields> for ServiceAddr {
    type Error = String;

    fn try_from(fields: ServiceFields) -> Result<Self, String> {
        Self::new(fields.address, fields.protocol, fields.port).ok_or_else(|| {
            format!(
                "service {}: protocol and port go together, or neither",
                fields.address
            )
        })
    }
}

impl From<ServiceAddr> for ServiceFields {
    fn from(service: ServiceAddr) -> Self {
        Self {
            address: service.addr,
            protocol: service.protocol(),
            port: service.port_number(),
        }
    }
}

/// `tcp`, `udp`, … or the number.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        0 => "any".into(),
        n => n.to_string(),
    }
}

/// As operators write a service: `ADDRESS`, or `ADDRESS PROTOCOL/PORT` (`2001:db8::1 tcp/443`).
impl std::fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some((protocol, port)) => write!(f, "{} {}/{port}", self.addr, protocol_name(protocol)),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl ServiceAddr {
    /// The service at `addr`, for `protocol` and `port` if given; `None` when only one of the
    /// two is.
    pub const fn new(addr: IpAddr, protocol: Option<u8>, port: Option<u16>) -> Option<Self> {
        let port = match (protocol, port) {
            (Some(protocol), Some(port)) => Some((protocol, port)),
            (None, None) => None,
            _ => return None,
        };
        Some(Self { addr, port })
    }

    pub const fn protocol(&self) -> Option<u8> {
        match self.port {
            Some((protocol, _)) => Some(protocol),
            None => None,
        }
    }

    pub const fn port_number(&self) -> Option<u16> {
        match self.port {
            Some((_, port)) => Some(port),
            None => None,
        }
    }

    fn key(&self) -> ServiceKey {
        let (protocol, port) = self.port.unwrap_or((ANY_PROTOCOL, 0));
        ServiceKey {
            addr: addr16(self.addr),
            port: port.to_be_bytes(),
            protocol,
            _pad: [0; 5],
        }
    }
}

/// How a service is steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Service id: `0..MAX_SERVICES`; names its ring and its counters.
    pub id: u32,
    /// Flow affinity: `None` = off; `Some(None)` = on, entries live until the LRU evicts them;
    /// `Some(Some(t))` = on, an entry idle for `t` is forgotten.
    pub affinity: Option<Option<Duration>>,
}

/// A compute node's encapsulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Segments in travel order: the first is the outer destination, the last the node's
    /// decapsulating SID. 1..=`MAX_SIDS`.
    pub segments: Vec<Ipv6Addr>,
    /// Outer source address.
    pub encap_src: Ipv6Addr,
    /// H.Encaps.Red instead of H.Encaps.
    pub reduced: bool,
    pub state: NodeState,
}

impl Node {
    /// Bytes pushed in front of the client's packet: the outer IPv6 header and, unless the
    /// reduced encapsulation leaves it out, the SRH (as `cpn_steer` builds them).
    pub fn encap_len(&self) -> u32 {
        let in_srh = self.segments.len() - usize::from(self.reduced);
        let srh = if in_srh == 0 { 0 } else { 8 + 16 * in_srh };
        u32::try_from(40 + srh).unwrap_or(u32::MAX)
    }
}

/// A local SID's behaviour (RFC 8986 §4). `Interface` is how the outgoing interface of End.X
/// and End.DX* is named: an index for the data plane, a name in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidBehavior<Interface = u32> {
    End,
    EndX {
        nexthop: Ipv6Addr,
        oif: Interface,
    },
    EndDx6 {
        nexthop: Ipv6Addr,
        oif: Interface,
    },
    EndDx4 {
        nexthop: Ipv4Addr,
        oif: Interface,
    },
    /// `table` 0: the host's own routing (local delivery, then the policy rules and main);
    /// any other: that table alone (RFC 8986 §4.6).
    EndDt6 {
        table: u32,
    },
    EndDt4 {
        table: u32,
    },
    EndDt46 {
        table: u32,
    },
}

impl<I> SidBehavior<I> {
    /// Which behaviour it is, without its parameters.
    pub const fn kind(&self) -> Behavior {
        match self {
            Self::End => Behavior::End,
            Self::EndX { .. } => Behavior::EndX,
            Self::EndDx6 { .. } => Behavior::EndDx6,
            Self::EndDx4 { .. } => Behavior::EndDx4,
            Self::EndDt6 { .. } => Behavior::EndDt6,
            Self::EndDt4 { .. } => Behavior::EndDt4,
            Self::EndDt46 { .. } => Behavior::EndDt46,
        }
    }

    /// The same behaviour with its interface named another way (e.g. name → index).
    pub fn map_interface<J, E>(
        self,
        f: impl FnOnce(I) -> Result<J, E>,
    ) -> Result<SidBehavior<J>, E> {
        Ok(match self {
            Self::End => SidBehavior::End,
            Self::EndX { nexthop, oif } => SidBehavior::EndX {
                nexthop,
                oif: f(oif)?,
            },
            Self::EndDx6 { nexthop, oif } => SidBehavior::EndDx6 {
                nexthop,
                oif: f(oif)?,
            },
            Self::EndDx4 { nexthop, oif } => SidBehavior::EndDx4 {
                nexthop,
                oif: f(oif)?,
            },
            Self::EndDt6 { table } => SidBehavior::EndDt6 { table },
            Self::EndDt4 { table } => SidBehavior::EndDt4 { table },
            Self::EndDt46 { table } => SidBehavior::EndDt46 { table },
        })
    }
}

impl SidBehavior {
    fn entry(self, stats_index: u32) -> SidEntry {
        let (oif_or_table, nexthop) = match self {
            Self::End => (0, [0; 16]),
            Self::EndX { nexthop, oif } | Self::EndDx6 { nexthop, oif } => (oif, nexthop.octets()),
            Self::EndDx4 { nexthop, oif } => (oif, nexthop.to_ipv6_mapped().octets()),
            Self::EndDt6 { table } | Self::EndDt4 { table } | Self::EndDt46 { table } => {
                (table, [0; 16])
            }
        };
        SidEntry {
            behavior: self.kind() as u32,
            stats_index,
            oif_or_table,
            _pad: 0,
            nexthop,
        }
    }
}

/// 16-byte form of an address: IPv4 as IPv4-mapped IPv6.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn check(what: &'static str, value: u32, limit: u32) -> Result<(), Error> {
    if value < limit {
        Ok(())
    } else {
        Err(Error::OutOfRange { what, value, limit })
    }
}

impl Dataplane {
    pub(super) fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))
    }

    pub(super) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, Error> {
        self.ebpf.map(name).ok_or(Error::MissingMap(name))
    }

    /// Adds or replaces a service address.
    ///
    /// `cpn_steer` looks up the address alone first and the exact (address, port, protocol)
    /// key only when that entry has [`SERVICE_PORTS`]: so an address with port entries always
    /// has an address entry, its own service or a [`SERVICE_PORTS_ONLY`] marker.
    pub fn set_service(&mut self, addr: &ServiceAddr, config: &ServiceConfig) -> Result<(), Error> {
        check("service id", config.id, MAX_SERVICES)?;
        let (flags, timeout, refresh) = match config.affinity {
            None => (0, 0, 0),
            Some(timeout) => {
                let clock = TickClock::kernel()?;
                let timeout = timeout.map_or(0, |t| clock.seconds_to_ticks(t.as_secs().max(1)));
                let second = clock.seconds_to_ticks(1);
                let refresh = if timeout == 0 {
                    second
                } else {
                    second.min(timeout / 4).max(1)
                };
                (SERVICE_AFFINITY, timeout, refresh)
            }
        };
        let entry = ServiceEntry {
            id: config.id,
            flags,
            affinity_timeout_jiffies: timeout,
            affinity_refresh_jiffies: refresh,
        };
        let address = ServiceAddr {
            addr: addr.addr,
            port: None,
        };
        let mut services = self.services_mut()?;
        if addr.port.is_some() {
            insert(&mut services, addr.key(), entry)?;
            let marker = match get(&services, &address.key())? {
                Some(existing) => ServiceEntry {
                    flags: existing.flags | SERVICE_PORTS,
                    ..existing
                },
                None => ServiceEntry {
                    flags: SERVICE_PORTS | SERVICE_PORTS_ONLY,
                    ..ServiceEntry::default()
                },
            };
            insert(&mut services, address.key(), marker)
        } else {
            let ports = has_port_entries(&services, addr.addr)?;
            let flags = entry.flags | if ports { SERVICE_PORTS } else { 0 };
            insert(&mut services, addr.key(), ServiceEntry { flags, ..entry })
        }
    }

    /// Removes a service address (its id's ring stays for other addresses that share it).
    pub fn remove_service(&mut self, addr: &ServiceAddr) -> Result<(), Error> {
        let address = ServiceAddr {
            addr: addr.addr,
            port: None,
        };
        let mut services = self.services_mut()?;
        let ports_left = |services: &Services<'_>| has_port_entries(services, addr.addr);
        if addr.port.is_some() {
            remove(&mut services, &addr.key())?;
            if !ports_left(&services)?
                && let Some(existing) = get(&services, &address.key())?
            {
                if existing.flags & SERVICE_PORTS_ONLY != 0 {
                    remove(&mut services, &address.key())?;
                } else {
                    let flags = existing.flags & !SERVICE_PORTS;
                    insert(
                        &mut services,
                        address.key(),
                        ServiceEntry { flags, ..existing },
                    )?;
                }
            }
            Ok(())
        } else if ports_left(&services)? {
            // Its port entries stay: leave the marker they need.
            let marker = ServiceEntry {
                flags: SERVICE_PORTS | SERVICE_PORTS_ONLY,
                ..ServiceEntry::default()
            };
            insert(&mut services, address.key(), marker)
        } else {
            remove(&mut services, &addr.key())
        }
    }

    fn services_mut(&mut self) -> Result<Services<'_>, Error> {
        HashMap::try_from(self.map_mut(maps::SERVICES)?).map_err(services_error)
    }

    /// Makes every cached FIB answer stale (`fib_cache`): the kernel's routes, neighbours,
    /// links or rules changed. The first bump turns the cache on.
    pub fn bump_fib_generation(&mut self) -> Result<(), Error> {
        let next = match self.fib_generation()?.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        self.set_fib_generation(next)
    }

    /// Turns the FIB answer cache off (generation 0): no agent keeps it current any more.
    pub fn disable_fib_cache(&mut self) -> Result<(), Error> {
        self.set_fib_generation(0)
    }

    fn fib_generation(&self) -> Result<u64, Error> {
        let name = maps::FIB_GENERATION;
        let generation: Array<_, u64> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        generation
            .get(&0, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    fn set_fib_generation(&mut self, value: u64) -> Result<(), Error> {
        let name = maps::FIB_GENERATION;
        let mut generation: Array<_, u64> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        generation
            .set(0, value, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Adds or replaces node `id`. A cached next hop for another first segment is turned off
    /// first (the next-hop cache resolves the new one).
    pub fn set_node(&mut self, id: u32, node: &Node) -> Result<(), Error> {
        check("node id", id, MAX_NODES)?;
        let count = node.segments.len();
        if !(1..=MAX_SIDS).contains(&count) {
            return Err(Error::Segments { count });
        }
        let mut entry = NodeEntry::EMPTY;
        // SRH order: the last segment first.
        for (slot, sid) in entry.segments.iter_mut().zip(node.segments.iter().rev()) {
            *slot = sid.octets();
        }
        entry.segment_count = u8::try_from(count).map_err(|_| Error::Segments { count })?;
        entry.encap_src = node.encap_src.octets();
        entry.flags = if node.reduced { NODE_REDUCED } else { 0 };
        entry.state = node.state as u8;
        let old = self.node_entry(id)?;
        self.forget_nexthop_unless(
            id,
            super::nexthops::first_segment(&old),
            node.segments.first().copied(),
        )?;
        self.write_node(id, entry)
    }

    /// The segments of every node entry in use, by id: after a restart over pinned maps, the
    /// nodes the previous agent programmed (their flows still name these ids).
    pub fn nodes_in_use(&self) -> Result<std::collections::BTreeMap<u32, Vec<Ipv6Addr>>, Error> {
        let name = maps::NODES;
        let nodes: Array<_, NodeEntry> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        let mut in_use = std::collections::BTreeMap::new();
        for (id, entry) in (0..).zip(nodes.iter()) {
            let entry = entry.map_err(|source| Error::Map { map: name, source })?;
            if entry.state == NodeState::Unused as u8 {
                continue;
            }
            let count = usize::from(entry.segment_count).min(MAX_SIDS);
            // Stored in SRH order (the last segment first).
            let segments = entry.segments[..count]
                .iter()
                .rev()
                .map(|s| Ipv6Addr::from(*s))
                .collect();
            in_use.insert(id, segments);
        }
        Ok(in_use)
    }

    fn node_entry(&self, id: u32) -> Result<NodeEntry, Error> {
        let name = maps::NODES;
        let nodes: Array<_, NodeEntry> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        nodes
            .get(&id, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Changes a node's state (drain, down, back up) without touching its segments.
    pub fn set_node_state(&mut self, id: u32, state: NodeState) -> Result<(), Error> {
        check("node id", id, MAX_NODES)?;
        let mut entry = self.node_entry(id)?;
        entry.state = state as u8;
        self.write_node(id, entry)
    }

    /// Removes node `id` and its cached next hop: flows that were on it are re-steered by the
    /// ring.
    pub fn remove_node(&mut self, id: u32) -> Result<(), Error> {
        check("node id", id, MAX_NODES)?;
        self.set_nexthop(id, None)?;
        self.write_node(id, NodeEntry::EMPTY)
    }

    fn write_node(&mut self, id: u32, entry: NodeEntry) -> Result<(), Error> {
        let name = maps::NODES;
        let mut nodes: Array<_, NodeEntry> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        nodes
            .set(id, entry, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Publishes a new ring (node ids; empty = no usable node) for service `id`: writes the
    /// inactive half, then flips the selector in one store.
    pub fn publish_ring(&mut self, id: u32, ring: &[u32]) -> Result<(), Error> {
        check("service id", id, MAX_SERVICES)?;
        let size = u32::try_from(ring.len()).unwrap_or(u32::MAX);
        if size > RING_CAPACITY {
            return Err(Error::OutOfRange {
                what: "ring size",
                value: size,
                limit: RING_CAPACITY + 1,
            });
        }
        if let Some(&bad) = ring.iter().find(|&&node| node >= MAX_NODES) {
            return Err(Error::OutOfRange {
                what: "node id in ring",
                value: bad,
                limit: MAX_NODES,
            });
        }
        let selector = self.ring_selector(id)?;
        let half = selector.half() ^ 1;
        if let Some(memory) = &mut self.ring_memory {
            memory.write(id, half, ring);
        } else {
            let name = maps::RINGS;
            let mut rings: Array<_, u32> = Array::try_from(self.map_mut(name)?)
                .map_err(|source| Error::Map { map: name, source })?;
            for (slot, &node) in (0..).zip(ring) {
                rings
                    .set(ring_index(id, half, slot), node, 0)
                    .map_err(|source| Error::Map { map: name, source })?;
            }
        }
        let name = maps::RING_SELECTORS;
        let mut selectors: Array<_, RingSelector> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        selectors
            .set(id, RingSelector::new(half, size), 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// The live ring half and size of service `id`.
    pub fn ring_selector(&self, id: u32) -> Result<RingSelector, Error> {
        check("service id", id, MAX_SERVICES)?;
        let name = maps::RING_SELECTORS;
        let selectors: Array<_, RingSelector> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        selectors
            .get(&id, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Adds or replaces a local SID; `stats_index` (`0..MAX_LOCAL_SIDS`) names its counter.
    pub fn set_sid(
        &mut self,
        sid: Ipv6Addr,
        behavior: SidBehavior,
        stats_index: u32,
    ) -> Result<(), Error> {
        check("SID stats index", stats_index, MAX_LOCAL_SIDS)?;
        let name = maps::LOCAL_SIDS;
        let mut sids: HashMap<_, [u8; 16], SidEntry> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        sids.insert(sid.octets(), behavior.entry(stats_index), 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    pub fn remove_sid(&mut self, sid: Ipv6Addr) -> Result<(), Error> {
        let name = maps::LOCAL_SIDS;
        let mut sids: HashMap<_, [u8; 16], SidEntry> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        sids.remove(&sid.octets())
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Replaces the SR domain (RFC 8754 §5.1) with `prefixes`; `None` admits every source
    /// (`::/0`). New prefixes go in before old ones go, so no admitted source is ever refused
    /// in between.
    pub fn set_sr_domain(&mut self, prefixes: Option<&[Ipv6Net]>) -> Result<(), Error> {
        let wanted: Vec<Ipv6Net> = match prefixes {
            Some(prefixes) => prefixes.iter().map(Ipv6Net::trunc).collect(),
            None => vec![Ipv6Net::default()],
        };
        check(
            "SR domain prefixes",
            u32::try_from(wanted.len()).unwrap_or(u32::MAX),
            SR_DOMAIN_PREFIXES + 1,
        )?;
        let present = self.sr_domain()?;
        let name = maps::SR_DOMAIN;
        let error = |source| Error::Map { map: name, source };
        let mut trie: LpmTrie<_, [u8; 16], u8> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(error)?;
        for prefix in &wanted {
            let key = Key::new(u32::from(prefix.prefix_len()), prefix.addr().octets());
            trie.insert(&key, 1, 0).map_err(error)?;
        }
        for gone in present.iter().filter(|p| !wanted.contains(p)) {
            let key = Key::new(u32::from(gone.prefix_len()), gone.addr().octets());
            trie.remove(&key).map_err(error)?;
        }
        Ok(())
    }

    /// The SR domain's prefixes.
    pub fn sr_domain(&self) -> Result<Vec<Ipv6Net>, Error> {
        let name = maps::SR_DOMAIN;
        let error = |source| Error::Map { map: name, source };
        let trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(self.map(name)?).map_err(error)?;
        trie.keys()
            .map(|key| {
                let key = key.map_err(error)?;
                let len = u8::try_from(key.prefix_len()).unwrap_or(128);
                Ok(Ipv6Net::new(Ipv6Addr::from(key.data()), len).unwrap_or_default())
            })
            .collect()
    }

    /// The affinity entry of a flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>, Error> {
        let name = maps::FLOWS;
        let flows: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        match flows.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map { map: name, source }),
        }
    }

    /// One slot of a per-CPU counter map, summed over CPUs.
    pub fn counter(&self, map: &'static str, index: u32) -> Result<Counter, Error> {
        let counters: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.map(map)?).map_err(|source| Error::Map { map, source })?;
        let per_cpu = counters
            .get(&index, 0)
            .map_err(|source| Error::Map { map, source })?;
        Ok(Counter::sum(per_cpu.iter()))
    }

    /// Exception and drop counters, by reason.
    pub fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>, Error> {
        Reason::ALL
            .iter()
            .map(|&r| Ok((r, self.counter(maps::REASON_STATS, r as u32)?)))
            .collect()
    }
}

type Services<'a> = HashMap<&'a mut aya::maps::MapData, ServiceKey, ServiceEntry>;

fn services_error(source: aya::maps::MapError) -> Error {
    Error::Map {
        map: maps::SERVICES,
        source,
    }
}

fn get(services: &Services<'_>, key: &ServiceKey) -> Result<Option<ServiceEntry>, Error> {
    match services.get(key, 0) {
        Ok(entry) => Ok(Some(entry)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(services_error(source)),
    }
}

fn insert(services: &mut Services<'_>, key: ServiceKey, entry: ServiceEntry) -> Result<(), Error> {
    services.insert(key, entry, 0).map_err(services_error)
}

fn remove(services: &mut Services<'_>, key: &ServiceKey) -> Result<(), Error> {
    services.remove(key).map_err(services_error)
}

/// Whether `addr` has (address, port, protocol) entries (the map holds at most
/// `SERVICE_KEYS` keys: a walk is cheap next to a ring).
fn has_port_entries(services: &Services<'_>, addr: IpAddr) -> Result<bool, Error> {
    let addr = addr16(addr);
    for key in services.keys() {
        let key = key.map_err(services_error)?;
        if key.addr == addr && (key.port != [0; 2] || key.protocol != ANY_PROTOCOL) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::{Node, NodeState};

    #[test]
    fn encapsulation_length_counts_what_cpn_steer_pushes() {
        let node = |segments: usize, reduced| Node {
            segments: (0..segments)
                .map(|i| {
                    std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, u16::try_from(i).unwrap())
                })
                .collect(),
            encap_src: std::net::Ipv6Addr::UNSPECIFIED,
            reduced,
            state: NodeState::Active,
        };
        assert_eq!(node(1, false).encap_len(), 40 + 8 + 16);
        assert_eq!(node(1, true).encap_len(), 40);
        assert_eq!(node(3, true).encap_len(), 40 + 8 + 32);
        assert_eq!(node(6, false).encap_len(), 40 + 8 + 96);
    }
}
