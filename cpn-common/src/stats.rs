//! Counter indexes and counter values.

/// What the parser found in a packet; the index into a protocol counter map.
///
/// `Ipv6`, `Ipv4`, `Arp`, `OtherEthertype` and `Malformed` partition all packets a program saw;
/// `VlanTagged` additionally counts those that carried one 802.1Q/802.1ad tag.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoCounter {
    /// IPv6 packets whose fixed header was complete.
    Ipv6 = 0,
    /// IPv4 packets whose header (including options, by IHL) was complete and well formed.
    Ipv4 = 1,
    /// ARP frames.
    Arp = 2,
    /// Frames of any other EtherType (passed to the kernel untouched).
    OtherEthertype = 3,
    /// Frames cut short before the end of a header we had to read, or whose IP version field
    /// disagrees with the EtherType, or an IPv4 IHL below 5. Passed to the kernel untouched.
    Malformed = 4,
    /// Frames that carried one VLAN tag (also counted by their inner protocol).
    VlanTagged = 5,
}

impl ProtoCounter {
    /// Number of counters, i.e. entries in a protocol counter map.
    pub const COUNT: u32 = 6;

    /// All counters in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Ipv6,
        Self::Ipv4,
        Self::Arp,
        Self::OtherEthertype,
        Self::Malformed,
        Self::VlanTagged,
    ];

    /// The stable name operators see (`cpnctl`, metrics labels).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv6 => "ipv6",
            Self::Ipv4 => "ipv4",
            Self::Arp => "arp",
            Self::OtherEthertype => "other_ethertype",
            Self::Malformed => "malformed",
            Self::VlanTagged => "vlan_tagged",
        }
    }

    /// The counter at `index`, if there is one.
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

/// Why a packet left the fast path: exceptions (passed to the kernel, or answered with ICMP)
/// and drops. One enum for both programs and for userspace, so counters, logs and `cpnctl`
/// use the same words.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Passed: the service has no ring, or every slot the flow tried names a node that is not
    /// usable.
    NoUsableNode = 0,
    /// Passed: the next hop's MAC is not resolved yet; the kernel forwards and resolves it.
    FibNoNeighbour = 1,
    /// Passed: the FIB has no forwarding route (no route, blackhole, unreachable, local).
    FibNoRoute = 2,
    /// Answered: ICMPv6 Packet Too Big sent back to the client.
    PacketTooBig = 3,
    /// Answered: ICMPv4 Fragmentation Needed sent back to the client.
    FragmentationNeeded = 4,
    /// Passed: an IPv4 packet without DF exceeds the MTU once encapsulated.
    TooBigWithoutDf = 5,
    /// Passed: more IPv6 extension headers than the parser walks.
    ExtHeaderChainTooLong = 6,
    /// Counted: a fragment, steered without ports.
    Fragment = 7,
    /// Counted: an ICMP error steered to the node of the flow it quotes.
    IcmpErrorFollowed = 8,
    /// Aborted: growing or shrinking the packet failed.
    NoHeadroom = 9,
    /// Dropped: the SRH is cut short.
    SrhTruncated = 10,
    /// Dropped, ICMPv6 Parameter Problem sent: Last Entry or Segments Left out of range.
    SrhMalformed = 11,
    /// Dropped, ICMPv6 Time Exceeded sent: hop limit 0 or 1 at an End SID.
    HopLimitExceeded = 12,
    /// Dropped, ICMPv6 Parameter Problem sent: Segments Left is not 0 at a decapsulating SID.
    SegmentsLeftNotZero = 13,
    /// Dropped, ICMPv6 Parameter Problem (SR Upper-layer Header Error) sent: the payload after
    /// the SRH is not one the SID's behaviour accepts.
    UpperLayerUnsupported = 14,
    /// Dropped, ICMPv6 Parameter Problem sent (pointing at the Routing Type): a routing header
    /// of a type other than SRH with Segments Left ≠ 0 (RFC 8200 §4.4).
    UnknownRoutingType = 15,
    /// Passed untouched: the inner packet's TTL/hop limit would run out; the kernel's route for
    /// the SID decapsulates it and sends Time Exceeded.
    InnerHopLimitExpired = 16,
    /// Dropped: a SID entry with an unknown behaviour.
    UnknownBehavior = 17,
    /// Passed: a node entry with no segments or too many.
    BadNodeEntry = 18,
    /// Passed: a packet to a service address whose headers are cut short.
    Truncated = 19,
    /// Dropped: the IP header claims more bytes (IPv6 payload length, IPv4 total length) than
    /// the frame carries (the kernel's `Ip6InTruncatedPkts` / `InTruncatedPkts`).
    LengthBeyondFrame = 20,
    /// Dropped: a header (extension header, SRH, inner packet) ends beyond the length the IP
    /// header claims.
    HeaderBeyondLength = 21,
    /// Not sent: an ICMP error suppressed by the rate limit (RFC 4443 §2.4 f); the invoking
    /// packet is dropped.
    IcmpRateLimited = 22,
    /// Passed untouched: the SID's behaviour could not be completed in XDP (no neighbour, no
    /// route, a table lookup that is not a plain forward, a fragment); the kernel's own
    /// `seg6local` route for the SID processes it.
    SidToKernel = 23,
    /// Dropped: the encapsulated packet exceeds the egress MTU, but the inner one is no larger
    /// than the IPv6 minimum MTU (1280), so no Packet Too Big can help: the path's MTU is too
    /// small for the encapsulation (see docs/OPERATIONS.md, "MTU").
    MtuBelowMinimum = 24,
    /// Counted: the flow's ring slot names a node that is down (or gone); it went to a live
    /// node in a re-hashed slot (`maps::ring_slot`) until the agent publishes a ring without
    /// the dead node.
    DownNodeRehashed = 25,
    /// Not sent: an ICMP error about a packet from a multicast or unspecified source, or about
    /// an IPv4 fragment other than the first, which no error may answer (RFC 4443 §2.4 e,
    /// RFC 1812 §4.3.2.7); the invoking packet is dropped.
    IcmpSuppressed = 26,
    /// Dropped: an IPv4 packet decapsulated to be forwarded has a wrong header checksum
    /// (RFC 1812 §5.2.2: a router discards it).
    InnerChecksumBad = 27,
    /// Dropped: a packet to a local SID from a source outside the SR domain (RFC 8754 §5.1,
    /// `[srv6] domain`).
    OutsideSrDomain = 28,
}

impl Reason {
    pub const COUNT: u32 = 29;

    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::NoUsableNode,
        Self::FibNoNeighbour,
        Self::FibNoRoute,
        Self::PacketTooBig,
        Self::FragmentationNeeded,
        Self::TooBigWithoutDf,
        Self::ExtHeaderChainTooLong,
        Self::Fragment,
        Self::IcmpErrorFollowed,
        Self::NoHeadroom,
        Self::SrhTruncated,
        Self::SrhMalformed,
        Self::HopLimitExceeded,
        Self::SegmentsLeftNotZero,
        Self::UpperLayerUnsupported,
        Self::UnknownRoutingType,
        Self::InnerHopLimitExpired,
        Self::UnknownBehavior,
        Self::BadNodeEntry,
        Self::Truncated,
        Self::LengthBeyondFrame,
        Self::HeaderBeyondLength,
        Self::IcmpRateLimited,
        Self::SidToKernel,
        Self::MtuBelowMinimum,
        Self::DownNodeRehashed,
        Self::IcmpSuppressed,
        Self::InnerChecksumBad,
        Self::OutsideSrDomain,
    ];

    /// The stable name operators see.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoUsableNode => "no_usable_node",
            Self::FibNoNeighbour => "fib_no_neighbour",
            Self::FibNoRoute => "fib_no_route",
            Self::PacketTooBig => "packet_too_big",
            Self::FragmentationNeeded => "fragmentation_needed",
            Self::TooBigWithoutDf => "too_big_without_df",
            Self::ExtHeaderChainTooLong => "ext_header_chain_too_long",
            Self::Fragment => "fragment",
            Self::IcmpErrorFollowed => "icmp_error_followed",
            Self::NoHeadroom => "no_headroom",
            Self::SrhTruncated => "srh_truncated",
            Self::SrhMalformed => "srh_malformed",
            Self::HopLimitExceeded => "hop_limit_exceeded",
            Self::SegmentsLeftNotZero => "segments_left_not_zero",
            Self::UpperLayerUnsupported => "upper_layer_unsupported",
            Self::UnknownRoutingType => "unknown_routing_type",
            Self::InnerHopLimitExpired => "inner_hop_limit_expired",
            Self::UnknownBehavior => "unknown_behavior",
            Self::BadNodeEntry => "bad_node_entry",
            Self::Truncated => "truncated",
            Self::LengthBeyondFrame => "length_beyond_frame",
            Self::HeaderBeyondLength => "header_beyond_length",
            Self::IcmpRateLimited => "icmp_rate_limited",
            Self::SidToKernel => "sid_to_kernel",
            Self::MtuBelowMinimum => "mtu_below_minimum",
            Self::DownNodeRehashed => "down_node_rehashed",
            Self::IcmpSuppressed => "icmp_suppressed",
            Self::InnerChecksumBad => "inner_checksum_bad",
            Self::OutsideSrDomain => "outside_sr_domain",
        }
    }
}

/// One per-CPU counter slot: packets and bytes (frame length as the program saw it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

impl Counter {
    /// Sum of the per-CPU values of one slot.
    #[must_use]
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Self>) -> Self {
        per_cpu.into_iter().fold(Self::default(), |acc, c| Self {
            packets: acc.packets.wrapping_add(c.packets),
            bytes: acc.bytes.wrapping_add(c.bytes),
        })
    }
}

// SAFETY: `Counter` is `repr(C)`, `Copy`, has no padding (two u64) and every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::ProtoCounter;

    #[test]
    fn reason_indexes_match_discriminants() {
        for (i, r) in super::Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
    }

    #[test]
    fn indexes_match_discriminants() {
        for (i, c) in ProtoCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(
                ProtoCounter::from_index(u32::try_from(i).unwrap()),
                Some(*c)
            );
        }
        assert_eq!(ProtoCounter::from_index(ProtoCounter::COUNT), None);
    }
}
