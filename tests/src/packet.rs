//! Test packets, built with etherparse (an independent implementation of the wire formats, so
//! that fixtures never check our programs against our own encoder).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder, VlanId};

/// The client-side MAC addresses used by fixtures.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Builder for an Ethernet frame, optionally with one 802.1Q tag.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    vlan: Option<u16>,
}

impl Frame {
    pub fn ethernet() -> Self {
        Self::default()
    }

    /// Adds one 802.1Q tag with this VLAN id (0..=4095).
    #[must_use]
    pub fn vlan(self, id: u16) -> Self {
        Self { vlan: Some(id) }
    }

    /// An IPv6/UDP datagram carrying `payload`.
    pub fn ipv6_udp(
        self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .ipv6(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
            None => eth
                .ipv6(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }

    /// An IPv4/UDP datagram carrying `payload`.
    pub fn ipv4_udp(
        self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .ipv4(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
            None => eth
                .ipv4(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }

    /// An IPv6/TCP segment (SYN-less, sequence 1) carrying `payload`.
    pub fn ipv6_tcp(
        self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(ports.0, ports.1, 1, 65535)
            .write(&mut out, payload)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// An ICMPv6 echo request.
    pub fn ipv6_echo(self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv6(src.octets(), dst.octets(), 64)
            .icmpv6_echo_request(7, 1)
            .write(&mut out, b"ping")
            .expect("writing to a Vec cannot fail");
        out
    }

    /// An ARP request for `target` from `sender`.
    pub fn arp_request(self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &CLIENT_MAC,
            &sender.octets(),
            &[0; 6],
            &target.octets(),
        )
        .expect("valid ARP fields");
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .arp(arp)
                .write(&mut out),
            None => eth.arp(arp).write(&mut out),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }
}

/// The outer headers `cpn_steer` is expected to push (built here from RFC 8754/8986, not by the
/// data plane's code).
#[derive(Clone, Debug)]
pub struct Encap<'a> {
    pub src: Ipv6Addr,
    /// Travel order: `segments[0]` is the outer destination.
    pub segments: &'a [Ipv6Addr],
    /// H.Encaps.Red.
    pub reduced: bool,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
}

/// `eth` + outer IPv6 (+ SRH) + `inner` (an IPv6 or IPv4 packet without link layer).
pub fn srv6_encap(eth_dst: [u8; 6], eth_src: [u8; 6], encap: &Encap<'_>, inner: &[u8]) -> Vec<u8> {
    let inner_v6 = inner[0] >> 4 == 6;
    let n = encap.segments.len();
    let listed = if encap.reduced { n - 1 } else { n };
    let srh_len = if listed == 0 { 0 } else { 8 + 16 * listed };
    let inner_protocol = if inner_v6 { 41 } else { 4 };
    let mut out = Vec::new();
    out.extend_from_slice(&eth_dst);
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&[0x86, 0xdd]);
    let vtc = (6u32 << 28) | (u32::from(encap.traffic_class) << 20) | (encap.flow_label & 0xf_ffff);
    out.extend_from_slice(&vtc.to_be_bytes());
    out.extend_from_slice(&u16::try_from(srh_len + inner.len()).unwrap().to_be_bytes());
    out.push(if listed == 0 { inner_protocol } else { 43 });
    out.push(encap.hop_limit);
    out.extend_from_slice(&encap.src.octets());
    out.extend_from_slice(&encap.segments[0].octets());
    if listed > 0 {
        let listed_u8 = u8::try_from(listed).unwrap();
        out.extend_from_slice(&[
            inner_protocol,
            2 * listed_u8,
            4,
            u8::try_from(n - 1).unwrap(),
            listed_u8 - 1,
            0,
            0,
            0,
        ]);
        // Segment List[0] is the last segment; the reduced form leaves out the first one.
        for sid in encap.segments.iter().rev().take(listed) {
            out.extend_from_slice(&sid.octets());
        }
    }
    out.extend_from_slice(inner);
    out
}

/// An ICMPv6 error from `src` to `dst` quoting `invoking` (cut to what fits in 1280 bytes,
/// rounded down to 4 bytes as cpn does), with a checksum computed by etherparse.
pub fn icmp6_error(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: etherparse::Icmpv6Type,
    invoking: &[u8],
) -> Vec<u8> {
    let quote = &invoking[..invoking.len().min(1280 - 48) & !3];
    let header = etherparse::Icmpv6Header::with_checksum(kind, src.octets(), dst.octets(), quote)
        .expect("quote fits");
    let mut out = Vec::new();
    out.extend_from_slice(&eth_dst);
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    out.extend_from_slice(&u16::try_from(8 + quote.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(quote);
    out
}

/// An ICMPv4 Fragmentation Needed from `src` to `dst` quoting `invoking` (up to 548 bytes,
/// rounded down to 4), checksums by etherparse.
pub fn icmp4_frag_needed(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    mtu: u16,
    invoking: &[u8],
) -> Vec<u8> {
    use etherparse::{IpNumber, Ipv4Header, icmpv4};
    let quote = &invoking[..invoking.len().min(548) & !3];
    let kind = etherparse::Icmpv4Type::DestinationUnreachable(
        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    );
    let icmp = etherparse::Icmpv4Header::with_checksum(kind, quote);
    let mut ip = Ipv4Header::new(
        u16::try_from(8 + quote.len()).unwrap(),
        64,
        IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .expect("valid header");
    ip.dont_fragment = false;
    ip.dscp = etherparse::IpDscp::try_new(0x30).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    out.extend_from_slice(&eth_dst);
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&icmp.to_bytes());
    out.extend_from_slice(quote);
    out
}

/// Decodes an output frame with etherparse, independently of cpn: Ethernet, IPv6 with its
/// SRH (lengths, Segments Left and Last Entry consistent), the inner packet, IPv4 header and
/// ICMP checksums. Returns a one-line summary.
pub fn verify(frame: &[u8]) -> Result<String, String> {
    use etherparse::{NetSlice, SlicedPacket};
    let packet = SlicedPacket::from_ethernet(frame).map_err(|e| format!("ethernet: {e}"))?;
    match &packet.net {
        Some(NetSlice::Ipv6(ip6)) => verify_ipv6(frame, &packet, ip6),
        Some(NetSlice::Ipv4(ip4)) => verify_ipv4(&packet, ip4),
        other => Ok(format!("{other:?}")),
    }
}

/// Decodes only the link-layer and outer IP headers of a frame (and an outer SRH) with
/// etherparse, checking their lengths against the frame: what a program writes or rewrites
/// when it encapsulates, forwards or decapsulates. What lies beyond is the sender's, carried
/// as it came. Returns the offset of the first byte after those headers.
pub fn verify_headers(frame: &[u8]) -> Result<usize, String> {
    verify_link_and_ip(frame, true)
}

/// [`verify_headers`] without the SRH: the IP header of a packet cpn forwards as it came.
pub fn verify_ip_header(frame: &[u8]) -> Result<usize, String> {
    verify_link_and_ip(frame, false)
}

fn verify_link_and_ip(frame: &[u8], srh: bool) -> Result<usize, String> {
    use etherparse::{Ethernet2Header, Ipv4Header, Ipv6Header};
    let (eth, rest) = Ethernet2Header::from_slice(frame).map_err(|e| format!("ethernet: {e}"))?;
    let l3 = frame.len() - rest.len();
    match eth.ether_type.0 {
        0x86dd => {
            let (ip, after) = Ipv6Header::from_slice(rest).map_err(|e| format!("IPv6: {e}"))?;
            if usize::from(ip.payload_length) != after.len() {
                return Err(format!(
                    "IPv6 payload length {} but {} bytes follow",
                    ip.payload_length,
                    after.len()
                ));
            }
            if !srh || ip.next_header.0 != 43 {
                return Ok(l3 + 40);
            }
            let len = after
                .get(1)
                .map(|l| (usize::from(*l) + 1) * 8)
                .filter(|len| *len <= after.len())
                .ok_or("SRH cut short")?;
            let (kind, segments_left, last_entry) = (after[2], after[3], after[4]);
            // RFC 8754 §2: Last Entry indexes the last segment of those the length holds.
            let segments = (len - 8) / 16;
            if kind == 4 && (usize::from(last_entry) >= segments || segments_left > last_entry + 1)
            {
                return Err(format!(
                    "bad SRH: {segments} segments room, SL {segments_left} LE {last_entry}"
                ));
            }
            Ok(l3 + 40 + len)
        }
        0x0800 => {
            let (ip, _) = Ipv4Header::from_slice(rest).map_err(|e| format!("IPv4: {e}"))?;
            if !ipv4_checksum_holds(&rest[..ip.header_len()]) {
                return Err("IPv4 header checksum".into());
            }
            if usize::from(ip.total_len) != rest.len() {
                return Err(format!(
                    "IPv4 total length {} but {} bytes",
                    ip.total_len,
                    rest.len()
                ));
            }
            Ok(l3 + ip.header_len())
        }
        other => Err(format!("EtherType {other:#06x} is not IP")),
    }
}

fn verify_ipv6(
    frame: &[u8],
    packet: &etherparse::SlicedPacket<'_>,
    ip6: &etherparse::Ipv6Slice<'_>,
) -> Result<String, String> {
    use std::fmt::Write as _;

    use etherparse::{SlicedPacket, TransportSlice};
    let header = ip6.header();
    let mut summary = format!(
        "ipv6 {} > {}",
        header.source_addr(),
        header.destination_addr()
    );
    if usize::from(header.payload_length()) != frame.len() - 54 {
        return Err(format!(
            "payload length {} but {} bytes follow",
            header.payload_length(),
            frame.len() - 54
        ));
    }
    let mut next = header.next_header().0;
    let mut rest = &frame[54..];
    if next == 43 {
        let srh = rest;
        let len = srh
            .get(1)
            .map(|l| (usize::from(*l) + 1) * 8)
            .ok_or("SRH cut short")?;
        let (segments_left, last_entry) = (srh[3], srh[4]);
        let consistent = srh[2] == 4
            && len <= srh.len()
            && usize::from(last_entry) + 1 == usize::from(srh[1]) / 2
            && segments_left <= last_entry + 1;
        if !consistent {
            return Err(format!(
                "bad SRH: type {} len {len} SL {segments_left} LE {last_entry}",
                srh[2]
            ));
        }
        let _ = write!(summary, " srh sl={segments_left} le={last_entry}");
        next = srh[0];
        rest = &srh[len..];
    }
    match next {
        41 | 4 => {
            let inner = SlicedPacket::from_ip(rest).map_err(|e| format!("inner packet: {e}"))?;
            let _ = write!(
                summary,
                " | inner {:?}",
                inner.net.map(|n| n.ip_payload_ref().map(|p| p.ip_number))
            );
        }
        58 => {
            let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
                return Err("ICMPv6 not decodable".into());
            };
            let (src, dst) = (
                header.source_addr().octets(),
                header.destination_addr().octets(),
            );
            let expected = icmp
                .icmp_type()
                .calc_checksum(src, dst, icmp.payload())
                .map_err(|e| e.to_string())?;
            if expected != icmp.checksum() {
                return Err(format!(
                    "ICMPv6 checksum {:#06x}, should be {expected:#06x}",
                    icmp.checksum()
                ));
            }
            let _ = write!(summary, " icmpv6 {:?}", icmp.icmp_type());
        }
        _ => {}
    }
    Ok(summary)
}

/// Whether an IPv4 header's bytes (options included) sum to all ones (RFC 1071). Over the
/// bytes, not a parsed header: etherparse keeps no reserved flag bit, so a checksum it computes
/// again from its fields is wrong for a header with that bit set (the data-plane fuzzer's
/// 10-million run sent one through, forwarded correctly).
fn ipv4_checksum_holds(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn verify_ipv4(
    packet: &etherparse::SlicedPacket<'_>,
    ip4: &etherparse::Ipv4Slice<'_>,
) -> Result<String, String> {
    use std::fmt::Write as _;

    use etherparse::TransportSlice;
    let header = ip4.header();
    if !ipv4_checksum_holds(header.slice()) {
        return Err("IPv4 header checksum".into());
    }
    let mut summary = format!(
        "ipv4 {} > {}",
        header.source_addr(),
        header.destination_addr()
    );
    if let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport {
        if icmp.icmp_type().calc_checksum(icmp.payload()) != icmp.checksum() {
            return Err("ICMPv4 checksum".into());
        }
        let _ = write!(summary, " icmpv4 {:?}", icmp.icmp_type());
    }
    Ok(summary)
}

/// Ethernet (client → router) + `l3`.
pub fn ethernet(l3: &[u8], ether_type: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + l3.len());
    out.extend_from_slice(&ROUTER_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

/// An IPv6 fragment (RFC 8200 §4.5) of a UDP datagram: `offset` in bytes (multiple of 8),
/// `more` fragments flag, and `data` (the UDP header and payload slice this fragment carries).
pub fn ipv6_fragment(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut l3 = vec![0x60, 0, 0, 0];
    l3.extend_from_slice(&u16::try_from(8 + data.len()).unwrap().to_be_bytes());
    l3.extend_from_slice(&[44, 64]);
    l3.extend_from_slice(&src.octets());
    l3.extend_from_slice(&dst.octets());
    l3.extend_from_slice(&[17, 0]);
    l3.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    l3.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    l3.extend_from_slice(data);
    ethernet(&l3, 0x86dd)
}

/// An IPv4 fragment of a UDP datagram (offset in bytes, multiple of 8).
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut header = etherparse::Ipv4Header::new(
        u16::try_from(data.len()).unwrap(),
        64,
        etherparse::IpNumber::UDP,
        src.octets(),
        dst.octets(),
    )
    .expect("valid header");
    header.dont_fragment = false;
    header.more_fragments = more;
    header.fragment_offset = etherparse::IpFragOffset::try_new(offset / 8).unwrap();
    header.identification = 0x4242;
    header.header_checksum = header.calc_header_checksum();
    let mut l3 = header.to_bytes().to_vec();
    l3.extend_from_slice(data);
    ethernet(&l3, 0x0800)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_checksum_is_checked_over_the_bytes_reserved_flag_included() {
        // The fuzzer's header: flags and offset 0xffff (the reserved bit set), a valid checksum.
        let mut header = hex("454600b0eef0ffff4011c4f300000000c6120001");
        assert!(ipv4_checksum_holds(&header));
        header[8] -= 1; // the TTL, without the checksum's update
        assert!(!ipv4_checksum_holds(&header));
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
