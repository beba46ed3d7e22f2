//! Fixture table for `cpn_steer`: one packet in, the exact verdict and bytes out, each output
//! also decoded by etherparse. Maps are set up through the agent's data-plane API; FIB lookups
//! run in the deterministic `Dut` namespace.
#![expect(
    clippy::too_many_lines,
    reason = "fixture tables are long lists of cases"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use cpn_agent::dataplane::{
    Hook, Node, NodeState, Program, Seen, ServiceAddr, ServiceConfig, TickClock,
};
use cpn_common::{
    hash::flow_hash,
    maps::{FlowKey, MAX_SIDS, RING_ATTEMPTS, ring_slot},
    stats::{ProtoCounter, Reason},
};
use cpn_tests::{
    dut::{CLIENT4, CLIENT6, CORE_MAC, DutRunner, SMALL_MTU},
    fixture::{Fixture, Outcome, XdpAction},
    packet::{self, CLIENT_MAC, Encap, Frame, ROUTER_MAC},
};

const ENCAP_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
const NEXT_HOP_MAC: [u8; 6] = cpn_tests::dut::NEXT_HOP_MAC;

fn sid(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn svc6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, last)
}

fn svc4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// Node id → (segments in travel order, reduced).
fn nodes() -> Vec<(u32, Vec<Ipv6Addr>, bool)> {
    let six: Vec<Ipv6Addr> = (1..=u16::try_from(MAX_SIDS).unwrap())
        .map(|i| Ipv6Addr::new(0xfc00, 3, 0, 0, 0, 0, 0, i))
        .collect();
    vec![
        (1, vec![sid("fc00:1::d6")], false),
        (2, vec![sid("fc00:2::1"), sid("fc00:2::d6")], false),
        (3, six, false),
        (4, vec![sid("fc00:4::d6")], true),
        (
            5,
            vec![sid("fc00:5::1"), sid("fc00:5::2"), sid("fc00:5::d6")],
            true,
        ),
        (6, vec![sid("fc00:1300::d6")], false),
        (7, vec![sid("fc00:dead::d6")], false),
        (8, vec![sid("fd99::d6")], false),
        (9, vec![sid("fc00:9::d6")], false),
    ]
}

/// Service address → (id, ring).
fn services() -> Vec<(ServiceAddr, u32, Vec<u32>)> {
    let any = |addr: IpAddr| ServiceAddr { addr, port: None };
    vec![
        (any(svc6(1).into()), 0, vec![1]),
        (any(svc6(2).into()), 1, vec![2]),
        (any(svc6(3).into()), 2, vec![3]),
        (any(svc6(4).into()), 3, vec![4]),
        (any(svc6(5).into()), 4, vec![5]),
        (any(svc6(6).into()), 5, vec![6]),
        (any(svc6(7).into()), 6, vec![7]),
        (any(svc6(8).into()), 7, vec![8]),
        (any(svc4(1).into()), 8, vec![1]),
        (any(svc4(2).into()), 9, vec![3]),
        (any(svc4(3).into()), 10, vec![4]),
        (any(svc4(6).into()), 11, vec![6]),
        (
            ServiceAddr {
                addr: svc6(0x100).into(),
                port: Some((6, 443)),
            },
            12,
            vec![2],
        ),
        (any(svc6(0x100).into()), 13, vec![1]),
        (any(svc6(9).into()), 14, vec![]),
        (any(svc6(10).into()), 15, vec![9]),
    ]
}

fn bench() -> DutRunner {
    let mut bench = DutRunner::new(|dut| dut.eth0).expect("a fixture namespace and data plane");
    let dp = bench.runner.dataplane();
    // The tables run through the TC program too.
    dp.load_tc(Hook::TcIngress).unwrap();
    for (id, segments, reduced) in nodes() {
        let state = if id == 9 {
            NodeState::Down
        } else {
            NodeState::Active
        };
        dp.set_node(
            id,
            &Node {
                segments,
                encap_src: ENCAP_SRC,
                reduced,
                state,
            },
        )
        .unwrap();
    }
    for (addr, id, ring) in services() {
        dp.set_service(&addr, &ServiceConfig { id, affinity: None })
            .unwrap();
        dp.publish_ring(id, &ring).unwrap();
    }
    bench
}

/// The flow label cpn derives from a flow (the shared hash; ports 0 for fragments).
fn flow_label(src: IpAddr, dst: IpAddr, protocol: u8, ports: (u16, u16)) -> u32 {
    let key = FlowKey {
        src: cpn_agent::dataplane::addr16(src),
        dst: cpn_agent::dataplane::addr16(dst),
        src_port: ports.0.to_be_bytes(),
        dst_port: ports.1.to_be_bytes(),
        protocol,
        _pad: [0; 3],
    };
    flow_hash(&key, 0) & 0xf_ffff
}

fn node_segments(id: u32) -> (Vec<Ipv6Addr>, bool) {
    let (_, segments, reduced) = nodes().into_iter().find(|(n, _, _)| *n == id).unwrap();
    (segments, reduced)
}

/// Input frame `input` (Ethernet, maybe VLAN) encapsulated towards node `id`.
fn encapsulated(input: &[u8], node: u32, label: u32, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let l3 = if input[12..14] == [0x81, 0x00] {
        &input[18..]
    } else {
        &input[14..]
    };
    let v6 = l3[0] >> 4 == 6;
    let traffic_class = if v6 {
        (u16::from_be_bytes([l3[0], l3[1]]) >> 4).to_be_bytes()[1]
    } else {
        l3[1]
    };
    let (segments, reduced) = node_segments(node);
    packet::srv6_encap(
        macs.0,
        macs.1,
        &Encap {
            src: ENCAP_SRC,
            segments: &segments,
            reduced,
            traffic_class,
            flow_label: label,
            hop_limit: 64,
        },
        l3,
    )
}

const FORWARD: ([u8; 6], [u8; 6]) = (NEXT_HOP_MAC, CORE_MAC);
/// The MACs of the received frame, kept when the kernel forwards.
const RECEIVED: ([u8; 6], [u8; 6]) = (ROUTER_MAC, CLIENT_MAC);

fn udp6(dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
    Frame::ethernet().ipv6_udp(CLIENT6, dst, (40000, 443), &vec![0xab; payload_len])
}

fn udp4(dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    Frame::ethernet().ipv4_udp(CLIENT4, dst, (40000, 443), &vec![0xcd; payload_len])
}

fn label6(dst: Ipv6Addr) -> u32 {
    flow_label(CLIENT6.into(), dst.into(), 17, (40000, 443))
}

fn label4(dst: Ipv4Addr) -> u32 {
    flow_label(CLIENT4.into(), dst.into(), 17, (40000, 443))
}

fn fixture(name: &str, input: Vec<u8>, action: XdpAction, output: Vec<u8>) -> Fixture {
    Fixture {
        name: name.into(),
        program: Program::Steer,
        input,
        expect: Outcome { action, output },
    }
}

fn redirect(name: &str, input: Vec<u8>, node: u32, label: u32) -> Fixture {
    let output = encapsulated(&input, node, label, FORWARD);
    fixture(name, input, XdpAction::Redirect, output)
}

fn dropped(name: &str, input: Vec<u8>) -> Fixture {
    fixture(name, input.clone(), XdpAction::Drop, input)
}

/// `frame` (IPv6 after 14 bytes of Ethernet) with its payload length set to `len`.
fn with_payload_len(frame: &[u8], len: usize) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[14 + 4..14 + 6].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    out
}

fn untouched(name: &str, input: Vec<u8>) -> Fixture {
    fixture(name, input.clone(), XdpAction::Pass, input)
}

/// Runs the fixtures; checks every output with etherparse too.
#[test]
fn encapsulation_table() {
    let bench = bench();
    let mut tc = udp6(svc6(1), 10);
    tc[14] = 0x6b; // traffic class 0xb9: DSCP 46 (EF) with ECN 01
    tc[15] = 0x90 | (tc[15] & 0x0f);
    let mut tos4 = udp4(svc4(1), 10);
    tos4[15] = 0xb9;
    tos4[24..26].fill(0);
    let csum = etherparse::Ipv4HeaderSlice::from_slice(&tos4[14..34])
        .unwrap()
        .to_header()
        .calc_header_checksum();
    tos4[24..26].copy_from_slice(&csum.to_be_bytes());
    let fixtures = vec![
        redirect("ipv6 udp, 1 segment", udp6(svc6(1), 10), 1, label6(svc6(1))),
        redirect(
            "ipv6 udp, 2 segments",
            udp6(svc6(2), 10),
            2,
            label6(svc6(2)),
        ),
        redirect(
            "ipv6 udp, MAX_SIDS segments",
            udp6(svc6(3), 10),
            3,
            label6(svc6(3)),
        ),
        redirect(
            "ipv6 udp, reduced, 1 segment: no SRH",
            udp6(svc6(4), 10),
            4,
            label6(svc6(4)),
        ),
        redirect(
            "ipv6 udp, reduced, 3 segments",
            udp6(svc6(5), 10),
            5,
            label6(svc6(5)),
        ),
        redirect(
            "ipv6 empty udp payload",
            udp6(svc6(1), 0),
            1,
            label6(svc6(1)),
        ),
        redirect(
            "ipv6 1000-byte payload",
            udp6(svc6(2), 1000),
            2,
            label6(svc6(2)),
        ),
        redirect(
            "ipv6 tcp",
            Frame::ethernet().ipv6_tcp(CLIENT6, svc6(1), (40001, 80), b"GET /"),
            1,
            flow_label(CLIENT6.into(), svc6(1).into(), 6, (40001, 80)),
        ),
        redirect(
            "ipv6 echo request (no ports)",
            Frame::ethernet().ipv6_echo(CLIENT6, svc6(2)),
            2,
            flow_label(CLIENT6.into(), svc6(2).into(), 58, (0, 0)),
        ),
        redirect("ipv6 traffic class copied", tc, 1, label6(svc6(1))),
        redirect("ipv4 udp, 1 segment", udp4(svc4(1), 10), 1, label4(svc4(1))),
        redirect(
            "ipv4 udp, MAX_SIDS segments",
            udp4(svc4(2), 10),
            3,
            label4(svc4(2)),
        ),
        redirect("ipv4 udp, reduced", udp4(svc4(3), 10), 4, label4(svc4(3))),
        redirect("ipv4 tos copied", tos4, 1, label4(svc4(1))),
        redirect(
            "vlan ipv6 leaves untagged",
            Frame::ethernet()
                .vlan(100)
                .ipv6_udp(CLIENT6, svc6(1), (40000, 443), &[0xab; 10]),
            1,
            label6(svc6(1)),
        ),
        redirect(
            "vlan ipv4 leaves untagged",
            Frame::ethernet()
                .vlan(4000)
                .ipv4_udp(CLIENT4, svc4(1), (40000, 443), &[0xcd; 10]),
            1,
            label4(svc4(1)),
        ),
        redirect(
            "service with port: tcp/443 matches exactly",
            Frame::ethernet().ipv6_tcp(CLIENT6, svc6(0x100), (40002, 443), b"x"),
            2,
            flow_label(CLIENT6.into(), svc6(0x100).into(), 6, (40002, 443)),
        ),
        redirect(
            "service with port: udp/53 falls back to the address",
            Frame::ethernet().ipv6_udp(CLIENT6, svc6(0x100), (40003, 53), b"x"),
            1,
            flow_label(CLIENT6.into(), svc6(0x100).into(), 17, (40003, 53)),
        ),
        fixture(
            "neighbour unresolved: encapsulated, passed to the kernel",
            udp6(svc6(7), 10),
            XdpAction::Pass,
            encapsulated(&udp6(svc6(7), 10), 7, label6(svc6(7)), RECEIVED),
        ),
        untouched("no route to the first segment", udp6(svc6(8), 10)),
        untouched("service without nodes", udp6(svc6(9), 10)),
        untouched("ring names a node that is down", udp6(svc6(10), 10)),
        untouched("not a service (ipv6)", udp6(sid("2001:db8:6::1"), 10)),
        untouched(
            "not a service (ipv4)",
            udp4(Ipv4Addr::new(203, 0, 113, 9), 10),
        ),
        untouched("arp", Frame::ethernet().arp_request(CLIENT4, svc4(1))),
    ];
    bench.runner.check_table(&fixtures);
    let dp = bench.runner.dataplane_ref();
    assert_eq!(
        dp.counter(cpn_common::maps::NODE_STATS, 3).unwrap().packets,
        2
    );
    let count = |r| bench.runner.reason_packets(r);
    assert_eq!(count(Reason::FibNoNeighbour), 1);
    assert_eq!(count(Reason::FibNoRoute), 1);
    assert_eq!(count(Reason::NoUsableNode), 2);
    // The same table through the TC program.
    assert!(bench.runner.check_table_tc(&fixtures) > 0);
}

#[test]
fn mtu_table() {
    let bench = bench();
    // Node 6 has one segment: 40 + 8 + 16 = 64 bytes of overhead on a 1300-byte route, so
    // only 1236 bytes fit inside: less than IPv6's minimum MTU (RFC 8200 §5).
    let inner_mtu = SMALL_MTU - 64;
    let minimum_mtu = 1280;
    let fits6 = udp6(svc6(6), usize::from(inner_mtu) - 48);
    let over_but_minimum6 = udp6(svc6(6), usize::from(inner_mtu) - 47);
    let at_minimum6 = udp6(svc6(6), minimum_mtu - 48);
    let too_big6 = udp6(svc6(6), minimum_mtu - 47);
    let fits4 = udp4(svc4(6), usize::from(inner_mtu) - 28);
    let mut too_big4 = udp4(svc4(6), usize::from(inner_mtu) - 27);
    let mut no_df = too_big4.clone();
    // etherparse sets DF by default? Make both explicit.
    set_df(&mut too_big4, true);
    set_df(&mut no_df, false);
    let fixtures = vec![
        redirect("ipv6 exactly at the MTU", fits6, 6, label6(svc6(6))),
        fixture(
            "ipv6 over the MTU but within 1280 bytes: nothing to tell, dropped",
            over_but_minimum6.clone(),
            XdpAction::Drop,
            over_but_minimum6,
        ),
        fixture(
            "ipv6 of 1280 bytes: dropped",
            at_minimum6.clone(),
            XdpAction::Drop,
            at_minimum6,
        ),
        fixture(
            "ipv6 over 1280: Packet Too Big says 1280, never less",
            too_big6.clone(),
            XdpAction::Tx,
            packet::icmp6_error(
                CLIENT_MAC,
                ROUTER_MAC,
                svc6(6),
                CLIENT6,
                etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::try_from(minimum_mtu).unwrap(),
                },
                &too_big6[14..],
            ),
        ),
        redirect("ipv4 exactly at the MTU", fits4, 6, label4(svc4(6))),
        fixture(
            "ipv4 DF one byte over: Fragmentation Needed",
            too_big4.clone(),
            XdpAction::Tx,
            packet::icmp4_frag_needed(
                CLIENT_MAC,
                ROUTER_MAC,
                svc4(6),
                CLIENT4,
                inner_mtu,
                &too_big4[14..],
            ),
        ),
        untouched("ipv4 without DF over the MTU goes to the kernel", no_df),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::MtuBelowMinimum), 2);
    assert_eq!(bench.runner.reason_packets(Reason::PacketTooBig), 1);
    // The same table through the TC program.
    assert!(bench.runner.check_table_tc(&fixtures) > 0);
}

fn set_df(frame: &mut [u8], df: bool) {
    if df {
        frame[20] |= 0x40;
    } else {
        frame[20] &= !0x40;
    }
    frame[24..26].fill(0);
    let csum = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..34])
        .unwrap()
        .to_header()
        .calc_header_checksum();
    frame[24..26].copy_from_slice(&csum.to_be_bytes());
}

#[test]
fn fragments_follow_their_first_fragment() {
    let bench = bench();
    let udp = [0x9c, 0x40, 0x01, 0xbb, 0, 24, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let label = flow_label(CLIENT6.into(), svc6(2).into(), 17, (0, 0));
    let label_v4 = flow_label(CLIENT4.into(), svc4(1).into(), 17, (0, 0));
    let fixtures = vec![
        redirect(
            "ipv6 first fragment: no ports",
            packet::ipv6_fragment(CLIENT6, svc6(2), 0, true, &udp),
            2,
            label,
        ),
        redirect(
            "ipv6 later fragment: same flow",
            packet::ipv6_fragment(CLIENT6, svc6(2), 16, false, &[9; 8]),
            2,
            label,
        ),
        redirect(
            "ipv4 first fragment",
            packet::ipv4_fragment(CLIENT4, svc4(1), 0, true, &udp),
            1,
            label_v4,
        ),
        redirect(
            "ipv4 later fragment",
            packet::ipv4_fragment(CLIENT4, svc4(1), 16, false, &[9; 8]),
            1,
            label_v4,
        ),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::Fragment), 4);
    // The same table through the TC program.
    assert!(bench.runner.check_table_tc(&fixtures) > 0);
}

/// RFC 8200 / RFC 791: the IP header's length defines the packet. A packet to a service that
/// claims more than the frame holds is dropped; link-layer padding after it is left out of the
/// encapsulation; an atomic fragment (RFC 6946) is a whole packet and keeps its ports.
#[test]
fn length_lies_padding_and_atomic_fragments() {
    let bench = bench();
    let v6 = udp6(svc6(1), 10);
    let longer6 = with_payload_len(&v6, v6.len() - 54 + 8);
    let v4 = udp4(svc4(1), 10);
    let mut longer4 = v4.clone();
    let total = u16::from_be_bytes([v4[16], v4[17]]) + 8;
    longer4[16..18].copy_from_slice(&total.to_be_bytes());
    set_df(&mut longer4, true);
    let mut v4_df = v4.clone();
    set_df(&mut v4_df, true);
    let mut padded4 = v4_df.clone();
    padded4.extend_from_slice(&[0; 8]);
    let udp = [0x9c, 0x40, 0x01, 0xbb, 0, 12, 0, 0, 1, 2, 3, 4];
    let atomic = packet::ipv6_fragment(CLIENT6, svc6(2), 0, false, &udp);
    let label = flow_label(CLIENT6.into(), svc6(2).into(), 17, (40000, 443));
    let fixtures = vec![
        dropped("ipv6 payload length 8 bytes beyond the frame", longer6),
        dropped("ipv4 total length 8 bytes beyond the frame", longer4),
        fixture(
            "ipv4 with 8 bytes of padding: the padding stays behind",
            padded4,
            XdpAction::Redirect,
            encapsulated(&v4_df, 1, label4(svc4(1)), FORWARD),
        ),
        redirect(
            "ipv6 atomic fragment: steered by its ports",
            atomic,
            2,
            label,
        ),
    ];
    bench.runner.check_table(&fixtures);
    assert_eq!(bench.runner.reason_packets(Reason::LengthBeyondFrame), 2);
    assert_eq!(bench.runner.reason_packets(Reason::Fragment), 0);
    // The same table through the TC program.
    assert!(bench.runner.check_table_tc(&fixtures) > 0);
}

#[test]
fn every_truncation_passes_untouched() {
    let bench = bench();
    let v6 = udp6(svc6(1), 10);
    let v4 = udp4(svc4(1), 10);
    let mut fixtures = Vec::new();
    for cut in 0..40 {
        fixtures.push(untouched(
            &format!("ipv6 header cut at {cut}"),
            v6[..14 + cut].to_vec(),
        ));
    }
    for cut in 0..20 {
        fixtures.push(untouched(
            &format!("ipv4 header cut at {cut}"),
            v4[..14 + cut].to_vec(),
        ));
    }
    // The frame ends before the ports while the payload length still claims them: a length
    // lie, dropped.
    for cut in 0..4 {
        fixtures.push(dropped(
            &format!("udp ports to a service cut at {cut}"),
            v6[..14 + 40 + cut].to_vec(),
        ));
    }
    // Frame and payload length agree, but the ports do not fit: passed, counted truncated.
    for cut in 0..4 {
        fixtures.push(untouched(
            &format!("udp ports to a service, a {cut}-byte payload"),
            with_payload_len(&v6[..14 + 40 + cut], cut),
        ));
    }
    let tagged = Frame::ethernet()
        .vlan(5)
        .ipv6_udp(CLIENT6, svc6(1), (1, 2), b"x");
    for cut in 0..4 {
        fixtures.push(untouched(
            &format!("vlan tag cut at {cut}"),
            tagged[..14 + cut].to_vec(),
        ));
    }
    let hop_by_hop = with_hop_by_hop(&v6);
    for cut in 0..8 {
        let frame = hop_by_hop[..14 + 40 + cut].to_vec();
        // Until its length byte is there the header is malformed; after that, a length lie.
        fixtures.push(if cut < 2 {
            untouched(&format!("hop-by-hop header cut at {cut}"), frame)
        } else {
            dropped(&format!("hop-by-hop header cut at {cut}"), frame)
        });
    }
    bench.runner.check_table(&fixtures);
    let dp = bench.runner.dataplane_ref();
    // Headers cut before the parser has what it needs count as malformed: every IPv6 and
    // IPv4 cut, every VLAN cut, and hop-by-hop cuts before its length byte. Cuts after that
    // are length lies to a service (dropped); a payload too short for the ports is truncated.
    assert_eq!(
        dp.proto_stats(Program::Steer)
            .unwrap()
            .get(ProtoCounter::Malformed)
            .packets,
        40 + 20 + 4 + 2
    );
    assert_eq!(
        bench.runner.reason_packets(Reason::LengthBeyondFrame),
        4 + 6
    );
    assert_eq!(bench.runner.reason_packets(Reason::Truncated), 4);
    // The same table through the TC program, which counts in its own block: every frame it
    // saw once under one protocol, and nothing more under XDP's.
    let xdp = dp.proto_stats(Program::Steer).unwrap();
    let checked = bench.runner.check_table_tc(&fixtures);
    assert!(checked > 0);
    let dp = bench.runner.dataplane_ref();
    assert_eq!(dp.proto_stats(Program::Steer).unwrap(), xdp);
    let tc = dp.proto_stats(Seen::Steer(Hook::TcIngress)).unwrap();
    let partition = [
        ProtoCounter::Ipv6,
        ProtoCounter::Ipv4,
        ProtoCounter::Arp,
        ProtoCounter::OtherEthertype,
        ProtoCounter::Malformed,
    ];
    let seen: u64 = partition.iter().map(|&p| tc.get(p).packets).sum();
    assert_eq!(seen, u64::try_from(checked).unwrap());
    let egress = dp.proto_stats(Seen::Steer(Hook::TcEgress)).unwrap();
    assert!(egress.0.iter().all(|(_, c)| c.packets == 0), "{egress:?}");
}

#[test]
fn affinity_keeps_flows_and_icmp_errors_follow_them() {
    let mut bench = bench();
    let service = svc6(0x200);
    add_service(
        &mut bench,
        service,
        &ServiceConfig {
            id: 20,
            affinity: Some(None),
        },
        &[2],
    );
    let flow = udp6(service, 10);
    let label = label6(service);
    // Miss: the ring picks node 2 and the flow is remembered.
    bench
        .runner
        .check_table(&[redirect("affinity miss: ring", flow.clone(), 2, label)]);
    // The ring now says node 1; the flow stays on node 2, and so does an ICMP error about it.
    bench.runner.dataplane().publish_ring(20, &[1]).unwrap();
    let quoted = Frame::ethernet().ipv6_udp(service, CLIENT6, (443, 40000), &[1; 16]);
    let mut error = packet::icmp6_error(
        ROUTER_MAC,
        CLIENT_MAC,
        sid("2001:db8:77::1"),
        service,
        etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        ),
        &quoted[14..],
    );
    error[14 + 7] = 60; // arrives after a few hops
    let error_label = flow_label(CLIENT6.into(), service.into(), 17, (40000, 443));
    bench.runner.check_table(&[
        redirect("affinity hit: stays on its node", flow.clone(), 2, label),
        redirect("icmp error follows its flow", error.clone(), 2, error_label),
        redirect(
            "new flow takes the new ring",
            udp6_from(service, 40009),
            1,
            flow_label(CLIENT6.into(), service.into(), 17, (40009, 443)),
        ),
    ]);
    // Node 2 dies: its flows re-hash onto the ring.
    bench
        .runner
        .dataplane()
        .set_node_state(2, NodeState::Down)
        .unwrap();
    bench
        .runner
        .check_table(&[redirect("dead node: flow re-hashed", flow, 1, label)]);
    assert_eq!(bench.runner.reason_packets(Reason::IcmpErrorFollowed), 1);
}

/// The data plane stamps flows with the kernel's tick counter and the agent converts the
/// service's timeout into ticks: the two must agree, with real time passing.
#[test]
fn affinity_idles_out_on_the_kernel_tick_clock() {
    let mut bench = bench();
    let service = svc6(0x201);
    add_service(
        &mut bench,
        service,
        &ServiceConfig {
            id: 21,
            affinity: Some(Some(Duration::from_secs(1))),
        },
        &[2],
    );
    let flow = udp6(service, 10);
    let label = label6(service);
    let key = flow_key(service, 40_000);
    let clock = TickClock::kernel().unwrap();
    let last_seen = |bench: &mut DutRunner| {
        let entry = bench.runner.dataplane().flow(&key).unwrap();
        entry.expect("the flow is remembered").last_seen_jiffies
    };
    bench
        .runner
        .check_table(&[redirect("affinity miss: ring", flow.clone(), 2, label)]);
    assert!(
        last_seen(&mut bench).abs_diff(clock.now()) <= 2,
        "bpf_jiffies64 and the agent's tick clock disagree"
    );
    bench.runner.dataplane().publish_ring(21, &[1]).unwrap();
    // Past the refresh interval (a quarter of the timeout), a hit renews the entry ...
    std::thread::sleep(Duration::from_millis(300));
    let stamped = last_seen(&mut bench);
    bench
        .runner
        .check_table(&[redirect("hit after 0.3 s", flow.clone(), 2, label)]);
    assert!(
        last_seen(&mut bench) > stamped,
        "the hit did not refresh its entry"
    );
    // ... so 1.1 s after the first packet, 0.8 s after the last, the flow still holds.
    std::thread::sleep(Duration::from_millis(800));
    bench
        .runner
        .check_table(&[redirect("hit 0.8 s after the last", flow.clone(), 2, label)]);
    // Idle past the timeout: the ring decides again.
    std::thread::sleep(Duration::from_millis(1100));
    bench
        .runner
        .check_table(&[redirect("idle 1.1 s: the ring again", flow, 1, label)]);
}

/// A node marked down (one write, before any new ring) loses its flows to the live nodes of
/// the same ring at once: they re-hash (`ring_slot`), the flows of the live nodes stay.
#[test]
fn a_down_nodes_flows_rehash_over_the_ring_at_once() {
    let mut bench = bench();
    let service = svc6(0x202);
    // Slot 0 node 2, slots 1-3 node 1.
    add_service(
        &mut bench,
        service,
        &ServiceConfig {
            id: 22,
            affinity: None,
        },
        &[2, 1, 1, 1],
    );
    let hash = |port: u16| flow_hash(&flow_key(service, port), 0);
    let label = |port: u16| hash(port) & 0xf_ffff;
    let on_node2 = (40_000..41_000).find(|&p| hash(p) % 4 == 0).unwrap();
    let on_node1 = (40_000..41_000).find(|&p| hash(p) % 4 == 1).unwrap();
    bench.runner.check_table(&[
        redirect(
            "its slot: node 2",
            udp6_from(service, on_node2),
            2,
            label(on_node2),
        ),
        redirect(
            "its slot: node 1",
            udp6_from(service, on_node1),
            1,
            label(on_node1),
        ),
    ]);
    bench
        .runner
        .dataplane()
        .set_node_state(2, NodeState::Down)
        .unwrap();
    // The first re-hashed slot that names node 1 decides (three of four slots do).
    let tries = (1..RING_ATTEMPTS).map(|a| ring_slot(hash(on_node2), a, 4));
    assert!(tries.clone().any(|slot| slot != 0), "pick another port");
    bench.runner.check_table(&[
        redirect(
            "node 2 down: re-hashed to node 1",
            udp6_from(service, on_node2),
            1,
            label(on_node2),
        ),
        redirect(
            "node 1's flow stays",
            udp6_from(service, on_node1),
            1,
            label(on_node1),
        ),
    ]);
    assert_eq!(bench.runner.reason_packets(Reason::DownNodeRehashed), 1);
    // Every node of the ring down: nothing to re-hash to, the kernel gets the packet.
    bench
        .runner
        .dataplane()
        .set_node_state(1, NodeState::Down)
        .unwrap();
    bench
        .runner
        .check_table(&[untouched("all down: passed", udp6_from(service, on_node1))]);
    assert_eq!(bench.runner.reason_packets(Reason::NoUsableNode), 1);
}

/// A service on address `service` (every port and protocol), with its ring.
fn add_service(bench: &mut DutRunner, service: Ipv6Addr, config: &ServiceConfig, ring: &[u32]) {
    let dp = bench.runner.dataplane();
    let addr = ServiceAddr {
        addr: service.into(),
        port: None,
    };
    dp.set_service(&addr, config).unwrap();
    dp.publish_ring(config.id, ring).unwrap();
}

fn flow_key(service: Ipv6Addr, source_port: u16) -> FlowKey {
    FlowKey {
        src: CLIENT6.octets(),
        dst: service.octets(),
        src_port: source_port.to_be_bytes(),
        dst_port: 443u16.to_be_bytes(),
        protocol: 17,
        _pad: [0; 3],
    }
}

fn udp6_from(dst: Ipv6Addr, port: u16) -> Vec<u8> {
    Frame::ethernet().ipv6_udp(CLIENT6, dst, (port, 443), &[0xab; 10])
}

/// `frame` (Ethernet + IPv6) with an 8-byte hop-by-hop options header (`PadN`) before its
/// payload.
fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..14 + 40].to_vec();
    let next = out[14 + 6];
    out[14 + 6] = 0;
    let payload_len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[14 + 40..]);
    out
}

#[test]
fn extension_headers_and_ipv4_icmp_errors() {
    let bench = bench();
    let hop_by_hop = with_hop_by_hop(&udp6(svc6(2), 10));
    // An ICMPv4 Port Unreachable about a reply from the service: steered like the flow.
    let quoted = Frame::ethernet().ipv4_udp(svc4(1), CLIENT4, (443, 40000), &[1; 16]);
    let mut error = Vec::new();
    etherparse::PacketBuilder::ipv4([203, 0, 113, 50], svc4(1).octets(), 60)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, &quoted[14..])
        .unwrap();
    let error = packet::ethernet(&error, 0x0800);
    bench.runner.check_table(&[
        redirect(
            "ports found after a hop-by-hop header",
            hop_by_hop,
            2,
            label6(svc6(2)),
        ),
        redirect("icmpv4 error follows its flow", error, 1, label4(svc4(1))),
    ]);
}

/// A TCP SYN with `mss` (and a window scale after it), from the client to `dst`.
fn syn(dst: IpAddr, mss: u16) -> Vec<u8> {
    use etherparse::{PacketBuilder, TcpOptionElement};
    let options = [
        TcpOptionElement::MaximumSegmentSize(mss),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC);
    let builder = match dst {
        IpAddr::V6(dst) => builder.ipv6(CLIENT6.octets(), dst.octets(), 64),
        IpAddr::V4(dst) => builder.ipv4(CLIENT4.octets(), dst.octets(), 64),
    };
    let mut out = Vec::new();
    builder
        .tcp(40000, 443, 1, 65535)
        .syn()
        .options(&options)
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// Through the TC program a steered SYN offers no larger segments than fit the interface's
/// MTU (1500) once encapsulated (node 1: 64 bytes): the MSS is lowered and the TCP checksum
/// with it, byte for byte what a SYN sent with that MSS would be; a smaller MSS stays.
/// `cpn_steer` in XDP leaves it (its clients learn the MTU from Packet Too Big).
#[test]
fn tc_clamps_the_mss_of_a_steered_syn() {
    let bench = bench();
    let label = |dst: IpAddr| flow_label(CLIENT6.into(), dst, 6, (40000, 443));
    let label4 = |dst: IpAddr| flow_label(CLIENT4.into(), dst, 6, (40000, 443));
    let v6 = IpAddr::V6(svc6(1));
    let v4 = IpAddr::V4(svc4(1));
    let clamped = |name: &str, dst: IpAddr, mss: u16, sent: u16, label: u32| {
        fixture(
            name,
            syn(dst, mss),
            XdpAction::Redirect,
            encapsulated(&syn(dst, sent), 1, label, FORWARD),
        )
    };
    let fixtures = [
        clamped(
            "ipv6 syn, mss 1440",
            v6,
            1440,
            1500 - 64 - 40 - 20,
            label(v6),
        ),
        clamped(
            "ipv4 syn, mss 1460",
            v4,
            1460,
            1500 - 64 - 20 - 20,
            label4(v4),
        ),
        clamped("ipv6 syn, mss 1200: fits", v6, 1200, 1200, label(v6)),
    ];
    assert_eq!(bench.runner.check_table_tc(&fixtures), 3);
    // XDP sends the SYN as it came.
    bench.runner.check_table(&[redirect(
        "ipv6 syn through XDP",
        syn(v6, 1440),
        1,
        label(v6),
    )]);
}
