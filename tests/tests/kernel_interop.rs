//! cpn's SRv6 against the Linux kernel's own SRv6 (seg6 / seg6local), with real traffic (ping
//! and a TCP exchange) in network namespaces.
//!
//! ```text
//!   client ── ingress ── transit ── compute ── server
//!    .1.1    .1.2  .2.1  .2.2 .3.1   .3.2 .4.1   .4.2
//!   VIP 2001:db8:cafe::1 / 198.18.0.1 on compute's lo (on server's for End.DX6)
//!   transit SIDs fc00:7::/32, compute SIDs fc00:c::/32
//! ```
//! Replies go straight back to the client by plain routing (direct server return).

use std::{net::Ipv6Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use cpn_agent::dataplane::{
    AttachMode, Dataplane, Node, NodeState, Pinning, Program, ServiceAddr, ServiceConfig,
    SidBehavior,
};
use cpn_common::maps;
use cpn_tests::lab::{Lab, wait_for};

const VIP6: &str = "2001:db8:cafe::1";
const VIP4: &str = "198.18.0.1";
const ENCAP_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// A TCP echo server for `python3`: answers each connection with `echo:` + what it got.
const ECHO_SERVER: &str = "import socket,sys\n\
fam=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n\
s=socket.socket(fam); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind((sys.argv[1],int(sys.argv[2]))); s.listen(8)\n\
while True:\n c,_=s.accept(); c.sendall(b'echo:'+c.recv(100)); c.close()\n";
const ECHO_CLIENT: &str = "import socket,sys\n\
c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n\
c.sendall(b'hello'); print(c.recv(100).decode())\n";

fn topology(name: &str) -> Result<Lab> {
    let lab = Lab::builder(name)
        .node("client")
        .node("ingress")
        .node("transit")
        .node("compute")
        .node("server")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("transit", "eth0"))
        .link(("transit", "eth1"), ("compute", "eth0"))
        .link(("compute", "eth1"), ("server", "eth0"))
        .build()?;
    let addr = |node: &str, dev: &str, net: u8, host: u8| -> Result<()> {
        let n = lab.node(node)?;
        n.add_address(dev, &format!("2001:db8:{net}::{host}/64"))?;
        n.add_address(dev, &format!("10.0.{net}.{host}/24"))
    };
    addr("client", "eth0", 1, 1)?;
    addr("ingress", "eth0", 1, 2)?;
    addr("ingress", "eth1", 2, 1)?;
    addr("transit", "eth0", 2, 2)?;
    addr("transit", "eth1", 3, 1)?;
    addr("compute", "eth0", 3, 2)?;
    addr("compute", "eth1", 4, 1)?;
    addr("server", "eth0", 4, 2)?;
    lab.node("client")?.checksum_in_software("eth0")?;
    let compute = lab.node("compute")?;
    compute.add_address("lo", &format!("{VIP6}/128"))?;
    compute.add_address("lo", &format!("{VIP4}/32"))?;
    for node in ["ingress", "transit", "compute"] {
        let n = lab.node(node)?;
        n.enable_forwarding()?;
        n.sysctl("net.ipv6.conf.all.seg6_enabled=1")?;
        n.sysctl("net.ipv6.conf.default.seg6_enabled=1")?;
        for dev in ["eth0", "eth1"] {
            // Not every node has eth1; ignore those.
            let _ = n.sysctl(&format!("net.ipv6.conf.{dev}.seg6_enabled=1"));
        }
    }
    let route = |node: &str, args: &[&str]| lab.node(node)?.add_route(args);
    route("client", &["default", "via", "2001:db8:1::2"])?;
    route("client", &["default", "via", "10.0.1.2"])?;
    route("ingress", &["fc00::/16", "via", "2001:db8:2::2"])?;
    route("ingress", &["default", "via", "2001:db8:2::2"])?;
    route("ingress", &["default", "via", "10.0.2.2"])?;
    route("transit", &["fc00:c::/32", "via", "2001:db8:3::2"])?;
    route("transit", &["2001:db8:1::/64", "via", "2001:db8:2::1"])?;
    route("transit", &["10.0.1.0/24", "via", "10.0.2.1"])?;
    route("transit", &[&format!("{VIP6}/128"), "via", "2001:db8:3::2"])?;
    route("compute", &["default", "via", "2001:db8:3::1"])?;
    route("compute", &["default", "via", "10.0.3.1"])?;
    route("server", &["default", "via", "2001:db8:4::1"])?;
    route("server", &["default", "via", "10.0.4.1"])?;
    Ok(lab)
}

/// Loads a data plane inside `node` and attaches `program` to `interface` there. It stays
/// attached while the returned value lives.
fn attach(lab: &Lab, node: &str, program: Program, interface: &str) -> Result<Dataplane> {
    let _inside = lab.node(node)?.enter()?;
    let mut dataplane = Dataplane::load(&Pinning::Unpinned)?;
    dataplane.attach(program, interface, AttachMode::Native)?;
    Ok(dataplane)
}

/// `cpn_steer` on ingress:eth0, steering both VIPs to one node with `segments`. `XDP_REDIRECT`
/// into a veth is only delivered when the peer runs XDP too, so transit:eth0 gets our endpoint
/// program with no SIDs (it passes everything to the kernel); keep both values alive.
fn steer(lab: &Lab, segments: &[&str], reduced: bool) -> Result<(Dataplane, Dataplane)> {
    let receiver = attach(lab, "transit", Program::Endpoint, "eth0")?;
    let mut dp = attach(lab, "ingress", Program::Steer, "eth0")?;
    let segments = segments
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<Ipv6Addr>, _>>()?;
    dp.set_node(
        1,
        &Node {
            segments,
            encap_src: ENCAP_SRC,
            reduced,
            state: NodeState::Active,
        },
    )?;
    for (id, vip) in [(0, VIP6), (1, VIP4)] {
        dp.set_service(
            &ServiceAddr {
                addr: vip.parse()?,
                port: None,
            },
            &ServiceConfig {
                id,
                affinity: Some(None),
            },
        )?;
        dp.publish_ring(id, &[1])?;
    }
    Ok((dp, receiver))
}

/// Pings `target` from the client until replies come (the first packets may wait for
/// neighbour discovery along the path).
fn ping(lab: &Lab, target: &str) -> Result<()> {
    wait_for(&format!("ping {target}"), Duration::from_secs(15), || {
        let out = lab
            .node("client")?
            .output(&["ping", "-c", "3", "-i", "0.1", "-W", "2", target])?;
        Ok(out.status.success().then_some(()))
    })
}

/// A TCP exchange from the client to `vip`, served on `node` (listening on `listen`).
fn tcp_exchange(lab: &mut Lab, node: &str, listen: &str, vip: &str, port: u16) -> Result<()> {
    let port = port.to_string();
    lab.spawn(node, &["python3", "-c", ECHO_SERVER, listen, &port], None)?;
    let reply = wait_for("the TCP echo", Duration::from_secs(15), || {
        let out = lab
            .node("client")?
            .output(&["python3", "-c", ECHO_CLIENT, vip, &port])?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    })?;
    ensure!(reply == "echo:hello", "unexpected reply {reply:?}");
    Ok(())
}

/// Steers both VIPs with our encapsulation towards `segments`, then pings `vip` and runs a
/// TCP exchange with it (served on `serving`), all through `cpn_steer`.
fn through_our_encap(
    lab: &mut Lab,
    segments: &[&str],
    reduced: bool,
    vip: &str,
    serving: &str,
    port: u16,
) -> Result<()> {
    let (dp, _receiver) = steer(lab, segments, reduced)?;
    ping(lab, vip)?;
    tcp_exchange(lab, serving, vip, vip, port)?;
    let steered = packets(&dp, maps::NODE_STATS, 1)?;
    ensure!(
        steered >= 6,
        "only {steered} packets went through cpn_steer"
    );
    Ok(())
}

fn packets(dp: &Dataplane, map: &'static str, index: u32) -> Result<u64> {
    Ok(dp.counter(map, index)?.packets)
}

#[test]
fn our_encap_to_linux_end_dt6() -> Result<()> {
    let mut lab = topology("to-dt6")?;
    lab.node("compute")?
        .ip("-6 route add fc00:c::d6/128 encap seg6local action End.DT6 table 255 dev eth0")?;
    through_our_encap(&mut lab, &["fc00:c::d6"], false, VIP6, "compute", 8061)
}

#[test]
fn our_reduced_encap_to_linux_end_dt6() -> Result<()> {
    let mut lab = topology("to-dt6-red")?;
    lab.node("compute")?
        .ip("-6 route add fc00:c::d6/128 encap seg6local action End.DT6 table 255 dev eth0")?;
    through_our_encap(&mut lab, &["fc00:c::d6"], true, VIP6, "compute", 8062)
}

#[test]
fn our_encap_to_linux_end_dx6() -> Result<()> {
    let mut lab = topology("to-dx6")?;
    // End.DX6 hands the inner packet to a next hop: here the VIP lives on the server.
    lab.node("compute")?
        .ip(&format!("addr del {VIP6}/128 dev lo"))?;
    lab.node("server")?
        .add_address("lo", &format!("{VIP6}/128"))?;
    lab.node("compute")?.ip(
        "-6 route add fc00:c::a6/128 encap seg6local action End.DX6 nh6 2001:db8:4::2 dev eth1",
    )?;
    through_our_encap(&mut lab, &["fc00:c::a6"], false, VIP6, "server", 8063)
}

/// Linux's End.DT4 needs a VRF, which this kernel lacks (`CONFIG_NET_VRF`), so the IPv4 test
/// uses End.DX4: the VIP lives on the server behind compute.
#[test]
fn ipv4_client_through_our_encap_to_linux_end_dx4() -> Result<()> {
    let mut lab = topology("to-dx4")?;
    lab.node("compute")?
        .ip(&format!("addr del {VIP4}/32 dev lo"))?;
    lab.node("server")?
        .add_address("lo", &format!("{VIP4}/32"))?;
    lab.node("compute")?
        .ip("-6 route add fc00:c::a4/128 encap seg6local action End.DX4 nh4 10.0.4.2 dev eth1")?;
    through_our_encap(&mut lab, &["fc00:c::a4"], false, VIP4, "server", 8064)
}

/// Linux encapsulates IPv4 (`encap seg6` on an IPv4 route); `cpn_endpoint` decapsulates with
/// End.DT4.
#[test]
fn ipv4_linux_encap_to_our_end_dt4() -> Result<()> {
    let mut lab = topology("from-encap-v4")?;
    lab.node("ingress")?.ip(&format!(
        "route add {VIP4}/32 encap seg6 mode encap segs fc00:c::d4 dev eth1"
    ))?;
    let mut endpoint = attach(&lab, "compute", Program::Endpoint, "eth0")?;
    endpoint.set_sid("fc00:c::d4".parse()?, SidBehavior::EndDt4 { table: 0 }, 4)?;
    ping(&lab, VIP4)?;
    tcp_exchange(&mut lab, "compute", VIP4, VIP4, 8068)?;
    ensure!(packets(&endpoint, maps::SID_STATS, 4)? >= 6);
    Ok(())
}

#[test]
fn three_segments_through_linux_end_sids() -> Result<()> {
    let mut lab = topology("three-segments")?;
    let transit = lab.node("transit")?;
    for sid in ["fc00:7::1/128", "fc00:7::2/128"] {
        transit.ip(&format!(
            "-6 route add {sid} encap seg6local action End dev eth0"
        ))?;
    }
    lab.node("compute")?
        .ip("-6 route add fc00:c::d6/128 encap seg6local action End.DT6 table 255 dev eth0")?;
    through_our_encap(
        &mut lab,
        &["fc00:7::1", "fc00:7::2", "fc00:c::d6"],
        false,
        VIP6,
        "compute",
        8065,
    )
}

/// Linux encapsulates (`encap seg6`, both modes); `cpn_endpoint` decapsulates with End.DT6.
fn linux_encap_then_our_decap(mode: &str, port: u16) -> Result<()> {
    let mut lab = topology(&format!("from-{mode}"))?;
    lab.node("ingress")?.ip(&format!(
        "-6 route add {VIP6}/128 encap seg6 mode {mode} segs fc00:c::d6 dev eth1"
    ))?;
    let mut endpoint = attach(&lab, "compute", Program::Endpoint, "eth0")?;
    endpoint.set_sid("fc00:c::d6".parse()?, SidBehavior::EndDt6 { table: 0 }, 7)?;
    ping(&lab, VIP6)?;
    tcp_exchange(&mut lab, "compute", VIP6, VIP6, port)?;
    let decapsulated = packets(&endpoint, maps::SID_STATS, 7)?;
    ensure!(
        decapsulated >= 6,
        "cpn_endpoint decapsulated {decapsulated} packets"
    );
    Ok(())
}

#[test]
fn linux_encap_to_our_end_dt6() -> Result<()> {
    linux_encap_then_our_decap("encap", 8066)
}

#[test]
fn linux_reduced_encap_to_our_end_dt6() -> Result<()> {
    linux_encap_then_our_decap("encap.red", 8067).context("mode encap.red")
}
