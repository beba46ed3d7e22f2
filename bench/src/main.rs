//! `cargo xtask bench`: cpn's benchmarks. Absolute numbers on shared machines are noise, so
//! every figure is reported next to a baseline measured in the same run, as a ratio with its
//! spread. Writes `report.json`, `report.md` and PNG charts (see docs/BENCHMARKS.md).
//!
//! ```text
//!   peers (clang, at bench time) ──▶ part 1: BPF_PROG_TEST_RUN per-packet cost
//!   gen ─veth─ dut ─veth─ sink  ──▶ part 2: throughput, plain / seg6 / cpn_steer
//!   agent code, in process      ──▶ part 3: Maglev rebuild, UPDATE codec,
//!                                            100 / 1000 simulated agents per mode
//!                                         └─▶ report.json / report.md / *.png
//! ```

mod control;
mod peers;
mod report;
mod sim;
mod stats;
mod testrun;
mod throughput;

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cpn-bench",
    about = "cpn's benchmarks (root; see docs/BENCHMARKS.md)"
)]
struct Args {
    /// A short run that only proves every benchmark still works (CI); its numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix_root() {
        bail!("the benchmarks load BPF programs and build namespaces: run them as root");
    }
    let started = Instant::now();
    let mut not_measured = Vec::new();
    let peers = peers::build(&args.out.join("peers"))?;

    let per_packet = testrun::run(
        &testrun::Settings {
            rounds: if args.quick { 5 } else { 31 },
            batch: if args.quick { 200 } else { 10_000 },
            flow_counts: if args.quick {
                vec![1, 1000]
            } else {
                vec![1, 1000, 1_000_000]
            },
        },
        &peers,
    )?;
    if args.quick {
        not_measured.push("affinity with 1M flows in the table (full run only)".to_owned());
    }

    let throughput = throughput::run(
        &throughput::Settings {
            rounds: if args.quick { 1 } else { 7 },
            window: std::time::Duration::from_secs(if args.quick { 1 } else { 3 }),
        },
        &peers.baselines,
    )?;

    let control = control::Control {
        maglev: control::maglev(if args.quick { 3 } else { 31 }),
        codec: control::codec(
            if args.quick { 3 } else { 31 },
            if args.quick { 1000 } else { 20_000 },
        )?,
    };

    let sizes: &[usize] = if args.quick { &[100] } else { &[100, 1000] };
    let simulation = sim::run(sizes, if args.quick { 2 } else { 7 })?;
    if args.quick {
        not_measured.push("simulation with 1000 agents (full run only)".to_owned());
    }

    let report = report::Report {
        quick: args.quick,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seconds: started.elapsed().as_secs_f64(),
        machine: report::Machine::probe(),
        per_packet: Some(per_packet),
        throughput: Some(throughput),
        control: Some(control),
        simulation: Some(simulation),
        not_measured,
    };
    let charts = report::write(&report, &args.out)?;
    println!("{}", report::markdown(&report));
    eprintln!(
        "bench: wrote {0}/report.json, {0}/report.md and {1}",
        args.out.display(),
        charts
            .iter()
            .map(|c| format!("{}/{c}", args.out.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
