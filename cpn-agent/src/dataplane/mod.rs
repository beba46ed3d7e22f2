//! The data plane: the embedded eBPF object, its programs and its pinned maps.
//!
//! [`Dataplane`] is the single owner of the loaded object; everything that touches the programs
//! or the maps goes through it.

mod clock;
mod ids;
pub mod kernel;
pub mod locators;
pub mod nexthop_cache;
mod nexthops;
pub mod owned_routes;
pub mod owner;
mod pinned;
pub mod resolver;
mod ring_memory;
mod stats;
mod tables;
mod tc;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use cpn_common::{maps, programs};
use serde::Deserialize;

pub use self::{
    clock::TickClock,
    ids::Ids,
    nexthops::{BadMac, MacAddr, NextHop},
    pinned::{
        AffinityStep, CounterRow, Flow, FlowRow, IcmpBucketRow, Lookup, NextHopRow, NodeRow,
        Pinned, RingRow, RingStep, ServiceRow, SidRow, ip_of, state_name,
    },
    resolver::{NotCached, resolve, resolve_now},
    stats::{ProtoStats, pinned_proto_stats},
    tables::{Node, ServiceAddr, ServiceConfig, SidBehavior, addr16, protocol_name},
    tc::{CLSACT_HANDLE, CLSACT_PRIORITY, TcAttach},
};
pub use cpn_common::{
    maps::{NodeState, SR_DOMAIN_PREFIXES, Seen},
    programs::Hook,
};

/// The eBPF object built by `cargo xtask build-ebpf` (empty when the agent was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cpn.bpf.o"));

/// One of the XDP programs in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// `cpn_steer`: ingress steering.
    Steer,
    /// `cpn_endpoint`: local SID processing.
    Endpoint,
}

impl Program {
    pub const ALL: [Self; 2] = [Self::Steer, Self::Endpoint];

    /// The program's name in the object (and in `bpftool prog`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Steer => programs::STEER,
            Self::Endpoint => programs::ENDPOINT,
        }
    }
}

/// The XDP program's protocol counters.
impl From<Program> for Seen {
    fn from(program: Program) -> Self {
        match program {
            Program::Steer => Self::Steer(Hook::Xdp),
            Program::Endpoint => Self::Endpoint,
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an attachment of `program` at `hook` is called: its pinned link's file name
/// (`cpn_steer-eth0`, `cpn_steer_tc_ingress-eth0`).
pub fn link_name(program: Program, hook: Hook, interface: &str) -> String {
    let name = hook.tc_program().unwrap_or(program.name());
    format!("{name}-{interface}")
}

/// How an XDP program is attached to an interface (the names `ip link` uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (`xdpdrv`): fastest; the driver must support XDP (veth does).
    #[default]
    Native,
    /// In the generic network stack (`xdpgeneric`): works on any interface, slower.
    Generic,
    /// Offloaded to the NIC (`xdpoffload`): only on NICs that support it.
    Offload,
}

impl AttachMode {
    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
            Self::Offload => XdpMode::Hardware,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this cpn-agent was built without its eBPF object: run `cargo xtask build-ebpf`, then \
         rebuild cpn-agent"
    )]
    NoObject,
    #[error("reading the kernel's tick clock for flow affinity: {0}")]
    TickClock(String),
    #[error(
        "{} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`. Inside \
         `ip netns exec`, /sys is remounted and the host's bpffs is hidden: start the agent with \
         `nsenter --net=/run/netns/NAME` instead",
        path.display()
    )]
    NotBpffs { path: PathBuf },
    #[error("creating the pin directory {}", path.display())]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed (this needs root and a kernel with BPF)")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no map `{0}` although cpn-common lists it")]
    MissingMap(&'static str),
    #[error("the eBPF object defines map `{0}`, which cpn-common does not list")]
    UnlistedMap(String),
    #[error("the eBPF object has no XDP program `{0}`")]
    MissingProgram(&'static str),
    #[error("program {program}")]
    Program {
        program: Program,
        source: ProgramError,
    },
    #[error("the eBPF object has no TC program `{0}`")]
    MissingTcProgram(&'static str),
    #[error("program {name}")]
    TcProgram {
        name: &'static str,
        source: ProgramError,
    },
    #[error(
        "attaching {program} to interface `{interface}` in {} mode failed: {error}{hint}",
        mode.name()
    )]
    Attach {
        program: Program,
        interface: String,
        mode: AttachMode,
        // Not a `source`: the message shows it inline, before the hint.
        error: ProgramError,
        hint: &'static str,
    },
    #[error(
        "attaching {} to interface `{interface}` at {hook} failed: {error}{}{hint}",
        hook.program(),
        caused_by(error)
    )]
    AttachTc {
        interface: String,
        hook: Hook,
        error: ProgramError,
        hint: &'static str,
    },
    #[error("pinned link {}: {error}", path.display())]
    Link { path: PathBuf, error: String },
    #[error("{what} {value} is out of range (must be below {limit})")]
    OutOfRange {
        what: &'static str,
        value: u32,
        limit: u32,
    },
    #[error(
        "a node needs 1 to {} segments, got {count}",
        cpn_common::maps::MAX_SIDS
    )]
    Segments { count: usize },
    #[error("map `{map}`")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// How the data plane is loaded: table sizes and the load-time tunables its programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of the flow-affinity table.
    pub flows: u32,
    pub icmp: IcmpRateLimit,
    /// How the TC programs are attached.
    pub tc_attach: TcAttach,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flows: maps::FLOWS_ENTRIES,
            icmp: IcmpRateLimit::LINUX,
            tc_attach: TcAttach::Auto,
        }
    }
}

/// The rate limit of the ICMP errors both programs send (RFC 4443 §2.4 f), kept per CPU: every
/// error takes a token from the bucket of its destination (the invoking packet's source) and
/// from the bucket of all errors. An interval of zero turns that bucket off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpRateLimit {
    /// Time that earns one error, for all errors together.
    pub interval: Duration,
    /// Errors that may go at once, for all errors together.
    pub burst: u32,
    /// Time that earns one error to the same destination.
    pub per_destination_interval: Duration,
    /// Errors that may go at once to the same destination.
    pub per_destination_burst: u32,
}

impl IcmpRateLimit {
    /// Linux's defaults: 1000 errors a second with a burst of 50 in all
    /// (`net.ipv6.icmp_msgs_per_sec`, `net.ipv6.icmp_msgs_burst`), and one a second with a
    /// burst of 6 per destination (`net.ipv6.icmp.ratelimit`).
    pub const LINUX: Self = Self {
        interval: Duration::from_millis(1),
        burst: 50,
        per_destination_interval: Duration::from_secs(1),
        per_destination_burst: 6,
    };
    /// No limit (fixture tests that look at many errors in a row).
    pub const OFF: Self = Self {
        interval: Duration::ZERO,
        burst: 0,
        per_destination_interval: Duration::ZERO,
        per_destination_burst: 0,
    };
}

/// Where the maps live: pinned in a bpffs directory (the agent), or only in this process
/// (fixture tests, which must not disturb a running agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    Dir(PathBuf),
    Unpinned,
}

/// `error`'s causes, each after a colon (a syscall's errno, a netlink answer).
fn caused_by(error: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cause = error.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The loaded object and the interfaces its programs are attached to.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    /// `<pin dir>/links` when pinned: one pinned `bpf_link` per attachment, so the programs stay
    /// attached while the agent restarts.
    links_dir: Option<PathBuf>,
    attachments: Vec<Attachment>,
    tc_attach: TcAttach,
    /// The rings map in our memory, when it is mappable (see `ring_memory`).
    ring_memory: Option<ring_memory::RingMemory>,
}

#[derive(Debug)]
struct Attachment {
    program: Program,
    hook: Hook,
    interface: String,
    link: tc::Held,
    pin: Option<PathBuf>,
}

impl Dataplane {
    /// Loads the embedded object and verifies every program. With [`Pinning::Dir`], each map is
    /// pinned there by its name, or the map already pinned there is reused.
    pub fn load(pinning: &Pinning) -> Result<Self, Error> {
        Self::load_with(pinning, &LoadOptions::default())
    }

    /// [`Dataplane::load`] with other table sizes or tunables (the benchmarks measure affinity
    /// with a million flows; fixtures turn the ICMP rate limit off).
    pub fn load_with(pinning: &Pinning, options: &LoadOptions) -> Result<Self, Error> {
        if OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        let mut loader = EbpfLoader::new();
        if options.flows != maps::FLOWS_ENTRIES {
            loader.map_max_entries(maps::FLOWS, options.flows);
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let icmp = options.icmp;
        let tunables = [
            ("ICMP_INTERVAL_NS", nanos(icmp.interval)),
            ("ICMP_BURST", u64::from(icmp.burst)),
            (
                "ICMP_PEER_INTERVAL_NS",
                nanos(icmp.per_destination_interval),
            ),
            ("ICMP_PEER_BURST", u64::from(icmp.per_destination_burst)),
        ];
        for (name, value) in &tunables {
            loader.override_global(name, value, true);
        }
        if let Pinning::Dir(dir) = pinning {
            ensure_on_bpffs(dir)?;
            std::fs::create_dir_all(dir).map_err(|source| Error::PinDir {
                path: dir.clone(),
                source,
            })?;
            for name in maps::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        check_maps(&ebpf)?;
        for program in Program::ALL {
            let xdp = xdp_mut(&mut ebpf, program)?;
            verified(program.name(), || xdp.load())
                .map_err(|source| Error::Program { program, source })?;
        }
        let links_dir = match pinning {
            Pinning::Dir(dir) => {
                let links = dir.join("links");
                std::fs::create_dir_all(&links).map_err(|source| Error::PinDir {
                    path: links.clone(),
                    source,
                })?;
                Some(links)
            }
            Pinning::Unpinned => None,
        };
        let mut dataplane = Self {
            ebpf,
            links_dir,
            attachments: Vec::new(),
            tc_attach: options.tc_attach,
            ring_memory: None,
        };
        // A new SR domain admits every source until the agent says otherwise; a pinned one
        // keeps what the last agent wrote (the next one writes its own).
        if dataplane.sr_domain()?.is_empty() {
            dataplane.set_sr_domain(None)?;
        }
        let ring_memory = match dataplane.ebpf.map(maps::RINGS) {
            Some(aya::maps::Map::Array(rings)) => ring_memory::RingMemory::map(rings)
                .inspect_err(|error| {
                    tracing::info!(
                        %error,
                        "the rings map cannot be mapped (pinned by an older agent?): rings are \
                         written slot by slot"
                    );
                })
                .ok(),
            _ => None,
        };
        dataplane.ring_memory = ring_memory;
        Ok(dataplane)
    }

    /// Attaches `program` to `interface`. If a previous agent left a pinned link there, the
    /// new program replaces the old one atomically through it (no packet sees no program);
    /// otherwise a new link is made (and pinned, when the maps are).
    pub fn attach(
        &mut self,
        program: Program,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(), Error> {
        let pin = self
            .links_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{interface}", program.name())));
        let attach_error = |error| Error::Attach {
            program,
            interface: interface.to_owned(),
            mode,
            hint: attach_hint(&error, mode),
            error,
        };
        let xdp = xdp_mut(&mut self.ebpf, program)?;
        let link = if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let link_error = |e: &dyn std::fmt::Display| Error::Link {
                path: path.clone(),
                error: e.to_string(),
            };
            let pinned = PinnedLink::from_pin(path).map_err(|e| link_error(&e))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_error(&e))?;
            let id = xdp.attach_to_link(link).map_err(attach_error)?;
            tracing::info!(%program, %interface, "took over the pinned link: program replaced in place");
            xdp.take_link(id)
                .map_err(|source| Error::Program { program, source })?
        } else {
            let id = xdp
                .attach(interface, mode.xdp_mode())
                .map_err(attach_error)?;
            xdp.take_link(id)
                .map_err(|source| Error::Program { program, source })?
        };
        let link = FdLink::try_from(link).map_err(|e| Error::Link {
            path: pin.clone().unwrap_or_default(),
            error: format!("XDP needs bpf_link support (Linux 5.9 or later): {e}"),
        })?;
        if let Some(path) = &pin
            && !path.exists()
        {
            // Pinning consumes the link and hands back the same fd, now also held by bpffs.
            let pinned = link.pin(path).map_err(|e| Error::Link {
                path: path.clone(),
                error: e.to_string(),
            })?;
            self.attachments.push(Attachment {
                program,
                hook: Hook::Xdp,
                interface: interface.to_owned(),
                link: tc::Held::Link(pinned.into()),
                pin,
            });
            return Ok(());
        }
        self.attachments.push(Attachment {
            program,
            hook: Hook::Xdp,
            interface: interface.to_owned(),
            link: tc::Held::Link(link),
            pin,
        });
        Ok(())
    }

    /// Attaches `cpn_steer_tc` to `interface` at `hook` (a TC one), through a TCX link or a
    /// clsact filter as the load options say (see the `tc` module), taking over what a
    /// previous agent left there, as [`Dataplane::attach`] does.
    pub fn attach_tc(&mut self, interface: &str, hook: Hook) -> Result<(), Error> {
        if hook == Hook::Xdp {
            return self.attach(Program::Steer, interface, AttachMode::Native);
        }
        let pin = self
            .links_dir
            .as_ref()
            .map(|dir| dir.join(link_name(Program::Steer, hook, interface)));
        let how = self.tc_attach;
        let tc_program = self.load_tc(hook)?;
        let link = tc::attach(tc_program, interface, hook, how, pin.as_deref())?;
        self.attachments.push(Attachment {
            program: Program::Steer,
            hook,
            interface: interface.to_owned(),
            link,
            pin,
        });
        Ok(())
    }

    /// Detaches links a previous agent pinned for interfaces that are no longer configured.
    pub fn detach_unconfigured(
        &mut self,
        configured: &[(Program, Hook, &str)],
    ) -> Result<(), Error> {
        let Some(dir) = &self.links_dir else {
            return Ok(());
        };
        let keep: Vec<String> = configured
            .iter()
            .map(|(program, hook, interface)| link_name(*program, *hook, interface))
            .collect();
        let entries = std::fs::read_dir(dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                // A clsact filter stays without its pin: it is removed by its name.
                if let Some((hook, interface)) = tc::attachment_of(&name) {
                    tc::remove_clsact(interface, hook);
                }
                std::fs::remove_file(entry.path()).map_err(|source| Error::PinDir {
                    path: entry.path(),
                    source,
                })?;
                tracing::info!(link = %name, "detached a link no longer configured");
            }
        }
        Ok(())
    }

    /// Detaches every program from every interface, in reverse order of attachment.
    pub fn detach_all(&mut self) -> Result<(), Error> {
        while let Some(Attachment {
            program,
            hook,
            interface,
            link,
            pin,
        }) = self.attachments.pop()
        {
            if let Some(path) = pin {
                std::fs::remove_file(&path).map_err(|source| Error::PinDir { path, source })?;
            }
            // Closing the last reference to the link (or dropping the filter's handle)
            // detaches the program.
            drop(link);
            tracing::info!(%program, %interface, %hook, "detached");
        }
        Ok(())
    }

    /// Exits leaving the programs attached through their pinned links (and the maps pinned),
    /// for the next agent to take over. Unpinned attachments are detached.
    pub fn leave_attached(mut self) {
        for Attachment {
            program,
            hook,
            interface,
            pin,
            link,
        } in self.attachments.drain(..)
        {
            let what = if pin.is_some() {
                link.leave();
                "left attached"
            } else {
                drop(link);
                "detached"
            };
            tracing::info!(%program, %interface, %hook, "{what}");
        }
    }

    /// Verifies and loads the TC program of `hook` unless it is loaded: only nodes that use a
    /// TC hook (and the fixtures that run through it) pay for its verification, not every
    /// agent start.
    pub fn load_tc(&mut self, hook: Hook) -> Result<&mut SchedClassifier, Error> {
        let name = hook.tc_program().ok_or(Error::MissingTcProgram("(xdp)"))?;
        let tc = self
            .ebpf
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(Error::MissingTcProgram(name))?;
        if tc.fd().is_err() {
            verified(name, || tc.load()).map_err(|source| Error::TcProgram { name, source })?;
        }
        Ok(tc)
    }

    /// `cpn_steer` as the TC program of `hook` once [`Dataplane::load_tc`] has loaded it, e.g. to
    /// run packets through it with `BPF_PROG_TEST_RUN`.
    pub fn steer_tc(&self, hook: Hook) -> Result<&SchedClassifier, Error> {
        let name = hook.tc_program().ok_or(Error::MissingTcProgram("(xdp)"))?;
        self.ebpf
            .program(name)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or(Error::MissingTcProgram(name))
    }

    /// The loaded program, e.g. to run packets through it with `BPF_PROG_TEST_RUN`.
    pub fn program(&self, program: Program) -> Result<&Xdp, Error> {
        self.ebpf
            .program(program.name())
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(Error::MissingProgram(program.name()))
    }

    /// `program`'s size as loaded (BPF instructions, subprograms included) and the number of
    /// instructions the verifier processed to accept it (its `verified_insns`).
    pub fn verified_size(&self, program: Program) -> Result<(Option<u32>, Option<u32>), Error> {
        let info = self
            .program(program)?
            .info()
            .map_err(|source| Error::Program { program, source })?;
        Ok((
            info.size_translated().map(|bytes| bytes / 8),
            info.verified_instruction_count(),
        ))
    }

    /// The per-protocol counters of a program (a [`Program`] in XDP, or the steering code at
    /// a [`Hook`]), summed over CPUs.
    pub fn proto_stats(&self, seen: impl Into<Seen>) -> Result<ProtoStats, Error> {
        let seen = seen.into();
        let name = seen.map();
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        ProtoStats::read(map, seen).map_err(|source| Error::Map { map: name, source })
    }
}

/// Loads a program through the verifier. The verifier stops with EAGAIN when a signal arrives
/// while it checks a program; like libbpf, try again a few times.
fn verified(
    name: &str,
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 =>
            {
                tracing::debug!(program = name, "verifier interrupted, loading again");
            }
            done => return done,
        }
    }
}

fn xdp_mut(ebpf: &mut Ebpf, program: Program) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(program.name())
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(Error::MissingProgram(program.name()))
}

/// The object and cpn-common must agree on the set of maps, or pinning and inspection would
/// silently miss one.
fn check_maps(ebpf: &Ebpf) -> Result<(), Error> {
    for name in maps::ALL {
        if ebpf.map(name).is_none() {
            return Err(Error::MissingMap(name));
        }
    }
    // `.rodata` and friends hold the load-time globals; they are not ours to pin.
    let unlisted = ebpf
        .maps()
        .map(|(name, _)| name)
        .find(|name| !name.starts_with('.') && !maps::ALL.contains(name));
    match unlisted {
        Some(extra) => Err(Error::UnlistedMap(extra.to_owned())),
        None => Ok(()),
    }
}

/// Pins only work on bpffs; anywhere else `create_dir_all` would succeed and the pins fail later
/// with an obscure error.
fn ensure_on_bpffs(dir: &Path) -> Result<(), Error> {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::NotBpffs {
            path: dir.to_owned(),
        }
    })?;
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is NUL-terminated.
    let magic = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        (libc::statfs(c_path.as_ptr(), &raw mut stat) == 0).then_some(stat.f_type)
    };
    if magic == Some(BPF_FS_MAGIC) {
        Ok(())
    } else {
        Err(Error::NotBpffs {
            path: existing.to_owned(),
        })
    }
}

fn attach_hint(error: &ProgramError, mode: AttachMode) -> &'static str {
    match error {
        ProgramError::UnknownInterface { .. } => {
            " (no such interface here: check the name with `ip link`, and the network namespace)"
        }
        _ if mode == AttachMode::Native => {
            " (the driver may lack native XDP, or another XDP program is attached: try \
             mode = \"generic\", and check `ip link show` for an existing xdp program)"
        }
        _ => " (check `ip link show` for an XDP program already attached to it)",
    }
}

/// The default pin directory, `/sys/fs/bpf/cpn`.
pub fn default_pin_dir() -> &'static Path {
    Path::new(maps::PIN_DIR)
}
