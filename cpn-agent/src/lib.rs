//! The cpn agent: owns the SRv6 data plane, advertises compute load in BGP and steers flows.
//! `cpn-agent` (the daemon) and `cpnctl` are thin layers over this library. One module per
//! part of DESIGN.md "How data flows":
//!
//! - `metrics/`: samplers of host and service load; `sensing/`: link probes;
//! - `bgp/`: sessions (I/O), peer logic (sans-I/O), the FSM and the RIB;
//! - `core`: the routing core, the one task that owns the RIB, the links and the drains and
//!   publishes them as snapshots;
//! - `selection/`: policy, score, hysteresis, Maglev; `agent/`: the tasks wired together
//!   (steering, reporting, next hops, locators, the map owner);
//! - `dataplane/`: the pinned maps, netlink (kernel routes, the next-hop resolver);
//! - `api/`: the control socket and Prometheus, with the typed views `cli/` (cpnctl) reads.

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
