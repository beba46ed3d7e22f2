//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{bench, cmd, ebpf, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments passed on to `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_test_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the tests load BPF programs and build network namespaces, so they need root: \
             run `sudo -E cargo xtask test`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let root = cmd::workspace_root();
    let ebpf_dir = root.join("cpn-ebpf");

    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    cmd::run(
        Command::new("cargo")
            .current_dir(&ebpf_dir)
            .args(["fmt", "--", "--check"]),
    )?;

    let binaries = ebpf::build_binaries()?;
    let object = ebpf::object_path();
    ebpf::clippy()?;
    let cargo = |subcommand: &str| {
        let mut command = Command::new("cargo");
        command
            .current_dir(&root)
            .env("CPN_EBPF_OBJECT", &object)
            // The namespace tests start this agent.
            .env("CPN_AGENT_BIN", binaries.join("cpn-agent"))
            .args([subcommand, "--workspace", "--all-targets", "--locked"]);
        command
    };
    cmd::run(cargo("clippy").args(["--", "-D", "warnings"]))?;
    cmd::run(cargo("test").arg("--").args(&args.cargo_test_args))?;
    // Benchmarks assert no times; the quick run only keeps them from rotting.
    bench::quick_or_full(&binaries, true)?;
    eprintln!("all checks passed");
    Ok(())
}
