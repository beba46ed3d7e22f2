//! Differential testing: the same crafted packets through Linux's own SRv6 (the reference)
//! and through cpn, on identical network-namespace topologies, with every outcome normalised
//! and compared (see `tests/tests/differential.rs` for the case tables).
//!
//! - [`wire`]: packets built field by field, malformed ones included;
//! - [`capture`]: `AF_PACKET` injection and capture, the DUT's UDP service;
//! - [`outcome`]: what became of a packet (forwarded, delivered, ICMP, dropped);
//! - [`endpoint`]: `seg6local` routes against `cpn_endpoint`;
//! - [`steer`]: `encap seg6` routes against `cpn_steer`.

pub mod capture;
pub mod endpoint;
pub mod outcome;
pub mod steer;
pub mod wire;
