//! Crafting differential-test packets byte by byte, malformed ones included.
//!
//! Well-formed upper layers (UDP, TCP, ICMPv6 echo, whole inner packets) come from etherparse,
//! an implementation independent of cpn's; the headers the cases bend (outer IPv6, SRH, other
//! routing headers, Hop-by-Hop and Destination Options, fragment headers) are written here
//! field by field after RFC 8200 and RFC 8754, so that any field can hold any value.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpDscp, IpEcn, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel,
    Ipv6Header, PacketBuilder,
};

/// IP protocol numbers (IANA): the ones the data plane itself uses.
pub use cpn_common::headers::proto;

/// An IPv6 extension header; its first byte (Next Header) is filled in by [`Ipv6::bytes`].
#[derive(Clone, Debug)]
pub struct Ext {
    pub protocol: u8,
    pub bytes: Vec<u8>,
}

/// An IPv6 packet: fixed header, extension headers in order, and the upper layer.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub exts: Vec<Ext>,
    /// Protocol number of `upper` (41 for an inner IPv6 packet, 4 for IPv4, 59 for nothing).
    pub upper_protocol: u8,
    pub upper: Vec<u8>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
            traffic_class: 0,
            exts: Vec::new(),
            upper_protocol: proto::NO_NEXT_HEADER,
            upper: Vec::new(),
        }
    }

    #[must_use]
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.exts.push(ext);
        self
    }

    #[must_use]
    pub fn upper(mut self, protocol: u8, bytes: Vec<u8>) -> Self {
        self.upper_protocol = protocol;
        self.upper = bytes;
        self
    }

    /// Carries `inner` (an IPv6 or IPv4 packet) as its upper layer.
    #[must_use]
    pub fn inner(self, inner: Vec<u8>) -> Self {
        let protocol = if inner.first().is_some_and(|b| b >> 4 == 4) {
            proto::IPIP
        } else {
            proto::IPV6
        };
        self.upper(protocol, inner)
    }

    /// The packet on the wire (no link layer), Payload Length counting everything after the
    /// fixed header.
    pub fn bytes(&self) -> Vec<u8> {
        let payload_len: usize =
            self.exts.iter().map(|e| e.bytes.len()).sum::<usize>() + self.upper.len();
        let first = self
            .exts
            .first()
            .map_or(self.upper_protocol, |e| e.protocol);
        let mut out = Vec::with_capacity(40 + payload_len);
        let vtc = (6u32 << 28) | (u32::from(self.traffic_class) << 20);
        out.extend_from_slice(&vtc.to_be_bytes());
        out.extend_from_slice(&u16::try_from(payload_len).unwrap_or(u16::MAX).to_be_bytes());
        out.push(first);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        for (i, ext) in self.exts.iter().enumerate() {
            let next = self
                .exts
                .get(i + 1)
                .map_or(self.upper_protocol, |e| e.protocol);
            let mut bytes = ext.bytes.clone();
            if let Some(b) = bytes.first_mut() {
                *b = next;
            }
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&self.upper);
        out
    }
}

/// Overwrites the IPv6 Payload Length of `packet` (a length lie).
pub fn set_payload_len(mut packet: Vec<u8>, len: u16) -> Vec<u8> {
    packet[4..6].copy_from_slice(&len.to_be_bytes());
    packet
}

/// Payload Length of an IPv6 packet.
pub fn payload_len(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[4], packet[5]])
}

/// A Segment Routing Header (RFC 8754 §2) whose every field can be bent.
#[derive(Clone, Debug)]
pub struct Srh {
    /// Segment List\[0\] first: the *last* segment of the path comes first on the wire.
    pub list: Vec<Ipv6Addr>,
    pub segments_left: u8,
    /// Default: `list.len() - 1`.
    pub last_entry: Option<u8>,
    /// Default: what the list and the TLVs fill.
    pub hdr_ext_len: Option<u8>,
    pub flags: u8,
    pub tag: u16,
    pub tlvs: Vec<u8>,
    /// Bytes of the header actually written (default all): a truncated SRH.
    pub cut_to: Option<usize>,
}

impl Srh {
    /// The SRH for a path in travel order (`path[0]` is visited first), with `segments_left`.
    pub fn path(path: &[Ipv6Addr], segments_left: u8) -> Self {
        Self {
            list: path.iter().rev().copied().collect(),
            segments_left,
            last_entry: None,
            hdr_ext_len: None,
            flags: 0,
            tag: 0,
            tlvs: Vec::new(),
            cut_to: None,
        }
    }

    /// The reduced SRH of H.Encaps.Red (RFC 8986 §5.2): the first segment of `path` is left
    /// out (it is only in the destination address), so Segments Left = Last Entry + 1.
    pub fn reduced(path: &[Ipv6Addr]) -> Self {
        let mut srh = Self::path(&path[1..], 0);
        srh.segments_left = u8::try_from(srh.list.len()).unwrap_or(u8::MAX);
        srh
    }

    #[must_use]
    pub fn last_entry(mut self, last_entry: u8) -> Self {
        self.last_entry = Some(last_entry);
        self
    }

    #[must_use]
    pub fn hdr_ext_len(mut self, hdr_ext_len: u8) -> Self {
        self.hdr_ext_len = Some(hdr_ext_len);
        self
    }

    #[must_use]
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    /// Appends TLV bytes after the segment list (RFC 8754 §2.1).
    #[must_use]
    pub fn tlvs(mut self, tlvs: &[u8]) -> Self {
        self.tlvs.extend_from_slice(tlvs);
        self
    }

    #[must_use]
    pub fn cut_to(mut self, bytes: usize) -> Self {
        self.cut_to = Some(bytes);
        self
    }

    pub fn ext(&self) -> Ext {
        let body = 16 * self.list.len() + self.tlvs.len();
        let hdr_ext_len = self
            .hdr_ext_len
            .unwrap_or_else(|| u8::try_from(body / 8).unwrap_or(u8::MAX));
        let last_entry = self.last_entry.unwrap_or_else(|| {
            u8::try_from(self.list.len())
                .unwrap_or(u8::MAX)
                .wrapping_sub(1)
        });
        let mut bytes = vec![
            0,
            hdr_ext_len,
            4,
            self.segments_left,
            last_entry,
            self.flags,
        ];
        bytes.extend_from_slice(&self.tag.to_be_bytes());
        for segment in &self.list {
            bytes.extend_from_slice(&segment.octets());
        }
        bytes.extend_from_slice(&self.tlvs);
        if let Some(cut) = self.cut_to {
            bytes.truncate(cut);
        }
        Ext {
            protocol: proto::ROUTING,
            bytes,
        }
    }
}

/// SRH TLVs (RFC 8754 §2.1.1, §2.1.2).
pub mod tlv {
    /// Pad1: one zero byte, no length.
    pub const PAD1: u8 = 0;
    pub const PADN: u8 = 4;
    pub const HMAC: u8 = 5;

    /// A `PadN` TLV of `total` bytes (at least 2).
    pub fn padn(total: usize) -> Vec<u8> {
        let mut out = vec![PADN, u8::try_from(total - 2).unwrap_or(u8::MAX)];
        out.resize(total, 0);
        out
    }

    /// An HMAC TLV (40 bytes: D bit clear, key id, 32 bytes of HMAC).
    pub fn hmac(key_id: u32) -> Vec<u8> {
        let mut out = vec![HMAC, 38, 0, 0];
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend(std::iter::repeat_n(0xa5, 32));
        out
    }
}

/// A type 0 (RFC 5095, deprecated) or type 3 (RPL, RFC 6554, uncompressed) routing header
/// listing `addresses`.
pub fn routing_header(routing_type: u8, segments_left: u8, addresses: &[Ipv6Addr]) -> Ext {
    let mut bytes = vec![
        0,
        u8::try_from(2 * addresses.len()).unwrap_or(u8::MAX),
        routing_type,
        segments_left,
        0,
        0,
        0,
        0,
    ];
    for address in addresses {
        bytes.extend_from_slice(&address.octets());
    }
    Ext {
        protocol: proto::ROUTING,
        bytes,
    }
}

/// A Hop-by-Hop (`protocol` 0) or Destination Options (60) header of 8 bytes holding one
/// `PadN` option.
pub fn options(protocol: u8) -> Ext {
    Ext {
        protocol,
        bytes: vec![0, 0, 1, 4, 0, 0, 0, 0],
    }
}

/// A fragment header (RFC 8200 §4.5): `offset` in bytes (a multiple of 8), M flag.
pub fn fragment(offset: u16, more: bool, id: u32) -> Ext {
    let mut bytes = vec![0, 0];
    bytes.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    bytes.extend_from_slice(&id.to_be_bytes());
    Ext {
        protocol: proto::FRAGMENT,
        bytes,
    }
}

fn write(
    builder: impl FnOnce(&mut Vec<u8>) -> Result<(), etherparse::err::packet::BuildWriteError>,
) -> Vec<u8> {
    let mut out = Vec::new();
    builder(&mut out).expect("writing to a Vec cannot fail");
    out
}

fn v6_header(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, traffic_class: u8) -> IpHeaders {
    IpHeaders::Ipv6(
        Ipv6Header {
            traffic_class,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: 0,
            next_header: IpNumber::UDP,
            hop_limit,
            source: src.octets(),
            destination: dst.octets(),
        },
        Ipv6Extensions::default(),
    )
}

fn v4_header(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, tos: u8) -> IpHeaders {
    let mut header =
        Ipv4Header::new(0, ttl, IpNumber::UDP, src.octets(), dst.octets()).expect("valid header");
    header.dscp = IpDscp::try_new(tos >> 2).expect("six bits");
    header.ecn = IpEcn::try_new(tos & 3).expect("two bits");
    IpHeaders::Ipv4(header, Ipv4Extensions::default())
}

/// A whole IPv6/UDP packet (checksums by etherparse).
pub fn udp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    udp6_tc(src, dst, hop_limit, 0, ports, payload)
}

/// [`udp6`] with a traffic class.
pub fn udp6_tc(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    traffic_class: u8,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ip(v6_header(src, dst, hop_limit, traffic_class))
            .udp(ports.0, ports.1)
            .write(out, payload)
    })
}

/// A whole IPv4/UDP packet (checksums by etherparse), `tos` = DSCP << 2 | ECN.
pub fn udp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    tos: u8,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ip(v4_header(src, dst, ttl, tos))
            .udp(ports.0, ports.1)
            .write(out, payload)
    })
}

/// A whole IPv6 TCP SYN.
pub fn syn6(src: Ipv6Addr, dst: Ipv6Addr, traffic_class: u8, ports: (u16, u16)) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ip(v6_header(src, dst, 64, traffic_class))
            .tcp(ports.0, ports.1, 0x1000, 64240)
            .syn()
            .write(out, &[])
    })
}

/// A whole IPv4 TCP SYN.
pub fn syn4(src: Ipv4Addr, dst: Ipv4Addr, tos: u8, ports: (u16, u16)) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ip(v4_header(src, dst, 64, tos))
            .tcp(ports.0, ports.1, 0x1000, 64240)
            .syn()
            .write(out, &[])
    })
}

/// The upper layer alone (bytes after the IPv6 header) of an IPv6 packet built by etherparse:
/// its checksum covers `src` and `dst`, the final destination (RFC 8200 §8.1).
fn upper_of(packet: &[u8]) -> Vec<u8> {
    packet[40..].to_vec()
}

/// A UDP header and payload for a packet whose final destination is `dst`.
pub fn udp_segment(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    upper_of(&udp6(src, dst, 64, (40000, 7777), payload))
}

/// An ICMPv6 Echo Request (header and data) for a packet whose final destination is `dst`.
pub fn echo_request(src: Ipv6Addr, dst: Ipv6Addr, id: u16) -> Vec<u8> {
    upper_of(&write(|out| {
        PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
            .icmpv6_echo_request(id, 1)
            .write(out, b"differential")
    }))
}

/// Ethernet II around an IPv6 (`0x86dd`) or IPv4 (`0x0800`) packet.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], l3: &[u8]) -> Vec<u8> {
    let ether_type: u16 = if l3.first().is_some_and(|b| b >> 4 == 4) {
        0x0800
    } else {
        0x86dd
    };
    let mut out = Vec::with_capacity(14 + l3.len());
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

/// The Internet checksum (RFC 1071) of `data`, folded.
pub fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &byte in *chunk {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}
