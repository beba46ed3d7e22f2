//! Sensing the network (the C-NMA): BFD with the BGP neighbors for liveness (RFC 5880), STAMP
//! along each candidate's encapsulation for its path's delay and loss (RFC 8762), and link
//! probes between agents for their links' round trip, jitter and loss.

pub mod bfd;
pub mod probe;
pub mod stamp;
mod udp;
