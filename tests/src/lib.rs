//! Test harnesses for cpn, shared by the integration tests, the scenario suite and the demo:
//!
//! - [`fixture`]: runs one packet through an XDP program with `BPF_PROG_TEST_RUN` and compares
//!   the action and the output bytes with the expected ones;
//! - [`lab`]: builds network-namespace topologies (nodes, veth links, addresses, processes) that
//!   are removed when dropped, even after a panic;
//! - [`soak`]: the chaos soak, faults scheduled on the demo's lab under traffic.

pub mod bgp_lab;
pub mod bird;
pub mod chart;
pub mod cpn_lab;
pub mod dataplane_fuzz;
pub mod demo;
pub mod differential;
pub mod dut;
pub mod fixture;
pub mod frr;
pub mod golden;
pub mod lab;
pub mod packet;
pub mod soak;
pub mod stamp_lab;
pub mod steering_lab;
pub mod traffic;
