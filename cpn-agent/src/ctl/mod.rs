//! `cpnctl`: asks a running agent over its control socket (control.rs) and prints the answer
//! as a table, or as JSON with `--json` (the socket's own answer, unchanged). One module per
//! subcommand renders its table.

mod maps;
mod neighbors;
mod routes;
mod services;

use std::path::PathBuf;

use anyhow::Result;

use crate::control::{self, Request};

#[derive(Debug, clap::Parser)]
#[command(name = "cpnctl", version, about = "Inspect a running cpn agent")]
pub struct Cli {
    /// The agent's control socket (its `[control] socket`).
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the agent's answer as JSON (schemas in docs/OPERATIONS.md).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the agent's state.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Give a node no new flows (its open flows stay), on this agent's services.
    Drain { node: String },
    /// Give a drained node new flows again.
    Undrain { node: String },
    /// The data plane's pinned maps, read directly (works with the agent stopped).
    Maps {
        #[command(subcommand)]
        what: Maps,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum Maps {
    /// Decode one map (`services`, `ring_sel`, `rings`, `nodes`, `flows`, `local_sids`, and the
    /// counters) or all of them.
    Dump {
        name: Option<String>,
        /// The agent's `[dataplane] pin_dir`.
        #[arg(long, default_value = cpn_common::maps::PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub enum Show {
    /// BGP neighbors: session state, paths received, link probe RTT, jitter and loss.
    Neighbors,
    /// The Adj-RIB-In: every path from every neighbor, with SID, AIGP and compute metrics.
    Routes,
    /// Each steered service: its candidates, their scores and weights, and why any is excluded.
    Services,
}

/// Runs one command; the text to print.
pub fn run(cli: &Cli) -> Result<String> {
    let what = match &cli.command {
        Command::Maps {
            what: Maps::Dump { name, pin_dir },
        } => {
            let dumped = maps::dump(pin_dir, name.as_deref())?;
            if cli.json {
                return Ok(serde_json::to_string_pretty(&dumped)? + "\n");
            }
            return Ok(dumped
                .iter()
                .map(|(map, rows)| format!("map {map}\n{}", object_table(rows)))
                .collect::<Vec<_>>()
                .join("\n"));
        }
        Command::Show { what } => *what,
        Command::Drain { node } | Command::Undrain { node } => {
            let request = if matches!(cli.command, Command::Drain { .. }) {
                Request::Drain { node: node.clone() }
            } else {
                Request::Undrain { node: node.clone() }
            };
            let answer = control::ask(&cli.socket, &request)?;
            if cli.json {
                return Ok(serde_json::to_string_pretty(&answer)? + "\n");
            }
            let drained: Vec<String> = serde_json::from_value(answer)?;
            return Ok(format!(
                "drained: {}\n",
                if drained.is_empty() {
                    "(none)".to_owned()
                } else {
                    drained.join(", ")
                }
            ));
        }
    };
    let request = match what {
        Show::Neighbors => Request::Neighbors,
        Show::Routes => Request::Routes,
        Show::Services => Request::Services,
    };
    let answer = control::ask(&cli.socket, &request)?;
    if cli.json {
        return Ok(serde_json::to_string_pretty(&answer)? + "\n");
    }
    match what {
        Show::Neighbors => Ok(neighbors::table(serde_json::from_value(answer)?)),
        Show::Routes => Ok(routes::table(serde_json::from_value(answer)?)),
        Show::Services => Ok(services::table(&answer)),
    }
}

/// Left-aligned columns, two spaces apart.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// JSON objects as a table, their fields (of the first row) as columns.
fn object_table(rows: &[serde_json::Value]) -> String {
    let Some(first) = rows.first().and_then(serde_json::Value::as_object) else {
        return "(empty)\n".to_owned();
    };
    let header: Vec<&str> = first.keys().map(String::as_str).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            header
                .iter()
                .map(|k| match &row[*k] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    columns(
        &upper.iter().map(String::as_str).collect::<Vec<_>>(),
        &cells,
    )
}

/// Microseconds as milliseconds with two decimals.
fn millis(us: u64) -> String {
    format!("{}.{:02} ms", us / 1000, us % 1000 / 10)
}

/// An optional value, or `-`.
fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = columns(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "-".into()]],
        );
        assert_eq!(text, "A    BB\nxxx  y\nz    -\n");
        assert_eq!(millis(2_345), "2.34 ms");
        assert_eq!(millis(7), "0.00 ms");
    }
}
