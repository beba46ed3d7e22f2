//! Graceful Restart (RFC 4724) with agents, FRR and GoBGP: a compute agent that restarts with
//! its data plane attached keeps its routes at the ingress (stale) and moves no flow; one that
//! stays away longer than its restart time loses them.
//!
//! ```text
//!   client ── ingress ─┬─ eth1 ── compute1 (cpu 1e12)   eBGP: ingress AS 4200000100 (passive),
//!                      └─ eth2 ── compute2 (cpu 2e12)         computeN AS 420000000N
//! ```

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cpn_tests::{
    bgp_lab::{self, address_star, bgp_section, compute_config},
    lab::{Agent, Lab, wait_for},
    steering_lab::{PORT, VIP, split, start_name_server},
    traffic::{Held, Traffic},
};
use serde_json::Value;

const INGRESS_AS: u32 = 4_200_000_100;
/// compute1's address, as the ingress names the neighbor.
const COMPUTE1: &str = "2001:db8:11::2";
/// compute1's SID (node 1 of `bgp_lab`).
const SID1: &str = "fc00:1::d6";

/// The agents keep their data plane attached when they stop: their forwarding state survives
/// a restart, so they offer Graceful Restart with the F bit. `extra` goes into `[bgp]`.
fn compute_agent_config(n: u32, inflight: &Path, extra: &str) -> String {
    let bgp = bgp_section(
        4_200_000_000 + n,
        &format!("10.0.0.{n}"),
        &[(&format!("2001:db8:1{n}::1"), INGRESS_AS, "")],
    )
    // Reconnect after 1 s rather than 2: the restart is then over sooner.
    .replace(
        "hold_time_s = 3\n",
        &format!("hold_time_s = 3\nconnect_retry_s = 1\n{extra}"),
    );
    format!(
        "[dataplane]\nkeep_attached_on_exit = true\n\n{}",
        compute_config(n, 1e12 * f64::from(n), inflight, &bgp)
    )
}

/// The ingress, with the policy's defaults (latency and load weigh the same) and affinity,
/// so that an open flow stays on its node.
fn ingress_config() -> String {
    let bgp = bgp_section(
        INGRESS_AS,
        "10.0.0.100",
        &[
            (COMPUTE1, 4_200_000_001, "passive = true\n"),
            ("2001:db8:12::2", 4_200_000_002, "passive = true\n"),
        ],
    )
    .replace(
        "hold_time_s = 3\n",
        "hold_time_s = 3\nconnect_retry_s = 1\n",
    );
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\naffinity = true\n\n\
         [selection]\ninterval_ms = 200\nmin_dwell_ms = 500\nmax_churn = 1.0\n\n{bgp}"
    )
}

/// Starts compute node `n`'s agent (`extra` in its `[bgp]`) and service; the agent and the
/// service's in-flight file.
fn start_compute(lab: &mut Lab, n: u32, extra: &str) -> Result<(Agent, PathBuf)> {
    let compute = format!("compute{n}");
    let inflight = lab.workdir().join(format!("{compute}.inflight"));
    let knob = lab.workdir().join(format!("{compute}.load"));
    fs::write(&knob, "0\n")?;
    let agent = lab.start_agent(&compute, &compute_agent_config(n, &inflight, extra))?;
    start_name_server(lab, &compute, &inflight, &knob)?;
    Ok((agent, inflight))
}

struct GracefulLab {
    lab: Lab,
    ingress: Ingress,
    compute1: Agent,
    /// compute1's in-flight file and `[bgp]` extras, to start its agent again.
    inflight1: PathBuf,
    extra1: String,
}

impl GracefulLab {
    /// The lab with every agent up and new flows reaching both compute nodes; `extra1` goes
    /// into compute1's `[bgp]`.
    fn start(name: &str, extra1: &str) -> Result<Self> {
        let mut lab = Lab::builder(name)
            .node("client")
            .node("ingress")
            .node("compute1")
            .node("compute2")
            .link(("client", "eth0"), ("ingress", "eth0"))
            .link(("ingress", "eth1"), ("compute1", "eth0"))
            .link(("ingress", "eth2"), ("compute2", "eth0"))
            .build()?;
        address_star(&lab)?;
        let ingress = lab.start_agent("ingress", &ingress_config())?;
        let ingress = Ingress {
            socket: lab.control_socket("ingress"),
            pin_dir: ingress.pin_dir,
        };
        let (compute1, inflight1) = start_compute(&mut lab, 1, extra1)?;
        start_compute(&mut lab, 2, "")?;
        let lab = Self {
            lab,
            ingress,
            compute1,
            inflight1,
            extra1: extra1.to_owned(),
        };
        wait_for(
            "new flows on both compute nodes",
            Duration::from_secs(30),
            || {
                let s = split(&lab.lab, 30).unwrap_or_default();
                Ok((s.len() == 2).then_some(()))
            },
        )
        .with_context(|| lab.logs())?;
        Ok(lab)
    }

    fn logs(&self) -> String {
        self.lab.logs(["ingress", "compute1", "compute2"])
    }

    /// SIGTERM to compute1's agent: it exits with its programs left attached.
    fn stop_compute1(&mut self) -> Result<()> {
        let status = self.lab.stop(self.compute1.pid)?;
        ensure!(status.success(), "compute1's agent exited with {status}");
        Ok(())
    }

    /// A new agent on compute1's data plane (a restart).
    fn start_compute1(&mut self) -> Result<()> {
        let config = compute_agent_config(1, &self.inflight1, &self.extra1);
        let pin_dir = self.compute1.pin_dir.clone();
        self.compute1 = self
            .lab
            .start_agent_pinned_at("compute1", &pin_dir, &config)?;
        Ok(())
    }
}

/// `cpnctl --json ARGS`.
fn cpnctl(args: &[&std::ffi::OsStr]) -> Result<Value> {
    let binary = cpn_tests::lab::agent_binary()?.with_file_name("cpnctl");
    let out = Command::new(&binary)
        .arg("--json")
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "cpnctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// What the ingress holds of compute1 at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Compute1 {
    paths: usize,
    stale: usize,
    /// Its ring slots.
    slots: u64,
    /// It has sent End-of-RIB for IPv6 unicast in its current session.
    end_of_rib: bool,
}

/// The ingress agent's control socket and pinned maps.
#[derive(Clone, Debug)]
struct Ingress {
    socket: PathBuf,
    pin_dir: PathBuf,
}

impl Ingress {
    fn show(&self, what: &str) -> Result<Value> {
        cpnctl(&[
            "--socket".as_ref(),
            self.socket.as_ref(),
            "show".as_ref(),
            what.as_ref(),
        ])
    }

    /// A map read from its pin directory, by cpnctl itself: reading the 65537 ring slots
    /// through the agent (`show nodes`) would hold the agent's runtime for a good part of a
    /// second in a debug build, longer than its neighbors' BFD waits.
    fn map(&self, name: &str) -> Result<Vec<Value>> {
        let dump = cpnctl(&[
            "maps".as_ref(),
            "dump".as_ref(),
            name.as_ref(),
            "--pin-dir".as_ref(),
            self.pin_dir.as_ref(),
        ])?;
        Ok(dump[name].as_array().cloned().unwrap_or_default())
    }

    /// Its view of compute1 now.
    fn compute1(&self) -> Result<Compute1> {
        let routes = self.show("routes")?;
        let paths: Vec<&Value> = routes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["neighbor"] == COMPUTE1)
            .collect();
        // compute1's node entry is the one whose last segment is its SID.
        let node = self
            .map("nodes")?
            .into_iter()
            .find(|n| n["segments"].as_array().and_then(|s| s.last()) == Some(&Value::from(SID1)))
            .and_then(|n| n["node"].as_u64());
        let slots = self
            .map("rings")?
            .iter()
            .filter(|r| node.is_some() && r["node"].as_u64() == node)
            .filter_map(|r| r["slots"].as_u64())
            .sum();
        let end_of_rib = self
            .show("neighbors")?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["address"] == COMPUTE1)
            .any(|n| {
                n["end_of_rib"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "ipv6_unicast"))
            });
        Ok(Compute1 {
            paths: paths.len(),
            stale: paths.iter().filter(|p| p["stale"] == true).count(),
            slots,
            end_of_rib,
        })
    }
}

/// Samples the ingress's view of compute1 every 100 ms in the background.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Duration, Compute1)>>>,
}

impl Sampler {
    fn start(ingress: Ingress) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(view) = ingress.compute1() {
                    samples.push((started.elapsed(), view));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Duration, Compute1)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn service() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("VIP"), PORT)
}

/// compute1's agent stops (SIGTERM, programs left attached) and starts again while a client
/// keeps opening flows through the ingress and holds others open: the ingress keeps
/// compute1's paths (stale) and its ring slots all along, no flow moves, none fails, and
/// once compute1 has sent its routes and End-of-RIB again its paths are fresh.
#[test]
fn graceful_restart_of_a_compute_agent_moves_no_flow() -> Result<()> {
    let mut lab = GracefulLab::start("graceful", "")?;
    let ingress = lab.ingress.clone();
    let before = ingress.compute1()?;
    ensure!(
        before.paths > 0 && before.stale == 0 && before.slots > 0 && before.end_of_rib,
        "compute1 up, its routes complete: {before:?}\n{}",
        lab.logs()
    );
    let client = lab.lab.node("client")?.clone();
    let mut held = Held::open(&client, service(), 20)?;
    let traffic = Traffic::start(std::slice::from_ref(&client), service(), 20);
    std::thread::sleep(Duration::from_secs(1));

    let sampler = Sampler::start(ingress.clone());
    let stopped = traffic.now();
    lab.stop_compute1()?;
    let stale = wait_for(
        "the ingress to mark compute1's paths stale",
        Duration::from_secs(5),
        || Ok(ingress.compute1().ok().filter(|v| v.stale > 0)),
    )
    .with_context(|| lab.logs())?;
    eprintln!("compute1 stopped; at the ingress: {stale:?}");
    lab.start_compute1()?;
    let fresh = wait_for(
        "compute1's paths to be fresh again",
        Duration::from_secs(20),
        || {
            Ok(ingress
                .compute1()
                .ok()
                .filter(|v| v.paths > 0 && v.stale == 0 && v.end_of_rib))
        },
    )
    .with_context(|| lab.logs())?;
    let back = traffic.now();
    eprintln!(
        "compute1 back after {:?}; at the ingress: {fresh:?}",
        back.saturating_sub(stopped)
    );
    std::thread::sleep(Duration::from_secs(1));
    let views = sampler.finish();
    let requests = traffic.finish();
    let report = held.close()?;

    for (at, view) in &views {
        ensure!(
            view.paths > 0 && view.slots > 0,
            "{at:?} into the restart the ingress lost compute1's paths or ring slots: \
             {view:?}\n{}",
            lab.logs()
        );
    }
    ensure!(
        views.iter().any(|(_, v)| v.stale > 0),
        "the sampler saw the stale paths: {views:?}"
    );
    let failed: Vec<_> = requests.iter().filter(|r| r.node.is_none()).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} new flows failed: {failed:?}\n{}",
        failed.len(),
        requests.len(),
        lab.logs()
    );
    let during: BTreeMap<String, u32> = requests
        .iter()
        .filter(|r| r.at >= stopped && r.at < back)
        .filter_map(|r| r.node.clone())
        .fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        });
    eprintln!(
        "{} new flows, {} disrupted; during the restart: {during:?}; held: {report:?}",
        requests.len(),
        requests.iter().filter(|r| r.disrupted()).count()
    );
    ensure!(
        during.contains_key("compute1"),
        "new flows still reached compute1 while its agent restarted: {during:?}"
    );
    ensure!(
        report.moved == 0 && report.broken == 0 && report.answered > 0,
        "held flows: {report:?}"
    );
    Ok(())
}

/// compute1 offers a 3 s restart time and its agent does not come back: the ingress keeps its
/// paths stale for those 3 s, then drops them and new flows go to compute2 only.
#[test]
fn graceful_restart_ends_when_the_peer_stays_away_past_its_restart_time() -> Result<()> {
    let mut lab = GracefulLab::start("graceful-expiry", "graceful_restart_s = 3\n")?;
    let ingress = lab.ingress.clone();
    lab.stop_compute1()?;
    let stopped = Instant::now();
    wait_for(
        "the ingress to mark compute1's paths stale",
        Duration::from_secs(2),
        || Ok(ingress.compute1().ok().filter(|v| v.stale > 0)),
    )
    .with_context(|| lab.logs())?;
    let gone = wait_for(
        "compute1's stale paths to go",
        Duration::from_secs(15),
        || {
            Ok(ingress
                .compute1()
                .ok()
                .filter(|v| v.paths == 0)
                .map(|_| stopped.elapsed()))
        },
    )
    .with_context(|| lab.logs())?;
    eprintln!("compute1's paths went {gone:?} after its agent stopped");
    ensure!(
        gone >= Duration::from_millis(2500) && gone < Duration::from_secs(8),
        "kept for its 3 s restart time, not longer: {gone:?}"
    );
    wait_for(
        "new flows to leave compute1",
        Duration::from_secs(10),
        || {
            let s = split(&lab.lab, 10).unwrap_or_default();
            Ok((s.keys().all(|k| k == "compute2") && !s.is_empty()).then_some(()))
        },
    )
    .with_context(|| lab.logs())?;
    Ok(())
}

const FRR_AS: u32 = 4_200_000_200;
/// compute1 and bgpd on one link.
const AGENT_ADDRESS: &str = "2001:db8:11::2";
const FRR_ADDRESS: &str = "2001:db8:11::1";

/// bgpd with its defaults for Graceful Restart (helper mode in FRR 8.4), the agent as its one
/// eBGP neighbor for IPv6 unicast, passive (no connection collision); no zebra, no kernel
/// routes, its files in the lab's directory (as in frr.rs).
struct Bgpd {
    vty_dir: String,
    log: PathBuf,
}

impl Bgpd {
    fn start(lab: &mut Lab) -> Result<Self> {
        let work = lab.workdir().to_path_buf();
        let vty_dir = work.join("frr");
        fs::create_dir_all(&vty_dir)?;
        let log = work.join("bgpd.log");
        let config = work.join("bgpd.conf");
        fs::write(
            &config,
            format!(
                "hostname frr-cpn\nlog file {} debugging\ndebug bgp neighbor-events\n\
                 debug bgp graceful-restart\n!\n\
                 router bgp {FRR_AS}\n bgp router-id 10.0.0.200\n no bgp ebgp-requires-policy\n \
                 no bgp default ipv4-unicast\n \
                 neighbor {AGENT_ADDRESS} remote-as 4200000001\n \
                 neighbor {AGENT_ADDRESS} timers 1 3\n neighbor {AGENT_ADDRESS} passive\n !\n \
                 address-family ipv6 unicast\n  neighbor {AGENT_ADDRESS} activate\n \
                 exit-address-family\n!\n",
                log.display()
            ),
        )?;
        cpn_tests::frr::spawn_bgpd(lab, "frr", &config, &vty_dir)?;
        Ok(Self {
            vty_dir: vty_dir.to_str().context("path")?.to_owned(),
            log,
        })
    }

    /// A `show ... json` command; `Null` while bgpd prints no JSON.
    fn show(&self, lab: &Lab, command: &str) -> Result<Value> {
        let out = lab.node("frr")?.output(&[
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

    /// bgpd's path for our service, if it has one.
    fn path(&self, lab: &Lab) -> Result<Option<Value>> {
        let route = self.show(lab, &format!("show bgp ipv6 unicast {VIP}/128 json"))?;
        Ok(route["paths"].as_array().and_then(|p| p.first()).cloned())
    }

    fn neighbor(&self, lab: &Lab) -> Result<Value> {
        let all = self.show(lab, &format!("show bgp neighbors {AGENT_ADDRESS} json"))?;
        Ok(all[AGENT_ADDRESS].clone())
    }

    fn logs(&self, lab: &Lab) -> String {
        format!(
            "--- bgpd log\n{}{}",
            fs::read_to_string(&self.log).unwrap_or_default(),
            lab.logs(["compute1"])
        )
    }
}

/// FRR (bgpd, helper mode by default) takes our Graceful Restart capability and End-of-RIB,
/// keeps our route marked stale while the agent restarts with its data plane attached, and
/// takes it fresh again after.
#[test]
fn graceful_restart_frr_keeps_our_route_through_an_agent_restart() -> Result<()> {
    let mut lab = bgp_lab::pair(
        "graceful-frr",
        ("compute1", AGENT_ADDRESS),
        ("frr", FRR_ADDRESS),
    )?;
    let inflight = lab.workdir().join("compute1.inflight");
    fs::write(&inflight, "3\n")?;
    let bgp = bgp_section(4_200_000_001, "10.0.0.1", &[(FRR_ADDRESS, FRR_AS, "")]);
    let config = format!(
        "[dataplane]\nkeep_attached_on_exit = true\n\n{}",
        compute_config(1, 1e9, &inflight, &bgp)
    );
    let agent = lab.start_agent("compute1", &config)?;
    let bgpd = Bgpd::start(&mut lab)?;
    let path = wait_for("our route in FRR", Duration::from_secs(30), || {
        bgpd.path(&lab)
    })
    .with_context(|| bgpd.logs(&lab))?;
    eprintln!("path: {path:#}");
    let neighbor = wait_for(
        "FRR to have our End-of-RIB",
        Duration::from_secs(10),
        || {
            let n = bgpd.neighbor(&lab)?;
            Ok(
                (n["gracefulRestartInfo"]["ipv6Unicast"]["endOfRibStatus"]["endOfRibRecv"] == true)
                    .then_some(n),
            )
        },
    )
    .with_context(|| {
        format!(
            "{:#}\n{}",
            bgpd.neighbor(&lab).unwrap_or_default(),
            bgpd.logs(&lab)
        )
    })?;
    let info = &neighbor["gracefulRestartInfo"];
    ensure!(
        neighbor["neighborCapabilities"]["gracefulRestart"] == "advertisedAndReceived"
            && info["remoteGrMode"] == "Restart"
            && info["rBit"] == true
            && info["nBit"] == false
            && info["timers"]["receivedRestartTimer"] == 120
            && info["ipv6Unicast"]["fBit"] == true,
        "FRR read our capability: restart time 120 s, R bit, F bit for IPv6 unicast, no N \
         bit: {neighbor:#}"
    );
    ensure!(path["stale"].is_null(), "fresh: {path:#}");

    // The agent stops with its programs attached: FRR keeps the route, stale.
    let status = lab.stop(agent.pid)?;
    ensure!(status.success(), "the agent exited with {status}");
    let stale = wait_for(
        "FRR to mark our route stale",
        Duration::from_secs(10),
        || Ok(bgpd.path(&lab)?.filter(|p| p["stale"] == true)),
    )
    .with_context(|| bgpd.logs(&lab))?;
    eprintln!("while the agent restarts: {stale:#}");

    // It starts again on the same data plane: the route is sent again and fresh.
    let agent = lab.start_agent_pinned_at("compute1", &agent.pin_dir, &config)?;
    wait_for(
        "FRR to take our route fresh",
        Duration::from_secs(20),
        || {
            let fresh = bgpd.path(&lab)?.filter(|p| p["stale"].is_null());
            let n = bgpd.neighbor(&lab)?;
            let done =
                n["gracefulRestartInfo"]["ipv6Unicast"]["endOfRibStatus"]["endOfRibRecv"] == true;
            Ok(fresh.filter(|_| done && n["bgpState"] == "Established"))
        },
    )
    .with_context(|| bgpd.logs(&lab))?;
    let neighbor = bgpd.neighbor(&lab)?;
    ensure!(
        neighbor["messageStats"]["notificationsSent"] == 0
            && neighbor["messageStats"]["notificationsRecv"] == 0,
        "no NOTIFICATION either way: {neighbor:#}"
    );
    let log = fs::read_to_string(&bgpd.log)?.to_lowercase();
    for bad in ["malformed", "[error]", "treat-as-withdraw"] {
        ensure!(
            !log.contains(bad),
            "bgpd logged `{bad}`:\n{}",
            bgpd.logs(&lab)
        );
    }
    drop(agent);
    Ok(())
}

/// GoBGP with Graceful Restart (helper) reads our capability and our End-of-RIB.
#[test]
fn graceful_restart_gobgp_reads_our_capability_and_end_of_rib() -> Result<()> {
    let mut lab = bgp_lab::pair(
        "graceful-gobgp",
        ("compute1", AGENT_ADDRESS),
        ("gobgp", FRR_ADDRESS),
    )?;
    let work = lab.workdir().to_path_buf();
    let inflight = work.join("compute1.inflight");
    fs::write(&inflight, "3\n")?;
    let bgp = bgp_section(4_200_000_001, "10.0.0.1", &[(FRR_ADDRESS, FRR_AS, "")]);
    let config = format!(
        "[dataplane]\nkeep_attached_on_exit = true\n\n{}",
        compute_config(1, 1e9, &inflight, &bgp)
    );
    lab.start_agent("compute1", &config)?;
    let gobgp_config = work.join("gobgpd.toml");
    fs::write(
        &gobgp_config,
        format!(
            "[global.config]\nas = {FRR_AS}\nrouter-id = \"10.0.0.200\"\n\n\
             [[neighbors]]\n[neighbors.config]\nneighbor-address = \"{AGENT_ADDRESS}\"\n\
             peer-as = 4200000001\n\
             [neighbors.graceful-restart.config]\nenabled = true\nhelper-only = true\n\
             [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n\
             [neighbors.afi-safis.mp-graceful-restart.config]\nenabled = true\n"
        ),
    )?;
    let log = work.join("gobgpd.log");
    lab.spawn(
        "gobgp",
        &[
            "gobgpd",
            "-f",
            gobgp_config.to_str().context("path")?,
            "-l",
            "debug",
        ],
        Some(&log),
    )?;
    let node = lab.node("gobgp")?;
    let neighbor = wait_for(
        "GoBGP to have our End-of-RIB",
        Duration::from_secs(30),
        || {
            let out = node.output(&["gobgp", "neighbor", AGENT_ADDRESS, "-j"])?;
            let n: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ipv6 = n["afi_safis"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["config"]["family"] == serde_json::json!({"afi": 2, "safi": 1}))
                .map(|a| a["mp_graceful_restart"]["state"].clone());
            Ok(ipv6.filter(|s| s["end_of_rib_received"] == true))
        },
    )
    .with_context(|| fs::read_to_string(&log).unwrap_or_default())?;
    ensure!(
        neighbor["received"] == true,
        "GoBGP read IPv6 unicast in our Graceful Restart capability: {neighbor:#}"
    );
    let log = fs::read_to_string(&log)?.to_lowercase();
    for bad in ["malformed", "\"level\":\"error\"", "\"level\":\"warning\""] {
        ensure!(!log.contains(bad), "GoBGP logged {bad}:\n{log}");
    }
    Ok(())
}
