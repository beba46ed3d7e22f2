//! Fixture tests: packets through `BPF_PROG_TEST_RUN`, verdict, bytes and counters checked.

use std::net::{Ipv4Addr, Ipv6Addr};

use cpn_agent::dataplane::{Hook, Program};
use cpn_common::stats::{Counter, ProtoCounter};
use cpn_tests::{
    fixture::{Fixture, Outcome, Runner, XdpAction},
    packet::Frame,
};

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const SERVICE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVICE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A packet and the counters it must move (besides nothing else).
struct Case {
    name: &'static str,
    packet: Vec<u8>,
    counts_as: ProtoCounter,
    vlan_tagged: bool,
}

fn cases() -> Vec<Case> {
    let v6 = Frame::ethernet().ipv6_udp(CLIENT6, SERVICE6, (40000, 443), b"hello");
    let v4 = Frame::ethernet().ipv4_udp(CLIENT4, SERVICE4, (40000, 443), b"hello");
    let mut v6_wrong_version = v6.clone();
    v6_wrong_version[14] = 0x45;
    let mut v4_ihl_4 = v4.clone();
    v4_ihl_4[14] = 0x44;
    let mut v4_options_cut = v4[..14 + 24].to_vec();
    v4_options_cut[14] = 0x4f; // IHL 15: 60 bytes of header announced, 24 present
    let mut lldp = Frame::ethernet().arp_request(CLIENT4, SERVICE4);
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    let vlan_v6 = Frame::ethernet()
        .vlan(100)
        .ipv6_udp(CLIENT6, SERVICE6, (1, 2), b"x");
    let case = |name, packet, counts_as, vlan_tagged| Case {
        name,
        packet,
        counts_as,
        vlan_tagged,
    };
    vec![
        case("ipv6 udp", v6.clone(), ProtoCounter::Ipv6, false),
        case("ipv4 udp", v4.clone(), ProtoCounter::Ipv4, false),
        case("vlan ipv6", vlan_v6.clone(), ProtoCounter::Ipv6, true),
        case(
            "vlan ipv4",
            Frame::ethernet()
                .vlan(4095)
                .ipv4_udp(CLIENT4, SERVICE4, (1, 2), b"x"),
            ProtoCounter::Ipv4,
            true,
        ),
        case(
            "arp",
            Frame::ethernet().arp_request(CLIENT4, SERVICE4),
            ProtoCounter::Arp,
            false,
        ),
        case(
            "vlan arp",
            Frame::ethernet().vlan(7).arp_request(CLIENT4, SERVICE4),
            ProtoCounter::Arp,
            true,
        ),
        case("lldp ethertype", lldp, ProtoCounter::OtherEthertype, false),
        case(
            "ipv6 header cut at 39 bytes",
            v6[..14 + 39].to_vec(),
            ProtoCounter::Malformed,
            false,
        ),
        case(
            "ipv4 header cut at 19 bytes",
            v4[..14 + 19].to_vec(),
            ProtoCounter::Malformed,
            false,
        ),
        case(
            "ipv6 ethertype, version 4",
            v6_wrong_version,
            ProtoCounter::Malformed,
            false,
        ),
        case("ipv4 ihl 4", v4_ihl_4, ProtoCounter::Malformed, false),
        case(
            "ipv4 options cut short",
            v4_options_cut,
            ProtoCounter::Malformed,
            false,
        ),
        case(
            "vlan tag cut short",
            vlan_v6[..16].to_vec(),
            ProtoCounter::Malformed,
            true,
        ),
        case(
            "ethernet header only",
            v6[..14].to_vec(),
            ProtoCounter::Malformed,
            false,
        ),
    ]
}

/// Each program passes every packet untouched and moves exactly the counters it names.
fn counts_every_packet_once(program: Program) {
    let runner = Runner::new().expect("load the data plane");
    for case in cases() {
        let before = runner.dataplane_stats(program);
        runner
            .check(&Fixture {
                name: case.name.into(),
                program,
                input: case.packet.clone(),
                expect: Outcome {
                    action: XdpAction::Pass,
                    output: case.packet.clone(),
                },
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let after = runner.dataplane_stats(program);
        let len = case.packet.len() as u64;
        for counter in ProtoCounter::ALL {
            let moved = counter == case.counts_as
                || (counter == ProtoCounter::VlanTagged && case.vlan_tagged);
            let expected = if moved {
                Counter {
                    packets: 1,
                    bytes: len,
                }
            } else {
                Counter::default()
            };
            let delta = Counter {
                packets: after.get(counter).packets - before.get(counter).packets,
                bytes: after.get(counter).bytes - before.get(counter).bytes,
            };
            assert_eq!(
                delta,
                expected,
                "{program}, case `{}`, counter {}",
                case.name,
                counter.name()
            );
        }
    }
}

#[test]
fn steer_counts_every_packet_once() {
    counts_every_packet_once(Program::Steer);
}

#[test]
fn endpoint_counts_every_packet_once() {
    counts_every_packet_once(Program::Endpoint);
}

#[test]
fn a_wrong_expectation_fails_with_a_hex_diff() {
    let runner = Runner::new().expect("load the data plane");
    let packet = Frame::ethernet().ipv6_udp(CLIENT6, SERVICE6, (1, 2), b"payload");
    let mut wrong = packet.clone();
    wrong[20] ^= 0xff;
    let error = runner
        .check(&Fixture {
            name: "deliberately wrong".into(),
            program: Program::Steer,
            input: packet,
            expect: Outcome {
                action: XdpAction::Drop,
                output: wrong,
            },
        })
        .expect_err("the expectation is wrong");
    let text = error.to_string();
    assert!(text.contains("action: expected Drop, got Pass"), "{text}");
    assert!(text.contains("  - 0010"), "{text}");
    assert!(text.contains("^^"), "{text}");
}

/// Every program, XDP and TC, passes the verifier on this kernel; prints their size and the
/// verifier's work (run with `--nocapture` to see it): the verifier gives up at 1 000 000
/// processed instructions.
#[test]
fn programs_load_and_report_their_verified_size() {
    let mut runner = Runner::new().expect("load the data plane");
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        let info = runner
            .dataplane()
            .load_tc(hook)
            .expect("load the TC program")
            .info()
            .expect("program info");
        let size = info.size_translated().expect("size reported") / 8;
        let verified = info
            .verified_instruction_count()
            .expect("verified_insns reported");
        eprintln!("{hook}: {size} instructions; the verifier processed {verified}");
        assert!(
            size > 100 && verified >= size,
            "{hook}: {size} / {verified}"
        );
    }
    for program in Program::ALL {
        let (size, verified) = runner
            .dataplane_ref()
            .verified_size(program)
            .expect("program info");
        let (size, verified) = (
            size.expect("size reported"),
            verified.expect("verified_insns reported"),
        );
        eprintln!("{program}: {size} instructions; the verifier processed {verified}");
        assert!(
            size > 100 && verified >= size,
            "{program}: {size} / {verified}"
        );
    }
}
