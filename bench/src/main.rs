//! `cargo xtask bench`: cpn's benchmarks. Absolute numbers on shared machines are noise, so
//! every figure is reported next to a baseline measured in the same run, as a ratio with its
//! spread. Writes `report.json`, `report.md` and PNG charts (see docs/BENCHMARKS.md).
//!
//! ```text
//!   peers (clang, at bench time) ──▶ part 1: BPF_PROG_TEST_RUN per-packet cost
//!   gen ─veth─ dut ─veth─ sink  ──▶ part 2: throughput, plain / seg6 / cpn_steer:
//!                                            1 flow, 1 queue; 64 flows, 1 queue per CPU
//!   host ─veth─ compute          ──▶ part 2: a host's bulk TCP, cpn_steer_tc_egress
//!                                            against the kernel's encap seg6 route
//!   agent code, in process      ──▶ part 3: Maglev rebuild, UPDATE codec,
//!                                            100 / 1000 simulated agents per mode
//!   namespace labs of agents    ──▶ part 3: metric change → ring / first packet,
//!                                            death → last packet (5 and 20 agents)
//!   our table generator (BGP)   ──▶ part 4: a full table into cpn-agent, BIRD, GoBGP:
//!                                            learn time, peak RSS, kernel routes
//!                                         └─▶ report.json / report.md / *.png
//! ```

mod bigtable;
mod control;
mod host_tcp;
mod labs;
mod peers;
mod report;
mod sensing;
mod sim;
mod stats;
mod table;
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
    /// Run only this part (the report then holds only it).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// The parts of the benchmark (`--only` runs one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    PerPacket,
    Throughput,
    HostTcp,
    Control,
    Simulation,
    Labs,
    Bigtable,
    Sensing,
}

#[expect(clippy::too_many_lines, reason = "one block per part, in order")]
fn main() -> Result<()> {
    let args = Args::parse();
    if !nix_root() {
        bail!("the benchmarks load BPF programs and build namespaces: run them as root");
    }
    let started = Instant::now();
    let quick = args.quick;
    let wanted = |part: Part| args.only.is_none_or(|only| only == part);
    let mut not_measured = Vec::new();
    let peers = peers::build(&args.out.join("peers"))?;

    let per_packet = if wanted(Part::PerPacket) {
        Some(testrun::run(
            &testrun::Settings {
                rounds: if quick { 5 } else { 31 },
                batch: if quick { 200 } else { 10_000 },
                flow_counts: if quick {
                    vec![1, 1000]
                } else {
                    vec![1, 1000, 1_000_000]
                },
            },
            &peers,
        )?)
    } else {
        None
    };
    if quick && wanted(Part::PerPacket) {
        not_measured.push("affinity with 1M flows in the table (full run only)".to_owned());
    }

    let (throughput, throughput_multi_queue) = if wanted(Part::Throughput) {
        let single = throughput::run(
            &throughput::Settings {
                rounds: if quick { 1 } else { 7 },
                window: std::time::Duration::from_secs(if quick { 1 } else { 3 }),
            },
            &peers.baselines,
        )?;
        let multi = throughput::run_multi_queue(
            &throughput::Settings {
                rounds: if quick { 1 } else { 7 },
                window: std::time::Duration::from_millis(if quick { 500 } else { 3000 }),
            },
            &peers.baselines,
        )?;
        if let Some(limit) = &multi.limit {
            not_measured.push(format!(
                "throughput with {} flows over a {}-queue veth: {limit}",
                multi.flows, multi.queues
            ));
        }
        (Some(single), Some(multi))
    } else {
        (None, None)
    };
    let host_tcp = if wanted(Part::HostTcp) {
        Some(host_tcp::run(&host_tcp::Settings {
            rounds: if quick { 2 } else { 16 },
            window: std::time::Duration::from_millis(if quick { 500 } else { 2000 }),
        })?)
    } else {
        None
    };

    let control = if wanted(Part::Control) {
        Some(control::Control {
            maglev: control::maglev(if quick { 3 } else { 31 }),
            codec: control::codec(
                if quick { 3 } else { 31 },
                if quick { 1000 } else { 20_000 },
            )?,
        })
    } else {
        None
    };

    let simulation = if wanted(Part::Simulation) {
        let sizes: &[usize] = if quick { &[100] } else { &[100, 1000] };
        Some(sim::run(sizes, if quick { 2 } else { 7 })?)
    } else {
        None
    };
    if quick && wanted(Part::Simulation) {
        not_measured.push("simulation with 1000 agents (full run only)".to_owned());
    }

    let mut lab_runs = Vec::new();
    if wanted(Part::Labs) {
        use cpn_tests::cpn_lab::Mode;
        let labs: &[(usize, Mode)] = if quick {
            &[(3, Mode::Distributed)]
        } else {
            &[
                (3, Mode::Distributed),
                (18, Mode::Distributed),
                (3, Mode::Reflector),
            ]
        };
        for &(computes, mode) in labs {
            lab_runs.push(labs::run(computes, mode, if quick { 1 } else { 5 })?);
            eprintln!(
                "bench: namespace lab with {} agents ({mode:?}) done",
                computes + 2
            );
        }
    }
    if quick && wanted(Part::Labs) {
        not_measured.push("namespace lab with 20 agents (full run only)".to_owned());
    }

    let bigtable = if wanted(Part::Bigtable) {
        Some(bigtable::run(
            &bigtable::Settings::new(quick),
            &mut not_measured,
        )?)
    } else {
        None
    };

    let sensing = if wanted(Part::Sensing) {
        let measured = sensing::run(quick)?;
        eprintln!("bench: sensing (BFD, health checks, STAMP) done");
        Some(measured)
    } else {
        None
    };

    let report = report::Report {
        quick,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seconds: started.elapsed().as_secs_f64(),
        machine: report::Machine::probe(),
        per_packet,
        throughput,
        throughput_multi_queue,
        host_tcp,
        control,
        simulation,
        labs: lab_runs,
        bigtable,
        sensing,
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
