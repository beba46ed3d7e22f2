//! Network-namespace labs.
//!
//! ```text
//!   Lab::new("ping")            namespaces cpnlab-<pid>-<n>-<node>, one per node
//!     .node("client")           veth pairs created straight into their namespaces,
//!     .node("server")           so interface names only need to be unique per node
//!     .link(("client", "eth0"), ("server", "eth0"))
//!     .build()?                 -> Lab: run commands / spawn processes in a node;
//!                                  Drop kills the processes, deletes the namespaces
//!                                  and the bpffs pin directories it handed out
//! ```
//!
//! Commands enter a node with `nsenter --net` rather than `ip netns exec`: the latter remounts
//! /sys and would hide the host's bpffs, where the agent pins its maps.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

const NETNS_PREFIX: &str = "cpnlab-";
const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One end of a link: (node, interface).
pub type Port<'a> = (&'a str, &'a str);

/// Describes a lab before it exists.
#[derive(Debug, Default)]
pub struct LabBuilder {
    name: String,
    nodes: Vec<String>,
    links: Vec<Link>,
}

/// A veth pair to create: its two ends, and how many queues each end has (`None`: veth's
/// default, one).
#[derive(Debug)]
struct Link {
    ends: [(String, String); 2],
    queues: Option<u32>,
}

impl LabBuilder {
    /// Adds a node (a network namespace with `lo` up).
    #[must_use]
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// Adds a veth link between two ports; both ends are brought up.
    #[must_use]
    pub fn link(mut self, a: Port<'_>, b: Port<'_>) -> Self {
        self.links.push(Link {
            ends: [
                (a.0.to_owned(), a.1.to_owned()),
                (b.0.to_owned(), b.1.to_owned()),
            ],
            queues: None,
        });
        self
    }

    /// Adds a veth link whose two ends have `queues` transmit and `queues` receive queues each
    /// (`numtxqueues`/`numrxqueues`): XDP on a veth refuses fewer receive queues than its peer
    /// has transmit queues, so both ends get the same number.
    #[must_use]
    pub fn multi_queue_link(mut self, a: Port<'_>, b: Port<'_>, queues: u32) -> Self {
        self = self.link(a, b);
        if let Some(link) = self.links.last_mut() {
            link.queues = Some(queues);
        }
        self
    }

    /// Creates the namespaces and links. On error, whatever was created is removed again.
    pub fn build(self) -> Result<Lab> {
        ensure!(
            is_root(),
            "labs create network namespaces: run the tests as root"
        );
        remove_stale_labs();
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let workdir = std::env::temp_dir().join(format!("{NETNS_PREFIX}{id}"));
        fs::create_dir_all(&workdir)
            .with_context(|| format!("creating the lab directory {}", workdir.display()))?;
        let mut lab = Lab {
            name: self.name,
            id,
            workdir,
            nodes: Vec::new(),
            processes: Vec::new(),
            pin_dirs: Vec::new(),
        };
        for node in &self.nodes {
            ensure!(
                !lab.nodes.iter().any(|n| n.name == *node),
                "node `{node}` defined twice"
            );
            let netns = format!("{NETNS_PREFIX}{}-{node}", lab.id);
            run_checked(Command::new("ip").args(["netns", "add", &netns]))?;
            lab.nodes.push(Node {
                name: node.clone(),
                netns,
            });
            lab.node(node)?.run(&["ip", "link", "set", "lo", "up"])?;
        }
        for link in &self.links {
            let [(a_node, a_if), (b_node, b_if)] = &link.ends;
            let a_ns = lab.node(a_node)?.netns.clone();
            let b_ns = lab.node(b_node)?.netns.clone();
            let queues = link.queues.map(|n| n.to_string());
            let queue_args: Vec<&str> = queues
                .as_deref()
                .map(|n| vec!["numtxqueues", n, "numrxqueues", n])
                .unwrap_or_default();
            run_checked(
                Command::new("ip")
                    .args(["link", "add", "name", a_if, "netns", &a_ns])
                    .args(&queue_args)
                    .args(["type", "veth", "peer", "name", b_if, "netns", &b_ns])
                    .args(&queue_args),
            )
            .with_context(|| format!("linking {a_node}:{a_if} to {b_node}:{b_if}"))?;
            lab.node(a_node)?.run(&["ip", "link", "set", a_if, "up"])?;
            lab.node(b_node)?.run(&["ip", "link", "set", b_if, "up"])?;
        }
        Ok(lab)
    }
}

/// A running lab; dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    name: String,
    id: String,
    /// Configs and logs of this lab's processes; removed on drop.
    workdir: PathBuf,
    nodes: Vec<Node>,
    processes: Vec<(String, Child)>,
    pin_dirs: Vec<PathBuf>,
}

/// The line `cpn-agent run` logs once every program is attached.
pub const AGENT_READY: &str = "cpn-agent running";

/// An agent started by [`Lab::start_agent`].
#[derive(Debug, Clone)]
pub struct Agent {
    pub pid: u32,
    /// Where its maps are pinned.
    pub pin_dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// A node of a lab: one network namespace.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    netns: String,
}

impl Lab {
    /// Starts describing a lab; `name` appears in error messages.
    pub fn builder(name: &str) -> LabBuilder {
        LabBuilder {
            name: name.to_owned(),
            ..LabBuilder::default()
        }
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("lab {}: no node `{name}`", self.name))
    }

    /// Starts a long-running process in a node (e.g. an agent); it is killed when the lab drops.
    /// Its stdout and stderr go to `log` if given, else they are discarded.
    pub fn spawn(&mut self, node: &str, argv: &[&str], log: Option<&Path>) -> Result<u32> {
        let mut command = self.node(node)?.command(argv);
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = fs::File::create(path)
                    .with_context(|| format!("creating log file {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {argv:?} in {node}"))?;
        let pid = child.id();
        self.processes
            .push((format!("{node}: {}", argv.join(" ")), child));
        Ok(pid)
    }

    /// Stops a process started with [`Lab::spawn`] with SIGTERM and waits for it to exit.
    /// Returns its exit status so tests can check it shut down cleanly.
    pub fn stop(&mut self, pid: u32) -> Result<std::process::ExitStatus> {
        let index = self
            .processes
            .iter()
            .position(|(_, c)| c.id() == pid)
            .with_context(|| format!("no process {pid} in lab {}", self.name))?;
        let (what, child) = self.processes.remove(index);
        terminate(&what, child)
    }

    /// Kills a process started with [`Lab::spawn`] with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self, pid: u32) -> Result<()> {
        let index = self
            .processes
            .iter()
            .position(|(_, c)| c.id() == pid)
            .with_context(|| format!("no process {pid} in lab {}", self.name))?;
        let (_, mut child) = self.processes.remove(index);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The exit status of a process started with [`Lab::spawn`], if it has exited (it is
    /// reaped then, and forgotten).
    pub fn exited(&mut self, pid: u32) -> Result<Option<std::process::ExitStatus>> {
        let index = self
            .processes
            .iter()
            .position(|(_, c)| c.id() == pid)
            .with_context(|| format!("no process {pid} in lab {}", self.name))?;
        let status = self.processes[index].1.try_wait()?;
        if status.is_some() {
            self.processes.remove(index);
        }
        Ok(status)
    }

    /// Every node's network namespace and every pin directory handed out: what must be gone
    /// once the lab is dropped.
    pub fn resources(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .map(|n| Path::new(NETNS_DIR).join(&n.netns))
            .chain(self.pin_dirs.iter().cloned())
            .chain([self.workdir.clone()])
            .collect()
    }

    /// Hands out a fresh bpffs directory for one agent's pinned maps, removed on drop.
    pub fn pin_dir(&mut self, node: &str) -> Result<PathBuf> {
        self.node(node)?;
        let dir = Path::new(BPFFS).join(format!("{NETNS_PREFIX}{}-{node}", self.id));
        self.pin_dirs.push(dir.clone());
        Ok(dir)
    }

    /// The lab's scratch directory (configs, logs), removed on drop.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Starts `cpn-agent run` in `node` with `config` (TOML without a `[dataplane]` table: the
    /// lab adds one with a pin directory of its own) and waits until it has attached everything.
    pub fn start_agent(&mut self, node: &str, config: &str) -> Result<Agent> {
        let pin_dir = self.pin_dir(node)?;
        self.start_agent_pinned_at(node, &pin_dir, config)
    }

    /// Like [`Lab::start_agent`], with maps and links pinned at `pin_dir`: starting a second
    /// agent on the pin directory of a first one is a restart that takes over its data plane.
    pub fn start_agent_pinned_at(
        &mut self,
        node: &str,
        pin_dir: &Path,
        config: &str,
    ) -> Result<Agent> {
        let pin_dir = pin_dir.to_path_buf();
        let config_path = self.write_agent_config(node, &pin_dir, config)?;
        let log = self.workdir.join(format!("{node}.log"));
        let binary = agent_binary()?;
        let argv = [
            binary.to_str().context("agent path is not UTF-8")?,
            "run",
            "--config",
            config_path.to_str().context("lab path is not UTF-8")?,
        ];
        let pid = self.spawn(node, &argv, Some(&log))?;
        let started = wait_for("the agent to start", Duration::from_secs(20), || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains(AGENT_READY) {
                return Ok(Some(()));
            }
            if let Some((_, child)) = self.processes.iter_mut().find(|(_, c)| c.id() == pid)
                && let Some(status) = child.try_wait()?
            {
                bail!("the agent in {node} exited ({status}):\n{text}");
            }
            Ok(None)
        });
        started.with_context(|| format!("starting the agent in {node}"))?;
        Ok(Agent { pid, pin_dir, log })
    }

    /// The logs of the agents (or other processes logging to `<node>.log`) of `nodes`, for
    /// failure messages.
    pub fn logs<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = String::new();
        for node in nodes {
            let log =
                fs::read_to_string(self.workdir.join(format!("{node}.log"))).unwrap_or_default();
            let _ = write!(out, "--- {node}\n{log}");
        }
        out
    }

    /// Where `node`'s agent listens for `cpnctl`.
    pub fn control_socket(&self, node: &str) -> PathBuf {
        self.workdir.join(format!("{node}.sock"))
    }

    /// Asks `node`'s agent over its control socket, as `cpnctl --json` does, and reads the
    /// answer as a `T` (e.g. `Vec<cpn_agent::api::Neighbor>`).
    pub fn ask<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        request: &cpn_agent::api::Request,
    ) -> Result<T> {
        let answer = cpn_agent::api::ask(&self.control_socket(node), request)?;
        Ok(serde_json::from_value(answer)?)
    }

    /// Writes (or rewrites, before a SIGHUP) the configuration of `node`'s agent: `config`
    /// with its `[dataplane]` table (added if missing) naming the pin directory.
    pub fn write_agent_config(&self, node: &str, pin_dir: &Path, config: &str) -> Result<PathBuf> {
        let path = self.workdir.join(format!("{node}.toml"));
        let pin = format!("pin_dir = {:?}", pin_dir.display().to_string());
        let mut text = if config.contains("[dataplane]\n") {
            config.replacen("[dataplane]\n", &format!("[dataplane]\n{pin}\n"), 1)
        } else {
            format!("[dataplane]\n{pin}\n\n{config}")
        };
        // One control socket per agent: they all share the host's /run.
        if text.contains("[control]\n") && !text.contains("socket =") {
            let socket = self.control_socket(node);
            text = text.replacen(
                "[control]\n",
                &format!("[control]\nsocket = {:?}\n", socket.display().to_string()),
                1,
            );
        } else if !text.contains("[control]") {
            let socket = self.control_socket(node);
            let _ = write!(
                text,
                "\n[control]\nsocket = {:?}\n",
                socket.display().to_string()
            );
        }
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Deletes everything; called by `Drop`, callable earlier to see errors.
    fn teardown(&mut self) {
        for (what, child) in self.processes.drain(..).rev() {
            if let Err(e) = terminate(&what, child) {
                eprintln!("lab {}: {e:#}", self.name);
            }
        }
        for node in self.nodes.drain(..) {
            let _ = run_checked(Command::new("ip").args(["netns", "del", &node.netns]));
        }
        for dir in self.pin_dirs.drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name, for `ip netns exec` by hand.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that will run inside this node.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .arg("--")
            .args(argv);
        command
    }

    /// Runs a command in this node; fails with its output if it fails.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        run_checked(&mut self.command(argv)).with_context(|| format!("in node {}", self.name))
    }

    /// Runs a command in this node and returns its output whatever the exit status.
    pub fn output(&self, argv: &[&str]) -> Result<Output> {
        self.command(argv)
            .output()
            .with_context(|| format!("running {argv:?} in node {}", self.name))
    }

    /// Runs `ip` with whitespace-separated `args`, e.g.
    /// `node.ip("-6 route add fc00::d6/128 encap seg6local action End.DT6 table 255 dev eth0")`.
    pub fn ip(&self, args: &str) -> Result<Output> {
        let command: Vec<&str> = std::iter::once("ip")
            .chain(args.split_whitespace())
            .collect();
        self.run(&command)
    }

    /// Adds an address (`2001:db8::1/64` or `10.0.0.1/24`) to an interface. IPv6 addresses skip
    /// duplicate address detection so they are usable at once.
    pub fn add_address(&self, interface: &str, address: &str) -> Result<()> {
        let mut argv = vec!["ip", "address", "add", address, "dev", interface];
        if address.contains(':') {
            argv.push("nodad");
        }
        self.run(&argv).map(drop)
    }

    /// Adds a route, e.g. `["2001:db8:2::/64", "via", "2001:db8:1::1"]`.
    pub fn add_route(&self, route: &[&str]) -> Result<()> {
        let family = if route.iter().any(|a| a.contains(':')) {
            "-6"
        } else {
            "-4"
        };
        let mut argv = vec!["ip", family, "route", "add"];
        argv.extend_from_slice(route);
        self.run(&argv).map(drop)
    }

    /// Sets a sysctl inside this node, e.g. `net.ipv6.conf.all.forwarding=1`.
    pub fn sysctl(&self, assignment: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", assignment]).map(drop)
    }

    /// Moves the calling thread into this node's network namespace until the guard drops
    /// (`setns` affects only the calling thread). Use it from a thread of your own, never from
    /// an async runtime's worker.
    pub fn enter(&self) -> Result<NetnsGuard> {
        use std::os::fd::AsRawFd as _;
        let home = fs::File::open("/proc/thread-self/ns/net").context("opening our netns")?;
        let target = fs::File::open(Path::new(NETNS_DIR).join(&self.netns))
            .with_context(|| format!("opening netns {}", self.netns))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.netns,
                std::io::Error::last_os_error()
            );
        }
        Ok(NetnsGuard { home })
    }

    /// The interface index of `interface` in this node.
    pub fn ifindex(&self, interface: &str) -> Result<u32> {
        // Not /sys/class/net: under `nsenter --net` it still shows the host's interfaces.
        let out = self.run(&["ip", "-o", "link", "show", "dev", interface])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no ifindex in `{text}`"))
    }

    /// Makes the kernel fill in TCP/UDP checksums before packets leave `interface`. A veth
    /// normally leaves them to "offload" (`CHECKSUM_PARTIAL`), which only the kernel's own
    /// forwarding path completes; a packet that XDP encapsulates and redirects would arrive
    /// with a bad checksum. Physical NICs deliver complete checksums, so this is a lab concern.
    pub fn checksum_in_software(&self, interface: &str) -> Result<()> {
        self.run(&["ethtool", "-K", interface, "tx", "off"])
            .map(drop)
    }

    /// Turns IPv4 and IPv6 forwarding on.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward=1")?;
        self.sysctl("net.ipv6.conf.all.forwarding=1")
    }
}

/// Returns the thread to the network namespace it was in before [`Node::enter`].
#[derive(Debug)]
pub struct NetnsGuard {
    home: fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns back to the namespace fd we opened before leaving it.
        let rc = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "could not return to our network namespace");
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))`; `Ok(None)` means "not yet", an
/// error ends the wait at once.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn run_checked(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("could not start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// SIGTERM, then SIGKILL if the process has not exited within five seconds.
fn terminate(what: &str, mut child: Child) -> Result<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: plain syscall on a pid we own and have not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    bail!("{what} ignored SIGTERM for 5 s and was killed")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Removes namespaces and pin directories left by test processes that died without unwinding
/// (SIGKILL, abort): their pid no longer exists.
fn remove_stale_labs() {
    let stale = |name: &str| {
        name.strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let tmp = std::env::temp_dir();
    for dir in [Path::new(NETNS_DIR), Path::new(BPFFS), tmp.as_path()] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !stale(&name) {
                continue;
            }
            if dir == Path::new(NETNS_DIR) {
                let _ = run_checked(Command::new("ip").args(["netns", "del", &name]));
            } else {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The `cpn-agent` binary to start in labs: `$CPN_AGENT_BIN` (set by `cargo xtask`), else the
/// one cargo built next to the running test or demo binary.
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CPN_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("cpn-agent"))
        .collect::<Vec<_>>();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no cpn-agent binary found (looked at {candidates:?}): build it with `cargo build -p \
             cpn-agent`, or set CPN_AGENT_BIN"
        )
    })
}
