//! `cpnctl` against running agents: the demo's lab, asked over each agent's control socket.

use std::{path::Path, process::Command, time::Duration};

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

    // The ingress's one neighbor, the transit: up, with its link measured.
    let neighbors = json(&lab, "ingress", "neighbors")?;
    let transit = &neighbors[0];
    ensure!(
        transit["address"] == "2001:db8:100::2"
            && transit["asn"] == 4_200_000_050_u32
            && transit["state"] == "Established"
            && transit["link_alive"] == true
            && transit["rtt_us"].as_u64().is_some(),
        "{neighbors:#}"
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

    // The ingress's service: three candidates, weights that sum to 1.
    let services = json(&lab, "ingress", "services")?;
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

    drain_and_undrain(&lab)?;
    maps_dump_with_the_agent_stopped(&mut lab)
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
    let services = &dump["services"];
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
                && n["segments"]
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
            .any(|c| c["counter"] == "ipv6" && c["packets"].as_u64().is_some_and(|p| p > 0)),
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
    let value = |s: &prometheus_parse::Scrape, name: &str, label: (&str, &str)| {
        s.samples
            .iter()
            .filter(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .next()
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
    Ok(())
}
