//! `cargo xtask soak --minutes N`: the demo's lab under traffic while agents are killed, links
//! flapped, paths impaired, loads stormed and a rogue peer sends malformed BGP (see
//! `cpn_tests::soak`). Exits 0 only if every check held for the whole run.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use cpn_tests::soak;

#[derive(Debug, Parser)]
#[command(
    name = "cpn-soak",
    about = "A chaos soak of cpn agents in a namespace lab"
)]
struct Args {
    /// How long the faults go on, in minutes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: u64,
    /// The fault schedule's seed (random if not given; the report names it).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let options = soak::Options {
        duration: Duration::from_secs(args.minutes * 60),
        seed,
    };
    println!(
        "[soak] {} min, seed {seed}: building the demo's lab",
        args.minutes
    );
    match soak::run(options) {
        Ok(outcome) => {
            println!("{}", outcome.report);
            if outcome.failures.is_empty() {
                println!("[soak] every check held");
                ExitCode::SUCCESS
            } else {
                for failure in &outcome.failures {
                    eprintln!("[soak] FAIL {failure}");
                }
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("[soak] failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
