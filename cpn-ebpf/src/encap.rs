//! H.Encaps and H.Encaps.Red (RFC 8986 §5.1, §5.2): outer IPv6 header plus SRH in front of the
//! inner IPv6 or IPv4 packet.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{
        bpf_check_mtu, bpf_l4_csum_replace, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};

/// A socket buffer: the room goes in after the Ethernet header (`BPF_ADJ_ROOM_MAC`), marked
/// as an IPv6 encapsulation, so that the kernel keeps what it still has to do to the inner
/// packet (a partial checksum's start moves with it; a GSO packet is segmented as IP in IPv6,
/// each segment smaller by the encapsulation) and takes the packet as IPv6 from now on.
impl Room for TcContext {
    #[inline(always)]
    fn make_room(&self, l3: usize, outer: usize, padding: usize) -> bool {
        // A VLAN tag inside the frame (the entry passes such packets untouched: the kernel
        // keeps tags outside the data).
        if l3 != ETH {
            return false;
        }
        if padding > 0 {
            let keep = self.len().saturating_sub(padding as u32);
            // SAFETY: helper call on our context; callers take every pointer again after it.
            if unsafe { bpf_skb_change_tail(self.skb.skb, keep, 0) } != 0 {
                return false;
            }
        }
        let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV6);
        self.adjust_room(outer as i32, BPF_ADJ_ROOM_MAC, flags)
            .is_ok()
    }

    /// A GSO socket buffer goes out as the segments the kernel cuts it into: their headers
    /// and `gso_size` bytes each, which making the room lowers by the encapsulation, so each
    /// encapsulated segment is as long as one was before.
    #[inline(always)]
    fn encapsulated_len(&self, inner: &Ip, outer: usize) -> usize {
        // SAFETY: the program's context, valid for the whole run.
        let gso_size = unsafe { core::ptr::read_volatile(&raw const (*self.skb.skb).gso_size) };
        if gso_size == 0 {
            return outer + inner.len;
        }
        let transport = match inner.protocol {
            proto::TCP => parse::read::<[u8; 2]>(self, inner.l4 + 12)
                .map_or(MAX_TCP_HEADER, |[data_offset, _]| {
                    usize::from(data_offset >> 4) * 4
                }),
            proto::UDP => 8,
            _ => 0,
        };
        (inner.l4 - inner.l3) + transport + gso_size as usize
    }

    /// On egress (the socket buffer was not received on the interface it leaves by: a
    /// local socket's packet, or one forwarded from another interface).
    #[inline(always)]
    fn carries_on_out_of(&self, ifindex: u32) -> bool {
        // SAFETY: the program's context, valid for the whole run.
        let (leaving, received) = unsafe {
            let skb = self.skb.skb;
            (
                core::ptr::read_volatile(&raw const (*skb).ifindex),
                core::ptr::read_volatile(&raw const (*skb).ingress_ifindex),
            )
        };
        ifindex == leaving && received != leaving
    }

    #[inline(always)]
    fn encapsulated(&self, inner: &Ip, outer: usize) {
        if inner.protocol == proto::TCP && inner.fragment == Fragment::No {
            // The inner TCP header, moved by the encapsulation (TC takes `l3 == ETH`).
            let tcp = inner.l4 + outer;
            let headers = outer + (inner.l4 - inner.l3) + TCP_HEADER;
            cpn_clamp_mss(self.skb.skb, tcp as u32, headers as u32);
        }
    }
}

/// A steered TCP SYN offers the server no larger segments than fit the device's MTU once
/// encapsulated (what Cilium and Calico do), so that a host's or a container's bulk upload
/// never needs fragmenting or a Packet Too Big. Only a smaller value is written, and the TCP
/// checksum is updated the way the kernel does (left alone while it is still partial).
///
/// A BPF global function, verified once on its own: its walk over the options, inlined, made
/// the verifier follow every steering path through it again (a million instructions). `tcp`
/// is the TCP header's offset, `headers` the bytes in front of a segment's payload once
/// encapsulated. Global functions must answer a scalar: 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cpn_clamp_mss(skb: *mut __sk_buff, tcp: u32, headers: u32) -> u32 {
    clamp_mss(skb, tcp, headers);
    0
}

#[inline(always)]
fn clamp_mss(skb: *mut __sk_buff, tcp: u32, headers: u32) {
    let (tcp, headers) = (tcp as usize, headers as usize);
    if tcp > MAX_TCP_OFFSET {
        return;
    }
    let ctx = &TcContext::new(skb);
    let Some([data_offset, flags]) = parse::read::<[u8; 2]>(ctx, tcp + 12) else {
        return;
    };
    if flags & TCP_SYN == 0 {
        return;
    }
    // Asks for the device's MTU (a 1-byte length always fits).
    let mut mtu: u32 = 1;
    // SAFETY: helper call on our context with a pointer to our stack.
    if unsafe { bpf_check_mtu(skb.cast(), 0, &raw mut mtu, 0, 0) } < 0 {
        return;
    }
    let Some(fits) = (mtu as usize).checked_sub(headers) else {
        return;
    };
    let fits = fits.min(usize::from(u16::MAX)) as u16;
    let end = tcp + (usize::from(data_offset >> 4) * 4).min(MAX_TCP_HEADER);
    let mut at = tcp + TCP_HEADER;
    for _ in 0..MAX_TCP_HEADER - TCP_HEADER {
        // A bound the verifier can see on every turn (`at < end` alone it loses).
        if at >= end || at > MAX_OPTION_OFFSET {
            return;
        }
        // Kind and length together: a 1-byte read's bounds check LLVM turns into one the
        // verifier does not take (`ptr >= end`). A NOP in the packet's last byte ends the walk.
        let Some([kind, len]) = parse::read::<[u8; 2]>(ctx, at) else {
            return;
        };
        match kind {
            TCP_OPT_END => return,
            TCP_OPT_NOP => {
                at += 1;
                continue;
            }
            TCP_OPT_MSS => {
                let Some([_, 4, hi, lo]) = parse::read::<[u8; 4]>(ctx, at) else {
                    return;
                };
                if u16::from_be_bytes([hi, lo]) <= fits {
                    return;
                }
                let (old, new) = ([hi, lo], fits.to_be_bytes());
                // SAFETY: helper call on our context; the write below takes its pointer anew.
                let updated = unsafe {
                    bpf_l4_csum_replace(
                        skb,
                        (tcp + 16) as u32,
                        u64::from(u16::from_ne_bytes(old)),
                        u64::from(u16::from_ne_bytes(new)),
                        2,
                    )
                };
                if updated == 0 {
                    parse::write(ctx, at + 2, new);
                }
                return;
            }
            _ if len < 2 => return,
            _ => at += usize::from(len),
        }
    }
}

const TCP_HEADER: usize = 20;
/// The deepest TCP header the clamp looks at: parsing's deepest plus the largest encapsulation.
const MAX_TCP_OFFSET: usize = parse::MAX_HEADER_OFFSET + 512;
const MAX_OPTION_OFFSET: usize = MAX_TCP_OFFSET + MAX_TCP_HEADER;
const MAX_TCP_HEADER: usize = 60;
const TCP_SYN: u8 = 0x02;
const TCP_OPT_END: u8 = 0;
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_MSS: u8 = 2;

/// A packet that can make room for an encapsulation in front of its network header.
pub trait Room: Frame {
    /// Drops `padding` bytes of link-layer padding after the IP packet (which starts at `l3`)
    /// and makes `outer` bytes of room between the Ethernet header (at 0, 14 bytes, written
    /// afresh by the caller) and the IP packet; false if that cannot be done.
    fn make_room(&self, l3: usize, outer: usize, padding: usize) -> bool;

    /// The longest packet `inner` goes out as once encapsulated with `outer` bytes.
    fn encapsulated_len(&self, inner: &Ip, outer: usize) -> usize {
        outer + inner.len
    }

    /// What the context adds once the packet is encapsulated (`outer` bytes in front of the
    /// inner packet): nothing in XDP; TC clamps a SYN's MSS.
    fn encapsulated(&self, _inner: &Ip, _outer: usize) {}

    /// The encapsulated packet, whose next hop is out of `ifindex`, is already on its way out
    /// of that interface and simply carries on there: no redirect into its queue (and
    /// through the program) once more. Never so in XDP, which sees received packets only.
    fn carries_on_out_of(&self, _ifindex: u32) -> bool {
        false
    }
}

impl Room for XdpContext {
    #[inline(always)]
    fn make_room(&self, l3: usize, outer: usize, padding: usize) -> bool {
        let grow = (ETH + outer) as i32 - l3 as i32;
        // SAFETY: helper calls on our context; callers take every pointer again after them.
        unsafe {
            if padding > 0 && bpf_xdp_adjust_tail(self.as_ptr().cast(), -(padding as i32)) != 0 {
                return false;
            }
            bpf_xdp_adjust_head(self.as_ptr().cast(), -grow) == 0
        }
    }
}
use cpn_common::{
    headers::{EthHdr, Ipv6Hdr, SrhHdr, ether_type, proto},
    maps::{MAX_SIDS, NODE_REDUCED, NodeEntry},
};

use crate::{
    hop_limit,
    parse::{self, Addr, Fragment, Frame, Ip},
};

const ETH: usize = size_of::<EthHdr>();
const SID: usize = 16;

/// What to push for one packet towards one node (`repr(C)`, 8-aligned: it lives on the stack).
#[repr(C, align(8))]
pub struct Plan {
    /// The outer destination.
    pub first_segment: Addr,
    /// Segments written into the SRH (0: no SRH).
    srh_segments: usize,
    /// Outer version, traffic class (copied: DSCP and ECN) and flow label (inner flow hash).
    vtc_flow: [u8; 4],
    /// Segments Left of the new SRH: the index of the first segment.
    segments_left: u8,
    /// 41 (IPv6 in IPv6) or 4 (IPv4 in IPv6).
    inner_protocol: u8,
}

impl Plan {
    /// `None` when the node entry has no segments or more than `MAX_SIDS`.
    #[inline(always)]
    pub fn new(node: &NodeEntry, flow_hash: u32, inner: &Ip) -> Option<Self> {
        let count = node.segment_count as usize;
        if count == 0 || count > MAX_SIDS {
            return None;
        }
        let first_segment = Addr::from_field(node.segments.get(count - 1)?);
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

/// Pushes the encapsulation. The frame leaves untagged with Ethernet addresses `macs`
/// (destination, then source): the next hop's, or the received ones for the kernel to forward.
/// False if the packet could not be resized or written.
#[inline(never)]
pub fn push(ctx: &impl Room, inner: &Ip, plan: &Plan, node: &NodeEntry, macs: &[u16; 6]) -> bool {
    let macs = *macs;
    // Drop Ethernet padding after the inner packet so that only the packet is encapsulated.
    let padding = parse::frame_len(ctx).saturating_sub(inner.l3 + inner.len);
    if !ctx.make_room(inner.l3, plan.outer_len(), padding) {
        return false;
    }
    // Headers are written in words straight into the packet (and segments straight from the
    // map value): building them on the stack first would cost copies and stack.
    let srh_len = plan.srh_len();
    let next_header = if srh_len == 0 {
        plan.inner_protocol
    } else {
        proto::ROUTING
    };
    let [len_hi, len_lo] = ((srh_len + inner.len) as u16).to_be_bytes();
    let [t0, t1] = ether_type::IPV6.to_be_bytes();
    let [v0, v1, v2, v3] = plan.vtc_flow;
    let written = parse::write(ctx, 0, macs)
        && parse::write(ctx, 12, [t0, t1])
        && parse::write(
            ctx,
            ETH,
            [v0, v1, v2, v3, len_hi, len_lo, next_header, hop_limit()],
        )
        && parse::write(ctx, ETH + 8, Addr::from_field(&node.encap_src))
        && parse::write(ctx, ETH + 24, plan.first_segment);
    if !written {
        return false;
    }
    if srh_len == 0 {
        ctx.encapsulated(inner, plan.outer_len());
        return true;
    }
    let srh = ETH + size_of::<Ipv6Hdr>();
    let srh_header = [
        plan.inner_protocol,
        (2 * plan.srh_segments) as u8,
        SrhHdr::ROUTING_TYPE,
        plan.segments_left,
        (plan.srh_segments - 1) as u8,
        0, // flags
        0, // tag
        0,
    ];
    if !parse::write(ctx, srh, srh_header) {
        return false;
    }
    let list = srh + size_of::<SrhHdr>();
    for i in 0..MAX_SIDS {
        if i >= plan.srh_segments {
            break;
        }
        if !parse::write(ctx, list + SID * i, Addr::from_field(&node.segments[i])) {
            return false;
        }
    }
    ctx.encapsulated(inner, plan.outer_len());
    true
}

/// The Ethernet addresses of a frame to the next hop `dst` from `src`, as they lie in it.
#[inline(always)]
pub fn macs(src: [u16; 3], dst: [u16; 3]) -> [u16; 6] {
    let ([d0, d1, d2], [s0, s1, s2]) = (dst, src);
    [d0, d1, d2, s0, s1, s2]
}
