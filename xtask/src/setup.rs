//! Idempotent machine set-up: every step checks first and installs only what is missing.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages the eBPF build needs (bpf-linker links against LLVM 22).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// Debian packages the agent, the tests and the demo use at run time.
const RUNTIME_PACKAGES: &[&str] = &[
    // BIRD 2: a third BGP implementation in the interop tests (tests/tests/bird.rs) and the
    // big-table benchmark's reference speaker.
    "bird2",
    "bpftool",
    // The benchmarks build their baselines and the kernel's Katran-like selftest program
    // (from linux-source) with clang and libbpf's headers.
    "clang",
    "ethtool",
    // The font of the demo's chart (`--record`).
    "fonts-dejavu-core",
    "frr",
    "gobgpd",
    "iproute2",
    "iputils-ping",
    "libbpf-dev",
    "linux-source",
    "procps",
    "python3",
    "tcpdump",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly that matches bpf-linker's LLVM 22, installed only when no `nightly` exists.
const PINNED_NIGHTLY: &str = "nightly-2026-05-19";
const BPFFS: &str = "/sys/fs/bpf";

/// How much of the machine a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The eBPF toolchain only.
    Build,
    /// Toolchain, run-time packages and the bpffs mount.
    Everything,
}

pub fn run(need: Need) -> Result<()> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if need == Need::Everything {
        packages.extend_from_slice(RUNTIME_PACKAGES);
    }
    ensure_packages(&packages)?;
    // rust-src: `-Z build-std=core` for the BPF target; clippy and rustfmt: `cargo xtask test`.
    let toolchain = ebpf_toolchain()?;
    ensure_components(Some(&toolchain), &["rust-src", "clippy"])?;
    ensure_components(None, &["clippy", "rustfmt"])?;
    ensure_bpf_linker()?;
    if need == Need::Everything {
        ensure_bpffs()?;
        stop_system_bird();
    }
    Ok(())
}

/// Debian's bird2 starts a system-wide BIRD; the benchmark runs its own in a namespace, so
/// the system one is stopped and disabled (where systemd runs; elsewhere nothing starts it).
fn stop_system_bird() {
    if cmd::is_root() && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "--quiet", "bird.service"])
            .status();
    }
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages: {}. Install them with `sudo apt-get install {}`, or run \
             this command as root and it will.",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"])).context(
        "apt-get update failed: this machine needs to reach deb.debian.org (or a mirror in \
         /etc/apt/sources.list)",
    )?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .context("apt-get install failed; see its output above")
}

fn package_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// The nightly toolchain that builds the eBPF crate: the installed `nightly` if its LLVM is the
/// one bpf-linker was built against, otherwise the pinned one (installed here).
pub fn ebpf_toolchain() -> Result<String> {
    for toolchain in ["nightly", PINNED_NIGHTLY] {
        let version = cmd::output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]));
        if version.is_some_and(|v| v.contains("LLVM version: 22.")) {
            return Ok(toolchain.to_owned());
        }
    }
    eprintln!("setup: installing Rust {PINNED_NIGHTLY} for the eBPF build");
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        PINNED_NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context(
        "could not install the nightly toolchain: rustup needs to reach static.rust-lang.org",
    )?;
    Ok(PINNED_NIGHTLY.to_owned())
}

/// Adds the rustup components a toolchain lacks (`None`: the active toolchain).
fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let toolchain_args = toolchain.map(|t| ["--toolchain", t]);
    let installed = cmd::output(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .args(toolchain_args.iter().flatten()),
    )
    .unwrap_or_default();
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: adding Rust components {}", missing.join(" "));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .args(toolchain_args.iter().flatten()),
    )
    .context("rustup could not add the components: it needs to reach static.rust-lang.org")
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = cmd::output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("could not build bpf-linker; it needs crates.io and the llvm-22-dev package")
}

fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("the BPF filesystem is not mounted: run `sudo mount -t bpf bpf {BPFFS}`");
    }
    if !Path::new(BPFFS).exists() {
        std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    }
    eprintln!("setup: mounting the BPF filesystem on {BPFFS}");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
