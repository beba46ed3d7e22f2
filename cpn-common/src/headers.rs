//! Wire layouts of the headers the data plane reads and writes.
//!
//! Fields are byte arrays in network order, without padding. Each struct declares the largest
//! power-of-two alignment its size allows (at most 8): the data plane reads and writes headers
//! with that access width (see `cpn-ebpf`'s `parse::read`), in one instruction per word where
//! byte arrays alone would cost one per byte. Sizes are asserted against the RFCs.

/// Ethernet II header (IEEE 802.3).
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// The 4 bytes an 802.1Q/802.1ad tag inserts after the source MAC (TCI + inner EtherType).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

/// IPv6 fixed header (RFC 8200 §3).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// IPv4 header without options (RFC 791 §3.1).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Hdr {
    /// Version (4 bits) and IHL (4 bits, in 32-bit words).
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv6Hdr {
    pub const fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
}

impl Ipv4Hdr {
    pub const fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in bytes, options included.
    pub const fn header_len(&self) -> usize {
        (self.version_ihl & 0x0f) as usize * 4
    }
}

/// Segment Routing Header, fixed part (RFC 8754 §2); the segment list (16 bytes each) follows.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrhHdr {
    pub next_header: u8,
    /// Length in 8-octet units, not counting the first 8 octets: 2 × segments (+ TLVs).
    pub hdr_ext_len: u8,
    /// 4 for the SRH.
    pub routing_type: u8,
    pub segments_left: u8,
    pub last_entry: u8,
    pub flags: u8,
    pub tag: [u8; 2],
}

impl SrhHdr {
    /// Offset of the Segments Left field from the start of the SRH (for ICMP pointers).
    pub const SEGMENTS_LEFT_OFFSET: u32 = 3;
    pub const ROUTING_TYPE: u8 = 4;
}

/// The first two bytes of every IPv6 extension header we walk (hop-by-hop, routing,
/// destination options).
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtHdr {
    pub next_header: u8,
    pub hdr_ext_len: u8,
}

/// IPv6 fragment header (RFC 8200 §4.5).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    /// Fragment offset (13 bits, in 8-octet units), 2 reserved bits, M flag.
    pub offset_flags: [u8; 2],
    pub identification: [u8; 4],
}

impl FragHdr {
    /// True for the second and later fragments (offset ≠ 0): they carry no L4 header.
    pub const fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes(self.offset_flags) & 0xfff8 != 0
    }

    /// True for an atomic fragment (offset 0, M = 0, RFC 6946): the whole packet, to be
    /// processed as if unfragmented.
    pub const fn is_atomic(&self) -> bool {
        u16::from_be_bytes(self.offset_flags) & 0xfff9 == 0
    }
}

/// The first 8 bytes of an ICMP or ICMPv6 message.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub checksum: [u8; 2],
    /// MTU, pointer, or unused, depending on the type.
    pub rest: [u8; 4],
}

/// Source and destination ports: the first 4 bytes of TCP, UDP and SCTP.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

/// IP protocol / IPv6 next-header numbers.
pub mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// ICMP and ICMPv6 types and codes the data plane sends or follows.
pub mod icmp {
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_FRAG_NEEDED_CODE: u8 = 4;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    /// Parameter Problem code 0: erroneous header field.
    pub const V6_ERRONEOUS_HEADER: u8 = 0;
    /// Parameter Problem code 4: SR Upper-layer Header Error (RFC 8754 §4.3.1.1).
    pub const V6_SR_UPPER_LAYER: u8 = 4;
    /// Minimum IPv6 MTU: an ICMPv6 error quotes as much as fits in it (RFC 4443 §2.4 c).
    pub const V6_MIN_MTU: usize = 1280;
}

/// EtherType values, in host order.
pub mod ether_type {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN_8021Q: u16 = 0x8100;
    pub const VLAN_8021AD: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

const _: () = {
    assert!(core::mem::size_of::<EthHdr>() == 14);
    assert!(core::mem::size_of::<VlanHdr>() == 4);
    assert!(core::mem::size_of::<Ipv6Hdr>() == 40);
    assert!(core::mem::size_of::<Ipv4Hdr>() == 20);
    assert!(core::mem::align_of::<Ipv6Hdr>() == 8);
    assert!(core::mem::size_of::<SrhHdr>() == 8);
    assert!(core::mem::size_of::<FragHdr>() == 8);
    assert!(core::mem::size_of::<IcmpHdr>() == 8);
};
