//! `cpnctl`: inspect a running cpn agent (a thin layer over `cpn_agent::cli`).

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use cpn_agent::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(&Cli::parse()) {
        // A closed pipe (`cpnctl … | head`) is not an error.
        Ok(text) => match std::io::stdout().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("cpnctl: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(error) => {
            eprintln!("cpnctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
