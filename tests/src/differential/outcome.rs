//! What became of a packet, normalised so that two implementations can be compared.

use std::{
    cmp::Ordering,
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::wire::{internet_checksum, proto};

/// A value shown in reports but left out of comparisons: a field the RFCs leave to the
/// implementation.
#[derive(Clone, Copy, Default)]
pub struct Ignored<T>(pub T);

impl<T> PartialEq for Ignored<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Ignored<T> {}
impl<T> PartialOrd for Ignored<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Ignored<T> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}
impl<T: fmt::Debug> fmt::Debug for Ignored<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "~{:?}", self.0)
    }
}

/// FNV-1a of the bytes a forwarded packet carries after its IP header, so that two
/// forwarded packets compare byte for byte. `Digest::ANY` (in a case's expectation) matches
/// any value.
#[derive(Clone, Copy, PartialOrd, Ord)]
pub struct Digest(pub Option<u32>);

impl Digest {
    pub const ANY: Self = Self(None);

    pub fn of(bytes: &[u8]) -> Self {
        let hash = bytes.iter().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
        Self(Some(hash))
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}
impl Eq for Digest {}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(hash) => write!(f, "#{hash:08x}"),
            None => f.write_str("#any"),
        }
    }
}

/// An encapsulated packet inside a forwarded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Inner {
    pub dst: IpAddr,
    pub hop_limit: u8,
}

/// One observation caused by a case's packets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A packet left the DUT towards `at` (a node). IPv4: `hop_limit` is the TTL,
    /// `payload_len` the total length minus the header, `next_header` the protocol.
    Forwarded {
        at: String,
        dst: IpAddr,
        /// Of the first SRH in the chain, if any.
        segments_left: Option<u8>,
        hop_limit: u8,
        payload_len: u16,
        next_header: u8,
        /// Bytes on the wire beyond what the IP length fields cover.
        trailing: usize,
        /// The encapsulated packet, if the chain ends in IPv6 (41) or IPv4 (4).
        inner: Option<Inner>,
        /// IPv4 header checksum right (always true for IPv6).
        checksum_ok: bool,
        /// What follows the IP header, up to its length.
        bytes: Digest,
    },
    /// The UDP service on the DUT received `payload` ([`OWN_TAG`] when it is the case's own
    /// tag, intact).
    Delivered { payload: String },
    /// An ICMP message came back to the sender. `pointer_or_mtu` is the 32-bit field after
    /// the checksum (Parameter Problem pointer, Packet Too Big MTU, 0 otherwise).
    /// The source address is not compared: RFC 4443 §2.2 lets the node pick any of its
    /// addresses (Linux picks by source address selection, cpn answers from the SID).
    Icmp {
        v6: bool,
        kind: u8,
        code: u8,
        pointer_or_mtu: u32,
        checksum_ok: bool,
        from: Ignored<Option<IpAddr>>,
    },
    /// Nothing was seen anywhere within the quiet period.
    Dropped,
    /// The reference cannot be built on this kernel (e.g. End.DT4 without `CONFIG_NET_VRF`).
    NotAvailable,
}

/// ICMPv6 types.
pub mod icmp6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REPLY: u8 = 129;
}

/// The payload of [`Outcome::Delivered`] when the service got the case's own tag.
pub const OWN_TAG: &str = "<own tag>";

impl Outcome {
    /// The service received the case's own payload.
    pub fn delivered() -> Self {
        Self::Delivered {
            payload: OWN_TAG.to_owned(),
        }
    }

    /// An ICMPv6 error as expected by a case (the source is not compared).
    pub fn icmp6(kind: u8, code: u8, pointer_or_mtu: u32) -> Self {
        Self::Icmp {
            v6: true,
            kind,
            code,
            pointer_or_mtu,
            checksum_ok: true,
            from: Ignored(None),
        }
    }

    /// ICMPv6 Parameter Problem with `code` pointing at byte `pointer` of the invoking
    /// packet (RFC 4443 §3.4; code 4 is RFC 8754's SR Upper-layer Header Error).
    pub fn parameter_problem(code: u8, pointer: u32) -> Self {
        Self::icmp6(icmp6::PARAMETER_PROBLEM, code, pointer)
    }

    pub fn time_exceeded() -> Self {
        Self::icmp6(icmp6::TIME_EXCEEDED, 0, 0)
    }

    /// An ICMPv4 message.
    pub fn icmp4(kind: u8, code: u8) -> Self {
        Self::Icmp {
            v6: false,
            kind,
            code,
            pointer_or_mtu: 0,
            checksum_ok: true,
            from: Ignored(None),
        }
    }

    pub fn forwarded(at: &str, dst: IpAddr) -> ForwardedBuilder {
        ForwardedBuilder(Self::Forwarded {
            at: at.to_owned(),
            dst,
            segments_left: None,
            hop_limit: 63,
            payload_len: 0,
            next_header: 0,
            trailing: 0,
            inner: None,
            checksum_ok: true,
            bytes: Digest::ANY,
        })
    }

    /// A one-line rendering for reports.
    pub fn short(&self) -> String {
        match self {
            Self::Forwarded {
                at,
                dst,
                segments_left,
                hop_limit,
                payload_len,
                next_header,
                trailing,
                inner,
                checksum_ok,
                bytes,
            } => {
                let mut s = format!(
                    "fwd@{at} dst={dst} hl={hop_limit} plen={payload_len} nh={next_header}"
                );
                if let Some(sl) = segments_left {
                    let _ = write!(s, " sl={sl}");
                }
                if let Some(inner) = inner {
                    let _ = write!(s, " inner={}/hl{}", inner.dst, inner.hop_limit);
                }
                if *trailing != 0 {
                    let _ = write!(s, " trailing={trailing}");
                }
                if !checksum_ok {
                    s += " BAD-CSUM";
                }
                let _ = write!(s, " {bytes:?}");
                s
            }
            Self::Delivered { payload } if payload == OWN_TAG => "delivered".into(),
            Self::Delivered { payload } => format!("delivered {payload:?}"),
            Self::Icmp {
                v6,
                kind,
                code,
                pointer_or_mtu,
                checksum_ok,
                from,
            } => {
                let name = match (v6, *kind) {
                    (true, icmp6::DEST_UNREACHABLE) | (false, 3) => "unreach",
                    (true, icmp6::PACKET_TOO_BIG) => "ptb",
                    (true, icmp6::TIME_EXCEEDED) | (false, 11) => "time-exceeded",
                    (true, icmp6::PARAMETER_PROBLEM) | (false, 12) => "param-problem",
                    (true, icmp6::ECHO_REPLY) | (false, 0) => "echo-reply",
                    _ => "icmp",
                };
                let family = if *v6 { "icmp6" } else { "icmp4" };
                let mut s = format!("{family} {name}({kind}/{code})");
                if *pointer_or_mtu != 0 {
                    let _ = write!(s, " ptr={pointer_or_mtu}");
                }
                if let Some(from) = from.0 {
                    let _ = write!(s, " from {from}");
                }
                if !checksum_ok {
                    s += " BAD-CSUM";
                }
                s
            }
            Self::Dropped => "dropped".into(),
            Self::NotAvailable => "n/a".into(),
        }
    }
}

/// Renders a case's outcomes on one line.
pub fn render(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(Outcome::short)
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Fills in a [`Outcome::Forwarded`] for a case's expectation.
#[derive(Debug)]
pub struct ForwardedBuilder(Outcome);

impl ForwardedBuilder {
    #[must_use]
    pub fn segments_left(mut self, value: u8) -> Self {
        if let Outcome::Forwarded { segments_left, .. } = &mut self.0 {
            *segments_left = Some(value);
        }
        self
    }

    #[must_use]
    pub fn hop_limit(mut self, value: u8) -> Self {
        if let Outcome::Forwarded { hop_limit, .. } = &mut self.0 {
            *hop_limit = value;
        }
        self
    }

    #[must_use]
    pub fn payload(mut self, len: u16, protocol: u8) -> Self {
        if let Outcome::Forwarded {
            payload_len,
            next_header,
            ..
        } = &mut self.0
        {
            *payload_len = len;
            *next_header = protocol;
        }
        self
    }

    #[must_use]
    pub fn inner(mut self, dst: IpAddr, hop_limit: u8) -> Self {
        if let Outcome::Forwarded { inner, .. } = &mut self.0 {
            *inner = Some(Inner { dst, hop_limit });
        }
        self
    }

    pub fn done(self) -> Outcome {
        self.0
    }
}

/// A captured frame classified: the address that ties it to a case (the case's client
/// address, as source of forwarded packets or destination of ICMP messages) and what it is.
pub fn classify(node: &str, sender: &str, frame: &[u8]) -> Option<(IpAddr, Outcome)> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l3 = frame.get(14..)?;
    match ether_type {
        0x86dd => classify_v6(node, sender, l3),
        0x0800 => classify_v4(node, sender, l3),
        _ => None,
    }
}

fn addr6(bytes: &[u8]) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.get(..16)?).ok()?))
}

fn addr4(bytes: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(..4)?).ok()?))
}

/// Walks an IPv6 extension-header chain: (upper protocol, its offset, first SRH's SL).
fn walk6(l3: &[u8]) -> (u8, usize, Option<u8>) {
    let mut next = l3.get(6).copied().unwrap_or(proto::NO_NEXT_HEADER);
    let mut at = 40;
    let mut segments_left = None;
    for _ in 0..8 {
        match next {
            proto::HOP_BY_HOP | proto::DEST_OPTS | proto::ROUTING => {
                let (Some(&nh), Some(&len)) = (l3.get(at), l3.get(at + 1)) else {
                    break;
                };
                if next == proto::ROUTING && l3.get(at + 2) == Some(&4) && segments_left.is_none() {
                    segments_left = l3.get(at + 3).copied();
                }
                next = nh;
                at += (usize::from(len) + 1) * 8;
            }
            proto::FRAGMENT => {
                let (Some(&nh), Some(offset)) = (l3.get(at), l3.get(at + 2..at + 4)) else {
                    break;
                };
                next = nh;
                at += 8;
                if u16::from_be_bytes([offset[0], offset[1]]) & !7 != 0 {
                    break;
                }
            }
            _ => break,
        }
    }
    (next, at, segments_left)
}

fn inner_of(protocol: u8, bytes: &[u8]) -> Option<Inner> {
    match protocol {
        proto::IPV6 if bytes.len() >= 40 => Some(Inner {
            dst: IpAddr::V6(addr6(&bytes[24..])?),
            hop_limit: bytes[7],
        }),
        proto::IPIP if bytes.len() >= 20 => Some(Inner {
            dst: IpAddr::V4(addr4(&bytes[16..])?),
            hop_limit: bytes[8],
        }),
        _ => None,
    }
}

fn classify_v6(node: &str, sender: &str, l3: &[u8]) -> Option<(IpAddr, Outcome)> {
    if l3.len() < 40 {
        return None;
    }
    let src = addr6(&l3[8..])?;
    let dst = addr6(&l3[24..])?;
    let payload_len = u16::from_be_bytes([l3[4], l3[5]]);
    let (upper, at, segments_left) = walk6(l3);
    let end = (40 + usize::from(payload_len)).min(l3.len());
    if node == sender && upper == proto::ICMPV6 {
        let icmp = l3.get(at..end)?;
        let kind = *icmp.first()?;
        if kind < 128 || kind == super::outcome::icmp6::ECHO_REPLY {
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&l3[8..40]);
            pseudo.extend_from_slice(&u32::try_from(icmp.len()).ok()?.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto::ICMPV6]);
            let checksum_ok = internet_checksum(&[&pseudo, icmp]) == 0;
            let pointer = icmp
                .get(4..8)
                .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
            return Some((
                IpAddr::V6(dst),
                Outcome::Icmp {
                    v6: true,
                    kind,
                    code: *icmp.get(1)?,
                    pointer_or_mtu: pointer,
                    checksum_ok,
                    from: Ignored(Some(IpAddr::V6(src))),
                },
            ));
        }
    }
    if node == sender {
        // Neighbour discovery and the like.
        return None;
    }
    let inner = l3.get(at..).and_then(|b| inner_of(upper, b));
    Some((
        IpAddr::V6(src),
        Outcome::Forwarded {
            at: node.to_owned(),
            dst: IpAddr::V6(dst),
            segments_left,
            hop_limit: l3[7],
            payload_len,
            next_header: l3[6],
            trailing: l3.len().saturating_sub(40 + usize::from(payload_len)),
            inner,
            checksum_ok: true,
            bytes: Digest::of(&l3[40..end]),
        },
    ))
}

fn classify_v4(node: &str, sender: &str, l3: &[u8]) -> Option<(IpAddr, Outcome)> {
    if l3.len() < 20 || l3[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(l3[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
    let src = addr4(&l3[12..])?;
    let dst = addr4(&l3[16..])?;
    let checksum_ok = internet_checksum(&[l3.get(..ihl)?]) == 0;
    let protocol = l3[9];
    if node == sender {
        if protocol != proto::ICMP {
            return None;
        }
        let icmp = l3.get(ihl..total.min(l3.len()))?;
        let pointer = icmp
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
        return Some((
            IpAddr::V4(dst),
            Outcome::Icmp {
                v6: false,
                kind: *icmp.first()?,
                code: *icmp.get(1)?,
                pointer_or_mtu: pointer,
                checksum_ok: checksum_ok && internet_checksum(&[icmp]) == 0,
                from: Ignored(Some(IpAddr::V4(src))),
            },
        ));
    }
    Some((
        IpAddr::V4(src),
        Outcome::Forwarded {
            at: node.to_owned(),
            dst: IpAddr::V4(dst),
            segments_left: None,
            hop_limit: l3[8],
            payload_len: u16::try_from(total.saturating_sub(ihl)).unwrap_or(0),
            next_header: protocol,
            trailing: l3.len().saturating_sub(total),
            inner: None,
            checksum_ok,
            bytes: Digest::of(l3.get(ihl..total.min(l3.len()))?),
        },
    ))
}
