//! FRR's daemons in a lab node, without zebra (they install nothing, open no TCP vty) and
//! keeping their configuration, vty sockets, pid files and output in the lab's directory: they
//! touch neither the host's FRR nor other tests. Written against FRR 8.4 (Debian 12).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::lab::Lab;

fn text(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Starts bgpd in `node` on `config`, its vty socket in `vty_dir`; its output goes to
/// `bgpd.out` in the lab's directory. Answers the output file.
pub fn spawn_bgpd(lab: &mut Lab, node: &str, config: &Path, vty_dir: &Path) -> Result<PathBuf> {
    let work = lab.workdir().to_path_buf();
    let output = work.join("bgpd.out");
    lab.spawn(
        node,
        &[
            "/usr/lib/frr/bgpd",
            "--no_zebra",
            "--no_kernel",
            // Stay root: the frr user could not write to the lab's directory.
            "--skip_runas",
            "--vty_port",
            "0",
            "--config_file",
            &text(config)?,
            "--pid_file",
            &text(&work.join("bgpd.pid"))?,
            "--vty_socket",
            &text(vty_dir)?,
        ],
        Some(&output),
    )?;
    Ok(output)
}

/// Starts bfdd in `node` on `config`, everything of its own in `dir` (which the `frr` user
/// must own: bfdd gives up root for it); its output goes to `bfdd.out` in the lab's
/// directory. It runs its configured peers without zebra. Answers the output file.
pub fn spawn_bfdd(lab: &mut Lab, node: &str, config: &Path, dir: &Path) -> Result<PathBuf> {
    let output = lab.workdir().join("bfdd.out");
    lab.spawn(
        node,
        &[
            "/usr/lib/frr/bfdd",
            "--config_file",
            &text(config)?,
            "--pid_file",
            &text(&dir.join("bfdd.pid"))?,
            "--vty_socket",
            &text(dir)?,
            "--bfdctl",
            &text(&dir.join("bfdd.sock"))?,
            "--socket",
            &text(&dir.join("zserv.api"))?,
        ],
        Some(&output),
    )?;
    Ok(output)
}
