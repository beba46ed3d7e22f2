//! cpn's XDP programs.
//!
//! Entry points stay thin: each calls a `try_*` function and turns an internal error into
//! `XDP_ABORTED` (visible in `xdp:xdp_exception` tracepoints), never into a silent pass.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::stats::Fault;

/// Ingress: counts what it sees; steering arrives with the SRv6 data plane.
#[xdp]
pub fn cpn_steer(ctx: XdpContext) -> u32 {
    match try_count(&ctx, &maps::STEER_PROTO) {
        Ok(action) => action,
        Err(Fault) => xdp_action::XDP_ABORTED,
    }
}

/// Compute node / transit: counts what it sees; SID processing arrives with the SRv6 data plane.
#[xdp]
pub fn cpn_endpoint(ctx: XdpContext) -> u32 {
    match try_count(&ctx, &maps::ENDPOINT_PROTO) {
        Ok(action) => action,
        Err(Fault) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_count(ctx: &XdpContext, counters: &maps::ProtoStats) -> Result<u32, Fault> {
    let frame = parse::classify(ctx);
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats::add(counters, frame.proto, len)?;
    if frame.vlan_tagged {
        stats::add(counters, cpn_common::stats::ProtoCounter::VlanTagged, len)?;
    }
    Ok(xdp_action::XDP_PASS)
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
