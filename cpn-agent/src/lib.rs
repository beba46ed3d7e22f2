//! The cpn agent: owns the SRv6 data plane, advertises compute load in BGP and steers flows.
//! `cpn-agent` (the daemon) and `cpnctl` are thin layers over this library. One module per
//! part of DESIGN.md "How data flows":
//!
//! - `metrics/`: samplers of host and service load, and the reporting task that advertises
//!   them; `sensing/`: BFD and STAMP;
//! - `bgp/`: sessions (I/O), peer logic (sans-I/O), the FSM and the RIB;
//! - `core`: the routing core, the one task that owns the RIB, the links and the drains and
//!   publishes them as snapshots;
//! - `selection/`: policy, score, hysteresis, Maglev, and steering, the driver that reacts to
//!   the core's snapshots;
//! - `dataplane/`: the loaded object and its pinned maps, the map owner task, the next-hop
//!   cache, kernel routes and learned locators (netlink);
//! - `api/`: the control socket and Prometheus, with the typed views `cli/` (cpnctl) reads;
//! - `agent/`: the tasks above wired together, and the configuration applied to them.

pub mod agent;
pub mod api;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod core;
pub mod dataplane;
pub mod metrics;
pub mod selection;
pub mod sensing;

/// Readers never see half a file: write a sibling, then rename over.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, path)
}
