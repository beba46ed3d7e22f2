//! `cargo xtask demo`: a network-namespace lab with cpn agents, real traffic, and the data-plane
//! counters read back from the pinned maps.
//!
//! ```text
//!   client ──eth0───eth0── ingress ──eth1───eth0── compute
//!                          cpn_steer              cpn_endpoint
//! ```
//! At this stage the programs parse and count; SRv6 steering arrives with the data-plane issue.

use std::process::ExitCode;

use anyhow::{Context as _, Result, ensure};
use cpn_agent::dataplane::{Program, ProtoStats, pinned_proto_stats};
use cpn_common::stats::ProtoCounter;
use cpn_tests::lab::{Agent, Lab};

const PINGS: u64 = 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    say("building the lab: client -- ingress -- compute (network namespaces, veth links)");
    let mut lab = Lab::builder("demo")
        .node("client")
        .node("ingress")
        .node("compute")
        .link(("client", "eth0"), ("ingress", "eth0"))
        .link(("ingress", "eth1"), ("compute", "eth0"))
        .build()?;
    address(&lab, "client", "eth0", "2001:db8:1::1/64", "10.0.1.1/24")?;
    address(&lab, "ingress", "eth0", "2001:db8:1::2/64", "10.0.1.2/24")?;
    address(&lab, "ingress", "eth1", "2001:db8:2::1/64", "10.0.2.1/24")?;
    address(&lab, "compute", "eth0", "2001:db8:2::2/64", "10.0.2.2/24")?;
    lab.node("ingress")?.enable_forwarding()?;
    for (node, v6, v4) in [
        ("client", "2001:db8:1::2", "10.0.1.2"),
        ("compute", "2001:db8:2::1", "10.0.2.1"),
    ] {
        lab.node(node)?.add_route(&["default", "via", v6])?;
        lab.node(node)?.add_route(&["default", "via", v4])?;
    }

    say("starting cpn-agent on ingress (cpn_steer on eth0) and compute (cpn_endpoint on eth0)");
    let ingress = lab.start_agent("ingress", &agent_config("ingress", "steer"))?;
    let compute = lab.start_agent("compute", &agent_config("compute", "endpoint"))?;
    let before = [
        read(&ingress, Program::Steer)?,
        read(&compute, Program::Endpoint)?,
    ];

    say(&format!(
        "client pings compute through ingress: {PINGS} IPv6 and {PINGS} IPv4 echo requests"
    ));
    let client = lab.node("client")?;
    let count = PINGS.to_string();
    for target in ["2001:db8:2::2", "10.0.2.2"] {
        let out = client.run(&["ping", "-c", &count, "-i", "0.02", "-W", "2", target])?;
        let summary = String::from_utf8_lossy(&out.stdout);
        let line = summary
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("");
        say(&format!("  ping {target}: {line}"));
    }

    let after = [
        read(&ingress, Program::Steer)?,
        read(&compute, Program::Endpoint)?,
    ];
    say("data-plane counters read from the pinned maps (packets seen by each XDP program):");
    print_table(&[
        ("ingress", Program::Steer, &before[0], &after[0]),
        ("compute", Program::Endpoint, &before[1], &after[1]),
    ]);
    println!();
    say(&format!(
        "inspect them yourself while an agent runs: bpftool map dump pinned {}",
        ingress
            .pin_dir
            .join(Program::Steer.proto_stats_map())
            .display()
    ));

    for (node, program, b, a) in [
        ("ingress", Program::Steer, &before[0], &after[0]),
        ("compute", Program::Endpoint, &before[1], &after[1]),
    ] {
        for proto in [ProtoCounter::Ipv6, ProtoCounter::Ipv4] {
            let seen = a.get(proto).packets - b.get(proto).packets;
            ensure!(
                seen >= PINGS,
                "{node}'s {program} counted {seen} {} packets, expected at least {PINGS}",
                proto.name()
            );
        }
    }
    say("every echo request crossed both XDP programs and was counted: ok");
    say("cleaning up (agents stopped, namespaces and pins removed)");
    Ok(())
}

fn address(lab: &Lab, node: &str, interface: &str, v6: &str, v4: &str) -> Result<()> {
    let node = lab.node(node)?;
    node.add_address(interface, v6)?;
    node.add_address(interface, v4)
}

fn agent_config(node: &str, program: &str) -> String {
    format!(
        "[node]\nname = \"{node}\"\n\n[[interface]]\nname = \"eth0\"\nprogram = \"{program}\"\n"
    )
}

fn read(agent: &Agent, program: Program) -> Result<ProtoStats> {
    pinned_proto_stats(&agent.pin_dir, program)
        .with_context(|| format!("reading {program}'s counters"))
}

fn print_table(rows: &[(&str, Program, &ProtoStats, &ProtoStats)]) {
    print!("  {:<9} {:<13}", "node", "program");
    for proto in ProtoCounter::ALL {
        print!("  {}", proto.name());
    }
    println!();
    for (node, program, before, after) in rows {
        print!("  {node:<9} {:<13}", program.name());
        for proto in ProtoCounter::ALL {
            let width = proto.name().len();
            let packets = after.get(proto).packets - before.get(proto).packets;
            print!("  {packets:>width$}");
        }
        println!();
    }
}

fn say(line: &str) {
    println!("[demo] {line}");
}
