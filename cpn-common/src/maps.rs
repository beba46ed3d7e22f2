//! Names, capacities and layouts of the BPF maps, and where they are pinned.
//!
//! A map name is limited to 15 bytes by the kernel (`BPF_OBJ_NAME_LEN` minus the NUL), and the
//! pinned file under [`PIN_DIR`] carries the same name, so `bpftool map dump pinned
//! /sys/fs/bpf/cpn/<name>` finds it.
//!
//! Addresses are stored as 16 bytes in network order; IPv4 addresses are IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one key type serves both families.
//! The control plane computes, the data plane indexes: segment lists are stored in the order the
//! SRH carries them, and rings are plain arrays of node ids.

use crate::{
    programs::Hook,
    stats::{ProtoCounter, Reason},
};

/// Directory under the BPF filesystem where every cpn map is pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/cpn";

/// Per-CPU packet/byte counters of the steering programs, one block of [`ProtoCounter`]s per
/// [`Hook`] (see [`steer_proto_index`]).
pub const STEER_PROTO_STATS: &str = "steer_proto";
/// Per-CPU packet/byte counters of `cpn_endpoint`, indexed by [`ProtoCounter`].
pub const ENDPOINT_PROTO_STATS: &str = "endpoint_proto";
/// [`ServiceKey`] → [`ServiceEntry`]: the service addresses `cpn_steer` catches.
pub const SERVICES: &str = "services";
/// Per service id: the [`RingSelector`] saying which ring half is live and its size.
pub const RING_SELECTORS: &str = "ring_sel";
/// Node ids, `RING_CAPACITY` per half, two halves per service id (see [`ring_index`]).
pub const RINGS: &str = "rings";
/// Node id → [`NodeEntry`]: where and how to encapsulate towards a compute node.
pub const NODES: &str = "nodes";
/// LRU [`FlowKey`] → [`FlowEntry`]: flow affinity.
pub const FLOWS: &str = "flows";
/// SID (16 bytes) → [`SidEntry`]: the SIDs `cpn_endpoint` processes.
pub const LOCAL_SIDS: &str = "local_sids";
/// Per-CPU [`Counter`](crate::stats::Counter) per service id (packets steered).
pub const SERVICE_STATS: &str = "service_stats";
/// Per-CPU counter per node id (packets encapsulated towards it).
pub const NODE_STATS: &str = "node_stats";
/// Per-CPU counter per SID stats index (packets processed by that SID).
pub const SID_STATS: &str = "sid_stats";
/// Per-CPU counter per [`Reason`] (exceptions and drops).
pub const REASON_STATS: &str = "reason_stats";
/// Per-CPU [`TokenBucket`] (one entry) limiting all ICMP errors the programs send.
pub const ICMP_BUDGET: &str = "icmp_budget";
/// LRU per-CPU source address (16 bytes) → [`TokenBucket`]: ICMP errors per destination.
pub const ICMP_PEERS: &str = "icmp_peers";
/// Per node id: the [`NextHopSelector`] saying whether a cached next hop is live, and in which
/// half of [`NEXTHOPS`].
pub const NEXTHOP_SELECTORS: &str = "nexthop_sel";
/// [`NextHopEntry`], two halves per node id (see [`nexthop_index`]): how to reach the node's
/// first segment without a FIB lookup, resolved by the agent from the kernel's routes and
/// neighbours.
pub const NEXTHOPS: &str = "nexthops";

/// Entries of `endpoint_proto`.
pub const PROTO_STATS_ENTRIES: u32 = ProtoCounter::COUNT;
/// Entries of `steer_proto`: a block per hook.
pub const STEER_PROTO_STATS_ENTRIES: u32 = Hook::COUNT * ProtoCounter::COUNT;

/// Who saw a packet: whose protocol counters count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seen {
    /// The steering code, at this hook (its block of `steer_proto`).
    Steer(Hook),
    /// `cpn_endpoint` (`endpoint_proto`).
    Endpoint,
}

impl Seen {
    /// Every program and hook that counts, in the order the agent reports them.
    pub const ALL: [Self; 4] = [
        Self::Steer(Hook::Xdp),
        Self::Steer(Hook::TcIngress),
        Self::Steer(Hook::TcEgress),
        Self::Endpoint,
    ];

    /// The counter map.
    pub const fn map(self) -> &'static str {
        match self {
            Self::Steer(_) => STEER_PROTO_STATS,
            Self::Endpoint => ENDPOINT_PROTO_STATS,
        }
    }

    /// Where `counter` is in [`Self::map`].
    pub const fn index(self, counter: ProtoCounter) -> u32 {
        match self {
            Self::Steer(hook) => steer_proto_index(hook, counter),
            Self::Endpoint => counter as u32,
        }
    }

    /// The program that counts.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Steer(hook) => hook.program(),
            Self::Endpoint => crate::programs::ENDPOINT,
        }
    }
}

/// Where `hook`'s `counter` is in `steer_proto`.
pub const fn steer_proto_index(hook: Hook, counter: ProtoCounter) -> u32 {
    hook as u32 * ProtoCounter::COUNT + counter as u32
}

/// The hook and counter at `index` of `steer_proto`, if there are such.
pub const fn steer_proto_counter(index: u32) -> Option<(Hook, ProtoCounter)> {
    match (
        Hook::from_index(index / ProtoCounter::COUNT),
        ProtoCounter::from_index(index % ProtoCounter::COUNT),
    ) {
        (Some(hook), Some(counter)) => Some((hook, counter)),
        _ => None,
    }
}
/// Entries of the reason counter map.
pub const REASON_STATS_ENTRIES: u32 = Reason::COUNT;
/// Service ids are `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 64;
/// Service keys (address, port, protocol) that can map to those ids.
pub const SERVICE_KEYS: u32 = 1024;
/// Slots per ring half: the largest ring the agent may build (a prime; the default size).
pub const RING_CAPACITY: u32 = 65_537;
/// Entries of the rings map.
pub const RINGS_ENTRIES: u32 = MAX_SERVICES * 2 * RING_CAPACITY;
/// Map flags of the rings map: `BPF_F_MMAPABLE`, so that the agent writes a ring's 65 537
/// slots as stores into its mapping instead of one syscall each.
pub const RINGS_FLAGS: usize = 1 << 10;
/// Node ids are `0..MAX_NODES`.
pub const MAX_NODES: u32 = 1024;
/// Default capacity of the flow affinity table (the agent may load it larger).
pub const FLOWS_ENTRIES: u32 = 65_536;
/// Local SIDs, and SID stats indexes `0..MAX_LOCAL_SIDS`.
pub const MAX_LOCAL_SIDS: u32 = 256;
/// Most segments in one node's segment list.
pub const MAX_SIDS: usize = 6;
/// Destinations of ICMP errors whose rate is tracked each (least recently used ones go).
pub const ICMP_PEERS_ENTRIES: u32 = 8192;

/// Per-CPU array of [`FibCacheSlot`]s, direct-mapped by [`fib_slot`]: answers of
/// `bpf_fib_lookup` that ended in a forward, reused while their generation is
/// [`FIB_GENERATION`]'s. A question whose slot holds another one asks the FIB and takes the
/// slot: no hashing, no locks, no cross-CPU writes.
pub const FIB_CACHE: &str = "fib_cache";
/// One `u64`: the generation of the kernel's routing state, which the agent bumps on every
/// route, neighbour, link or rule notification; a cached answer of another generation is stale.
/// 0 (no agent started, or the agent stopped) turns the cache off.
pub const FIB_GENERATION: &str = "fib_gen";
/// Slots of the FIB answer cache, per CPU (a power of two).
pub const FIB_CACHE_ENTRIES: u32 = 4096;

/// LPM trie of IPv6 prefixes (`lpm_trie::Key<[u8; 16]>` → `u8`, unused): the SR domain
/// (RFC 8754 §5.1). `cpn_endpoint` drops a packet to a local SID whose source matches none;
/// `::/0` admits every source (what a data plane starts with).
pub const SR_DOMAIN: &str = "sr_domain";
/// Prefixes the SR domain may hold.
pub const SR_DOMAIN_PREFIXES: u32 = 64;

/// Every map the object defines; the agent pins exactly these.
pub const ALL: [&str; 19] = [
    STEER_PROTO_STATS,
    ENDPOINT_PROTO_STATS,
    SERVICES,
    RING_SELECTORS,
    RINGS,
    NODES,
    FLOWS,
    LOCAL_SIDS,
    SERVICE_STATS,
    NODE_STATS,
    SID_STATS,
    REASON_STATS,
    ICMP_BUDGET,
    ICMP_PEERS,
    NEXTHOP_SELECTORS,
    NEXTHOPS,
    FIB_CACHE,
    FIB_GENERATION,
    SR_DOMAIN,
];

/// `protocol` value of a service key that matches any protocol (with `port == 0`).
pub const ANY_PROTOCOL: u8 = 0;

/// Key of the services map: destination address, L4 port and protocol. The data plane looks up
/// the address alone (`port == 0`, `protocol == ANY_PROTOCOL`) first: one lookup for a packet
/// to an address that is no service, or one without port entries. Only when that entry says
/// [`SERVICE_PORTS`] does it look up the exact key too, which wins if present.
// Keys and values are 8-aligned: the data plane copies their addresses in 8-byte words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Network order; 0 = any port.
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 5],
}

/// Service flag: keep each flow on its node (flow affinity table).
pub const SERVICE_AFFINITY: u32 = 1;
/// Flag of an address entry: (address, port, protocol) entries exist for this address.
pub const SERVICE_PORTS: u32 = 2;
/// Flag of an address entry that is no service itself, only there to say [`SERVICE_PORTS`]:
/// other ports of the address are not steered.
pub const SERVICE_PORTS_ONLY: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Service id: index of its ring pair, its selector and its counter.
    pub id: u32,
    /// `SERVICE_*` flags.
    pub flags: u32,
    /// Affinity idle timeout in kernel ticks (jiffies, `CONFIG_HZ` a second); 0 keeps entries
    /// until the LRU evicts them.
    pub affinity_timeout_jiffies: u32,
    /// How stale an entry's last-seen time may get before a hit rewrites it (a second, or a
    /// quarter of a shorter timeout): hits read the shared entry without writing it, so its
    /// cache line does not bounce between CPUs on every packet.
    pub affinity_refresh_jiffies: u32,
}

/// Which ring half is live and how many of its slots are used, packed in one `u32` so that
/// switching rings is a single atomic store: bit 0 is the half, bits 1.. the size.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingSelector(pub u32);

impl RingSelector {
    pub const fn new(half: u32, size: u32) -> Self {
        Self(size << 1 | (half & 1))
    }
    pub const fn half(self) -> u32 {
        self.0 & 1
    }
    /// Slots in use; 0 = no ring (the service has no usable node).
    pub const fn size(self) -> u32 {
        self.0 >> 1
    }
}

/// Index in the rings map of `slot` of `half` of service `id`'s ring.
pub const fn ring_index(id: u32, half: u32, slot: u32) -> u32 {
    (id * 2 + half) * RING_CAPACITY + slot
}

/// Slots a flow tries in its service's ring before it gives up: its own, then re-hashed ones.
pub const RING_ATTEMPTS: u32 = 4;

/// The slot of a flow's `attempt`th try in a ring of `size` (> 0) slots: its own slot,
/// `hash % size`, first. When the node there is down (the agent marks a dead node at once,
/// one map write, before it has built a ring without it), the flow tries slots re-hashed from
/// its hash: the dead node's flows spread over the live nodes by their share of the ring, and
/// no other flow moves. A flow whose every try names a dead node is passed
/// (`no_usable_node`): with a quarter of the ring dead, 1 flow in 256.
#[inline]
pub const fn ring_slot(hash: u32, attempt: u32, size: u32) -> u32 {
    if attempt == 0 {
        return hash % size;
    }
    // MurmurHash3's 32-bit finalizer over the hash and the attempt.
    let mut h = hash ^ attempt.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h % size
}

/// Node state, as the data plane sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeState {
    /// No node with this id: flows pointing here are re-hashed.
    #[default]
    Unused = 0,
    /// Takes new and existing flows.
    Active = 1,
    /// Keeps its existing flows; the control plane gives it no ring slots.
    Draining = 2,
    /// Dead: its flows are re-hashed.
    Down = 3,
}

impl NodeState {
    /// Whether existing flows may stay on a node in this state.
    pub const fn keeps_flows(state: u8) -> bool {
        state == Self::Active as u8 || state == Self::Draining as u8
    }
}

/// Node flag: H.Encaps.Red (RFC 8986 §5.2): the first segment is only in the destination
/// address; with one segment no SRH is pushed.
pub const NODE_REDUCED: u8 = 1;

/// Where a compute node is and how to reach it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// The segment list in SRH order: `segments[0]` is the last segment (the node's decap SID),
    /// `segments[segment_count - 1]` the first, which becomes the outer destination.
    pub segments: [[u8; 16]; MAX_SIDS],
    /// Outer source address.
    pub encap_src: [u8; 16],
    /// 1..=`MAX_SIDS`; 0 marks an unusable entry.
    pub segment_count: u8,
    /// `NODE_*` flags.
    pub flags: u8,
    /// A [`NodeState`].
    pub state: u8,
    pub _pad: [u8; 5],
}

impl NodeEntry {
    pub const EMPTY: Self = Self {
        segments: [[0; 16]; MAX_SIDS],
        encap_src: [0; 16],
        segment_count: 0,
        flags: 0,
        state: NodeState::Unused as u8,
        _pad: [0; 5],
    };
}

/// Flow affinity key: the 5-tuple (ports 0 for fragments and port-less protocols).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub node: u32,
    pub _pad: u32,
    /// `bpf_jiffies64` of the flow's last packet, at most its service's
    /// `affinity_refresh_jiffies` old.
    pub last_seen_jiffies: u64,
}

/// Which half of a node's two [`NEXTHOPS`] slots is live, packed in one `u32` so that
/// switching is a single atomic store (the writer fills the idle half first, as for rings):
/// bit 0 is the half, bit 1 says a cached next hop is live. 0 (no cached next hop): the data
/// plane asks the kernel's FIB for every packet, as without a cache.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopSelector(pub u32);

impl NextHopSelector {
    /// No cached next hop: the FIB path.
    pub const NONE: Self = Self(0);
    const LIVE: u32 = 2;

    pub const fn live(half: u32) -> Self {
        Self(Self::LIVE | (half & 1))
    }
    pub const fn is_live(self) -> bool {
        self.0 & Self::LIVE != 0
    }
    pub const fn half(self) -> u32 {
        self.0 & 1
    }
}

/// Index in the next-hop map of `half` of node `id`'s slots.
pub const fn nexthop_index(id: u32, half: u32) -> u32 {
    id * 2 + (half & 1)
}

/// A resolved next hop towards a node's first segment: what `bpf_fib_lookup` would answer
/// for it (route and neighbour), so that the data plane can redirect without asking.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopEntry {
    /// The egress interface.
    pub ifindex: u32,
    /// The route's MTU, else the interface's: an encapsulated packet larger than this takes
    /// the FIB path, which answers "fragmentation needed".
    pub mtu: u32,
    /// The neighbour's MAC (the gateway's, or the first segment's when it is on-link).
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC.
    pub src_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// What a FIB answer depends on: `bpf_fib_lookup` is asked with nothing else (no source, no
/// ports, no mark), so the answer for the same key and kernel state is the same.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FibKey {
    /// The destination; IPv4 as IPv4-mapped IPv6 (one key type for both families).
    pub dst: [u8; 16],
    /// The interface the packet came in on (policy rules may select by it), or the one an
    /// End.X / End.DX* looks up from.
    pub ifindex: u32,
    /// The routing table looked up alone (RFC 8986 §4.6), or 0 for the policy rules.
    pub table: u32,
}

/// The slot of a question in the FIB answer cache: a multiplicative hash of its words (a
/// collision only costs a lookup).
#[expect(
    clippy::inline_always,
    reason = "the eBPF programs call it; a BPF-to-BPF call would cost stack and verifier work"
)]
#[inline(always)]
pub const fn fib_slot(words: [u64; 3]) -> u32 {
    let mixed = (words[0] ^ words[1].rotate_left(21) ^ words[2].rotate_left(42))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The top bits: fewer than 32 of them (asserted below).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the shift leaves at most 12 bits"
    )]
    let slot = (mixed >> (64 - FIB_CACHE_ENTRIES.trailing_zeros())) as u32;
    slot
}

/// A question and its answer, as a slot of the FIB answer cache holds them.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibCacheSlot {
    pub key: FibKey,
    pub answer: FibCacheEntry,
}

/// A FIB answer that ended in a forward.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibCacheEntry {
    /// [`FIB_GENERATION`] when the answer was taken (read before the lookup).
    pub generation: u64,
    pub ifindex: u32,
    /// The largest packet (IP length) the FIB let through to this destination: a larger one is
    /// asked again (the helper checks the MTU only when it refuses).
    pub fits_len: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// SRv6 endpoint behaviours (RFC 8986 §4) that `cpn_endpoint` implements: the one type for a
/// behaviour across the configuration (its RFC name), the SID map (its discriminant) and BGP
/// (its RFC 8986 §10.2 code point).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub enum Behavior {
    End = 1,
    #[cfg_attr(feature = "user", serde(rename = "End.X"))]
    EndX = 2,
    #[cfg_attr(feature = "user", serde(rename = "End.DX6"))]
    EndDx6 = 3,
    #[cfg_attr(feature = "user", serde(rename = "End.DX4"))]
    EndDx4 = 4,
    #[cfg_attr(feature = "user", serde(rename = "End.DT6"))]
    EndDt6 = 5,
    #[cfg_attr(feature = "user", serde(rename = "End.DT4"))]
    EndDt4 = 6,
    #[cfg_attr(feature = "user", serde(rename = "End.DT46"))]
    EndDt46 = 7,
}

impl Behavior {
    pub const ALL: [Self; 7] = [
        Self::End,
        Self::EndX,
        Self::EndDx6,
        Self::EndDx4,
        Self::EndDt6,
        Self::EndDt4,
        Self::EndDt46,
    ];

    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::End,
            2 => Self::EndX,
            3 => Self::EndDx6,
            4 => Self::EndDx4,
            5 => Self::EndDt6,
            6 => Self::EndDt4,
            7 => Self::EndDt46,
            _ => return None,
        })
    }

    /// The RFC 8986 name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::End => "End",
            Self::EndX => "End.X",
            Self::EndDx6 => "End.DX6",
            Self::EndDx4 => "End.DX4",
            Self::EndDt6 => "End.DT6",
            Self::EndDt4 => "End.DT4",
            Self::EndDt46 => "End.DT46",
        }
    }

    /// The behaviour of an RFC 8986 name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Its "SRv6 Endpoint Behaviors" code point (RFC 8986 §10.2), as BGP carries it in the
    /// SRv6 SID Information sub-TLV (RFC 9252 §3.1).
    pub const fn code_point(self) -> u16 {
        match self {
            Self::End => 1,
            Self::EndX => 5,
            Self::EndDx6 => 16,
            Self::EndDx4 => 17,
            Self::EndDt6 => 18,
            Self::EndDt4 => 19,
            Self::EndDt46 => 20,
        }
    }

    /// The behaviour of an RFC 8986 §10.2 code point, if it is one of ours.
    pub fn from_code_point(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.code_point() == code)
    }

    /// It decapsulates: the behaviour of a service SID, where the inner packet is delivered.
    pub const fn decapsulates(self) -> bool {
        !matches!(self, Self::End | Self::EndX)
    }

    /// It takes an outgoing interface and a next hop (End.X, End.DX*).
    pub const fn cross_connects(self) -> bool {
        matches!(self, Self::EndX | Self::EndDx6 | Self::EndDx4)
    }

    /// It looks the inner packet up in a routing table (End.DT*).
    pub const fn looks_up(self) -> bool {
        matches!(self, Self::EndDt6 | Self::EndDt4 | Self::EndDt46)
    }
}

/// A local SID.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidEntry {
    /// A [`Behavior`].
    pub behavior: u32,
    /// Index in the SID counter map.
    pub stats_index: u32,
    /// End.X / End.DX*: the outgoing interface; End.DT*: the routing table for the inner
    /// lookup (0 = the interface's own table).
    pub oif_or_table: u32,
    pub _pad: u32,
    /// End.X / End.DX6: IPv6 next hop; End.DX4: IPv4-mapped next hop.
    pub nexthop: [u8; 16],
}

/// A token bucket kept as time credit, as Linux's `xrlim_allow` does: each message costs
/// `interval` nanoseconds of credit, credit grows with time up to `burst × interval`. The
/// all-zero bucket is full (its last update lies far in the past).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

impl TokenBucket {
    /// The largest burst a bucket takes.
    pub const MAX_BURST: u64 = 1_000_000;
    /// The longest interval a bucket takes: one hour.
    pub const MAX_INTERVAL_NS: u64 = 3_600 * 1_000_000_000;

    /// Takes one message at time `now_ns` if the credit allows it. `interval_ns` 0 means no
    /// limit.
    #[expect(
        clippy::inline_always,
        reason = "the eBPF programs call it; a BPF-to-BPF call would cost stack and verifier work"
    )]
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, interval_ns: u64, burst: u64) -> bool {
        if interval_ns == 0 {
            return true;
        }
        // The loader bounds both (an interval of at most an hour, a burst of at most
        // `TokenBucket::MAX_BURST`), so this cannot overflow; a checked 64-bit multiply would
        // need a 128-bit one, which BPF lacks.
        let max = interval_ns.wrapping_mul(burst.clamp(1, Self::MAX_BURST));
        let credit = self
            .credit_ns
            .saturating_add(now_ns.saturating_sub(self.last_ns))
            .min(max);
        self.last_ns = now_ns;
        if credit >= interval_ns {
            self.credit_ns = credit - interval_ns;
            true
        } else {
            self.credit_ns = credit;
            false
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].len() <= 15, "BPF map names are at most 15 bytes");
        i += 1;
    }
    assert!(core::mem::size_of::<ServiceKey>() == 24);
    assert!(core::mem::size_of::<ServiceEntry>() == 16);
    assert!(core::mem::size_of::<NodeEntry>() == 16 * MAX_SIDS + 16 + 8);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowEntry>() == 16);
    assert!(core::mem::size_of::<SidEntry>() == 32);
    assert!(core::mem::size_of::<TokenBucket>() == 16);
    assert!(core::mem::size_of::<NextHopEntry>() == 24);
    assert!(core::mem::size_of::<FibKey>() == 24);
    assert!(core::mem::size_of::<FibCacheEntry>() == 32);
    assert!(core::mem::size_of::<FibCacheSlot>() == 56);
    assert!(FIB_CACHE_ENTRIES.is_power_of_two());
    assert!(RING_CAPACITY as u64 * 2 * MAX_SERVICES as u64 <= u32::MAX as u64);
};

// SAFETY (each impl below): `repr(C)` or `repr(transparent)`, `Copy`, no padding (explicit
// `_pad` fields, sizes asserted above), and every bit pattern is a valid value.
#[cfg(feature = "user")]
mod pod {
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ServiceEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RingSelector {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::NodeEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SidEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TokenBucket {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::NextHopSelector {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::NextHopEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FibCacheSlot {}
}

#[cfg(test)]
mod tests {
    use super::{
        Behavior, Hook, ProtoCounter, RING_ATTEMPTS, STEER_PROTO_STATS_ENTRIES, TokenBucket,
        ring_slot, steer_proto_counter, steer_proto_index,
    };

    /// Every (hook, counter) has its own index in `steer_proto`, and the index names it back.
    #[test]
    fn steer_proto_blocks_do_not_overlap() {
        let mut seen = [false; STEER_PROTO_STATS_ENTRIES as usize];
        for hook in Hook::ALL {
            for counter in ProtoCounter::ALL {
                let index = steer_proto_index(hook, counter);
                let slot = &mut seen[index as usize];
                assert!(!*slot, "{hook}/{} twice", counter.name());
                *slot = true;
                assert_eq!(steer_proto_counter(index), Some((hook, counter)));
            }
        }
        assert_eq!(steer_proto_counter(STEER_PROTO_STATS_ENTRIES), None);
    }

    /// One type, three spellings: the map's discriminant, the RFC 8986 name and the RFC 8986
    /// §10.2 code point, each of which names the behaviour back.
    #[test]
    fn a_behavior_reads_back_from_its_map_code_name_and_code_point() {
        let points: [u16; 7] = Behavior::ALL.map(Behavior::code_point);
        assert_eq!(points, [1, 5, 16, 17, 18, 19, 20]);
        for b in Behavior::ALL {
            assert_eq!(Behavior::from_u32(b as u32), Some(b));
            assert_eq!(Behavior::from_name(b.name()), Some(b));
            assert_eq!(Behavior::from_code_point(b.code_point()), Some(b));
        }
        assert_eq!(Behavior::from_name("End.DT5"), None);
        assert_eq!(Behavior::from_code_point(9), None, "End.T: not ours");
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval() {
        let mut bucket = TokenBucket::default();
        let start = 100 * SECOND;
        let sent = (0..500)
            .filter(|i| bucket.take(start + i * SECOND * 12 / 10 / 500, SECOND, 6))
            .count();
        // Linux's per-destination limit: a burst of 6, then one a second (1.2 s: one more).
        assert_eq!(sent, 7);
        assert!(!bucket.take(start + SECOND * 3 / 2, SECOND, 6));
        assert!(bucket.take(start + SECOND * 5 / 2, SECOND, 6));
    }

    #[test]
    fn interval_zero_means_no_limit() {
        let mut bucket = TokenBucket::default();
        assert!((0..1000).all(|_| bucket.take(0, 0, 0)));
    }

    #[test]
    fn a_flow_tries_its_own_slot_then_spread_ones() {
        let size = 7;
        let mut seen = [0u32; 7];
        let mut stuck = 0;
        for hash in 0..70_000u32 {
            let h = hash.wrapping_mul(2_654_435_761);
            assert_eq!(ring_slot(h, 0, size), h % size);
            seen[ring_slot(h, 1, size) as usize] += 1;
            stuck += u32::from((1..RING_ATTEMPTS).all(|a| ring_slot(h, a, size) == h % size));
        }
        for n in seen {
            assert!((9_000..11_000).contains(&n), "{seen:?}");
        }
        // Every try in the own slot again: (1/7)^3 of the flows, about 200.
        assert!(stuck < 400, "{stuck}");
    }
}
