//! Part 4: a full table from a router. Our generator (table.rs) sends the same table of
//! IPv4 and IPv6 routes to, in turn, the cpn ingress agent, BIRD 2 and GoBGP, each alone in a
//! namespace lab; for each: how long it takes to process the whole table and its peak memory.
//! The cpn agent must keep steering (a service from a static `[[remote]]`) and install none
//! of the routes (its import policy drops them on arrival and counts them).
//!
//! ```text
//!   gen 10.255.0.1 ──eth0── dut 10.255.0.2 ──eth1── client
//!   (table.rs: the           (cpn-agent | bird | gobgpd, passive; cpn steers on eth1)
//!    table, End-of-RIB)
//! ```
//!
//! Learn time: from the first UPDATE handed to TCP until the peer reports the whole table
//! processed (polled every 20 ms, or after 9 times the last poll's answer time if that is
//! longer, so that asking costs a peer at most a tenth of its time): cpn, the paths its import policy filtered plus those it
//! kept (`cpnctl show neighbors`, the control socket); BIRD, the routes its protocol imported
//! (`birdc show protocols all`); GoBGP, the paths it accepted from the neighbor (`gobgp
//! neighbor -j`). Peak memory: `VmHWM` of the peer's process at the end, reset once the
//! session is up (so it is the peak while taking the table; the peak of its start is
//! reported beside it).

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cpn_agent::api::{self, Neighbor, NodeView, Request};
use cpn_tests::lab::{Lab, wait_for};
use serde::Serialize;

use crate::table::{self, Session, Table};

const GEN_V4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const DUT_V4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const GEN_V6: &str = "2001:db8:ff::1";
const GEN_AS: u32 = 4_200_000_200;
const DUT_AS: u32 = 4_200_000_100;
const SERVICE: &str = "2001:db8:cafe::1";
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub ipv4: usize,
    pub ipv6: usize,
    /// How long a peer may take for the table before it is reported incomplete.
    pub deadline: Duration,
}

/// The full table's size (the issue's).
const FULL: (usize, usize) = (1_000_000, 200_000);

impl Settings {
    /// The full table, or a small one for `--quick`.
    pub const fn new(quick: bool) -> Self {
        Self {
            ipv4: if quick { 10_000 } else { FULL.0 },
            ipv6: if quick { 2_000 } else { FULL.1 },
            deadline: Duration::from_secs(if quick { 60 } else { 600 }),
        }
    }
}

/// What was sent.
#[derive(Debug, Serialize)]
pub struct Sent {
    pub ipv4_routes: usize,
    pub ipv6_routes: usize,
    pub updates: usize,
    pub bytes: usize,
    pub ipv4_per_update: usize,
    pub ipv6_per_update: usize,
}

/// One speaker fed the table.
#[derive(Debug, Serialize)]
pub struct PeerRun {
    pub name: String,
    pub version: String,
    /// Seconds from the first UPDATE sent to the whole table processed; `None`: not within
    /// the deadline.
    pub learn_s: Option<f64>,
    /// The slowest answer to a poll, ms (polls are spaced by at least 9 times their answer
    /// time, so that asking costs the peer at most a tenth of its time).
    pub slowest_poll_ms: f64,
    /// Seconds until the last byte of the table (and End-of-RIB) was handed to TCP.
    pub sent_s: f64,
    /// Routes the peer reported processed when the run ended.
    pub processed: u64,
    /// Routes it kept (BIRD, GoBGP: imported; cpn: paths in its Adj-RIB-In).
    pub kept: u64,
    /// `VmRSS` once the session was up, before the table, MiB.
    pub rss_before_mib: f64,
    /// `VmHWM` then: the peak since the process started, MiB.
    pub peak_before_mib: f64,
    /// `VmHWM` at the end, reset just before the table: the peak while it took the table, MiB.
    pub peak_rss_mib: f64,
    /// Ratios to BIRD in the same run.
    pub learn_vs_bird: Option<f64>,
    pub peak_rss_vs_bird: Option<f64>,
    /// cpn only: kernel routes in its namespace after the table minus before it (any table,
    /// any protocol but the kernel's own).
    pub kernel_routes_added: Option<i64>,
    /// cpn only: ring slots of the static node before and after the table.
    pub ring_slots_before: Option<u32>,
    pub ring_slots_after: Option<u32>,
    /// The peer ended the session (its NOTIFICATION, or the connection closed).
    pub session_ended: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BigTable {
    pub method: String,
    pub sent: Sent,
    pub peers: Vec<PeerRun>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Cpn,
    Bird,
    Gobgp,
}

impl Peer {
    const fn name(self) -> &'static str {
        match self {
            Self::Cpn => "cpn-agent",
            Self::Bird => "BIRD",
            Self::Gobgp => "GoBGP",
        }
    }
}

fn sender() -> table::Sender {
    table::Sender {
        asn: GEN_AS,
        router_id: GEN_V4,
        next_hop_v4: GEN_V4,
        next_hop_v6: GEN_V6.parse().expect("an address"),
        hold_time: Duration::from_secs(90),
    }
}

/// Runs the part; a peer whose daemon is not installed is left out and named in `missing`.
pub fn run(settings: &Settings, missing: &mut Vec<String>) -> Result<BigTable> {
    if settings.ipv4 < FULL.0 || settings.ipv6 < FULL.1 {
        missing.push(format!(
            "the full-size table, {} IPv4 and {} IPv6 routes (full run only)",
            FULL.0, FULL.1
        ));
    }
    let table = Table::generate(&sender(), settings.ipv4, settings.ipv6)?;
    let (v4_per, v6_per) = Table::per_update();
    let mut peers = Vec::new();
    for peer in [Peer::Bird, Peer::Cpn, Peer::Gobgp] {
        let program = match peer {
            Peer::Cpn => None,
            Peer::Bird => Some("bird"),
            Peer::Gobgp => Some("gobgpd"),
        };
        if let Some(program) = program
            && !installed(program)
        {
            missing.push(format!(
                "big table into {}: `{program}` is not installed (`cargo xtask setup`)",
                peer.name()
            ));
            continue;
        }
        let run = measure(peer, &table, settings)
            .with_context(|| format!("big table into {}", peer.name()))?;
        eprintln!(
            "bench: big table into {}: {} routes processed in {}, peak RSS {:.1} MiB",
            run.name,
            run.processed,
            run.learn_s
                .map_or_else(|| "(incomplete)".to_owned(), |s| format!("{s:.2} s")),
            run.peak_rss_mib
        );
        peers.push(run);
    }
    let bird = peers
        .iter()
        .find(|p| p.name == Peer::Bird.name())
        .map(|b| (b.learn_s, b.peak_rss_mib));
    for p in &mut peers {
        if let Some((bird_learn, bird_rss)) = bird {
            p.learn_vs_bird = p.learn_s.zip(bird_learn).map(|(a, b)| a / b);
            p.peak_rss_vs_bird = Some(p.peak_rss_mib / bird_rss);
        }
    }
    Ok(BigTable {
        method: format!(
            "one eBGP session from our generator (netgauze-bgp-pkt) over a veth link, the peer \
             passive in its own namespace; {} IPv4 /24s as classic NLRI (up to {v4_per} per \
             UPDATE) and {} IPv6 /48s in MP_REACH_NLRI (up to {v6_per}), each UPDATE with its \
             own AS_PATH and a community, then End-of-RIB; learn time from the first UPDATE \
             handed to TCP until the peer reports the whole table processed (polled every \
             {} ms or 9 times the last answer's time, whichever is longer); peak RSS is the peer process's VmHWM while it takes the table (reset \
             when the session is up)",
            table.ipv4,
            table.ipv6,
            POLL.as_millis()
        ),
        sent: Sent {
            ipv4_routes: table.ipv4,
            ipv6_routes: table.ipv6,
            updates: table.updates,
            bytes: table.bytes,
            ipv4_per_update: v4_per,
            ipv6_per_update: v6_per,
        },
        peers,
    })
}

fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

fn lab() -> Result<Lab> {
    let lab = Lab::builder("bigtable")
        .node("gen")
        .node("dut")
        .node("client")
        .link(("gen", "eth0"), ("dut", "eth0"))
        .link(("dut", "eth1"), ("client", "eth0"))
        .build()?;
    let generator = lab.node("gen")?;
    generator.add_address("eth0", &format!("{GEN_V4}/24"))?;
    generator.add_address("eth0", &format!("{GEN_V6}/64"))?;
    let dut = lab.node("dut")?;
    dut.add_address("eth0", &format!("{DUT_V4}/24"))?;
    dut.add_address("eth0", "2001:db8:ff::2/64")?;
    dut.add_address("eth1", "2001:db8:fe::1/64")?;
    // The static node's SID is reachable (through the client's link: no traffic is sent).
    dut.add_route(&["fc00:1::/32", "via", "2001:db8:fe::2", "dev", "eth1"])?;
    lab.node("client")?
        .add_address("eth0", "2001:db8:fe::2/64")?;
    Ok(lab)
}

/// The ingress: steers the service to a static node on eth1, and takes the generator as a
/// passive eBGP neighbor with the default import policy.
fn cpn_config() -> String {
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth1\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:fe::1\"\n\n\
         [[policy]]\nservice = \"{SERVICE}\"\nkind = \"cpu\"\n\n\
         [selection]\ninterval_ms = 200\n\n\
         [[remote]]\nname = \"c1\"\nsegments = [\"fc00:1::d6\"]\n\n\
         [[remote.service]]\naddress = \"{SERVICE}\"\ncapacity = {{ cpu = 1e12 }}\n\n\
         [bgp]\nasn = {DUT_AS}\nrouter_id = \"{DUT_V4}\"\nhold_time_s = 90\n\n\
         [[bgp.neighbor]]\naddress = \"{GEN_V4}\"\nasn = {GEN_AS}\npassive = true\n"
    )
}

fn bird_config() -> String {
    format!(
        "router id {DUT_V4};\n\
         protocol device {{}}\n\
         protocol bgp gen {{\n\
         \tlocal {DUT_V4} as {DUT_AS};\n\
         \tneighbor {GEN_V4} as {GEN_AS};\n\
         \tpassive on;\n\
         \thold time 90;\n\
         \tipv4 {{ import all; export none; }};\n\
         \tipv6 {{ import all; export none; }};\n\
         }}\n"
    )
}

fn gobgp_config() -> String {
    format!(
        "[global.config]\nas = {DUT_AS}\nrouter-id = \"{DUT_V4}\"\n\n\
         [[neighbors]]\n[neighbors.config]\nneighbor-address = \"{GEN_V4}\"\npeer-as = {GEN_AS}\n\
         [neighbors.transport.config]\npassive-mode = true\n\
         [neighbors.timers.config]\nhold-time = 90\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv4-unicast\"\n\
         [[neighbors.afi-safis]]\n[neighbors.afi-safis.config]\nafi-safi-name = \"ipv6-unicast\"\n"
    )
}

/// A started peer: its pid and how to ask it how many routes it has processed.
struct Started {
    pid: u32,
    version: String,
}

fn start(peer: Peer, lab: &mut Lab) -> Result<Started> {
    let work = lab.workdir().to_path_buf();
    let path = |name: &str| -> Result<String> {
        Ok(work.join(name).to_str().context("a UTF-8 path")?.to_owned())
    };
    match peer {
        Peer::Cpn => {
            let agent = lab.start_agent("dut", &cpn_config())?;
            Ok(Started {
                pid: agent.pid,
                version: format!("cpn-agent {} (ingress)", env!("CARGO_PKG_VERSION")),
            })
        }
        Peer::Bird => {
            fs::write(work.join("bird.conf"), bird_config())?;
            let pid = lab.spawn(
                "dut",
                &[
                    "bird",
                    "-f",
                    "-c",
                    &path("bird.conf")?,
                    "-s",
                    &path("bird.ctl")?,
                    "-P",
                    &path("bird.pid")?,
                ],
                Some(&work.join("dut.log")),
            )?;
            wait_for("BIRD to start", Duration::from_secs(10), || {
                Ok(birdc(&work, "show status")
                    .is_ok_and(|s| s.contains("Daemon is up"))
                    .then_some(()))
            })?;
            let version = first_line(&["bird", "--version"]);
            Ok(Started { pid, version })
        }
        Peer::Gobgp => {
            fs::write(work.join("gobgpd.toml"), gobgp_config())?;
            let pid = lab.spawn(
                "dut",
                &["gobgpd", "-f", &path("gobgpd.toml")?, "-l", "warn"],
                Some(&work.join("dut.log")),
            )?;
            let dut = lab.node("dut")?.clone();
            wait_for("GoBGP to start", Duration::from_secs(10), || {
                Ok(dut
                    .output(&["gobgp", "global"])?
                    .status
                    .success()
                    .then_some(()))
            })?;
            let version = first_line(&["gobgpd", "--version"]);
            Ok(Started { pid, version })
        }
    }
}

/// The first line a program prints (on stdout or stderr), e.g. its version.
fn first_line(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn birdc(work: &Path, command: &str) -> Result<String> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(work.join("bird.ctl"))
        .args(command.split_whitespace())
        .output()?;
    if !out.status.success() {
        bail!("birdc {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Routes processed and kept so far.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    processed: u64,
    kept: u64,
}

fn count(peer: Peer, lab: &Lab) -> Result<Count> {
    match peer {
        Peer::Cpn => {
            let neighbors: Vec<Neighbor> =
                serde_json::from_value(api::ask(&lab.control_socket("dut"), &Request::Neighbors)?)?;
            let n = neighbors
                .iter()
                .find(|n| n.address == GEN_V4)
                .context("the generator is no neighbor of the agent")?;
            let kept = u64::try_from(n.paths)?;
            Ok(Count {
                processed: n.filtered + kept,
                kept,
            })
        }
        Peer::Bird => {
            // `Routes:         1000000 imported, 0 exported, 1000000 preferred`, per channel.
            let text = birdc(lab.workdir(), "show protocols all gen")?;
            let imported: u64 = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Routes:"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            Ok(Count {
                processed: imported,
                kept: imported,
            })
        }
        Peer::Gobgp => {
            // The summary of all neighbors: `gobgp neighbor ADDR` also has GoBGP work out what
            // it advertises, a walk of its whole RIB on every poll.
            let out = lab.node("dut")?.output(&["gobgp", "neighbor", "-j"])?;
            let value: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "gobgp neighbor -j: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            let accepted: u64 = value
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|peer| peer["afi_safis"].as_array().into_iter().flatten())
                .filter_map(|a| a["state"]["accepted"].as_u64())
                .sum();
            Ok(Count {
                processed: accepted,
                kept: accepted,
            })
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[expect(clippy::cast_precision_loss, reason = "KiB of a process")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Routes in every table of the dut's namespace, one line each, but for the kernel's own
/// (`proto kernel`: those of its addresses, such as a link-local one arriving late).
fn kernel_routes(lab: &Lab) -> Result<BTreeSet<String>> {
    let mut routes = BTreeSet::new();
    for family in ["-4", "-6"] {
        let out = lab
            .node("dut")?
            .run(&["ip", family, "route", "show", "table", "all"])?;
        routes.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.contains(" proto kernel "))
                .map(|l| format!("{family} {}", l.trim())),
        );
    }
    Ok(routes)
}

/// Ring slots of the static node `c1` at the ingress.
fn ring_slots(lab: &Lab) -> Result<u32> {
    let nodes: Vec<NodeView> =
        serde_json::from_value(api::ask(&lab.control_socket("dut"), &Request::Nodes)?)?;
    Ok(nodes
        .iter()
        .filter(|n| n.name.as_deref() == Some("c1"))
        .flat_map(|n| n.slots.values())
        .sum())
}

/// How the peer took the table.
struct Taken {
    sent_s: f64,
    learn_s: Option<f64>,
    /// The last count polled.
    last: Count,
    slowest: Duration,
}

/// Sends the table over `session` while polling the peer until it has processed all of it,
/// the session ends or `deadline` passes.
fn take(
    peer: Peer,
    lab: &Lab,
    session: &Session,
    table: &Table,
    deadline: Duration,
) -> Result<Taken> {
    let total = u64::try_from(table.routes())?;
    let since = Instant::now();
    std::thread::scope(|scope| {
        let sending = scope.spawn(|| {
            session.send(table)?;
            Ok::<_, anyhow::Error>(since.elapsed().as_secs_f64())
        });
        let mut last = Count::default();
        let mut learn_s = None;
        let mut pause = POLL;
        let mut slowest = Duration::ZERO;
        while since.elapsed() < deadline {
            std::thread::sleep(pause);
            let asked = Instant::now();
            last = count(peer, lab)?;
            let took = asked.elapsed();
            slowest = slowest.max(took);
            // Asking costs the peer too: at most a tenth of its time.
            pause = POLL.max(took * 9);
            if last.processed >= total {
                learn_s = Some(since.elapsed().as_secs_f64());
                break;
            }
            if session.ended().is_some() {
                break;
            }
        }
        if learn_s.is_none() {
            // Unblocks the sender if the peer stopped reading.
            session.abort();
        }
        let sent_s = sending
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))?
            .unwrap_or(f64::NAN);
        Ok(Taken {
            sent_s,
            learn_s,
            last,
            slowest,
        })
    })
}

fn measure(peer: Peer, table: &Table, settings: &Settings) -> Result<PeerRun> {
    let mut lab = lab()?;
    let started = start(peer, &mut lab)?;
    let result = (|| -> Result<PeerRun> {
        let slots_before = if peer == Peer::Cpn {
            Some(wait_for(
                "the ingress to steer to its static node",
                Duration::from_secs(20),
                || Ok(Some(ring_slots(&lab)?).filter(|s| *s > 0)),
            )?)
        } else {
            None
        };
        let stream = {
            let _inside = lab.node("gen")?.enter()?;
            table::connect(SocketAddr::from((DUT_V4, 179)), Duration::from_secs(20))?
        };
        let session = Session::open(stream, &sender())?;
        // The peer may still be settling the session (GoBGP: its neighbor entry).
        wait_for(
            "the peer to show the session",
            Duration::from_secs(10),
            || Ok(count(peer, &lab).ok()),
        )?;
        let routes_before = kernel_routes(&lab)?;
        let rss_before = status_kib(started.pid, "VmRSS:")?;
        let peak_before = status_kib(started.pid, "VmHWM:")?;
        // Resets VmHWM to the current RSS (proc(5), clear_refs).
        fs::write(format!("/proc/{}/clear_refs", started.pid), "5")
            .context("resetting the peer's peak RSS")?;
        let taken = take(peer, &lab, &session, table, settings.deadline)?;
        let (kernel_routes_added, slots_after) = if peer == Peer::Cpn {
            // Give the agent a selection interval to act on what it learned.
            std::thread::sleep(Duration::from_millis(500));
            let after = kernel_routes(&lab)?;
            let added: Vec<String> = after.difference(&routes_before).cloned().collect();
            let removed = routes_before.difference(&after).count();
            if !added.is_empty() || removed > 0 {
                eprintln!(
                    "bench: kernel routes added during the table: {added:?}, {removed} removed"
                );
            }
            (
                Some(i64::try_from(after.len())? - i64::try_from(routes_before.len())?),
                Some(ring_slots(&lab)?),
            )
        } else {
            (None, None)
        };
        Ok(PeerRun {
            name: peer.name().to_owned(),
            version: started.version.clone(),
            learn_s: taken.learn_s,
            slowest_poll_ms: taken.slowest.as_secs_f64() * 1e3,
            sent_s: taken.sent_s,
            processed: taken.last.processed,
            kept: taken.last.kept,
            rss_before_mib: mib(rss_before),
            peak_before_mib: mib(peak_before),
            peak_rss_mib: mib(status_kib(started.pid, "VmHWM:")?),
            learn_vs_bird: None,
            peak_rss_vs_bird: None,
            kernel_routes_added,
            ring_slots_before: slots_before,
            ring_slots_after: slots_after,
            session_ended: session.ended(),
        })
    })();
    if peer == Peer::Gobgp {
        // With a full table it takes longer than the lab's 5 s to exit on SIGTERM.
        let _ = lab.kill(started.pid);
    }
    result.map_err(|e| {
        let log = fs::read_to_string(lab.workdir().join("dut.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        e.context(format!(
            "{} log (last lines):\n{}",
            peer.name(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    })
}
