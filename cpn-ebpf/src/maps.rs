//! The BPF maps, declared with BTF so that `bpftool` pretty-prints their keys and values.
//! Names and capacities come from `cpn_common::maps`; the agent checks that the object it loads
//! defines exactly the maps listed there.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use cpn_common::{maps::PROTO_STATS_ENTRIES, stats::Counter};

pub type ProtoStats = PerCpuArray<Counter, { PROTO_STATS_ENTRIES as usize }>;

#[btf_map(name = "steer_proto")]
pub static STEER_PROTO: ProtoStats = ProtoStats::new();

#[btf_map(name = "endpoint_proto")]
pub static ENDPOINT_PROTO: ProtoStats = ProtoStats::new();
