//! Names, layouts and indexes shared by the cpn eBPF programs and the agent.
//!
//! Everything the kernel and userspace both read is defined here once: program and map names,
//! map capacities, counter indexes and the value layouts. Value types are `#[repr(C)]`, `Copy`,
//! free of padding, and their sizes are checked at compile time so that the two sides can never
//! disagree about a byte.
#![no_std]

pub mod hash;
pub mod headers;
pub mod maps;
pub mod programs;
pub mod stats;
