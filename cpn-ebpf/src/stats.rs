//! Per-CPU counters. Each CPU owns its slot, so plain adds are race-free.

use aya_ebpf::btf_maps::PerCpuArray;
use cpn_common::{
    maps::Seen,
    stats::{Counter, ProtoCounter, Reason},
};

use crate::maps::{ENDPOINT_PROTO, REASON_STATS, STEER_PROTO};

/// Counts one packet of `bytes` under `counter`, in `seen`'s protocol counters.
#[inline(always)]
pub fn protocol(seen: Seen, counter: ProtoCounter, bytes: u64) {
    match seen {
        Seen::Steer(_) => add(&STEER_PROTO, seen.index(counter), bytes),
        Seen::Endpoint => add(&ENDPOINT_PROTO, seen.index(counter), bytes),
    }
}

#[inline(always)]
pub fn add<const N: usize>(counters: &PerCpuArray<Counter, N>, index: u32, bytes: u64) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU lookup and only this CPU writes it.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}

/// Counts one packet under `reason`.
#[inline(always)]
pub fn reason(reason: Reason, bytes: u64) {
    add(&REASON_STATS, reason as u32, bytes);
}
