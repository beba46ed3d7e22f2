//! Names and capacities of the BPF maps, and where they are pinned.
//!
//! A map name is limited to 15 bytes by the kernel (`BPF_OBJ_NAME_LEN` minus the NUL), and the
//! pinned file under [`PIN_DIR`] carries the same name, so `bpftool map dump pinned
//! /sys/fs/bpf/cpn/<name>` finds it.

use crate::stats::ProtoCounter;

/// Directory under the BPF filesystem where every cpn map is pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/cpn";

/// Per-CPU packet/byte counters of `cpn_steer`, indexed by [`ProtoCounter`].
pub const STEER_PROTO_STATS: &str = "steer_proto";
/// Per-CPU packet/byte counters of `cpn_endpoint`, indexed by [`ProtoCounter`].
pub const ENDPOINT_PROTO_STATS: &str = "endpoint_proto";

/// Entries of each protocol counter map.
pub const PROTO_STATS_ENTRIES: u32 = ProtoCounter::COUNT;

/// Every map the object defines; the agent pins exactly these.
pub const ALL: [&str; 2] = [STEER_PROTO_STATS, ENDPOINT_PROTO_STATS];

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].len() <= 15, "BPF map names are at most 15 bytes");
        i += 1;
    }
};
