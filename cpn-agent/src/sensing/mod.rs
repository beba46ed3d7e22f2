//! Sensing the network between agents (the C-NMA): link probes to each BGP neighbor.

pub mod probe;
