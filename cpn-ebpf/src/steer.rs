//! `cpn_steer`: service lookup → flow affinity → ring → node → SRv6 encapsulation → FIB.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use cpn_common::{
    hash::{FLOW_HASH_SEED, flow_hash},
    headers::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, ether_type, icmp, proto},
    maps::{
        ANY_PROTOCOL, FlowEntry, FlowKey, NodeEntry, NodeState, SERVICE_AFFINITY, ServiceEntry,
        ServiceKey, ring_index,
    },
    stats::{ProtoCounter, Reason},
};

use crate::{
    encap,
    fib::{self, Fib},
    icmp as icmp_error,
    maps::{FLOWS, NODE_STATS, NODES, RING_SELECTORS, RINGS, SERVICE_STATS, SERVICES, STEER_PROTO},
    parse::{self, Fragment, Ip, IpError, L2, L3},
    stats,
};

/// Parses the network layer, counts it, and steers it. A subprogram: the parsed headers live
/// in its frame, not in the entry function's. ICMP errors come back as requests
/// ([`icmp_error::answer`]) for the entry function to send.
#[inline(never)]
pub fn run(ctx: &XdpContext, l2: &L2, ingress_ifindex: u32) -> u32 {
    let len = parse::frame_len(ctx) as u64;
    let mut ip = Ip::EMPTY;
    let counter = match parse::ip(ctx, l2, &mut ip) {
        L3::Ip => {
            let counter = if ip.v6 {
                ProtoCounter::Ipv6
            } else {
                ProtoCounter::Ipv4
            };
            stats::add(&STEER_PROTO, counter as u32, len);
            return steer(ctx, &ip, ingress_ifindex);
        }
        L3::Error(IpError::ChainTooLong) => {
            stats::reason(Reason::ExtHeaderChainTooLong, len);
            ProtoCounter::Ipv6
        }
        L3::Error(e) => e.counter(),
        L3::NotIp if l2.ether_type == ether_type::ARP => ProtoCounter::Arp,
        L3::NotIp => ProtoCounter::OtherEthertype,
    };
    stats::add(&STEER_PROTO, counter as u32, len);
    xdp_action::XDP_PASS
}

/// Steers one IP packet; anything that is not for a service passes untouched.
///
/// The heavier steps are BPF subprograms (`#[inline(never)]`) so that their stack frames are
/// not summed into one over the 512-byte limit.
#[inline(always)]
pub fn steer(ctx: &XdpContext, ip: &Ip, ingress_ifindex: u32) -> u32 {
    let len = parse::frame_len(ctx) as u64;
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        src_port: [0; 2],
        dst_port: [0; 2],
        protocol: 0,
        _pad: [0; 3],
    };
    let kind = flow_of(ctx, ip, &mut key);
    if kind == FlowKind::Truncated {
        // Only worth a counter (or a drop) if it was meant for a service.
        if lookup_service(ip.dst, [0; 2], ANY_PROTOCOL).is_some() {
            if let Some(reason) = length_error(ctx, ip) {
                stats::reason(reason, len);
                return xdp_action::XDP_DROP;
            }
            stats::reason(Reason::Truncated, len);
        }
        return xdp_action::XDP_PASS;
    }
    let following_error = kind == FlowKind::IcmpError;
    let Some(service) = lookup_service(key.dst, key.dst_port, key.protocol) else {
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

    let hash = flow_hash(&key, FLOW_HASH_SEED);
    let Some((node_id, node)) = pick_node(&service, &key, hash, !following_error) else {
        stats::reason(Reason::NoUsableNode, len);
        return xdp_action::XDP_PASS;
    };
    let Some(plan) = encap::Plan::new(node, hash, ip) else {
        stats::reason(Reason::BadNodeEntry, len);
        return xdp_action::XDP_PASS;
    };
    let outer_len = plan.outer_len();
    let first_segment = plan.first_segment;
    let fib = fib::lookup(
        ctx,
        true,
        first_segment,
        ingress_ifindex,
        (outer_len + ip.len) as u16,
        0,
    );
    let action = match fib {
        Fib::Forward {
            ifindex,
            src_mac,
            dst_mac,
        } => {
            if !(encap::push(ctx, ip, &plan, node) && encap::set_macs(ctx, src_mac, dst_mac)) {
                stats::reason(Reason::NoHeadroom, len);
                return xdp_action::XDP_ABORTED;
            }
            // SAFETY: plain helper call.
            unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
        }
        Fib::NoNeighbour => {
            if !encap::push(ctx, ip, &plan, node) {
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

/// RFC 8200 / RFC 791: the IP header's length defines the packet. A packet to a service whose
/// length lies is not steered (the kernel would drop it as truncated too).
#[inline(always)]
fn length_error(ctx: &XdpContext, ip: &Ip) -> Option<Reason> {
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

/// Fills `key` with the flow a packet belongs to. Fragments have no ports (later ones carry no
/// L4 header), so every fragment of a datagram, the first included, hashes the same way.
// No Rust enums with data in a subprogram's signature: the kernel rejects their BTF.
#[inline(never)]
fn flow_of(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) -> FlowKind {
    key.src = ip.src;
    key.dst = ip.dst;
    key.src_port = [0; 2];
    key.dst_port = [0; 2];
    key.protocol = ip.protocol;
    if ip.fragment != Fragment::No {
        return FlowKind::Direct;
    }
    if parse::has_ports(ip.protocol) {
        let Some(ports) = parse::ports(ctx, ip.l4) else {
            return FlowKind::Truncated;
        };
        key.src_port = ports.src;
        key.dst_port = ports.dst;
        return FlowKind::Direct;
    }
    let is_error = match ip.protocol {
        proto::ICMPV6 => matches!(
            parse::read::<IcmpHdr>(ctx, ip.l4).map(|h| h.kind),
            Some(icmp::V6_DEST_UNREACHABLE..=icmp::V6_PARAMETER_PROBLEM)
        ),
        proto::ICMP => matches!(
            parse::read::<IcmpHdr>(ctx, ip.l4).map(|h| h.kind),
            Some(icmp::V4_DEST_UNREACHABLE | icmp::V4_TIME_EXCEEDED | icmp::V4_PARAMETER_PROBLEM)
        ),
        _ => false,
    };
    if !is_error {
        return FlowKind::Direct;
    }
    if quoted_flow(ctx, ip, key) {
        FlowKind::IcmpError
    } else {
        FlowKind::Truncated
    }
}

/// Fills `key` with the flow an ICMP error is about: the quoted packet went from the service
/// to the client, so the flow is that packet reversed. False if the quote is cut short.
/// (Fields go straight into `key`: whole-header copies cost stack.)
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) -> bool {
    let quoted = ip.l4 + core::mem::size_of::<IcmpHdr>();
    let l4 = if ip.v6 {
        let (Some(src), Some(dst), Some(next)) = (
            parse::read::<[u8; 16]>(ctx, quoted + 8),
            parse::read::<[u8; 16]>(ctx, quoted + 24),
            parse::read::<u8>(ctx, quoted + 6),
        ) else {
            return false;
        };
        key.src = dst;
        key.dst = src;
        key.protocol = next;
        quoted + core::mem::size_of::<Ipv6Hdr>()
    } else {
        let Some(q) = parse::read::<Ipv4Hdr>(ctx, quoted) else {
            return false;
        };
        let header_len = q.header_len();
        if header_len < core::mem::size_of::<Ipv4Hdr>() || header_len > 60 {
            return false;
        }
        key.src = parse::v4_mapped(q.dst);
        key.dst = parse::v4_mapped(q.src);
        key.protocol = q.protocol;
        quoted + header_len
    };
    key.src_port = [0; 2];
    key.dst_port = [0; 2];
    if parse::has_ports(key.protocol) {
        let Some(ports) = parse::ports(ctx, l4) else {
            return false;
        };
        key.src_port = ports.dst;
        key.dst_port = ports.src;
    }
    true
}

/// The exact (address, port, protocol) service, else the address alone.
#[inline(always)]
fn lookup_service(addr: [u8; 16], port: [u8; 2], protocol: u8) -> Option<ServiceEntry> {
    let exact = ServiceKey {
        addr,
        port,
        protocol,
        _pad: 0,
    };
    // SAFETY: a shared lookup whose value we copy out at once.
    if let Some(entry) = unsafe { SERVICES.get(exact) } {
        return Some(*entry);
    }
    let any = ServiceKey {
        addr,
        port: [0; 2],
        protocol: ANY_PROTOCOL,
        _pad: 0,
    };
    // SAFETY: as above.
    unsafe { SERVICES.get(any) }.copied()
}

/// Flow affinity first (if the service wants it and the node still takes flows), else the
/// ring. `remember` records the choice (not for ICMP errors, which are not flows).
#[inline(always)]
fn pick_node(
    service: &ServiceEntry,
    key: &FlowKey,
    hash: u32,
    remember: bool,
) -> Option<(u32, &'static NodeEntry)> {
    let affinity = service.flags & SERVICE_AFFINITY != 0;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if affinity && let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup; a racing update on another CPU
        // can at worst make us read the node of the same flow written a moment earlier.
        let (node_id, last_seen) = unsafe { ((*entry).node, (*entry).last_seen_ns) };
        let timeout_ns = u64::from(service.affinity_timeout_s) * 1_000_000_000;
        let fresh = timeout_ns == 0 || now.saturating_sub(last_seen) < timeout_ns;
        if fresh && let Some(node) = usable_node(node_id) {
            if remember {
                // SAFETY: as above.
                unsafe { (*entry).last_seen_ns = now };
            }
            return Some((node_id, node));
        }
    }
    let selector = RING_SELECTORS.get(service.id).copied()?;
    let size = selector.size();
    if size == 0 {
        return None;
    }
    let node_id = *RINGS.get(ring_index(service.id, selector.half(), hash % size))?;
    let node = usable_node(node_id)?;
    if affinity && remember {
        // Best effort: a full LRU evicts an old flow; a failure leaves the flow to the ring.
        let _ = FLOWS.insert(
            key,
            FlowEntry {
                node: node_id,
                _pad: 0,
                last_seen_ns: now,
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
