//! The next-hop cache: the ingress agent resolves each node's first segment (route, interface,
//! neighbour) into the maps `cpn_steer` reads instead of calling `bpf_fib_lookup`, follows the
//! kernel's changes without a restart, leaves to the FIB what it must (no route, ECMP, policy
//! rules, forwarding off), and keeps its gateways resolved with managed neighbour entries.
//!
//! ```text
//!   client ── eth0 ingress eth1 2001:db8:50::/64 ── router1     edge1: fc00:1::d6 via router1
//!                          eth2 2001:db8:51::/64 ── router2     edge2: 2001:db8:50::2 (on-link)
//!                                                               edge3: fc00:3::d6, ECMP over both
//! ```

use std::{collections::BTreeMap, net::Ipv6Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use clap::Parser as _;
use cpn_agent::{
    api::{CacheState, NextHopView, Request},
    dataplane::{Dataplane, MacAddr, NextHop, Node, NodeState, NotCached, Pinned, Pinning},
};
use cpn_tests::lab::{Lab, Node as LabNode, wait_for};
use serde_json::Value;

const ROUTER1: &str = "2001:db8:50::2";
const ROUTER2: &str = "2001:db8:51::2";
const WAIT: Duration = Duration::from_secs(10);

fn topology() -> Result<Lab> {
    let lab = Lab::builder("nexthop-cache")
        .node("client")
        .node("ingress")
        .node("router1")
        .node("router2")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("router1", "eth0"))
        .link(("ingress", "eth2"), ("router2", "eth0"))
        .build()?;
    lab.node("client")?
        .add_address("eth0", "2001:db8:1::1/64")?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    ingress.add_address("eth1", "2001:db8:50::1/64")?;
    ingress.add_address("eth2", "2001:db8:51::1/64")?;
    ingress.enable_forwarding()?;
    ingress.add_route(&["fc00:1::/32", "via", ROUTER1, "dev", "eth1"])?;
    ingress.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "fc00:3::/32",
        "nexthop",
        "via",
        ROUTER1,
        "dev",
        "eth1",
        "nexthop",
        "via",
        ROUTER2,
        "dev",
        "eth2",
    ])?;
    for (router, address) in [("router1", ROUTER1), ("router2", ROUTER2)] {
        let router = lab.node(router)?;
        router.add_address("eth0", &format!("{address}/64"))?;
        // A changed MAC is announced at once (an unsolicited neighbour advertisement), rather
        // than found when the ingress's entry times out half a minute later.
        router.sysctl("net.ipv6.conf.eth0.ndisc_notify=1")?;
    }
    Ok(lab)
}

fn remote(name: &str, segments: &[&str]) -> String {
    let segments: Vec<String> = segments.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[remote]]\nname = \"{name}\"\nsegments = [{}]\n\n[[remote.service]]\n\
         address = \"2001:db8:cafe::1\"\ncapacity = {{ cpu = 1e12 }}\n\n",
        segments.join(", ")
    )
}

fn ingress_config() -> String {
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"2001:db8:cafe::1\"\nkind = \"cpu\"\n\n{}{}{}",
        remote("edge1", &["fc00:1::d6"]),
        remote("edge2", &[ROUTER1, "fc00:2::d6"]),
        remote("edge3", &["fc00:3::d6"]),
    )
}

/// `cpnctl show nexthops`, by node name.
fn views(lab: &Lab) -> Result<BTreeMap<String, NextHopView>> {
    let views: Vec<NextHopView> = lab.ask("ingress", &Request::NextHops)?;
    Ok(views
        .into_iter()
        .filter_map(|v| Some((v.name.clone()?, v)))
        .collect())
}

fn json(node: &LabNode, argv: &[&str]) -> Result<Value> {
    Ok(serde_json::from_slice(&node.run(argv)?.stdout)?)
}

/// What the kernel itself says for packets to `segment`, from `ip route get`, `ip link` and
/// `ip neigh`: the next hop the cache must hold.
fn kernel_next_hop(ingress: &LabNode, segment: &str) -> Result<Option<NextHop>> {
    let route = json(ingress, &["ip", "-6", "-j", "route", "get", segment])?;
    let route = &route[0];
    let dev = route["dev"].as_str().context("route dev")?;
    let neighbour = route["gateway"].as_str().unwrap_or(segment);
    let route_mtu = route["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| m["mtu"].as_u64());
    let link = json(ingress, &["ip", "-j", "link", "show", "dev", dev])?;
    let link = &link[0];
    let neigh = json(
        ingress,
        &["ip", "-j", "neigh", "show", neighbour, "dev", dev],
    )?;
    let Some(lladdr) = neigh[0]["lladdr"].as_str() else {
        return Ok(None);
    };
    Ok(Some(NextHop {
        ifindex: u32::try_from(link["ifindex"].as_u64().context("ifindex")?)?,
        mtu: u32::try_from(route_mtu.or(link["mtu"].as_u64()).context("mtu")?)?,
        neighbour: neighbour.parse()?,
        dst_mac: lladdr.parse()?,
        src_mac: link["address"].as_str().context("address")?.parse()?,
    }))
}

/// The view and the data plane's own map both hold exactly what the kernel says.
fn cached_as_the_kernel_says(
    lab: &Lab,
    pinned: &Pinned,
    name: &str,
    segment: &str,
) -> Result<Option<NextHop>> {
    let Some(expected) = kernel_next_hop(lab.node("ingress")?, segment)? else {
        return Ok(None);
    };
    let views = views(lab)?;
    let view = views
        .get(name)
        .with_context(|| format!("no row for {name}: {views:#?}"))?;
    let row = pinned.nexthops()?.into_iter().find(|r| r.node == view.node);
    let matches = view.state == CacheState::Cached
        && view.ifindex == Some(expected.ifindex)
        && view.gateway == Some(expected.neighbour)
        && view.dst_mac == Some(expected.dst_mac)
        && view.src_mac == Some(expected.src_mac)
        && view.mtu == Some(expected.mtu)
        && row.is_some_and(|r| {
            (r.ifindex, r.mtu, r.dst_mac, r.src_mac)
                == (
                    expected.ifindex,
                    expected.mtu,
                    expected.dst_mac,
                    expected.src_mac,
                )
        });
    Ok(matches.then_some(expected))
}

fn await_cached(lab: &Lab, pinned: &Pinned, name: &str, segment: &str) -> Result<NextHop> {
    wait_for(
        &format!("{name}'s next hop to be cached as the kernel resolves it"),
        WAIT,
        || cached_as_the_kernel_says(lab, pinned, name, segment),
    )
    .with_context(|| format!("{:#?}\n{}", views(lab), lab.logs(["ingress"])))
}

fn await_not_cached(
    lab: &Lab,
    pinned: &Pinned,
    name: &str,
    why: impl Fn(&NotCached) -> bool,
) -> Result<()> {
    wait_for(&format!("{name} not to be cached"), WAIT, || {
        let views = views(lab)?;
        let view = views.get(name).context("no row")?;
        let off = !pinned.nexthops()?.iter().any(|r| r.node == view.node);
        Ok(
            (off && matches!(&view.state, CacheState::NotCached { why: w } if why(w)))
                .then_some(()),
        )
    })
    .with_context(|| format!("{:#?}\n{}", views(lab), lab.logs(["ingress"])))
}

/// The ingress's neighbour entry for `address`, if any (`ip -j neigh`).
fn neighbour_entry(ingress: &LabNode, address: &str) -> Result<Option<Value>> {
    let entries = json(ingress, &["ip", "-6", "-j", "neigh", "show", address])?;
    Ok(entries.as_array().and_then(|e| e.first()).cloned())
}

fn is_managed(entry: Option<&Value>) -> bool {
    entry.is_some_and(|e| e.get("managed").is_some() && e["protocol"] == "201")
}

/// `cpnctl show nexthops` against the ingress agent.
fn show_nexthops(lab: &Lab) -> Result<String> {
    let socket = lab.control_socket("ingress");
    cpnctl(&[
        "--socket",
        socket.to_str().context("socket path")?,
        "show",
        "nexthops",
    ])
}

fn cpnctl(args: &[&str]) -> Result<String> {
    let cli =
        cpn_agent::cli::Cli::try_parse_from(std::iter::once("cpnctl").chain(args.iter().copied()))?;
    cpn_agent::cli::run(&cli)
}

#[test]
fn nexthop_cache_follows_routes_neighbours_rules_and_forwarding() -> Result<()> {
    let mut lab = topology()?;
    let agent = lab.start_agent("ingress", &ingress_config())?;
    // The lab's links are veths with their default offloads: the agent says what that costs.
    wait_for("the veth warning", Duration::from_secs(5), || {
        Ok(lab
            .logs(["ingress"])
            .contains("interface eth0: cpn_steer runs in XDP on a veth")
            .then_some(()))
    })?;
    let pinned = Pinned::new(&agent.pin_dir);
    let edge1 = first_resolution(&lab, &pinned)?;
    follows_the_gateway_and_the_route(&lab, &pinned, &edge1)?;
    policy_rules_and_forwarding_turn_it_off(&lab, &pinned)?;

    // The raw maps, read from the pins: one live slot per cached node.
    let dump: Value = serde_json::from_str(&cpnctl(&[
        "--json",
        "maps",
        "dump",
        "--pin-dir",
        agent.pin_dir.to_str().context("pin dir")?,
    ])?)?;
    let live = dump["nexthops"]
        .as_array()
        .context("nexthops")?
        .iter()
        .filter(|r| r["live"] == true)
        .count();
    ensure!(
        live == 2 && dump["nexthop_sel"].as_array().is_some_and(|s| s.len() == 2),
        "{dump:#}"
    );

    // Stopped: no agent keeps the cache current, so it is off, and its managed entries go.
    let exit = lab.stop(agent.pid)?;
    ensure!(exit.success(), "{exit}\n{}", lab.logs(["ingress"]));
    ensure!(pinned.nexthops()?.is_empty(), "{:?}", pinned.nexthops()?);
    let ingress = lab.node("ingress")?;
    ensure!(
        !is_managed(neighbour_entry(ingress, ROUTER1)?.as_ref()),
        "{:?}",
        neighbour_entry(ingress, ROUTER1)?
    );
    Ok(())
}

/// A gateway nobody has talked to yet: its managed entry gets it resolved. Edge1 and edge2 go
/// through it, edge3 has an ECMP route. Edge1's next hop.
fn first_resolution(lab: &Lab, pinned: &Pinned) -> Result<NextHop> {
    let edge1 = await_cached(lab, pinned, "edge1", "fc00:1::d6")?;
    let router1: Ipv6Addr = ROUTER1.parse()?;
    ensure!(edge1.neighbour == router1 && edge1.mtu == 1500, "{edge1:?}");
    let edge2 = await_cached(lab, pinned, "edge2", ROUTER1)?;
    ensure!(edge2.neighbour == router1, "on-link: {edge2:?}");
    await_not_cached(lab, pinned, "edge3", |w| {
        *w == NotCached::Multipath { paths: 2 }
    })?;
    let ingress = lab.node("ingress")?;
    ensure!(
        is_managed(neighbour_entry(ingress, ROUTER1)?.as_ref()),
        "{:?}",
        neighbour_entry(ingress, ROUTER1)?
    );
    // The resolver alone, as a benchmark calls it from a thread inside the namespace (whose
    // forwarding is on, unlike the host's, maybe): the same answer.
    let inside = ingress.clone();
    let alone = std::thread::spawn(move || -> Result<_> {
        let _netns = inside.enter()?;
        cpn_agent::dataplane::resolve_now("fc00:1::d6".parse()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the resolver thread panicked"))??;
    ensure!(alone == Ok(edge1), "{alone:?} != {edge1:?}");
    let table = show_nexthops(lab)?;
    ensure!(
        table.starts_with("NODE")
            && table.contains("FIRST SEGMENT")
            && table
                .lines()
                .any(|l| l.starts_with("edge1") && l.contains(" cached ") && l.contains("eth1"))
            && table.contains("not cached: ECMP route (2 paths)"),
        "{table}"
    );
    Ok(edge1)
}

/// The gateway's MAC changes, the route moves, the route goes: the cache follows each without
/// a restart, and managed entries follow the gateways in use.
fn follows_the_gateway_and_the_route(lab: &Lab, pinned: &Pinned, edge1: &NextHop) -> Result<()> {
    let new_mac: MacAddr = "02:00:00:00:01:99".parse()?;
    lab.node("router1")?
        .run(&["ip", "link", "set", "eth0", "address", &new_mac.to_string()])?;
    for (name, segment) in [("edge1", "fc00:1::d6"), ("edge2", ROUTER1)] {
        wait_for(&format!("{name} to follow the new MAC"), WAIT, || {
            Ok(cached_as_the_kernel_says(lab, pinned, name, segment)?
                .filter(|n| n.dst_mac == new_mac))
        })
        .with_context(|| format!("{:#?}\n{}", views(lab), lab.logs(["ingress"])))?;
    }

    // The route moves to router2, with an MTU of its own.
    let ingress = lab.node("ingress")?;
    ingress.run(&[
        "ip",
        "-6",
        "route",
        "replace",
        "fc00:1::/32",
        "via",
        ROUTER2,
        "dev",
        "eth2",
        "mtu",
        "1400",
    ])?;
    let moved = await_cached(lab, pinned, "edge1", "fc00:1::d6")?;
    ensure!(
        moved.neighbour == ROUTER2.parse::<Ipv6Addr>()?
            && moved.mtu == 1400
            && moved.ifindex != edge1.ifindex,
        "{moved:?}"
    );
    ensure!(
        is_managed(neighbour_entry(ingress, ROUTER2)?.as_ref()),
        "router2 kept resolved"
    );

    // No route: not cached, and router2's managed entry, used by nobody now, goes.
    ingress.run(&["ip", "-6", "route", "del", "fc00:1::/32"])?;
    await_not_cached(lab, pinned, "edge1", |w| *w == NotCached::NoRoute)?;
    let table = show_nexthops(lab)?;
    ensure!(table.contains("not cached: no route"), "{table}");
    wait_for("router2's managed entry to go", WAIT, || {
        Ok((!is_managed(neighbour_entry(ingress, ROUTER2)?.as_ref())).then_some(()))
    })?;
    ensure!(
        is_managed(neighbour_entry(ingress, ROUTER1)?.as_ref()),
        "edge2 still uses router1"
    );
    ingress.add_route(&["fc00:1::/32", "via", ROUTER1, "dev", "eth1"])?;
    await_cached(lab, pinned, "edge1", "fc00:1::d6")?;
    Ok(())
}

/// A policy rule: the FIB path for every node (it applies rules per packet); gone: back.
/// Forwarding off: the FIB helper would refuse, so nothing is cached.
fn policy_rules_and_forwarding_turn_it_off(lab: &Lab, pinned: &Pinned) -> Result<()> {
    let ingress = lab.node("ingress")?;
    ingress.run(&[
        "ip",
        "-6",
        "rule",
        "add",
        "from",
        "2001:db8:77::/64",
        "lookup",
        "100",
        "pref",
        "1000",
    ])?;
    for name in ["edge1", "edge2", "edge3"] {
        await_not_cached(lab, pinned, name, |w| {
            matches!(w, NotCached::PolicyRules { count: 1, .. })
        })?;
    }
    ensure!(pinned.nexthops()?.is_empty(), "no live next hop at all");
    ingress.run(&["ip", "-6", "rule", "del", "pref", "1000"])?;
    await_cached(lab, pinned, "edge1", "fc00:1::d6")?;
    await_cached(lab, pinned, "edge2", ROUTER1)?;

    ingress.sysctl("net.ipv6.conf.all.forwarding=0")?;
    for name in ["edge1", "edge2"] {
        await_not_cached(lab, pinned, name, |w| *w == NotCached::ForwardingDisabled)?;
    }
    ingress.sysctl("net.ipv6.conf.all.forwarding=1")?;
    await_cached(lab, pinned, "edge1", "fc00:1::d6")?;
    await_cached(lab, pinned, "edge2", ROUTER1)?;
    Ok(())
}

/// The map side alone, on a loaded data plane (unpinned): each update goes to the idle half,
/// a node whose first segment changes or that goes loses its cached next hop.
#[test]
fn nexthop_cache_updates_write_the_idle_half_and_follow_the_node() -> Result<()> {
    let mut dp = Dataplane::load(&Pinning::Unpinned)?;
    let segment = |s: &str| s.parse::<Ipv6Addr>();
    let node = |first: &str| -> Result<Node> {
        Ok(Node {
            segments: vec![segment(first)?, segment("fc00:9::d6")?],
            encap_src: segment("2001:db8:1::2")?,
            reduced: false,
            state: NodeState::Active,
        })
    };
    let next_hop = |last: u8| NextHop {
        ifindex: 7,
        mtu: 1500,
        neighbour: Ipv6Addr::LOCALHOST,
        dst_mac: MacAddr([2, 0, 0, 0, 0, last]),
        src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
    };
    dp.set_node(5, &node("2001:db8:50::2")?)?;
    ensure!(dp.nexthop(5)?.is_none());
    dp.set_nexthop(5, Some(next_hop(2)))?;
    let first = dp.nexthop(5)?.context("cached")?;
    dp.set_nexthop(5, Some(next_hop(3)))?;
    let second = dp.nexthop(5)?.context("cached")?;
    ensure!(
        first.half != second.half
            && first.dst_mac == MacAddr([2, 0, 0, 0, 0, 2])
            && second.dst_mac == MacAddr([2, 0, 0, 0, 0, 3])
            && (second.ifindex, second.mtu, second.node) == (7, 1500, 5),
        "{first:?} {second:?}"
    );
    // The same first segment (a new SID after it): the next hop stays.
    let mut same_first = node("2001:db8:50::2")?;
    same_first.segments[1] = segment("fc00:8::d6")?;
    dp.set_node(5, &same_first)?;
    ensure!(dp.nexthop(5)? == Some(second), "kept");
    dp.set_node(5, &node("2001:db8:51::2")?)?;
    ensure!(dp.nexthop(5)?.is_none(), "another first segment: off");
    dp.set_nexthop(5, Some(next_hop(4)))?;
    dp.set_nexthop(6, Some(next_hop(5)))?;
    dp.remove_node(5)?;
    ensure!(dp.nexthop(5)?.is_none(), "a removed node: off");
    ensure!(dp.nexthop(6)?.is_some());
    dp.clear_nexthops()?;
    ensure!(dp.nexthop(6)?.is_none());
    dp.set_nexthop(6, None)?;
    Ok(())
}
