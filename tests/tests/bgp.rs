//! Agents advertising compute load to each other over BGP, and real BGP peers (GoBGP) reading
//! and reflecting our routes.
//!
//! ```text
//!   client ── ingress ─┬─ eth1 ── compute1 (cpu 1e12)   direct: eBGP, ingress AS 4200000100,
//!                      ├─ eth2 ── compute2 (cpu 2e12)           computeN AS 420000000N
//!                      └─ eth3 ── rr                    reflector: iBGP in AS 4200000100, every
//!                                                       agent a client of rr (GoBGP or an agent)
//! ```

use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use cpn_tests::{
    bgp_lab::{address_star, bgp_section, compute_config, pair},
    lab::{Lab, wait_for},
    steering_lab::VIP,
    steering_lab::{split, start_name_server},
};

/// The ingress's AS; in the reflector labs, everyone's.
const CORE_AS: u32 = 4_200_000_100;
/// The reflector node's address (on the ingress's eth3).
const REFLECTOR: &str = "2001:db8:13::2";
/// The direct sessions between agents run BFD (the agent's default 3 × 100 ms).
const BFD: &str = "bfd = {}\n";
const PASSIVE_BFD: &str = "passive = true\nbfd = {}\n";

/// How the ingress hears of the compute nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlPlane {
    /// Distributed mode: an eBGP session from each compute node (its own AS) to the ingress.
    Direct,
    /// Centralized mode: everyone in one AS, iBGP to a route reflector on its own node.
    Reflector(Reflector),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reflector {
    GoBgp,
    Agent,
}

fn compute_bgp(n: u32, control: ControlPlane) -> String {
    let router_id = format!("10.0.0.{n}");
    match control {
        ControlPlane::Direct => bgp_section(
            4_200_000_000 + n,
            &router_id,
            &[(&format!("2001:db8:1{n}::1"), CORE_AS, BFD)],
        ),
        ControlPlane::Reflector(_) => bgp_section(CORE_AS, &router_id, &[(REFLECTOR, CORE_AS, "")]),
    }
}

fn ingress_config(control: ControlPlane) -> String {
    let bgp = match control {
        ControlPlane::Direct => bgp_section(
            CORE_AS,
            "10.0.0.100",
            &[
                ("2001:db8:11::2", 4_200_000_001, PASSIVE_BFD),
                ("2001:db8:12::2", 4_200_000_002, PASSIVE_BFD),
            ],
        ),
        ControlPlane::Reflector(_) => {
            bgp_section(CORE_AS, "10.0.0.100", &[(REFLECTOR, CORE_AS, "")])
        }
    };
    // The maxima apply to the paths STAMP measures from the ingress to each node, whether the
    // routes came through a reflector (GoBGP or an agent, off the data path) or not.
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\nobjective = {{ latency = 0, load = 1 }}\n\
         max_loss = 0.2\nmax_latency_ms = 50\n\n\
         [selection]\ninterval_ms = 200\nmin_dwell_ms = 500\nmax_churn = 1.0\n\n{bgp}"
    )
}

/// The reflector's clients: the ingress and both compute nodes, all waiting for them to connect.
const CLIENTS: [&str; 3] = ["2001:db8:13::1", "2001:db8:11::2", "2001:db8:12::2"];

fn start_reflector(lab: &mut Lab, kind: Reflector) -> Result<()> {
    match kind {
        Reflector::Agent => {
            let clients: Vec<(&str, u32, &str)> = CLIENTS
                .iter()
                .map(|c| {
                    (
                        *c,
                        CORE_AS,
                        "passive = true\nroute_reflector_client = true\n",
                    )
                })
                .collect();
            let config = format!(
                "[node]\nname = \"rr\"\nroles = [\"reflector\"]\n\n{}",
                bgp_section(CORE_AS, "10.0.0.200", &clients)
            );
            lab.start_agent("rr", &config)?;
        }
        Reflector::GoBgp => {
            let mut config =
                format!("[global.config]\nas = {CORE_AS}\nrouter-id = \"10.0.0.200\"\n");
            for client in CLIENTS {
                let _ = write!(
                    config,
                    "\n[[neighbors]]\n[neighbors.config]\nneighbor-address = \"{client}\"\n\
                     peer-as = {CORE_AS}\n\
                     [neighbors.transport.config]\npassive-mode = true\n\
                     [neighbors.route-reflector.config]\nroute-reflector-client = true\n\
                     route-reflector-cluster-id = \"10.0.0.200\"\n\
                     [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n\
                     [neighbors.afi-safis.add-paths.config]\nreceive = true\nsend-max = 8\n"
                );
            }
            let path = lab.workdir().join("gobgpd.toml");
            fs::write(&path, config)?;
            let log = lab.workdir().join("rr.log");
            let path = path.to_str().context("path")?.to_owned();
            lab.spawn("rr", &["gobgpd", "-f", &path, "-l", "info"], Some(&log))?;
        }
    }
    Ok(())
}

fn with_hold_time(config: &str, seconds: u32) -> String {
    config.replace("hold_time_s = 3\n", &format!("hold_time_s = {seconds}\n"))
}

struct BgpLab {
    lab: Lab,
    computes: Vec<cpn_tests::lab::Agent>,
}

/// The lab; `hold_time_s` for every agent's sessions.
fn start(name: &str, control: ControlPlane, hold_time_s: u32) -> Result<BgpLab> {
    let mut builder = Lab::builder(name)
        .node("client")
        .node("ingress")
        .node("compute1")
        .node("compute2")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("compute1", "eth0"))
        .link(("ingress", "eth2"), ("compute2", "eth0"));
    if matches!(control, ControlPlane::Reflector(_)) {
        builder = builder.node("rr").link(("ingress", "eth3"), ("rr", "eth0"));
    }
    let mut lab = builder.build()?;
    address_star(&lab)?;
    if let ControlPlane::Reflector(kind) = control {
        lab.node("ingress")?
            .add_address("eth3", "2001:db8:13::1/64")?;
        let rr = lab.node("rr")?;
        rr.add_address("eth0", &format!("{REFLECTOR}/64"))?;
        rr.add_route(&["default", "via", "2001:db8:13::1"])?;
        start_reflector(&mut lab, kind)?;
    }
    lab.start_agent(
        "ingress",
        &with_hold_time(&ingress_config(control), hold_time_s),
    )?;
    let mut computes = Vec::new();
    for (n, capacity) in [(1, 1e12), (2, 2e12)] {
        let work = lab.workdir().to_path_buf();
        let inflight = work.join(format!("compute{n}.inflight"));
        let knob = work.join(format!("compute{n}.load"));
        fs::write(&knob, "0\n")?;
        let compute = format!("compute{n}");
        let bgp = with_hold_time(&compute_bgp(n, control), hold_time_s);
        let config = compute_config(n, capacity, &inflight, &bgp);
        computes.push(lab.start_agent(&compute, &config)?);
        start_name_server(&mut lab, &compute, &inflight, &knob)?;
    }
    Ok(BgpLab { lab, computes })
}

/// The agents' logs, for failure messages.
fn logs(lab: &Lab) -> String {
    lab.logs(["ingress", "compute1", "compute2", "rr"])
}

/// The ingress's kernel routes learned in BGP (`ip -6 route show proto bgp`).
fn learned_locators(lab: &Lab) -> Result<String> {
    let out = lab
        .node("ingress")?
        .output(&["ip", "-6", "route", "show", "proto", "bgp"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Both compute nodes' routes reach the ingress and the ring follows their capacities (1:2),
/// which only the CPN metric attribute carries.
fn steers_by_capacity(lab: &Lab) -> Result<()> {
    let first = wait_for(
        "flows on both compute nodes",
        Duration::from_secs(30),
        || {
            let s = split(lab, 60).unwrap_or_default();
            Ok((s.len() == 2).then_some(s))
        },
    )
    .with_context(|| logs(lab))?;
    eprintln!("first split: {first:?}");
    let total = 300;
    let s = split(lab, total).with_context(|| logs(lab))?;
    let share = f64::from(s.get("compute2").copied().unwrap_or(0)) / f64::from(total);
    eprintln!("split of {total}: {s:?}");
    ensure!(
        (share - 2.0 / 3.0).abs() < 0.1,
        "compute2 should take about 2/3 of new flows: {s:?}\n{}",
        logs(lab)
    );
    Ok(())
}

#[test]
fn agents_learn_each_other_over_bgp_and_a_lost_node_is_withdrawn() -> Result<()> {
    let mut bgp = start("bgp-agents", ControlPlane::Direct, 3)?;
    steers_by_capacity(&bgp.lab)?;
    let learned = learned_locators(&bgp.lab)?;
    ensure!(
        learned.contains("fc00:1::/32 via 2001:db8:11::2")
            && learned.contains("fc00:2::/32 via 2001:db8:12::2"),
        "both compute nodes' locators as kernel routes on the ingress: {learned}"
    );

    // compute2's agent stops: its session closes, its routes go, new flows avoid it.
    let compute2 = bgp.computes.pop().context("compute2")?;
    bgp.lab.stop(compute2.pid)?;
    let stopped = Instant::now();
    wait_for(
        "new flows to leave compute2",
        Duration::from_secs(15),
        || {
            let s = split(&bgp.lab, 20).unwrap_or_default();
            Ok((s.keys().all(|k| k == "compute1") && !s.is_empty()).then_some(()))
        },
    )?;
    eprintln!("withdrawn within {:?}", stopped.elapsed());
    let learned = wait_for(
        "compute2's locator route to go",
        Duration::from_secs(5),
        || {
            let learned = learned_locators(&bgp.lab)?;
            Ok((!learned.contains("fc00:2::/32")).then_some(learned))
        },
    )?;
    ensure!(learned.contains("fc00:1::/32"), "{learned}");
    Ok(())
}

/// Two nodes, compute1 (`2001:db8:11::2`) and gobgp (`2001:db8:11::1`), and compute1's in-flight
/// file.
fn compute_and_gobgp(name: &str) -> Result<(Lab, std::path::PathBuf)> {
    let lab = pair(
        name,
        ("compute1", "2001:db8:11::2"),
        ("gobgp", "2001:db8:11::1"),
    )?;
    let inflight = lab.workdir().join("compute1.inflight");
    fs::write(&inflight, "3\n")?;
    Ok((lab, inflight))
}

/// GoBGP (a real, independent BGP implementation) peers with a compute agent and shows our
/// service route with the SID (Prefix-SID, RFC 9252), AIGP, Link Bandwidth and the CPN metric
/// attribute, read from `gobgp ... -j`.
#[test]
fn gobgp_reads_our_service_routes() -> Result<()> {
    let (mut lab, inflight) = compute_and_gobgp("gobgp")?;
    let work = lab.workdir().to_path_buf();
    let bgp = bgp_section(
        4_200_000_001,
        "10.0.0.1",
        &[("2001:db8:11::1", 4_200_000_200, "")],
    );
    let config = compute_config(1, 1e12, &inflight, &bgp);
    lab.start_agent("compute1", &config)?;
    let gobgp_config = work.join("gobgpd.toml");
    fs::write(
        &gobgp_config,
        "[global.config]\nas = 4200000200\nrouter-id = \"10.0.0.200\"\n\n\
         [[neighbors]]\n[neighbors.config]\nneighbor-address = \"2001:db8:11::2\"\npeer-as = 4200000001\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n\
         [neighbors.afi-safis.add-paths.config]\nreceive = true\nsend-max = 8\n",
    )?;
    let gobgp_log = work.join("gobgpd.log");
    lab.spawn(
        "gobgp",
        &[
            "gobgpd",
            "-f",
            gobgp_config.to_str().context("path")?,
            "-l",
            "info",
        ],
        Some(&gobgp_log),
    )?;
    let node = lab.node("gobgp")?;
    let rib: serde_json::Value =
        wait_for("our route in GoBGP's RIB", Duration::from_secs(30), || {
            let out = node.output(&["gobgp", "global", "rib", "-a", "ipv6", "-j"])?;
            let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok(value
                .to_string()
                .contains("2001:db8:cafe::1")
                .then_some(value))
        })
        .with_context(|| fs::read_to_string(&gobgp_log).unwrap_or_default())?;
    let text = rib.to_string();
    eprintln!("{}", serde_json::to_string_pretty(&rib)?);
    // GoBGP prints the SID's 16 octets in base64: this is fc00:1::d6.
    ensure!(
        text.contains("\"sid\":\"/AAAAQAAAAAAAAAAAAAA1g==\""),
        "the SRv6 SID fc00:1::d6 in the Prefix-SID attribute: {text}"
    );
    ensure!(
        text.contains("\"endpoint_behavior\":18"),
        "End.DT6 (18) as the SID's behavior: {text}"
    );
    ensure!(text.contains("\"type\":26"), "AIGP: {text}");
    // Our metric attribute as GoBGP holds it (an unknown attribute, value in base64), read back
    // with our decoder: the node, its capacity and its own score crossed intact.
    let value = rib
        .as_object()
        .into_iter()
        .flat_map(|prefixes| prefixes.values())
        .flat_map(|paths| paths.as_array().cloned().unwrap_or_default())
        .flat_map(|path| path["attrs"].as_array().cloned().unwrap_or_default())
        .find(|attr| attr["type"] == 255)
        .and_then(|attr| attr["value"].as_str().map(str::to_owned))
        .with_context(|| format!("the CPN metric attribute (type 255): {text}"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value)?;
    let metrics = cpn_agent::bgp::metric_attr::decode(&bytes)?;
    ensure!(metrics.node == "compute1", "{metrics:?}");
    ensure!(!metrics.metrics.capacity.is_empty(), "{metrics:?}");
    let score = metrics.score.context("the score TLV")?;
    ensure!((0.0..=1.0).contains(&score.l2), "{metrics:?}");
    ensure!(
        text.contains("\"type\":40"),
        "the Prefix-SID attribute: {text}"
    );
    Ok(())
}

/// Centralized mode through GoBGP as the route reflector: SIDs and metrics cross it unchanged,
/// so the ingress steers by the compute nodes' capacities.
#[test]
fn a_gobgp_route_reflector_carries_sids_and_metrics_between_agents() -> Result<()> {
    let bgp = start("bgp-gobgp-rr", ControlPlane::Reflector(Reflector::GoBgp), 3)?;
    steers_by_capacity(&bgp.lab)
}

/// The same with one of our agents (`roles = ["reflector"]`, no data plane) as the reflector.
#[test]
fn an_agent_reflects_routes_between_agents() -> Result<()> {
    let bgp = start("bgp-agent-rr", ControlPlane::Reflector(Reflector::Agent), 3)?;
    steers_by_capacity(&bgp.lab)
}

/// BFD between agents: compute2's host stops answering the ingress (its packets to the
/// ingress are blackholed), which the BGP session would notice only at the hold timer (30 s
/// here). BFD notices within 3 × 100 ms, the session is torn down, compute2's routes are
/// withdrawn and new flows leave it.
#[test]
fn a_silent_neighbor_is_found_by_bfd_long_before_the_hold_timer() -> Result<()> {
    let bgp = start("bgp-bfd", ControlPlane::Direct, 30)?;
    steers_by_capacity(&bgp.lab)?;
    // BFD leaves its slow start (a packet a second until Up, RFC 5880 §6.8.3).
    wait_for("BFD up with compute2", Duration::from_secs(10), || {
        let view: cpn_agent::api::BfdView =
            bgp.lab.ask("ingress", &cpn_agent::api::Request::Bfd)?;
        Ok(view
            .sessions
            .iter()
            .any(|s| {
                s.neighbor.to_string() == "2001:db8:12::2"
                    && s.status.state == cpn_agent::sensing::bfd::packet::State::Up
            })
            .then_some(()))
    })
    .with_context(|| logs(&bgp.lab))?;
    bgp.lab
        .node("compute2")?
        .add_route(&["blackhole", "2001:db8:12::1/128"])?;
    let cut = Instant::now();
    wait_for(
        "new flows to leave compute2",
        Duration::from_secs(10),
        || {
            let s = split(&bgp.lab, 20).unwrap_or_default();
            Ok((s.keys().all(|k| k == "compute1") && !s.is_empty()).then_some(()))
        },
    )
    .with_context(|| logs(&bgp.lab))?;
    eprintln!("silent neighbor withdrawn within {:?}", cut.elapsed());
    let log = fs::read_to_string(bgp.lab.workdir().join("ingress.log"))?;
    ensure!(
        log.contains("BFD: the neighbor's session went down, closing the BGP session"),
        "BFD, not the hold timer, ended the session: {log}"
    );
    Ok(())
}

/// TCP MD5 signatures (RFC 2385) with GoBGP: with the wrong key no session comes up (the kernel
/// drops the unsigned or badly signed segments); with the right one our route arrives.
#[test]
fn tcp_md5_signed_session_with_gobgp() -> Result<()> {
    let (mut lab, inflight) = compute_and_gobgp("bgp-md5")?;
    let work = lab.workdir().to_path_buf();
    let gobgp_config = work.join("gobgpd.toml");
    fs::write(
        &gobgp_config,
        "[global.config]\nas = 4200000200\nrouter-id = \"10.0.0.200\"\n\n\
         [[neighbors]]\n[neighbors.config]\nneighbor-address = \"2001:db8:11::2\"\npeer-as = 4200000001\n\
         auth-password = \"right-key\"\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n",
    )?;
    let gobgp_log = work.join("gobgpd.log");
    let path = gobgp_config.to_str().context("path")?.to_owned();
    lab.spawn(
        "gobgp",
        &["gobgpd", "-f", &path, "-l", "info"],
        Some(&gobgp_log),
    )?;
    let config = |key: &str| {
        let extra = format!("password = \"{key}\"\n");
        let bgp = bgp_section(
            4_200_000_001,
            "10.0.0.1",
            &[("2001:db8:11::1", 4_200_000_200, &extra)],
        );
        compute_config(1, 1e12, &inflight, &bgp)
    };
    let has_route = |lab: &Lab| -> Result<bool> {
        let out = lab
            .node("gobgp")?
            .output(&["gobgp", "global", "rib", "-a", "ipv6", "-j"])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains(VIP))
    };

    let wrong = lab.start_agent("compute1", &config("wrong-key"))?;
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        !has_route(&lab)?,
        "a session came up with the wrong MD5 key:\n{}",
        fs::read_to_string(lab.workdir().join("compute1.log")).unwrap_or_default()
    );
    lab.stop(wrong.pid)?;

    lab.start_agent("compute1", &config("right-key"))?;
    wait_for("our route in GoBGP's RIB", Duration::from_secs(20), || {
        Ok(has_route(&lab)?.then_some(()))
    })
    .with_context(|| fs::read_to_string(&gobgp_log).unwrap_or_default())?;
    Ok(())
}
