//! Fixture table for `cpn_endpoint`: the SRv6 endpoint behaviours and the RFC 8754 §4.3.1.1
//! error handling, exact bytes out, each output also decoded by etherparse.
#![expect(
    clippy::too_many_lines,
    reason = "fixture tables are long lists of cases"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use cpn_agent::dataplane::{LoadOptions, Program, SidBehavior};
use cpn_common::stats::Reason;
use cpn_tests::{
    dut::{
        CLIENT4, CLIENT6, CORE_MAC, DutRunner, LOCAL_SERVICE4, LOCAL_SERVICE6, MAIN_ONLY6,
        NEXT_HOP_MAC, NEXT_HOP6, TABLE_100, TABLE_100_ONLY6,
    },
    fixture::{Fixture, Outcome, XdpAction},
    packet::{self, CLIENT_MAC, Encap, ROUTER_MAC},
};
use etherparse::{
    Icmpv6Type, PacketBuilder,
    icmpv6::{ParameterProblemCode, ParameterProblemHeader, TimeExceededCode},
};

const INGRESS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 9);

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const END: &str = "fc00:e::1";
const END_X: &str = "fc00:e::2";
const DT6: &str = "fc00:e::d6";
const DT4: &str = "fc00:e::d4";
const DT46: &str = "fc00:e::46";
const DX6: &str = "fc00:e::a6";
const DX4: &str = "fc00:e::a4";
/// End.DT6 looking up table 100 (which the dut fills with `TABLE_100_PREFIX` only).
const DT6_T100: &str = "fc00:e::d7";
/// End.DT6 looking up the local table (255): this host's addresses only.
const DT6_LOCAL: &str = "fc00:e::d8";

fn bench() -> DutRunner {
    sids(DutRunner::new(|dut| dut.eth1).expect("a fixture namespace and data plane"))
}

fn sids(mut bench: DutRunner) -> DutRunner {
    let (eth0, eth1) = (bench.dut.eth0, bench.dut.eth1);
    let dp = bench.runner.dataplane();
    let sids = [
        (END, SidBehavior::End),
        (
            END_X,
            SidBehavior::EndX {
                nexthop: NEXT_HOP6,
                oif: eth1,
            },
        ),
        (DT6, SidBehavior::EndDt6 { table: 0 }),
        (DT4, SidBehavior::EndDt4 { table: 0 }),
        (DT46, SidBehavior::EndDt46 { table: 0 }),
        (
            DX6,
            SidBehavior::EndDx6 {
                nexthop: CLIENT6,
                oif: eth0,
            },
        ),
        (
            DX4,
            SidBehavior::EndDx4 {
                nexthop: CLIENT4,
                oif: eth0,
            },
        ),
        (DT6_T100, SidBehavior::EndDt6 { table: TABLE_100 }),
        (DT6_LOCAL, SidBehavior::EndDt6 { table: 255 }),
    ];
    for (index, (sid, behavior)) in (0..).zip(sids) {
        dp.set_sid(a(sid), behavior, index).unwrap();
    }
    bench
}

/// An inner IPv6/UDP packet (no link layer).
fn inner6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), hop_limit)
        .udp(443, 40000)
        .write(&mut out, b"reply")
        .unwrap();
    out
}

fn inner4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .udp(443, 40000)
        .write(&mut out, b"reply")
        .unwrap();
    out
}

/// An SRv6 packet as it arrives from the core: segments in travel order, `left` = Segments Left.
fn srv6(segments: &[&str], reduced: bool, inner: &[u8]) -> Vec<u8> {
    let segments: Vec<Ipv6Addr> = segments.iter().map(|s| a(s)).collect();
    let encap = Encap {
        src: INGRESS,
        segments: &segments,
        reduced,
        traffic_class: 0,
        flow_label: 0x12345,
        hop_limit: 61,
    };
    packet::srv6_encap(CORE_MAC, NEXT_HOP_MAC, &encap, inner)
}

/// `input` after End: next segment in the destination, Segments Left - 1, hop limit - 1,
/// new MACs for the core next hop.
fn after_end(input: &[u8], next: &str) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&NEXT_HOP_MAC);
    out[6..12].copy_from_slice(&CORE_MAC);
    out[14 + 7] -= 1;
    out[14 + 24..14 + 40].copy_from_slice(&a(next).octets());
    out[14 + 40 + 3] -= 1;
    out
}

fn with_eth(dst: [u8; 6], src: [u8; 6], ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut out = [dst, src].concat();
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

/// `inner` forwarded to the client: hop limit / TTL - 1 (with the IPv4 checksum redone by
/// etherparse).
fn forwarded_to_client(inner: &[u8]) -> Vec<u8> {
    let mut l3 = inner.to_vec();
    if l3[0] >> 4 == 6 {
        l3[7] -= 1;
        return with_eth(CLIENT_MAC, ROUTER_MAC, 0x86dd, &l3);
    }
    l3[8] -= 1;
    l3[10..12].fill(0);
    let csum = etherparse::Ipv4HeaderSlice::from_slice(&l3[..20])
        .unwrap()
        .to_header()
        .calc_header_checksum();
    l3[10..12].copy_from_slice(&csum.to_be_bytes());
    with_eth(CLIENT_MAC, ROUTER_MAC, 0x0800, &l3)
}

/// The ICMPv6 error an endpoint sends back to the packet's source, from the SID.
fn error_back(input: &[u8], kind: Icmpv6Type) -> Vec<u8> {
    let sid = Ipv6Addr::from(<[u8; 16]>::try_from(&input[14 + 24..14 + 40]).unwrap());
    packet::icmp6_error(NEXT_HOP_MAC, CORE_MAC, sid, INGRESS, kind, &input[14..])
}

fn parameter_problem(code: ParameterProblemCode, pointer: u32) -> Icmpv6Type {
    Icmpv6Type::ParameterProblem(ParameterProblemHeader { code, pointer })
}

fn fixture(name: &str, input: Vec<u8>, action: XdpAction, output: Vec<u8>) -> Fixture {
    Fixture {
        name: name.into(),
        program: Program::Endpoint,
        input,
        expect: Outcome { action, output },
    }
}

#[test]
fn behaviours() {
    let bench = bench();
    let to_client6 = inner6(a("2001:db8:5::1"), CLIENT6, 64);
    let to_client4 = inner4(Ipv4Addr::new(198, 18, 0, 1), CLIENT4, 64);
    let to_local6 = inner6(CLIENT6, LOCAL_SERVICE6, 64);
    let to_local4 = inner4(CLIENT4, LOCAL_SERVICE4, 64);
    let end2 = srv6(&[END, "fc00:2::d6"], false, &to_client6);
    let end3 = srv6(&[END, "fc00:3::1", "fc00:3::d6"], false, &to_client4);
    let end_x = srv6(&[END_X, "fc00:2::d6"], false, &to_client6);
    // The same frames with an 802.1Q tag: the VLAN's interface, and the kernel's route for the
    // SID there, own them (found by the data-plane fuzzer: End wrote the new MACs over the
    // tag's place, four bytes in).
    let tagged = |frame: &[u8]| [&frame[..12], &[0x81, 0x00, 0x00, 0x2a], &frame[12..]].concat();
    let end2_tagged = tagged(&end2);
    let dt6_tagged = tagged(&srv6(&[DT6], false, &to_client6));
    let fixtures = vec![
        fixture(
            "End with a VLAN tag goes to the kernel untouched",
            end2_tagged.clone(),
            XdpAction::Pass,
            end2_tagged,
        ),
        fixture(
            "End.DT6 with a VLAN tag goes to the kernel untouched",
            dt6_tagged.clone(),
            XdpAction::Pass,
            dt6_tagged,
        ),
        fixture(
            "End, 2 segments",
            end2.clone(),
            XdpAction::Redirect,
            after_end(&end2, "fc00:2::d6"),
        ),
        fixture(
            "End, 3 segments, IPv4 inside",
            end3.clone(),
            XdpAction::Redirect,
            after_end(&end3, "fc00:3::1"),
        ),
        fixture(
            "End.X to its neighbour",
            end_x.clone(),
            XdpAction::Redirect,
            after_end(&end_x, "fc00:2::d6"),
        ),
        fixture(
            "End.DT6 forwards the inner packet",
            srv6(&[DT6], false, &to_client6),
            XdpAction::Redirect,
            forwarded_to_client(&to_client6),
        ),
        fixture(
            "End.DT6 without SRH (reduced)",
            srv6(&[DT6], true, &to_client6),
            XdpAction::Redirect,
            forwarded_to_client(&to_client6),
        ),
        fixture(
            "End.DT6 delivers locally",
            srv6(&[DT6], false, &to_local6),
            XdpAction::Pass,
            with_eth(CORE_MAC, NEXT_HOP_MAC, 0x86dd, &to_local6),
        ),
        fixture(
            "End.DT4 forwards",
            srv6(&[DT4], false, &to_client4),
            XdpAction::Redirect,
            forwarded_to_client(&to_client4),
        ),
        fixture(
            "End.DT4 delivers locally",
            srv6(&[DT4], true, &to_local4),
            XdpAction::Pass,
            with_eth(CORE_MAC, NEXT_HOP_MAC, 0x0800, &to_local4),
        ),
        fixture(
            "End.DT46, IPv6 inside",
            srv6(&[DT46], false, &to_client6),
            XdpAction::Redirect,
            forwarded_to_client(&to_client6),
        ),
        fixture(
            "End.DT46, IPv4 inside",
            srv6(&[DT46], false, &to_client4),
            XdpAction::Redirect,
            forwarded_to_client(&to_client4),
        ),
        fixture(
            "End.DX6 cross-connects to its next hop",
            at_last_segment(&srv6(
                &["fc00:9::1", DX6],
                false,
                &inner6(a("2001:db8:5::1"), a("2001:db8:77::5"), 64),
            )),
            XdpAction::Redirect,
            forwarded_to_client(&inner6(a("2001:db8:5::1"), a("2001:db8:77::5"), 64)),
        ),
        fixture(
            "End.DX4 cross-connects to its next hop",
            srv6(
                &[DX4],
                true,
                &inner4(
                    Ipv4Addr::new(198, 18, 0, 1),
                    Ipv4Addr::new(203, 0, 113, 7),
                    64,
                ),
            ),
            XdpAction::Redirect,
            forwarded_to_client(&inner4(
                Ipv4Addr::new(198, 18, 0, 1),
                Ipv4Addr::new(203, 0, 113, 7),
                64,
            )),
        ),
    ];
    bench.runner.check_table(&fixtures);
    let dp = bench.runner.dataplane_ref();
    // SID counters: End (index 0) saw three packets (one of them tagged).
    assert_eq!(
        dp.counter(cpn_common::maps::SID_STATS, 0).unwrap().packets,
        3
    );
}

/// A packet whose SRH has been walked to its last segment (Segments Left 0, destination the
/// last segment), as it arrives at the final SID.
fn at_last_segment(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    let list = 14 + 40 + 8;
    let final_segment: [u8; 16] = out[list..list + 16].try_into().unwrap();
    out[14 + 24..14 + 40].copy_from_slice(&final_segment);
    out[14 + 40 + 3] = 0;
    out
}

#[test]
fn errors_follow_rfc_8754() {
    let bench = bench();
    let udp = inner6(a("2001:db8:5::1"), CLIENT6, 64);
    let end2 = srv6(&[END, "fc00:2::d6"], false, &udp);
    let mut hop1 = end2.clone();
    hop1[14 + 7] = 1;
    let mut hop0 = end2.clone();
    hop0[14 + 7] = 0;
    let mut sl_too_big = end2.clone();
    sl_too_big[14 + 40 + 3] = 3; // Last Entry 1: SL may be at most 2
    let mut le_too_big = end2.clone();
    le_too_big[14 + 40 + 4] = 5; // Hdr Ext Len 4 holds 2 segments: Last Entry at most 1
    // An End SID as the final segment, carrying UDP: SR Upper-layer Header Error.
    let end_final = at_last_segment(&srv6(&["fc00:9::1", END], false, &udp));
    let mut end_final_udp = end_final.clone();
    end_final_udp[14 + 40] = 17; // the SRH's next header says UDP
    let end_final_udp_l3 = 40 + 8 + 32;
    let dt6_with_v4 = srv6(&[DT6], false, &inner4(CLIENT4, LOCAL_SERVICE4, 64));
    let dt6_sl_1 = srv6(&[DT6, "fc00:2::d6"], false, &udp);
    let echo = {
        let mut out = Vec::new();
        PacketBuilder::ipv6(INGRESS.octets(), a(END).octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, b"hi")
            .unwrap();
        with_eth(CORE_MAC, NEXT_HOP_MAC, 0x86dd, &out)
    };
    let mut fixtures = vec![
        fixture(
            "End, hop limit 1: Time Exceeded",
            hop1.clone(),
            XdpAction::Tx,
            error_back(
                &hop1,
                Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
            ),
        ),
        fixture(
            "End, hop limit 0: Time Exceeded",
            hop0.clone(),
            XdpAction::Tx,
            error_back(
                &hop0,
                Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
            ),
        ),
        fixture(
            "Segments Left > Last Entry + 1: Parameter Problem at Segments Left",
            sl_too_big.clone(),
            XdpAction::Tx,
            error_back(
                &sl_too_big,
                parameter_problem(ParameterProblemCode::ErroneousHeaderField, 43),
            ),
        ),
        fixture(
            "Last Entry beyond the header: Parameter Problem",
            le_too_big.clone(),
            XdpAction::Tx,
            error_back(
                &le_too_big,
                parameter_problem(ParameterProblemCode::ErroneousHeaderField, 43),
            ),
        ),
        fixture(
            "End as final segment with UDP: SR Upper-layer Header Error",
            end_final_udp.clone(),
            XdpAction::Tx,
            error_back(
                &end_final_udp,
                parameter_problem(
                    ParameterProblemCode::SrUpperLayerHeaderError,
                    end_final_udp_l3,
                ),
            ),
        ),
        fixture(
            "End.DT6 with IPv4 inside: SR Upper-layer Header Error",
            dt6_with_v4.clone(),
            XdpAction::Tx,
            error_back(
                &dt6_with_v4,
                parameter_problem(ParameterProblemCode::SrUpperLayerHeaderError, 40 + 24),
            ),
        ),
        fixture(
            "End.DT6 with Segments Left 1: Parameter Problem",
            dt6_sl_1.clone(),
            XdpAction::Tx,
            error_back(
                &dt6_sl_1,
                parameter_problem(ParameterProblemCode::ErroneousHeaderField, 43),
            ),
        ),
        fixture(
            "ping to an End SID goes to the kernel's route for the SID",
            echo.clone(),
            XdpAction::Pass,
            echo,
        ),
        fixture(
            "not a local SID",
            srv6(&["fc00:2::d6"], false, &udp),
            XdpAction::Pass,
            srv6(&["fc00:2::d6"], false, &udp),
        ),
        fixture(
            "ipv4 is not ours",
            with_eth(
                CORE_MAC,
                NEXT_HOP_MAC,
                0x0800,
                &inner4(CLIENT4, LOCAL_SERVICE4, 64),
            ),
            XdpAction::Pass,
            with_eth(
                CORE_MAC,
                NEXT_HOP_MAC,
                0x0800,
                &inner4(CLIENT4, LOCAL_SERVICE4, 64),
            ),
        ),
    ];
    // RFC 8200 §4.4: a routing header of an unknown type with Segments Left ≠ 0 is an error
    // pointing at its Routing Type; with Segments Left 0 it is skipped (End then finds its
    // payload, IPv6, which it does not take: SR Upper-layer Header Error).
    let mut routing_type_0 = end2.clone();
    routing_type_0[14 + 40 + 2] = 0;
    fixtures.push(fixture(
        "routing header type 0, Segments Left 1: Parameter Problem at the Routing Type",
        routing_type_0.clone(),
        XdpAction::Tx,
        error_back(
            &routing_type_0,
            parameter_problem(ParameterProblemCode::ErroneousHeaderField, 42),
        ),
    ));
    let mut routing_type_3 = end_final.clone();
    routing_type_3[14 + 40 + 2] = 3;
    let after_routing_header = 40 + 8 + 32;
    fixtures.push(fixture(
        "routing header type 3, Segments Left 0: skipped",
        routing_type_3.clone(),
        XdpAction::Tx,
        error_back(
            &routing_type_3,
            parameter_problem(
                ParameterProblemCode::SrUpperLayerHeaderError,
                after_routing_header,
            ),
        ),
    ));
    let ttl_1 = srv6(
        &[DT4],
        false,
        &inner4(Ipv4Addr::new(198, 18, 0, 1), CLIENT4, 1),
    );
    fixtures.push(fixture(
        "End.DT4, inner TTL 1: to the kernel's route for the SID, untouched",
        ttl_1.clone(),
        XdpAction::Pass,
        ttl_1,
    ));
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::HopLimitExceeded), 2);
    assert_eq!(bench.runner.reason_packets(Reason::SrhMalformed), 2);
    // UDP at a final End, IPv4 at End.DT6, IPv6 after a skipped routing header.
    assert_eq!(
        bench.runner.reason_packets(Reason::UpperLayerUnsupported),
        3
    );
    assert_eq!(bench.runner.reason_packets(Reason::SegmentsLeftNotZero), 1);
    assert_eq!(bench.runner.reason_packets(Reason::UnknownRoutingType), 1);
    assert_eq!(bench.runner.reason_packets(Reason::InnerHopLimitExpired), 1);
    // The ping went to the kernel's route for the SID.
    assert_eq!(bench.runner.reason_packets(Reason::SidToKernel), 1);
}

/// RFC 8754 §5.1: with `[srv6] domain`, a packet to a local SID from a source outside the
/// domain is dropped and counted; inside it, processed as ever; a packet to no SID, from
/// anywhere, passes.
#[test]
fn sids_refuse_sources_outside_the_sr_domain() {
    let mut bench = bench();
    let domain: Vec<ipnet::Ipv6Net> = vec!["2001:db8:ff::/48".parse().unwrap()];
    bench
        .runner
        .dataplane()
        .set_sr_domain(Some(&domain))
        .unwrap();
    assert_eq!(bench.runner.dataplane_ref().sr_domain().unwrap(), domain);
    let inside = srv6(&[END, "fc00:2::d6"], false, &inner6(CLIENT6, CLIENT6, 64));
    let mut outside = inside.clone();
    // The outer source (bytes 22..38): 2001:db8:1::1, outside the domain.
    outside[22..38].copy_from_slice(&CLIENT6.octets());
    let mut to_no_sid = outside.clone();
    to_no_sid[38..54].copy_from_slice(&a("fc00:77::1").octets());
    let fixtures = vec![
        fixture(
            "End from inside the domain",
            inside.clone(),
            XdpAction::Redirect,
            after_end(&inside, "fc00:2::d6"),
        ),
        fixture(
            "End from outside the domain",
            outside.clone(),
            XdpAction::Drop,
            outside,
        ),
        fixture(
            "to no SID, from outside the domain",
            to_no_sid.clone(),
            XdpAction::Pass,
            to_no_sid,
        ),
    ];
    let before = bench.runner.reason_packets(Reason::OutsideSrDomain);
    bench.runner.check_table(&fixtures);
    assert_eq!(
        bench.runner.reason_packets(Reason::OutsideSrDomain) - before,
        1
    );
    // Without a domain again: every source.
    bench.runner.dataplane().set_sr_domain(None).unwrap();
    assert_eq!(
        bench.runner.dataplane_ref().sr_domain().unwrap(),
        vec![ipnet::Ipv6Net::default()]
    );
}

#[test]
fn every_truncation_of_the_srh_is_dropped() {
    let bench = bench();
    let packet = srv6(
        &[END, "fc00:2::1", "fc00:2::d6"],
        false,
        &inner6(CLIENT6, LOCAL_SERVICE6, 64),
    );
    let srh_end = 14 + 40 + 8 + 3 * 16;
    let mut fixtures = Vec::new();
    for cut in 14 + 40 + 1..srh_end {
        // The frame ends early but the payload length still claims the whole packet.
        fixtures.push(fixture(
            &format!("frame cut at SRH byte {}", cut - 54),
            packet[..cut].to_vec(),
            XdpAction::Drop,
            packet[..cut].to_vec(),
        ));
        // Frame and payload length agree: the SRH itself is cut short.
        let short = with_payload_len(&packet[..cut], cut - 54);
        fixtures.push(fixture(
            &format!("packet of {} bytes ending inside its SRH", cut - 54),
            short.clone(),
            XdpAction::Drop,
            short,
        ));
    }
    bench.runner.check_table(&fixtures);
    let cuts = u64::try_from(srh_end - 55).unwrap();
    assert_eq!(bench.runner.reason_packets(Reason::LengthBeyondFrame), cuts);
    assert_eq!(bench.runner.reason_packets(Reason::SrhTruncated), cuts);
}

/// `frame` with its IPv6 payload length set to `len`.
fn with_payload_len(frame: &[u8], len: usize) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[14 + 4..14 + 6].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    out
}

/// `frame` with an extension header (`header`, whose first byte is overwritten with the next
/// header) inserted right after the IPv6 header, announced as `kind`.
fn with_extension_header(frame: &[u8], kind: u8, header: &[u8]) -> Vec<u8> {
    let mut out = frame[..14 + 40].to_vec();
    let mut header = header.to_vec();
    header[0] = frame[14 + 6];
    out[14 + 6] = kind;
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[14 + 40..]);
    let payload = out.len() - 14 - 40;
    with_payload_len(&out, payload)
}

/// RFC 8200: the payload length defines the packet. Each lie is caught; trailing bytes after
/// the packet are trimmed, as the kernel does.
#[test]
fn length_lies_are_dropped_and_padding_is_trimmed() {
    let bench = bench();
    let udp = inner6(a("2001:db8:5::1"), CLIENT6, 64);
    let end2 = srv6(&[END, "fc00:2::d6"], false, &udp);
    // Payload length 24 while the SRH alone is 40 bytes: dropped; what the program saw
    // was already trimmed to the 64 bytes the header claims.
    let claims_24 = with_payload_len(&end2, 24);
    let longer = with_payload_len(&end2, end2.len() - 54 + 8);
    let mut padded = end2.clone();
    padded.extend_from_slice(&[0xee; 10]);
    let dt6 = srv6(&[DT6], false, &udp);
    // The inner packet claims 8 bytes more than the outer packet carries.
    let mut inner_lies = dt6.clone();
    let inner_at = 14 + 40 + 24;
    let inner_payload = u16::from_be_bytes([inner_lies[inner_at + 4], inner_lies[inner_at + 5]]);
    inner_lies[inner_at + 4..inner_at + 6].copy_from_slice(&(inner_payload + 8).to_be_bytes());
    let fixtures = vec![
        fixture(
            "payload length shorter than the SRH",
            claims_24.clone(),
            XdpAction::Drop,
            claims_24[..14 + 40 + 24].to_vec(),
        ),
        fixture(
            "payload length 8 bytes beyond the frame",
            longer.clone(),
            XdpAction::Drop,
            longer,
        ),
        fixture(
            "10 bytes of padding after the packet: trimmed, then End",
            padded,
            XdpAction::Redirect,
            after_end(&end2, "fc00:2::d6"),
        ),
        fixture(
            "End.DT6 whose inner packet claims more than it carries",
            inner_lies.clone(),
            XdpAction::Drop,
            inner_lies,
        ),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::SrhTruncated), 1);
    assert_eq!(bench.runner.reason_packets(Reason::LengthBeyondFrame), 1);
    assert_eq!(bench.runner.reason_packets(Reason::HeaderBeyondLength), 1);
}

/// RFC 6946 / RFC 8200 §4.5: an atomic fragment is processed as the whole packet it is; real
/// fragments are the kernel's to reassemble (its route for the SID then takes the packet).
#[test]
fn atomic_fragments_are_whole_packets() {
    let bench = bench();
    let udp = inner6(a("2001:db8:5::1"), CLIENT6, 64);
    let end2 = srv6(&[END, "fc00:2::d6"], false, &udp);
    let atomic = [0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    let first_fragment = [0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78];
    let end_atomic = with_extension_header(&end2, 44, &atomic);
    let end_fragment = with_extension_header(&end2, 44, &first_fragment);
    let dt6_atomic = with_extension_header(&srv6(&[DT6], true, &udp), 44, &atomic);
    // After End: the SRH now sits 8 bytes further in.
    let mut forwarded = end_atomic.clone();
    forwarded[0..6].copy_from_slice(&NEXT_HOP_MAC);
    forwarded[6..12].copy_from_slice(&CORE_MAC);
    forwarded[14 + 7] -= 1;
    forwarded[14 + 24..14 + 40].copy_from_slice(&a("fc00:2::d6").octets());
    forwarded[14 + 48 + 3] -= 1;
    let fixtures = vec![
        fixture(
            "atomic fragment before the SRH: End as if unfragmented",
            end_atomic,
            XdpAction::Redirect,
            forwarded,
        ),
        fixture(
            "a first fragment goes to the kernel untouched",
            end_fragment.clone(),
            XdpAction::Pass,
            end_fragment,
        ),
        fixture(
            "atomic fragment at End.DT6: decapsulated and forwarded",
            dt6_atomic,
            XdpAction::Redirect,
            forwarded_to_client(&udp),
        ),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::SidToKernel), 1);
}

/// RFC 8986 §4.6: End.DT6 looks up its own table, and only it.
#[test]
fn decapsulation_looks_up_its_own_table_only() {
    let bench = bench();
    let in_table_100 = inner6(a("2001:db8:5::1"), TABLE_100_ONLY6, 64);
    let in_main = inner6(a("2001:db8:5::1"), MAIN_ONLY6, 64);
    let to_local = inner6(CLIENT6, LOCAL_SERVICE6, 64);
    let t100_main = srv6(&[DT6_T100], false, &in_main);
    let local_main = srv6(&[DT6_LOCAL], false, &in_main);
    let mut forwarded = forwarded_to_client(&in_table_100);
    forwarded[0..6].copy_from_slice(&NEXT_HOP_MAC);
    forwarded[6..12].copy_from_slice(&CORE_MAC);
    let fixtures = vec![
        fixture(
            "table 100, destination routed there: forwarded by that route",
            srv6(&[DT6_T100], false, &in_table_100),
            XdpAction::Redirect,
            forwarded,
        ),
        fixture(
            "table 100, destination routed only in main: to the kernel's End.DT6 untouched",
            t100_main.clone(),
            XdpAction::Pass,
            t100_main,
        ),
        fixture(
            "local table, a local destination: delivered",
            srv6(&[DT6_LOCAL], false, &to_local),
            XdpAction::Pass,
            with_eth(CORE_MAC, NEXT_HOP_MAC, 0x86dd, &to_local),
        ),
        fixture(
            "local table, destination routed only in main: to the kernel untouched",
            local_main.clone(),
            XdpAction::Pass,
            local_main,
        ),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::SidToKernel), 2);
}

/// RFC 4443 §2.4 (f): with the default limits (Linux's), one destination gets a burst of 6
/// errors and then no more within the second; another destination is answered all the same.
#[test]
fn icmp_errors_are_rate_limited_per_destination() {
    let bench = sids(
        DutRunner::with_options(|dut| dut.eth1, &LoadOptions::default())
            .expect("a fixture namespace and data plane"),
    );
    let udp = inner6(a("2001:db8:5::1"), CLIENT6, 64);
    let mut hop1 = srv6(&[END, "fc00:2::d6"], false, &udp);
    hop1[14 + 7] = 1;
    let time_exceeded = Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded);
    let mut fixtures: Vec<Fixture> = (0..20)
        .map(|i| {
            if i < 6 {
                fixture(
                    &format!("hop limit 1, error {i}: sent"),
                    hop1.clone(),
                    XdpAction::Tx,
                    error_back(&hop1, time_exceeded),
                )
            } else {
                fixture(
                    &format!("hop limit 1, error {i}: over the limit"),
                    hop1.clone(),
                    XdpAction::Drop,
                    hop1.clone(),
                )
            }
        })
        .collect();
    let mut other_source = hop1.clone();
    other_source[14 + 8..14 + 24].copy_from_slice(&a("2001:db8:ff::10").octets());
    fixtures.push(fixture(
        "another destination still gets its error",
        other_source.clone(),
        XdpAction::Tx,
        packet::icmp6_error(
            NEXT_HOP_MAC,
            CORE_MAC,
            a(END),
            a("2001:db8:ff::10"),
            time_exceeded,
            &other_source[14..],
        ),
    ));
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::IcmpRateLimited), 14);
}

#[test]
fn truncated_ipv6_headers_pass_untouched() {
    let bench = bench();
    let packet = srv6(
        &[END, "fc00:2::d6"],
        false,
        &inner6(CLIENT6, LOCAL_SERVICE6, 64),
    );
    let fixtures: Vec<Fixture> = (14..14 + 40)
        .map(|cut| {
            fixture(
                &format!("IPv6 header cut at {}", cut - 14),
                packet[..cut].to_vec(),
                XdpAction::Pass,
                packet[..cut].to_vec(),
            )
        })
        .collect();
    bench.runner.check_table(&fixtures);
}

/// The FIB answer cache: a forward the FIB answered is reused, byte for byte the same output,
/// until the agent bumps the generation (here by hand: no agent runs), then asked again.
#[test]
fn fib_answers_are_cached_until_the_generation_changes() {
    let mut cache = CacheBench::new();
    // What the agent's routing follower does when it starts.
    cache.bump_generation();
    cache.expect("first packet: asked and cached", 0x01);
    cache.move_next_hop(0x77);
    cache.expect("same generation: the cached answer", 0x01);
    cache.bump_generation();
    cache.expect("new generation: asked again", 0x77);
}

/// Generation 0 (no agent started, or it stopped) turns the cache off: every packet asks the
/// FIB, so a change is followed at once.
#[test]
fn without_a_generation_the_fib_is_asked_every_time() {
    let mut cache = CacheBench::new();
    cache.expect("no generation: asked", 0x01);
    cache.move_next_hop(0x78);
    cache.expect("no generation: asked again", 0x78);
    // On, then off again (what the agent does when it stops): asked again.
    cache.bump_generation();
    cache.expect("cached", 0x78);
    cache.disable();
    cache.move_next_hop(0x01);
    cache.expect("cache off: asked", 0x01);
}

/// Keeps the calling thread on the first CPU it may run on.
fn pin_to_one_cpu() {
    // SAFETY: plain libc calls on a zeroed `cpu_set_t` for the calling thread (pid 0).
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut allowed),
            0
        );
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .expect("a CPU to run on");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const one),
            0
        );
    }
}

/// A packet at End whose next segment goes out to the core next hop, whose MAC the test moves.
struct CacheBench {
    bench: DutRunner,
    input: Vec<u8>,
}

impl CacheBench {
    /// The cache is per CPU and `BPF_PROG_TEST_RUN` runs on the caller's: the test's thread
    /// stays on one CPU, or a packet run on another would find that CPU's slot empty (a
    /// flake: "same generation" then asked the FIB again).
    fn new() -> Self {
        pin_to_one_cpu();
        let input = srv6(
            &[END, "fc00:2::d6"],
            false,
            &inner6(a("2001:db8:5::1"), CLIENT6, 64),
        );
        Self {
            bench: sids(
                DutRunner::new(|dut| dut.eth1).expect("a fixture namespace and data plane"),
            ),
            input,
        }
    }

    /// Bumps the FIB answer cache's generation, as the agent does on a routing change.
    fn bump_generation(&mut self) {
        self.bench.runner.dataplane().bump_fib_generation().unwrap();
    }

    /// Turns the cache off, as the agent does when it stops.
    fn disable(&mut self) {
        self.bench.runner.dataplane().disable_fib_cache().unwrap();
    }

    /// Checks that the packet leaves for the next hop's MAC `02:00:00:00:01:<last>`.
    fn expect(&self, name: &str, last: u8) {
        let mut output = after_end(&self.input, "fc00:2::d6");
        output[0..6].copy_from_slice(&[0x02, 0, 0, 0, 1, last]);
        self.bench
            .runner
            .check(&fixture(
                name,
                self.input.clone(),
                XdpAction::Redirect,
                output,
            ))
            .unwrap();
    }

    /// Gives the core next hop (`NEXT_HOP6` on eth1) the MAC `02:00:00:00:01:<last>`.
    fn move_next_hop(&self, last: u8) {
        let mac = format!("02:00:00:00:01:{last:02x}");
        self.bench
            .dut
            .lab
            .node("dut")
            .unwrap()
            .run(&[
                "ip",
                "-6",
                "neigh",
                "replace",
                &NEXT_HOP6.to_string(),
                "lladdr",
                &mac,
                "nud",
                "permanent",
                "dev",
                "eth1",
            ])
            .unwrap();
    }
}
