//! `cpnctl` against running agents: the demo's lab, asked over each agent's control socket.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use cpn_tests::{
    cpn_lab::{CpnLab, Topology},
    lab::wait_for,
};

fn cpnctl(lab: &CpnLab, node: &str, args: &[&str]) -> Result<String> {
    let binary = cpn_tests::lab::agent_binary()?.with_file_name("cpnctl");
    let socket = lab.lab.control_socket(node);
    let out = Command::new(&binary)
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "cpnctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Another user is refused by its credentials (`SO_PEERCRED`), even with the socket's mode
/// loosened for it.
fn another_user_is_refused(lab: &CpnLab) -> Result<()> {
    let socket = lab.lab.control_socket("ingress");
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let binary = cpn_tests::lab::agent_binary()?.with_file_name("cpnctl");
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .arg("--socket")
        .arg(&socket)
        .args(["show", "neighbors"])
        .output()?;
    let said = String::from_utf8_lossy(&nobody.stderr);
    ensure!(
        !nobody.status.success() && said.contains("refused") && said.contains("uid 65534"),
        "a non-root cpnctl: {said}"
    );
    Ok(())
}

fn json(lab: &CpnLab, node: &str, what: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&cpnctl(
        lab,
        node,
        &["--json", "show", what],
    )?)?)
}

#[test]
fn cpnctl_shows_neighbors_routes_and_services() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml");
    let topology = Topology::parse(&path, &std::fs::read_to_string(&path)?)?;
    let mut lab = CpnLab::start("cpnctl", topology)?;

    // The ingress's one neighbor, the transit: up, with a BFD session.
    let neighbors = json(&lab, "ingress", "neighbors")?;
    let transit = &neighbors[0];
    ensure!(
        transit["address"] == "2001:db8:100::2"
            && transit["asn"] == 4_200_000_050_u32
            && transit["state"] == "Established"
            && transit["bfd"]["multiplier"] == 3
            && transit["bfd"]["interval_us"] == 100_000,
        "{neighbors:#}"
    );
    another_user_is_refused(&lab)?;
    let text = cpnctl(&lab, "ingress", &["show", "bfd"])?;
    ensure!(
        text.starts_with("NEIGHBOR")
            && text.contains("2001:db8:100::2  ")
            && text.contains("dropped:"),
        "{text}"
    );
    let text = cpnctl(&lab, "ingress", &["show", "neighbors"])?;
    ensure!(
        text.starts_with("NEIGHBOR")
            && text.contains("2001:db8:100::2")
            && text.contains("Established"),
        "{text}"
    );

    // The transit's Adj-RIB-In: each compute node's service path with its SID and score.
    wait_for(
        "three service paths at the transit",
        Duration::from_secs(20),
        || {
            let routes = json(&lab, "transit", "routes")?;
            Ok((routes
                .as_array()
                .is_some_and(|r| r.iter().filter(|p| p["sid"].is_string()).count() == 3))
            .then_some(routes))
        },
    )
    .and_then(|routes| {
        for (n, node) in ["edge1", "edge2", "cloud"].iter().enumerate() {
            let path = routes
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["node"] == *node)
                .with_context(|| format!("no path from {node}: {routes:#}"))?;
            ensure!(
                path["prefix"] == "2001:db8:cafe::1/128"
                    && path["sid"] == format!("fc00:{}::d6", n + 1)
                    && path["behavior"] == 20
                    && path["score"]["l2"]
                        .as_f64()
                        .is_some_and(|s| (0.0..=1.0).contains(&s))
                    && path["as_path"]
                        == serde_json::json!([4_200_000_001_u32 + u32::try_from(n)?]),
                "{path:#}"
            );
        }
        Ok(())
    })?;
    let text = cpnctl(&lab, "transit", &["show", "routes"])?;
    ensure!(
        text.contains("fc00:3::d6") && text.contains("cloud"),
        "{text}"
    );

    // The ingress's service: three candidates (once the transit's paths reached it and its
    // steering applied them), weights that sum to 1.
    let services = wait_for(
        "three candidates at the ingress",
        Duration::from_secs(20),
        || {
            let services = json(&lab, "ingress", "services")?;
            let candidates = services[0]["decision"]["evaluations"]
                .as_array()
                .map_or(0, Vec::len);
            Ok((candidates == 3).then_some(services))
        },
    )?;
    let service = &services[0];
    let weights: f64 = service["decision"]["evaluations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["weight"].as_f64())
        .sum();
    ensure!(
        service["address"] == "2001:db8:cafe::1"
            && service["port"] == 7000
            && (weights - 1.0).abs() < 1e-6,
        "{service:#}"
    );
    let text = cpnctl(&lab, "ingress", &["show", "services"])?;
    ensure!(
        text.starts_with("service 2001:db8:cafe::1 port 7000") && text.contains("edge2"),
        "{text}"
    );

    data_plane_views(&lab)?;
    explain_agrees_with_the_data_plane(&lab)?;
    drain_and_undrain(&lab)?;
    load_reports_reach_the_transit(&lab)?;
    maps_dump_with_the_agent_stopped(&mut lab)
}

const SERVICE: &str = "2001:db8:cafe::1";
const CLIENT1: &str = "2001:db8:1::1";
/// `cpnctl explain` for client1's TCP flows to the service.
const EXPLAIN: [&str; 5] = ["explain", CLIENT1, SERVICE, "tcp", "7000"];

fn json_of(lab: &CpnLab, node: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    Ok(serde_json::from_str(&cpnctl(lab, node, &all)?)?)
}

/// `show nodes`, `show flows`, `show sids` and `show stats`, after some traffic.
fn data_plane_views(lab: &CpnLab) -> Result<()> {
    let web = &lab.topology.services[0];
    let split = lab.split("client1", web, 30)?;
    let names = ["cloud", "edge1", "edge2"];

    // Nodes: the three compute nodes by name, the whole ring between them, packets counted.
    let mut nodes = json_of(lab, "ingress", &["show", "nodes"])?;
    let list = nodes.as_array_mut().context("nodes")?;
    list.sort_by_key(|n| n["name"].as_str().map(str::to_owned));
    let slots: u64 = list
        .iter()
        .filter_map(|n| n["slots"]["2001:db8:cafe::1 tcp/7000"].as_u64())
        .sum();
    ensure!(slots == 65_537, "the ring's slots, by node: {nodes:#}");
    for (node, name) in list.iter().zip(names) {
        ensure!(
            node["name"] == name && node["state"] == "active",
            "{nodes:#}"
        );
        let sent = split.get(name).copied().unwrap_or(0);
        ensure!(
            sent == 0 || node["packets"].as_u64().is_some_and(|p| p > 0),
            "{name} answered {sent} connections, so packets were encapsulated towards it: {nodes:#}"
        );
    }
    let mut stable = nodes.clone();
    cpn_tests::golden::mask(&mut stable, &["node", "packets", "bytes", "slots"]);
    cpn_tests::golden::check("show-nodes-ingress", &stable)?;
    let text = cpnctl(lab, "ingress", &["show", "nodes"])?;
    ensure!(
        text.starts_with("ID  NODE") && text.contains("fc00:2::d6"),
        "{text}"
    );

    // Flows: filters by client, service, node and count.
    let flows = json_of(
        lab,
        "ingress",
        &["show", "flows", "--client", CLIENT1, "--service", SERVICE],
    )?;
    let flows = flows.as_array().context("flows")?;
    ensure!(
        flows.len() >= 30
            && flows.iter().all(|f| f["source"] == CLIENT1
                && f["destination"] == SERVICE
                && f["destination_port"] == 7000
                && f["protocol"] == 6
                && names.contains(&f["name"].as_str().unwrap_or("?"))),
        "{flows:#?}"
    );
    let busiest = split
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
        .context("split")?;
    let on_node = json_of(
        lab,
        "ingress",
        &["show", "flows", "--node", &busiest, "--limit", "5"],
    )?;
    ensure!(
        on_node.as_array().is_some_and(|f| !f.is_empty()
            && f.len() <= 5
            && f.iter().all(|f| f["name"] == busiest.as_str())),
        "{on_node:#}"
    );
    let text = cpnctl(lab, "ingress", &["show", "flows", "--limit", "3"])?;
    ensure!(
        text.starts_with("PROTO  CLIENT") && text.lines().count() == 4,
        "{text}"
    );

    sids_stats_and_messages(lab, &split)
}

/// `show sids` at a compute node, `show stats` and BGP message counts at the ingress.
fn sids_stats_and_messages(lab: &CpnLab, split: &BTreeMap<String, u32>) -> Result<()> {
    // SIDs at a compute node: its End.DT46, which decapsulated the flows sent to it.
    let mut sids = json_of(lab, "edge2", &["show", "sids"])?;
    ensure!(
        sids[0]["sid"] == "fc00:2::d6"
            && sids[0]["behavior"] == "End.DT46"
            && (!split.contains_key("edge2") || sids[0]["packets"].as_u64().is_some_and(|p| p > 0)),
        "{sids:#}"
    );
    cpn_tests::golden::mask(&mut sids, &["packets", "bytes"]);
    cpn_tests::golden::check("show-sids-edge2", &sids)?;
    let text = cpnctl(lab, "edge2", &["show", "sids"])?;
    ensure!(
        text.contains("End.DT46") && text.contains("fc00:2::d6"),
        "{text}"
    );

    // Stats by name.
    let stats = json_of(lab, "ingress", &["show", "stats"])?;
    let count = |group: &str, name: &str| {
        stats[group]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["packets"].as_u64())
    };
    ensure!(
        count("services", "2001:db8:cafe::1 tcp/7000").is_some_and(|p| p > 0)
            && count("protocols", "cpn_steer/ipv6").is_some_and(|p| p > 0)
            && split
                .keys()
                .all(|n| count("nodes", n).is_some_and(|p| p > 0)),
        "{stats:#}"
    );
    let text = cpnctl(lab, "ingress", &["show", "stats"])?;
    ensure!(
        text.starts_with("steered, per service\nSERVICE") && text.contains("cpn_steer/ipv6"),
        "{text}"
    );

    // BGP messages per neighbor: OPEN, KEEPALIVEs and UPDATEs both ways.
    let neighbors = json(lab, "ingress", "neighbors")?;
    let m = &neighbors[0]["messages"];
    ensure!(
        ["open", "keepalive", "update"]
            .iter()
            .all(|k| m["received"][k].as_u64().is_some_and(|n| n > 0))
            // Two OPENs when both sides connected at once (RFC 4271 §6.8 collision).
            && m["sent"]["open"].as_u64().is_some_and(|n| n >= 1),
        "{neighbors:#}"
    );
    Ok(())
}

/// The client's connection, from `port`, answered by which node.
fn answered_from_port(lab: &CpnLab, port: u16) -> Result<String> {
    let out = lab.lab.node("client1")?.output(&[
        "python3",
        "-c",
        "import socket, sys\n\
         c = socket.socket(socket.AF_INET6)\n\
         c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         c.bind(('2001:db8:1::1', int(sys.argv[1])))\n\
         c.settimeout(15)\n\
         c.connect(('2001:db8:cafe::1', 7000))\n\
         c.sendall(b'hi\\n')\n\
         print(c.makefile('rb').readline().decode().split()[0])\n",
        &port.to_string(),
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// `explain` predicts where a new flow goes (ring); the flow then goes there, and the explain
/// after it names the same node (affinity).
fn explain_agrees_with_the_data_plane(lab: &CpnLab) -> Result<()> {
    let explain = |port: u16| {
        let port = port.to_string();
        json_of(
            lab,
            "ingress",
            &[&EXPLAIN[..], &["--source-port", &port]].concat(),
        )
    };
    let mut compared = 0;
    let mut seen = std::collections::BTreeSet::new();
    // Below the ephemeral range (32768-60999): no earlier connection of the test used them, so
    // no affinity entry can be there already.
    for port in 22_000..22_016 {
        let before = explain(port)?;
        let flow = &before["flows"][0];
        ensure!(
            flow["decided_by"] == "ring" && flow["affinity"].is_null(),
            "a new flow is decided by the ring: {before:#}"
        );
        let predicted = flow["name"].as_str().context("a node name")?.to_owned();
        let answered = answered_from_port(lab, port)?;
        let after = explain(port)?;
        let flow = &after["flows"][0];
        ensure!(
            flow["decided_by"] == "affinity" && flow["name"] == answered.as_str(),
            "once open, the flow's affinity entry names the node that answered ({answered}): {after:#}"
        );
        // A ring written between the two explains may move the slot: compare only when not.
        if before["selection"]["ring_updates"] == after["selection"]["ring_updates"] {
            ensure!(
                predicted == answered,
                "explain predicted {predicted}, {answered} answered: {before:#}"
            );
            compared += 1;
            seen.insert(answered);
        }
    }
    ensure!(
        compared >= 8 && seen.len() >= 2,
        "{compared} predictions compared, nodes {seen:?}"
    );

    // Without a source port: the client's open flows, each explained.
    let open = json_of(lab, "ingress", &EXPLAIN)?;
    let flows = open["flows"].as_array().context("flows")?;
    ensure!(
        flows.len() >= 16
            && flows.iter().all(|f| f["decided_by"] == "affinity")
            && open["ring"].as_array().is_some_and(|r| r.len() == 3)
            && open["selection"]["decision"]["evaluations"]
                .as_array()
                .is_some_and(|e| e.len() == 3),
        "{open:#}"
    );
    let text = cpnctl(
        lab,
        "ingress",
        &[&EXPLAIN[..], &["--source-port", "22000"]].concat(),
    )?;
    ensure!(
        text.starts_with("flow tcp [2001:db8:1::1]:22000 -> [2001:db8:cafe::1]:7000")
            && text.contains("<- decides")
            && text.contains("PUBLISHED"),
        "{text}"
    );
    // Not a service: passed to the kernel.
    let other = json_of(
        lab,
        "ingress",
        &[
            "explain",
            CLIENT1,
            "2001:db8:dead::1",
            "udp",
            "53",
            "--source-port",
            "1",
        ],
    )?;
    ensure!(
        other["flows"][0]["service"].is_null() && other["flows"][0]["node"].is_null(),
        "{other:#}"
    );
    Ok(())
}

/// The ingress's pinned maps, read with its agent stopped.
fn maps_dump_with_the_agent_stopped(lab: &mut CpnLab) -> Result<()> {
    let agent = lab.agents.remove("ingress").context("the ingress agent")?;
    lab.lab.stop(agent.pid)?;
    let pin_dir = agent.pin_dir.to_str().context("pin dir")?;
    let dump: serde_json::Value = serde_json::from_str(&cpnctl(
        lab,
        "ingress",
        &["--json", "maps", "dump", "--pin-dir", pin_dir],
    )?)?;
    let mut services = dump["services"].clone();
    cpn_tests::golden::check("maps-dump-services-ingress", &services)?;
    let services = &mut services;
    ensure!(
        services[0]["address"] == "2001:db8:cafe::1"
            && services[0]["port"] == 7000
            && services[0]["protocol"] == 6
            && services[0]["affinity"] == true,
        "{services:#}"
    );
    let nodes = dump["nodes"].as_array().context("nodes")?;
    ensure!(
        nodes.len() == 3
            && nodes.iter().all(|n| n["state"] == "active"
                && n["segments"][0]
                    .as_str()
                    .is_some_and(|s| s.starts_with("fc00:"))),
        "{nodes:#?}"
    );
    let slots: u64 = dump["rings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["slots"].as_u64())
        .sum();
    ensure!(slots == 65_537, "the live ring has every slot: {slots}");
    ensure!(
        dump["flows"].as_array().is_some_and(|f| !f.is_empty()),
        "the clients' flows are in the affinity table"
    );
    ensure!(
        dump["steer_proto"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["counter"] == "xdp/ipv6" && c["packets"].as_u64().is_some_and(|p| p > 0)),
        "{:#}",
        dump["steer_proto"]
    );
    let text = cpnctl(
        lab,
        "ingress",
        &["maps", "dump", "nodes", "--pin-dir", pin_dir],
    )?;
    ensure!(
        text.starts_with("map nodes\nENCAP_SRC") && text.contains("active"),
        "{text}"
    );
    Ok(())
}

/// Drain cloud: no weight, excluded as drained, and new flows avoid it; undrain: it is back.
fn drain_and_undrain(lab: &CpnLab) -> Result<()> {
    let cloud = |lab: &CpnLab| -> Result<serde_json::Value> {
        let services = json(lab, "ingress", "services")?;
        Ok(services[0]["decision"]["evaluations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "cloud")
            .cloned()
            .unwrap_or_default())
    };
    ensure!(cpnctl(lab, "ingress", &["drain", "cloud"])? == "drained: cloud\n");
    wait_for("cloud drained", Duration::from_secs(10), || {
        let c = cloud(lab)?;
        Ok((c["excluded"] == "drained" && c["weight"] == 0.0).then_some(()))
    })?;
    let web = &lab.topology.services[0];
    let split = lab.split("client1", web, 60)?;
    ensure!(
        !split.contains_key("cloud"),
        "new flows avoid a drained node: {split:?}"
    );
    ensure!(cpnctl(lab, "ingress", &["undrain", "cloud"])? == "drained: (none)\n");
    wait_for("cloud undrained", Duration::from_secs(10), || {
        let c = cloud(lab)?;
        Ok(c["weight"].as_f64().is_some_and(|w| w > 0.0).then_some(()))
    })?;
    Ok(())
}

/// A service's own load report (`cpnctl load` on its compute node) is advertised at once and
/// reaches the transit's RIB; a report for what is not one of the node's services is refused
/// with the reason.
fn load_reports_reach_the_transit(lab: &CpnLab) -> Result<()> {
    let address = lab.topology.services[0].address.to_string();
    let said = cpnctl(lab, "edge1", &["load", &address, "37"])?;
    ensure!(
        said == format!("reported: 37 requests in flight at {address}\n"),
        "{said}"
    );
    let in_flight_at_transit = |expected: f64| {
        move || -> Result<Option<()>> {
            let routes = json(lab, "transit", "routes")?;
            Ok(routes
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["node"] == "edge1" && p["metrics"]["in_flight"]["value"] == expected)
                .then_some(()))
        }
    };
    wait_for(
        "edge1's reported load at the transit",
        Duration::from_secs(5),
        in_flight_at_transit(37.0),
    )?;
    let refused = cpnctl(lab, "edge1", &["load", "2001:db8:dead::1", "3"]).unwrap_err();
    ensure!(
        format!("{refused:#}").contains("2001:db8:dead::1: not one of this node's [[service]]s"),
        "{refused:#}"
    );
    // Idle again, as the service would say.
    cpnctl(lab, "edge1", &["load", &address, "0"])?;
    wait_for(
        "edge1 idle again at the transit",
        Duration::from_secs(5),
        in_flight_at_transit(0.0),
    )?;
    Ok(())
}

/// The ingress's `/metrics`, scraped from inside its namespace and read by a Prometheus text
/// parser.
#[test]
fn prometheus_metrics_parse_and_name_the_state() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml");
    let topology = Topology::parse(&path, &std::fs::read_to_string(&path)?)?;
    let lab = CpnLab::start("prometheus", topology)?;
    let url = format!("http://{}/metrics", cpn_tests::cpn_lab::INGRESS_PROMETHEUS);
    let scrape = || -> Result<prometheus_parse::Scrape> {
        let out = lab.lab.node("ingress")?.output(&[
            "python3",
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &url,
        ])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Ok(prometheus_parse::Scrape::parse(lines)?)
    };
    let s = wait_for(
        "weights for all three nodes",
        Duration::from_secs(20),
        || {
            let s = scrape()?;
            let weighed = s
                .samples
                .iter()
                .filter(|x| x.metric == "cpn_selection_weight")
                .count();
            Ok((weighed == 3).then_some(s))
        },
    )?;
    ensure!(
        value(
            &s,
            "cpn_bgp_session_established",
            ("neighbor", "2001:db8:100::2")
        ) == Some(1.0),
        "{:#?}",
        s.samples
    );
    let weights: f64 = ["edge1", "edge2", "cloud"]
        .iter()
        .filter_map(|n| value(&s, "cpn_selection_weight", ("node", n)))
        .sum();
    ensure!((weights - 1.0).abs() < 1e-6, "weights sum to 1: {weights}");
    ensure!(
        value(&s, "cpn_dataplane_packets_total", ("protocol", "ipv6")).is_some_and(|p| p > 0.0),
        "the steering program counted the clients' packets: {:#?}",
        s.samples
    );
    ensure!(
        s.samples.iter().any(|x| x.metric == "cpn_build_info"),
        "build info"
    );
    counters_count(&s)
}

/// The first sample of `name` with `label`.
fn value(s: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
        .map(|x| number(&x.value))
        .next()
}

/// A counter's or gauge's value. (The parser reads `OpenMetrics` counters, whose `# TYPE` line
/// names them without `_total`, as untyped.)
fn number(value: &prometheus_parse::Value) -> f64 {
    match value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        _ => f64::NAN,
    }
}

/// BGP messages, selection changes, and packets per node and service.
fn counters_count(s: &prometheus_parse::Scrape) -> Result<()> {
    ensure!(
        s.samples
            .iter()
            .any(|x| x.metric == "cpn_bgp_messages_total"
                && x.labels.get("direction") == Some("received")
                && x.labels.get("type") == Some("update")
                && number(&x.value) > 0.0),
        "UPDATEs received from the transit: {:#?}",
        s.samples
    );
    ensure!(
        value(
            s,
            "cpn_selection_changes_total",
            ("service", "2001:db8:cafe::1")
        )
        .is_some_and(|v| v >= 1.0)
            && value(s, "cpn_ring_updates_total", ("service", "2001:db8:cafe::1"))
                .is_some_and(|v| v >= 1.0),
        "the first ring counts as a change: {:#?}",
        s.samples
    );
    let steered: f64 = ["edge1", "edge2", "cloud"]
        .iter()
        .filter_map(|n| value(s, "cpn_node_packets_total", ("node", n)))
        .sum();
    ensure!(
        steered > 0.0
            && value(
                s,
                "cpn_service_packets_total",
                ("service", "2001:db8:cafe::1 tcp/7000")
            )
            .is_some_and(|v| v > 0.0),
        "packets per node and service: {:#?}",
        s.samples
    );
    Ok(())
}
