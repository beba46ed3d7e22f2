//! The BPF maps, declared with BTF so that `bpftool` pretty-prints their keys and values.
//! Names and capacities come from `cpn_common::maps`; the agent checks that the object it loads
//! defines exactly the maps listed there.

use crate::parse::Addr;
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    macros::btf_map,
};
use cpn_common::{
    maps::{
        FIB_CACHE_ENTRIES, FLOWS_ENTRIES, FibCacheSlot, FlowEntry, FlowKey, ICMP_PEERS_ENTRIES,
        MAX_LOCAL_SIDS, MAX_NODES, MAX_SERVICES, NextHopEntry, NextHopSelector, NodeEntry,
        PROTO_STATS_ENTRIES, REASON_STATS_ENTRIES, RINGS_ENTRIES, RINGS_FLAGS, RingSelector,
        SERVICE_KEYS, SR_DOMAIN_PREFIXES, STEER_PROTO_STATS_ENTRIES, ServiceEntry, ServiceKey,
        SidEntry, TokenBucket,
    },
    stats::Counter,
};

#[btf_map(name = "steer_proto")]
pub static STEER_PROTO: PerCpuArray<Counter, { STEER_PROTO_STATS_ENTRIES as usize }> =
    PerCpuArray::new();

#[btf_map(name = "endpoint_proto")]
pub static ENDPOINT_PROTO: PerCpuArray<Counter, { PROTO_STATS_ENTRIES as usize }> =
    PerCpuArray::new();

#[btf_map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry, { SERVICE_KEYS as usize }> = HashMap::new();

#[btf_map(name = "ring_sel")]
pub static RING_SELECTORS: Array<RingSelector, { MAX_SERVICES as usize }> = Array::new();

#[btf_map(name = "rings")]
pub static RINGS: Array<u32, { RINGS_ENTRIES as usize }, RINGS_FLAGS> = Array::new();

#[btf_map(name = "nodes")]
pub static NODES: Array<NodeEntry, { MAX_NODES as usize }> = Array::new();

#[btf_map(name = "flows")]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry, { FLOWS_ENTRIES as usize }> = LruHashMap::new();

#[btf_map(name = "local_sids")]
pub static LOCAL_SIDS: HashMap<Addr, SidEntry, { MAX_LOCAL_SIDS as usize }> = HashMap::new();

#[btf_map(name = "service_stats")]
pub static SERVICE_STATS: PerCpuArray<Counter, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map(name = "node_stats")]
pub static NODE_STATS: PerCpuArray<Counter, { MAX_NODES as usize }> = PerCpuArray::new();

#[btf_map(name = "sid_stats")]
pub static SID_STATS: PerCpuArray<Counter, { MAX_LOCAL_SIDS as usize }> = PerCpuArray::new();

#[btf_map(name = "reason_stats")]
pub static REASON_STATS: PerCpuArray<Counter, { REASON_STATS_ENTRIES as usize }> =
    PerCpuArray::new();

#[btf_map(name = "icmp_budget")]
pub static ICMP_BUDGET: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

#[btf_map(name = "icmp_peers")]
pub static ICMP_PEERS: LruPerCpuHashMap<Addr, TokenBucket, { ICMP_PEERS_ENTRIES as usize }> =
    LruPerCpuHashMap::new();

#[btf_map(name = "nexthop_sel")]
pub static NEXTHOP_SELECTORS: Array<NextHopSelector, { MAX_NODES as usize }> = Array::new();

#[btf_map(name = "nexthops")]
pub static NEXTHOPS: Array<NextHopEntry, { 2 * MAX_NODES as usize }> = Array::new();

#[btf_map(name = "fib_cache")]
pub static FIB_CACHE: PerCpuArray<FibCacheSlot, { FIB_CACHE_ENTRIES as usize }> =
    PerCpuArray::new();

#[btf_map(name = "fib_gen")]
pub static FIB_GENERATION: Array<u64, 1> = Array::new();

#[btf_map(name = "sr_domain")]
pub static SR_DOMAIN: LpmTrie<[u8; 16], u8, { SR_DOMAIN_PREFIXES as usize }> = LpmTrie::new();
