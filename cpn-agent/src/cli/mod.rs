//! `cpnctl`: asks a running agent over its control socket (control.rs) and prints the answer
//! as a table, or as JSON with `--json` (the socket's own answer, unchanged). One module per
//! subcommand renders its table.

mod explain;
mod flows;
mod health;
mod maps;
mod neighbors;
mod nexthops;
mod nodes;
mod paths;
mod routes;
mod services;
mod sids;
mod stats;

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::api::{self, ExplainRequest, FlowFilter, Request};

#[derive(Debug, clap::Parser)]
#[command(name = "cpnctl", version, about = "Inspect a running cpn agent")]
pub struct Cli {
    /// The agent's control socket (its `[control] socket`).
    #[arg(long, global = true, default_value = api::DEFAULT_SOCKET)]
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
    /// Which node a flow goes to and why: the data plane's own lookup, replayed on its maps
    /// (service, affinity, ring, node), and the selection behind the ring (scores, weights,
    /// hysteresis). Without `--source-port`, the client's open flows to the service.
    Explain {
        /// The client's address (the packet's source).
        client: IpAddr,
        /// The service address (the packet's destination).
        service: IpAddr,
        /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` or a protocol number.
        #[arg(default_value = "tcp", value_parser = explain::protocol)]
        protocol: u8,
        /// The service port (ignored for protocols without ports).
        #[arg(default_value_t = 0)]
        port: u16,
        /// The client's port: explain that one flow, open or not.
        #[arg(long)]
        source_port: Option<u16>,
    },
    /// Give a node no new flows (its open flows stay), on this agent's services.
    Drain { node: String },
    /// Give a drained node new flows again.
    Undrain { node: String },
    /// Report a service's requests in flight now, as the service itself would (on a compute
    /// node): the agent advertises it at once, without waiting for the in-flight file or the
    /// sampling interval. It counts until a newer report or a newer write of the file.
    Load {
        /// The service address, as the node's `[[service]]` gives it.
        service: IpAddr,
        /// Requests in flight (0 or more).
        in_flight: f64,
        /// The service's protocol (`tcp`, `udp`, ... or a number), when its `[[service]]`
        /// names one; give `--port` with it.
        #[arg(long, value_parser = explain::protocol)]
        protocol: Option<u8>,
        #[arg(long)]
        port: Option<u16>,
    },
    /// The data plane's pinned maps, read directly (works with the agent stopped).
    Maps {
        #[command(subcommand)]
        what: Maps,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum Maps {
    /// Decode one map (`services`, `ring_sel`, `rings`, `nodes`, `flows`, `local_sids`,
    /// `nexthop_sel`, `nexthops`, and the counters) or all of them.
    Dump {
        name: Option<String>,
        /// The agent's `[dataplane] pin_dir`.
        #[arg(long, default_value = cpn_common::maps::PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum Show {
    /// BGP neighbors: session state, paths received, BFD, messages.
    Neighbors,
    /// The BFD session with each neighbor that has one: states, diagnostic, intervals in force.
    Bfd,
    /// What STAMP measured along each candidate's own encapsulation: delay, round trip,
    /// jitter, loss.
    Paths,
    /// This node's checked services: health, since when, the latest outcomes.
    Health,
    /// The Adj-RIB-In: every path from every neighbor, with SID, AIGP and compute metrics.
    Routes,
    /// Each steered service: its candidates, their scores and weights, and why any is excluded.
    Services,
    /// The compute nodes in the data plane: state, segments, ring slots, packets sent to each.
    Nodes,
    /// The flow affinity table, most recently active first.
    Flows {
        /// Only flows from this client address.
        #[arg(long)]
        client: Option<IpAddr>,
        /// Only flows to this service address.
        #[arg(long)]
        service: Option<IpAddr>,
        /// Only flows pinned to this node (name or id).
        #[arg(long)]
        node: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The next-hop cache: per node, the cached egress interface, gateway, MAC and MTU (the
    /// data plane then needs no FIB lookup), or why its packets take the FIB path.
    Nexthops,
    /// The local SIDs and the packets each processed.
    Sids,
    /// The data-plane counters by service, node, SID, exception reason and protocol.
    Stats,
}

/// Runs one command; the text to print.
pub fn run(cli: &Cli) -> Result<String> {
    let request = match &cli.command {
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
        Command::Show { what } => match what {
            Show::Neighbors => Request::Neighbors,
            Show::Bfd => Request::Bfd,
            Show::Paths => Request::Paths,
            Show::Health => Request::Health,
            Show::Routes => Request::Routes,
            Show::Services => Request::Services,
            Show::Nodes => Request::Nodes,
            Show::Flows {
                client,
                service,
                node,
                limit,
            } => Request::Flows(FlowFilter {
                client: *client,
                service: *service,
                node: node.clone(),
                limit: *limit,
            }),
            Show::Sids => Request::Sids,
            Show::Nexthops => Request::NextHops,
            Show::Stats => Request::Stats,
        },
        Command::Explain {
            client,
            service,
            protocol,
            port,
            source_port,
        } => Request::Explain(ExplainRequest {
            client: *client,
            service: *service,
            protocol: *protocol,
            port: *port,
            source_port: *source_port,
        }),
        Command::Drain { node } => Request::Drain { node: node.clone() },
        Command::Undrain { node } => Request::Undrain { node: node.clone() },
        Command::Load {
            service,
            in_flight,
            protocol,
            port,
        } => Request::Load(api::LoadRequest {
            service: crate::dataplane::ServiceAddr::new(*service, *protocol, *port)
                .context("give --protocol and --port together, or neither")?,
            in_flight: *in_flight,
        }),
    };
    let answer = api::ask(&cli.socket, &request)?;
    if cli.json {
        return Ok(serde_json::to_string_pretty(&answer)? + "\n");
    }
    Ok(match request {
        Request::Bfd => neighbors::bfd_table(&serde_json::from_value(answer)?),
        Request::Paths => paths::table(&serde_json::from_value::<Vec<api::PathView>>(answer)?),
        Request::Health => {
            health::table(&serde_json::from_value::<Vec<api::ServiceHealth>>(answer)?)
        }
        Request::Neighbors => neighbors::table(serde_json::from_value(answer)?),
        Request::Routes => routes::table(serde_json::from_value(answer)?),
        Request::Services => services_and_health(cli, &answer)?,
        Request::Nodes => nodes::table_and_warnings(serde_json::from_value(answer)?),
        Request::Flows(_) => flows::table(serde_json::from_value(answer)?),
        Request::Sids => sids::table(serde_json::from_value(answer)?),
        Request::NextHops => nexthops::table(serde_json::from_value(answer)?),
        Request::Stats => stats::table(&serde_json::from_value(answer)?),
        Request::Explain(_) => explain::text(&answer),
        Request::Load(load) => format!(
            "reported: {} requests in flight at {}\n",
            load.in_flight, load.service
        ),
        Request::Drain { .. } | Request::Undrain { .. } => {
            let drained: Vec<String> = serde_json::from_value(answer)?;
            format!(
                "drained: {}\n",
                if drained.is_empty() {
                    "(none)".to_owned()
                } else {
                    drained.join(", ")
                }
            )
        }
    })
}

/// The steered services, then (on a compute node) its own with their health checks.
fn services_and_health(cli: &Cli, explanations: &serde_json::Value) -> Result<String> {
    let checked: Vec<api::ServiceHealth> =
        serde_json::from_value(api::ask(&cli.socket, &Request::Health)?)?;
    let mut text = services::table(explanations);
    if !checked.is_empty() {
        text.push_str("served here\n");
        text.push_str(&health::table(&checked));
    }
    Ok(text)
}

/// A table's cells, row by row, as `columns` lays them out (for the tables' tests).
#[cfg(test)]
fn cells(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
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
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" "),
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

/// A measurement, or `unknown` when nothing measured it (`null` in the agent's JSON).
fn or_unknown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
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
