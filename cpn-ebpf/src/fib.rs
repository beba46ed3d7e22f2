//! Next-hop resolution through the kernel's FIB (`bpf_fib_lookup`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};

use cpn_common::maps::{FibCacheEntry, FibKey, fib_slot};

use crate::{
    maps::{FIB_CACHE, FIB_GENERATION},
    parse::{self, Addr, Frame},
};

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

/// A lookup and its answer. The 64-byte helper struct lives only in [`call`]'s frame, and the
/// answer has the cache's layout, so that nothing is built twice on the callers' stacks (the
/// verifier allows 512 bytes for a whole call chain).
#[repr(C, align(8))]
struct Query {
    /// The question, as the cache keys it (a [`FibKey`]).
    key: FibKeyWords,
    tot_len: u16,
    v6: u8,
    _pad: u8,
    /// The MTU the FIB answered "fragmentation needed" with.
    mtu: u32,
    /// The answer, as the cache keeps it.
    answer: FibCacheEntry,
}

/// A [`FibKey`] as words (the same bytes), built without byte copies.
#[repr(C, align(8))]
struct FibKeyWords {
    dst: Addr,
    ifindex: u32,
    table: u32,
}

impl FibKeyWords {
    /// The question as three words (for the slot's hash and comparison).
    #[inline(always)]
    fn words(&self) -> [u64; 3] {
        let [a, b] = self.dst.0;
        let c = u64::from(self.ifindex) | u64::from(self.table) << 32;
        [a, b, c]
    }

    /// A stored key read as words.
    #[inline(always)]
    fn of(key: &FibKey) -> &Self {
        // SAFETY: same size, alignment and bytes (asserted below).
        unsafe { &*(key as *const FibKey).cast::<Self>() }
    }
}

const _: () = {
    assert!(core::mem::size_of::<FibKeyWords>() == core::mem::size_of::<FibKey>());
    assert!(core::mem::align_of::<FibKeyWords>() == core::mem::align_of::<FibKey>());
    assert!(core::mem::offset_of!(FibKey, ifindex) == 16);
};

/// Looks up `dst` (IPv4-mapped for IPv4) for a packet of `tot_len` bytes that came in on
/// `ifindex`: through the policy rules as the kernel routes a received packet (`table` 0), or
/// in routing table `table` alone (RFC 8986 §4.6: End.DT6 looks up its table only).
///
/// A forward the FIB answered is cached: the same question (destination, interface, table)
/// gets the same answer until the agent bumps the generation (any route, neighbour, link or
/// rule change); a longer packet than the FIB let through is asked again. Generation 0 (no
/// agent has started, or it stopped) turns the cache off. Only forwards are cached: every
/// other answer goes to the kernel, which decides afresh. No clock: reading one cost as much
/// as the rest of a decapsulation.
#[inline(always)]
pub fn lookup(
    ctx: &impl Frame,
    v6: bool,
    dst: Addr,
    ifindex: u32,
    tot_len: u16,
    table: u32,
) -> Fib {
    let mut query = Query {
        key: FibKeyWords {
            dst,
            ifindex,
            table,
        },
        tot_len,
        v6: u8::from(v6),
        _pad: 0,
        mtu: 0,
        // SAFETY: all-zero is a valid answer (integers and byte arrays); zeroed as one block,
        // which LLVM writes in words (field by field, it writes the MACs a byte at a time).
        answer: unsafe { core::mem::zeroed() },
    };
    // Read before the lookup: a change during it makes the answer stale at once.
    query.answer.generation = FIB_GENERATION.get(0).copied().unwrap_or(0);
    let words = query.key.words();
    // This CPU's slot for the question; only this CPU writes it. Generation 0: no cache. A
    // null pointer rather than an `Option`: LLVM leaves the payload of a `None` undefined, and
    // the verifier refuses a program that moves an unset register around.
    let slot = if query.answer.generation == 0 {
        core::ptr::null_mut()
    } else {
        FIB_CACHE
            .get_ptr_mut(fib_slot(words))
            .unwrap_or(core::ptr::null_mut())
    };
    if !slot.is_null() {
        // SAFETY: a per-CPU value from a successful lookup, valid for this run.
        let held = unsafe { &*slot };
        let [a, b, c] = FibKeyWords::of(&held.key).words();
        // Word by word: an array comparison would become a call to `memcmp`.
        if held.answer.generation == query.answer.generation
            && a == words[0]
            && b == words[1]
            && c == words[2]
        {
            if u32::from(tot_len) <= held.answer.fits_len {
                return forward(&held.answer);
            }
            query.answer.fits_len = held.answer.fits_len;
        }
    }
    match call(ctx, &mut query) {
        BPF_FIB_LKUP_RET_SUCCESS => {
            query.answer.fits_len = query.answer.fits_len.max(u32::from(tot_len));
            if !slot.is_null() {
                // SAFETY: as above; the slot takes this question and its answer.
                unsafe {
                    (&raw mut (*slot).key).cast::<[u64; 3]>().write(words);
                    (*slot).answer = query.answer;
                }
            }
            forward(&query.answer)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeighbour,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::FragNeeded {
            mtu: query.mtu.min(u32::from(u16::MAX)) as u16,
        },
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::NotForwarded,
        _ => Fib::NoRoute,
    }
}

#[inline(always)]
fn forward(answer: &FibCacheEntry) -> Fib {
    Fib::Forward {
        ifindex: answer.ifindex,
        src_mac: parse::mac_field_words(&answer.src_mac),
        dst_mac: parse::mac_field_words(&answer.dst_mac),
    }
}

/// A BPF subprogram of its own; its signature has no Rust enums, whose BTF the kernel rejects.
#[inline(never)]
fn call(ctx: &impl Frame, query: &mut Query) -> u32 {
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = query.key.ifindex;
    params.__bindgen_anon_1.tot_len = query.tot_len;
    // The address words hold the bytes in order; split them into the helper's 32-bit words.
    let [w0, w1] = query.key.dst.0;
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
    if query.key.table != 0 {
        // TBID is only honoured together with DIRECT (which skips the policy rules).
        params.__bindgen_anon_5.tbid = query.key.table;
        flags |= BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID;
    }
    // SAFETY: `params` is a valid, fully initialised lookup struct of the size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.context(),
            &raw mut params,
            size_of::<FibParams>() as i32,
            flags,
        )
    } as u32;
    query.answer.ifindex = params.ifindex;
    // SAFETY: the kernel writes `mtu_result` into the union on FRAG_NEEDED; otherwise it still
    // holds `tot_len`, which nobody reads.
    query.mtu = u32::from(unsafe { params.__bindgen_anon_1.mtu_result });
    query.answer.src_mac = params.smac;
    query.answer.dst_mac = params.dmac;
    rc
}
