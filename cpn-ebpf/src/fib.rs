//! Next-hop resolution through the kernel's FIB (`bpf_fib_lookup`).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};

use crate::parse::Addr;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the FIB says about a destination.
pub enum Fib {
    /// Forward out of `ifindex` with these MACs.
    Forward {
        ifindex: u32,
        /// MACs as 16-bit words (their bytes in order): moved in three instructions each.
        src_mac: [u16; 3],
        dst_mac: [u16; 3],
    },
    /// A route exists but the neighbour is not resolved: let the kernel forward (and resolve).
    NoNeighbour,
    /// The packet of `tot_len` bytes exceeds the egress MTU.
    FragNeeded { mtu: u16 },
    /// Not forwarded: the destination is local, or no route matches at all (the kernel
    /// answers both the same way: `BPF_FIB_LKUP_RET_NOT_FWDED`).
    NotForwarded,
    /// Any other refusal: blackhole, unreachable, prohibit, forwarding off, unsupported.
    NoRoute,
}

/// A lookup and its answer, kept small: the 64-byte helper struct lives only in [`call`]'s
/// frame, which keeps the callers' stacks within the verifier's 512-byte budget.
#[repr(C, align(8))]
struct Query {
    dst: Addr,
    ifindex: u32,
    table: u32,
    tot_len: u16,
    v6: u8,
    _pad: u8,
    // Answer.
    out_ifindex: u32,
    mtu: u16,
    src_mac: [u16; 3],
    dst_mac: [u16; 3],
}

/// Looks up `dst` (16 bytes, IPv4-mapped for IPv4) for a packet of `tot_len` bytes that came in
/// on `ifindex`: through the policy rules as the kernel routes a received packet (`table` 0),
/// or in routing table `table` alone (RFC 8986 §4.6: End.DT6 looks up its table only).
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    v6: bool,
    dst: Addr,
    ifindex: u32,
    tot_len: u16,
    table: u32,
) -> Fib {
    let mut query = Query {
        dst,
        ifindex,
        table,
        tot_len,
        v6: u8::from(v6),
        _pad: 0,
        out_ifindex: 0,
        mtu: 0,
        src_mac: [0; 3],
        dst_mac: [0; 3],
    };
    match call(ctx, &mut query) {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Forward {
            ifindex: query.out_ifindex,
            src_mac: query.src_mac,
            dst_mac: query.dst_mac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeighbour,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::FragNeeded { mtu: query.mtu },
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::NotForwarded,
        _ => Fib::NoRoute,
    }
}

/// A BPF subprogram of its own; its signature has no Rust enums, whose BTF the kernel rejects.
#[inline(never)]
fn call(ctx: &XdpContext, query: &mut Query) -> u32 {
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = query.ifindex;
    params.__bindgen_anon_1.tot_len = query.tot_len;
    // The address words hold the bytes in order; split them into the helper's 32-bit words.
    let [w0, w1] = query.dst.0;
    let halves = |w: u64| {
        let [a, b, c, d, e, f, g, h] = w.to_ne_bytes();
        [
            u32::from_ne_bytes([a, b, c, d]),
            u32::from_ne_bytes([e, f, g, h]),
        ]
    };
    let ([d0, d1], [d2, d3]) = (halves(w0), halves(w1));
    if query.v6 != 0 {
        params.family = AF_INET6;
        params.__bindgen_anon_4.ipv6_dst = [d0, d1, d2, d3];
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_4.ipv4_dst = d3;
    }
    let mut flags = 0;
    if query.table != 0 {
        // TBID is only honoured together with DIRECT (which skips the policy rules).
        params.__bindgen_anon_5.tbid = query.table;
        flags |= BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID;
    }
    // SAFETY: `params` is a valid, fully initialised lookup struct of the size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<FibParams>() as i32,
            flags,
        )
    } as u32;
    query.out_ifindex = params.ifindex;
    // SAFETY: the kernel writes `mtu_result` into the union on FRAG_NEEDED; otherwise it still
    // holds `tot_len`, which nobody reads.
    query.mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    query.src_mac = crate::parse::mac_words(params.smac);
    query.dst_mac = crate::parse::mac_words(params.dmac);
    rc
}
