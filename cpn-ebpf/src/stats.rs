//! Per-CPU counters. Each CPU owns its slot, so plain adds are race-free.

use cpn_common::stats::ProtoCounter;

use crate::maps::ProtoStats;

/// An internal fault that must never happen on a verified program (e.g. a counter index out of
/// range); the entry point turns it into `XDP_ABORTED`.
pub struct Fault;

#[inline(always)]
pub fn add(counters: &ProtoStats, which: ProtoCounter, bytes: u64) -> Result<(), Fault> {
    let slot = counters.get_ptr_mut(which as u32).ok_or(Fault)?;
    // SAFETY: the pointer comes from a successful per-CPU lookup and only this CPU writes it.
    unsafe {
        (*slot).packets += 1;
        (*slot).bytes += bytes;
    }
    Ok(())
}
