//! `cpnctl`: inspect a running cpn agent (a thin layer over `cpn_agent::ctl`).

use std::process::ExitCode;

use clap::Parser as _;
use cpn_agent::ctl::{self, Cli};

fn main() -> ExitCode {
    match ctl::run(&Cli::parse()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cpnctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
