//! cpn's developer commands: `cargo xtask <command>`.
//!
//! Every command first runs the part of `setup` it needs, so each one works as the very first
//! command on a fresh machine and costs a few quick checks afterwards.

mod bench;
mod cmd;
mod demo;
mod ebpf;
mod fuzz;
mod setup;
mod soak;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set up, test, benchmark and demo cpn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install everything missing: Debian packages, rust-src, bpf-linker, the bpffs mount.
    Setup,
    /// Build the eBPF object (with BTF) that cpn-agent embeds.
    BuildEbpf,
    /// Run every check: formatting, clippy, unit, fixture and network-namespace tests (root).
    Test(test::Args),
    /// Run the network-namespace lab and show the data plane at work (root).
    Demo(demo::Args),
    /// Run the benchmarks and write target/bench/report.{json,md} and charts (root).
    Bench(bench::Args),
    /// Fuzz BGP (`--target bgp-update` or `bgp-session`; nightly and cargo-fuzz are installed
    /// if missing), or with
    /// `--dataplane --packets N` the XDP and TC programs (root).
    Fuzz(fuzz::Args),
    /// Run the chaos soak: the demo's lab under traffic and faults for N minutes (root).
    Soak(soak::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(setup::Need::Everything),
        Command::BuildEbpf => {
            setup::run(setup::Need::Build)?;
            ebpf::build().map(drop)
        }
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Soak(args) => soak::run(&args),
    }
}
