//! cpn's XDP and TC programs.
//!
//! ```text
//!   cpn_steer     parse → service → affinity / ring → node → H.Encaps(.Red) → next hop
//!                 (cached, else FIB) → redirect
//!   cpn_steer_tc_ingress, cpn_steer_tc_egress
//!                 the same code over the socket buffer (parse::Frame, encap::Room,
//!                 icmp::Reply), plus the MSS clamp of steered SYNs
//!   cpn_endpoint  parse → local SID → End / End.X / End.DX* / End.DT* → FIB → redirect | pass
//! ```
//! Entry points stay thin. Where something that cannot fail on a verified program fails anyway
//! (a resize, a bounds check after one), the code returns `XDP_ABORTED` on the spot (visible in
//! the `xdp:xdp_exception` tracepoint), never a silent pass.
#![no_std]
#![no_main]

mod csum;
mod encap;
mod endpoint;
mod fib;
mod icmp;
mod maps;
mod nexthop;
mod parse;
mod stats;
mod steer;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use cpn_common::{
    headers::{ether_type, proto},
    maps::Seen,
    programs::Hook,
    stats::ProtoCounter,
};

use crate::parse::{Frame, L2};

/// Hop limit of the headers we create (outer IPv6, ICMP errors); a load-time global the agent
/// may override.
#[unsafe(no_mangle)]
static HOP_LIMIT: u8 = 64;

#[inline(always)]
fn hop_limit() -> u8 {
    // SAFETY: a read of a global the loader may have patched; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&raw const HOP_LIMIT) }
}

#[xdp]
pub fn cpn_steer(ctx: XdpContext) -> u32 {
    steer_entry(&ctx)
}

#[xdp]
pub fn cpn_endpoint(ctx: XdpContext) -> u32 {
    endpoint_entry(&ctx)
}

/// `cpn_steer` as a TC program: the same parse, steering and encapsulation over the socket
/// buffer, for what XDP cannot finish (a partial checksum or a GSO packet from a container
/// behind a veth): on ingress, an ICMP error goes back out of the interface.
#[classifier]
pub fn cpn_steer_tc_ingress(ctx: TcContext) -> i32 {
    steer_tc_entry(&ctx, Hook::TcIngress)
}

/// The same on egress, for what XDP never sees (what the host sends): an ICMP error is
/// received on the interface, as if it came from the network, for the host's own stack.
#[classifier]
pub fn cpn_steer_tc_egress(ctx: TcContext) -> i32 {
    steer_tc_entry(&ctx, Hook::TcEgress)
}

/// The ingress interface, read once at entry: LLVM may otherwise split the context field
/// access, which the verifier rejects ("dereference of modified ctx ptr").
#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the program's context pointer, valid for the whole run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).ingress_ifindex) }
}

#[inline(always)]
fn steer_entry(ctx: &XdpContext) -> u32 {
    let ifindex = ingress_ifindex(ctx);
    let Some(l2) = count_l2(ctx, Seen::Steer(Hook::Xdp)) else {
        return xdp_action::XDP_PASS;
    };
    let mut ip = parse::Ip::EMPTY;
    let parsed = steer::cpn_parse_ip(ctx.ctx, l2.l3 as u32, u32::from(l2.ether_type), &raw mut ip);
    let verdict = match parsed {
        steer::PARSED => steer::cpn_steer_ip(ctx.ctx, &raw const ip, ifindex),
        verdict => verdict,
    };
    icmp::answer(ctx, l2.l3, verdict)
}

/// The headers the TC program reads in place must lie in the socket buffer's linear part;
/// where they may not, up to the deepest header parsing follows is pulled in first, plus an
/// ICMP error's quote (which quotes flows in its own headers).
const TC_PULL: u32 = (parse::MAX_HEADER_OFFSET + 128) as u32;

const ETH: usize = core::mem::size_of::<cpn_common::headers::EthHdr>();

#[inline(always)]
fn steer_tc_entry(ctx: &TcContext, hook: Hook) -> i32 {
    let pull = ctx.len().min(TC_PULL);
    if !headers_in_head(ctx) && ctx.pull_data(pull).is_err() {
        return TC_ACT_OK;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the program's context, valid for the whole run; volatile, read once (as XDP's).
    let (ifindex, vlan_present) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).ifindex),
            core::ptr::read_volatile(&raw const (*skb).vlan_present),
        )
    };
    let seen = Seen::Steer(hook);
    let Some(l2) = count_l2(ctx, seen) else {
        return TC_ACT_OK;
    };
    // A tagged frame is counted and passed: the kernel takes a tag out of the data into the
    // socket buffer before TC sees it (`vlan_present`), and hands the frame to the VLAN's
    // interface after TC; a hook there steers it, with that interface's routes. A tag still
    // in the data is not one the kernel knows.
    let (l3, ether_type) = (l2.l3 as u32, u32::from(l2.ether_type));
    if vlan_present != 0 || l2.l3 != ETH {
        // Once per frame: a tag in the data `count_l2` counted.
        if vlan_present != 0 && !l2.vlan_tagged {
            count(seen, ProtoCounter::VlanTagged, ctx);
        }
        let mut ip = parse::Ip::EMPTY;
        let counters = hook as u32 | steer::COUNT_ONLY;
        steer::cpn_parse_ip_tc(skb, l3, ether_type, &raw mut ip, counters);
        return TC_ACT_OK;
    }
    let mut ip = parse::Ip::EMPTY;
    let parsed = steer::cpn_parse_ip_tc(skb, l3, ether_type, &raw mut ip, hook as u32);
    let verdict = match parsed {
        steer::PARSED => steer::cpn_steer_ip_tc(skb, &raw const ip, ifindex),
        verdict => verdict,
    };
    // How an ICMP error the program sends goes: back out of the interface it came in on, or
    // (egress: the host sent it) received on it, for the host's own stack.
    let reply_flags = match hook {
        Hook::TcEgress => u64::from(BPF_F_INGRESS),
        _ => 0,
    };
    match icmp::answer(ctx, ETH, verdict) {
        xdp_action::XDP_PASS => TC_ACT_OK,
        // `bpf_redirect` answers `TC_ACT_REDIRECT` in a TC program.
        v if v == TC_ACT_REDIRECT as u32 => TC_ACT_REDIRECT,
        // SAFETY: plain helper call.
        xdp_action::XDP_TX => unsafe { bpf_redirect(ifindex, reply_flags) as i32 },
        _ => TC_ACT_SHOT,
    }
}

/// Whether the linear part already holds every header steering reads: IPv4 or IPv6 without
/// options or extension headers, then the whole TCP header or UDP's. A local socket's packet
/// is like that, its payload in page fragments. Pulling payload in as well would cost a second
/// copy of the head per packet (the verifier's prologue has unshared it already), which shows
/// in bulk TCP; a packet with more headers, or none of these, is pulled.
#[inline(always)]
fn headers_in_head(ctx: &TcContext) -> bool {
    let linear = ctx.data_end() - ctx.data();
    let (l4, protocol) = match parse::read::<[u8; 2]>(ctx, 12).map(u16::from_be_bytes) {
        Some(ether_type::IPV6) => match parse::read::<[u8; 2]>(ctx, ETH + 6) {
            Some([next_header, _]) => (ETH + 40, next_header),
            None => return false,
        },
        Some(ether_type::IPV4) => match parse::read::<[u8; 10]>(ctx, ETH) {
            Some(header) if header[0] == 0x45 => (ETH + 20, header[9]),
            _ => return false,
        },
        _ => return false,
    };
    match protocol {
        proto::TCP => parse::read::<[u8; 14]>(ctx, l4)
            // The fixed 20 bytes at least, whatever a (malformed) data offset claims.
            .is_some_and(|tcp| l4 + (usize::from(tcp[12] >> 4) * 4).max(20) <= linear),
        proto::UDP => l4 + 8 <= linear,
        _ => false,
    }
}

#[inline(always)]
fn endpoint_entry(ctx: &XdpContext) -> u32 {
    let ifindex = ingress_ifindex(ctx);
    let Some(l2) = count_l2(ctx, Seen::Endpoint) else {
        return xdp_action::XDP_PASS;
    };
    // The endpoint only needs the fixed IPv6 header to find its SIDs; count by it.
    let proto = match l2.ether_type {
        ether_type::IPV6 => match parse::read::<u8>(ctx, l2.l3 + 39) {
            // The whole fixed header is there (its last byte is); check the version nibble.
            Some(_) if parse::read::<u8>(ctx, l2.l3).is_some_and(|v| v >> 4 == 6) => {
                ProtoCounter::Ipv6
            }
            _ => ProtoCounter::Malformed,
        },
        ether_type::IPV4 => match parse::ipv4_header(ctx, l2.l3) {
            Ok(_) => ProtoCounter::Ipv4,
            Err(e) => e.counter(),
        },
        _ => non_ip(&l2),
    };
    count(Seen::Endpoint, proto, ctx);
    if proto != ProtoCounter::Ipv6 {
        return xdp_action::XDP_PASS;
    }
    icmp::answer(ctx, l2.l3, endpoint::endpoint(ctx, &l2, ifindex))
}

/// Parses the link layer and counts VLAN tags and malformed frames; `None` ends processing.
#[inline(always)]
fn count_l2(ctx: &impl Frame, counters: Seen) -> Option<L2> {
    match parse::l2(ctx) {
        Ok(l2) => {
            if l2.vlan_tagged {
                count(counters, ProtoCounter::VlanTagged, ctx);
            }
            Some(l2)
        }
        Err(vlan_tagged) => {
            if vlan_tagged {
                count(counters, ProtoCounter::VlanTagged, ctx);
            }
            count(counters, ProtoCounter::Malformed, ctx);
            None
        }
    }
}

#[inline(always)]
fn non_ip(l2: &L2) -> ProtoCounter {
    if l2.ether_type == ether_type::ARP {
        ProtoCounter::Arp
    } else {
        ProtoCounter::OtherEthertype
    }
}

#[inline(always)]
fn count(counters: Seen, which: ProtoCounter, ctx: &impl Frame) {
    stats::protocol(counters, which, parse::frame_len(ctx) as u64);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is nothing to unwind to.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
