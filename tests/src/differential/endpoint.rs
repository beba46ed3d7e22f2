//! The endpoint topology, built once with Linux `seg6local` routes as the DUT and once with
//! `cpn_endpoint` (started by the real agent) holding the same SIDs:
//!
//! ```text
//!   src eth0 ──── eth0 [dut] eth1 ──── eth0 nh1   core next hop: fc00:2::/32, 2001:db8:20::/48,
//!   2001:db8:1::1   2001:db8:1::2        2001:db8:2::2   10.0.20.0/24 (main), the default route
//!   10.0.1.1        10.0.1.2  eth2 ──── eth0 nh2   End.X / End.DX6 / End.DX4 next hop;
//!                                        2001:db8:3::2   table 100: 2001:db8:30::/48, 10.0.30.0/24
//!                                        10.0.3.2
//!   dut lo: 2001:db8:cafe::1, 10.0.255.1 (a UDP service on port 7777)
//!   clients (one address per case): 2001:db8:100::/48 and 10.100.0.0/16, routed back to src
//! ```
//! dut has permanent neighbours for every next hop (no neighbour discovery races), forwarding
//! and `seg6_enabled` on; src, nh1 and nh2 run an `XDP_PASS` program on their veths so that
//! frames cpn redirects to them or sends back with `XDP_TX` are received (veth NAPI).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::{
    capture::{self, RawSocket},
    outcome::{self, Outcome},
    wire,
};
use crate::lab::{Lab, Node, wait_for};

pub const SRC_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 1];
pub const DUT_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 2];
const DUT_ETH1_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 2, 1];
const NH1_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 2, 2];
const DUT_ETH2_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 3, 1];
const NH2_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 3, 2];

pub const NH1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
pub const NH2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);
pub const NH2_4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);

/// The UDP service on dut's `lo`.
pub const SERVICE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
pub const SERVICE4: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);
pub const SERVICE_PORT: u16 = 7777;
/// Only in the main table (via nh1).
pub const MAIN_ONLY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 5);
pub const MAIN_ONLY4: Ipv4Addr = Ipv4Addr::new(10, 0, 20, 5);
/// Only in table 100 (via nh2).
pub const TABLE100_ONLY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x30, 0, 0, 0, 0, 5);
pub const TABLE100_ONLY4: Ipv4Addr = Ipv4Addr::new(10, 0, 30, 5);
/// Routed nowhere: inner destinations of End.DX* (the next hop is the SID's).
pub const NOWHERE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x40, 0, 0, 0, 0, 5);
pub const NOWHERE4: Ipv4Addr = Ipv4Addr::new(10, 0, 40, 5);
/// Routed nowhere either, but dut has a neighbour entry for it on eth2 (nh2's MAC address).
pub const RESOLVABLE4: Ipv4Addr = Ipv4Addr::new(10, 0, 40, 6);
/// Next segments after the DUT's SIDs (`fc00:2::/32` goes to nh1).
pub const NEXT: Ipv6Addr = Ipv6Addr::new(0xfc00, 2, 0, 0, 0, 0, 0, 1);
pub const NEXT2: Ipv6Addr = Ipv6Addr::new(0xfc00, 2, 0, 0, 0, 0, 0, 2);

/// The DUT's SIDs.
pub mod sid {
    use std::net::Ipv6Addr;
    pub const END: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xe);
    /// End.X towards nh2 (not where the FIB sends the next segment, so End.X shows).
    pub const END_X: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xe1);
    /// End.DT6 in table 255 (local).
    pub const DT6_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xd6);
    /// End.DT6 in table 100.
    pub const DT6_T100: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0x6100);
    /// End.DT4 in table 100 (Linux: `vrftable 100`).
    pub const DT4_T100: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xd4);
    pub const DX4: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xa4);
    pub const DX6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xd, 0, 0, 0, 0, 0, 0xa6);
}

/// Who processes the SIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dut {
    /// The kernel's `seg6local` routes.
    Linux,
    /// `cpn_endpoint`, configured by `cpn-agent`.
    Cpn,
}

impl Dut {
    pub fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Cpn => "cpn",
        }
    }
}

/// The addresses a case sends from: ICMP errors come back to them, forwarded and
/// decapsulated packets carry them, so every observation is tied to its case.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub id: u16,
    pub v6: Ipv6Addr,
    pub v4: Ipv4Addr,
}

impl Client {
    pub fn new(id: u16) -> Self {
        let [hi, lo] = id.to_be_bytes();
        Self {
            id,
            v6: Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, id),
            v4: Ipv4Addr::new(10, 100, hi, lo),
        }
    }

    /// The UDP payload that identifies this case when delivered.
    pub fn tag(&self) -> String {
        format!("case-{}", self.id)
    }
}

/// How cpn's outcome is judged.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Equal to Linux's.
    Same,
    /// A deliberate difference: cpn must show `cpn`; Linux's outcome is recorded.
    Differs {
        rfc: &'static str,
        why: &'static str,
        cpn: Vec<Outcome>,
    },
    /// Equal to Linux's when the reference can be built; on a kernel without it (End.DT4 needs
    /// `CONFIG_NET_VRF`), cpn must show one of `cpn`, read from `rfc`.
    SameOrRfc {
        rfc: &'static str,
        cpn: Vec<Vec<Outcome>>,
    },
}

/// Builds a case's packets (IPv6 or IPv4, no link layer) for its client addresses.
pub type Packets = Box<dyn Fn(&Client) -> Vec<Vec<u8>>>;

/// One row of the table.
pub struct Case {
    pub name: String,
    pub packets: Packets,
    pub verdict: Verdict,
    /// Its packets use End.DT4, which Linux only has with a VRF.
    pub needs_vrf: bool,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("verdict", &self.verdict)
            .finish_non_exhaustive()
    }
}

/// Many hop-limit-1 packets from one source: counts the Time Exceeded that come back.
pub struct Flood {
    pub name: String,
    pub count: usize,
    pub over: Duration,
    pub packet: Packets,
    /// How many errors each implementation may send (RFC 4443 §2.4 (f) leaves the rate open).
    pub expected: std::ops::RangeInclusive<usize>,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flood")
            .field("name", &self.name)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The running topology with its sockets.
#[derive(Debug)]
pub struct EndpointLab {
    pub dut: Dut,
    pub default_route: bool,
    /// Linux got its End.DT4 (a VRF for table 100).
    pub has_vrf: bool,
    tx: RawSocket,
    captures: Vec<(String, RawSocket)>,
    udp: Vec<UdpSocket>,
    /// Keep the receivers' `XDP_PASS` programs attached.
    _xdp_links: Vec<std::os::fd::OwnedFd>,
    /// Last: the sockets close before the namespaces go.
    pub lab: Lab,
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The agent's configuration for the same SIDs as the Linux DUT.
fn agent_config() -> String {
    let sids = [
        (sid::END, "End", ""),
        (
            sid::END_X,
            "End.X",
            "nexthop = \"2001:db8:3::2\"\ninterface = \"eth2\"\n",
        ),
        (sid::DT6_LOCAL, "End.DT6", "table = 255\n"),
        (sid::DT6_T100, "End.DT6", "table = 100\n"),
        (sid::DT4_T100, "End.DT4", "table = 100\n"),
        (
            sid::DX4,
            "End.DX4",
            "nexthop = \"10.0.3.2\"\ninterface = \"eth2\"\n",
        ),
        (
            sid::DX6,
            "End.DX6",
            "nexthop = \"2001:db8:3::2\"\ninterface = \"eth2\"\n",
        ),
    ];
    let mut text = String::from(
        "[node]\nname = \"dut\"\nroles = [\"compute\", \"transit\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
         [metrics]\nsample_host = false\n",
    );
    for (sid, behavior, extra) in sids {
        let _ = write!(
            text,
            "\n[[srv6.sid]]\nsid = \"{sid}\"\nbehavior = \"{behavior}\"\n{extra}"
        );
    }
    text
}

/// dut's addresses, forwarding, neighbours and routes (the same for both DUTs); true if it
/// could have a VRF for table 100.
fn configure_dut(d: &Node, default_route: bool) -> Result<bool> {
    d.add_address("lo", &format!("{SERVICE6}/128"))?;
    d.add_address("lo", &format!("{SERVICE4}/32"))?;
    d.enable_forwarding()?;
    for dev in ["all", "default", "lo", "eth0", "eth1", "eth2"] {
        d.sysctl(&format!("net.ipv6.conf.{dev}.seg6_enabled=1"))?;
    }
    for (address, dev, lladdr) in [
        ("2001:db8:1::1", "eth0", SRC_MAC),
        ("10.0.1.1", "eth0", SRC_MAC),
        ("2001:db8:2::2", "eth1", NH1_MAC),
        ("10.0.2.2", "eth1", NH1_MAC),
        ("2001:db8:3::2", "eth2", NH2_MAC),
        ("10.0.3.2", "eth2", NH2_MAC),
        ("10.0.40.6", "eth2", NH2_MAC),
    ] {
        d.ip(&format!(
            "neigh replace {address} lladdr {} dev {dev} nud permanent",
            mac(lladdr)
        ))?;
    }
    for route in [
        "-6 route add 2001:db8:100::/48 via 2001:db8:1::1 dev eth0",
        "-4 route add 10.100.0.0/16 via 10.0.1.1 dev eth0",
        "-6 route add fc00:2::/32 via 2001:db8:2::2 dev eth1",
        "-6 route add 2001:db8:20::/48 via 2001:db8:2::2 dev eth1",
        "-4 route add 10.0.20.0/24 via 10.0.2.2 dev eth1",
        "-6 route add 2001:db8:3::/64 dev eth2 table 100",
        "-6 route add 2001:db8:30::/48 via 2001:db8:3::2 dev eth2 table 100",
        "-4 route add 10.0.3.0/24 dev eth2 table 100",
        "-4 route add 10.0.30.0/24 via 10.0.3.2 dev eth2 table 100",
    ] {
        d.ip(route)?;
    }
    if default_route {
        d.ip("-6 route add default via 2001:db8:2::2 dev eth1")?;
        d.ip("-4 route add default via 10.0.2.2 dev eth1")?;
    }
    // Linux's End.DT4 needs a VRF bound to table 100 (and strict mode). Without
    // CONFIG_NET_VRF (as on the test machines) the DT4 cases are judged by the RFC alone.
    // The cpn topology gets the same VRF when it can have one, so both stay identical.
    let has_vrf = d
        .output(&["ip", "link", "add", "vrf100", "type", "vrf", "table", "100"])?
        .status
        .success();
    if has_vrf {
        d.ip("link set dev vrf100 up")?;
        d.sysctl("net.vrf.strict_mode=1")?;
        // What VRF set-ups add so that a lookup ends in the VRF's table (no fall-through).
        d.ip("-6 route add unreachable default metric 4278198272 table 100")?;
        d.ip("-4 route add unreachable default metric 4278198272 table 100")?;
    }
    Ok(has_vrf)
}

/// The Linux DUT's SIDs: `seg6local` routes.
fn linux_sids(d: &Node, has_vrf: bool) -> Result<()> {
    let routes = [
        (sid::END, "End", "eth0"),
        (sid::END_X, "End.X nh6 2001:db8:3::2", "eth2"),
        (sid::DT6_LOCAL, "End.DT6 table 255", "eth0"),
        (sid::DT6_T100, "End.DT6 table 100", "eth0"),
        (sid::DX4, "End.DX4 nh4 10.0.3.2", "eth2"),
        (sid::DX6, "End.DX6 nh6 2001:db8:3::2", "eth2"),
    ];
    for (sid, action, dev) in routes {
        d.ip(&format!(
            "-6 route add {sid}/128 encap seg6local action {action} dev {dev}"
        ))?;
    }
    if has_vrf {
        d.ip(&format!(
            "-6 route add {}/128 encap seg6local action End.DT4 vrftable 100 dev vrf100",
            sid::DT4_T100
        ))?;
    }
    Ok(())
}

impl EndpointLab {
    pub fn start(dut: Dut, default_route: bool) -> Result<Self> {
        let name = format!(
            "diff-{}-{}",
            dut.name(),
            if default_route { "dflt" } else { "nodflt" }
        );
        let mut lab = Lab::builder(&name)
            .node("src")
            .node("dut")
            .node("nh1")
            .node("nh2")
            .link(("src", "eth0"), ("dut", "eth0"))
            .link(("dut", "eth1"), ("nh1", "eth0"))
            .link(("dut", "eth2"), ("nh2", "eth0"))
            .build()?;
        let ports: [(&str, &str, [u8; 6], &str, &str); 6] = [
            ("src", "eth0", SRC_MAC, "2001:db8:1::1/64", "10.0.1.1/24"),
            ("dut", "eth0", DUT_MAC, "2001:db8:1::2/64", "10.0.1.2/24"),
            (
                "dut",
                "eth1",
                DUT_ETH1_MAC,
                "2001:db8:2::1/64",
                "10.0.2.1/24",
            ),
            ("nh1", "eth0", NH1_MAC, "2001:db8:2::2/64", "10.0.2.2/24"),
            (
                "dut",
                "eth2",
                DUT_ETH2_MAC,
                "2001:db8:3::1/64",
                "10.0.3.1/24",
            ),
            ("nh2", "eth0", NH2_MAC, "2001:db8:3::2/64", "10.0.3.2/24"),
        ];
        for (node, dev, address, v6, v4) in ports {
            let n = lab.node(node)?;
            n.ip(&format!("link set dev {dev} address {}", mac(address)))?;
            n.add_address(dev, v6)?;
            n.add_address(dev, v4)?;
        }
        let mut xdp_links = Vec::new();
        for node in ["src", "nh1", "nh2"] {
            // Receive what XDP redirects into them or sends back (veth NAPI, XDP_TX).
            xdp_links.push(capture::xdp_pass(lab.node(node)?, "eth0")?);
        }
        let has_vrf = configure_dut(lab.node("dut")?, default_route)?;
        match dut {
            Dut::Linux => linux_sids(lab.node("dut")?, has_vrf)?,
            Dut::Cpn => {
                lab.start_agent("dut", &agent_config())?;
            }
        }
        let tx = RawSocket::open(lab.node("src")?, "eth0")?;
        let mut captures = Vec::new();
        for node in ["src", "nh1", "nh2"] {
            captures.push((node.to_owned(), RawSocket::open(lab.node(node)?, "eth0")?));
        }
        let udp = vec![
            capture::udp_listener(
                lab.node("dut")?,
                SocketAddr::new(IpAddr::V6(SERVICE6), SERVICE_PORT),
            )?,
            capture::udp_listener(
                lab.node("dut")?,
                SocketAddr::new(IpAddr::V4(SERVICE4), SERVICE_PORT),
            )?,
        ];
        let lab = Self {
            lab,
            dut,
            default_route,
            has_vrf,
            tx,
            captures,
            udp,
            _xdp_links: xdp_links,
        };
        lab.warm_up()?;
        Ok(lab)
    }

    /// Sends a well-formed End packet until it comes out at nh1: the SIDs are in place.
    fn warm_up(&self) -> Result<()> {
        let client = Client::new(0xfff0);
        let packet = wire::Ipv6::new(client.v6, sid::END)
            .ext(wire::Srh::path(&[sid::END, NEXT], 1).ext())
            .inner(wire::udp6(client.v6, NEXT, 64, (1, 2), b"warm-up"))
            .bytes();
        wait_for(
            &format!("{} to forward through its End SID", self.dut.name()),
            Duration::from_secs(10),
            || {
                self.send(&packet)?;
                let seen = capture::collect(
                    &self.sockets(),
                    Duration::from_millis(100),
                    Duration::from_millis(300),
                );
                Ok(seen.iter().any(|c| c.node == "nh1").then_some(()))
            },
        )?;
        thread::sleep(Duration::from_millis(50));
        self.drain();
        Ok(())
    }

    fn sockets(&self) -> Vec<(&str, &RawSocket)> {
        self.captures.iter().map(|(n, s)| (n.as_str(), s)).collect()
    }

    fn drain(&self) {
        for (_, socket) in &self.captures {
            socket.drain();
        }
        for socket in &self.udp {
            let _ = capture::udp_received(socket);
        }
    }

    /// Sends one IPv6 or IPv4 packet from src to the DUT.
    pub fn send(&self, l3: &[u8]) -> Result<()> {
        self.tx.send(&wire::ethernet(DUT_MAC, SRC_MAC, l3))
    }

    /// Sends one packet and returns every frame captured for it (a debugging aid).
    pub fn exchange(&self, l3: &[u8]) -> Result<Vec<capture::Captured>> {
        self.drain();
        self.send(l3)?;
        Ok(capture::collect(
            &self.sockets(),
            Duration::from_millis(300),
            Duration::from_secs(2),
        ))
    }

    /// Runs every case back to back (2 ms apart, each from its own client addresses), then
    /// waits until nothing has arrived for `QUIET`, and ties each observation to its case.
    pub fn run(&self, cases: &[Case]) -> Result<Vec<Vec<Outcome>>> {
        const QUIET: Duration = Duration::from_millis(300);
        self.drain();
        let clients: Vec<Client> = (1..).take(cases.len()).map(Client::new).collect();
        for (case, client) in cases.iter().zip(&clients) {
            for packet in (case.packets)(client) {
                self.send(&packet)
                    .with_context(|| format!("case {}", case.name))?;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let captured = capture::collect(&self.sockets(), QUIET, Duration::from_secs(10));
        let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); cases.len()];
        let by_address: BTreeMap<IpAddr, usize> = clients
            .iter()
            .enumerate()
            .flat_map(|(i, c)| [(IpAddr::V6(c.v6), i), (IpAddr::V4(c.v4), i)])
            .collect();
        for c in &captured {
            if let Some((key, outcome)) = outcome::classify(&c.node, "src", &c.frame)
                && let Some(&i) = by_address.get(&key)
            {
                outcomes[i].push(outcome);
            }
        }
        for socket in &self.udp {
            for payload in capture::udp_received(socket) {
                let text = String::from_utf8_lossy(&payload).into_owned();
                let index = text
                    .strip_prefix("case-")
                    .and_then(|id| id.parse::<usize>().ok())
                    .and_then(|id| id.checked_sub(1))
                    .filter(|i| *i < cases.len());
                if let Some(i) = index {
                    outcomes[i].push(if text == clients[i].tag() {
                        Outcome::delivered()
                    } else {
                        Outcome::Delivered { payload: text }
                    });
                }
            }
        }
        for (i, case) in cases.iter().enumerate() {
            if self.dut == Dut::Linux && case.needs_vrf && !self.has_vrf {
                outcomes[i] = vec![Outcome::NotAvailable];
            } else if outcomes[i].is_empty() {
                outcomes[i].push(Outcome::Dropped);
            }
            outcomes[i].sort();
        }
        Ok(outcomes)
    }

    /// Sends the flood and returns what came back for it.
    pub fn flood(&self, flood: &Flood) -> Result<Vec<Outcome>> {
        self.drain();
        let client = Client::new(0xf000);
        let packets = (flood.packet)(&client);
        ensure!(!packets.is_empty(), "a flood needs a packet");
        let gap = flood.over / u32::try_from(flood.count).unwrap_or(u32::MAX);
        let start = Instant::now();
        for i in 0..flood.count {
            self.send(&packets[i % packets.len()])?;
            let due = gap * u32::try_from(i + 1).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        let captured = capture::collect(
            &self.sockets(),
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        Ok(captured
            .iter()
            .filter_map(|c| outcome::classify(&c.node, "src", &c.frame))
            .filter(|(key, _)| *key == IpAddr::V6(client.v6) || *key == IpAddr::V4(client.v4))
            .map(|(_, o)| o)
            .collect())
    }
}

/// One compared case.
#[derive(Debug)]
pub struct Row {
    pub name: String,
    pub linux: Vec<Outcome>,
    pub cpn: Vec<Outcome>,
    /// `same`, or the RFC section of a deliberate difference.
    pub verdict: String,
    /// What was wrong, if anything.
    pub mismatch: Option<String>,
}

/// Compares the two runs of `cases`.
pub fn compare(cases: &[Case], linux: &[Vec<Outcome>], cpn: &[Vec<Outcome>]) -> Vec<Row> {
    cases
        .iter()
        .zip(linux.iter().zip(cpn))
        .map(|(case, (linux, cpn))| {
            let (verdict, mismatch) = match &case.verdict {
                Verdict::Same => (
                    "same".to_owned(),
                    (linux != cpn).then(|| "cpn differs from Linux".to_owned()),
                ),
                Verdict::Differs {
                    rfc,
                    why,
                    cpn: expected,
                } => {
                    let mut expected = expected.clone();
                    expected.sort();
                    (
                        format!("differs: {rfc} ({why})"),
                        (*cpn != expected)
                            .then(|| format!("cpn should show {}", outcome::render(&expected))),
                    )
                }
                Verdict::SameOrRfc { rfc, cpn: allowed } => {
                    if linux == &[Outcome::NotAvailable] {
                        let ok = allowed.iter().any(|a| {
                            let mut a = a.clone();
                            a.sort();
                            a == *cpn
                        });
                        let wanted: Vec<String> =
                            allowed.iter().map(|a| outcome::render(a)).collect();
                        (
                            format!("rfc only: {rfc} (no Linux reference)"),
                            (!ok).then(|| format!("cpn should show {}", wanted.join(" | "))),
                        )
                    } else {
                        (
                            "same".to_owned(),
                            (linux != cpn).then(|| "cpn differs from Linux".to_owned()),
                        )
                    }
                }
            };
            Row {
                name: case.name.clone(),
                linux: linux.clone(),
                cpn: cpn.clone(),
                verdict,
                mismatch,
            }
        })
        .collect()
}

/// The table as text, mismatches marked.
pub fn report(title: &str, rows: &[Row]) -> String {
    let mut out = format!("== {title}: {} cases\n", rows.len());
    for row in rows {
        let mark = if row.mismatch.is_some() {
            "FAIL"
        } else {
            "ok  "
        };
        let _ = writeln!(
            out,
            "{mark} {:<40} linux: {}\n     {:<40} cpn:   {}\n     {:<40} {}{}",
            row.name,
            outcome::render(&row.linux),
            "",
            outcome::render(&row.cpn),
            "",
            row.verdict,
            row.mismatch
                .as_ref()
                .map(|m| format!(" -> {m}"))
                .unwrap_or_default(),
        );
    }
    out
}
