//! `cargo xtask bench [--quick]`: builds the data plane and the bench binary, then runs every
//! benchmark and writes `target/bench/report.{json,md}` and PNG charts (docs/BENCHMARKS.md).

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{cmd, ebpf, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run that proves every benchmark still works (CI); its numbers are rough.
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmarks load BPF programs and build network namespaces, so they need root: \
             run `sudo -E cargo xtask bench`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let object = ebpf::build()?;
    let root = cmd::workspace_root();
    // Userspace timings (Maglev, codec, simulation) need an optimised build; the quick run
    // only proves the benchmarks work and reuses the debug build `cargo xtask test` made.
    let profile = if args.quick { "debug" } else { "release" };
    let mut build = Command::new("cargo");
    build
        .current_dir(&root)
        .env("CPN_EBPF_OBJECT", &object)
        .args([
            "build",
            "--locked",
            "-p",
            "cpn-bench",
            "-p",
            "cpn-agent",
            "--bins",
        ]);
    if !args.quick {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    quick_or_full(&root.join("target").join(profile), args.quick)
}

/// Runs the built bench binary (also used by `cargo xtask test` for the quick run).
pub fn quick_or_full(binaries: &Path, quick: bool) -> Result<()> {
    let root = cmd::workspace_root();
    let mut bench = Command::new(binaries.join("cpn-bench"));
    bench
        .current_dir(&root)
        .env("CPN_AGENT_BIN", binaries.join("cpn-agent"))
        .arg("--out")
        .arg(root.join("target/bench"));
    if quick {
        bench.arg("--quick");
    }
    cmd::run(&mut bench)
}
