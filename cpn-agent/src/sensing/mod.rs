//! Sensing the network between agents (the C-NMA): link probes to each BGP neighbor, and BFD
//! control packets (RFC 5880).

pub mod bfd;
pub mod probe;
