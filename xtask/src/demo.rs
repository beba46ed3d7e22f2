//! `cargo xtask demo`: builds everything and runs the namespace lab (`cpn-demo`).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, ebpf, setup};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo loads BPF programs and builds network namespaces, so it needs root: run \
             `sudo -E cargo xtask demo`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let binaries = ebpf::build_binaries()?;
    cmd::run(
        Command::new(binaries.join("cpn-demo")).env("CPN_AGENT_BIN", binaries.join("cpn-agent")),
    )
}
