//! FRR's bgpd, a second independent BGP implementation after GoBGP (`bgp.rs`), peers with a
//! compute agent; we read what it decoded from our service route as JSON from `vtysh`.
//!
//! ```text
//!   compute1 (agent, AS 4200000001)  eth0 ── eth0  frr (bgpd, AS 4200000200)
//!   2001:db8:11::2                                 2001:db8:11::1
//! ```
//!
//! bgpd runs without zebra (`--no_zebra`), installs nothing (`--no_kernel`), opens no TCP vty,
//! and keeps its configuration, vty socket, pid file and log in the lab's directory: it touches
//! neither the host's FRR nor other tests. Written against FRR 8.4 (Debian 12).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use cpn_tests::{
    bgp_lab::{bgp_section, compute_config, pair},
    lab::{Lab, wait_for},
    steering_lab::VIP,
};
use serde_json::Value;

const AGENT_AS: u32 = 4_200_000_001;
const FRR_AS: u32 = 4_200_000_200;
const AGENT_ADDRESS: &str = "2001:db8:11::2";
const FRR_ADDRESS: &str = "2001:db8:11::1";
/// An IPv4 service the agent serves too (`frr_reads_our_ipv4_service_route_…`).
const VIP4: &str = "198.51.100.7";
/// The compute node's capacity (operations per second). Nothing loads it, so it is also the
/// free capacity in the Link Bandwidth community; FRR reads that float as bytes per second
/// into a 32-bit integer, so it has to stay below 2^32 to come out unchanged.
const CAPACITY: f64 = 1e9;

/// bgpd's configuration: the agent as its one eBGP neighbour, IPv6 unicast only, no policy
/// required to accept routes, passive so that no connection collision (and its Cease
/// NOTIFICATION) muddies the session checks. `debug bgp vpn label` makes bgpd log the SRv6
/// service TLV it parsed, the only place FRR 8.4 shows the SID's endpoint behaviour.
///
/// FRR always offers ADD-PATH receive; `addpath_tx` also offers send. `ipv4` adds IPv4 unicast
/// over IPv6 next hops (RFC 8950, `capability extended-nexthop`).
fn bgpd_config(log: &Path, addpath_tx: bool, ipv4: bool, gtsm: bool) -> String {
    let ttl_security = if gtsm {
        format!(" neighbor {AGENT_ADDRESS} ttl-security hops 1\n")
    } else {
        String::new()
    };
    let addpath = if addpath_tx {
        format!("  neighbor {AGENT_ADDRESS} addpath-tx-all-paths\n")
    } else {
        String::new()
    };
    let (extended_next_hop, ipv4_family) = if ipv4 {
        (
            format!(" neighbor {AGENT_ADDRESS} capability extended-nexthop\n"),
            format!(
                " address-family ipv4 unicast\n  neighbor {AGENT_ADDRESS} activate\n \
                 exit-address-family\n !\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "hostname frr-cpn\n\
         log file {} debugging\n\
         debug bgp neighbor-events\n\
         debug bgp updates in\n\
         debug bgp vpn label\n\
         !\n\
         router bgp {FRR_AS}\n \
         bgp router-id 10.0.0.200\n \
         no bgp ebgp-requires-policy\n \
         no bgp default ipv4-unicast\n \
         neighbor {AGENT_ADDRESS} remote-as {AGENT_AS}\n \
         neighbor {AGENT_ADDRESS} timers 1 3\n \
         neighbor {AGENT_ADDRESS} passive\n\
         {ttl_security}\
         {extended_next_hop} \
         !\n \
         address-family ipv6 unicast\n  \
         neighbor {AGENT_ADDRESS} activate\n\
         {addpath} \
         exit-address-family\n\
         !\n\
         {ipv4_family}",
        log.display()
    )
}

/// Which ends run GTSM (RFC 5082) on the session.
#[derive(Clone, Copy, Debug, Default)]
struct Gtsm {
    agent: bool,
    frr: bool,
}

/// A lab with a compute agent and bgpd peering.
struct FrrLab {
    lab: Lab,
    /// bgpd's vty socket directory, for `vtysh --vty_socket`.
    vty_dir: String,
    /// bgpd's own log (the debug output).
    bgpd_log: PathBuf,
    /// bgpd's stdout and stderr.
    bgpd_output: PathBuf,
    /// The agent's in-flight file: writing it changes our metrics and makes the agent
    /// re-advertise the route.
    inflight: PathBuf,
}

impl FrrLab {
    /// `ipv4`: the agent also serves an IPv4 service and bgpd takes IPv4 over IPv6 next hops.
    fn start(name: &str, addpath_tx: bool, ipv4: bool) -> Result<Self> {
        Self::start_with(name, addpath_tx, ipv4, Gtsm::default())
    }

    fn start_with(name: &str, addpath_tx: bool, ipv4: bool, gtsm: Gtsm) -> Result<Self> {
        let mut lab = pair(name, ("compute1", AGENT_ADDRESS), ("frr", FRR_ADDRESS))?;
        let work = lab.workdir().to_path_buf();
        let inflight = work.join("compute1.inflight");
        fs::write(&inflight, "3\n")?;
        let ours = if gtsm.agent {
            "ttl_security_hops = 1\n"
        } else {
            ""
        };
        let bgp = bgp_section(AGENT_AS, "10.0.0.1", &[(FRR_ADDRESS, FRR_AS, ours)]);
        let mut config = compute_config(1, CAPACITY, &inflight, &bgp);
        if ipv4 {
            config = config.replace("End.DT6", "End.DT46")
                + &format!(
                    "\n[[service]]\naddress = \"{VIP4}\"\nsid = \"fc00:1::d6\"\n\
                     capacity = {{ cpu = {CAPACITY:e} }}\n"
                );
        }
        lab.start_agent("compute1", &config)?;

        let vty_dir = work.join("frr");
        fs::create_dir_all(&vty_dir)?;
        let vty_dir = vty_dir.to_str().context("path")?.to_owned();
        let bgpd_log = work.join("bgpd.log");
        let config = work.join("bgpd.conf");
        fs::write(&config, bgpd_config(&bgpd_log, addpath_tx, ipv4, gtsm.frr))?;
        let bgpd_output =
            cpn_tests::frr::spawn_bgpd(&mut lab, "frr", &config, std::path::Path::new(&vty_dir))?;
        Ok(Self {
            lab,
            vty_dir,
            bgpd_log,
            bgpd_output,
            inflight,
        })
    }

    /// Runs a `show ... json` command in bgpd; `Null` if it printed no JSON (not up yet).
    fn show(&self, command: &str) -> Result<Value> {
        let out = self.lab.node("frr")?.output(&[
            "vtysh",
            "--vty_socket",
            &self.vty_dir,
            "--config_dir",
            &self.vty_dir,
            "-d",
            "bgpd",
            "-c",
            command,
        ])?;
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
    }

    fn route(&self) -> Result<Value> {
        self.show(&format!("show bgp ipv6 unicast {VIP}/128 json"))
    }

    fn bgpd_log(&self) -> String {
        fs::read_to_string(&self.bgpd_log).unwrap_or_default()
    }

    /// Everything logged, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- bgpd output\n{}--- bgpd log\n{}--- agent\n{}",
            fs::read_to_string(&self.bgpd_output).unwrap_or_default(),
            self.bgpd_log(),
            fs::read_to_string(self.lab.workdir().join("compute1.log")).unwrap_or_default(),
        )
    }

    /// Waits until bgpd holds a path for our prefix that satisfies `ready`; returns that path.
    fn wait_for_path(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_for(what, Duration::from_secs(20), || {
            let route = self.route()?;
            Ok(route["paths"]
                .as_array()
                .and_then(|paths| paths.first())
                .filter(|path| ready(path))
                .cloned())
        })
        .with_context(|| self.logs())
    }

    /// The session is up and bgpd neither sent a NOTIFICATION nor logged a malformed UPDATE.
    fn check_session_clean(&self) -> Result<()> {
        let neighbors = self.show(&format!("show bgp neighbors {AGENT_ADDRESS} json"))?;
        let neighbor = &neighbors[AGENT_ADDRESS];
        ensure!(
            neighbor["bgpState"] == "Established",
            "session state: {neighbor}"
        );
        ensure!(
            neighbor["messageStats"]["notificationsSent"] == 0,
            "bgpd sent a NOTIFICATION: {neighbor}\n{}",
            self.logs()
        );
        let log = self.bgpd_log().to_lowercase();
        for bad in [
            "malformed",
            "notification",
            "[error]",
            "treat-as-withdraw",
            "discard",
        ] {
            ensure!(
                !log.contains(bad),
                "bgpd logged `{bad}` about our UPDATEs:\n{}",
                self.logs()
            );
        }
        Ok(())
    }
}

/// FRR peers with a compute agent and decodes our service route: next hop, AS path, origin,
/// ADD-PATH id, the SRv6 SID (End.DT6) of the Prefix-SID attribute and the Link Bandwidth
/// community from `show bgp ipv6 unicast <prefix> json`; AIGP (unknown to FRR 8.4) and the CPN
/// metric attribute from its log. bgpd offers ADD-PATH send and receive, as an ingress does.
#[test]
fn frr_reads_our_service_routes() -> Result<()> {
    let frr = FrrLab::start("frr", true, false)?;
    let first = frr.wait_for_path("our route in FRR's RIB", |_| true)?;
    eprintln!("first UPDATE:\n{}", serde_json::to_string_pretty(&first)?);
    // FRR 8.4 keeps the SRv6 SID of an IPv6 unicast path only when an UPDATE replaces the path,
    // not from the first one: move our metrics so the agent re-advertises the route.
    fs::write(&frr.inflight, "7\n")?;
    // Wait for bestpath selection to have run on the replaced path too ("processScheduled").
    let path = frr.wait_for_path("FRR to show our SRv6 SID on its best path", |p| {
        p.get("remoteSid").is_some() && p["bestpath"]["overall"] == true
    })?;
    let route = frr.route()?;
    eprintln!("{}", serde_json::to_string_pretty(&route)?);
    let text = path.to_string();

    ensure!(route["prefix"] == format!("{VIP}/128"), "prefix: {route}");
    ensure!(path["valid"] == true, "the path is valid: {text}");
    ensure!(
        path["bestpath"]["overall"] == true,
        "the path is FRR's best: {text}"
    );
    ensure!(path["peer"]["peerId"] == AGENT_ADDRESS, "peer: {text}");
    ensure!(path["peer"]["type"] == "external", "eBGP: {text}");
    ensure!(path["peer"]["routerId"] == "10.0.0.1", "router id: {text}");
    ensure!(path["origin"] == "IGP", "origin: {text}");
    let segments = path["aspath"]["segments"]
        .as_array()
        .with_context(|| format!("no AS path segments: {text}"))?;
    ensure!(
        segments.len() == 1
            && segments[0]["type"] == "as-sequence"
            && segments[0]["list"] == serde_json::json!([AGENT_AS]),
        "AS_PATH is one AS_SEQUENCE of our AS: {text}"
    );
    let nexthops = path["nexthops"]
        .as_array()
        .with_context(|| format!("no next hops: {text}"))?;
    ensure!(
        nexthops.len() == 1
            && nexthops[0]["ip"] == AGENT_ADDRESS
            && nexthops[0]["afi"] == "ipv6"
            && nexthops[0]["scope"] == "global"
            && nexthops[0]["accessible"] == true,
        "the MP_REACH next hop: {text}"
    );
    ensure!(
        path["addpathRxId"].is_u64(),
        "FRR read an ADD-PATH path identifier: {text}"
    );
    ensure!(
        path["remoteSid"] == "fc00:1::d6",
        "the SRv6 SID from the Prefix-SID attribute's L3 service TLV: {text}"
    );
    // FRR shows the Link Bandwidth as bytes per second and in bits per second.
    let communities = path["extendedCommunity"]["string"]
        .as_str()
        .with_context(|| format!("no extended communities: {text}"))?;
    // CAPACITY, 1e9: 1000000000 bytes per second, 8 Gbit/s.
    let free = ":1000000000 (8.000 Gbps)";
    ensure!(
        communities.starts_with("LB:") && communities.ends_with(free),
        "the Link Bandwidth community carries our free capacity ({free}): {communities}"
    );

    // What FRR 8.4 does not show as JSON: the SID's behaviour (its debug log), AIGP (an
    // attribute it does not know) and the CPN metric attribute (unknown, optional transitive:
    // kept and passed on).
    let log = frr.bgpd_log();
    ensure!(
        log.contains("srv6-l3-srv sid fc00:1::d6, sid-flags 0x00, end-behaviour 0x0012"),
        "End.DT6 (18) as the SID's behaviour:\n{log}"
    );
    match path.get("aigpMetric") {
        Some(aigp) => ensure!(*aigp == 0, "AIGP: {text}"),
        None => ensure!(
            log.contains("Unknown attribute is received (type 26, length 11)"),
            "AIGP, 11 octets (one AIGP TLV):\n{log}"
        ),
    }
    ensure!(
        log.contains("Unknown attribute is received (type 255"),
        "the CPN metric attribute:\n{log}"
    );
    frr.check_session_clean()
}

/// Without `addpath-tx`, FRR offers ADD-PATH receive only: RFC 7911 then wants path identifiers
/// in what we send to it, and none in what it sends to us.
#[test]
fn frr_offering_add_path_receive_only_reads_our_service_routes() -> Result<()> {
    let frr = FrrLab::start("frr-rx-only", false, false)?;
    let path = frr.wait_for_path("our route in FRR's RIB", |_| true)?;
    eprintln!("{}", serde_json::to_string_pretty(&path)?);
    ensure!(path["valid"] == true, "the path is valid: {path}");
    ensure!(
        path["nexthops"][0]["ip"] == AGENT_ADDRESS,
        "the MP_REACH next hop: {path}"
    );
    frr.check_session_clean()
}

/// With RFC 8950's extended next hop offered on both sides, FRR takes our IPv4 service route,
/// carried in `MP_REACH_NLRI` with the agent's IPv6 address as next hop. (Without it, as in
/// the tests above, the agent sends FRR no IPv4 route at all.)
#[test]
fn frr_reads_our_ipv4_service_route_over_an_ipv6_next_hop() -> Result<()> {
    let frr = FrrLab::start("frr-ipv4", false, true)?;
    let path = wait_for(
        "our IPv4 route in FRR's RIB",
        Duration::from_secs(20),
        || {
            let route = frr.show(&format!("show bgp ipv4 unicast {VIP4}/32 json"))?;
            Ok(route["paths"]
                .as_array()
                .and_then(|paths| paths.first())
                .cloned())
        },
    )
    .with_context(|| frr.logs())?;
    let text = path.to_string();
    ensure!(
        path["nexthops"][0]["ip"] == AGENT_ADDRESS && path["nexthops"][0]["afi"] == "ipv6",
        "the next hop is the agent's IPv6 address: {text}"
    );
    ensure!(
        path["aspath"]["segments"][0]["list"] == serde_json::json!([AGENT_AS]),
        "AS path: {text}"
    );
    frr.check_session_clean()
}

/// GTSM (RFC 5082) against FRR's `ttl-security hops 1`: with it on both ends the session comes
/// up (each end sends at TTL 255 and takes only 255); with it on our end alone it does not,
/// because FRR's eBGP segments arrive at TTL 1 and our kernel drops them below 255.
#[test]
fn gtsm_with_frrs_ttl_security_comes_up_and_without_it_does_not() -> Result<()> {
    let both = FrrLab::start_with(
        "frr-gtsm",
        false,
        false,
        Gtsm {
            agent: true,
            frr: true,
        },
    )?;
    both.wait_for_path("our route through a GTSM session", |_| true)?;
    both.check_session_clean()?;
    drop(both);

    let ours_only = FrrLab::start_with(
        "frr-gtsm-ours",
        false,
        false,
        Gtsm {
            agent: true,
            frr: false,
        },
    )?;
    // Several connect attempts' worth (the agent retries every second in this lab).
    std::thread::sleep(Duration::from_secs(5));
    let neighbors = ours_only.show(&format!("show bgp neighbors {AGENT_ADDRESS} json"))?;
    let state = &neighbors[AGENT_ADDRESS]["bgpState"];
    ensure!(
        state != "Established",
        "the session came up though FRR sends at TTL 1 and we take only 255: {state}\n{}",
        ours_only.logs()
    );
    Ok(())
}
