//! The steering topology, built once with Linux `encap seg6` routes at the ingress and once
//! with `cpn_steer` (started by the real agent, a static `[[remote]]` per compute node), in
//! XDP or as the TC program on the client-facing interface:
//!
//! ```text
//!   client eth0 ──── eth0 [ingress] eth1 ──── eth0 egress (captures the encapsulated packets)
//!   2001:db8:1::1     2001:db8:1::2  2001:db8:2::1    2001:db8:2::2
//!   10.0.1.1          10.0.1.2       encapsulation source 2001:db8:2::1
//!   VIP6 2001:db8:cafe::1 and VIP4 10.0.250.1 → segments fc00:e::1, fc00:e::2
//!   VIP6_ONE 2001:db8:cafe::2 → segment fc00:e::3
//!   clients (one address per case): 2001:db8:100::/48 and 10.100.0.0/16
//! ```

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    capture::{self, RawSocket},
    endpoint::Client,
    outcome::Ignored,
    wire,
};
use crate::lab::{Agent, Lab, Node, wait_for};

const CLIENT_MAC: [u8; 6] = [0x02, 0xdf, 0, 1, 1, 1];
const INGRESS_MAC: [u8; 6] = [0x02, 0xdf, 0, 1, 1, 2];
const INGRESS_ETH1_MAC: [u8; 6] = [0x02, 0xdf, 0, 1, 2, 1];
const EGRESS_MAC: [u8; 6] = [0x02, 0xdf, 0, 1, 2, 2];

pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
pub const VIP6_ONE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 2);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 250, 1);
pub const SEGMENTS: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfc00, 0xe, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfc00, 0xe, 0, 0, 0, 0, 0, 2),
];
pub const ONE_SEGMENT: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xe, 0, 0, 0, 0, 0, 3);
/// The ingress's encapsulation source (Linux: `ip sr tunsrc`; cpn: `[srv6] source`).
pub const ENCAP_SOURCE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Who encapsulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// `ip route ... encap seg6 mode encap | encap.red`.
    Linux,
    /// `cpn_steer` in XDP, configured by `cpn-agent`.
    Cpn,
    /// `cpn_steer_tc_ingress` on the same interface (`hook = "tc-ingress"`).
    CpnTc,
}

impl Ingress {
    const fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Cpn => "cpn",
            Self::CpnTc => "cpn-tc",
        }
    }
}

/// The SRH of an encapsulated packet, field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrhFields {
    pub next_header: u8,
    pub hdr_ext_len: u8,
    pub routing_type: u8,
    pub segments_left: u8,
    pub last_entry: u8,
    pub flags: u8,
    pub tag: u16,
    /// Segment List\[0\] first.
    pub segments: Vec<Ipv6Addr>,
    /// Bytes after the segment list (TLVs).
    pub tlv_bytes: usize,
}

/// What the egress received for one client packet, normalised. The flow label and the
/// outer hop limit are shown but not compared: RFC 8986 §5 leaves the flow label to RFC 6437
/// (any value computed from the flow; Linux copies or hashes per `seg6_flowlabel`), and the
/// outer hop limit is the encapsulating node's choice (RFC 2473 §6.3, "tunnel hop limit").
/// The inner packet must be byte for byte what the client sent, its hop limit (and the IPv4
/// header checksum, which follows the TTL) aside: whether the ingress decrements it before
/// encapsulating is reported (`inner_hop_limit`), not compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encapsulated {
    pub version: u8,
    pub traffic_class: u8,
    pub flow_label: Ignored<u32>,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: Ignored<u8>,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub srh: Option<SrhFields>,
    /// Next header of the inner packet (41 or 4).
    pub inner_protocol: u8,
    /// The inner packet equals the client's, hop limit / TTL / IPv4 checksum masked.
    pub inner_intact: bool,
    pub inner_hop_limit: Ignored<u8>,
    /// Bytes beyond the outer payload length.
    pub trailing: usize,
}

impl Encapsulated {
    pub fn short(&self) -> String {
        let mut s = format!(
            "v{} tc={:#04x} fl=~{:#x} plen={} nh={} hl=~{} {} > {}",
            self.version,
            self.traffic_class,
            self.flow_label.0,
            self.payload_len,
            self.next_header,
            self.hop_limit.0,
            self.src,
            self.dst
        );
        if let Some(srh) = &self.srh {
            let segments: Vec<String> = srh.segments.iter().map(ToString::to_string).collect();
            let _ = write!(
                s,
                " srh(nh={} len={} type={} sl={} le={} flags={:#x} tag={} [{}] tlv={})",
                srh.next_header,
                srh.hdr_ext_len,
                srh.routing_type,
                srh.segments_left,
                srh.last_entry,
                srh.flags,
                srh.tag,
                segments.join(","),
                srh.tlv_bytes
            );
        }
        let _ = write!(
            s,
            " inner={} {} hl=~{}",
            self.inner_protocol,
            if self.inner_intact {
                "intact"
            } else {
                "CHANGED"
            },
            self.inner_hop_limit.0
        );
        if self.trailing != 0 {
            let _ = write!(s, " trailing={}", self.trailing);
        }
        s
    }
}

/// The inner packet with its hop limit (IPv6) or TTL and header checksum (IPv4) zeroed.
fn masked(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    match out.first().map(|b| b >> 4) {
        Some(6) if out.len() >= 40 => out[7] = 0,
        Some(4) if out.len() >= 20 => {
            out[8] = 0;
            out[10] = 0;
            out[11] = 0;
        }
        _ => {}
    }
    out
}

fn addr6(bytes: &[u8]) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.get(..16)?).ok()?))
}

/// Decodes an encapsulated frame; `sent` is what the client sent (without link layer).
/// Returns the inner source address (which ties it to its case) and the fields.
pub fn decode(frame: &[u8], sent: &BTreeMap<IpAddr, Vec<u8>>) -> Option<(IpAddr, Encapsulated)> {
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    let l3 = frame.get(14..)?;
    let word = u32::from_be_bytes(l3.get(..4)?.try_into().ok()?);
    let payload_len = u16::from_be_bytes([l3[4], l3[5]]);
    let next_header = l3[6];
    let mut at = 40;
    let mut inner_protocol = next_header;
    let srh = if next_header == wire::proto::ROUTING {
        let h = l3.get(40..48)?;
        let len = (usize::from(h[1]) + 1) * 8;
        let listed = usize::from(h[4]) + 1;
        let segments = (0..listed)
            .map(|i| addr6(l3.get(48 + 16 * i..)?))
            .collect::<Option<Vec<_>>>()?;
        at = 40 + len;
        inner_protocol = h[0];
        Some(SrhFields {
            next_header: h[0],
            hdr_ext_len: h[1],
            routing_type: h[2],
            segments_left: h[3],
            last_entry: h[4],
            flags: h[5],
            tag: u16::from_be_bytes([h[6], h[7]]),
            segments,
            tlv_bytes: len.saturating_sub(8 + 16 * listed),
        })
    } else {
        None
    };
    let end = (40 + usize::from(payload_len)).min(l3.len());
    let inner = l3.get(at..end)?;
    let (key, inner_hop_limit) = match inner_protocol {
        wire::proto::IPV6 => (IpAddr::V6(addr6(inner.get(8..)?)?), *inner.get(7)?),
        wire::proto::IPIP => {
            let src: [u8; 4] = inner.get(12..16)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(src)), *inner.get(8)?)
        }
        _ => return None,
    };
    let inner_intact = sent.get(&key).is_some_and(|s| masked(s) == masked(inner));
    Some((
        key,
        Encapsulated {
            version: u8::try_from(word >> 28).unwrap_or(0),
            traffic_class: u8::try_from((word >> 20) & 0xff).unwrap_or(0),
            flow_label: Ignored(word & 0xf_ffff),
            payload_len,
            next_header,
            hop_limit: Ignored(l3[7]),
            src: addr6(&l3[8..])?,
            dst: addr6(&l3[24..])?,
            srh,
            inner_protocol,
            inner_intact,
            inner_hop_limit: Ignored(inner_hop_limit),
            trailing: l3.len().saturating_sub(40 + usize::from(payload_len)),
        },
    ))
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The VLAN the TC lab's client may also send on: `eth0.10` at the ingress, with its own hook.
pub const VLAN: u16 = 10;

/// `vlan`: the hook on `eth0.10` too.
fn agent_config(reduced: bool, hook: &str, vlan: bool) -> String {
    let [a, b] = SEGMENTS;
    let vlan = if vlan {
        format!("[[interface]]\nname = \"eth0.{VLAN}\"\nprogram = \"steer\"\nhook = \"{hook}\"\n\n")
    } else {
        String::new()
    };
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\nhook = \"{hook}\"\n\n\
         {vlan}\
         [srv6]\nsource = \"{ENCAP_SOURCE}\"\n\n\
         [metrics]\nsample_host = false\n\n\
         [[policy]]\nservice = \"{VIP6}\"\nkind = \"cpu\"\n\n\
         [[policy]]\nservice = \"{VIP4}\"\nkind = \"cpu\"\n\n\
         [[policy]]\nservice = \"{VIP6_ONE}\"\nkind = \"cpu\"\n\n\
         [[remote]]\nname = \"c1\"\nsegments = [\"{a}\", \"{b}\"]\nreduced = {reduced}\n\n\
         [[remote.service]]\naddress = \"{VIP6}\"\ncapacity = {{ cpu = 1e12 }}\n\n\
         [[remote.service]]\naddress = \"{VIP4}\"\ncapacity = {{ cpu = 1e12 }}\n\n\
         [[remote]]\nname = \"c2\"\nsegments = [\"{ONE_SEGMENT}\"]\nreduced = {reduced}\n\n\
         [[remote.service]]\naddress = \"{VIP6_ONE}\"\ncapacity = {{ cpu = 1e12 }}\n"
    )
}

/// The Linux ingress: `encap seg6` routes for the VIPs.
fn linux_routes(i: &Node, reduced: bool) -> Result<()> {
    let mode = if reduced { "encap.red" } else { "encap" };
    let two = format!("{},{}", SEGMENTS[0], SEGMENTS[1]);
    i.ip(&format!("sr tunsrc set {ENCAP_SOURCE}"))?;
    i.ip(&format!(
        "-6 route add {VIP6}/128 encap seg6 mode {mode} segs {two} dev eth1"
    ))?;
    i.ip(&format!(
        "-4 route add {VIP4}/32 encap seg6 mode {mode} segs {two} dev eth1"
    ))?;
    i.ip(&format!(
        "-6 route add {VIP6_ONE}/128 encap seg6 mode {mode} segs {ONE_SEGMENT} dev eth1"
    ))?;
    Ok(())
}

/// Adds `eth0.10` to the ingress, if the kernel has VLAN devices (`CONFIG_VLAN_8021Q`).
fn add_vlan(ingress: &Node) -> Result<bool> {
    let added = ingress
        .ip(&format!(
            "link add link eth0 name eth0.{VLAN} type vlan id {VLAN}"
        ))
        .is_ok();
    if added {
        ingress.ip(&format!("link set dev eth0.{VLAN} up"))?;
    }
    Ok(added)
}

/// Builds one client packet (IPv6 or IPv4, no link layer) for a case's addresses.
pub type ClientPacket<'a> = &'a dyn Fn(&Client) -> Vec<u8>;

/// The running steering topology.
#[derive(Debug)]
pub struct SteerLab {
    pub ingress: Ingress,
    pub reduced: bool,
    tx: RawSocket,
    egress: RawSocket,
    _xdp_links: Vec<OwnedFd>,
    /// The ingress's agent (cpn only).
    pub agent: Option<Agent>,
    /// The ingress has `eth0.10`, with the hook on it too (TC only, and only where the kernel
    /// has VLAN devices).
    pub vlan_device: bool,
    /// Last: the sockets close before the namespaces go.
    pub lab: Lab,
}

impl SteerLab {
    pub fn start(ingress: Ingress, reduced: bool) -> Result<Self> {
        let name = format!(
            "diff-steer-{}{}",
            ingress.name(),
            if reduced { "-red" } else { "" }
        );
        let mut lab = Lab::builder(&name)
            .node("client")
            .node("ingress")
            .node("egress")
            .link(("client", "eth0"), ("ingress", "eth0"))
            .link(("ingress", "eth1"), ("egress", "eth0"))
            .build()?;
        for (node, dev, address, v6, v4) in [
            (
                "client",
                "eth0",
                CLIENT_MAC,
                "2001:db8:1::1/64",
                "10.0.1.1/24",
            ),
            (
                "ingress",
                "eth0",
                INGRESS_MAC,
                "2001:db8:1::2/64",
                "10.0.1.2/24",
            ),
            (
                "ingress",
                "eth1",
                INGRESS_ETH1_MAC,
                "2001:db8:2::1/64",
                "10.0.2.1/24",
            ),
            (
                "egress",
                "eth0",
                EGRESS_MAC,
                "2001:db8:2::2/64",
                "10.0.2.2/24",
            ),
        ] {
            let n = lab.node(node)?;
            n.ip(&format!("link set dev {dev} address {}", mac(address)))?;
            n.add_address(dev, v6)?;
            n.add_address(dev, v4)?;
        }
        let xdp_links = vec![
            capture::xdp_pass(lab.node("client")?, "eth0")?,
            capture::xdp_pass(lab.node("egress")?, "eth0")?,
        ];
        let i = lab.node("ingress")?;
        // Before forwarding is on, so that it is on for the VLAN too.
        let vlan_device = ingress == Ingress::CpnTc && add_vlan(i)?;
        i.enable_forwarding()?;
        for (address, dev, lladdr) in [
            ("2001:db8:1::1", "eth0", CLIENT_MAC),
            ("10.0.1.1", "eth0", CLIENT_MAC),
            ("2001:db8:2::2", "eth1", EGRESS_MAC),
            ("10.0.2.2", "eth1", EGRESS_MAC),
        ] {
            i.ip(&format!(
                "neigh replace {address} lladdr {} dev {dev} nud permanent",
                mac(lladdr)
            ))?;
        }
        for route in [
            "-6 route add 2001:db8:100::/48 via 2001:db8:1::1 dev eth0",
            "-4 route add 10.100.0.0/16 via 10.0.1.1 dev eth0",
            "-6 route add fc00:e::/32 via 2001:db8:2::2 dev eth1",
        ] {
            i.ip(route)?;
        }
        let agent = match ingress {
            Ingress::Linux => {
                linux_routes(i, reduced)?;
                None
            }
            Ingress::Cpn => Some(lab.start_agent("ingress", &agent_config(reduced, "xdp", false))?),
            Ingress::CpnTc => {
                Some(lab.start_agent("ingress", &agent_config(reduced, "tc-ingress", vlan_device))?)
            }
        };
        let tx = RawSocket::open(lab.node("client")?, "eth0")?;
        let egress = RawSocket::open(lab.node("egress")?, "eth0")?;
        let lab = Self {
            lab,
            ingress,
            reduced,
            tx,
            egress,
            _xdp_links: xdp_links,
            agent,
            vlan_device,
        };
        lab.warm_up()?;
        Ok(lab)
    }

    /// Sends to every VIP until each comes out encapsulated (the ring is published).
    fn warm_up(&self) -> Result<()> {
        let client = Client::new(0xfff0);
        let packets = [
            wire::udp6(client.v6, VIP6, 64, (1, 7000), b"warm-up"),
            wire::udp4(client.v4, VIP4, 64, 0, (1, 7000), b"warm-up"),
            wire::udp6(client.v6, VIP6_ONE, 64, (1, 7000), b"warm-up"),
        ];
        for packet in &packets {
            let sent = BTreeMap::new();
            wait_for(
                "the ingress to encapsulate",
                Duration::from_secs(15),
                || {
                    self.tx
                        .send(&wire::ethernet(INGRESS_MAC, CLIENT_MAC, packet))?;
                    let seen = capture::collect(
                        &[("egress", &self.egress)],
                        Duration::from_millis(100),
                        Duration::from_millis(300),
                    );
                    Ok(seen
                        .iter()
                        .any(|c| decode(&c.frame, &sent).is_some())
                        .then_some(()))
                },
            )
            .with_context(|| format!("{:?} ingress", self.ingress))?;
        }
        thread::sleep(Duration::from_millis(50));
        self.egress.drain();
        Ok(())
    }

    /// Sends each client packet (built for its own client addresses) and returns what the
    /// egress got for each.
    pub fn run(&self, packets: &[ClientPacket<'_>]) -> Result<Vec<Vec<Encapsulated>>> {
        self.run_tagged(packets, None)
    }

    /// [`SteerLab::run`], the frames tagged with `vlan` if given.
    pub fn run_tagged(
        &self,
        packets: &[ClientPacket<'_>],
        vlan: Option<u16>,
    ) -> Result<Vec<Vec<Encapsulated>>> {
        self.egress.drain();
        let clients: Vec<Client> = (1..).take(packets.len()).map(Client::new).collect();
        let mut sent = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (i, (build, client)) in packets.iter().zip(&clients).enumerate() {
            let packet = build(client);
            let mut frame = wire::ethernet(INGRESS_MAC, CLIENT_MAC, &packet);
            if let Some(vid) = vlan {
                let [high, low] = vid.to_be_bytes();
                frame.splice(12..12, [0x81, 0x00, high & 0x0f, low]);
            }
            self.tx.send(&frame)?;
            let key = if packet.first().is_some_and(|b| b >> 4 == 4) {
                IpAddr::V4(client.v4)
            } else {
                IpAddr::V6(client.v6)
            };
            sent.insert(key, packet);
            index.insert(key, i);
            thread::sleep(Duration::from_millis(2));
        }
        let captured = capture::collect(
            &[("egress", &self.egress)],
            Duration::from_millis(300),
            Duration::from_secs(5),
        );
        let mut out = vec![Vec::new(); packets.len()];
        for c in &captured {
            if let Some((key, fields)) = decode(&c.frame, &sent)
                && let Some(&i) = index.get(&key)
            {
                out[i].push(fields);
            }
        }
        Ok(out)
    }
}
