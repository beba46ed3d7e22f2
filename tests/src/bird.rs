//! BIRD 2 (Debian 12's bird2, 2.0.12) as a BGP peer in a lab: a configuration writer, the
//! daemon started in a node (`bird -f`, stopped by the lab like any process it spawned) and
//! `birdc` queries over the daemon's own control socket in the lab's directory, so it touches
//! neither the host's BIRD nor other tests.
//!
//! Every configuration has a `device` protocol (BIRD learns the node's interfaces from it) and
//! resolves BGP next hops in a table of its own, `igp6`, that holds the node's connected
//! networks (a `direct` protocol) and, with [`BirdConfig::default_route`], a default route:
//! nothing of that table is exported to a BGP neighbor.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::lab::{Lab, wait_for};

/// A BIRD configuration, built protocol by protocol.
#[derive(Clone, Debug)]
pub struct BirdConfig {
    text: String,
    /// The BGP sessions written from now on ask BFD for their neighbor (`bfd on`).
    bgp_bfd: bool,
}

impl BirdConfig {
    /// Logging to stderr (the daemon's log file), `router_id`, the interfaces and the
    /// next-hop resolution table `igp6` with the connected networks.
    pub fn new(router_id: &str) -> Self {
        Self {
            text: format!(
                "log stderr all;\n\
                 router id {router_id};\n\
                 ipv6 table igp6;\n\n\
                 protocol device {{ scan time 2; }}\n\
                 protocol direct {{ ipv6 {{ table igp6; }}; }}\n"
            ),
            bgp_bfd: false,
        }
    }

    /// A `bfd` protocol with these timers on every interface; the BGP sessions added after
    /// this ask it for a session with their neighbor and go down with it (`bfd on`).
    #[must_use]
    pub fn bfd(mut self, interval_ms: u64, multiplier: u32) -> Self {
        let _ = writeln!(
            self.text,
            "protocol bfd {{ debug {{ states, events }}; interface \"*\" {{ interval {interval_ms} ms; multiplier {multiplier}; }}; }}"
        );
        self.bgp_bfd = true;
        self
    }

    /// A default route via `gateway` for resolving next hops (not exported).
    #[must_use]
    pub fn default_route(mut self, gateway: &str) -> Self {
        let _ = writeln!(
            self.text,
            "protocol static resolve6 {{ ipv6 {{ table igp6; }}; route ::/0 via {gateway}; }}"
        );
        self
    }

    /// BIRD's own routes, exported to its BGP neighbors: `static` protocols with blackhole
    /// routes for each IPv6 and IPv4 prefix.
    #[must_use]
    pub fn own_routes(mut self, ipv6: &[&str], ipv4: &[&str]) -> Self {
        for (name, family, prefixes) in [("own6", "ipv6", ipv6), ("own4", "ipv4", ipv4)] {
            if prefixes.is_empty() {
                continue;
            }
            let _ = write!(self.text, "protocol static {name} {{\n  {family};\n");
            for prefix in prefixes {
                let _ = writeln!(self.text, "  route {prefix} blackhole;");
            }
            self.text.push_str("}\n");
        }
        self
    }

    /// Installs the BGP routes that lie in `prefix` (e.g. the cpn locators) in the node's
    /// kernel, so that the node forwards to them as a router would.
    #[must_use]
    pub fn install(mut self, prefix: &str) -> Self {
        let _ = writeln!(
            self.text,
            "protocol kernel {{ ipv6 {{ import none; export where net ~ [ {prefix}+ ]; }}; }}"
        );
        self
    }

    /// An eBGP session (3 s hold time) to a neighbor on a connected subnet, waiting for it
    /// to connect (`passive`), with the IPv6 unicast channel (AIGP on, ADD-PATH both ways)
    /// and, with `ipv4`, IPv4 unicast over IPv6 next hops (RFC 8950); everything imported,
    /// everything exported.
    #[must_use]
    pub fn ebgp(
        mut self,
        name: &str,
        local: (&str, u32),
        neighbor: (&str, u32),
        ipv4: bool,
    ) -> Self {
        let (local_address, local_as) = local;
        let (address, asn) = neighbor;
        let ipv4 = if ipv4 {
            "  ipv4 { import all; export all; extended next hop on; };\n"
        } else {
            ""
        };
        let bfd = if self.bgp_bfd { "  bfd on;\n" } else { "" };
        let _ = write!(
            self.text,
            "protocol bgp {name} {{\n  \
             local {local_address} as {local_as};\n  \
             neighbor {address} as {asn};\n  \
             hold time 3;\n  keepalive time 1;\n  passive on;\n  \
             ipv6 {{ import all; export all; aigp on; add paths on; igp table igp6; }};\n\
             {ipv4}{bfd}}}\n"
        );
        self
    }

    /// An iBGP session in `asn` to a route-reflector client (cluster id `cluster_id`), waiting
    /// for it to connect, ADD-PATH both ways so that every site of a prefix is reflected.
    #[must_use]
    pub fn rr_client(mut self, name: &str, asn: u32, neighbor: &str, cluster_id: &str) -> Self {
        let _ = write!(
            self.text,
            "protocol bgp {name} {{\n  \
             local as {asn};\n  \
             neighbor {neighbor} as {asn};\n  \
             rr client;\n  rr cluster id {cluster_id};\n  \
             hold time 3;\n  keepalive time 1;\n  passive on;\n  \
             ipv6 {{ import all; export all; add paths on; igp table igp6; }};\n}}\n"
        );
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A BIRD daemon running in a lab node.
#[derive(Debug)]
pub struct Bird {
    node: String,
    socket: String,
    log: PathBuf,
    pub pid: u32,
}

impl Bird {
    /// Checks `config` (`bird -p`), starts BIRD with it in `node` and waits for its control
    /// socket to answer.
    pub fn start(lab: &mut Lab, node: &str, config: &BirdConfig) -> Result<Self> {
        let work = lab.workdir().to_path_buf();
        let path = work.join(format!("{node}-bird.conf"));
        fs::write(&path, config.text())?;
        let path = path.to_str().context("path")?.to_owned();
        let checked = lab.node(node)?.output(&["bird", "-p", "-c", &path])?;
        ensure!(
            checked.status.success(),
            "BIRD rejects its configuration: {}\n{}",
            String::from_utf8_lossy(&checked.stderr),
            config.text()
        );
        let socket = work.join(format!("{node}-bird.ctl"));
        let socket = socket.to_str().context("path")?.to_owned();
        let pid_file = work.join(format!("{node}-bird.pid"));
        let log = work.join(format!("{node}.log"));
        let pid = lab.spawn(
            node,
            &[
                "bird",
                "-f",
                "-c",
                &path,
                "-s",
                &socket,
                "-P",
                pid_file.to_str().context("path")?,
            ],
            Some(&log),
        )?;
        let bird = Self {
            node: node.to_owned(),
            socket,
            log,
            pid,
        };
        wait_for("BIRD's control socket", Duration::from_secs(10), || {
            Ok(bird
                .birdc(lab, &["show", "status"])
                .ok()
                .filter(|s| s.contains("Daemon is up and running"))
                .map(drop))
        })
        .with_context(|| bird.log())?;
        Ok(bird)
    }

    /// `birdc -s SOCKET ARGS...`: what it printed, or an error if it failed.
    pub fn birdc(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let mut command = vec!["birdc", "-s", &self.socket];
        command.extend_from_slice(args);
        let out = lab.node(&self.node)?.output(&command)?;
        ensure!(
            out.status.success(),
            "birdc {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `show route PREFIX all`: every path BIRD holds for exactly that prefix, with their
    /// attributes.
    pub fn routes_for(&self, lab: &Lab, prefix: &str) -> Result<String> {
        self.birdc(lab, &["show", "route", prefix, "all"])
    }

    /// `show protocols all NAME`.
    pub fn protocol(&self, lab: &Lab, name: &str) -> Result<String> {
        self.birdc(lab, &["show", "protocols", "all", name])
    }

    /// Waits until BGP protocol `name` is Established.
    pub fn wait_established(&self, lab: &Lab, name: &str, timeout: Duration) -> Result<String> {
        wait_for(&format!("BIRD's session {name}"), timeout, || {
            Ok(self
                .protocol(lab, name)
                .ok()
                .filter(|s| s.contains("BGP state:          Established")))
        })
        .with_context(|| self.log())
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        format!(
            "--- {} (BIRD)\n{}",
            self.node,
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}
