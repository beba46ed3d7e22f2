//! Bounds-checked packet access and header parsing.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use cpn_common::{
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, VlanHdr, ether_type},
    stats::ProtoCounter,
};

/// A pointer to a `T` at byte `offset` of the packet, if the whole `T` lies inside it.
///
/// Every packet read goes through here, so the verifier sees one bounds-check pattern.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// What the L2/L3 parser found.
pub struct Frame {
    pub proto: ProtoCounter,
    pub vlan_tagged: bool,
}

/// Parses Ethernet, at most one VLAN tag, and the IPv6 or IPv4 header.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Frame {
    let mut frame = Frame {
        proto: ProtoCounter::Malformed,
        vlan_tagged: false,
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return frame;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let mut ethertype = u16::from_be_bytes(unsafe { (*eth).ether_type });
    let mut l3 = size_of::<EthHdr>();
    if ethertype == ether_type::VLAN_8021Q || ethertype == ether_type::VLAN_8021AD {
        frame.vlan_tagged = true;
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return frame;
        };
        // SAFETY: bounds checked by `ptr_at`.
        ethertype = u16::from_be_bytes(unsafe { (*vlan).ether_type });
        l3 += size_of::<VlanHdr>();
    }
    frame.proto = match ethertype {
        ether_type::IPV6 => classify_ipv6(ctx, l3),
        ether_type::IPV4 => classify_ipv4(ctx, l3),
        ether_type::ARP => ProtoCounter::Arp,
        _ => ProtoCounter::OtherEthertype,
    };
    frame
}

#[inline(always)]
fn classify_ipv6(ctx: &XdpContext, l3: usize) -> ProtoCounter {
    match ptr_at::<Ipv6Hdr>(ctx, l3) {
        // SAFETY: bounds checked by `ptr_at`.
        Some(ip6) if unsafe { (*ip6).version() } == 6 => ProtoCounter::Ipv6,
        _ => ProtoCounter::Malformed,
    }
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext, l3: usize) -> ProtoCounter {
    let Some(ip4) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return ProtoCounter::Malformed;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let (version, header_len) = unsafe { ((*ip4).version(), (*ip4).header_len()) };
    if version != 4 || header_len < size_of::<Ipv4Hdr>() {
        return ProtoCounter::Malformed;
    }
    // Options must be present in full too; check the last byte of the header.
    if ptr_at::<u8>(ctx, l3 + header_len - 1).is_none() {
        return ProtoCounter::Malformed;
    }
    ProtoCounter::Ipv4
}
