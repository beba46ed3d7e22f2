//! ICMP errors built in place from the invoking packet and sent back where it came from
//! (`XDP_TX`). The error's source is the invoking packet's destination: the service address at
//! the ingress, the SID at an endpoint. Every error passes a rate limit first (RFC 4443 §2.4 f).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use cpn_common::{
    headers::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, ether_type, icmp, proto},
    maps::TokenBucket,
    stats::Reason,
};

use crate::{
    csum, hop_limit,
    maps::{ICMP_BUDGET, ICMP_PEERS},
    parse::{self, Frame},
};

/// A packet that can be rewritten into an ICMP error: cut to `l3 + quote` bytes, with `front`
/// bytes of new headers (Ethernet included) in front of the quoted part, replacing the `l3`
/// bytes of link-layer headers. The entry sends the result back (`XDP_TX`, or TC's redirect).
pub trait Reply: Frame {
    fn resize_for_reply(&self, l3: usize, quote: usize, front: usize) -> bool;
}

impl Reply for XdpContext {
    #[inline(always)]
    fn resize_for_reply(&self, l3: usize, quote: usize, front: usize) -> bool {
        let tail = (l3 + quote) as i32 - parse::frame_len(self) as i32;
        // SAFETY: plain helper calls on our own context; pointers are re-derived afterwards.
        unsafe {
            if tail != 0 && bpf_xdp_adjust_tail(self.as_ptr().cast(), tail) != 0 {
                return false;
            }
            bpf_xdp_adjust_head(self.as_ptr().cast(), l3 as i32 - front as i32) == 0
        }
    }
}

/// A socket buffer: cut with `bpf_skb_change_tail`, the headers' room made after the Ethernet
/// header (the TC program takes `l3 == ETH` only).
impl Reply for TcContext {
    #[inline(always)]
    fn resize_for_reply(&self, l3: usize, quote: usize, front: usize) -> bool {
        if l3 != ETH || front < ETH {
            return false;
        }
        // SAFETY: helper call on our context; pointers are re-derived afterwards.
        if unsafe { bpf_skb_change_tail(self.skb.skb, (l3 + quote) as u32, 0) } != 0 {
            return false;
        }
        self.adjust_room((front - ETH) as i32, BPF_ADJ_ROOM_MAC, 0)
            .is_ok()
    }
}

// Load-time tunables of the rate limit, which the agent may override. The defaults are Linux's:
// all errors at most 1000/s with a burst of 50 (`net.ipv6.icmp_msgs_per_sec`, `_burst`), and
// one a second per destination with a burst of 6 (`net.ipv6.icmp.ratelimit`, `XRLIM_BURST`).
// Each CPU keeps its own buckets. An interval of 0 turns that limit off.
#[unsafe(no_mangle)]
static ICMP_INTERVAL_NS: u64 = 1_000_000;
#[unsafe(no_mangle)]
static ICMP_BURST: u64 = 50;
#[unsafe(no_mangle)]
static ICMP_PEER_INTERVAL_NS: u64 = 1_000_000_000;
#[unsafe(no_mangle)]
static ICMP_PEER_BURST: u64 = 6;

#[inline(always)]
fn tunable(value: &u64) -> u64 {
    // SAFETY: a read of a global the loader may have patched; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(value) }
}

/// Whether an error may go to `dst` now: its own bucket, then the CPU's bucket for all errors.
#[inline(always)]
fn within_rate(dst: &parse::Addr) -> bool {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let peer_interval = tunable(&ICMP_PEER_INTERVAL_NS);
    if peer_interval != 0 {
        let peer_burst = tunable(&ICMP_PEER_BURST);
        match ICMP_PEERS.get_ptr_mut(dst) {
            // SAFETY: a per-CPU value from a successful lookup; only this CPU writes it.
            Some(bucket) => {
                if !unsafe { (*bucket).take(now, peer_interval, peer_burst) } {
                    return false;
                }
            }
            None => {
                // A new destination starts with a full bucket, less this message.
                let mut bucket = TokenBucket::default();
                bucket.take(now, peer_interval, peer_burst);
                // Best effort: a full LRU evicts the least recent destination.
                let _ = ICMP_PEERS.insert(dst, bucket, 0);
            }
        }
    }
    match ICMP_BUDGET.get_ptr_mut(0) {
        // SAFETY: as above.
        Some(bucket) => unsafe {
            (*bucket).take(now, tunable(&ICMP_INTERVAL_NS), tunable(&ICMP_BURST))
        },
        None => true,
    }
}

/// Bytes of the invoking packet an ICMPv6 error quotes at most: the minimum MTU minus the
/// error's own headers (RFC 4443 §2.4 c), rounded down to a word.
const V6_QUOTE_MAX: usize = icmp::V6_MIN_MTU - size_of::<Ipv6Hdr>() - size_of::<IcmpHdr>();
/// ICMPv4 quotes up to 576 bytes in all (RFC 1812 §4.3.2.3).
const V4_QUOTE_MAX: usize = 576 - size_of::<Ipv4Hdr>() - size_of::<IcmpHdr>();

const ETH: usize = size_of::<EthHdr>();

/// A verdict that asks for an ICMPv6 error instead of an XDP action: subprograms return it
/// and the entry function sends the error, so that their stack frames never stack on top of
/// [`v6_error`]'s (the verifier allows 512 bytes for a whole call chain).
#[inline(always)]
pub const fn request_v6(kind: u8, code: u8, pointer: u16) -> u32 {
    1 << 31 | (kind as u32) << 24 | (code as u32) << 16 | pointer as u32
}

/// A verdict that asks for an ICMPv4 Fragmentation Needed carrying `mtu` (see [`request_v6`]).
#[inline(always)]
pub const fn request_v4_frag_needed(mtu: u16) -> u32 {
    1 << 30 | mtu as u32
}

/// Carries out a verdict from [`request_v6`] or [`request_v4_frag_needed`], or returns a
/// plain XDP action unchanged.
#[inline(always)]
pub fn answer(ctx: &impl Reply, l3: usize, verdict: u32) -> u32 {
    if verdict & 1 << 30 != 0 {
        return v4_frag_needed(ctx, l3, verdict as u16);
    }
    if verdict & 1 << 31 == 0 {
        return verdict;
    }
    let kind = (verdict >> 24 & 0x7f) as u8;
    let code = (verdict >> 16) as u8;
    v6_error(ctx, l3, kind, code, verdict & 0xffff)
}

/// Why no error could be sent.
enum NotSent {
    /// RFC 4443 §2.4 (e) / RFC 1812: never answer a multicast or unspecified source.
    Suppressed,
    /// RFC 4443 §2.4 (f): over the rate limit.
    RateLimited,
    /// The packet could not be resized.
    NoRoom,
}

/// The verdict: `XDP_TX` with the error, else the invoking packet is discarded either way.
#[inline(always)]
fn verdict(sent: Result<(), NotSent>) -> u32 {
    match sent {
        Ok(()) => xdp_action::XDP_TX,
        Err(NotSent::Suppressed) => {
            crate::stats::reason(Reason::IcmpSuppressed, 0);
            xdp_action::XDP_DROP
        }
        Err(NotSent::RateLimited) => {
            crate::stats::reason(Reason::IcmpRateLimited, 0);
            xdp_action::XDP_DROP
        }
        Err(NotSent::NoRoom) => {
            crate::stats::reason(Reason::NoHeadroom, 0);
            xdp_action::XDP_ABORTED
        }
    }
}

/// Rewrites the packet (IPv6 at `l3`) into an ICMPv6 error of `kind`/`code` with the 4-byte
/// field `rest` (MTU or pointer), quoting the invoking packet.
// A BPF subprogram of its own: its stack frame is not added to every caller's.
#[inline(never)]
pub fn v6_error(ctx: &impl Reply, l3: usize, kind: u8, code: u8, rest: u32) -> u32 {
    verdict(build_v6_error(ctx, l3, kind, code, rest.to_be_bytes()))
}

#[inline(always)]
fn build_v6_error(
    ctx: &impl Reply,
    l3: usize,
    kind: u8,
    code: u8,
    rest: [u8; 4],
) -> Result<(), NotSent> {
    let macs: [u16; 6] = parse::read(ctx, 0).ok_or(NotSent::NoRoom)?;
    let orig_src = parse::read_addr(ctx, l3 + 8).ok_or(NotSent::NoRoom)?;
    let orig_dst = parse::read_addr(ctx, l3 + 24).ok_or(NotSent::NoRoom)?;
    if orig_src.first_byte() == 0xff || orig_src == parse::Addr::ZERO {
        return Err(NotSent::Suppressed);
    }
    if !within_rate(&orig_src) {
        return Err(NotSent::RateLimited);
    }
    let quote = (parse::frame_len(ctx) - l3).min(V6_QUOTE_MAX) & !3;
    let header = size_of::<Ipv6Hdr>() + size_of::<IcmpHdr>();
    resize(ctx, l3, quote, ETH + header)?;

    // Headers are written straight into the packet; the checksum then covers the addresses,
    // the ICMPv6 header and the quote, which lie back to back from the source address on.
    let payload_len = (size_of::<IcmpHdr>() + quote) as u16;
    let [len_hi, len_lo] = payload_len.to_be_bytes();
    let ip = ETH;
    let message = ETH + size_of::<Ipv6Hdr>();
    let written = write_reply_macs(ctx, macs, ether_type::IPV6)
        && parse::write(
            ctx,
            ip,
            [0x60, 0, 0, 0, len_hi, len_lo, proto::ICMPV6, hop_limit()],
        )
        && parse::write(ctx, ip + 8, orig_dst)
        && parse::write(ctx, ip + 24, orig_src)
        && parse::write(ctx, message, [kind, code, 0, 0])
        && parse::write(ctx, message + 4, rest);
    if !written {
        return Err(NotSent::NoRoom);
    }
    // The pseudo-header's length and next header (RFC 8200 §8.1), then the packet bytes.
    let sum = csum::add_bytes(0, &[0, 0, len_hi, len_lo, 0, 0, 0, proto::ICMPV6]);
    let covered = 32 + usize::from(payload_len);
    let sum = csum::add_packet::<{ 32 + V6_QUOTE_MAX + 8 }>(ctx, sum, ip + 8, covered)
        .ok_or(NotSent::NoRoom)?;
    if parse::write(ctx, message + 2, csum::finish(sum)) {
        Ok(())
    } else {
        Err(NotSent::NoRoom)
    }
}

/// Writes the Ethernet header of a reply: back to where `macs` (destination, source of the
/// invoking frame, as 16-bit words) came from.
#[inline(always)]
fn write_reply_macs(ctx: &impl Reply, macs: [u16; 6], ether_type: u16) -> bool {
    let [d0, d1, d2, s0, s1, s2] = macs;
    parse::write(ctx, 0, [s0, s1, s2, d0, d1, d2])
        && parse::write(ctx, 12, ether_type.to_be_bytes())
}

/// Rewrites the packet (IPv4 at `l3`) into an ICMPv4 Fragmentation Needed carrying `mtu`;
/// returns the verdict.
#[inline(never)]
pub fn v4_frag_needed(ctx: &impl Reply, l3: usize, mtu: u16) -> u32 {
    verdict(build_v4_frag_needed(ctx, l3, mtu))
}

#[inline(always)]
fn build_v4_frag_needed(ctx: &impl Reply, l3: usize, mtu: u16) -> Result<(), NotSent> {
    let macs: [u16; 6] = parse::read(ctx, 0).ok_or(NotSent::NoRoom)?;
    let orig_src: [u8; 4] = parse::read(ctx, l3 + 12).ok_or(NotSent::NoRoom)?;
    let orig_dst: [u8; 4] = parse::read(ctx, l3 + 16).ok_or(NotSent::NoRoom)?;
    let fragment: [u8; 2] = parse::read(ctx, l3 + 6).ok_or(NotSent::NoRoom)?;
    // Nor a fragment other than the first (RFC 1812 §4.3.2.7; Linux's icmp_send too).
    let later_fragment = u16::from_be_bytes(fragment) & 0x1fff != 0;
    if orig_src[0] >= 224 || orig_src == [0; 4] || later_fragment {
        return Err(NotSent::Suppressed);
    }
    if !within_rate(&parse::Addr::v4_mapped(orig_src)) {
        return Err(NotSent::RateLimited);
    }
    let quote = (parse::frame_len(ctx) - l3).min(V4_QUOTE_MAX) & !3;
    let header = size_of::<Ipv4Hdr>() + size_of::<IcmpHdr>();
    resize(ctx, l3, quote, ETH + header)?;

    let [len_hi, len_lo] = ((header + quote) as u16).to_be_bytes();
    // Version 4, IHL 5; TOS: internetwork control, as routers mark their ICMP; no id, no
    // fragment; the header checksum over these 20 bytes.
    let front = [0x45, 0xc0, len_hi, len_lo, 0, 0, 0, 0];
    let ttl_proto = [hop_limit(), proto::ICMP];
    let mut sum = csum::add_bytes(0, &front);
    sum = csum::add_bytes(sum, &ttl_proto);
    sum = csum::add_bytes(sum, &orig_dst);
    sum = csum::add_bytes(sum, &orig_src);
    let ip = ETH;
    let message = ETH + size_of::<Ipv4Hdr>();
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
    let written = write_reply_macs(ctx, macs, ether_type::IPV4)
        && parse::write(ctx, ip, front)
        && parse::write(ctx, ip + 8, ttl_proto)
        && parse::write(ctx, ip + 10, csum::finish(sum))
        && parse::write(ctx, ip + 12, orig_dst)
        && parse::write(ctx, ip + 16, orig_src)
        && parse::write(
            ctx,
            message,
            [
                icmp::V4_DEST_UNREACHABLE,
                icmp::V4_FRAG_NEEDED_CODE,
                0,
                0,
                0,
                0,
                mtu_hi,
                mtu_lo,
            ],
        );
    if !written {
        return Err(NotSent::NoRoom);
    }
    let covered = size_of::<IcmpHdr>() + quote;
    let sum = csum::add_packet::<{ V4_QUOTE_MAX + 8 }>(ctx, 0, message, covered)
        .ok_or(NotSent::NoRoom)?;
    if parse::write(ctx, message + 2, csum::finish(sum)) {
        Ok(())
    } else {
        Err(NotSent::NoRoom)
    }
}

/// Cuts the packet and makes room for the reply's headers ([`Reply::resize_for_reply`]).
#[inline(always)]
fn resize(ctx: &impl Reply, l3: usize, quote: usize, front: usize) -> Result<(), NotSent> {
    if ctx.resize_for_reply(l3, quote, front) {
        Ok(())
    } else {
        Err(NotSent::NoRoom)
    }
}
