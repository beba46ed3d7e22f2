//! `cpn_steer`: service lookup → flow affinity → ring → node → SRv6 encapsulation → FIB.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_action, xdp_md},
    helpers::bpf_jiffies64,
    programs::{TcContext, XdpContext},
};
use cpn_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    headers::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, ether_type, icmp, proto},
    maps::{
        ANY_PROTOCOL, FlowEntry, FlowKey, NodeEntry, NodeState, RING_ATTEMPTS, SERVICE_AFFINITY,
        SERVICE_PORTS, SERVICE_PORTS_ONLY, ServiceEntry, ServiceKey, ring_index, ring_slot,
    },
    programs::Hook,
    stats::{ProtoCounter, Reason},
};

use crate::{
    encap,
    fib::{self, Fib},
    icmp as icmp_error,
    maps::{FLOWS, NODE_STATS, NODES, RING_SELECTORS, RINGS, SERVICE_STATS, SERVICES, STEER_PROTO},
    nexthop,
    parse::{self, Addr, Fragment, Frame, Ip, IpError, L2, L3},
    stats,
};

/// What [`parse`] answers for an IP packet to hand to [`cpn_steer_ip`] (no XDP action has
/// this value).
pub const PARSED: u32 = u32::MAX;

/// A flag to [`cpn_parse_ip_tc`]'s hook: count the packet, then pass it.
pub const COUNT_ONLY: u32 = 1 << 31;

/// Parses the network layer (at `l3`, of `ether_type`) into `ip` and counts it in the
/// protocol counters of `hook` (a [`Hook`] number, plus [`COUNT_ONLY`] for a packet that is
/// passed whatever it holds): [`PARSED`] for an IP packet to steer, else the verdict. A global function as [`cpn_steer_ip`] is, verified
/// once; its frame is gone when the entry function calls [`cpn_steer_ip`] with the `Ip` that
/// lives in the entry's frame (the two frames would not fit the verifier's 512 bytes
/// together).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cpn_parse_ip(ctx: *mut xdp_md, l3: u32, ether_type: u32, ip: *mut Ip) -> u32 {
    parse_ip(&XdpContext::new(ctx), l3, ether_type, ip, Hook::Xdp as u32)
}

/// [`cpn_parse_ip`] for the TC program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cpn_parse_ip_tc(
    ctx: *mut __sk_buff,
    l3: u32,
    ether_type: u32,
    ip: *mut Ip,
    hook: u32,
) -> u32 {
    parse_ip(&TcContext::new(ctx), l3, ether_type, ip, hook)
}

#[inline(always)]
fn parse_ip(ctx: &impl Frame, l3: u32, ether_type: u32, ip: *mut Ip, hook: u32) -> u32 {
    let count_only = hook & COUNT_ONLY != 0;
    // Where the hook's counters start in `steer_proto` (`maps::steer_proto_index`), kept a
    // plain number: as a `Hook`, LLVM splits the parse into one copy per hook, and the
    // verifier walks every copy. A number past the map finds no counter.
    let first = (hook & !COUNT_ONLY).wrapping_mul(ProtoCounter::COUNT);
    let count = |counter: ProtoCounter, bytes| {
        stats::add(&STEER_PROTO, first.wrapping_add(counter as u32), bytes);
    };
    if ip.is_null() || l3 as usize > parse::MAX_L2_LEN {
        return xdp_action::XDP_PASS;
    }
    let l2 = &L2 {
        l3: l3 as usize,
        ether_type: ether_type as u16,
        vlan_tagged: false,
    };
    // SAFETY: a non-null pointer to the caller's `Ip`, valid and unaliased for this call.
    let ip = unsafe { &mut *ip };
    let len = parse::frame_len(ctx) as u64;
    let counter = match parse::ip(ctx, l2, ip) {
        L3::Ip => {
            let counter = if ip.v6 {
                ProtoCounter::Ipv6
            } else {
                ProtoCounter::Ipv4
            };
            count(counter, len);
            return if count_only {
                xdp_action::XDP_PASS
            } else {
                PARSED
            };
        }
        L3::Error(IpError::ChainTooLong) => {
            stats::reason(Reason::ExtHeaderChainTooLong, len);
            ProtoCounter::Ipv6
        }
        L3::Error(e) => e.counter(),
        L3::NotIp if l2.ether_type == ether_type::ARP => ProtoCounter::Arp,
        L3::NotIp => ProtoCounter::OtherEthertype,
    };
    count(counter, len);
    xdp_action::XDP_PASS
}

/// Steers a parsed IP packet. A BPF *global* function: the kernel verifies it once, on its
/// own, for any `Ip` and any packet, instead of once for every way the parse can end (each
/// extension-header chain ends in another state, and every one of them used to walk all of
/// steering again: 44 000 verified instructions then, a fifth of that now). So its arguments
/// are plain: the context, a pointer, a scalar; ICMP errors come back as requests
/// ([`icmp_error::answer`]) for the entry function to send.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cpn_steer_ip(ctx: *mut xdp_md, ip: *const Ip, ingress_ifindex: u32) -> u32 {
    steer_ip(&XdpContext::new(ctx), ip, ingress_ifindex)
}

/// [`cpn_steer_ip`] for the TC program; its verdicts are XDP's (the entry maps them).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cpn_steer_ip_tc(ctx: *mut __sk_buff, ip: *const Ip, ifindex: u32) -> u32 {
    steer_ip(&TcContext::new(ctx), ip, ifindex)
}

#[inline(always)]
fn steer_ip(ctx: &impl encap::Room, ip: *const Ip, ingress_ifindex: u32) -> u32 {
    // The kernel cannot know that the pointer is never null: it checks, so we do.
    if ip.is_null() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: a non-null pointer to the caller's parsed `Ip`, valid for this call. Copied to
    // the stack, where the verifier tracks values: the bounds checked below then hold for
    // every later use (a value read through the pointer is anything, each time).
    let ip = unsafe { ip.read_volatile() };
    let bounded = ip.l3 <= parse::MAX_L2_LEN
        && ip.l4 <= parse::MAX_HEADER_OFFSET
        && ip.len <= parse::MAX_IP_LEN;
    if !bounded {
        return xdp_action::XDP_PASS;
    }
    steer(ctx, &ip, ingress_ifindex)
}

/// Steers one IP packet; anything that is not for a service passes untouched.
///
/// The heavier steps are BPF subprograms (`#[inline(never)]`) so that their stack frames are
/// not summed into one over the 512-byte limit.
#[inline(always)]
pub fn steer(ctx: &impl encap::Room, ip: &Ip, ingress_ifindex: u32) -> u32 {
    let len = parse::frame_len(ctx) as u64;
    let mut key = MaybeUninit::<FlowKey>::uninit();
    let kind = flow_of(ctx, ip, &mut key);
    if kind == FlowKind::Truncated {
        // Only worth a counter (or a drop) if it was meant for a service.
        if service_address(ip.dst).is_some() {
            if let Some(reason) = length_error(ctx, ip) {
                stats::reason(reason, len);
                return xdp_action::XDP_DROP;
            }
            stats::reason(Reason::Truncated, len);
        }
        return xdp_action::XDP_PASS;
    }
    // SAFETY: `flow_of` writes the whole key unless it answers `Truncated`.
    let key = unsafe { key.assume_init_ref() };
    let following_error = kind == FlowKind::IcmpError;
    let Some(service) = lookup_service(key) else {
        return xdp_action::XDP_PASS;
    };
    if let Some(reason) = length_error(ctx, ip) {
        stats::reason(reason, len);
        return xdp_action::XDP_DROP;
    }
    if following_error {
        stats::reason(Reason::IcmpErrorFollowed, len);
    } else if ip.fragment != Fragment::No {
        stats::reason(Reason::Fragment, len);
    }

    let hash = flow_hash(key, FLOW_HASH_SEED);
    let Some((node_id, node)) = pick_node(service, key, hash, !following_error, len) else {
        stats::reason(Reason::NoUsableNode, len);
        return xdp_action::XDP_PASS;
    };
    let Some(plan) = encap::Plan::new(node, hash, ip) else {
        stats::reason(Reason::BadNodeEntry, len);
        return xdp_action::XDP_PASS;
    };
    let outer_len = plan.outer_len();
    let route = next_hop(
        ctx,
        node_id,
        plan.first_segment,
        ingress_ifindex,
        ctx.encapsulated_len(ip, outer_len),
    );
    let action = match route {
        Fib::Forward {
            ifindex,
            src_mac,
            dst_mac,
        } => {
            // The next hop's MACs go in with the headers (one write, not the received ones
            // copied and then overwritten).
            if !encap::push(ctx, ip, &plan, node, &encap::macs(src_mac, dst_mac)) {
                stats::reason(Reason::NoHeadroom, len);
                return xdp_action::XDP_ABORTED;
            }
            if ctx.carries_on_out_of(ifindex) {
                xdp_action::XDP_PASS
            } else {
                // SAFETY: plain helper call.
                unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
            }
        }
        Fib::NoNeighbour => {
            // The kernel forwards it (and resolves the neighbour): the received MACs stay.
            let Some(received) = parse::read::<[u16; 6]>(ctx, 0) else {
                return xdp_action::XDP_PASS;
            };
            if !encap::push(ctx, ip, &plan, node, &received) {
                stats::reason(Reason::NoHeadroom, len);
                return xdp_action::XDP_ABORTED;
            }
            stats::reason(Reason::FibNoNeighbour, len);
            xdp_action::XDP_PASS
        }
        Fib::FragNeeded { mtu } => return too_big(ip, mtu, outer_len, len),
        Fib::NotForwarded | Fib::NoRoute => {
            stats::reason(Reason::FibNoRoute, len);
            return xdp_action::XDP_PASS;
        }
    };
    stats::add(&SERVICE_STATS, service.id, len);
    stats::add(&NODE_STATS, node_id, len);
    action
}

/// Where the encapsulated packet (`tot_len` bytes) goes: the node's cached next hop if the
/// agent keeps one, else the kernel's FIB, asked as for a packet received on the ingress.
#[inline(always)]
fn next_hop(
    ctx: &impl Frame,
    node_id: u32,
    first_segment: Addr,
    ingress_ifindex: u32,
    tot_len: usize,
) -> Fib {
    match nexthop::cached(node_id) {
        Some(cached) if tot_len > cached.mtu as usize => Fib::FragNeeded {
            mtu: cached.mtu.min(u32::from(u16::MAX)) as u16,
        },
        Some(cached) => Fib::Forward {
            ifindex: cached.ifindex,
            src_mac: parse::mac_field_words(&cached.src_mac),
            dst_mac: parse::mac_field_words(&cached.dst_mac),
        },
        None => fib::lookup(ctx, true, first_segment, ingress_ifindex, tot_len as u16, 0),
    }
}

/// RFC 8200 / RFC 791: the IP header's length defines the packet. A packet to a service whose
/// length lies is not steered (the kernel would drop it as truncated too).
#[inline(always)]
fn length_error(ctx: &impl Frame, ip: &Ip) -> Option<Reason> {
    let end = ip.l3 + ip.len;
    if end > parse::frame_len(ctx) {
        Some(Reason::LengthBeyondFrame)
    } else if ip.l4 > end {
        Some(Reason::HeaderBeyondLength)
    } else {
        None
    }
}

/// The encapsulated packet would exceed the egress MTU: tell the client the MTU that fits.
/// IPv6 never goes below 1280 (RFC 8200 §5): a larger packet is told 1280; one of 1280 bytes or
/// less cannot be helped and is dropped with a counter (the path's MTU is too small for the
/// encapsulation; the agent warns about such paths).
#[inline(always)]
fn too_big(ip: &Ip, mtu: u16, overhead: usize, len: u64) -> u32 {
    let inner_mtu = (mtu as usize).saturating_sub(overhead);
    if ip.v6 {
        if inner_mtu < icmp::V6_MIN_MTU && ip.len <= icmp::V6_MIN_MTU {
            stats::reason(Reason::MtuBelowMinimum, len);
            return xdp_action::XDP_DROP;
        }
        stats::reason(Reason::PacketTooBig, len);
        let told = inner_mtu.max(icmp::V6_MIN_MTU) as u16;
        icmp_error::request_v6(icmp::V6_PACKET_TOO_BIG, 0, told)
    } else if ip.dont_fragment {
        stats::reason(Reason::FragmentationNeeded, len);
        icmp_error::request_v4_frag_needed(inner_mtu as u16)
    } else {
        stats::reason(Reason::TooBigWithoutDf, len);
        xdp_action::XDP_PASS
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum FlowKind {
    /// A packet of the flow itself.
    Direct,
    /// An ICMP error quoting a packet of the flow (a reply from the service): steer it with
    /// the flow it is about.
    IcmpError,
    /// Ports or the quoted packet cut short.
    Truncated,
}

/// Writes into `key` the flow a packet belongs to (all of it, unless the answer is
/// `Truncated`). Fragments have no ports (later ones carry no L4 header), so every fragment of
/// a datagram, the first included, hashes the same way.
// No Rust enums with data in a subprogram's signature: the kernel rejects their BTF.
#[inline(never)]
fn flow_of(ctx: &impl Frame, ip: &Ip, key: &mut MaybeUninit<FlowKey>) -> FlowKind {
    if ip.fragment != Fragment::No {
        write_flow(key, ip.src, ip.dst, 0, ip.protocol);
        return FlowKind::Direct;
    }
    if parse::has_ports(ip.protocol) {
        let Some(ports) = parse::read::<u32>(ctx, ip.l4) else {
            return FlowKind::Truncated;
        };
        write_flow(key, ip.src, ip.dst, ports, ip.protocol);
        return FlowKind::Direct;
    }
    let is_error = match ip.protocol {
        proto::ICMPV6 => matches!(
            parse::read::<u8>(ctx, ip.l4),
            Some(icmp::V6_DEST_UNREACHABLE..=icmp::V6_PARAMETER_PROBLEM)
        ),
        proto::ICMP => matches!(
            parse::read::<u8>(ctx, ip.l4),
            Some(icmp::V4_DEST_UNREACHABLE | icmp::V4_TIME_EXCEEDED | icmp::V4_PARAMETER_PROBLEM)
        ),
        _ => false,
    };
    if !is_error {
        write_flow(key, ip.src, ip.dst, 0, ip.protocol);
        return FlowKind::Direct;
    }
    if quoted_flow(ctx, ip, key) {
        FlowKind::IcmpError
    } else {
        FlowKind::Truncated
    }
}

/// A [`FlowKey`] as words (the same bytes), so that it is built in five stores.
#[repr(C, align(8))]
struct FlowKeyWords {
    src: Addr,
    dst: Addr,
    /// Source and destination ports, as they lie in the packet.
    ports: u32,
    /// The protocol byte, then the three padding bytes.
    protocol: u32,
}

/// A [`ServiceKey`] as words (the same bytes).
#[repr(C, align(8))]
struct ServiceKeyWords {
    addr: Addr,
    /// Port, protocol, padding.
    rest: u64,
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<FlowKeyWords>() == size_of::<FlowKey>());
    assert!(align_of::<FlowKeyWords>() == align_of::<FlowKey>());
    assert!(offset_of!(FlowKey, dst) == 16 && offset_of!(FlowKey, src_port) == 32);
    assert!(offset_of!(FlowKey, dst_port) == 34 && offset_of!(FlowKey, protocol) == 36);
    assert!(size_of::<ServiceKeyWords>() == size_of::<ServiceKey>());
    assert!(align_of::<ServiceKeyWords>() == align_of::<ServiceKey>());
    assert!(offset_of!(ServiceKey, port) == 16 && offset_of!(ServiceKey, protocol) == 18);
};

/// Writes a whole flow key. `ports` holds the source and destination ports as they lie in the
/// packet (4 bytes, network order each).
#[inline(always)]
fn write_flow(key: &mut MaybeUninit<FlowKey>, src: Addr, dst: Addr, ports: u32, protocol: u8) {
    let words = FlowKeyWords {
        src,
        dst,
        ports,
        protocol: u32::from_ne_bytes([protocol, 0, 0, 0]),
    };
    // SAFETY: `FlowKeyWords` has `FlowKey`'s size, alignment and byte layout (asserted above),
    // and every byte pattern is a valid `FlowKey`.
    unsafe { key.as_mut_ptr().cast::<FlowKeyWords>().write(words) };
}

/// Writes into `key` the flow an ICMP error is about: the quoted packet went from the service
/// to the client, so the flow is that packet reversed. False if the quote is cut short.
#[inline(always)]
fn quoted_flow(ctx: &impl Frame, ip: &Ip, key: &mut MaybeUninit<FlowKey>) -> bool {
    let quoted = ip.l4 + core::mem::size_of::<IcmpHdr>();
    let (src, dst, protocol, l4) = if ip.v6 {
        let (Some(src), Some(dst), Some(next)) = (
            parse::read_addr(ctx, quoted + 8),
            parse::read_addr(ctx, quoted + 24),
            parse::read::<u8>(ctx, quoted + 6),
        ) else {
            return false;
        };
        (dst, src, next, quoted + core::mem::size_of::<Ipv6Hdr>())
    } else {
        let Some(q) = parse::read_as::<[u32; 5], Ipv4Hdr>(ctx, quoted) else {
            return false;
        };
        let header_len = q.header_len();
        if header_len < core::mem::size_of::<Ipv4Hdr>() || header_len > 60 {
            return false;
        }
        (
            Addr::v4_mapped(q.dst),
            Addr::v4_mapped(q.src),
            q.protocol,
            quoted + header_len,
        )
    };
    let mut ports = 0;
    if parse::has_ports(protocol) {
        let Some(quoted_ports) = parse::read::<u32>(ctx, l4) else {
            return false;
        };
        // The quoted packet's source port is the flow's destination port: swap the halves.
        ports = quoted_ports.rotate_left(16);
    }
    write_flow(key, src, dst, ports, protocol);
    true
}

/// A services-map key, built in word stores.
#[inline(always)]
fn service_key(addr: Addr, port: [u8; 2], protocol: u8) -> ServiceKey {
    let [p0, p1] = port;
    let words = ServiceKeyWords {
        addr,
        rest: u64::from_ne_bytes([p0, p1, protocol, 0, 0, 0, 0, 0]),
    };
    // SAFETY: `ServiceKeyWords` has `ServiceKey`'s size, alignment and byte layout (asserted
    // above), and every byte pattern is a valid `ServiceKey`.
    unsafe { core::mem::transmute::<ServiceKeyWords, ServiceKey>(words) }
}

/// The entry of a destination address in the services map, if it has one (a service, or a
/// marker saying that some of its ports are).
#[inline(always)]
fn service_address(addr: Addr) -> Option<&'static ServiceEntry> {
    let key = service_key(addr, [0; 2], ANY_PROTOCOL);
    // SAFETY: a shared lookup; the entry is borrowed from the map for this run, and the agent
    // replaces entries whole.
    unsafe { SERVICES.get(key) }
}

/// The service of a flow: one lookup by address; only an address that has port entries costs
/// a second lookup, by (address, port, protocol), whose entry wins.
#[inline(always)]
fn lookup_service(key: &FlowKey) -> Option<&'static ServiceEntry> {
    let dst = Addr::from_field(&key.dst);
    let by_address = service_address(dst)?;
    if by_address.flags & SERVICE_PORTS != 0 {
        let exact = service_key(dst, key.dst_port, key.protocol);
        // SAFETY: as in `service_address`.
        if let Some(entry) = unsafe { SERVICES.get(exact) } {
            return Some(entry);
        }
    }
    (by_address.flags & SERVICE_PORTS_ONLY == 0).then_some(by_address)
}

/// Flow affinity first (if the service wants it and the node still takes flows), else the
/// ring (the flow's slot, or re-hashed ones while its node is down). `remember` records the
/// choice (not for ICMP errors, which are not flows). Only affinity reads the clock, and the
/// tick counter (`bpf_jiffies64`, a few ns where even the coarse clock costs ~30): idle
/// timeouts are whole seconds.
#[inline(always)]
fn pick_node(
    service: &ServiceEntry,
    key: &FlowKey,
    hash: u32,
    remember: bool,
    len: u64,
) -> Option<(u32, &'static NodeEntry)> {
    let affinity = service.flags & SERVICE_AFFINITY != 0;
    let mut now = 0;
    if affinity {
        // SAFETY: plain helper call.
        now = unsafe { bpf_jiffies64() };
        if let Some(entry) = FLOWS.get_ptr_mut(key) {
            // SAFETY: the pointer comes from a successful lookup; a racing update on another
            // CPU can at worst make us read the node of the same flow written a moment earlier.
            let (node_id, last_seen) = unsafe { ((*entry).node, (*entry).last_seen_jiffies) };
            let idle = now.saturating_sub(last_seen);
            let timeout = u64::from(service.affinity_timeout_jiffies);
            if (timeout == 0 || idle < timeout)
                && let Some(node) = usable_node(node_id)
            {
                // Hits leave the shared entry alone until it is a refresh interval stale.
                if remember && idle >= u64::from(service.affinity_refresh_jiffies) {
                    // SAFETY: as above.
                    unsafe { (*entry).last_seen_jiffies = now };
                }
                return Some((node_id, node));
            }
        }
    }
    let selector = RING_SELECTORS.get(service.id).copied()?;
    let size = selector.size();
    if size == 0 {
        return None;
    }
    // The flow's own slot; if its node is down, re-hashed ones (see `ring_slot`).
    let mut attempt = 0;
    let (node_id, node) = loop {
        if attempt == RING_ATTEMPTS {
            return None;
        }
        let slot = ring_slot(hash, attempt, size);
        let node_id = *RINGS.get(ring_index(service.id, selector.half(), slot))?;
        if let Some(node) = usable_node(node_id) {
            break (node_id, node);
        }
        attempt += 1;
    };
    if attempt > 0 {
        stats::reason(Reason::DownNodeRehashed, len);
    }
    if affinity && remember {
        // Best effort: a full LRU evicts an old flow; a failure leaves the flow to the ring.
        let _ = FLOWS.insert(
            key,
            FlowEntry {
                node: node_id,
                _pad: 0,
                last_seen_jiffies: now,
            },
            0,
        );
    }
    Some((node_id, node))
}

/// The node's entry, borrowed from the map (valid for the whole program run; no 120-byte
/// copy on the 512-byte stack).
#[inline(always)]
fn usable_node(node_id: u32) -> Option<&'static NodeEntry> {
    let node: &'static NodeEntry = NODES.get(node_id)?;
    NodeState::keeps_flows(node.state).then_some(node)
}
