//! Sensing the network (the C-NMA): BFD with the BGP neighbors for liveness (RFC 5880), and
//! STAMP along each candidate's encapsulation for its path's delay, jitter and loss (RFC 8762).

pub mod bfd;
pub mod stamp;
mod udp;
