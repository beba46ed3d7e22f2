//! Wire layouts of the headers the data plane reads and writes.
//!
//! Fields are byte arrays in network order, so every struct has alignment 1, no padding, and can
//! be read at any offset of a packet. Sizes are asserted against the RFCs.

/// Ethernet II header (IEEE 802.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// The 4 bytes an 802.1Q/802.1ad tag inserts after the source MAC (TCI + inner EtherType).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

/// IPv6 fixed header (RFC 8200 §3).
#[repr(C)]
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
#[repr(C)]
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
    assert!(core::mem::align_of::<Ipv6Hdr>() == 1);
};
