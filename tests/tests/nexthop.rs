//! Next-hop tracking and the import policy with a standard router in between: the compute
//! node's BGP next hop is not on a connected subnet of the ingress (the session runs over a
//! plain Linux router), so its locator is installed through the route that covers the next
//! hop, and follows that route when it changes. A GoBGP speaker on the router also sends
//! routes that are neither services nor cpn locators: the ingress installs none of them and
//! counts them.
//!
//! ```text
//!   client ── ingress ══ eth1 2001:db8:50::/64 ══ transit ── compute1 2001:db8:11::2
//!              AS 4200000100 ══ eth2 2001:db8:51::/64 ══    (gobgpd, AS 4200000200)
//!   ingress: 2001:db8:11::/64 via transit (a static route: the "IGP"), first over eth1,
//!   then over eth2; eBGP multihop to compute1 (AS 4200000001) and to the transit's GoBGP
//! ```

use std::{fs, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use cpn_agent::api::{LearnedPath, Neighbor, Request};
use cpn_tests::{
    bgp_lab::{bgp_section, compute_config},
    lab::{Lab, wait_for},
    steering_lab::{VIP, split, start_name_server},
};

const INGRESS_AS: u32 = 4_200_000_100;
const COMPUTE: &str = "2001:db8:11::2";
const GOBGP: &str = "2001:db8:50::2";
/// The agents are two hops apart: multihop BFD (RFC 5883) between them.
const MULTIHOP_BFD: &str = "bfd = { interval_ms = 50, multihop = true }\n";
const PASSIVE_MULTIHOP_BFD: &str = "passive = true\nbfd = { interval_ms = 50, multihop = true }\n";

fn topology() -> Result<Lab> {
    let lab = Lab::builder("nexthop")
        .node("client")
        .node("ingress")
        .node("transit")
        .node("compute1")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("transit", "eth0"))
        .link(("ingress", "eth2"), ("transit", "eth2"))
        .link(("transit", "eth1"), ("compute1", "eth0"))
        .build()?;
    let client = lab.node("client")?;
    client.add_address("eth0", "2001:db8:1::1/64")?;
    client.add_route(&["default", "via", "2001:db8:1::2"])?;
    client.checksum_in_software("eth0")?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    ingress.add_address("eth1", "2001:db8:50::1/64")?;
    ingress.add_address("eth2", "2001:db8:51::1/64")?;
    ingress.enable_forwarding()?;
    ingress.add_route(&["2001:db8:11::/64", "via", "2001:db8:50::2", "dev", "eth1"])?;
    let transit = lab.node("transit")?;
    transit.add_address("eth0", "2001:db8:50::2/64")?;
    transit.add_address("eth2", "2001:db8:51::2/64")?;
    transit.add_address("eth1", "2001:db8:11::1/64")?;
    transit.enable_forwarding()?;
    // What the ingress redirects in XDP arrives on a veth only with NAPI on the far end: GRO
    // gives it one (the transit runs no XDP program).
    for dev in ["eth0", "eth2"] {
        transit.run(&["ethtool", "-K", dev, "gro", "on"])?;
    }
    // A plain router: static routes to the client (replies go straight back) and to the
    // compute node's locator; it runs no cpn code.
    transit.add_route(&["2001:db8:1::/64", "via", "2001:db8:50::1"])?;
    transit.add_route(&["fc00:1::/32", "via", COMPUTE])?;
    let compute = lab.node("compute1")?;
    compute.add_address("eth0", &format!("{COMPUTE}/64"))?;
    compute.add_address("lo", &format!("{VIP}/128"))?;
    compute.add_route(&["default", "via", "2001:db8:11::1"])?;
    Ok(lab)
}

fn kernel_route_of(lab: &Lab, locator: &str) -> Result<Option<String>> {
    let paths: Vec<LearnedPath> = lab.ask("ingress", &Request::Routes)?;
    Ok(paths
        .into_iter()
        .find(|p| p.prefix == locator)
        .and_then(|p| p.kernel))
}

fn bgp_routes(lab: &Lab) -> Result<String> {
    let out = lab
        .node("ingress")?
        .output(&["ip", "-6", "route", "show", "proto", "bgp"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_gobgp(lab: &mut Lab) -> Result<()> {
    let work = lab.workdir().to_path_buf();
    let config = work.join("gobgpd.toml");
    fs::write(
        &config,
        "[global.config]\nas = 4200000200\nrouter-id = \"10.0.0.200\"\n\n\
         [[neighbors]]\n[neighbors.config]\nneighbor-address = \"2001:db8:50::1\"\n\
         peer-as = 4200000100\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv4-unicast\"\n",
    )?;
    let log = work.join("gobgpd.log");
    let config = config.to_str().context("path")?.to_owned();
    lab.spawn(
        "transit",
        &["gobgpd", "-f", &config, "-l", "info"],
        Some(&log),
    )?;
    let transit = lab.node("transit")?;
    // A router's ordinary routes: nothing cpn should keep or install.
    for (family, prefix, next_hop) in [
        ("ipv6", "2001:db8:99::/48", GOBGP),
        ("ipv6", "fc00:99::/32", GOBGP),
        ("ipv4", "203.0.113.0/24", "10.0.0.200"),
    ] {
        wait_for("GoBGP to take a route", Duration::from_secs(10), || {
            let out = transit.output(&[
                "gobgp", "global", "rib", "-a", family, "add", prefix, "nexthop", next_hop,
            ])?;
            Ok(out.status.success().then_some(()))
        })?;
    }
    Ok(())
}

/// The ingress (eBGP to compute1 over the transit router, and to the transit's GoBGP), the
/// compute agent with its service, and GoBGP.
fn start_agents(lab: &mut Lab) -> Result<()> {
    let ingress_bgp = bgp_section(
        INGRESS_AS,
        "10.0.0.100",
        &[
            (COMPUTE, 4_200_000_001, PASSIVE_MULTIHOP_BFD),
            (GOBGP, 4_200_000_200, ""),
        ],
    );
    lab.start_agent(
        "ingress",
        &format!(
            "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
             [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
             [srv6]\nsource = \"2001:db8:1::2\"\n\n\
             [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\n\n\
             [selection]\ninterval_ms = 200\n\n{ingress_bgp}"
        ),
    )?;
    let work = lab.workdir().to_path_buf();
    let inflight = work.join("compute1.inflight");
    let knob = work.join("compute1.load");
    fs::write(&knob, "0\n")?;
    let compute_bgp = bgp_section(
        4_200_000_001,
        "10.0.0.1",
        &[("2001:db8:50::1", INGRESS_AS, MULTIHOP_BFD)],
    );
    lab.start_agent(
        "compute1",
        &compute_config(1, 1e12, &inflight, &compute_bgp),
    )?;
    start_name_server(lab, "compute1", &inflight, &knob)?;
    start_gobgp(lab)
}

#[test]
fn a_next_hop_behind_a_router_is_resolved_and_followed() -> Result<()> {
    let mut lab = topology()?;
    start_agents(&mut lab)?;
    let logs = |lab: &Lab| lab.logs(["ingress", "compute1"]);

    // The next hop 2001:db8:11::2 is two hops away: installed via the router.
    wait_for(
        "the locator via the transit router",
        Duration::from_secs(30),
        || {
            Ok(bgp_routes(&lab)?
                .contains("fc00:1::/32 via 2001:db8:50::2 dev eth1")
                .then_some(()))
        },
    )
    .with_context(|| logs(&lab))?;
    let shown = kernel_route_of(&lab, "fc00:1::/32")?;
    ensure!(
        shown.as_deref() == Some("via 2001:db8:50::2 dev eth1"),
        "cpnctl show routes: {shown:?}"
    );
    wait_for("flows to reach compute1", Duration::from_secs(20), || {
        let s = split(&lab, 10).unwrap_or_default();
        Ok((s.get("compute1") == Some(&10)).then_some(()))
    })
    .with_context(|| logs(&lab))?;

    // The path to the next hop moves to eth2: the locator follows it, no BGP change needed.
    // (The same source address: BFD knows the agents by address.)
    lab.node("ingress")?.run(&[
        "ip",
        "-6",
        "route",
        "replace",
        "2001:db8:11::/64",
        "via",
        "2001:db8:51::2",
        "dev",
        "eth2",
        "src",
        "2001:db8:50::1",
    ])?;
    wait_for(
        "the locator to follow the next hop's route",
        Duration::from_secs(10),
        || {
            Ok(bgp_routes(&lab)?
                .contains("fc00:1::/32 via 2001:db8:51::2 dev eth2")
                .then_some(()))
        },
    )
    .with_context(|| logs(&lab))?;
    wait_for("flows over the new path", Duration::from_secs(10), || {
        let s = split(&lab, 10).unwrap_or_default();
        Ok((s.get("compute1") == Some(&10)).then_some(()))
    })
    .with_context(|| logs(&lab))?;

    // GoBGP's ordinary routes: dropped on arrival and counted, none in the kernel.
    let neighbors = wait_for(
        "GoBGP's routes to be filtered",
        Duration::from_secs(20),
        || {
            let neighbors: Vec<Neighbor> = lab.ask("ingress", &Request::Neighbors)?;
            let gobgp = neighbors
                .iter()
                .find(|n| n.address == GOBGP.parse::<IpAddr>().unwrap());
            Ok(gobgp.is_some_and(|n| n.filtered >= 2).then_some(neighbors))
        },
    )
    .with_context(|| logs(&lab))?;
    let gobgp = neighbors
        .iter()
        .find(|n| n.address == GOBGP.parse::<IpAddr>().unwrap())
        .context("the GoBGP neighbor")?;
    ensure!(gobgp.paths == 0, "kept no path of GoBGP's: {gobgp:?}");
    let routes = bgp_routes(&lab)?;
    ensure!(
        !routes.contains("2001:db8:99::") && !routes.contains("fc00:99::"),
        "nothing of GoBGP's in the kernel: {routes}"
    );
    ensure!(
        routes.contains("fc00:1::/32 via 2001:db8:51::2 dev eth2"),
        "compute1's locator still in: {routes}\n{}",
        logs(&lab)
    );
    let compute = neighbors
        .iter()
        .find(|n| n.address == COMPUTE.parse::<IpAddr>().unwrap())
        .context("the compute neighbor")?;
    ensure!(
        compute.state == cpn_agent::bgp::fsm::State::Established,
        "{compute:?}\n{}",
        logs(&lab)
    );
    // Multihop BFD runs across the router, and is up at the end. (The path's move can cost
    // more packets than BFD's 3 × 50 ms allow, while the new next hop is resolved: a flap
    // then is BFD doing its job, and is shown.)
    let bfd = wait_for("multihop BFD up", Duration::from_secs(10), || {
        let neighbors: Vec<Neighbor> = lab.ask("ingress", &Request::Neighbors)?;
        Ok(neighbors
            .into_iter()
            .find(|n| n.address == COMPUTE.parse::<IpAddr>().unwrap())
            .and_then(|n| n.bfd)
            .filter(|b| b.multihop && b.state == cpn_agent::sensing::bfd::packet::State::Up))
    })
    .with_context(|| logs(&lab))?;
    if bfd.down_at_unix_us.is_some() {
        eprintln!("multihop BFD went down once while the path moved: {bfd:?}");
    }
    Ok(())
}
