//! `cpn_endpoint`: SRv6 endpoint behaviours (RFC 8986 §4) for the local SIDs, with the checks
//! of RFC 8200 and RFC 8754 §4.3.1.1. Packets not addressed to a local SID pass untouched.
//!
//! The program finishes in XDP what it can finish alone: forward (redirect), decapsulate for
//! local delivery, answer with an ICMP error, drop. Everything else (no neighbour, no route, a
//! fragment, a table lookup that does not end in a plain forward) goes to the kernel untouched,
//! where the agent's `seg6local` route for the same SID applies the same behaviour: the kernel
//! owns every local SID too, so nothing addressed to one is ever forwarded as it is.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action,
    btf_maps::lpm_trie::Key,
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use cpn_common::{
    headers::{EthHdr, ExtHdr, FragHdr, Ipv4Hdr, Ipv6Hdr, SrhHdr, ether_type, icmp, proto},
    maps::{Behavior, SidEntry},
    stats::Reason,
};

use crate::{
    fib::{self, Fib},
    icmp as icmp_error,
    maps::{LOCAL_SIDS, SID_STATS, SR_DOMAIN},
    parse::{self, Addr, Ip, L2, MAX_EXT_HEADERS, MAX_HEADER_OFFSET},
    stats,
};

const ETH: usize = size_of::<EthHdr>();
const SID: usize = 16;
/// The local routing table (`ip route show table local`): addresses of this host.
const LOCAL_TABLE: u32 = 255;

/// The packet being processed: its context, where its IPv6 header is, its length for counters.
#[derive(Clone, Copy)]
struct Packet<'a> {
    ctx: &'a XdpContext,
    l3: usize,
    len: u64,
    ingress_ifindex: u32,
}

/// Where the SRH and the upper-layer header are.
struct Chain {
    /// Offset of the SRH; 0 when there is none (plain fields: subprogram arguments carry no
    /// Rust enums, whose BTF the kernel rejects).
    srh_at: usize,
    srh: SrhHdr,
    upper: usize,
    upper_protocol: u8,
}

enum ChainError {
    /// A header ends beyond the packet's length (RFC 8200: the payload length defines it).
    BeyondLength,
    /// The SRH ends beyond the packet's length.
    SrhTruncated,
    /// A routing header of another type with Segments Left ≠ 0; its Routing Type field is at
    /// this offset (RFC 8200 §4.4).
    UnknownRoutingType(usize),
    /// A fragment, or too many headers: the kernel reassembles or decides.
    ToKernel(Reason),
}

/// Processes a packet addressed to a local SID; anything else passes. A subprogram: its frame
/// is not on the stack when the entry function sends the ICMP error a verdict may ask for
/// ([`icmp_error::answer`]).
#[inline(never)]
pub fn endpoint(ctx: &XdpContext, l2: &L2, ingress_ifindex: u32) -> u32 {
    if l2.ether_type != ether_type::IPV6 {
        return xdp_action::XDP_PASS;
    }
    let (Some(dst), Some(next_header)) = (
        parse::read_addr(ctx, l2.l3 + 24),
        parse::read::<u8>(ctx, l2.l3 + 6),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a shared lookup; the entry is borrowed from the map for this run (no copy on
    // the 512-byte stack), and the agent replaces entries whole.
    let Some(sid) = (unsafe { LOCAL_SIDS.get(dst) }) else {
        return xdp_action::XDP_PASS;
    };
    let len = parse::frame_len(ctx) as u64;
    stats::add(&SID_STATS, sid.stats_index, len);
    // RFC 8754 §5.1: a SID serves its SR domain only. The fixed header is whole (the entry
    // counted it), so the source is there.
    let admitted = parse::read::<[u8; 16]>(ctx, l2.l3 + 8)
        .is_some_and(|src| SR_DOMAIN.get(&Key::new(128, src)).is_some());
    if !admitted {
        stats::reason(Reason::OutsideSrDomain, len);
        return xdp_action::XDP_DROP;
    }
    if l2.l3 != ETH {
        // A VLAN tag: the packet belongs to the VLAN's interface, whose routes and neighbours
        // the kernel's route for the SID uses there; forwarded from here, it would leave with
        // the wrong link layer (and a redirect cannot name that interface).
        return to_kernel(Reason::SidToKernel, len);
    }
    let payload_len = match (
        parse::read::<u8>(ctx, l2.l3 + 4),
        parse::read::<u8>(ctx, l2.l3 + 5),
    ) {
        (Some(high), Some(low)) => usize::from(high) << 8 | usize::from(low),
        _ => return xdp_action::XDP_ABORTED,
    };
    if payload_len == 0 {
        // A jumbogram (RFC 2675) or nonsense: the kernel's call.
        return to_kernel(Reason::SidToKernel, len);
    }
    let end = l2.l3 + size_of::<Ipv6Hdr>() + payload_len;
    let frame = parse::frame_len(ctx);
    if end > frame {
        stats::reason(Reason::LengthBeyondFrame, len);
        return xdp_action::XDP_DROP;
    }
    // Bytes after the packet (link-layer padding) are not part of it: trim them, as the
    // kernel does, so that nothing forwarded or decapsulated carries them.
    // SAFETY: helper call on our context; offsets are re-derived from it afterwards.
    if end < frame
        && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), end as i32 - frame as i32) } != 0
    {
        stats::reason(Reason::NoHeadroom, len);
        return xdp_action::XDP_ABORTED;
    }
    let chain = match walk(ctx, l2.l3, next_header, end) {
        Ok(chain) => chain,
        Err(ChainError::BeyondLength) => {
            stats::reason(Reason::HeaderBeyondLength, len);
            return xdp_action::XDP_DROP;
        }
        Err(ChainError::SrhTruncated) => {
            stats::reason(Reason::SrhTruncated, len);
            return xdp_action::XDP_DROP;
        }
        Err(ChainError::UnknownRoutingType(at)) => {
            stats::reason(Reason::UnknownRoutingType, len);
            return parameter_problem(l2.l3, icmp::V6_ERRONEOUS_HEADER, at);
        }
        Err(ChainError::ToKernel(reason)) => return to_kernel(reason, len),
    };
    let Some(behavior) = Behavior::from_u32(sid.behavior) else {
        stats::reason(Reason::UnknownBehavior, len);
        return xdp_action::XDP_DROP;
    };
    let packet = Packet {
        ctx,
        l3: l2.l3,
        len,
        ingress_ifindex,
    };
    match behavior {
        Behavior::End | Behavior::EndX => transit(&packet, &chain, sid, behavior),
        _ => decapsulate(&packet, &chain, sid, behavior),
    }
}

/// Hands the packet, untouched, to the kernel's own route for the SID.
#[inline(always)]
fn to_kernel(reason: Reason, len: u64) -> u32 {
    stats::reason(reason, len);
    xdp_action::XDP_PASS
}

/// Walks the extension headers up to the upper layer, remembering the first SRH; every header must
/// end within `end`, the packet's end by its payload length.
#[inline(always)]
fn walk(ctx: &XdpContext, l3: usize, first: u8, end: usize) -> Result<Chain, ChainError> {
    let mut chain = Chain {
        srh_at: 0,
        srh: SrhHdr {
            next_header: 0,
            hdr_ext_len: 0,
            routing_type: 0,
            segments_left: 0,
            last_entry: 0,
            flags: 0,
            tag: [0; 2],
        },
        upper: l3 + size_of::<Ipv6Hdr>(),
        upper_protocol: first,
    };
    for _ in 0..MAX_EXT_HEADERS {
        let at = chain.upper;
        match chain.upper_protocol {
            proto::HOP_BY_HOP | proto::DEST_OPTS => {
                let ext: ExtHdr =
                    parse::read_as::<u16, _>(ctx, at).ok_or(ChainError::BeyondLength)?;
                chain.upper_protocol = ext.next_header;
                chain.upper = at + (ext.hdr_ext_len as usize + 1) * 8;
            }
            proto::ROUTING => {
                let srh: SrhHdr =
                    parse::read_as::<u64, _>(ctx, at).ok_or(ChainError::SrhTruncated)?;
                let next = at + (srh.hdr_ext_len as usize + 1) * 8;
                if srh.routing_type == SrhHdr::ROUTING_TYPE {
                    if next > end {
                        return Err(ChainError::SrhTruncated);
                    }
                    // The first SRH is the one the SID acts on, as Linux's seg6 takes it; a
                    // second one (RFC 8200 §4.1 allows one) is the upper layer's business.
                    if chain.srh_at == 0 {
                        chain.srh_at = at;
                        chain.srh = srh;
                    }
                } else if srh.segments_left != 0 {
                    return Err(ChainError::UnknownRoutingType(at + 2));
                }
                // RFC 8200 §4.4: a routing header of an unknown type with Segments Left 0 is
                // ignored, and processing goes on with the next header.
                chain.upper_protocol = srh.next_header;
                chain.upper = next;
            }
            proto::FRAGMENT => {
                let frag: FragHdr =
                    parse::read_as::<u64, _>(ctx, at).ok_or(ChainError::BeyondLength)?;
                if !frag.is_atomic() {
                    // The kernel reassembles; its route for the SID takes the whole packet.
                    return Err(ChainError::ToKernel(Reason::SidToKernel));
                }
                // An atomic fragment is the whole packet (RFC 6946, RFC 8200 §4.5).
                chain.upper_protocol = frag.next_header;
                chain.upper = at + size_of::<FragHdr>();
            }
            _ => return Ok(chain),
        }
        if chain.upper > end {
            return Err(ChainError::BeyondLength);
        }
        if chain.upper > MAX_HEADER_OFFSET {
            return Err(ChainError::ToKernel(Reason::ExtHeaderChainTooLong));
        }
    }
    match chain.upper_protocol {
        proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS | proto::FRAGMENT => {
            Err(ChainError::ToKernel(Reason::ExtHeaderChainTooLong))
        }
        _ => Ok(chain),
    }
}

/// End and End.X (RFC 8986 §4.1, §4.2): next segment, then forward.
// Subprograms of their own: their stack frames are not added together.
#[inline(never)]
fn transit(packet: &Packet<'_>, chain: &Chain, sid: &SidEntry, behavior: Behavior) -> u32 {
    let Packet { ctx, l3, len, .. } = *packet;
    // Only the fields we need: whole-header copies cost stack.
    let (Some(hop_limit), Some(payload_len)) = (
        parse::read::<u8>(ctx, l3 + 7),
        parse::read::<[u8; 2]>(ctx, l3 + 4),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    let ip_len = u16::from_be_bytes(payload_len).saturating_add(size_of::<Ipv6Hdr>() as u16);
    let (srh_at, srh) = (chain.srh_at, chain.srh);
    if srh_at == 0 || srh.segments_left == 0 {
        // No SRH or Segments Left 0: this SID is the packet's final destination.
        return upper_layer(packet, chain);
    }
    if hop_limit <= 1 {
        stats::reason(Reason::HopLimitExceeded, len);
        return icmp_error::request_v6(icmp::V6_TIME_EXCEEDED, 0, 0);
    }
    let max_last_entry = (srh.hdr_ext_len / 2).wrapping_sub(1);
    if srh.hdr_ext_len < 2
        || srh.last_entry > max_last_entry
        || srh.segments_left > srh.last_entry.saturating_add(1)
    {
        stats::reason(Reason::SrhMalformed, len);
        return parameter_problem(
            l3,
            icmp::V6_ERRONEOUS_HEADER,
            srh_at + SrhHdr::SEGMENTS_LEFT_OFFSET as usize,
        );
    }
    let segments_left = srh.segments_left - 1;
    let next_at = srh_at + size_of::<SrhHdr>() + SID * segments_left as usize;
    let Some(next) = parse::read_addr(ctx, next_at) else {
        stats::reason(Reason::SrhTruncated, len);
        return xdp_action::XDP_DROP;
    };
    let (lookup_dst, ifindex) = if behavior == Behavior::EndX {
        (Addr::from_field(&sid.nexthop), sid.oif_or_table)
    } else {
        (next, packet.ingress_ifindex)
    };
    let Fib::Forward {
        ifindex,
        src_mac,
        dst_mac,
    } = fib::lookup(ctx, true, lookup_dst, ifindex, ip_len, 0)
    else {
        // No neighbour yet, no route, too big: the kernel's End for this SID does the same
        // and answers as the kernel does (and resolves the neighbour).
        return to_kernel(Reason::SidToKernel, len);
    };
    let sl_at = srh_at + SrhHdr::SEGMENTS_LEFT_OFFSET as usize;
    let written = parse::write(ctx, sl_at, segments_left)
        && parse::write(ctx, l3 + 24, next)
        && parse::write(ctx, l3 + 7, hop_limit - 1)
        && set_macs(ctx, l3, src_mac, dst_mac);
    if !written {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// End.DX6, End.DX4, End.DT6, End.DT4, End.DT46 (RFC 8986 §4.4-4.8): strip the outer IPv6
/// header and its extension headers, then forward or deliver the inner packet.
///
/// An End.DT* SID looks up its own table only (RFC 8986 §4.6): a plain forward is done here;
/// a table that says "not forwarded" is this host's (local delivery) only for the local table
/// (255); any other answer goes to the kernel's End.DT* route for the SID, which looks up the
/// same table. Without a table (0), the inner packet takes the host's own routing: local
/// delivery, else the policy rules and the main table, as the kernel's `End.DX6 nh6 ::` does.
#[inline(never)]
fn decapsulate(packet: &Packet<'_>, chain: &Chain, sid: &SidEntry, behavior: Behavior) -> u32 {
    let Packet { ctx, l3, len, .. } = *packet;
    if chain.srh_at != 0 && chain.srh.segments_left != 0 {
        let srh_at = chain.srh_at;
        stats::reason(Reason::SegmentsLeftNotZero, len);
        return parameter_problem(
            l3,
            icmp::V6_ERRONEOUS_HEADER,
            srh_at + SrhHdr::SEGMENTS_LEFT_OFFSET as usize,
        );
    }
    let accepted = match chain.upper_protocol {
        proto::IPV6 => matches!(
            behavior,
            Behavior::EndDx6 | Behavior::EndDt6 | Behavior::EndDt46
        ),
        proto::IPIP => matches!(
            behavior,
            Behavior::EndDx4 | Behavior::EndDt4 | Behavior::EndDt46
        ),
        _ => false,
    };
    if !accepted {
        return upper_layer(packet, chain);
    }
    let mut inner = Ip::EMPTY;
    let parsed = match chain.upper_protocol {
        proto::IPV6 => parse::ipv6(ctx, chain.upper, &mut inner),
        _ => parse::ipv4(ctx, chain.upper, &mut inner),
    };
    // The frame now ends where the outer packet does.
    let rest = parse::frame_len(ctx).saturating_sub(chain.upper);
    if parsed.is_err() || inner.len > rest || inner.l4 > chain.upper + inner.len {
        stats::reason(Reason::HeaderBeyondLength, len);
        return xdp_action::XDP_DROP;
    }
    if inner.len < rest {
        // Bytes after the inner packet: the kernel's route trims them.
        return to_kernel(Reason::SidToKernel, len);
    }
    let table = sid.oif_or_table;
    let decap_table = !matches!(behavior, Behavior::EndDx6 | Behavior::EndDx4);
    let host_routing = decap_table && table == 0;
    let local_table = decap_table && table == LOCAL_TABLE;
    let (lookup_dst, ifindex, lookup_table) = if decap_table {
        // The local table holds only local (and multicast) routes, never a forward: looking
        // up through the rules instead tells a local address ("not forwarded") from others.
        let lookup_table = if local_table { 0 } else { table };
        (inner.dst, packet.ingress_ifindex, lookup_table)
    } else {
        (Addr::from_field(&sid.nexthop), sid.oif_or_table, 0)
    };
    let fib = fib::lookup(
        ctx,
        inner.v6,
        lookup_dst,
        ifindex,
        inner.len as u16,
        lookup_table,
    );
    match fib {
        Fib::Forward {
            ifindex,
            src_mac,
            dst_mac,
        } if !local_table => {
            if !inner_hop_limit_left(ctx, chain.upper, inner.v6) {
                return to_kernel(Reason::InnerHopLimitExpired, len);
            }
            if !inner.v6 {
                match ipv4_checksum_ok(ctx, chain.upper) {
                    Some(true) => {}
                    // RFC 1812 §5.2.2: a router verifies the checksum and discards the packet
                    // (found by the data-plane fuzzer: the TTL's incremental update kept a
                    // wrong checksum wrong, and the packet went out).
                    Some(false) => {
                        stats::reason(Reason::InnerChecksumBad, len);
                        return xdp_action::XDP_DROP;
                    }
                    // Options: the kernel's route forwards (and processes) them.
                    None => return to_kernel(Reason::SidToKernel, len),
                }
            }
            if !(strip(ctx, chain.upper, inner.v6)
                && decrement_ttl(ctx, inner.v6)
                && set_macs(ctx, ETH, src_mac, dst_mac))
            {
                stats::reason(Reason::NoHeadroom, len);
                return xdp_action::XDP_ABORTED;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        // Local delivery (the service on this host); or, with the host's routing, whatever
        // the kernel decides for the inner packet as for any other it receives.
        Fib::NotForwarded if local_table || host_routing => {
            deliver(ctx, chain.upper, inner.v6, len)
        }
        _ if host_routing => deliver(ctx, chain.upper, inner.v6, len),
        _ => to_kernel(Reason::SidToKernel, len),
    }
}

/// Strips the outer headers and passes the inner packet to the kernel.
#[inline(always)]
fn deliver(ctx: &XdpContext, upper: usize, v6: bool, len: u64) -> u32 {
    if strip(ctx, upper, v6) {
        xdp_action::XDP_PASS
    } else {
        stats::reason(Reason::NoHeadroom, len);
        xdp_action::XDP_ABORTED
    }
}

/// Removes everything between the Ethernet header and the inner packet at `upper`.
#[inline(always)]
fn strip(ctx: &XdpContext, upper: usize, v6: bool) -> bool {
    let Some(macs) = parse::read::<[u16; 6]>(ctx, 0) else {
        return false;
    };
    let inner_type = if v6 {
        ether_type::IPV6
    } else {
        ether_type::IPV4
    };
    // Shrink first, then write the Ethernet header at the (constant) start: a write at the
    // variable offset `upper` loses its bounds check to LLVM's reassociation.
    // SAFETY: helper call on our context; offsets below are re-derived from the new start.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), (upper - ETH) as i32) } != 0 {
        return false;
    }
    parse::write(ctx, 0, macs) && parse::write(ctx, 12, inner_type.to_be_bytes())
}

/// Whether the IPv4 header at `at` (without options) sums right; `None` when it has options
/// (or is cut short).
#[inline(always)]
fn ipv4_checksum_ok(ctx: &XdpContext, at: usize) -> Option<bool> {
    let header = parse::read::<[u8; 20]>(ctx, at)?;
    if header[0] != 0x45 {
        return None;
    }
    Some(crate::csum::finish(crate::csum::add_bytes(0, &header)) == [0, 0])
}

/// Whether the inner packet at `at` may be forwarded once more (hop limit / TTL above 1).
#[inline(always)]
fn inner_hop_limit_left(ctx: &XdpContext, at: usize, v6: bool) -> bool {
    let offset = if v6 { 7 } else { 8 };
    parse::read::<u8>(ctx, at + offset).is_some_and(|hops| hops > 1)
}

/// The SID is the final destination and the payload is not one we decapsulate: ICMPv6 (a
/// ping to the SID, RFC 9259) goes to the kernel's route for the SID, which decides as Linux
/// does; anything else is an SR Upper-layer Header Error (RFC 8986 §4.1.1).
#[inline(always)]
fn upper_layer(packet: &Packet<'_>, chain: &Chain) -> u32 {
    if chain.upper_protocol == proto::ICMPV6 {
        return to_kernel(Reason::SidToKernel, packet.len);
    }
    stats::reason(Reason::UpperLayerUnsupported, packet.len);
    parameter_problem(packet.l3, icmp::V6_SR_UPPER_LAYER, chain.upper)
}

/// Asks for an ICMPv6 Parameter Problem pointing at packet offset `at` (the packet is then
/// discarded).
#[inline(always)]
fn parameter_problem(l3: usize, code: u8, at: usize) -> u32 {
    icmp_error::request_v6(icmp::V6_PARAMETER_PROBLEM, code, (at - l3) as u16)
}

/// Rewrites the Ethernet header in front of `l3` for the next hop.
#[inline(always)]
fn set_macs(ctx: &XdpContext, l3: usize, src: [u16; 3], dst: [u16; 3]) -> bool {
    let at = l3 - ETH;
    parse::write(ctx, at, dst) && parse::write(ctx, at + 6, src)
}

/// Decrements the inner hop limit / TTL of the packet now at `ETH`, as a forwarding router
/// does (checked beforehand by [`inner_hop_limit_left`]). False if it would reach 0.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, v6: bool) -> bool {
    if v6 {
        let at = ETH + 7;
        match parse::read::<u8>(ctx, at) {
            Some(hop_limit) if hop_limit > 1 => parse::write(ctx, at, hop_limit - 1),
            _ => false,
        }
    } else {
        let Some(ip) = parse::read_as::<[u32; 5], Ipv4Hdr>(ctx, ETH) else {
            return false;
        };
        if ip.ttl <= 1 {
            return false;
        }
        // RFC 1624 incremental update (as the kernel's ip_decrease_ttl): TTL is the high byte
        // of its 16-bit word.
        let sum = u32::from(u16::from_be_bytes(ip.checksum)) + 0x0100;
        let checksum = ((sum + u32::from(sum >= 0xffff)) as u16).to_be_bytes();
        parse::write(ctx, ETH + 8, ip.ttl - 1) && parse::write(ctx, ETH + 10, checksum)
    }
}
