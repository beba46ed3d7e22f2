//! The cpn agent: loads and owns the SRv6 data plane, and (in later stages) advertises compute
//! load and steers flows. `cpn-agent` (the daemon) is a thin layer over this library.

pub mod agent;
pub mod bgp;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dataplane;
pub mod exporter;
pub mod kernel;
pub mod metrics;
pub mod probe;
pub mod selection;
