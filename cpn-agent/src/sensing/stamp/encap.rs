//! A STAMP test packet inside the same encapsulation `cpn_steer` pushes on the data towards a
//! node (H.Encaps, or H.Encaps.Red: RFC 8986 §5.1, §5.2), so that the test packet travels the
//! steered path and the node's own SID decapsulates it:
//!
//! ```text
//!   outer IPv6 (src: encap source, dst: first segment, next header 43 or 41)
//!   [SRH: segments in reverse order, Segments Left n-1]
//!   inner IPv6 (src: our address, dst: the node's service address) | UDP to 862 | STAMP
//! ```
//!
//! The packet goes out of a raw socket that writes its own IPv6 header (`IPPROTO_RAW`), routed
//! by its outer destination like any packet of this host.

use std::net::Ipv6Addr;

use crate::dataplane::Node;

const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const ROUTING: u8 = 43;
const IPV6_IN_IPV6: u8 = 41;
const UDP: u8 = 17;
/// Segment Routing Header (RFC 8754 §2).
const SRH_TYPE: u8 = 4;
const HOP_LIMIT: u8 = 64;

/// The inner packet's ends: from `source`:`source_port` to `target`:`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    pub source: Ipv6Addr,
    pub source_port: u16,
    pub target: Ipv6Addr,
    pub port: u16,
}

/// The whole packet, outer header first; `flow_label` marks the outer header as the data
/// plane's flow hash would (one value per session keeps it on one ECMP path).
pub fn packet(node: &Node, inner: &Inner, payload: &[u8], flow_label: u32) -> Vec<u8> {
    let udp = udp(inner, payload);
    let mut inner_packet = ipv6_header(inner.source, inner.target, UDP, udp.len(), 0);
    inner_packet.extend_from_slice(&udp);

    // In the SRH, the last segment first; the reduced form leaves the first one out.
    let in_srh: Vec<Ipv6Addr> = node
        .segments
        .iter()
        .rev()
        .take(node.segments.len() - usize::from(node.reduced))
        .copied()
        .collect();
    let first = node.segments[0];
    let mut srh = Vec::new();
    if !in_srh.is_empty() {
        let segments_left = u8::try_from(node.segments.len() - 1).unwrap_or(u8::MAX);
        let last_entry = u8::try_from(in_srh.len() - 1).unwrap_or(u8::MAX);
        let ext_len = u8::try_from(2 * in_srh.len()).unwrap_or(u8::MAX);
        srh.extend_from_slice(&[
            IPV6_IN_IPV6,
            ext_len,
            SRH_TYPE,
            segments_left,
            last_entry,
            0,
            0,
            0,
        ]);
        for sid in &in_srh {
            srh.extend_from_slice(&sid.octets());
        }
    }
    let next = if srh.is_empty() {
        IPV6_IN_IPV6
    } else {
        ROUTING
    };
    let mut out = ipv6_header(
        node.encap_src,
        first,
        next,
        srh.len() + inner_packet.len(),
        flow_label,
    );
    out.extend_from_slice(&srh);
    out.extend_from_slice(&inner_packet);
    out
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize, flow: u32) -> Vec<u8> {
    let vtc_flow = (6u32 << 28) | (flow & 0x000f_ffff);
    let mut h = Vec::with_capacity(IPV6_LEN);
    h.extend_from_slice(&vtc_flow.to_be_bytes());
    h.extend_from_slice(&u16::try_from(payload_len).unwrap_or(u16::MAX).to_be_bytes());
    h.push(next);
    h.push(HOP_LIMIT);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// A UDP datagram with its checksum over the IPv6 pseudo-header (RFC 8200 §8.1: mandatory).
fn udp(inner: &Inner, payload: &[u8]) -> Vec<u8> {
    let len = UDP_LEN + payload.len();
    let len16 = u16::try_from(len).unwrap_or(u16::MAX);
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&inner.source_port.to_be_bytes());
    d.extend_from_slice(&inner.port.to_be_bytes());
    d.extend_from_slice(&len16.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&inner.source.octets());
    add(&inner.target.octets());
    add(&u32::from(len16).to_be_bytes());
    add(&[0, 0, 0, UDP]);
    add(&d);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = match !u16::try_from(sum).unwrap_or(u16::MAX) {
        0 => 0xffff, // 0 means "no checksum", which IPv6 forbids
        c => c,
    };
    d[6..8].copy_from_slice(&checksum.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::NodeState;

    fn node(segments: &[&str], reduced: bool) -> Node {
        Node {
            segments: segments.iter().map(|s| s.parse().unwrap()).collect(),
            encap_src: "2001:db8:1::2".parse().unwrap(),
            reduced,
            state: NodeState::Active,
        }
    }

    const INNER: Inner = Inner {
        source: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
        source_port: 50000,
        target: Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1),
        port: 862,
    };

    /// Two segments, H.Encaps: laid out by hand from RFC 8200 and RFC 8754.
    #[test]
    fn a_two_segment_encapsulation_byte_by_byte() {
        let n = node(&["fc00:9::1", "fc00:1::d6"], false);
        let bytes = packet(&n, &INNER, &[0xab; 4], 0x12345);
        let mut want = vec![
            0x60,
            0x01,
            0x23,
            0x45, // version 6, flow label 0x12345
            0,
            40 + 40 + 12,
            ROUTING,
            64, // payload: SRH 40 + inner 40 + UDP 8 + 4
        ];
        want.extend_from_slice(&"2001:db8:1::2".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&"fc00:9::1".parse::<Ipv6Addr>().unwrap().octets());
        // SRH: inner IPv6, 4 units of 8 bytes, type 4, Segments Left 1, Last Entry 1.
        want.extend_from_slice(&[41, 4, 4, 1, 1, 0, 0, 0]);
        want.extend_from_slice(&"fc00:1::d6".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&"fc00:9::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&[0x60, 0, 0, 0, 0, 12, UDP, 64]);
        want.extend_from_slice(&INNER.source.octets());
        want.extend_from_slice(&INNER.target.octets());
        assert_eq!(&bytes[..want.len()], &want[..]);
        let udp = &bytes[want.len()..];
        assert_eq!(
            &udp[..6],
            &[0xc3, 0x50, 0x03, 0x5e, 0, 12],
            "ports 50000 → 862, length"
        );
        assert_eq!(&udp[8..], &[0xab; 4]);
    }

    /// The UDP checksum sums to 0xffff over pseudo-header and datagram (RFC 768, RFC 8200).
    #[test]
    fn the_udp_checksum_verifies() {
        let n = node(&["fc00:1::d6"], false);
        let bytes = packet(&n, &INNER, &[1, 2, 3], 7);
        let udp = &bytes[40 + 24 + 40..];
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for p in b.chunks(2) {
                sum += (u32::from(p[0]) << 8) | p.get(1).map_or(0, |x| u32::from(*x));
            }
        };
        add(&INNER.source.octets());
        add(&INNER.target.octets());
        add(&[0, 0, 0, 11, 0, 0, 0, UDP]);
        add(udp);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    /// One segment, reduced: no SRH at all, inner IPv6 right after the outer header.
    #[test]
    fn a_reduced_single_segment_has_no_srh() {
        let n = node(&["fc00:1::d6"], true);
        let bytes = packet(&n, &INNER, &[0; 44], 0);
        assert_eq!(bytes[6], IPV6_IN_IPV6);
        assert_eq!(
            &bytes[24..40],
            &"fc00:1::d6".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(bytes[40] >> 4, 6, "the inner header follows");
        assert_eq!(bytes.len(), 40 + 40 + 8 + 44);
        // Reduced with two segments: the SRH holds only the last, Segments Left still 1.
        let n = node(&["fc00:9::1", "fc00:1::d6"], true);
        let bytes = packet(&n, &INNER, &[0; 44], 0);
        assert_eq!(&bytes[40..48], &[41, 2, 4, 1, 0, 0, 0, 0]);
        assert_eq!(
            &bytes[48..64],
            &"fc00:1::d6".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
