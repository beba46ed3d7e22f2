//! `cargo xtask fuzz --dataplane`: the data-plane fuzzer for long runs (see
//! `cpn_tests::dataplane_fuzz`). Exits 0 only if no packet broke an invariant.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Parser;
use cpn_tests::dataplane_fuzz::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "cpn-fuzz-dataplane",
    about = "Fuzz cpn's XDP and TC programs with generated and mutated packets"
)]
struct Args {
    /// Packets to generate; each goes through every program.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    packets: u64,
    /// The generator's seed (a random one if not given; the report names it).
    #[arg(long)]
    seed: Option<u64>,
    /// Where each failing input is written, as hex.
    #[arg(long, value_name = "DIR", default_value = "target/fuzz/dataplane")]
    failures: PathBuf,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let config = Config {
        packets: args.packets,
        seed: args.seed.unwrap_or_else(rand::random),
        save_failures: Some(args.failures),
    };
    eprintln!(
        "fuzz: {} packets from seed {} through cpn_steer, cpn_steer_tc_ingress, cpn_endpoint",
        config.packets, config.seed
    );
    let report = dataplane_fuzz::run(&config, |so_far| {
        if so_far.packets.is_multiple_of(1_000_000) {
            eprintln!(
                "fuzz: {} packets, {} failures, {:.0} s",
                so_far.packets,
                so_far.failed,
                so_far.elapsed.as_secs_f64()
            );
        }
    })?;
    println!("{report}");
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
