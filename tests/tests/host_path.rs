//! `cpn_steer_tc`, the TC program, with real traffic and the veths' default offloads (partial
//! checksums, GSO): a host's own packets on egress, and a client behind a veth on ingress,
//! encapsulated by us and decapsulated by Linux `seg6local` End.DT6.
//!
//! ```text
//!   client ──┐
//!    .1.1    ingress ── transit ── compute
//!   client2 ─┘.1.2/.5.2 .2.1  .2.2 .3.1   .3.2
//!    .5.1
//!   VIP 2001:db8:cafe::1 on compute's lo, SID fc00:c::d6 (Linux End.DT6)
//! ```
//! Only steered packets reach the VIP: the transit has no route to it. Replies go straight
//! back by plain routing.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use cpn_agent::dataplane::{
    Dataplane, Hook, Node, NodeState, Pinning, Program, Seen, ServiceAddr, ServiceConfig,
};
use cpn_common::{
    maps,
    stats::{ProtoCounter, Reason},
};
use cpn_tests::lab::{Lab, wait_for};

const VIP6: &str = "2001:db8:cafe::1";

/// Answers each TCP connection with `echo:` and what it read, or with the number of bytes it
/// read until the end with `count`; echoes UDP datagrams with `udp`.
const SERVER: &str = r"import socket,sys
mode,port=sys.argv[1],int(sys.argv[2])
vip='2001:db8:cafe::1'
if mode=='udp':
    s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.bind((vip,port))
    while True:
        d,a=s.recvfrom(2000); s.sendto(b'echo:'+d,a)
s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind((vip,port)); s.listen(64)
while True:
    c,_=s.accept()
    if mode=='echo':
        c.sendall(b'echo:'+c.recv(100))
    elif mode=='stream':
        while True:
            b=c.recv(100)
            if not b: break
            c.sendall(b)
    else:
        n=0
        while True:
            b=c.recv(65536)
            if not b: break
            n+=len(b)
        c.sendall(str(n).encode())
    c.close()
";

/// `tcp N PORT`: N connections, each an exchange; `bulk BYTES PORT`: one upload; `udp N PORT`:
/// N datagrams, each answered. Prints what it got.
const CLIENT: &str = r"import socket,sys,time
mode,n,port=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
vip='2001:db8:cafe::1'
if mode=='tcp':
    ok=0
    for i in range(n):
        c=socket.create_connection((vip,port),timeout=5); c.sendall(b'hello')
        ok+=c.recv(100)==b'echo:hello'; c.close()
    print(ok)
elif mode=='stream':
    c=socket.create_connection((vip,port),timeout=2); ok=0
    for i in range(n):
        c.sendall(b'%05d'%i); ok+=c.recv(100)==b'%05d'%i; time.sleep(0.05)
    print(ok)
elif mode=='bulk':
    c=socket.create_connection((vip,port),timeout=20); c.sendall(b'x'*n)
    c.shutdown(socket.SHUT_WR); print(c.recv(100).decode())
else:
    s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.settimeout(2); ok=0
    for i in range(n):
        s.sendto(b'ping%d'%i,(vip,port))
        try: ok+=s.recv(100)==b'echo:ping%d'%i
        except socket.timeout: pass
    print(ok)
";

fn topology(name: &str) -> Result<Lab> {
    let lab = Lab::builder(name)
        .node("client")
        .node("client2")
        .node("ingress")
        .node("transit")
        .node("compute")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("client2", "eth0"), ("ingress", "eth2"))
        .link(("ingress", "eth1"), ("transit", "eth0"))
        .link(("transit", "eth1"), ("compute", "eth0"))
        .build()?;
    let addr = |node: &str, dev: &str, net: u8, host: u8| {
        lab.node(node)?
            .add_address(dev, &format!("2001:db8:{net}::{host}/64"))
    };
    addr("client", "eth0", 1, 1)?;
    addr("ingress", "eth0", 1, 2)?;
    addr("ingress", "eth1", 2, 1)?;
    addr("client2", "eth0", 5, 1)?;
    addr("ingress", "eth2", 5, 2)?;
    addr("transit", "eth0", 2, 2)?;
    addr("transit", "eth1", 3, 1)?;
    addr("compute", "eth0", 3, 2)?;
    let compute = lab.node("compute")?;
    compute.add_address("lo", &format!("{VIP6}/128"))?;
    for node in ["ingress", "transit", "compute"] {
        let n = lab.node(node)?;
        n.enable_forwarding()?;
        n.sysctl("net.ipv6.conf.all.seg6_enabled=1")?;
        n.sysctl("net.ipv6.conf.eth0.seg6_enabled=1")?;
    }
    compute.ip("-6 route add fc00:c::d6/128 encap seg6local action End.DT6 table 255 dev eth0")?;
    let route = |node: &str, args: &[&str]| lab.node(node)?.add_route(args);
    route("client", &["default", "via", "2001:db8:1::2"])?;
    route("client2", &["default", "via", "2001:db8:5::2"])?;
    route("transit", &["2001:db8:5::/64", "via", "2001:db8:2::1"])?;
    route("ingress", &["default", "via", "2001:db8:2::2"])?;
    route("transit", &["fc00:c::/32", "via", "2001:db8:3::2"])?;
    route("transit", &["2001:db8:1::/64", "via", "2001:db8:2::1"])?;
    route("compute", &["default", "via", "2001:db8:3::1"])?;
    Ok(lab)
}

/// `cpn_steer_tc` at `hook` of ingress's `interfaces`, steering the VIP to `fc00:c::d6`;
/// attached while the returned value lives.
fn steer(lab: &Lab, interfaces: &[&str], hook: Hook) -> Result<Dataplane> {
    let _inside = lab.node("ingress")?.enter()?;
    let mut dp = Dataplane::load(&Pinning::Unpinned)?;
    for interface in interfaces {
        dp.attach_tc(interface, hook)?;
    }
    dp.set_node(
        1,
        &Node {
            segments: vec!["fc00:c::d6".parse()?],
            encap_src: "2001:db8:2::1".parse()?,
            reduced: false,
            state: NodeState::Active,
        },
    )?;
    dp.set_service(
        &ServiceAddr {
            addr: VIP6.parse()?,
            port: None,
        },
        &ServiceConfig {
            id: 0,
            affinity: Some(None),
        },
    )?;
    dp.publish_ring(0, &[1])?;
    Ok(dp)
}

/// Runs [`CLIENT`] with `args` in `node`; what it printed.
fn client(lab: &Lab, node: &str, args: &[&str]) -> Result<String> {
    let out = lab
        .node(node)?
        .output(&[&["python3", "-c", CLIENT][..], args].concat())?;
    ensure!(
        out.status.success(),
        "client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The compute node's servers: TCP echo, TCP byte count, UDP echo.
fn serve(lab: &mut Lab) -> Result<()> {
    for (mode, port) in [("echo", "9101"), ("count", "9102"), ("udp", "9103")] {
        lab.spawn("compute", &["python3", "-c", SERVER, mode, port], None)?;
    }
    Ok(())
}

/// From `node`: a ping, 100 TCP connections, 200 UDP datagrams and a 20 MB upload to the
/// VIP, all answered; then at least that many packets went through the TC
/// program, counted under its `hook` (and none under XDP's).
fn traffic(lab: &mut Lab, node: &str, dp: &Dataplane, hook: Hook) -> Result<()> {
    wait_for("ping the VIP", Duration::from_secs(15), || {
        let out = lab
            .node(node)?
            .output(&["ping", "-c", "3", "-i", "0.1", "-W", "2", VIP6])?;
        Ok(out.status.success().then_some(()))
    })?;
    let client = |args: &[&str]| client(lab, node, args);
    // The servers may still be starting: the first exchange is waited for.
    wait_for("the first TCP exchange", Duration::from_secs(10), || {
        Ok(client(&["tcp", "1", "9101"]).ok().filter(|ok| ok == "1"))
    })?;
    let tcp = client(&["tcp", "100", "9101"])?;
    ensure!(tcp == "100", "{tcp} of 100 TCP connections answered");
    let udp = client(&["udp", "200", "9103"])?;
    ensure!(udp == "200", "{udp} of 200 UDP datagrams answered");
    let bulk = client(&["bulk", "20000000", "9102"]).map_err(|e| e.context(reasons(dp)))?;
    ensure!(
        bulk == "20000000",
        "the upload: {bulk} of 20000000 bytes arrived"
    );
    let steered = dp.counter(maps::NODE_STATS, 1)?.packets;
    ensure!(
        steered > 1000,
        "only {steered} packets went through cpn_steer_tc"
    );
    let seen = dp
        .proto_stats(Seen::Steer(hook))?
        .get(ProtoCounter::Ipv6)
        .packets;
    ensure!(
        seen >= steered,
        "{hook} counted {seen} IPv6 packets, fewer than the {steered} it steered"
    );
    let xdp = dp.proto_stats(Program::Steer)?;
    ensure!(
        xdp.0.iter().all(|(_, c)| c.packets == 0),
        "XDP counted packets it never saw: {xdp:?}"
    );
    Ok(())
}

/// The data plane's exception counters that moved, for a failure's message.
fn reasons(dp: &Dataplane) -> String {
    let moved: Vec<String> = Reason::ALL
        .iter()
        .filter_map(|&reason| {
            let packets = dp.counter(maps::REASON_STATS, reason as u32).ok()?.packets;
            (packets > 0).then(|| format!("{} {packets}", reason.name()))
        })
        .collect();
    format!("exception counters: {}", moved.join(", "))
}

/// A host running cpn steers what it sends itself: `tc-egress` on its uplink.
#[test]
fn tc_egress_steers_what_the_host_sends() -> Result<()> {
    let mut lab = topology("tc-egress")?;
    let dp = steer(&lab, &["eth1"], Hook::TcEgress)?;
    serve(&mut lab)?;
    traffic(&mut lab, "ingress", &dp, Hook::TcEgress)
}

/// Two clients (containers, namespaces), each behind a veth with its default offloads (their
/// TCP and UDP leave with partial checksums, GSO on): `tc-ingress` on the host's side of each
/// veth. XDP there fails every TCP connection and UDP datagram (the checksums stay partial);
/// here all are answered, and each client's 20 MB upload arrives: a full-size segment a
/// client's TCP sends unsegmented, too big once encapsulated, is answered with a Packet Too
/// Big, and the client's TCP follows it.
#[test]
fn tc_ingress_steers_clients_behind_veths_with_default_offloads() -> Result<()> {
    let mut lab = topology("tc-ingress")?;
    let dp = steer(&lab, &["eth0", "eth2"], Hook::TcIngress)?;
    serve(&mut lab)?;
    traffic(&mut lab, "client", &dp, Hook::TcIngress)?;
    traffic(&mut lab, "client2", &dp, Hook::TcIngress)
}

/// An agent steering with `hook = "tc-egress"` from its configuration, restarted while a TCP
/// connection exchanges a message every 50 ms: the TC program stays attached through its
/// pinned TCX link, which the new agent takes over in place, and not one message is lost.
#[test]
fn tc_hooks_stay_attached_across_an_agent_restart() -> Result<()> {
    restart_keeps_steering("tcx", "took over the pinned link")
}

/// The same through a filter on the clsact qdisc (`tc_attach = "clsact"`, what an agent
/// falls back to on kernels without TCX): the filter stays in the kernel, and the new agent
/// replaces its program in place.
#[test]
fn tc_hooks_on_clsact_stay_attached_across_an_agent_restart() -> Result<()> {
    restart_keeps_steering("clsact", "took over the clsact filter")
}

/// An agent attaching its TC hook with `tc_attach`, restarted mid-stream: the second agent's
/// log says `took_over`, and every message is answered.
fn restart_keeps_steering(tc_attach: &str, took_over: &str) -> Result<()> {
    let mut lab = topology(&format!("tc-restart-{tc_attach}"))?;
    let config = format!(
        "[dataplane]\nkeep_attached_on_exit = true\ntc_attach = \"{tc_attach}\"\n\n\
         [node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth1\"\nprogram = \"steer\"\nhook = \"tc-egress\"\n\n\
         [srv6]\nsource = \"2001:db8:2::1\"\n\n\
         [[policy]]\nservice = \"{VIP6}\"\nkind = \"cpu\"\n\n\
         [[remote]]\nname = \"compute\"\nsegments = [\"fc00:c::d6\"]\n\
         [[remote.service]]\naddress = \"{VIP6}\"\ncapacity = {{ cpu = 1e12 }}\n"
    );
    let first = lab.start_agent("ingress", &config)?;
    lab.spawn(
        "compute",
        &["python3", "-c", SERVER, "stream", "9104"],
        None,
    )?;
    // Steered from the configuration (the transit has no route to the VIP otherwise).
    wait_for("a steered exchange", Duration::from_secs(15), || {
        Ok(client(&lab, "ingress", &["stream", "1", "9104"])
            .ok()
            .filter(|ok| ok == "1"))
    })
    .with_context(|| lab.logs(["ingress"]))?;
    // 80 messages over 4 s on one connection, the agent restarted in between.
    let workdir = lab.workdir().to_path_buf();
    let received = workdir.join("stream.out");
    let script = format!("python3 -c \"$1\" stream 80 9104 > {}", received.display());
    let stream = lab.spawn("ingress", &["sh", "-c", &script, "sh", CLIENT], None)?;
    std::thread::sleep(Duration::from_millis(800));
    let exit = lab.stop(first.pid)?;
    ensure!(exit.success(), "{exit}\n{}", lab.logs(["ingress"]));
    let second = lab.start_agent_pinned_at("ingress", &first.pin_dir, &config)?;
    let log = std::fs::read_to_string(&second.log)?;
    ensure!(
        log.contains(took_over),
        "the second agent did not take over ({took_over}):\n{log}"
    );
    if tc_attach == "clsact" {
        let filters = lab
            .node("ingress")?
            .output(&["tc", "filter", "show", "dev", "eth1", "egress"])?;
        let filters = String::from_utf8_lossy(&filters.stdout);
        ensure!(
            filters.contains("cpn_steer_tc_egress") && filters.contains("direct-action"),
            "no cpn filter on eth1's clsact qdisc:\n{filters}"
        );
    }
    wait_for("the stream to end", Duration::from_secs(10), || {
        let out = std::fs::read_to_string(&received).unwrap_or_default();
        Ok((!out.trim().is_empty()).then_some(out))
    })
    .and_then(|out| {
        ensure!(
            out.trim() == "80",
            "{} of 80 messages answered across the restart",
            out.trim()
        );
        Ok(())
    })?;
    let _ = lab.stop(stream);
    Ok(())
}
