//! Sensing the network between agents (the C-NMA): BFD with the BGP neighbors for liveness
//! (RFC 5880), and link probes between agents for round-trip time, jitter and loss.

pub mod bfd;
pub mod probe;
pub mod stamp;
mod udp;
