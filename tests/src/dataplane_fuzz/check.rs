//! The invariants every fuzzed packet's outcome must hold, whatever the packet:
//!
//! - never `XDP_ABORTED`, except where the program counts `no_headroom` (the documented case);
//! - what leaves the program changed (redirected, sent back, passed after encapsulation or
//!   decapsulation) decodes with etherparse, an independent decoder, and is at most the input
//!   plus the largest encapsulation ([`MAX_GROWTH`]); a steered packet carries the input's IP
//!   packet unchanged inside; the endpoint never grows a packet it forwards;
//! - a pass leaves the packet byte-identical, except the documented hand-overs to the kernel:
//!   an encapsulated packet whose next hop is unresolved (`fib_no_neighbour`), a decapsulated
//!   one delivered locally, one whose link-layer padding was trimmed;
//! - counters add up: exactly one protocol counter counts each packet (by its length), the VLAN
//!   counter counts exactly the tagged ones, no reason counts a packet twice, every drop has a
//!   drop reason and every ICMP error the reason that sent it.

use std::fmt;

use cpn_common::{
    maps::MAX_SIDS,
    stats::{Counter, ProtoCounter, Reason},
};

use crate::fixture::{Outcome, XdpAction};

/// The largest encapsulation: outer IPv6 and an SRH of `MAX_SIDS` segments.
pub const MAX_GROWTH: usize = 40 + 8 + 16 * MAX_SIDS;

/// Which program a packet went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `cpn_steer` (XDP).
    SteerXdp,
    /// `cpn_steer_tc_ingress`.
    SteerTc,
    /// `cpn_endpoint` (XDP).
    Endpoint,
}

impl Target {
    pub const ALL: [Self; 3] = [Self::SteerXdp, Self::SteerTc, Self::Endpoint];

    pub const fn name(self) -> &'static str {
        match self {
            Self::SteerXdp => "cpn_steer",
            Self::SteerTc => "cpn_steer_tc_ingress",
            Self::Endpoint => "cpn_endpoint",
        }
    }

    const fn steers(self) -> bool {
        matches!(self, Self::SteerXdp | Self::SteerTc)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A program's counters at one moment: its protocol block and the reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    pub proto: Vec<(ProtoCounter, Counter)>,
    pub reasons: Vec<(Reason, Counter)>,
}

/// What a packet's outcome was, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// Passed untouched.
    Passed,
    /// Encapsulated towards a node (redirected, or passed to the kernel to forward).
    Encapsulated,
    /// Forwarded by an SRv6 behaviour or decapsulated (redirected or delivered).
    Processed,
    /// Answered with an ICMP error.
    IcmpError,
    /// Dropped, with its reason.
    Dropped,
    /// Aborted for lack of headroom.
    Aborted,
}

impl Effect {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed untouched",
            Self::Encapsulated => "encapsulated",
            Self::Processed => "SRv6 processed",
            Self::IcmpError => "ICMP error",
            Self::Dropped => "dropped",
            Self::Aborted => "aborted (no headroom)",
        }
    }
}

/// Reasons a program drops a packet for.
const DROPS: [Reason; 14] = [
    Reason::OutsideSrDomain,
    Reason::IcmpSuppressed,
    Reason::InnerChecksumBad,
    Reason::LengthBeyondFrame,
    Reason::HeaderBeyondLength,
    Reason::SrhTruncated,
    Reason::SrhMalformed,
    Reason::HopLimitExceeded,
    Reason::SegmentsLeftNotZero,
    Reason::UpperLayerUnsupported,
    Reason::UnknownRoutingType,
    Reason::UnknownBehavior,
    Reason::IcmpRateLimited,
    Reason::MtuBelowMinimum,
];

/// Reasons a program sends an ICMP error for.
const ERRORS: [Reason; 7] = [
    Reason::PacketTooBig,
    Reason::FragmentationNeeded,
    Reason::SrhMalformed,
    Reason::HopLimitExceeded,
    Reason::SegmentsLeftNotZero,
    Reason::UpperLayerUnsupported,
    Reason::UnknownRoutingType,
];

/// The protocol counters that partition all packets.
const PARTITION: [ProtoCounter; 5] = [
    ProtoCounter::Ipv6,
    ProtoCounter::Ipv4,
    ProtoCounter::Arp,
    ProtoCounter::OtherEthertype,
    ProtoCounter::Malformed,
];

/// Checks one outcome against the invariants; the error names the one broken.
pub fn check(
    target: Target,
    input: &[u8],
    outcome: &Outcome,
    before: &Counters,
    after: &Counters,
) -> Result<Effect, String> {
    check_counters(input, before, after)?;
    let raised = raised_reasons(before, after)?;
    let output = outcome.output.as_slice();
    let changed = output != input;
    if changed && output.len() > input.len() + MAX_GROWTH {
        return Err(format!(
            "the output is {} bytes, more than the input's {} plus {MAX_GROWTH}",
            output.len(),
            input.len()
        ));
    }
    let named = |reasons: &[Reason]| raised.iter().any(|r| reasons.contains(r));
    match outcome.action {
        XdpAction::Aborted if raised.contains(&Reason::NoHeadroom) => Ok(Effect::Aborted),
        XdpAction::Aborted => Err("XDP_ABORTED without no_headroom".into()),
        XdpAction::Drop if named(&DROPS) => Ok(Effect::Dropped),
        XdpAction::Drop => Err(format!(
            "dropped without a drop reason (counted: {raised:?})"
        )),
        XdpAction::Pass if !changed => Ok(Effect::Passed),
        XdpAction::Pass if target.steers() => {
            encapsulation_of(input, output, target)?;
            Ok(Effect::Encapsulated)
        }
        XdpAction::Pass => {
            handed_to_kernel(input, output)?;
            Ok(Effect::Processed)
        }
        // What the endpoint decapsulates may be an ICMP error too: one the program sends is
        // sent back (XDP) or redirected by the steering program (TC), with its reason.
        XdpAction::Tx | XdpAction::Redirect
            if is_icmp_error(output)
                && (outcome.action == XdpAction::Tx || target.steers() || named(&ERRORS)) =>
        {
            if !named(&ERRORS) {
                return Err(format!(
                    "an ICMP error without the reason that sends it (counted: {raised:?})"
                ));
            }
            icmp_error_for(input, output)?;
            Ok(Effect::IcmpError)
        }
        XdpAction::Tx => Err("XDP_TX of something that is not an ICMP error".into()),
        XdpAction::Redirect if target.steers() => {
            encapsulation_of(input, output, target)?;
            Ok(Effect::Encapsulated)
        }
        XdpAction::Redirect => {
            forwarded_from(input, output)?;
            Ok(Effect::Processed)
        }
        XdpAction::Unknown(code) => Err(format!("unknown verdict {code}")),
    }
}

fn delta(before: Counter, after: Counter) -> Counter {
    Counter {
        packets: after.packets.wrapping_sub(before.packets),
        bytes: after.bytes.wrapping_sub(before.bytes),
    }
}

fn check_counters(input: &[u8], before: &Counters, after: &Counters) -> Result<(), String> {
    let rose: Vec<(ProtoCounter, Counter)> = before
        .proto
        .iter()
        .zip(&after.proto)
        .map(|(&(which, b), &(_, a))| (which, delta(b, a)))
        .filter(|(_, d)| d.packets != 0)
        .collect();
    let partition: Vec<_> = rose.iter().filter(|(c, _)| PARTITION.contains(c)).collect();
    let len = u64::try_from(input.len()).unwrap_or(u64::MAX);
    match partition.as_slice() {
        [(_, d)] if d.packets == 1 && d.bytes == len => {}
        _ => {
            return Err(format!(
                "one protocol counter should count the packet ({len} bytes), not {partition:?}"
            ));
        }
    }
    let tagged = matches!(input.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8]));
    let vlan = rose
        .iter()
        .find(|(c, _)| *c == ProtoCounter::VlanTagged)
        .map_or(0, |(_, d)| d.packets);
    if vlan != u64::from(tagged) {
        return Err(format!(
            "vlan_tagged counted {vlan} for a frame {} a tag",
            if tagged { "with" } else { "without" }
        ));
    }
    Ok(())
}

fn raised_reasons(before: &Counters, after: &Counters) -> Result<Vec<Reason>, String> {
    let mut raised = Vec::new();
    for (&(reason, b), &(_, a)) in before.reasons.iter().zip(&after.reasons) {
        match delta(b, a).packets {
            0 => {}
            1 => raised.push(reason),
            n => return Err(format!("{} counted {n} packets for one", reason.name())),
        }
    }
    Ok(raised)
}

/// The whole output decodes (an ICMP error cpn wrote, quote and all).
fn decodes(output: &[u8]) -> Result<String, String> {
    crate::packet::verify(output).map_err(|e| format!("the output does not decode: {e}"))
}

/// The output's own headers decode; returns where what follows them starts.
fn headers_decode(output: &[u8]) -> Result<usize, String> {
    crate::packet::verify_headers(output)
        .map_err(|e| format!("the output's headers do not decode: {e}"))
}

/// Where a frame's IP header starts (after up to two VLAN tags).
fn l3_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        match frame.get(at..at + 2)? {
            [0x81, 0x00] | [0x88, 0xa8] => at += 4,
            _ => return Some(at + 2),
        }
    }
}

/// The input's IP packet: from its header to the end its length field gives.
fn ip_packet(frame: &[u8]) -> Option<&[u8]> {
    let l3 = l3_offset(frame)?;
    let ip = frame.get(l3..)?;
    let len = match ip.first()? >> 4 {
        6 => 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])),
        4 => usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        _ => return None,
    };
    ip.get(..len)
}

/// `output` is the input's IP packet in an SRv6 encapsulation (RFC 8986 H.Encaps): it decodes,
/// and the inner packet is the input's, byte for byte (the TC program may clamp a SYN's MSS).
fn encapsulation_of(input: &[u8], output: &[u8], target: Target) -> Result<(), String> {
    let inner_at = headers_decode(output)?;
    let encapsulates = output.get(12..14) == Some(&[0x86, 0xdd])
        && match output.get(20) {
            Some(43) => matches!(output.get(54), Some(4 | 41)),
            Some(4 | 41) => true,
            _ => false,
        };
    if !encapsulates {
        return Err("changed, but not into an SRv6 encapsulation".into());
    }
    let inner = output.get(inner_at..).unwrap_or_default();
    let original = ip_packet(input).ok_or("encapsulated a packet that is not IP")?;
    if inner == original {
        return Ok(());
    }
    if target == Target::SteerTc && only_mss_differs(original, inner) {
        return Ok(());
    }
    Err(format!(
        "the inner packet is not the input's ({} bytes inside, {} sent)",
        inner.len(),
        original.len()
    ))
}

/// The two packets differ only in a TCP MSS option's value, made smaller, and in two more
/// bytes (the TCP checksum), found by their bytes alone: the clamp's own parse is not trusted.
fn only_mss_differs(original: &[u8], clamped: &[u8]) -> bool {
    if original.len() != clamped.len() {
        return false;
    }
    let changed: Vec<usize> = (0..original.len())
        .filter(|&i| original[i] != clamped[i])
        .collect();
    // Runs of adjacent changed bytes, each within one 16-bit word.
    let mut words: Vec<usize> = Vec::new();
    for &i in &changed {
        let word = i & !1;
        if words.last() != Some(&word) {
            words.push(word);
        }
    }
    let is_mss = |at: usize| {
        at >= 2
            && original.get(at - 2..at) == Some(&[2, 4])
            && original.get(at..at + 2).is_some_and(|old| {
                u16::from_be_bytes([old[0], old[1]])
                    > u16::from_be_bytes([clamped[at], clamped[at + 1]])
            })
    };
    // The MSS value need not be word-aligned: look for it at the first changed byte, and at
    // the one before.
    let mss_at = changed
        .iter()
        .flat_map(|&i| [i, i.saturating_sub(1)])
        .find(|&at| is_mss(at));
    let Some(mss_at) = mss_at else {
        return false;
    };
    let outside: Vec<usize> = changed
        .into_iter()
        .filter(|i| !(mss_at..mss_at + 2).contains(i))
        .collect();
    outside.len() <= 2 && outside.windows(2).all(|w| w[1] == w[0] + 1)
}

/// The endpoint forwarded a packet (an SRv6 transit behaviour, or a decapsulation towards a
/// next hop): its headers decode, and what follows them is the input's, unchanged; it is never
/// larger than the input.
fn forwarded_from(input: &[u8], output: &[u8]) -> Result<(), String> {
    // Decapsulated, the packet is the sender's inner one: only its IP header is checked (an
    // SRH inside is the sender's too).
    let decapsulated = output.len() - 14 < ip_packet(input).map_or(0, <[u8]>::len);
    let after_headers = if decapsulated {
        crate::packet::verify_ip_header(output)
            .map_err(|e| format!("the output's IP header does not decode: {e}"))?
    } else {
        headers_decode(output)?
    };
    if output.len() > input.len() {
        return Err(format!(
            "the endpoint forwards {} bytes for {} received",
            output.len(),
            input.len()
        ));
    }
    let packet = ip_packet(input).ok_or("forwarded a packet that is not IP")?;
    let forwarded = &output[14..];
    if forwarded.len() == packet.len() && output[12..14] == [0x86, 0xdd] {
        // End, End.X: the packet as it came but for its hop limit, its destination (the next
        // segment) and one byte further on (the SRH's Segments Left).
        let changed: Vec<usize> = (0..packet.len())
            .filter(|&i| packet[i] != forwarded[i] && i != 7 && !(24..40).contains(&i))
            .collect();
        return match changed.as_slice() {
            [] => Ok(()),
            [sl] if *sl > 40 && forwarded[*sl].wrapping_add(1) == packet[*sl] => Ok(()),
            _ => Err(format!("forwarded with other bytes changed: {changed:?}")),
        };
    }
    if !packet.ends_with(&output[after_headers..]) {
        return Err("what follows the forwarded headers is not the input's".into());
    }
    Ok(())
}

/// The endpoint passed a changed packet: a decapsulated one for local delivery (the input's
/// MACs, then a tail of the input's IPv6 packet), or the input without its link-layer padding.
fn handed_to_kernel(input: &[u8], output: &[u8]) -> Result<(), String> {
    let packet = ip_packet(input).ok_or("passed a changed packet that is not IP")?;
    let l3 = l3_offset(input).unwrap_or(14);
    if output.len() == l3 + packet.len() && input.starts_with(output) {
        return Ok(());
    }
    let decapsulated = output.get(..12) == input.get(..12)
        && output.len() > 14
        && output.len() - 14 <= packet.len().saturating_sub(40)
        && packet.ends_with(&output[14..]);
    let ether_type_fits = matches!(
        (output.get(12..14), output.get(14).map(|v| v >> 4)),
        (Some([0x86, 0xdd]), Some(6)) | (Some([0x08, 0x00]), Some(4))
    );
    if decapsulated && ether_type_fits {
        return Ok(());
    }
    Err("passed changed, neither trimmed nor decapsulated".into())
}

fn is_icmp_error(output: &[u8]) -> bool {
    match output.get(12..14) {
        Some([0x86, 0xdd]) => {
            output.get(20) == Some(&58) && output.get(54).is_some_and(|t| *t < 128)
        }
        Some([0x08, 0x00]) => {
            let ihl = output.get(14).map_or(0, |v| usize::from(v & 0xf) * 4);
            output.get(23) == Some(&1)
                && output
                    .get(14 + ihl)
                    .is_some_and(|t| matches!(t, 3 | 11 | 12))
        }
        _ => false,
    }
}

/// An ICMP error decodes, goes to the input's source and quotes the input's start.
fn icmp_error_for(input: &[u8], output: &[u8]) -> Result<(), String> {
    decodes(output)?;
    let l3 = l3_offset(input).ok_or("an ICMP error for a frame without IP")?;
    let (src, dst, quote_at) = if output[12..14] == [0x86, 0xdd] {
        (input.get(l3 + 8..l3 + 24), output.get(38..54), 14 + 48)
    } else {
        let ihl = usize::from(output[14] & 0xf) * 4;
        (
            input.get(l3 + 12..l3 + 16),
            output.get(30..34),
            14 + ihl + 8,
        )
    };
    if src.is_none() || src != dst {
        return Err("the ICMP error is not sent to the packet's source".into());
    }
    let source_may_hear = match src {
        Some(&[a, _, _, _]) => a < 224 && src != Some(&[0; 4]),
        Some(v6) => v6[0] != 0xff && v6.iter().any(|b| *b != 0),
        None => false,
    };
    let later_fragment = output[12..14] == [0x08, 0x00]
        && input
            .get(l3 + 6..l3 + 8)
            .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x1fff != 0);
    if !source_may_hear || later_fragment {
        // RFC 4443 §2.4 e, RFC 1812 §4.3.2.7.
        return Err(
            "an ICMP error answers a multicast or unspecified source, or a later fragment".into(),
        );
    }
    let quote = output.get(quote_at..).unwrap_or_default();
    let invoking = input.get(l3..).unwrap_or_default();
    if quote.is_empty() || !invoking.starts_with(quote) {
        return Err("the ICMP error does not quote the packet".into());
    }
    Ok(())
}
