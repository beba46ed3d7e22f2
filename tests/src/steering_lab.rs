//! A lab with cpn agents steering real TCP traffic with their static configuration:
//!
//! ```text
//!                      ┌─ eth1 ── compute1 (cpu 1e12)
//!   client ── ingress ─┼─ eth2 ── compute2 (cpu 2e12)     VIP 2001:db8:cafe::1 on every lo,
//!                      └─ eth3 ── compute3 (cpu 3e12)     answering with its node name
//! ```
//! The ingress steers with `cpn_steer` (policy, static `[[remote]]`s reading the compute
//! agents' published metrics, locator routes installed by the agent); compute1 and compute2
//! decapsulate with `cpn_endpoint` (End.DT6), compute3 with a kernel `seg6local` route its agent
//! installs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    cpn_lab::SERVICE,
    lab::{Agent, Lab, wait_for},
};

pub const VIP: &str = "2001:db8:cafe::1";
pub const PORT: u16 = 7000;
/// Compute nodes and their CPU capacity (operations per second).
pub const COMPUTES: [(&str, f64); 3] = [("compute1", 1e12), ("compute2", 2e12), ("compute3", 3e12)];

/// Requests a service can have in flight (its `max_in_flight`).
pub const MAX_IN_FLIGHT: u32 = 10_000;

/// Opens `count` connections and keeps sending a line on each every 0.2 s, checking that the
/// same node answers, until the file `stop` exists; prints {"nodes": {...}, "broken": n,
/// "moved": n, "rounds": n}.
const HOLD_CLIENT: &str = r#"
import json, os, socket, sys, time
vip, port, count, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conns = []
for _ in range(count):
    c = socket.create_connection((vip, port), timeout=15)
    c.sendall(b"hi\n")
    f = c.makefile("rb")
    conns.append([c, f, f.readline().decode().split()[0], True])
nodes = {}
for _, _, n, _ in conns:
    nodes[n] = nodes.get(n, 0) + 1
print(json.dumps({"ready": nodes}), flush=True)
broken = moved = rounds = 0
while not os.path.exists(stop):
    rounds += 1
    for conn in conns:
        c, f, first, ok = conn
        if not ok:
            continue
        try:
            c.sendall(b"again\n")
            name = f.readline().decode().split()[0]
            if name != first:
                moved += 1; conn[3] = False
        except OSError:
            broken += 1; conn[3] = False
    time.sleep(0.2)
print(json.dumps({"nodes": nodes, "broken": broken, "moved": moved, "rounds": rounds}), flush=True)
"#;

/// The running lab.
#[derive(Debug)]
pub struct SteeringLab {
    pub lab: Lab,
    pub ingress: Agent,
    pub computes: Vec<Agent>,
    /// Each compute node's load knob: extra requests its service reports in flight.
    pub load_knobs: BTreeMap<String, PathBuf>,
}

impl SteeringLab {
    pub fn start(name: &str) -> Result<Self> {
        let mut builder = Lab::builder(name)
            .node("client")
            .node("ingress")
            .link(("client", "eth0"), ("ingress", "eth0"));
        for (i, (compute, _)) in COMPUTES.iter().enumerate() {
            builder = builder
                .node(compute)
                .link(("ingress", &format!("eth{}", i + 1)), (compute, "eth0"));
        }
        let mut lab = builder.build()?;
        let client = lab.node("client")?;
        client.add_address("eth0", "2001:db8:1::1/64")?;
        client.add_route(&["default", "via", "2001:db8:1::2"])?;
        client.checksum_in_software("eth0")?;
        let ingress = lab.node("ingress")?;
        ingress.add_address("eth0", "2001:db8:1::2/64")?;
        ingress.enable_forwarding()?;
        for (i, (compute, _)) in COMPUTES.iter().enumerate() {
            let n = i + 1;
            ingress.add_address(&format!("eth{n}"), &format!("2001:db8:1{n}::1/64"))?;
            let node = lab.node(compute)?;
            node.add_address("eth0", &format!("2001:db8:1{n}::2/64"))?;
            node.add_address("lo", &format!("{VIP}/128"))?;
            node.add_route(&["default", "via", &format!("2001:db8:1{n}::1")])?;
        }

        let work = lab.workdir().to_path_buf();
        let mut computes = Vec::new();
        let mut load_knobs = BTreeMap::new();
        for (i, (compute, capacity)) in COMPUTES.iter().enumerate() {
            let n = i + 1;
            let requests_file = work.join(format!("{compute}.inflight"));
            let knob = work.join(format!("{compute}.load"));
            fs::write(&knob, "0\n")?;
            load_knobs.insert((*compute).to_owned(), knob.clone());
            // compute3 lets the kernel decapsulate (a seg6local route the agent installs).
            let decap = if n == 3 {
                "decap = \"kernel\"\ntable = 255\n"
            } else {
                ""
            };
            let config = format!(
                "[node]\nname = \"{compute}\"\nroles = [\"compute\"]\n\n\
                 [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
                 [[srv6.sid]]\nsid = \"fc00:{n}::d6\"\nbehavior = \"End.DT6\"\n{decap}\n\
                 [[service]]\naddress = \"{VIP}\"\nsid = \"fc00:{n}::d6\"\ncapacity = {{ cpu = {capacity:e} }}\n\
                 in_flight_file = \"{}\"\nmax_in_flight = {MAX_IN_FLIGHT}\n\n\
                 [metrics]\ninterval_ms = 200\nsample_host = false\npublish_file = \"{}\"\n",
                requests_file.display(),
                work.join(format!("{compute}.json")).display(),
            );
            computes.push(lab.start_agent(compute, &config)?);
            start_name_server(&mut lab, compute, &requests_file, &knob)?;
        }
        let ingress = lab.start_agent("ingress", &ingress_config_text(&work, &[]))?;
        let lab = Self {
            lab,
            ingress,
            computes,
            load_knobs,
        };
        lab.wait_until_serving()?;
        Ok(lab)
    }

    /// New connections reach the service (the ingress has a ring and the computes answer).
    fn wait_until_serving(&self) -> Result<()> {
        wait_for(
            "the service through the ingress",
            Duration::from_secs(20),
            || {
                Ok(self
                    .split(3)
                    .ok()
                    .filter(|s| s.values().sum::<u32>() == 3)
                    .map(drop))
            },
        )
    }

    /// Opens `count` new connections from the client; connections per node.
    pub fn split(&self, count: u32) -> Result<BTreeMap<String, u32>> {
        split(&self.lab, count)
    }

    /// Makes `compute`'s service report `percent` % of its capacity in extra requests.
    pub fn set_load(&self, compute: &str, percent: u32) -> Result<()> {
        let knob = self
            .load_knobs
            .get(compute)
            .context("no such compute node")?;
        fs::write(knob, format!("{}\n", MAX_IN_FLIGHT / 100 * percent))?;
        Ok(())
    }

    /// Rewrites the ingress configuration with `drained` / removed nodes and sends SIGHUP.
    pub fn reconfigure_ingress(&mut self, changes: &[(&str, RemoteChange)]) -> Result<()> {
        let text = ingress_config_text(self.lab.workdir(), changes);
        self.lab
            .write_agent_config("ingress", &self.ingress.pin_dir, &text)?;
        // SAFETY: a signal to the agent process we started.
        let rc = unsafe { libc::kill(libc::pid_t::try_from(self.ingress.pid)?, libc::SIGHUP) };
        ensure!(rc == 0, "SIGHUP to the ingress agent failed");
        Ok(())
    }
}

impl SteeringLab {
    /// Stops the ingress agent (its programs stay attached) and starts a new one on the same
    /// pinned data plane; returns how long no agent was running.
    pub fn restart_ingress(&mut self) -> Result<Duration> {
        let status = self.lab.stop(self.ingress.pid)?;
        ensure!(status.success(), "the ingress agent exited with {status}");
        let stopped = std::time::Instant::now();
        let pin_dir = self.ingress.pin_dir.clone();
        let config = ingress_config_text(self.lab.workdir(), &[]);
        self.ingress = self
            .lab
            .start_agent_pinned_at("ingress", &pin_dir, &config)?;
        Ok(stopped.elapsed())
    }

    /// Pings the VIP from the client in the background (`count` pings, 20 ms apart); the
    /// summary line lands in the returned file.
    pub fn ping_in_background(&mut self, count: u32) -> Result<PathBuf> {
        let out = self.lab.workdir().join("ping.out");
        self.lab.spawn(
            "client",
            &[
                "ping",
                "-i",
                "0.02",
                "-c",
                &count.to_string(),
                "-W",
                "1",
                VIP,
            ],
            Some(&out),
        )?;
        Ok(out)
    }
}

/// Starts the labs' service ([`SERVICE`]: answers `<node> <in flight>`) on `node` at VIP and
/// PORT, with its in-flight file and load knob.
pub fn start_name_server(lab: &mut Lab, node: &str, inflight: &Path, knob: &Path) -> Result<()> {
    lab.spawn(
        node,
        &[
            "python3",
            "-c",
            SERVICE,
            node,
            VIP,
            &PORT.to_string(),
            inflight.to_str().context("path")?,
            knob.to_str().context("path")?,
        ],
        None,
    )?;
    Ok(())
}

/// Opens `count` new connections to VIP:PORT from the lab's `client` node; connections per node.
pub fn split(lab: &Lab, count: u32) -> Result<BTreeMap<String, u32>> {
    crate::cpn_lab::split_from(lab.node("client")?, VIP, PORT, count)
}

/// How a test changes a `[[remote]]` of the ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteChange {
    Drained,
    Removed,
}

fn ingress_config_text(work: &std::path::Path, changes: &[(&str, RemoteChange)]) -> String {
    let mut text = format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [dataplane]\nkeep_attached_on_exit = true\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\nobjective = {{ latency = 0, load = 1 }}\naffinity = true\n\
         max_metric_age_ms = 3000\n\n\
         [selection]\nthreshold = 0.05\nmin_dwell_ms = 500\nmax_churn = 1.0\ninterval_ms = 200\n\
         explain_file = \"{}\"\n",
        work.join("explain.json").display()
    );
    for (i, (compute, capacity)) in COMPUTES.iter().enumerate() {
        let change = changes
            .iter()
            .find(|(c, _)| c == compute)
            .map(|(_, ch)| *ch);
        if change == Some(RemoteChange::Removed) {
            continue;
        }
        let n = i + 1;
        let _ = write!(
            text,
            "\n[[remote]]\nname = \"{compute}\"\nsegments = [\"fc00:{n}::d6\"]\ndrained = {}\nmetrics_file = \"{}\"\n\
             locator = \"fc00:{n}::/32\"\nvia = \"2001:db8:1{n}::2\"\n\n\
             [[remote.service]]\naddress = \"{VIP}\"\ncapacity = {{ cpu = {capacity:e} }}\n",
            change == Some(RemoteChange::Drained),
            work.join(format!("{compute}.json")).display(),
        );
    }
    text
}

/// A background client holding connections open and checking them (see [`HOLD_CLIENT`]).
#[derive(Debug)]
pub struct Holder {
    pid: u32,
    output: PathBuf,
    stop: PathBuf,
}

impl SteeringLab {
    /// Opens `count` connections and keeps checking them until [`SteeringLab::finish_hold`].
    pub fn hold(&mut self, count: u32) -> Result<(Holder, BTreeMap<String, u32>)> {
        let output = self.lab.workdir().join("hold.out");
        let stop = self.lab.workdir().join("hold.stop");
        let argv = [
            "python3",
            "-c",
            HOLD_CLIENT,
            VIP,
            &PORT.to_string(),
            &count.to_string(),
            stop.to_str().context("path")?,
        ];
        let pid = self.lab.spawn("client", &argv, Some(&output))?;
        let ready: serde_json::Value =
            wait_for("the held connections", Duration::from_secs(30), || {
                let text = fs::read_to_string(&output).unwrap_or_default();
                Ok(text
                    .lines()
                    .next()
                    .and_then(|l| serde_json::from_str(l).ok()))
            })?;
        let nodes = serde_json::from_value(ready["ready"].clone())?;
        Ok((Holder { pid, output, stop }, nodes))
    }

    /// Stops the holder; returns (broken, moved, rounds).
    pub fn finish_hold(&mut self, holder: Holder) -> Result<(u64, u64, u64)> {
        let Holder { pid, output, stop } = holder;
        fs::write(&stop, "")?;
        let summary: serde_json::Value =
            wait_for("the holder's summary", Duration::from_secs(30), || {
                let text = fs::read_to_string(&output).unwrap_or_default();
                Ok(text
                    .lines()
                    .nth(1)
                    .and_then(|l| serde_json::from_str(l).ok()))
            })?;
        let _ = self.lab.stop(pid);
        let get = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
        Ok((get("broken"), get("moved"), get("rounds")))
    }
}
