//! The next-hop cache: for each node, the egress interface and MACs the agent resolved for its
//! first segment from the kernel's routes and neighbours (what `bpf_fib_lookup` would answer),
//! kept current from netlink. A node without a live entry takes the FIB path.

use cpn_common::maps::{NextHopEntry, nexthop_index};

use crate::maps::{NEXTHOP_SELECTORS, NEXTHOPS};

/// Node `id`'s cached next hop, if the agent keeps one live. The agent writes the idle half
/// and then flips the selector, so the entry read here is never half old, half new.
#[inline(always)]
pub fn cached(id: u32) -> Option<&'static NextHopEntry> {
    let selector = *NEXTHOP_SELECTORS.get(id)?;
    if !selector.is_live() {
        return None;
    }
    NEXTHOPS.get(nexthop_index(id, selector.half()))
}
