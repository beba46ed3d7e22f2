//! H.Encaps and H.Encaps.Red (RFC 8986 §5.1, §5.2): outer IPv6 header plus SRH in front of the
//! inner IPv6 or IPv4 packet.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use cpn_common::{
    headers::{EthHdr, Ipv6Hdr, SrhHdr, ether_type, proto},
    maps::{MAX_SIDS, NODE_REDUCED, NodeEntry},
};

use crate::{
    hop_limit,
    parse::{self, Ip},
};

const ETH: usize = size_of::<EthHdr>();
const SID: usize = 16;

/// What to push for one packet towards one node.
pub struct Plan {
    /// Segments written into the SRH (0: no SRH).
    srh_segments: usize,
    /// Segments Left of the new SRH: the index of the first segment.
    segments_left: u8,
    /// The outer destination.
    pub first_segment: [u8; 16],
    /// 41 (IPv6 in IPv6) or 4 (IPv4 in IPv6).
    inner_protocol: u8,
    /// Outer version, traffic class (copied: DSCP and ECN) and flow label (inner flow hash).
    vtc_flow: [u8; 4],
}

impl Plan {
    /// `None` when the node entry has no segments or more than `MAX_SIDS`.
    #[inline(always)]
    pub fn new(node: &NodeEntry, flow_hash: u32, inner: &Ip) -> Option<Self> {
        let count = node.segment_count as usize;
        if count == 0 || count > MAX_SIDS {
            return None;
        }
        let first_segment = *node.segments.get(count - 1)?;
        // Reduced: the first segment lives only in the destination address.
        let srh_segments = if node.flags & NODE_REDUCED != 0 {
            count - 1
        } else {
            count
        };
        let vtc = (6u32 << 28) | (u32::from(inner.tos) << 20) | (flow_hash & 0x000f_ffff);
        Some(Self {
            srh_segments,
            segments_left: (count - 1) as u8,
            first_segment,
            inner_protocol: if inner.v6 { proto::IPV6 } else { proto::IPIP },
            vtc_flow: vtc.to_be_bytes(),
        })
    }

    #[inline(always)]
    pub fn srh_len(&self) -> usize {
        if self.srh_segments == 0 {
            0
        } else {
            size_of::<SrhHdr>() + SID * self.srh_segments
        }
    }

    /// Bytes pushed in front of the inner packet (outer IPv6 + SRH).
    #[inline(always)]
    pub fn outer_len(&self) -> usize {
        size_of::<Ipv6Hdr>() + self.srh_len()
    }
}

/// Pushes the encapsulation. The frame leaves untagged with the received MACs (for the kernel
/// to forward); [`set_macs`] rewrites them for the next hop. False if the packet could not be
/// resized or written.
#[inline(never)]
pub fn push(ctx: &XdpContext, inner: &Ip, plan: &Plan, node: &NodeEntry) -> bool {
    let Some(macs) = parse::read::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    // Drop Ethernet padding after the inner packet so that only the packet is encapsulated.
    let padding = parse::frame_len(ctx) as i32 - (inner.l3 + inner.len) as i32;
    let grow = (ETH + plan.outer_len()) as i32 - inner.l3 as i32;
    // SAFETY: helper calls on our context; every pointer is re-derived after them.
    unsafe {
        if padding > 0 && bpf_xdp_adjust_tail(ctx.as_ptr().cast(), -padding) != 0 {
            return false;
        }
        if bpf_xdp_adjust_head(ctx.as_ptr().cast(), -grow) != 0 {
            return false;
        }
    }
    // Headers are written field by field straight into the packet (and segments straight
    // from the map value): building them on the stack first costs more than the 512 bytes
    // the verifier allows for the whole call chain.
    let srh_len = plan.srh_len();
    // The received MACs stay (the kernel forwards on the pass path); `set_macs` replaces them.
    if !parse::write(ctx, 0, macs) {
        return false;
    }
    let Some(eth_type) = parse::ptr_at_mut::<[u8; 2]>(ctx, 12) else {
        return false;
    };
    let Some(outer) = parse::ptr_at_mut::<Ipv6Hdr>(ctx, ETH) else {
        return false;
    };
    // SAFETY: both pointers were bounds-checked by `ptr_at_mut` after the last resize.
    unsafe {
        *eth_type = ether_type::IPV6.to_be_bytes();
        (*outer).vtc_flow = plan.vtc_flow;
        (*outer).payload_len = ((srh_len + inner.len) as u16).to_be_bytes();
        (*outer).next_header = if srh_len == 0 {
            plan.inner_protocol
        } else {
            proto::ROUTING
        };
        (*outer).hop_limit = hop_limit();
        (*outer).src = node.encap_src;
        (*outer).dst = plan.first_segment;
    }
    if srh_len == 0 {
        return true;
    }
    let Some(srh) = parse::ptr_at_mut::<SrhHdr>(ctx, ETH + size_of::<Ipv6Hdr>()) else {
        return false;
    };
    // SAFETY: bounds-checked above.
    unsafe {
        (*srh).next_header = plan.inner_protocol;
        (*srh).hdr_ext_len = (2 * plan.srh_segments) as u8;
        (*srh).routing_type = SrhHdr::ROUTING_TYPE;
        (*srh).segments_left = plan.segments_left;
        (*srh).last_entry = (plan.srh_segments - 1) as u8;
        (*srh).flags = 0;
        (*srh).tag = [0; 2];
    }
    let list = ETH + size_of::<Ipv6Hdr>() + size_of::<SrhHdr>();
    for i in 0..MAX_SIDS {
        if i >= plan.srh_segments {
            break;
        }
        let Some(slot) = parse::ptr_at_mut::<[u8; 16]>(ctx, list + SID * i) else {
            return false;
        };
        // SAFETY: bounds-checked by `ptr_at_mut`; the source is the map value.
        unsafe { *slot = node.segments[i] };
    }
    true
}

/// Rewrites the Ethernet addresses for the next hop the FIB returned.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: [u8; 6], dst: [u8; 6]) -> bool {
    parse::write(ctx, 0, dst) && parse::write(ctx, 6, src)
}
