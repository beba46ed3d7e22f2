//! `cargo xtask demo`: builds everything and runs the namespace lab (`cpn-demo`).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, ebpf, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Passed on to the demo: `--topology FILE`, `--keep`, `--record DIR`, `--act-seconds N`
    /// (`cargo xtask demo -- --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    demo_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo loads BPF programs and builds network namespaces, so it needs root: run \
             `sudo -E cargo xtask demo`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let binaries = ebpf::build_binaries()?;
    cmd::run(
        Command::new(binaries.join("cpn-demo"))
            .args(&args.demo_args)
            .env("CPN_AGENT_BIN", binaries.join("cpn-agent")),
    )
}
