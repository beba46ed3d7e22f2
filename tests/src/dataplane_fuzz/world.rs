//! The data plane the fuzzer runs packets through: the fixtures' namespace (`Dut`, with real
//! routes, neighbours, a small-MTU path, an unresolved next hop, a second table) and maps as an
//! agent fills them: services of both families, with and without ports and affinity; nodes with
//! one to six segments, reduced or not, one down, one whose first segment has no route, one
//! with a cached next hop; a local SID of every behaviour, behind an SR domain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use cpn_agent::dataplane::{
    Hook, IcmpRateLimit, LoadOptions, MacAddr, NextHop, Node, NodeState, ServiceAddr,
    ServiceConfig, SidBehavior,
};
use cpn_common::maps::MAX_SIDS;

use super::packets::Pools;
use crate::{
    dut::{
        CLIENT4, CLIENT6, CORE_MAC, Dut, LOCAL_SERVICE4, LOCAL_SERVICE6, MAIN_ONLY6, NEXT_HOP_MAC,
        NEXT_HOP4, NEXT_HOP6, TABLE_100, TABLE_100_ONLY6,
    },
    fixture::Runner,
    lab::NetnsGuard,
};

/// The source of every encapsulation.
pub const ENCAP_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

fn a6(s: &str) -> Ipv6Addr {
    s.parse().expect("a literal IPv6 address")
}

fn svc6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, last)
}

fn svc4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// Node id → first segments (the last is the node's decapsulating SID), reduced, state.
fn nodes() -> Vec<(u32, Vec<Ipv6Addr>, bool, NodeState)> {
    let six = (1..=u16::try_from(MAX_SIDS).unwrap_or(6))
        .map(|i| Ipv6Addr::new(0xfc00, 3, 0, 0, 0, 0, 0, i))
        .collect();
    let active = NodeState::Active;
    vec![
        (1, vec![a6("fc00:1::d6")], false, active),
        (2, vec![a6("fc00:2::1"), a6("fc00:2::d6")], false, active),
        (3, six, false, active),
        (4, vec![a6("fc00:4::d6")], true, active),
        (
            5,
            vec![a6("fc00:5::1"), a6("fc00:5::2"), a6("fc00:5::d6")],
            true,
            active,
        ),
        // Through the 1300-byte link: Packet Too Big and Fragmentation Needed.
        (6, vec![a6("fc00:1300::d6")], false, active),
        // A next hop whose neighbour is unresolved: the kernel forwards.
        (7, vec![a6("fc00:dead::d6")], false, active),
        // No route at all.
        (8, vec![a6("fd99::d6")], false, active),
        (9, vec![a6("fc00:9::d6")], false, NodeState::Down),
        // A cached next hop with a smaller MTU than the link's.
        (10, vec![a6("fc00:a::d6")], false, active),
    ]
}

/// Service address → (id, affinity, ring).
fn services() -> Vec<(ServiceAddr, u32, bool, Vec<u32>)> {
    let any = |addr: IpAddr| ServiceAddr { addr, port: None };
    vec![
        (any(svc6(1).into()), 0, false, vec![1]),
        (any(svc6(2).into()), 1, true, vec![2, 3]),
        (any(svc6(3).into()), 2, false, vec![3]),
        (any(svc6(4).into()), 3, false, vec![4, 5]),
        (any(svc6(6).into()), 4, false, vec![6]),
        (any(svc6(7).into()), 5, false, vec![7]),
        (any(svc6(8).into()), 6, false, vec![8]),
        // A ring whose only node is down, one with a down node among live ones, an empty one.
        (any(svc6(9).into()), 7, false, vec![9]),
        (any(svc6(10).into()), 8, true, vec![9, 1, 10]),
        (any(svc6(11).into()), 9, false, vec![]),
        (any(svc4(1).into()), 10, false, vec![1]),
        (any(svc4(2).into()), 11, true, vec![3, 5]),
        (any(svc4(6).into()), 12, false, vec![6]),
        (any(svc4(7).into()), 13, false, vec![10, 7]),
        (
            ServiceAddr {
                addr: svc6(0x100).into(),
                port: Some((6, 443)),
            },
            14,
            true,
            vec![2],
        ),
        (any(svc6(0x100).into()), 15, false, vec![1]),
        (
            ServiceAddr {
                addr: svc4(0x64).into(),
                port: Some((17, 53)),
            },
            16,
            false,
            vec![4],
        ),
    ]
}

/// Local SIDs (at the endpoint) and their behaviours; `eth0`/`eth1` are the dut's.
fn sids(eth0: u32, eth1: u32) -> Vec<(Ipv6Addr, SidBehavior)> {
    vec![
        (a6("fc00:e::1"), SidBehavior::End),
        (
            a6("fc00:e::2"),
            SidBehavior::EndX {
                nexthop: NEXT_HOP6,
                oif: eth1,
            },
        ),
        (a6("fc00:e::d6"), SidBehavior::EndDt6 { table: 0 }),
        (a6("fc00:e::d4"), SidBehavior::EndDt4 { table: 0 }),
        (a6("fc00:e::d46"), SidBehavior::EndDt46 { table: 0 }),
        (
            a6("fc00:e::c6"),
            SidBehavior::EndDx6 {
                nexthop: CLIENT6,
                oif: eth0,
            },
        ),
        (
            a6("fc00:e::c4"),
            SidBehavior::EndDx4 {
                nexthop: CLIENT4,
                oif: eth0,
            },
        ),
        (a6("fc00:e::100"), SidBehavior::EndDt6 { table: TABLE_100 }),
        (a6("fc00:e::ff"), SidBehavior::EndDt6 { table: 255 }),
        (a6("fc00:e::46"), SidBehavior::EndDt46 { table: TABLE_100 }),
    ]
}

/// The dut, this thread inside it, and two data planes: `steer` receiving on the client side
/// (its XDP and TC ingress programs), `endpoint` on the core side. Fields drop in order.
#[derive(Debug)]
pub struct World {
    pub steer: Runner,
    pub endpoint: Runner,
    _inside: NetnsGuard,
    dut: Dut,
}

impl World {
    pub fn new() -> Result<Self> {
        let dut = Dut::new().context("the fuzz namespace")?;
        let inside = dut.enter()?;
        // Without the rate limit: every error the programs would send is built and checked
        // (the limit is a counter of its own, and would hide all but the first few).
        let options = LoadOptions {
            icmp: IcmpRateLimit::OFF,
            ..LoadOptions::default()
        };
        let mut steer = Runner::with_options(&options)?.arriving_on(dut.eth0);
        let mut endpoint = Runner::with_options(&options)?.arriving_on(dut.eth1);
        fill_steering(&mut steer, dut.eth1)?;
        let dp = endpoint.dataplane();
        // An SR domain (RFC 8754 §5.1) the pools' sources are partly outside of.
        let domain: Vec<ipnet::Ipv6Net> = ["2001:db8::/32", "fc00::/16"]
            .iter()
            .map(|p| p.parse().expect("a literal prefix"))
            .collect();
        dp.set_sr_domain(Some(&domain))?;
        for (index, (sid, behavior)) in (0..).zip(sids(dut.eth0, dut.eth1)) {
            dp.set_sid(sid, behavior, index)?;
        }
        Ok(Self {
            steer,
            endpoint,
            _inside: inside,
            dut,
        })
    }

    /// The addresses worth sending packets from and to.
    pub fn pools(&self) -> Pools {
        let (eth0, eth1) = (self.dut.eth0, self.dut.eth1);
        let mut v6: Vec<Ipv6Addr> = services()
            .iter()
            .filter_map(|(s, ..)| match s.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect();
        v6.extend(sids(eth0, eth1).iter().map(|(sid, _)| *sid));
        v6.extend(nodes().into_iter().flat_map(|(_, segments, ..)| segments));
        v6.extend([
            CLIENT6,
            NEXT_HOP6,
            LOCAL_SERVICE6,
            TABLE_100_ONLY6,
            MAIN_ONLY6,
            ENCAP_SRC,
            a6("2001:db8:1::fe"),
            a6("fe80::1"),
            a6("ff02::1"),
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped(),
        ]);
        let mut v4: Vec<Ipv4Addr> = services()
            .iter()
            .filter_map(|(s, ..)| match s.addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        v4.extend([
            CLIENT4,
            NEXT_HOP4,
            LOCAL_SERVICE4,
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(192, 0, 2, 254),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
        ]);
        Pools {
            v6,
            v4,
            ports: vec![443, 53],
        }
    }
}

fn fill_steering(runner: &mut Runner, eth1: u32) -> Result<()> {
    let dp = runner.dataplane();
    dp.load_tc(Hook::TcIngress)?;
    for (id, segments, reduced, state) in nodes() {
        let node = Node {
            segments,
            encap_src: ENCAP_SRC,
            reduced,
            state,
        };
        dp.set_node(id, &node)?;
    }
    dp.set_nexthop(
        10,
        Some(NextHop {
            ifindex: eth1,
            mtu: 1400,
            neighbour: NEXT_HOP6,
            dst_mac: MacAddr(NEXT_HOP_MAC),
            src_mac: MacAddr(CORE_MAC),
        }),
    )?;
    for (addr, id, affinity, ring) in services() {
        let config = ServiceConfig {
            id,
            affinity: affinity.then_some(None),
        };
        dp.set_service(&addr, &config)?;
        dp.publish_ring(id, &ring)?;
    }
    Ok(())
}
