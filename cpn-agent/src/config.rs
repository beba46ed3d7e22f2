//! The agent's TOML configuration.
//!
//! Errors name the file, the line and the key, and say what would be valid.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use cpn_common::maps::Behavior;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    dataplane::{AttachMode, Hook, Pinning, Program, ServiceAddr, SidBehavior, default_pin_dir},
    metrics::ComputeKind,
    selection::Objective,
};

/// Longest node name: a host name's limit (`HOST_NAME_MAX`).
pub const MAX_NODE_NAME: usize = 64;
/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
const MAX_INTERFACE_NAME: usize = 15;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// `[[interface]]` tables: which program runs on which interface.
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub srv6: Srv6,
    /// `[[service]]`: services this node serves (compute role).
    #[serde(rename = "service", default)]
    pub services: Vec<ServedService>,
    /// `[[policy]]`: how this node steers a service (ingress role).
    #[serde(rename = "policy", default)]
    pub policies: Vec<PolicyConfig>,
    /// `[[remote]]`: compute nodes known statically (no protocol needed).
    #[serde(rename = "remote", default)]
    pub remotes: Vec<RemoteNode>,
    #[serde(default)]
    pub selection: SelectionConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[bgp]`: advertise this node's services and learn the others' (instead of, or besides,
    /// static `[[remote]]`s).
    pub bgp: Option<BgpConfig>,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub stamp: StampConfig,
}

/// `[stamp]`: path measurement (RFC 8762). An ingress sends each candidate a test packet
/// every `interval_ms` inside the candidate's own encapsulation; a compute node reflects them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StampConfig {
    /// 10 to 60000 ms (default 100).
    #[serde(default = "default_stamp_interval")]
    pub interval_ms: Spanned<u64>,
    /// A reflected packet later than this is a lost one; 1 to 60000 ms (default 1000).
    #[serde(default = "default_stamp_timeout")]
    pub timeout_ms: Spanned<u64>,
    /// The reflectors' UDP port (default 862, RFC 8762 §4.1).
    #[serde(default = "default_stamp_port")]
    pub port: u16,
}

impl Default for StampConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_stamp_interval(),
            timeout_ms: default_stamp_timeout(),
            port: default_stamp_port(),
        }
    }
}

impl StampConfig {
    pub fn settings(&self) -> crate::sensing::stamp::Settings {
        crate::sensing::stamp::Settings {
            interval: std::time::Duration::from_millis(*self.interval_ms.get_ref()),
            timeout: std::time::Duration::from_millis(*self.timeout_ms.get_ref()),
            port: self.port,
        }
    }
}

fn default_stamp_interval() -> Spanned<u64> {
    Spanned::new(0..0, 100)
}

fn default_stamp_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}

fn default_stamp_port() -> u16 {
    crate::sensing::stamp::packet::PORT
}

/// `[control]`: where `cpnctl` reaches the agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control socket (default `/run/cpn/cpn-agent.sock`).
    pub socket: Option<PathBuf>,
    /// Serve Prometheus `/metrics` on this address (default: not at all).
    pub prometheus: Option<std::net::SocketAddr>,
}

/// `[bgp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This node's AS (RFC 7938 style: one private 4-byte ASN per node).
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    /// TCP port to listen on and to connect to (default 179).
    #[serde(default = "bgp_port")]
    pub port: u16,
    #[serde(default = "default_hold_time")]
    pub hold_time_s: u64,
    #[serde(default = "default_connect_retry")]
    pub connect_retry_s: u64,
    /// Type code of the CPN metric attribute (default 255, RFC 2042 "development").
    #[serde(default = "default_metric_code")]
    pub metric_attribute_type: Spanned<u8>,
    /// Next hop of the routes we originate or pass on over eBGP (default: `[srv6] source`).
    pub next_hop: Option<Ipv6Addr>,
    /// RFC 4456 cluster id when this node reflects routes (default: `router_id`).
    pub cluster_id: Option<std::net::Ipv4Addr>,
    /// The link probes of earlier versions, gone: read only to say what replaced them.
    #[serde(default)]
    pub probe_port: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub probe_interval_ms: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub probe_multiplier: Option<Spanned<toml::Value>>,
    /// Re-send our metrics when a value moves by more than this share (default 0.05) ...
    #[serde(default = "default_metric_threshold")]
    pub metric_threshold: f64,
    /// ... and at least this often, so peers see them fresh (default 3 s).
    #[serde(default = "default_refresh")]
    pub refresh_s: u64,
    /// Prefixes that hold cpn locators originated by routers other than cpn agents (whose
    /// locator routes name their node): learned plain routes inside them are installed too.
    #[serde(default)]
    pub import_locators: Vec<Spanned<String>>,
    /// Keep learned routes that are neither services nor cpn locators (shown by `cpnctl show
    /// routes`, never installed) instead of dropping them on arrival (default false).
    #[serde(default)]
    pub keep_other_routes: bool,
    /// Graceful Restart (RFC 4724): how long neighbors keep our routes when our session ends
    /// without a NOTIFICATION (an agent restart), and we theirs; 1 to 4095 s, default 120;
    /// 0 turns Graceful Restart off.
    #[serde(default = "default_graceful_restart")]
    pub graceful_restart_s: Spanned<u64>,
    /// How long an agent that restarted with its data plane attached waits for its
    /// neighbors' End-of-RIB before sending its own (RFC 4724 §4.1), default 30 s.
    #[serde(default = "default_selection_deferral")]
    pub selection_deferral_s: u64,
    #[serde(rename = "neighbor", default)]
    pub neighbors: Vec<NeighborConfig>,
}

impl BgpConfig {
    /// The import policy (checked at load: every `import_locators` entry is an IPv6 prefix).
    pub fn import(&self) -> crate::bgp::policy::Import {
        crate::bgp::policy::Import {
            locators: self
                .import_locators
                .iter()
                .filter_map(|p| p.get_ref().parse::<ipnet::Ipv6Net>().ok())
                .map(|net| net.trunc())
                .collect(),
            keep_other: self.keep_other_routes,
        }
    }
}

/// `[[bgp.neighbor]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub address: Spanned<IpAddr>,
    pub asn: u32,
    #[serde(default = "bgp_port")]
    pub port: u16,
    /// Wait for the neighbor to connect.
    #[serde(default)]
    pub passive: bool,
    /// This iBGP neighbor is a client of ours: we reflect its routes and reflect others' to
    /// it (RFC 4456). Any client makes this node a route reflector.
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Close the session (NOTIFICATION Cease, maximum number of prefixes reached) when the
    /// neighbor sends more paths than this. Default: no limit.
    pub max_prefixes: Option<usize>,
    /// TCP MD5 signature key (RFC 2385), 1 to 80 bytes; the neighbor must use the same.
    pub password: Option<Spanned<String>>,
    /// GTSM (RFC 5082): the neighbor is this many routers away (1: on the link); we send at
    /// TTL 255 and the kernel drops whatever arrives from it with a TTL below `256 - hops`.
    pub ttl_security_hops: Option<Spanned<u8>>,
    /// BFD with this neighbor (default: none).
    pub bfd: Option<Spanned<BfdConfig>>,
}

/// `bfd = { interval_ms, multiplier, multihop }` of a `[[bgp.neighbor]]`: a BFD session with
/// the neighbor (RFC 5880), tied to its BGP session, which closes with its routes as soon as
/// BFD goes down (RFC 5882 §4.3).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdConfig {
    /// Desired Min TX and Required Min RX once up, 10 ms or more (default 100).
    #[serde(default = "default_bfd_interval")]
    pub interval_ms: u64,
    /// Detect Mult: intervals of silence that make the neighbor dead, 1 to 255 (default 3).
    #[serde(default = "default_bfd_multiplier")]
    pub multiplier: u32,
    /// A neighbor that is not on a shared link: RFC 5883 (UDP 4784, any TTL) instead of RFC
    /// 5881 (UDP 3784, TTL 255). Default false.
    #[serde(default)]
    pub multihop: bool,
}

/// The shortest BFD interval the agent runs (its timers are millisecond-grained).
pub const MIN_BFD_INTERVAL_MS: u64 = 10;
/// The longest: Desired Min TX is a 32-bit count of microseconds.
pub const MAX_BFD_INTERVAL_MS: u64 = 4_294_967;

fn default_bfd_interval() -> u64 {
    100
}

fn default_bfd_multiplier() -> u32 {
    3
}

fn bgp_port() -> u16 {
    179
}

fn default_hold_time() -> u64 {
    9
}

fn default_connect_retry() -> u64 {
    2
}

fn default_metric_code() -> Spanned<u8> {
    Spanned::new(0..0, crate::bgp::metric_attr::DEFAULT_TYPE_CODE)
}

fn default_metric_threshold() -> f64 {
    0.05
}

fn default_refresh() -> u64 {
    3
}

fn default_graceful_restart() -> Spanned<u64> {
    Spanned::new(0..0, 120)
}

fn default_selection_deferral() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This node's name, as operators and other agents see it.
    pub name: String,
    /// What this node does; informational for now, checked against what is configured.
    #[serde(default)]
    pub roles: Vec<Role>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingress,
    Compute,
    Transit,
    Reflector,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// bpffs directory for the pinned maps (default `/sys/fs/bpf/cpn`). Several agents on one
    /// host (e.g. one per network namespace in a lab) need one directory each.
    pub pin_dir: Option<PathBuf>,
    /// On SIGINT/SIGTERM, leave the programs attached (through links pinned in
    /// `<pin_dir>/links`) so traffic keeps flowing while the agent restarts; the next agent
    /// takes them over. Default false: exit detaches.
    #[serde(default)]
    pub keep_attached_on_exit: bool,
    /// `[dataplane.icmp_rate_limit]`: how many ICMP errors the programs may send.
    #[serde(default)]
    pub icmp_rate_limit: IcmpRateLimitConfig,
    /// How the TC hooks attach: `auto` (TCX links where the kernel has them, else a clsact
    /// filter), `tcx` or `clsact`.
    #[serde(default)]
    pub tc_attach: crate::dataplane::TcAttach,
}

/// The ICMP error rate limit of both programs (RFC 4443 §2.4 f), kept per CPU. The defaults are
/// Linux's (`net.ipv6.icmp_msgs_per_sec`, `icmp_msgs_burst`, `net.ipv6.icmp.ratelimit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRateLimitConfig {
    /// All errors together, per second (0: no limit).
    #[serde(default = "default_icmp_per_second")]
    pub errors_per_second: Spanned<u32>,
    #[serde(default = "default_icmp_burst")]
    pub burst: Spanned<u32>,
    /// One error per destination each interval (0: no limit).
    #[serde(default = "default_icmp_per_destination_interval_ms")]
    pub per_destination_interval_ms: Spanned<u64>,
    #[serde(default = "default_icmp_per_destination_burst")]
    pub per_destination_burst: Spanned<u32>,
}

impl Default for IcmpRateLimitConfig {
    fn default() -> Self {
        Self {
            errors_per_second: default_icmp_per_second(),
            burst: default_icmp_burst(),
            per_destination_interval_ms: default_icmp_per_destination_interval_ms(),
            per_destination_burst: default_icmp_per_destination_burst(),
        }
    }
}

// Linux's defaults (see `IcmpRateLimit::LINUX`).
fn default_icmp_per_second() -> Spanned<u32> {
    Spanned::new(0..0, 1000)
}

fn default_icmp_burst() -> Spanned<u32> {
    Spanned::new(0..0, 50)
}

fn default_icmp_per_destination_interval_ms() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}

fn default_icmp_per_destination_burst() -> Spanned<u32> {
    Spanned::new(0..0, 6)
}

impl IcmpRateLimitConfig {
    pub fn limit(&self) -> crate::dataplane::IcmpRateLimit {
        let per_second = *self.errors_per_second.get_ref();
        crate::dataplane::IcmpRateLimit {
            interval: if per_second == 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_secs(1) / per_second
            },
            burst: *self.burst.get_ref(),
            per_destination_interval: std::time::Duration::from_millis(
                *self.per_destination_interval_ms.get_ref(),
            ),
            per_destination_burst: *self.per_destination_burst.get_ref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: Spanned<String>,
    /// `steer` (ingress: clients' side) or `endpoint` (compute node or transit: SIDs).
    pub program: Program,
    /// `native` (default), `generic` or `offload`: how XDP is attached.
    #[serde(default)]
    pub mode: AttachMode,
    /// Where `steer` runs: `xdp` (default), `tc-ingress` or `tc-egress`.
    #[serde(default = "xdp_hook")]
    pub hook: Spanned<Hook>,
}

/// `[srv6]`: this node's locator, encapsulation source and local SIDs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Srv6 {
    /// The locator prefix this node's SIDs come from, e.g. `fc00:1::/48`; with `[bgp]` it is
    /// advertised, and peers with a data plane install a route to it.
    pub locator: Option<String>,
    /// Outer source address of the packets this node encapsulates (ingress role).
    pub source: Option<Ipv6Addr>,
    #[serde(rename = "sid", default)]
    pub sids: Vec<SidConfig>,
    /// The SR domain (RFC 8754 §5.1): the IPv6 prefixes packets to this node's SIDs may come
    /// from; any other source is dropped (`outside_sr_domain`). Absent: every source.
    pub domain: Option<Spanned<Vec<Spanned<String>>>>,
}

impl Srv6 {
    /// The SR domain's prefixes (checked at load); `None` when every source is admitted.
    pub fn domain_prefixes(&self) -> Option<Vec<ipnet::Ipv6Net>> {
        self.domain.as_ref().map(|domain| {
            domain
                .get_ref()
                .iter()
                .filter_map(|p| p.get_ref().parse::<ipnet::Ipv6Net>().ok())
                .map(|p| p.trunc())
                .collect()
        })
    }
}

/// `[[srv6.sid]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidConfig {
    pub sid: Ipv6Addr,
    /// `End`, `End.X`, `End.DT6`, `End.DT4`, `End.DT46`, `End.DX6` or `End.DX4`.
    pub behavior: Spanned<String>,
    /// End.DT*: routing table of the inner lookup (default: the interface's).
    pub table: Option<u32>,
    /// End.X / End.DX*: the next hop.
    pub nexthop: Option<Spanned<IpAddr>>,
    /// End.X / End.DX*: the interface towards the next hop. With `decap = "kernel"` also the
    /// device of the `seg6local` route for the other behaviours (default: the first
    /// `[[interface]]`).
    pub interface: Option<String>,
    /// Who processes the SID: `xdp` (default, `cpn_endpoint`) or `kernel` (a `seg6local`
    /// route the agent installs; End, End.X, End.DT6, End.DX6, End.DX4).
    #[serde(default)]
    pub decap: Decap,
}

/// Who processes a local SID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decap {
    #[default]
    Xdp,
    Kernel,
}

/// A transport protocol for service keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// Capacity per compute kind, in operations per second (e.g. `2e12` for 2 TOPS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    #[serde(default)]
    pub cpu: f64,
    #[serde(default)]
    pub gpu: f64,
    #[serde(default)]
    pub npu: f64,
}

impl CapacityConfig {
    pub fn get(&self, kind: ComputeKind) -> f64 {
        match kind {
            ComputeKind::Cpu => self.cpu,
            ComputeKind::Gpu => self.gpu,
            ComputeKind::Npu => self.npu,
        }
    }
}

/// `[[service]]`: a service this node serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedService {
    /// The anycast address (also configure it on `lo`).
    pub address: IpAddr,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    /// The local SID that decapsulates its traffic (one of `[[srv6.sid]]`).
    pub sid: Spanned<Ipv6Addr>,
    pub capacity: CapacityConfig,
    /// A file the service keeps rewriting with its number of requests in flight.
    pub in_flight_file: Option<PathBuf>,
    pub max_in_flight: Option<f64>,
    pub power_watts: Option<f64>,
    pub price_per_hour: Option<f64>,
    /// Checks that the service answers at its own address; it is advertised only while it
    /// does (default: no check, always advertised).
    pub health: Option<Spanned<HealthConfig>>,
}

/// `health = { check, ... }` of a `[[service]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub check: HealthCheckKind,
    /// For `tcp` and `http`: the port (default the service's).
    pub port: Option<u16>,
    /// For `http`: the path to GET (default `/`) and the status that passes (default 200).
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_status")]
    pub status: u16,
    /// For `command`: the program and its arguments (no shell); exit status 0 passes.
    #[serde(default)]
    pub command: Vec<String>,
    /// 10 to 3600000 ms (default 1000).
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    /// Longer is a failure; 1 ms to the interval (default 500, or the interval if shorter).
    pub timeout_ms: Option<u64>,
    /// Passes in a row that make an unhealthy service healthy again, 1 to 100 (default 2).
    #[serde(default = "default_health_rise")]
    pub rise: u32,
    /// Failures in a row that make it unhealthy, 1 to 100 (default 3).
    #[serde(default = "default_health_fall")]
    pub fall: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    Tcp,
    Http,
    Command,
}

fn default_health_path() -> String {
    "/".to_owned()
}

fn default_health_status() -> u16 {
    200
}

fn default_health_interval() -> u64 {
    1000
}

fn default_health_rise() -> u32 {
    2
}

fn default_health_fall() -> u32 {
    3
}

impl ServedService {
    /// The service's health check, if it has one (its fields checked at load).
    pub fn check(&self) -> Option<crate::metrics::health::Check> {
        use crate::metrics::health::{Check, Probe};
        let health = self.health.as_ref()?.get_ref();
        let to = || std::net::SocketAddr::new(self.address, health.port.or(self.port).unwrap_or(0));
        let probe = match health.check {
            HealthCheckKind::Tcp => Probe::Tcp(to()),
            HealthCheckKind::Http => Probe::Http {
                to: to(),
                path: health.path.clone(),
                status: health.status,
            },
            HealthCheckKind::Command => Probe::Command(health.command.clone()),
        };
        let interval = std::time::Duration::from_millis(health.interval_ms);
        let timeout = health.timeout_ms.map_or_else(
            || interval.min(std::time::Duration::from_millis(500)),
            std::time::Duration::from_millis,
        );
        Some(Check {
            service: self.key(),
            probe,
            interval,
            timeout,
            rise: health.rise,
            fall: health.fall,
        })
    }
}

/// `health` of one `[[service]]`.
fn validate_health(service: &ServedService) -> Result<(), (usize, String)> {
    let Some(spanned) = &service.health else {
        return Ok(());
    };
    let (at, h) = (spanned.span().start, spanned.get_ref());
    let name = format!("[[service]] {} health", service.address);
    let fail = |why: String| Err((at, format!("{name}: {why}")));
    match h.check {
        HealthCheckKind::Tcp | HealthCheckKind::Http if h.port.or(service.port).is_none() => {
            return fail(
                "a tcp or http check needs a port: give the service one, or `port` here".to_owned(),
            );
        }
        HealthCheckKind::Command if h.command.is_empty() => {
            return fail(
                "check = \"command\" needs `command = [\"program\", \"arg\", ...]`".to_owned(),
            );
        }
        HealthCheckKind::Http if !h.path.starts_with('/') => {
            return fail(format!("path = {:?}: an HTTP path starts with /", h.path));
        }
        _ => {}
    }
    if !(10..=3_600_000).contains(&h.interval_ms) {
        return fail(format!(
            "interval_ms = {}: use 10 to 3600000",
            h.interval_ms
        ));
    }
    if let Some(t) = h.timeout_ms
        && !(1..=h.interval_ms).contains(&t)
    {
        return fail(format!(
            "timeout_ms = {t}: use 1 to the interval ({} ms)",
            h.interval_ms
        ));
    }
    for (field, value) in [("rise", h.rise), ("fall", h.fall)] {
        if !(1..=100).contains(&value) {
            return fail(format!("{field} = {value}: use 1 to 100"));
        }
    }
    if !(100..=599).contains(&h.status) {
        return fail(format!(
            "status = {}: an HTTP status is 100 to 599",
            h.status
        ));
    }
    Ok(())
}

/// `[[policy]]`: how the ingress steers one service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub service: IpAddr,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    /// `cpu`, `gpu` or `npu`.
    pub kind: ComputeKind,
    /// 1 (over 1 PFLOPS) to 4 (anything); default 4.
    #[serde(default = "default_grade")]
    pub min_grade: Spanned<u8>,
    pub max_latency_ms: Option<f64>,
    /// Fraction 0..=1.
    pub max_loss: Option<Spanned<f64>>,
    #[serde(default)]
    pub objective: Objective,
    /// Keep each flow on its node (default true).
    #[serde(default = "yes")]
    pub affinity: bool,
    /// Forget a flow idle this long (default: when the table evicts it).
    pub idle_timeout_s: Option<u64>,
    /// Metrics older than this exclude a node (default 10 s).
    pub max_metric_age_ms: Option<u64>,
}

impl PolicyConfig {
    /// The policy selection applies.
    pub fn policy(&self) -> crate::selection::Policy {
        crate::selection::Policy {
            kind: self.kind,
            min_grade: crate::selection::Grade::from_number(*self.min_grade.get_ref())
                .unwrap_or(crate::selection::Grade::G4),
            max_latency: self
                .max_latency_ms
                .map(|ms| std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
            max_loss: self.max_loss.as_ref().map(|l| *l.get_ref()),
            objective: self.objective,
            max_metric_age: std::time::Duration::from_millis(
                self.max_metric_age_ms.unwrap_or(10_000),
            ),
        }
    }

    /// The service this policy steers.
    pub fn key(&self) -> ServiceAddr {
        service_key(self.service, self.protocol, self.port)
    }
}

impl ServedService {
    /// The service this node serves.
    pub fn key(&self) -> ServiceAddr {
        service_key(self.address, self.protocol, self.port)
    }
}

impl RemoteService {
    /// The service the remote serves.
    pub fn key(&self) -> ServiceAddr {
        service_key(self.address, self.protocol, self.port)
    }
}

/// A service's key from its table's `address`, `protocol` and `port` (validation has checked
/// that the last two come together).
fn service_key(address: IpAddr, protocol: Option<Protocol>, port: Option<u16>) -> ServiceAddr {
    ServiceAddr {
        addr: address,
        port: protocol.map(Protocol::number).zip(port),
    }
}

/// The error for a service table that gives only one of `protocol` and `port`.
fn check_transport(
    table: &str,
    address: IpAddr,
    protocol: Option<Protocol>,
    port: Option<u16>,
) -> Result<(), String> {
    if protocol.is_some() == port.is_some() {
        return Ok(());
    }
    Err(format!(
        "{table} {address}: give `protocol` and `port` together (e.g. protocol = \"tcp\", \
         port = 443), or neither (every protocol and port)"
    ))
}

fn xdp_hook() -> Spanned<Hook> {
    Spanned::new(0..0, Hook::Xdp)
}

fn default_grade() -> Spanned<u8> {
    Spanned::new(0..0, 4)
}

fn yes() -> bool {
    true
}

/// `[[remote]]`: a compute node known statically.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteNode {
    pub name: String,
    /// Segment list in travel order; the last is the node's decapsulating SID.
    pub segments: Spanned<Vec<Ipv6Addr>>,
    /// Use H.Encaps.Red.
    #[serde(default)]
    pub reduced: bool,
    /// Drained: no new flows; its flows stay (reload with SIGHUP to apply).
    #[serde(default)]
    pub drained: bool,
    /// The node's SRv6 locator (e.g. `fc00:1::/48`); with `via`, the agent installs a route
    /// to it (with `[bgp]`, locators are learned instead).
    pub locator: Option<Spanned<String>>,
    pub via: Option<Ipv6Addr>,
    /// Path latency and loss as configured; unknown when not given (never 0: a metric
    /// nobody measured is unknown).
    pub latency_ms: Option<f64>,
    pub loss: Option<f64>,
    /// Where its current metrics are published (the file a compute agent writes with
    /// `[metrics] publish_file`); without it the node counts as idle at its nominal capacity.
    pub metrics_file: Option<PathBuf>,
    #[serde(rename = "service", default)]
    pub services: Vec<RemoteService>,
}

/// `[[remote.service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteService {
    pub address: IpAddr,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    pub capacity: CapacityConfig,
}

/// `[selection]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionConfig {
    /// Maglev ring size: a prime, at most 65537.
    pub ring_size: Spanned<u32>,
    /// Share change of any node (0..1) below which the ring is not rewritten.
    pub threshold: f64,
    pub min_dwell_ms: u64,
    /// Share of ring slots that may move per rewrite (0..=1).
    pub max_churn: f64,
    pub interval_ms: u64,
    /// Write every service's latest decision here (JSON): candidates, metrics, ages, scores,
    /// weights, exclusions and the hysteresis state; what `cpnctl explain` will show.
    pub explain_file: Option<PathBuf>,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            ring_size: Spanned::new(0..0, crate::selection::maglev::DEFAULT_RING_SIZE),
            threshold: 0.05,
            min_dwell_ms: 2000,
            max_churn: 0.25,
            interval_ms: 500,
            explain_file: None,
        }
    }
}

/// `[metrics]`: how this node samples itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub interval_ms: u64,
    /// Sample this host's CPU from /proc (off in labs where all nodes share one host).
    pub sample_host: bool,
    /// Write this node's metrics (JSON) here after each sample, for static peers to read.
    pub publish_file: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            interval_ms: 500,
            sample_host: true,
            publish_file: None,
        }
    }
}

impl Config {
    /// The BGP next hop of our routes: `[bgp] next_hop`, else `[srv6] source`.
    pub fn bgp_next_hop(&self) -> Ipv6Addr {
        self.bgp
            .as_ref()
            .and_then(|b| b.next_hop)
            .or(self.srv6.source)
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// Where the maps are pinned.
    /// How to load the data plane.
    pub fn load_options(&self) -> crate::dataplane::LoadOptions {
        crate::dataplane::LoadOptions {
            icmp: self.dataplane.icmp_rate_limit.limit(),
            tc_attach: self.dataplane.tc_attach,
            ..crate::dataplane::LoadOptions::default()
        }
    }

    /// The interfaces `cpn_steer` is attached to in XDP.
    pub fn steering_interfaces(&self) -> Vec<String> {
        self.interfaces_at(Hook::Xdp)
    }

    /// The interfaces `cpn_steer` runs on at `hook`.
    pub fn interfaces_at(&self, hook: Hook) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|i| i.program == Program::Steer && *i.hook.get_ref() == hook)
            .map(|i| i.name.get_ref().clone())
            .collect()
    }

    pub fn pinning(&self) -> Pinning {
        Pinning::Dir(
            self.dataplane
                .pin_dir
                .clone()
                .unwrap_or_else(|| default_pin_dir().to_path_buf()),
        )
    }
}

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    /// 1-based line, when the error has a place in the file.
    line: Option<usize>,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let error = |offset: Option<usize>, message: String| Error {
        path: path.to_owned(),
        line: offset.map(|o| line_of(text, o)),
        message,
    };
    let config: Config = toml::from_str(text)
        .map_err(|e| error(e.span().map(|s| s.start), e.message().trim_end().to_owned()))?;
    if config.node.name.trim().is_empty() {
        return Err(error(None, "[node] name: must not be empty".into()));
    }
    if config.node.name.len() > MAX_NODE_NAME {
        return Err(error(
            None,
            format!(
                "[node] name: at most {MAX_NODE_NAME} bytes (it travels in every BGP UPDATE), \
                 got {}",
                config.node.name.len()
            ),
        ));
    }
    if let Some(locator) = &config.srv6.locator
        && crate::dataplane::kernel::parse_prefix(locator).is_none()
    {
        return Err(error(
            None,
            format!("[srv6] locator = {locator:?}: give an IPv6 prefix, e.g. \"fc00:1::/48\""),
        ));
    }
    for neighbor in config.bgp.iter().flat_map(|b| &b.neighbors) {
        if let Some(hops) = &neighbor.ttl_security_hops
            && !(1..=254).contains(hops.get_ref())
        {
            return Err(error(
                Some(hops.span().start),
                format!(
                    "[[bgp.neighbor]] ttl_security_hops = {}: give the neighbor's distance in \
                     routers, 1 (on the link) to 254",
                    hops.get_ref()
                ),
            ));
        }
        if let Some(password) = &neighbor.password
            && !(1..=crate::bgp::md5::MAX_KEY_LEN).contains(&password.get_ref().len())
        {
            return Err(error(
                Some(password.span().start),
                format!(
                    "[[bgp.neighbor]] {}: password: a TCP MD5 key has 1 to {} bytes",
                    neighbor.address.get_ref(),
                    crate::bgp::md5::MAX_KEY_LEN
                ),
            ));
        }
    }
    let reflector_only = config.node.roles == [Role::Reflector];
    if config.interfaces.is_empty() && !reflector_only {
        return Err(error(
            None,
            "no [[interface]] given: add one per interface with `name` and `program` \
             (\"steer\" or \"endpoint\"); only a node whose roles are [\"reflector\"] runs \
             without a data plane"
                .into(),
        ));
    }
    let has_clients = config
        .bgp
        .as_ref()
        .is_some_and(|b| b.neighbors.iter().any(|n| n.route_reflector_client));
    if config.node.roles.contains(&Role::Reflector) && !has_clients {
        return Err(error(
            None,
            "[node] roles: a reflector needs at least one [[bgp.neighbor]] with \
             route_reflector_client = true"
                .into(),
        ));
    }
    validate_interfaces(&config, text, &error)?;
    validate(&config, &error)?;
    Ok(config)
}

impl SidConfig {
    /// The checked behaviour (interfaces by name), or what is wrong with it.
    pub fn spec(&self) -> Result<SidBehavior<String>, String> {
        let name = self.behavior.get_ref().as_str();
        let Some(kind) = Behavior::from_name(name) else {
            let known: Vec<&str> = Behavior::ALL.iter().map(|b| b.name()).collect();
            return Err(format!(
                "unknown behavior {name:?}: use one of {}",
                known.join(", ")
            ));
        };
        let table = self.table.unwrap_or(0);
        let nexthop = self.nexthop.as_ref().map(|n| *n.get_ref());
        let interface = || {
            self.interface
                .clone()
                .ok_or_else(|| format!("{name} needs `interface` (towards its next hop)"))
        };
        if !kind.cross_connects() && (nexthop.is_some() || self.interface.is_some()) {
            return Err(format!(
                "{name} takes no `nexthop` or `interface`; only End.X and End.DX* do"
            ));
        }
        if !kind.looks_up() && self.table.is_some() {
            return Err(format!("{name} takes no `table`; only End.DT4/6/46 do"));
        }
        Ok(match (kind, nexthop) {
            (Behavior::End, _) => SidBehavior::End,
            (Behavior::EndDt6, _) => SidBehavior::EndDt6 { table },
            (Behavior::EndDt4, _) => SidBehavior::EndDt4 { table },
            (Behavior::EndDt46, _) => SidBehavior::EndDt46 { table },
            (Behavior::EndX, Some(IpAddr::V6(nexthop))) => SidBehavior::EndX {
                nexthop,
                oif: interface()?,
            },
            (Behavior::EndDx6, Some(IpAddr::V6(nexthop))) => SidBehavior::EndDx6 {
                nexthop,
                oif: interface()?,
            },
            (Behavior::EndDx4, Some(IpAddr::V4(nexthop))) => SidBehavior::EndDx4 {
                nexthop,
                oif: interface()?,
            },
            (Behavior::EndX | Behavior::EndDx6, _) => {
                return Err(format!("{name} needs an IPv6 `nexthop`"));
            }
            (Behavior::EndDx4, _) => return Err("End.DX4 needs an IPv4 `nexthop`".into()),
        })
    }
}

fn validate(config: &Config, error: &impl Fn(Option<usize>, String) -> Error) -> Result<(), Error> {
    validate_compute(config, error)?;
    validate_import(config, error)?;
    validate_icmp_rate_limit(config, error)?;
    validate_ingress(config, error)?;
    validate_selection(config, error)?;
    validate_stamp(config, error)?;
    validate_bgp(config, error)
}

/// `[stamp]`.
fn validate_stamp(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    for (name, value, min) in [
        ("interval_ms", &config.stamp.interval_ms, 10),
        ("timeout_ms", &config.stamp.timeout_ms, 1),
    ] {
        if !(min..=60_000).contains(value.get_ref()) {
            return Err(error(
                Some(value.span().start),
                format!(
                    "[stamp] {name} = {}: use {min} to 60000 ms",
                    value.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// `[[interface]]`: names, and one program per interface and hook.
fn validate_interfaces(
    config: &Config,
    text: &str,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    let mut seen = HashMap::new();
    for interface in &config.interfaces {
        let name = interface.name.get_ref();
        let at = Some(interface.name.span().start);
        if name.is_empty() || name.len() > MAX_INTERFACE_NAME || name.contains(['/', ' ']) {
            return Err(error(
                at,
                format!(
                    "[[interface]] name = {name:?}: not a Linux interface name (1 to \
                     {MAX_INTERFACE_NAME} bytes, no '/' or spaces)"
                ),
            ));
        }
        let hook = *interface.hook.get_ref();
        if hook != Hook::Xdp && interface.program != Program::Steer {
            return Err(error(
                Some(interface.hook.span().start),
                format!(
                    "[[interface]] name = {name:?}: hook = \"{hook}\" is for program = \"steer\" \
                     only; {} runs in XDP (remove `hook`)",
                    interface.program
                ),
            ));
        }
        // One XDP program per interface; each TC hook once.
        let line = line_of(text, interface.name.span().start);
        if let Some(first) = seen.insert((name.clone(), hook), line) {
            let what = if hook == Hook::Xdp {
                "an interface runs one XDP program".to_owned()
            } else {
                format!("an interface runs one program at {hook}")
            };
            return Err(error(
                at,
                format!(
                    "[[interface]] name = {name:?}: already configured at line {first}; {what}"
                ),
            ));
        }
    }
    Ok(())
}

/// `[bgp]`.
fn validate_bgp(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    let Some(bgp) = &config.bgp else {
        return Ok(());
    };
    let mut addresses = std::collections::HashSet::new();
    for neighbor in &bgp.neighbors {
        let address = neighbor.address.get_ref();
        if !addresses.insert(address.to_canonical()) {
            return Err(error(
                Some(neighbor.address.span().start),
                format!(
                    "[[bgp.neighbor]] address = \"{address}\" is configured twice: one \
                     [[bgp.neighbor]] per address"
                ),
            ));
        }
    }
    for neighbor in &bgp.neighbors {
        let Some(bfd) = &neighbor.bfd else { continue };
        let at = Some(bfd.span().start);
        let b = bfd.get_ref();
        if !(MIN_BFD_INTERVAL_MS..=MAX_BFD_INTERVAL_MS).contains(&b.interval_ms) {
            return Err(error(
                at,
                format!(
                    "[[bgp.neighbor]] {}: bfd interval_ms = {} is out of range; use \
                     {MIN_BFD_INTERVAL_MS} to {MAX_BFD_INTERVAL_MS} ms",
                    neighbor.address.get_ref(),
                    b.interval_ms
                ),
            ));
        }
        if !(1..=255).contains(&b.multiplier) {
            return Err(error(
                at,
                format!(
                    "[[bgp.neighbor]] {}: bfd multiplier = {} does not fit Detect Mult; use 1 to \
                     255 (3 is usual)",
                    neighbor.address.get_ref(),
                    b.multiplier
                ),
            ));
        }
    }
    for (name, gone) in [
        ("probe_port", &bgp.probe_port),
        ("probe_interval_ms", &bgp.probe_interval_ms),
        ("probe_multiplier", &bgp.probe_multiplier),
    ] {
        if let Some(gone) = gone {
            return Err(error(
                Some(gone.span().start),
                format!(
                    "[bgp] {name}: the link probes are gone. A neighbor's liveness is BFD's now \
                     (`bfd = {{ interval_ms = 100, multiplier = 3 }}` in its [[bgp.neighbor]]), \
                     a candidate's path delay and loss STAMP's ([stamp] interval_ms); remove \
                     the line"
                ),
            ));
        }
    }
    let restart = &bgp.graceful_restart_s;
    let max = crate::bgp::graceful::MAX_RESTART_TIME.as_secs();
    if *restart.get_ref() > max {
        return Err(error(
            Some(restart.span().start),
            format!(
                "[bgp] graceful_restart_s = {}: the Graceful Restart capability carries at most \
                 {max} s (RFC 4724 §3); 0 turns Graceful Restart off",
                restart.get_ref()
            ),
        ));
    }
    Ok(())
}

/// `[srv6] domain`: 1 to `SR_DOMAIN_PREFIXES` IPv6 prefixes.
fn validate_sr_domain(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    if let Some(domain) = &config.srv6.domain {
        let at = Some(domain.span().start);
        if domain.get_ref().is_empty() {
            return Err(error(
                at,
                "[srv6] domain = []: an empty SR domain admits no source to this node's SIDs; \
                 list the domain's prefixes (e.g. [\"2001:db8::/32\"]), or leave `domain` out to \
                 admit every source"
                    .into(),
            ));
        }
        if domain.get_ref().len() > crate::dataplane::SR_DOMAIN_PREFIXES as usize {
            return Err(error(
                at,
                format!(
                    "[srv6] domain: at most {} prefixes, got {}",
                    crate::dataplane::SR_DOMAIN_PREFIXES,
                    domain.get_ref().len()
                ),
            ));
        }
        for prefix in domain.get_ref() {
            if prefix.get_ref().parse::<ipnet::Ipv6Net>().is_err() {
                let prefix_at = Some(prefix.span().start);
                let prefix = prefix.get_ref();
                return Err(error(
                    prefix_at,
                    format!(
                        "[srv6] domain: {prefix:?} is not an IPv6 prefix; write it as \
                         \"2001:db8::/32\""
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `[[srv6.sid]]` and `[[service]]`.
fn validate_compute(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    validate_sr_domain(config, error)?;
    let mut sids = std::collections::HashSet::new();
    for sid in &config.srv6.sids {
        if !sids.insert(sid.sid) {
            return Err(error(
                Some(sid.behavior.span().start),
                format!(
                    "[[srv6.sid]] sid = \"{}\" is configured twice: one behavior per SID",
                    sid.sid
                ),
            ));
        }
    }
    let mut served = std::collections::HashSet::new();
    for service in &config.services {
        if !served.insert(service.key()) {
            return Err(error(
                Some(service.sid.span().start),
                format!(
                    "[[service]] {} is configured twice: one [[service]] per address, protocol \
                     and port",
                    service.key()
                ),
            ));
        }
    }
    for sid in &config.srv6.sids {
        sid.spec().map_err(|m| {
            error(
                Some(sid.behavior.span().start),
                format!("[[srv6.sid]] {}: {m}", sid.sid),
            )
        })?;
    }
    for service in &config.services {
        validate_health(service).map_err(|(at, why)| error(Some(at), why))?;
        let Some(sid) = config
            .srv6
            .sids
            .iter()
            .find(|s| s.sid == *service.sid.get_ref())
        else {
            return Err(error(
                Some(service.sid.span().start),
                format!(
                    "[[service]] sid = \"{}\": not one of this node's [[srv6.sid]]; add it there \
                     (e.g. behavior = \"End.DT6\") or use one of them",
                    service.sid.get_ref()
                ),
            ));
        };
        if let Ok(spec) = sid.spec()
            && !spec.kind().decapsulates()
        {
            return Err(error(
                Some(service.sid.span().start),
                format!(
                    "[[service]] sid = \"{}\": its behavior {} does not decapsulate, so the \
                     service would never see the client's packet; use an End.DT6, End.DT4, \
                     End.DT46, End.DX6 or End.DX4 SID",
                    service.sid.get_ref(),
                    spec.kind().name()
                ),
            ));
        }
        check_transport(
            "[[service]]",
            service.address,
            service.protocol,
            service.port,
        )
        .map_err(|m| error(Some(service.sid.span().start), m))?;
        let c = service.capacity;
        if [c.cpu, c.gpu, c.npu]
            .iter()
            .any(|v| !v.is_finite() || *v < 0.0)
            || c.cpu + c.gpu + c.npu <= 0.0
        {
            return Err(error(
                Some(service.sid.span().start),
                format!(
                    "[[service]] {}: capacity needs at least one of cpu, gpu, npu > 0 (operations per second)",
                    service.address
                ),
            ));
        }
    }
    Ok(())
}

/// `[[policy]]` and `[[remote]]`.
fn validate_ingress(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    let mut keys = std::collections::HashSet::new();
    for policy in &config.policies {
        let grade = *policy.min_grade.get_ref();
        if !(1..=4).contains(&grade) {
            return Err(error(
                Some(policy.min_grade.span().start),
                format!(
                    "[[policy]] min_grade = {grade}: use 1 (over 1 PFLOPS), 2 (10 TFLOPS-1 PFLOPS), 3 (500 GFLOPS-10 TFLOPS) or 4 (any)"
                ),
            ));
        }
        if let Some(loss) = &policy.max_loss
            && !(0.0..=1.0).contains(loss.get_ref())
        {
            return Err(error(
                Some(loss.span().start),
                format!(
                    "[[policy]] max_loss = {}: a fraction between 0 and 1",
                    loss.get_ref()
                ),
            ));
        }
        check_transport(
            "[[policy]] service =",
            policy.service,
            policy.protocol,
            policy.port,
        )
        .map_err(|m| error(None, m))?;
        if !keys.insert(policy.key()) {
            return Err(error(
                None,
                format!(
                    "[[policy]] service = \"{}\" (protocol {:?}, port {:?}) is configured twice",
                    policy.service, policy.protocol, policy.port
                ),
            ));
        }
    }
    if config.policies.len() > cpn_common::maps::MAX_SERVICES as usize {
        return Err(error(
            None,
            format!(
                "{} [[policy]] tables: at most {} services",
                config.policies.len(),
                cpn_common::maps::MAX_SERVICES
            ),
        ));
    }
    if !config.policies.is_empty() && config.srv6.source.is_none() {
        return Err(error(None, "[srv6] source: an ingress (with [[policy]]) needs the outer source address of its encapsulation".into()));
    }
    let mut names = std::collections::HashSet::new();
    for remote in &config.remotes {
        let count = remote.segments.get_ref().len();
        if !(1..=cpn_common::maps::MAX_SIDS).contains(&count) {
            return Err(error(
                Some(remote.segments.span().start),
                format!(
                    "[[remote]] {}: segments: 1 to {} SIDs, the last being the node's decapsulating SID",
                    remote.name,
                    cpn_common::maps::MAX_SIDS
                ),
            ));
        }
        if let Some(locator) = &remote.locator
            && (crate::dataplane::kernel::parse_prefix(locator.get_ref()).is_none()
                || remote.via.is_none())
        {
            return Err(error(
                Some(locator.span().start),
                format!(
                    "[[remote]] {}: locator = {:?}: give an IPv6 prefix (e.g. \"fc00:1::/48\") and `via`, \
                     the next hop towards it",
                    remote.name,
                    locator.get_ref()
                ),
            ));
        }
        if !names.insert(remote.name.clone()) {
            return Err(error(
                Some(remote.segments.span().start),
                format!("[[remote]] name = {:?} is used twice", remote.name),
            ));
        }
        for service in &remote.services {
            check_transport(
                &format!("[[remote]] {}: [[remote.service]]", remote.name),
                service.address,
                service.protocol,
                service.port,
            )
            .map_err(|m| error(Some(remote.segments.span().start), m))?;
        }
    }
    Ok(())
}

/// `[bgp] import_locators`: IPv6 prefixes; `metric_attribute_type`: no code IANA assigned to
/// another attribute (the codec would read our attribute as that one).
fn validate_import(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    if let Some(bgp) = &config.bgp {
        let code = *bgp.metric_attribute_type.get_ref();
        if let Ok(known) = netgauze_bgp_pkt::iana::PathAttributeType::try_from(code)
            && known != netgauze_bgp_pkt::iana::PathAttributeType::Development
        {
            return Err(error(
                Some(bgp.metric_attribute_type.span().start),
                format!(
                    "[bgp] metric_attribute_type = {code}: that is the code of {known} (IANA); \
                     use an unassigned one, e.g. 255 (RFC 2042, for development)"
                ),
            ));
        }
    }
    for prefix in config.bgp.iter().flat_map(|b| &b.import_locators) {
        if prefix.get_ref().parse::<ipnet::Ipv6Net>().is_err() {
            return Err(error(
                Some(prefix.span().start),
                format!(
                    "[bgp] import_locators: {:?} is not an IPv6 prefix (e.g. \"5f00::/16\", the \
                     SRv6 SID block of RFC 9602)",
                    prefix.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// `[dataplane.icmp_rate_limit]`: bursts within what the data plane's buckets take, an interval
/// of at most an hour.
fn validate_icmp_rate_limit(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    let limit = &config.dataplane.icmp_rate_limit;
    let max_burst = cpn_common::maps::TokenBucket::MAX_BURST;
    for (name, burst, on) in [
        (
            "burst",
            &limit.burst,
            *limit.errors_per_second.get_ref() != 0,
        ),
        (
            "per_destination_burst",
            &limit.per_destination_burst,
            *limit.per_destination_interval_ms.get_ref() != 0,
        ),
    ] {
        let value = u64::from(*burst.get_ref());
        if on && !(1..=max_burst).contains(&value) {
            return Err(error(
                Some(burst.span().start),
                format!(
                    "[dataplane.icmp_rate_limit] {name} = {value}: give 1 to {max_burst} \
                     (errors that may go at once)"
                ),
            ));
        }
    }
    let interval = &limit.per_destination_interval_ms;
    let max_ms = cpn_common::maps::TokenBucket::MAX_INTERVAL_NS / 1_000_000;
    if *interval.get_ref() > max_ms {
        return Err(error(
            Some(interval.span().start),
            format!(
                "[dataplane.icmp_rate_limit] per_destination_interval_ms = {}: at most {max_ms} \
                 (one hour); 0 turns the per-destination limit off",
                interval.get_ref()
            ),
        ));
    }
    Ok(())
}

fn validate_selection(
    config: &Config,
    error: &impl Fn(Option<usize>, String) -> Error,
) -> Result<(), Error> {
    use crate::selection::maglev::is_prime;
    let ring = *config.selection.ring_size.get_ref();
    if !is_prime(ring) || ring > cpn_common::maps::RING_CAPACITY {
        return Err(error(
            Some(config.selection.ring_size.span().start),
            format!(
                "[selection] ring_size = {ring}: must be a prime no larger than {} (e.g. 65537, 4093, 251)",
                cpn_common::maps::RING_CAPACITY
            ),
        ));
    }
    let s = &config.selection;
    if !(0.0..1.0).contains(&s.threshold) || s.max_churn <= 0.0 || s.max_churn > 1.0 {
        return Err(error(
            None,
            "[selection] threshold must be in 0..1 and max_churn in (0, 1]".into(),
        ));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(Path::new("agent.toml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[node]
name = "ingress1"

[dataplane]
pin_dir = "/sys/fs/bpf/cpn-lab"

[[interface]]
name = "eth0"
program = "steer"

[[interface]]
name = "eth1"
program = "endpoint"
mode = "generic"
"#;

    #[test]
    fn parses_a_full_config() {
        let config = parse_str(GOOD).unwrap();
        assert_eq!(config.node.name, "ingress1");
        assert_eq!(config.pinning(), Pinning::Dir("/sys/fs/bpf/cpn-lab".into()));
        assert_eq!(config.interfaces.len(), 2);
        assert_eq!(config.interfaces[0].program, Program::Steer);
        assert_eq!(config.interfaces[0].mode, AttachMode::Native);
        assert_eq!(config.interfaces[1].mode, AttachMode::Generic);
    }

    #[test]
    fn default_pin_dir_is_sys_fs_bpf_cpn() {
        let config =
            parse_str("[node]\nname = \"a\"\n[[interface]]\nname = \"x\"\nprogram = \"steer\"\n")
                .unwrap();
        assert_eq!(config.pinning(), Pinning::Dir("/sys/fs/bpf/cpn".into()));
    }

    #[test]
    fn unknown_program_names_line_and_choices() {
        let err = parse_str(&GOOD.replace("\"endpoint\"", "\"end\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:14: "), "{err}");
        assert!(err.contains("steer") && err.contains("endpoint"), "{err}");
    }

    #[test]
    fn the_icmp_rate_limit_defaults_to_linuxs() {
        let config = parse_str(GOOD).unwrap();
        assert_eq!(
            config.load_options().icmp,
            crate::dataplane::IcmpRateLimit::LINUX
        );
        let tuned = GOOD.replace(
            "pin_dir = \"/sys/fs/bpf/cpn-lab\"\n",
            "pin_dir = \"/sys/fs/bpf/cpn-lab\"\n\n[dataplane.icmp_rate_limit]\n\
             errors_per_second = 0\nper_destination_interval_ms = 250\n",
        );
        let limit = parse_str(&tuned).unwrap().load_options().icmp;
        assert_eq!(limit.interval, std::time::Duration::ZERO);
        assert_eq!(
            limit.per_destination_interval,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(limit.per_destination_burst, 6);
    }

    #[test]
    fn a_zero_icmp_burst_is_rejected_with_its_line() {
        let bad = GOOD.replace(
            "pin_dir = \"/sys/fs/bpf/cpn-lab\"\n",
            "pin_dir = \"/sys/fs/bpf/cpn-lab\"\n\n[dataplane.icmp_rate_limit]\nburst = 0\n",
        );
        let err = parse_str(&bad).unwrap_err();
        assert!(
            err.starts_with("agent.toml:9: [dataplane.icmp_rate_limit] burst = 0"),
            "{err}"
        );
    }

    #[test]
    fn the_metric_attribute_may_not_take_an_assigned_code() {
        let with_code = |code: u8| {
            format!(
                "{GOOD}\n[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\nmetric_attribute_type = {code}\n"
            )
        };
        assert!(parse_str(&with_code(255)).is_ok());
        assert!(parse_str(&with_code(200)).is_ok());
        let err = parse_str(&with_code(26)).unwrap_err();
        assert!(
            err.contains("metric_attribute_type = 26") && err.contains("255"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let err = parse_str(&GOOD.replace("mode = \"generic\"", "mdoe = \"generic\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:15: "), "{err}");
        assert!(err.contains("mdoe"), "{err}");
    }

    #[test]
    fn duplicate_interface_names_both_lines() {
        let err = parse_str(&GOOD.replace("\"eth1\"", "\"eth0\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:13: "), "{err}");
        assert!(err.contains("already configured at line 9"), "{err}");
    }

    #[test]
    fn overlong_interface_name_is_rejected() {
        let err = parse_str(&GOOD.replace("\"eth1\"", "\"a-very-long-interface\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:13: "), "{err}");
    }

    #[test]
    fn documented_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        for role in ["ingress", "compute", "transit", "reflector"] {
            let path = dir.join(format!("{role}.toml"));
            let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.node.roles.len(), 1, "{role}");
        }
    }

    #[test]
    fn only_a_pure_reflector_runs_without_interfaces() {
        let bgp = "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n\n[[bgp.neighbor]]\n\
                   address = \"2001:db8::2\"\nasn = 65000\n";
        let reflector = format!("[node]\nname = \"rr\"\nroles = [\"reflector\"]\n{bgp}");
        let err = parse_str(&reflector).unwrap_err();
        assert!(err.contains("route_reflector_client = true"), "{err}");
        parse_str(&format!("{reflector}route_reflector_client = true\n")).unwrap();
        let transit = reflector.replace("reflector", "transit");
        let err = parse_str(&format!("{transit}route_reflector_client = true\n")).unwrap_err();
        assert!(err.contains("no [[interface]] given"), "{err}");
    }

    #[test]
    fn md5_passwords_have_the_kernel_length() {
        let long = "k".repeat(81);
        let err = with(&format!(
            "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n\n[[bgp.neighbor]]\n\
             address = \"2001:db8::2\"\nasn = 65001\npassword = \"{long}\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("1 to 80 bytes"), "{err}");
        assert!(err.starts_with("agent.toml:24: "), "names the line: {err}");
    }

    fn with(extra: &str) -> Result<Config, String> {
        parse_str(&format!("{GOOD}\n{extra}"))
    }

    #[test]
    fn sid_behaviors_are_checked() {
        let err =
            with("[srv6]\n[[srv6.sid]]\nsid = \"fc00::1\"\nbehavior = \"End.DT5\"\n").unwrap_err();
        assert!(
            err.contains("unknown behavior") && err.contains("End.DT46"),
            "{err}"
        );
        assert!(err.starts_with("agent.toml:20: "), "{err}");
        let err =
            with("[srv6]\n[[srv6.sid]]\nsid = \"fc00::1\"\nbehavior = \"End.X\"\n").unwrap_err();
        assert!(err.contains("IPv6 `nexthop`"), "{err}");
        let err = with("[srv6]\n[[srv6.sid]]\nsid = \"fc00::1\"\nbehavior = \"End.DX4\"\nnexthop = \"10.0.0.1\"\n").unwrap_err();
        assert!(err.contains("needs `interface`"), "{err}");
        let err = with("[srv6]\n[[srv6.sid]]\nsid = \"fc00::1\"\nbehavior = \"End\"\ntable = 5\n")
            .unwrap_err();
        assert!(err.contains("takes no `table`"), "{err}");
    }

    #[test]
    fn a_service_names_one_of_our_sids() {
        let err = with("[[service]]\naddress = \"2001:db8::1\"\nsid = \"fc00::9\"\ncapacity = { cpu = 1e12 }\n").unwrap_err();
        assert!(err.contains("not one of this node's [[srv6.sid]]"), "{err}");
    }

    #[test]
    fn a_service_sid_decapsulates() {
        let service = "[[service]]\naddress = \"2001:db8::1\"\nsid = \"fc00::9\"\n\
                       capacity = { cpu = 1e12 }\n";
        let sid = |behavior| {
            format!("[srv6]\n[[srv6.sid]]\nsid = \"fc00::9\"\nbehavior = \"{behavior}\"\n")
        };
        let err = with(&format!("{}{service}", sid("End"))).unwrap_err();
        assert!(
            err.contains("its behavior End does not decapsulate"),
            "{err}"
        );
        let config = with(&format!("{}{service}", sid("End.DT46"))).unwrap();
        let spec = config.srv6.sids[0].spec().unwrap();
        assert_eq!(spec.kind(), Behavior::EndDt46);
        assert_eq!(spec.kind().code_point(), 20, "RFC 8986 §10.2");
    }

    /// A service is one key everywhere: address, and protocol with port or neither; a table
    /// that gives only one of them fails at load, whichever table it is.
    #[test]
    fn a_service_gives_protocol_and_port_together() {
        let sid = "[srv6]\nsource = \"2001:db8::1\"\n[[srv6.sid]]\nsid = \"fc00::9\"\nbehavior = \"End.DT6\"\n";
        let service = |extra: &str| {
            format!(
                "{sid}[[service]]\naddress = \"2001:db8::5\"\nsid = \"fc00::9\"\n\
                 capacity = {{ cpu = 1e12 }}\n{extra}"
            )
        };
        let err = with(&service("protocol = \"tcp\"\n")).unwrap_err();
        assert!(
            err.contains("[[service]] 2001:db8::5: give `protocol` and `port` together"),
            "{err}"
        );
        let config = with(&service("protocol = \"tcp\"\nport = 443\n")).unwrap();
        let key = config.services[0].key();
        assert_eq!((key.protocol(), key.port_number()), (Some(6), Some(443)));

        let remote = |extra: &str| {
            format!(
                "{sid}[[remote]]\nname = \"edge1\"\nsegments = [\"fc00:1::d6\"]\n\
                 [[remote.service]]\naddress = \"2001:db8::5\"\ncapacity = {{ cpu = 1e12 }}\n{extra}"
            )
        };
        let err = with(&remote("port = 443\n")).unwrap_err();
        assert!(
            err.contains(
                "[[remote]] edge1: [[remote.service]] 2001:db8::5: give `protocol` and `port`"
            ),
            "{err}"
        );
        let config = with(&remote("")).unwrap();
        assert_eq!(
            config.remotes[0].services[0].key().port,
            None,
            "every protocol and port"
        );
    }

    #[test]
    fn policies_are_checked() {
        let base = "[srv6]\nsource = \"2001:db8::1\"\n[[policy]]\nservice = \"2001:db8::5\"\nkind = \"gpu\"\n";
        assert!(with(base).is_ok());
        let err = with(&format!("{base}min_grade = 7\n")).unwrap_err();
        assert!(
            err.contains("min_grade = 7") && err.contains("500 GFLOPS"),
            "{err}"
        );
        let err = with(&format!("{base}max_loss = 3.0\n")).unwrap_err();
        assert!(err.contains("between 0 and 1"), "{err}");
        let err = with(&format!("{base}kind = \"tpu\"\n")).unwrap_err();
        assert!(
            err.contains("duplicate key") || err.contains("cpu"),
            "{err}"
        );
        let err = with("[[policy]]\nservice = \"2001:db8::5\"\nkind = \"gpu\"\n").unwrap_err();
        assert!(err.contains("[srv6] source"), "{err}");
    }

    #[test]
    fn ring_size_must_be_prime() {
        let err = with("[selection]\nring_size = 65536\n").unwrap_err();
        assert!(
            err.contains("must be a prime") && err.starts_with("agent.toml:18: "),
            "{err}"
        );
    }

    #[test]
    fn remote_segments_are_bounded() {
        let err = with("[[remote]]\nname = \"a\"\nsegments = []\n").unwrap_err();
        assert!(err.contains("1 to 6 SIDs"), "{err}");
    }

    /// `steer` runs at XDP and at both TC hooks of one interface, each once; `endpoint` only
    /// in XDP.
    #[test]
    fn hooks_are_checked() {
        let node = "[node]\nname = \"host\"\n";
        let interface = |program: &str, hook: &str| {
            format!("[[interface]]\nname = \"eth0\"\nprogram = \"{program}\"\n{hook}")
        };
        let config = parse_str(&format!(
            "{node}{}{}{}",
            interface("steer", ""),
            interface("steer", "hook = \"tc-egress\"\n"),
            interface("steer", "hook = \"tc-ingress\"\n")
        ))
        .unwrap();
        let hooks: Vec<Hook> = config
            .interfaces
            .iter()
            .map(|i| *i.hook.get_ref())
            .collect();
        assert_eq!(hooks, [Hook::Xdp, Hook::TcEgress, Hook::TcIngress]);
        assert_eq!(config.steering_interfaces(), ["eth0"], "XDP's alone");
        let err = parse_str(&format!(
            "{node}{}{}",
            interface("steer", "hook = \"tc-egress\"\n"),
            interface("steer", "hook = \"tc-egress\"\n")
        ))
        .unwrap_err();
        assert!(err.contains("one program at tc-egress"), "{err}");
        let err = parse_str(&format!(
            "{node}{}",
            interface("endpoint", "hook = \"tc-ingress\"\n")
        ))
        .unwrap_err();
        assert!(err.contains("is for program = \"steer\" only"), "{err}");
        assert!(err.starts_with("agent.toml:6: "), "names the line: {err}");
        let err =
            parse_str(&format!("{node}{}", interface("steer", "hook = \"tc\"\n"))).unwrap_err();
        assert!(err.contains("tc-ingress"), "lists the hooks: {err}");
    }

    #[test]
    fn no_interfaces_is_an_error() {
        let err = parse_str("[node]\nname = \"a\"\n").unwrap_err();
        assert!(err.contains("no [[interface]]"), "{err}");
    }
    #[test]
    fn the_graceful_restart_time_fits_its_12_bits() {
        let bgp = "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n";
        let config = with(bgp).unwrap();
        let bgp_config = config.bgp.as_ref().unwrap();
        assert_eq!(*bgp_config.graceful_restart_s.get_ref(), 120, "default");
        assert_eq!(bgp_config.selection_deferral_s, 30, "default");
        assert!(
            with(&format!("{bgp}graceful_restart_s = 0\n")).is_ok(),
            "off"
        );
        let err = with(&format!("{bgp}graceful_restart_s = 4096\n")).unwrap_err();
        assert!(
            err.contains("at most 4095 s") && err.starts_with("agent.toml:20: "),
            "{err}"
        );
    }

    #[test]
    fn health_checks_and_stamp_are_checked_at_load() {
        let service = "[srv6]\n[[srv6.sid]]\nsid = \"fc00:1::d6\"\nbehavior = \"End.DT6\"\n\n\
                       [[service]]\naddress = \"2001:db8:cafe::1\"\nsid = \"fc00:1::d6\"\n\
                       capacity = { cpu = 1e12 }\n";
        let config = with(&format!(
            "{service}health = {{ check = \"tcp\", port = 80 }}\n"
        ))
        .unwrap();
        let check = config.services[0].check().unwrap();
        assert_eq!(
            (check.interval, check.timeout, check.rise, check.fall),
            (
                std::time::Duration::from_secs(1),
                std::time::Duration::from_millis(500),
                2,
                3
            ),
            "defaults"
        );
        assert_eq!(
            check.probe,
            crate::metrics::health::Probe::Tcp("[2001:db8:cafe::1]:80".parse().unwrap()),
            "to the service's own address"
        );
        let err = with(&format!("{service}health = {{ check = \"tcp\" }}\n")).unwrap_err();
        assert!(
            err.contains("needs a port: give the service one, or `port` here"),
            "{err}"
        );
        assert!(err.starts_with("agent.toml:26: "), "names the line: {err}");
        let err = with(&format!("{service}health = {{ check = \"command\" }}\n")).unwrap_err();
        assert!(err.contains("needs `command = [\"program\""), "{err}");
        let err = with(&format!(
            "{service}health = {{ check = \"http\", port = 80, interval_ms = 100, timeout_ms = 200 }}\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("timeout_ms = 200: use 1 to the interval (100 ms)"),
            "{err}"
        );
        let err = with(&format!("{service}health = {{ check = \"ping\" }}\n")).unwrap_err();
        assert!(err.contains("unknown variant `ping`"), "{err}");
        let err = with("[stamp]\ninterval_ms = 5\n").unwrap_err();
        assert!(
            err.contains("[stamp] interval_ms = 5: use 10 to 60000 ms"),
            "{err}"
        );
    }

    #[test]
    fn the_same_neighbor_sid_or_service_twice_is_refused_with_its_line() {
        let bgp = "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n\n\
                   [[bgp.neighbor]]\naddress = \"2001:db8::2\"\nasn = 65001\n\n\
                   [[bgp.neighbor]]\naddress = \"2001:db8::2\"\nasn = 65002\n";
        let err = with(bgp).unwrap_err();
        assert!(
            err.contains("address = \"2001:db8::2\" is configured twice")
                && err.starts_with("agent.toml:26: "),
            "{err}"
        );
        let sid = "[[srv6.sid]]\nsid = \"fc00:1::d6\"\nbehavior = \"End.DT6\"\n";
        let err = with(&format!("[srv6]\n{sid}\n{sid}")).unwrap_err();
        assert!(
            err.contains("sid = \"fc00:1::d6\" is configured twice")
                && err.starts_with("agent.toml:24: "),
            "{err}"
        );
        let service = "[[service]]\naddress = \"2001:db8:cafe::1\"\nsid = \"fc00:1::d6\"\n\
                       capacity = { cpu = 1e12 }\n";
        let err = with(&format!("[srv6]\n{sid}\n{service}\n{service}")).unwrap_err();
        assert!(
            err.contains("[[service]] 2001:db8:cafe::1 is configured twice"),
            "{err}"
        );
        assert!(err.starts_with("agent.toml:29: "), "{err}");
    }

    #[test]
    fn ttl_security_hops_are_checked_at_load() {
        let neighbor = |hops: &str| {
            with(&format!(
                "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n[[bgp.neighbor]]\n\
                 address = \"2001:db8::2\"\nasn = 65001\nttl_security_hops = {hops}\n"
            ))
        };
        let err = neighbor("0").unwrap_err();
        assert!(
            err.contains("ttl_security_hops = 0: give the neighbor's distance")
                && err.starts_with("agent.toml:23: "),
            "{err}"
        );
        // Beyond a byte: the TOML reader names the line.
        let err = neighbor("100000").unwrap_err();
        assert!(err.starts_with("agent.toml:23: "), "{err}");
        let config = neighbor("1").unwrap();
        let hops = config.bgp.unwrap().neighbors[0].ttl_security_hops.clone();
        assert_eq!(hops.map(|h| *h.get_ref()), Some(1));
    }

    #[test]
    fn the_sr_domain_is_checked_at_load() {
        let err = with("[srv6]\ndomain = []\n").unwrap_err();
        assert!(
            err.contains("an empty SR domain admits no source")
                && err.starts_with("agent.toml:18: "),
            "{err}"
        );
        let err = with("[srv6]\ndomain = [\"2001:db8::/32\", \"10.0.0.0/8\"]\n").unwrap_err();
        assert!(
            err.contains("\"10.0.0.0/8\" is not an IPv6 prefix")
                && err.starts_with("agent.toml:18: "),
            "{err}"
        );
        let config = with("[srv6]\ndomain = [\"2001:db8:1::5/48\", \"fc00::/16\"]\n").unwrap();
        let prefixes: Vec<String> = config
            .srv6
            .domain_prefixes()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(prefixes, ["2001:db8:1::/48", "fc00::/16"]);
        assert_eq!(with("").unwrap().srv6.domain_prefixes(), None);
    }

    #[test]
    fn the_link_probes_settings_are_gone_and_say_what_replaced_them() {
        let err = with("[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\nprobe_interval_ms = 30\n")
            .unwrap_err();
        assert!(
            err.contains("[bgp] probe_interval_ms: the link probes are gone")
                && err.contains("bfd = { interval_ms = 100, multiplier = 3 }"),
            "{err}"
        );
        assert!(err.starts_with("agent.toml:20: "), "names the line: {err}");
    }

    #[test]
    fn bfd_timers_are_checked_at_load() {
        let neighbor = "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.1\"\n\n[[bgp.neighbor]]\n\
                        address = \"2001:db8::2\"\nasn = 65001\n";
        let config = with(&format!("{neighbor}bfd = {{}}\n")).unwrap();
        let bfd = config.bgp.as_ref().unwrap().neighbors[0]
            .bfd
            .as_ref()
            .unwrap();
        let bfd = bfd.get_ref();
        assert_eq!(
            (bfd.interval_ms, bfd.multiplier, bfd.multihop),
            (100, 3, false),
            "defaults"
        );
        assert!(
            with(&format!(
                "{neighbor}bfd = {{ interval_ms = 10, multiplier = 3 }}\n"
            ))
            .is_ok()
        );
        let err = with(&format!("{neighbor}bfd = {{ interval_ms = 5 }}\n")).unwrap_err();
        assert!(
            err.contains("interval_ms = 5 is out of range; use 10 to"),
            "{err}"
        );
        assert!(err.starts_with("agent.toml:24: "), "names the line: {err}");
        let err = with(&format!("{neighbor}bfd = {{ multiplier = 0 }}\n")).unwrap_err();
        assert!(
            err.contains("multiplier = 0 does not fit Detect Mult; use 1 to 255"),
            "{err}"
        );
        let err = with(&format!("{neighbor}bfd = {{ interval = 5 }}\n")).unwrap_err();
        assert!(err.contains("unknown field `interval`"), "{err}");
    }
}
