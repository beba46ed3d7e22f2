//! `cargo xtask fuzz`: runs a BGP fuzz target (`fuzz/`) for a bounded time or number of
//! executions, or (`--dataplane`) the data-plane fuzzer for a number of packets.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, ebpf, setup};

/// The BGP fuzz targets in `fuzz/fuzz_targets/`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Target {
    /// Bytes from a peer through the codec and RFC 7606's checks.
    BgpUpdate,
    /// Sequences of events, timer expiries and messages through a session (FSM, import,
    /// export, RIB).
    BgpSession,
}

impl Target {
    const fn name(self) -> &'static str {
        match self {
            Self::BgpUpdate => "bgp_update",
            Self::BgpSession => "bgp_session",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The BGP fuzz target.
    #[arg(long, value_enum, default_value_t = Target::BgpUpdate)]
    target: Target,
    /// How long the BGP fuzzer runs, in seconds (the build before it is not counted).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Stop the BGP fuzzer after this many executions instead (libFuzzer's `-runs`).
    #[arg(long, conflicts_with = "seconds", value_parser = clap::value_parser!(u64).range(1..))]
    runs: Option<u64>,
    /// Fuzz the XDP and TC programs instead (root): generated and mutated packets through
    /// `BPF_PROG_TEST_RUN`, every outcome checked.
    #[arg(long)]
    dataplane: bool,
    /// With `--dataplane`: how many packets.
    #[arg(long, default_value_t = 1_000_000, requires = "dataplane",
          value_parser = clap::value_parser!(u64).range(1..))]
    packets: u64,
    /// With `--dataplane`: the generator's seed (random if not given).
    #[arg(long, requires = "dataplane")]
    seed: Option<u64>,
}

pub fn run(args: &Args) -> Result<()> {
    if args.dataplane {
        return dataplane(args);
    }
    // cargo-fuzz builds with `-Z sanitizer`, so it needs a nightly; the eBPF build's will do.
    let toolchain = setup::ebpf_toolchain()?;
    let target = args.target.name();
    ensure_cargo_fuzz()?;

    let root = cmd::workspace_root();
    let fuzz_dir = root.join("fuzz");
    // libFuzzer adds the inputs it finds to the first corpus directory: keep them out of the
    // source tree (in target/, so they grow across runs) and only read the committed seeds.
    let corpus = root.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = files(&artifacts);

    let result = cmd::run(
        Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env("PATH", path_with_cargo_bin())
            // `cargo xtask` runs under the stable toolchain's proxies; let `+nightly` take over.
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .arg(format!("+{toolchain}"))
            // Debug assertions also turn on overflow checks: an overflow is a finding too.
            .args(["fuzz", "run", "--debug-assertions", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            // An input that takes this long is a hang, and a finding.
            .arg("-timeout=10")
            .arg(match args.runs {
                Some(runs) => format!("-runs={runs}"),
                None => format!("-max_total_time={}", args.seconds),
            }),
    );

    let found: Vec<PathBuf> = files(&artifacts).difference(&before).cloned().collect();
    if let Err(error) = result {
        if found.is_empty() {
            return Err(error.context("the fuzzer failed without writing an input to reproduce"));
        }
        let inputs: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "the fuzzer found an input that crashes {target} (panic message above):\n  \
             {}\nreproduce it in {} with `cargo +{toolchain} fuzz run --debug-assertions \
             {target} {}`",
            inputs.join("\n  "),
            fuzz_dir.display(),
            inputs[0]
        );
    }
    for path in &found {
        // libFuzzer also saves inputs that were merely slow; they do not fail the run.
        eprintln!("fuzz: note: libFuzzer saved {}", path.display());
    }
    match args.runs {
        Some(runs) => eprintln!("fuzz: no crash in {runs} executions of {target}"),
        None => eprintln!("fuzz: no crash in {} s of fuzzing {target}", args.seconds),
    }
    Ok(())
}

/// Builds the eBPF object and runs the data-plane fuzzer, optimised, against it.
fn dataplane(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the data-plane fuzzer loads BPF programs and builds a network namespace, so it \
             needs root: run `sudo -E cargo xtask fuzz --dataplane`"
        );
    }
    setup::run(setup::Need::Everything)?;
    let object = ebpf::build()?;
    let root = cmd::workspace_root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .env("CPN_EBPF_OBJECT", &object)
            .args(["build", "--release", "--locked", "-q", "-p", "cpn-tests"])
            .args(["--bin", "cpn-fuzz-dataplane"]),
    )
    .context("building the data-plane fuzzer")?;
    let mut fuzz = Command::new(root.join("target/release/cpn-fuzz-dataplane"));
    fuzz.env("CPN_EBPF_OBJECT", &object)
        .arg("--packets")
        .arg(args.packets.to_string());
    if let Some(seed) = args.seed {
        fuzz.arg("--seed").arg(seed.to_string());
    }
    cmd::run(&mut fuzz).context("the data-plane fuzzer found packets that break an invariant")
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = |path: String| {
        cmd::output(
            Command::new("cargo")
                .env("PATH", path)
                .args(["fuzz", "--version"]),
        )
        .is_some()
    };
    if works(path_with_cargo_bin()) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("could not install cargo-fuzz; `cargo install` needs to reach crates.io")?;
    if !works(path_with_cargo_bin()) {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` still fails; is {} on PATH?",
            setup::cargo_bin_dir().display()
        );
    }
    Ok(())
}

/// `$PATH` with `cargo install`'s directory first, so a just-installed cargo-fuzz is found.
fn path_with_cargo_bin() -> String {
    format!(
        "{}:{}",
        setup::cargo_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The files in `dir` (none if it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}
