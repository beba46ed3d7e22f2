//! `cargo xtask soak --minutes N`: builds everything and runs the chaos soak (`cpn-soak`).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, ebpf, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the faults go on, in minutes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: u64,
    /// The fault schedule's seed (random if not given).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the soak loads BPF programs and builds network namespaces, so it needs root: run \
             `sudo -E cargo xtask soak`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let binaries = ebpf::build_binaries()?;
    let mut soak = Command::new(binaries.join("cpn-soak"));
    soak.arg("--minutes")
        .arg(args.minutes.to_string())
        .env("CPN_AGENT_BIN", binaries.join("cpn-agent"));
    if let Some(seed) = args.seed {
        soak.arg("--seed").arg(seed.to_string());
    }
    cmd::run(&mut soak)
}
