//! `cargo xtask demo`: a lab of network namespaces where cpn agents steer real traffic by
//! compute load and path latency, shown live, act by act (see `cpn_tests::demo`). Exits 0 only
//! if every act showed the expected steering.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use cpn_tests::{
    chart,
    cpn_lab::{CpnLab, Topology},
    demo::{self, INTERRUPTED},
};

/// The lab `cargo xtask demo` runs by default.
const DEMO_TOPOLOGY: &str = include_str!("../../topologies/demo.toml");

#[derive(Debug, Parser)]
#[command(
    name = "cpn-demo",
    about = "A live lab of cpn agents steering real traffic"
)]
struct Args {
    /// Run your own lab (see tests/topologies/demo.toml for the format).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// After the acts, keep the lab running for cpnctl and bpftool until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Also write a PNG chart of each node's share of new flows (and the summary) to DIR.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Length of each act, in seconds.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(4..=600))]
    act_seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed)) {
        eprintln!("demo: cannot catch Ctrl-C ({error}); the lab is still removed at the end");
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("[demo] some acts did not show the expected steering (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("[demo] failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    let (source, text) = match &args.topology {
        Some(path) => (
            path.clone(),
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the topology {}", path.display()))?,
        ),
        None => (
            PathBuf::from("tests/topologies/demo.toml"),
            DEMO_TOPOLOGY.to_owned(),
        ),
    };
    let topology = Topology::parse(&source, &text)?;
    say(&format!(
        "building the lab from {}: {} clients, ingress, transit, {} compute nodes; an agent on \
         every node, speaking BGP",
        source.display(),
        topology.clients.len(),
        topology.computes.len()
    ));
    let started = Instant::now();
    let mut lab = CpnLab::start("demo", topology)?;
    say(&format!(
        "every service answers through the ingress ({:.1} s); driving traffic from every client",
        started.elapsed().as_secs_f64()
    ));
    let record = match demo::run(&mut lab, Duration::from_secs(args.act_seconds)) {
        Ok(record) => record,
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
            anyhow::bail!("interrupted; the lab is removed")
        }
        Err(error) => return Err(error.context(format!("agent logs:\n{}", tail(&lab.logs())))),
    };
    let summary = demo::summary(&record.verdicts);
    println!("\n[demo] summary\n{summary}");
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir)?;
        let nodes: Vec<String> = lab
            .topology
            .computes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let png = dir.join("demo.png");
        chart::draw(&record, &nodes, &png)?;
        std::fs::write(dir.join("summary.txt"), &summary)?;
        say(&format!("chart written to {}", png.display()));
    }
    if args.keep {
        keep(&lab);
    }
    say("removing the lab (agents stopped, namespaces and pins removed)");
    Ok(record.verdicts.iter().all(|v| v.passed))
}

/// Waits for Ctrl-C with the lab up, saying how to look at it.
fn keep(lab: &CpnLab) {
    say("the lab stays up until Ctrl-C. Look at it from another terminal:");
    for node in ["ingress", "transit"] {
        if let Ok(n) = lab.lab.node(node) {
            say(&format!(
                "  {node}: ip netns exec {} ip -6 route show proto bgp",
                n.netns()
            ));
        }
    }
    if let Some(agent) = lab.agents.get("ingress") {
        say(&format!(
            "  ingress maps: bpftool map dump pinned {}/nodes",
            agent.pin_dir.display()
        ));
        say(&format!(
            "  ingress decisions: {}",
            lab.lab.workdir().join("explain.json").display()
        ));
    }
    while !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last lines of the agents' logs, for an error message.
fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn say(line: &str) {
    println!("[demo] {line}");
}
