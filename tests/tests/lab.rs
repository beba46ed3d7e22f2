//! Network-namespace tests: the agent attached in a real topology, real traffic, counters read
//! back from the pinned maps.

use std::{fs, time::Duration};

use anyhow::Result;
use cpn_agent::dataplane::{Program, pinned_proto_stats};
use cpn_common::stats::ProtoCounter;
use cpn_tests::lab::{Lab, wait_for};

const PINGS: u64 = 5;

fn two_nodes(name: &str) -> Result<Lab> {
    let lab = Lab::builder(name)
        .node("client")
        .node("server")
        .link(("client", "eth0"), ("server", "eth0"))
        .build()?;
    lab.node("client")?
        .add_address("eth0", "2001:db8:1::1/64")?;
    lab.node("client")?.add_address("eth0", "192.0.2.1/24")?;
    lab.node("server")?
        .add_address("eth0", "2001:db8:1::2/64")?;
    lab.node("server")?.add_address("eth0", "192.0.2.2/24")?;
    Ok(lab)
}

#[test]
fn ping_through_an_attached_agent_moves_its_pinned_counters() -> Result<()> {
    let mut lab = two_nodes("ping")?;
    let agent = lab.start_agent(
        "server",
        "[node]\nname = \"server\"\n\n[[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n",
    )?;
    let server = lab.node("server")?;
    let xdp = String::from_utf8(server.run(&["ip", "link", "show", "eth0"])?.stdout)?;
    assert!(
        xdp.contains("prog/xdp") && xdp.contains("cpn_endpoint"),
        "{xdp}"
    );

    let client = lab.node("client")?;
    let count = PINGS.to_string();
    client.run(&[
        "ping",
        "-6",
        "-c",
        &count,
        "-i",
        "0.05",
        "-W",
        "2",
        "2001:db8:1::2",
    ])?;
    client.run(&[
        "ping",
        "-4",
        "-c",
        &count,
        "-i",
        "0.05",
        "-W",
        "2",
        "192.0.2.2",
    ])?;

    let stats = pinned_proto_stats(&agent.pin_dir, Program::Endpoint)?;
    // Echo requests plus neighbour discovery / ARP: at least the pings, and ARP seen.
    assert!(stats.get(ProtoCounter::Ipv6).packets >= PINGS, "{stats:?}");
    assert!(stats.get(ProtoCounter::Ipv4).packets >= PINGS, "{stats:?}");
    assert!(stats.get(ProtoCounter::Arp).packets >= 1, "{stats:?}");
    assert_eq!(stats.get(ProtoCounter::Malformed).packets, 0, "{stats:?}");

    // bpftool pretty-prints the pinned map through its BTF.
    let map = agent.pin_dir.join(cpn_common::maps::ENDPOINT_PROTO_STATS);
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&map)
        .output()?;
    let dump = String::from_utf8(dump.stdout)?;
    assert!(
        dump.contains("\"packets\"") && dump.contains("\"bytes\""),
        "{dump}"
    );

    // SIGTERM: clean exit, program detached, maps stay pinned and readable without the agent.
    let exit = lab.stop(agent.pid)?;
    assert!(
        exit.success(),
        "agent exit: {exit}\n{}",
        fs::read_to_string(&agent.log)?
    );
    let link = String::from_utf8(
        lab.node("server")?
            .run(&["ip", "link", "show", "eth0"])?
            .stdout,
    )?;
    assert!(
        !link.contains("prog/xdp"),
        "still attached after SIGTERM: {link}"
    );
    assert_eq!(
        pinned_proto_stats(&agent.pin_dir, Program::Endpoint)?,
        stats
    );
    Ok(())
}

#[test]
fn attach_failure_names_the_interface_and_the_mode() -> Result<()> {
    let mut lab = two_nodes("attach-error")?;
    let error = lab
        .start_agent(
            "server",
            "[node]\nname = \"server\"\n\n[[interface]]\nname = \"eth9\"\nprogram = \"steer\"\n",
        )
        .expect_err("eth9 does not exist");
    let text = format!("{error:#}");
    assert!(
        text.contains("interface `eth9`") && text.contains("native mode"),
        "{text}"
    );
    Ok(())
}

#[test]
fn lab_removes_its_namespaces_on_drop_even_after_a_panic() -> Result<()> {
    let netns = std::panic::catch_unwind(|| {
        let lab = two_nodes("panic").expect("build the lab");
        let netns = lab.node("client").expect("client").netns().to_owned();
        assert!(std::path::Path::new("/run/netns").join(&netns).exists());
        std::panic::panic_any(netns);
    })
    .expect_err("the closure panics")
    .downcast::<String>()
    .expect("the panic carries the namespace name");
    wait_for("the namespace to disappear", Duration::from_secs(5), || {
        Ok((!std::path::Path::new("/run/netns")
            .join(netns.as_str())
            .exists())
        .then_some(()))
    })
}

#[test]
fn multi_queue_link_gives_both_ends_the_queues() -> Result<()> {
    let lab = Lab::builder("queues")
        .node("a")
        .node("b")
        .multi_queue_link(("a", "eth0"), ("b", "eth0"), 2)
        .build()?;
    for node in ["a", "b"] {
        let out = lab.node(node)?.run(&["ethtool", "-l", "eth0"])?;
        let text = String::from_utf8(out.stdout)?;
        let current = text
            .split("Current hardware settings:")
            .nth(1)
            .unwrap_or_default();
        assert!(
            current.contains("RX:\t\t2") && current.contains("TX:\t\t2"),
            "{node}: {text}"
        );
    }
    Ok(())
}

/// The kernel deletes every route over an interface that goes down; the agent puts the
/// routes its configuration asks for back (the soak's link flaps found a SID route gone for
/// good after one).
#[test]
fn a_sid_route_the_kernel_deleted_with_its_link_comes_back() -> Result<()> {
    let mut lab = two_nodes("sid-route-kept")?;
    let _agent = lab.start_agent(
        "server",
        "[node]\nname = \"server\"\nroles = [\"compute\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\nlocator = \"fc00:9::/32\"\n\n\
         [[srv6.sid]]\nsid = \"fc00:9::d6\"\nbehavior = \"End.DT46\"\n",
    )?;
    let server = lab.node("server")?;
    let sid_route = || -> Result<String> {
        let out = server.run(&["ip", "-6", "route", "show", "fc00:9::d6/128"])?;
        Ok(String::from_utf8(out.stdout)?)
    };
    wait_for("the agent's SID route", Duration::from_secs(5), || {
        Ok(sid_route()?.contains("seg6local").then_some(()))
    })?;
    server.ip("link set eth0 down")?;
    server.ip("link set eth0 up")?;
    wait_for(
        "the SID route back after the link flap",
        Duration::from_secs(5),
        || Ok(sid_route()?.contains("seg6local").then_some(())),
    )?;
    Ok(())
}
