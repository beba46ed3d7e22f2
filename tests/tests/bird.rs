//! BIRD 2 (Debian 12's bird2, 2.0.12), a third BGP implementation after GoBGP (`bgp.rs`) and
//! FRR (`frr.rs`): as an eBGP peer of a compute agent, and as the route reflector of an
//! ingress and two compute agents, off the data path and on it.
//!
//! ```text
//!   eBGP peer:        compute1 (AS 4200000001) 2001:db8:11::2 ── 2001:db8:11::1 bird (AS 4200000200)
//!
//!   reflector off the data path (iBGP, AS 4200000100; everyone a client of bird):
//!                        ┌─ eth1 ── compute1 (cpu 1e12)
//!     client ── ingress ─┼─ eth2 ── compute2 (cpu 2e12)
//!                        └─ eth3 ── bird 2001:db8:13::2
//!
//!   reflector on the data path (the compute nodes' next hops lie behind bird's node):
//!     client ── ingress ── eth1 2001:db8:50::/64 ── bird ─┬─ eth1 2001:db8:11::/64 ── compute1
//!                                                        └─ eth2 2001:db8:12::/64 ── compute2
//! ```

use std::{fmt::Write as _, fs, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use cpn_agent::api::{LearnedPath, Neighbor, Request};
use cpn_tests::{
    bgp_lab::{address_star, bgp_section, compute_config, pair},
    bird::{Bird, BirdConfig},
    lab::{Lab, wait_for},
    steering_lab::{VIP, split, start_name_server},
};

const COMPUTE_AS: u32 = 4_200_000_001;
const BIRD_AS: u32 = 4_200_000_200;
/// The AS of the reflector labs, everyone's.
const CORE_AS: u32 = 4_200_000_100;
const BIRD_ROUTER_ID: &str = "10.0.0.200";

/// BIRD's own routes in the eBGP test: neither services nor cpn locators (no cpn agent names
/// them, and `fc00:99::/32` only looks like a locator).
const BIRD_IPV6: [&str; 3] = ["2001:db8:99::/48", "fc00:99::/32", "2001:db8:98:1::/64"];
const BIRD_IPV4: [&str; 2] = ["203.0.113.0/24", "192.0.2.128/25"];

fn neighbor(lab: &Lab, node: &str, address: &str) -> Result<Neighbor> {
    let address: IpAddr = address.parse()?;
    let neighbors: Vec<Neighbor> = lab.ask(node, &Request::Neighbors)?;
    neighbors
        .into_iter()
        .find(|n| n.address == address)
        .with_context(|| format!("{node} has no neighbor {address}"))
}

/// `ip [-6|-4] route show proto bgp` in `node`.
fn kernel_bgp_routes(lab: &Lab, node: &str, family: &str) -> Result<String> {
    let out = lab
        .node(node)?
        .output(&["ip", family, "route", "show", "proto", "bgp"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bytes of the attribute BIRD shows as `NAME: 01 02 ...` in `show route all` (how it
/// prints an attribute it does not know: type code in hex, `[t]` for transitive, the value in
/// hex), from the first path that has it.
fn attribute_bytes(route: &str, name: &str) -> Result<Vec<u8>> {
    let hex = route
        .lines()
        .find_map(|line| line.trim().strip_prefix(name))
        .with_context(|| format!("no `{name}` in BIRD's route:\n{route}"))?;
    hex.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).with_context(|| format!("`{name}` {hex}")))
        .collect()
}

/// The value of BIRD's `NAME: value` line of the first path that has one.
fn attribute<'a>(route: &'a str, name: &str) -> Option<&'a str> {
    route
        .lines()
        .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(": "))
}

/// What BIRD shows of compute1's service route (`route`, from `show route all`) and of its
/// locator route.
fn check_what_bird_decoded(bird: &Bird, lab: &Lab, route: &str) -> Result<()> {
    ensure!(
        attribute(route, "BGP.next_hop") == Some("2001:db8:11::2")
            && attribute(route, "BGP.as_path") == Some(&COMPUTE_AS.to_string())
            && attribute(route, "BGP.origin") == Some("IGP"),
        "next hop, AS path, origin: {route}"
    );
    ensure!(
        attribute(route, "BGP.aigp") == Some("0"),
        "AIGP (RFC 7311), 0 at the originator: {route}"
    );
    // The Link Bandwidth community (transitive two-octet-AS specific, subtype 4): AS_TRANS
    // (our AS has four octets) and the free capacity as an IEEE 754 binary32.
    let bandwidth = attribute(route, "BGP.ext_community")
        .and_then(|c| c.strip_prefix("(unknown 0x4004, 23456, "))
        .and_then(|c| c.strip_suffix(')'))
        .and_then(|c| c.parse::<u32>().ok())
        .map(f32::from_bits)
        .with_context(|| format!("the Link Bandwidth community: {route}"))?;
    ensure!(
        bandwidth.to_bits() == 1e12_f32.to_bits(),
        "free capacity {bandwidth}: {route}"
    );
    // The Prefix-SID attribute (type 40 = 0x28, optional transitive): one SRv6 L3 Service TLV
    // (5) holding one SRv6 SID Information sub-TLV (1): fc00:1::d6, End.DT6 (18).
    let prefix_sid = attribute_bytes(route, "BGP.28 [t]:")?;
    let sid: [u8; 16] = "fc00:1::d6".parse::<std::net::Ipv6Addr>()?.octets();
    ensure!(
        prefix_sid.len() == 28
            && prefix_sid[0] == 5
            && prefix_sid[1..3] == [0, 25]
            && prefix_sid[4] == 1
            && prefix_sid[5..7] == [0, 21]
            && prefix_sid[8..24] == sid
            && prefix_sid[25..27] == [0, 18],
        "the Prefix-SID attribute as BIRD holds it: {prefix_sid:02x?}"
    );
    // The CPN metric attribute (type 255, optional transitive), kept by BIRD as it came:
    // read back with our decoder.
    let metrics = cpn_agent::bgp::metric_attr::decode(&attribute_bytes(route, "BGP.ff [t]:")?)?;
    ensure!(metrics.node == "compute1", "{metrics:?}");
    ensure!(metrics.normalisation == "cpn-norm-v1", "{metrics:?}");
    ensure!(
        metrics
            .metrics
            .capacity
            .iter()
            .any(|(_, c)| c.total.value.to_bits() == 1e12_f64.to_bits()),
        "our capacity: {metrics:?}"
    );
    let score = metrics.score.context("the score TLV")?;
    ensure!((0.0..=1.0).contains(&score.l2), "{metrics:?}");
    // Our locator, a plain route naming its node.
    let locator = bird.routes_for(lab, "fc00:1::/32")?;
    let named = cpn_agent::bgp::metric_attr::decode(&attribute_bytes(&locator, "BGP.ff [t]:")?)?;
    ensure!(
        named.node == "compute1",
        "the locator names its node: {locator}"
    );
    Ok(())
}

/// BIRD peers with a compute agent over eBGP: it shows our service route with what it
/// decodes of it (AIGP, the Link Bandwidth community; the Prefix-SID and the CPN metric
/// attributes, unknown to it, as hex, which we decode here), and sends us its own IPv6 and
/// IPv4 routes, which the agent takes without a session reset and drops.
/// The `cpn` protocol line's state and "Since" time (HH:MM:SS.mmm, in milliseconds). BIRD
/// derives that wall-clock time from its monotonic clock each time it prints it, so two prints
/// of one session may differ by a millisecond or two; a reset would move it by seconds.
fn protocol_since(text: &str) -> Option<(String, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpn "))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let ms = fields
        .get(4)?
        .split([':', '.'])
        .try_fold(0u64, |acc, part| {
            let scale = if part.len() == 3 { 1000 } else { 60 };
            Some(acc * scale + part.parse::<u64>().ok()?)
        })?;
    Some(((*fields.get(3)?).to_owned(), ms))
}

#[test]
fn bird_ebgp_peer_reads_our_service_route_and_its_routes_are_filtered() -> Result<()> {
    let mut lab = pair(
        "bird-ebgp",
        ("compute1", "2001:db8:11::2"),
        ("bird", "2001:db8:11::1"),
    )?;
    let inflight = lab.workdir().join("compute1.inflight");
    fs::write(&inflight, "3\n")?;

    let config = BirdConfig::new(BIRD_ROUTER_ID)
        .own_routes(&BIRD_IPV6, &BIRD_IPV4)
        .ebgp(
            "cpn",
            ("2001:db8:11::1", BIRD_AS),
            ("2001:db8:11::2", COMPUTE_AS),
            true,
        );
    let bird = Bird::start(&mut lab, "bird", &config)?;
    let bgp = bgp_section(COMPUTE_AS, "10.0.0.1", &[("2001:db8:11::1", BIRD_AS, "")]);
    lab.start_agent("compute1", &compute_config(1, 1e12, &inflight, &bgp))?;
    let logs = |lab: &Lab| lab.logs(["bird", "compute1"]);

    let established = bird.wait_established(&lab, "cpn", Duration::from_secs(30))?;
    let route = wait_for("our route in BIRD", Duration::from_secs(20), || {
        let text = bird.routes_for(&lab, &format!("{VIP}/128"))?;
        Ok(text.contains("BGP.ff").then_some(text))
    })
    .with_context(|| logs(&lab))?;
    eprintln!("{route}");

    check_what_bird_decoded(&bird, &lab, &route)?;

    // BIRD's own routes reach the agent, which drops every one of them and keeps the session.
    let bird_neighbor = wait_for(
        "BIRD's routes to be filtered",
        Duration::from_secs(20),
        || {
            let n = neighbor(&lab, "compute1", "2001:db8:11::1")?;
            Ok((n.filtered >= 5).then_some(n))
        },
    )
    .with_context(|| logs(&lab))?;
    eprintln!("{bird_neighbor:?}");
    ensure!(
        bird_neighbor.paths == 0,
        "the agent kept none of BIRD's routes: {bird_neighbor:?}"
    );
    let exported = bird.protocol(&lab, "cpn")?;
    ensure!(
        exported.contains("Routes:         2 imported, 3 exported")
            && exported.contains("Routes:         0 imported, 2 exported"),
        "BIRD sent its three IPv6 and two IPv4 routes, and took our two: {exported}"
    );
    // Let a few keepalives and re-advertisements pass: nothing resets the session.
    std::thread::sleep(Duration::from_secs(4));
    let now = neighbor(&lab, "compute1", "2001:db8:11::1")?;
    let count = |counts: &std::collections::BTreeMap<String, u64>, kind: &str| {
        counts.get(kind).copied().unwrap_or(0)
    };
    ensure!(
        now.state == cpn_agent::bgp::fsm::State::Established
            && count(&now.messages.received, "open") == 1
            && count(&now.messages.sent, "open") == 1
            && count(&now.messages.received, "notification") == 0
            && count(&now.messages.sent, "notification") == 0,
        "one session, no NOTIFICATION: {now:?}\n{}",
        logs(&lab)
    );
    let protocol = bird.protocol(&lab, "cpn")?;
    let same_session = match (protocol_since(&protocol), protocol_since(&established)) {
        (Some((state, now)), Some((then_state, then))) => {
            state == "up" && then_state == "up" && now.abs_diff(then) <= 10
        }
        _ => false,
    };
    ensure!(
        same_session && !protocol.contains("Last error"),
        "BIRD's session stayed up since it was established: {protocol}\nthen: {established}"
    );
    ensure!(
        bird.routes_for(&lab, &format!("{VIP}/128"))?
            .contains("BGP.ff"),
        "our route is still in BIRD"
    );
    let (ipv6, ipv4) = (
        kernel_bgp_routes(&lab, "compute1", "-6")?,
        kernel_bgp_routes(&lab, "compute1", "-4")?,
    );
    for prefix in BIRD_IPV6.iter().chain(&BIRD_IPV4) {
        let prefix = prefix.split('/').next().unwrap_or(prefix);
        ensure!(
            !ipv6.contains(prefix) && !ipv4.contains(prefix),
            "{prefix} of BIRD's in the kernel: {ipv6}{ipv4}"
        );
    }
    Ok(())
}

/// The ingress's BGP-learned kernel routes, the paths it learned, and the selection's
/// explanation: what a failed wait in the reflector labs should show.
fn ingress_state(lab: &Lab) -> String {
    let routes = kernel_bgp_routes(lab, "ingress", "-6").unwrap_or_default();
    let paths: serde_json::Value = lab.ask("ingress", &Request::Routes).unwrap_or_default();
    let services: serde_json::Value = lab.ask("ingress", &Request::Services).unwrap_or_default();
    // First, in one line per candidate, why selection left it out, if it did.
    let excluded = services
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s["decision"]["evaluations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .fold(String::new(), |mut out, e| {
            let _ = writeln!(out, "{}: excluded {}", e["name"], e["excluded"]);
            out
        });
    format!(
        "--- ingress: candidates\n{excluded}\
         --- ingress: ip -6 route show proto bgp\n{routes}--- ingress: paths\n{paths:#}\n\
         --- ingress: services\n{services:#}\n{}",
        lab.logs(["bird", "ingress", "compute1", "compute2"])
    )
}

/// The ingress's configuration: one iBGP neighbor, the reflector at `reflector`, and
/// `policy` (lines of its `[[policy]]` for the service).
fn ingress_config(reflector: &str, policy: &str) -> String {
    let bgp = bgp_section(CORE_AS, "10.0.0.100", &[(reflector, CORE_AS, "")]);
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\n{policy}\n\
         [selection]\ninterval_ms = 200\nmin_dwell_ms = 500\nmax_churn = 1.0\n\n{bgp}"
    )
}

/// Starts compute agent `n` (capacity `n` × 1e12, iBGP to `reflector`) and its service.
fn start_compute(lab: &mut Lab, n: u32, reflector: &str) -> Result<()> {
    let work = lab.workdir().to_path_buf();
    let inflight = work.join(format!("compute{n}.inflight"));
    let knob = work.join(format!("compute{n}.load"));
    fs::write(&knob, "0\n")?;
    let bgp = bgp_section(CORE_AS, &format!("10.0.0.{n}"), &[(reflector, CORE_AS, "")]);
    let node = format!("compute{n}");
    lab.start_agent(
        &node,
        &compute_config(n, f64::from(n) * 1e12, &inflight, &bgp),
    )?;
    start_name_server(lab, &node, &inflight, &knob)
}

/// BIRD reflecting between `clients` (name, address), the iBGP sessions waiting for them.
fn reflector_config(clients: &[(&str, &str)]) -> BirdConfig {
    clients.iter().fold(
        BirdConfig::new(BIRD_ROUTER_ID),
        |config, (name, address)| config.rr_client(name, CORE_AS, address, BIRD_ROUTER_ID),
    )
}

/// Both services' paths reached the ingress through the reflector, each with its own
/// ADD-PATH id and the reflector's cluster id (RFC 4456).
fn wait_for_reflected_sites(lab: &Lab) -> Result<()> {
    let cluster: std::net::Ipv4Addr = BIRD_ROUTER_ID.parse()?;
    wait_for(
        "both sites of the service at the ingress, reflected by BIRD",
        Duration::from_secs(30),
        || {
            let paths: Vec<LearnedPath> = lab.ask("ingress", &Request::Routes)?;
            let sites: Vec<_> = paths
                .iter()
                .filter(|p| p.prefix == format!("{VIP}/128") && p.cluster_list == [cluster])
                .filter_map(|p| p.node.clone())
                .collect();
            Ok((sites.len() == 2
                && sites.contains(&"compute1".to_owned())
                && sites.contains(&"compute2".to_owned()))
            .then_some(()))
        },
    )
    .with_context(|| ingress_state(lab))
}

/// New flows from the client reach both compute nodes.
fn wait_for_both_nodes(lab: &Lab) -> Result<()> {
    let s = wait_for(
        "new flows on both compute nodes",
        Duration::from_secs(30),
        || {
            let s = split(lab, 60).unwrap_or_default();
            Ok((s.len() == 2).then_some(s))
        },
    )
    .with_context(|| ingress_state(lab))?;
    eprintln!("split of 60 new flows: {s:?}");
    Ok(())
}

/// Centralized mode with BIRD as the route reflector, off the data path: the ingress and
/// both compute agents are its clients, ADD-PATH gives the ingress both sites, and the flows
/// go straight from the ingress to the compute nodes. The ingress's policy bounds loss and
/// latency and weighs latency: the paths are STAMP's, measured from the ingress to each node
/// along its encapsulation, whatever the reflector in between.
#[test]
fn bird_route_reflector_off_the_data_path() -> Result<()> {
    const REFLECTOR: &str = "2001:db8:13::2";
    let mut lab = Lab::builder("bird-rr")
        .node("client")
        .node("ingress")
        .node("compute1")
        .node("compute2")
        .node("bird")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("compute1", "eth0"))
        .link(("ingress", "eth2"), ("compute2", "eth0"))
        .link(("ingress", "eth3"), ("bird", "eth0"))
        .build()?;
    address_star(&lab)?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth3", "2001:db8:13::1/64")?;
    let bird_node = lab.node("bird")?;
    bird_node.add_address("eth0", &format!("{REFLECTOR}/64"))?;
    bird_node.add_route(&["default", "via", "2001:db8:13::1"])?;

    // BIRD resolves the clients' next hops (the compute nodes' addresses) via the ingress.
    let config = reflector_config(&[
        ("ingress", "2001:db8:13::1"),
        ("compute1", "2001:db8:11::2"),
        ("compute2", "2001:db8:12::2"),
    ])
    .default_route("2001:db8:13::1");
    let bird = Bird::start(&mut lab, "bird", &config)?;
    lab.start_agent(
        "ingress",
        &ingress_config(
            REFLECTOR,
            "max_loss = 0.05\nmax_latency_ms = 50\nobjective = { latency = 1, load = 1 }\n",
        ),
    )?;
    for n in 1..=2 {
        start_compute(&mut lab, n, REFLECTOR)?;
    }
    for name in ["ingress", "compute1", "compute2"] {
        bird.wait_established(&lab, name, Duration::from_secs(30))?;
    }
    wait_for_reflected_sites(&lab)?;
    eprintln!("{}", bird.routes_for(&lab, &format!("{VIP}/128"))?);
    let routes = wait_for(
        "both locators at the ingress",
        Duration::from_secs(20),
        || {
            let routes = kernel_bgp_routes(&lab, "ingress", "-6")?;
            Ok((routes.contains("fc00:1::/32 via 2001:db8:11::2 dev eth1")
                && routes.contains("fc00:2::/32 via 2001:db8:12::2 dev eth2"))
            .then_some(routes))
        },
    )
    .with_context(|| ingress_state(&lab))?;
    eprintln!("{routes}");
    wait_for_both_nodes(&lab)
}

/// BIRD as the route reflector on the data path: the compute nodes sit behind BIRD's node,
/// so their next hops (their own addresses) are not on a subnet of the ingress, which
/// reaches them through a static route via BIRD's node (the "IGP"). The ingress resolves
/// each locator's next hop in its FIB and installs the locator via that route's gateway;
/// BIRD installs the locators it learned in its node's kernel and forwards to them.
#[test]
fn bird_route_reflector_on_the_path_next_hops_resolved_through_the_fib() -> Result<()> {
    const REFLECTOR: &str = "2001:db8:50::2";
    let mut lab = Lab::builder("bird-rr-path")
        .node("client")
        .node("ingress")
        .node("bird")
        .node("compute1")
        .node("compute2")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("bird", "eth0"))
        .link(("bird", "eth1"), ("compute1", "eth0"))
        .link(("bird", "eth2"), ("compute2", "eth0"))
        .build()?;
    let client = lab.node("client")?;
    client.add_address("eth0", "2001:db8:1::1/64")?;
    client.add_route(&["default", "via", "2001:db8:1::2"])?;
    client.checksum_in_software("eth0")?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    ingress.add_address("eth1", "2001:db8:50::1/64")?;
    ingress.enable_forwarding()?;
    let bird_node = lab.node("bird")?;
    bird_node.add_address("eth0", &format!("{REFLECTOR}/64"))?;
    bird_node.enable_forwarding()?;
    // What the ingress redirects in XDP arrives on a veth only with NAPI on the far end: GRO
    // gives it one (BIRD's node runs no XDP program).
    bird_node.run(&["ethtool", "-K", "eth0", "gro", "on"])?;
    bird_node.add_route(&["2001:db8:1::/64", "via", "2001:db8:50::1"])?;
    for n in 1..=2 {
        let subnet = format!("2001:db8:1{n}::");
        lab.node("bird")?
            .add_address(&format!("eth{n}"), &format!("{subnet}1/64"))?;
        lab.node("ingress")?.add_route(&[
            &format!("{subnet}/64"),
            "via",
            REFLECTOR,
            "dev",
            "eth1",
        ])?;
        let node = lab.node(&format!("compute{n}"))?;
        node.add_address("eth0", &format!("{subnet}2/64"))?;
        node.add_address("lo", &format!("{VIP}/128"))?;
        node.add_route(&["default", "via", &format!("{subnet}1")])?;
    }

    let config = reflector_config(&[
        ("ingress", "2001:db8:50::1"),
        ("compute1", "2001:db8:11::2"),
        ("compute2", "2001:db8:12::2"),
    ])
    .install("fc00::/16");
    let bird = Bird::start(&mut lab, "bird", &config)?;
    lab.start_agent(
        "ingress",
        &ingress_config(REFLECTOR, "objective = { latency = 0, load = 1 }\n"),
    )?;
    for n in 1..=2 {
        start_compute(&mut lab, n, &format!("2001:db8:1{n}::1"))?;
    }
    for name in ["ingress", "compute1", "compute2"] {
        bird.wait_established(&lab, name, Duration::from_secs(30))?;
    }
    wait_for_reflected_sites(&lab)?;
    let routes = wait_for(
        "both locators via BIRD's node at the ingress",
        Duration::from_secs(20),
        || {
            let routes = kernel_bgp_routes(&lab, "ingress", "-6")?;
            Ok((routes.contains("fc00:1::/32 via 2001:db8:50::2 dev eth1")
                && routes.contains("fc00:2::/32 via 2001:db8:50::2 dev eth1"))
            .then_some(routes))
        },
    )
    .with_context(|| ingress_state(&lab))?;
    eprintln!("ingress:\n{routes}");
    let paths: Vec<LearnedPath> = lab.ask("ingress", &Request::Routes)?;
    for n in 1..=2 {
        let locator = paths
            .iter()
            .find(|p| p.prefix == format!("fc00:{n}::/32"))
            .with_context(|| format!("no path for fc00:{n}::/32: {paths:?}"))?;
        ensure!(
            locator.next_hop == format!("2001:db8:1{n}::2").parse::<std::net::Ipv6Addr>()?
                && locator.kernel.as_deref() == Some("via 2001:db8:50::2 dev eth1"),
            "the BGP next hop kept by the reflector, resolved in the FIB: {locator:?}"
        );
    }
    let out = lab
        .node("bird")?
        .output(&["ip", "-6", "route", "show", "proto", "bird"])?;
    let installed = String::from_utf8_lossy(&out.stdout);
    eprintln!("BIRD's node:\n{installed}");
    ensure!(
        installed.contains("fc00:1::/32 via 2001:db8:11::2 dev eth1")
            && installed.contains("fc00:2::/32 via 2001:db8:12::2 dev eth2"),
        "BIRD installed the locators it reflects: {installed}"
    );
    wait_for_both_nodes(&lab)
}
