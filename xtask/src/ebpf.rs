//! Builds the eBPF object that cpn-agent embeds.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

/// Where the built object is copied; cpn-agent's build script embeds it from here
/// (or from `$CPN_EBPF_OBJECT`).
pub fn object_path() -> PathBuf {
    cmd::workspace_root().join("target/ebpf/cpn.bpf.o")
}

/// `cargo +nightly <subcommand>` for the eBPF crate and target, with BTF in the object.
fn ebpf_cargo(subcommand: &str) -> Result<Command> {
    let root = cmd::workspace_root();
    let toolchain = setup::ebpf_toolchain()?;
    let path = format!(
        "{}:{}",
        setup::cargo_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("cargo");
    command
        .current_dir(root.join("cpn-ebpf"))
        .env("PATH", path)
        // `cargo xtask` runs under the stable toolchain's proxies; let `+nightly` take over.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            ebpf_rustflags(),
        )
        .arg(format!("+{toolchain}"))
        .args([
            subcommand,
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(target_dir());
    Ok(command)
}

/// BPF global functions of the object (`cpn-ebpf/src/steer.rs`, `encap.rs`): bpf-linker keeps
/// them global only when exported, and the kernel then verifies each once, on its own.
const GLOBAL_FUNCTIONS: [&str; 5] = [
    "cpn_parse_ip",
    "cpn_steer_ip",
    "cpn_parse_ip_tc",
    "cpn_steer_ip_tc",
    "cpn_clamp_mss",
];

/// BTF in the object; `memset`/`memmove` expanded inline like `memcpy` (bpf-linker's default
/// "in order" expansion makes them calls to byte-at-a-time loops); the global functions kept.
fn ebpf_rustflags() -> String {
    format!(
        "-C debuginfo=2 -C link-arg=--btf -C link-arg=--disable-expand-memcpy-in-order \
         -C link-arg=--export={}",
        GLOBAL_FUNCTIONS.join(",")
    )
}

fn target_dir() -> PathBuf {
    cmd::workspace_root().join("target/ebpf")
}

/// Lints the eBPF crate with the same toolchain and target that build it.
pub fn clippy() -> Result<()> {
    cmd::run(ebpf_cargo("clippy")?.args(["--", "-D", "warnings"]))
}

/// Builds `cpn-ebpf` for `bpfel-unknown-none` with BTF and returns the object's path.
pub fn build() -> Result<PathBuf> {
    cmd::run(&mut ebpf_cargo("build")?)?;
    let built = target_dir().join("bpfel-unknown-none/release/cpn");
    let object = object_path();
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    eprintln!("eBPF object: {}", object.display());
    Ok(object)
}

/// Builds the eBPF object, then the workspace's binaries embedding it (`cpn-agent`,
/// `cpn-demo`); returns the directory that holds them.
pub fn build_binaries() -> Result<PathBuf> {
    let object = build()?;
    let root = cmd::workspace_root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .env("CPN_EBPF_OBJECT", &object)
            .args(["build", "--workspace", "--bins", "--locked"]),
    )?;
    Ok(root.join("target/debug"))
}
