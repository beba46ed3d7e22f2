//! `cpn_endpoint`: SRv6 endpoint behaviours (RFC 8986 §4) for the local SIDs, with the SRH
//! checks of RFC 8754 §4.3.1.1. Packets not addressed to a local SID pass untouched.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use cpn_common::{
    headers::{EthHdr, ExtHdr, Ipv4Hdr, Ipv6Hdr, SrhHdr, ether_type, icmp, proto},
    maps::{Behavior, SidEntry},
    stats::Reason,
};

use crate::{
    fib::{self, Fib},
    icmp as icmp_error,
    maps::{LOCAL_SIDS, SID_STATS},
    parse::{self, Ip, L2, MAX_EXT_HEADERS, MAX_HEADER_OFFSET},
    stats,
};

const ETH: usize = size_of::<EthHdr>();
const SID: usize = 16;

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
    /// A header before the upper layer is cut short.
    Truncated,
    /// The SRH is shorter than its Hdr Ext Len says.
    SrhTruncated,
    /// A routing header of another type, a fragment, or too many headers: the kernel decides.
    NotOurs(Option<Reason>),
}

#[inline(always)]
pub fn endpoint(ctx: &XdpContext, l2: &L2, ingress_ifindex: u32) -> u32 {
    if l2.ether_type != ether_type::IPV6 {
        return xdp_action::XDP_PASS;
    }
    let (Some(dst), Some(next_header)) = (
        parse::read::<[u8; 16]>(ctx, l2.l3 + 24),
        parse::read::<u8>(ctx, l2.l3 + 6),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a shared lookup whose value we copy out at once.
    let Some(sid) = (unsafe { LOCAL_SIDS.get(dst) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let len = parse::frame_len(ctx) as u64;
    stats::add(&SID_STATS, sid.stats_index, len);
    let chain = match walk(ctx, l2.l3, next_header) {
        Ok(chain) => chain,
        Err(ChainError::Truncated) => {
            stats::reason(Reason::Truncated, len);
            return xdp_action::XDP_PASS;
        }
        Err(ChainError::SrhTruncated) => {
            stats::reason(Reason::SrhTruncated, len);
            return xdp_action::XDP_DROP;
        }
        Err(ChainError::NotOurs(reason)) => {
            if let Some(reason) = reason {
                stats::reason(reason, len);
            }
            return xdp_action::XDP_PASS;
        }
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
    let verdict = match behavior {
        Behavior::End | Behavior::EndX => transit(&packet, &chain, &sid, behavior),
        _ => decapsulate(&packet, &chain, &sid, behavior),
    };
    icmp_error::answer(ctx, l2.l3, verdict)
}

/// Walks the extension headers up to the upper layer, remembering the SRH.
#[inline(always)]
fn walk(ctx: &XdpContext, l3: usize, first: u8) -> Result<Chain, ChainError> {
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
        match chain.upper_protocol {
            proto::HOP_BY_HOP | proto::DEST_OPTS => {
                let ext: ExtHdr = parse::read(ctx, chain.upper).ok_or(ChainError::Truncated)?;
                chain.upper_protocol = ext.next_header;
                chain.upper += (ext.hdr_ext_len as usize + 1) * 8;
            }
            proto::ROUTING => {
                let srh: SrhHdr = parse::read(ctx, chain.upper).ok_or(ChainError::SrhTruncated)?;
                if srh.routing_type != SrhHdr::ROUTING_TYPE {
                    return Err(ChainError::NotOurs(Some(Reason::UnknownRoutingType)));
                }
                let end = chain.upper + (srh.hdr_ext_len as usize + 1) * 8;
                if end > parse::frame_len(ctx) {
                    return Err(ChainError::SrhTruncated);
                }
                chain.srh_at = chain.upper;
                chain.srh = srh;
                chain.upper_protocol = srh.next_header;
                chain.upper = end;
            }
            // Fragmented SRv6 packets are reassembled by the kernel.
            proto::FRAGMENT => return Err(ChainError::NotOurs(None)),
            _ => return Ok(chain),
        }
        if chain.upper > MAX_HEADER_OFFSET {
            return Err(ChainError::NotOurs(Some(Reason::ExtHeaderChainTooLong)));
        }
    }
    Err(ChainError::NotOurs(Some(Reason::ExtHeaderChainTooLong)))
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
    let Some(next) = parse::read::<[u8; 16]>(ctx, next_at) else {
        stats::reason(Reason::SrhTruncated, len);
        return xdp_action::XDP_DROP;
    };
    let (lookup_dst, ifindex) = if behavior == Behavior::EndX {
        (sid.nexthop, sid.oif_or_table)
    } else {
        (next, packet.ingress_ifindex)
    };
    let fib = fib::lookup(ctx, true, lookup_dst, ifindex, ip_len, 0);
    let sl_at = srh_at + SrhHdr::SEGMENTS_LEFT_OFFSET as usize;
    let dst_at = l3 + 24;
    if !(parse::write(ctx, sl_at, segments_left) && parse::write(ctx, dst_at, next)) {
        return xdp_action::XDP_ABORTED;
    }
    match fib {
        Fib::Forward {
            ifindex,
            src_mac,
            dst_mac,
        } => {
            // We forward, so we decrement; the kernel does it on the pass paths below.
            if !(parse::write(ctx, l3 + 7, hop_limit - 1) && set_macs(ctx, l3, src_mac, dst_mac)) {
                return xdp_action::XDP_ABORTED;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        Fib::NoNeighbour | Fib::FragNeeded { .. } => {
            stats::reason(Reason::FibNoNeighbour, len);
            xdp_action::XDP_PASS
        }
        Fib::NoRoute => {
            stats::reason(Reason::FibNoRoute, len);
            xdp_action::XDP_PASS
        }
    }
}

/// End.DX6, End.DX4, End.DT6, End.DT4, End.DT46 (RFC 8986 §4.4-4.8): strip the outer IPv6
/// header and its extension headers, then forward or deliver the inner packet.
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
    if parsed.is_err() {
        stats::reason(Reason::Truncated, len);
        return xdp_action::XDP_DROP;
    }
    let (lookup_dst, ifindex, table) = match behavior {
        Behavior::EndDx6 | Behavior::EndDx4 => (sid.nexthop, sid.oif_or_table, 0),
        _ => (inner.dst, packet.ingress_ifindex, sid.oif_or_table),
    };
    let fib = fib::lookup(ctx, inner.v6, lookup_dst, ifindex, inner.len as u16, table);

    // Strip everything between the Ethernet header and the inner packet.
    let Some(eth) = parse::read::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    let inner_type = if inner.v6 {
        ether_type::IPV6
    } else {
        ether_type::IPV4
    };
    // Shrink first, then write the Ethernet header at the (constant) start: a write at the
    // variable offset `strip` loses its bounds check to LLVM's reassociation.
    let strip = chain.upper - ETH;
    // SAFETY: helper call on our context; offsets below are re-derived from the new start.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), strip as i32) } != 0 {
        stats::reason(Reason::NoHeadroom, len);
        return xdp_action::XDP_ABORTED;
    }
    let eth = EthHdr {
        ether_type: inner_type.to_be_bytes(),
        ..eth
    };
    if !parse::write(ctx, 0, eth) {
        return xdp_action::XDP_ABORTED;
    }
    match fib {
        Fib::Forward {
            ifindex,
            src_mac,
            dst_mac,
        } => {
            if !decrement_ttl(ctx, inner.v6) {
                stats::reason(Reason::InnerHopLimitExpired, len);
                return xdp_action::XDP_PASS;
            }
            if !set_macs(ctx, ETH, src_mac, dst_mac) {
                return xdp_action::XDP_ABORTED;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        // Local delivery (the service on this node), or the kernel resolves and forwards.
        Fib::NoRoute => xdp_action::XDP_PASS,
        Fib::NoNeighbour | Fib::FragNeeded { .. } => {
            stats::reason(Reason::FibNoNeighbour, len);
            xdp_action::XDP_PASS
        }
    }
}

/// The SID is the final destination and the payload is not one we decapsulate: ICMPv6 goes to
/// the kernel (it answers pings to the SID); anything else is an SR Upper-layer Header Error
/// (RFC 8986 §4.1.1).
#[inline(always)]
fn upper_layer(packet: &Packet<'_>, chain: &Chain) -> u32 {
    if chain.upper_protocol == proto::ICMPV6 {
        return xdp_action::XDP_PASS;
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
fn set_macs(ctx: &XdpContext, l3: usize, src: [u8; 6], dst: [u8; 6]) -> bool {
    let at = l3 - ETH;
    parse::write(ctx, at, dst) && parse::write(ctx, at + 6, src)
}

/// Decrements the inner hop limit / TTL of the packet now at `ETH`, as a forwarding router
/// does. False if it would reach 0 (the kernel then sends Time Exceeded).
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, v6: bool) -> bool {
    if v6 {
        let at = ETH + 7;
        match parse::read::<u8>(ctx, at) {
            Some(hop_limit) if hop_limit > 1 => parse::write(ctx, at, hop_limit - 1),
            _ => false,
        }
    } else {
        let Some(ip) = parse::read::<Ipv4Hdr>(ctx, ETH) else {
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
