//! The device under test for fixtures: one namespace with deterministic interfaces, addresses,
//! routes and neighbours, so that `bpf_fib_lookup` inside `BPF_PROG_TEST_RUN` gives the same
//! answers on every machine.
//!
//! ```text
//!   peer:eth0 ── eth0 [dut] eth1 ── peer:eth1
//!   client side            core side
//!   2001:db8:1::fe/64      2001:db8:ff::1/64   fc00::/16 via 2001:db8:ff::2 (resolved)
//!   192.0.2.254/24         10.255.0.1/24       eth2 (mtu 1300): fc00:1300::/32 via 2001:db8:fe::2
//!                                              fc00:dead::/32 via 2001:db8:ff::99 (unresolved)
//!   lo: 2001:db8:cafe::1 (a local service), 198.51.100.1
//!   table 100: 2001:db8:100::/48 via 2001:db8:ff::2 (main has 2001:db8:200::/48 instead)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use cpn_agent::dataplane::LoadOptions;

use crate::{
    fixture::Runner,
    lab::{Lab, NetnsGuard},
    packet::{CLIENT_MAC, ROUTER_MAC},
};

/// MAC of dut:eth1, the source of everything forwarded towards the core.
pub const CORE_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xfe];
/// MAC of the core next hop (peer:eth1).
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const NEXT_HOP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);
pub const NEXT_HOP4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
pub const LOCAL_SERVICE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
pub const LOCAL_SERVICE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// A destination routed only in table 100 (via the core next hop).
pub const TABLE_100_ONLY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 5);
/// A destination routed only in the main table (via the core next hop).
pub const MAIN_ONLY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 5);
/// The routing table that holds `TABLE_100_ONLY6`.
pub const TABLE_100: u32 = 100;
/// MTU of dut:eth2, the way to `fc00:1300::/32`.
pub const SMALL_MTU: u16 = 1300;

/// The lab and the interface indexes fixtures need.
#[derive(Debug)]
pub struct Dut {
    pub lab: Lab,
    pub eth0: u32,
    pub eth1: u32,
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Dut {
    pub fn new() -> Result<Self> {
        let lab = Lab::builder("dut")
            .node("dut")
            .node("peer")
            .link(("dut", "eth0"), ("peer", "eth0"))
            .link(("dut", "eth1"), ("peer", "eth1"))
            .link(("dut", "eth2"), ("peer", "eth2"))
            .build()?;
        let dut = lab.node("dut")?;
        let peer = lab.node("peer")?;
        dut.run(&["ip", "link", "set", "eth0", "address", &mac(ROUTER_MAC)])?;
        dut.run(&["ip", "link", "set", "eth1", "address", &mac(CORE_MAC)])?;
        peer.run(&["ip", "link", "set", "eth1", "address", &mac(NEXT_HOP_MAC)])?;
        peer.run(&["ip", "link", "set", "eth0", "address", &mac(CLIENT_MAC)])?;
        dut.enable_forwarding()?;
        dut.add_address("eth0", "2001:db8:1::fe/64")?;
        dut.add_address("eth0", "192.0.2.254/24")?;
        dut.add_address("eth1", "2001:db8:ff::1/64")?;
        dut.add_address("eth1", "10.255.0.1/24")?;
        dut.add_address("lo", &format!("{LOCAL_SERVICE6}/128"))?;
        dut.add_address("lo", &format!("{LOCAL_SERVICE4}/32"))?;
        for (addr, lladdr, dev) in [
            (NEXT_HOP6.to_string(), NEXT_HOP_MAC, "eth1"),
            (NEXT_HOP4.to_string(), NEXT_HOP_MAC, "eth1"),
            (CLIENT6.to_string(), CLIENT_MAC, "eth0"),
            (CLIENT4.to_string(), CLIENT_MAC, "eth0"),
        ] {
            dut.run(&[
                "ip",
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac(lladdr),
                "nud",
                "permanent",
                "dev",
                dev,
            ])?;
        }
        dut.add_route(&["fc00::/16", "via", "2001:db8:ff::2", "dev", "eth1"])?;
        // The small-MTU path is a device MTU, as most real ones are.
        let small_mtu = SMALL_MTU.to_string();
        dut.run(&[
            "ip",
            "link",
            "set",
            "eth2",
            "address",
            &mac(CORE_MAC),
            "mtu",
            &small_mtu,
        ])?;
        dut.add_address("eth2", "2001:db8:fe::1/64")?;
        let next_hop = mac(NEXT_HOP_MAC);
        dut.run(&[
            "ip",
            "neigh",
            "replace",
            "2001:db8:fe::2",
            "lladdr",
            &next_hop,
            "nud",
            "permanent",
            "dev",
            "eth2",
        ])?;
        dut.add_route(&["fc00:1300::/32", "via", "2001:db8:fe::2", "dev", "eth2"])?;
        dut.add_route(&["fc00:dead::/32", "via", "2001:db8:ff::99", "dev", "eth1"])?;
        dut.add_route(&["203.0.113.0/24", "via", "10.255.0.2", "dev", "eth1"])?;
        dut.add_route(&["2001:db8:200::/48", "via", "2001:db8:ff::2", "dev", "eth1"])?;
        dut.add_route(&[
            "2001:db8:100::/48",
            "via",
            "2001:db8:ff::2",
            "dev",
            "eth1",
            "table",
            "100",
        ])?;
        let eth0 = dut.ifindex("eth0")?;
        let eth1 = dut.ifindex("eth1")?;
        Ok(Self { lab, eth0, eth1 })
    }

    /// Enters the dut's namespace on this thread (FIB lookups of test runs happen there).
    pub fn enter(&self) -> Result<NetnsGuard> {
        self.lab.node("dut")?.enter()
    }
}

/// A fresh `Dut`, this thread inside it, and a data plane whose test packets arrive on the
/// interface `arriving_on` picks. Fields drop in order: leave the namespace, then remove it.
#[derive(Debug)]
pub struct DutRunner {
    pub runner: Runner,
    _inside: NetnsGuard,
    pub dut: Dut,
}

impl DutRunner {
    pub fn new(arriving_on: impl FnOnce(&Dut) -> u32) -> Result<Self> {
        Self::with_runner(arriving_on, Runner::new)
    }

    /// [`DutRunner::new`] with a data plane loaded with `options`.
    pub fn with_options(
        arriving_on: impl FnOnce(&Dut) -> u32,
        options: &LoadOptions,
    ) -> Result<Self> {
        Self::with_runner(arriving_on, || Runner::with_options(options))
    }

    fn with_runner(
        arriving_on: impl FnOnce(&Dut) -> u32,
        runner: impl FnOnce() -> Result<Runner>,
    ) -> Result<Self> {
        let dut = Dut::new()?;
        let inside = dut.enter()?;
        let runner = runner()?.arriving_on(arriving_on(&dut));
        Ok(Self {
            runner,
            _inside: inside,
            dut,
        })
    }
}
