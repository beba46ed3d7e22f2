//! The agent steering real TCP traffic from its static configuration (no BGP): split by
//! capacity, load shift with open connections kept, drain, removal.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cpn_tests::steering_lab::{COMPUTES, RemoteChange, SteeringLab};

/// New flows split by capacity weights (1:2:3): each node's share of 600 new connections is
/// within 6 percentage points of its weight share.
const SPLIT_TOLERANCE: f64 = 0.06;

#[test]
fn new_flows_split_by_capacity() -> Result<()> {
    let lab = SteeringLab::start("split")?;
    // Longer than the policy's metric age (3 s): the services keep reporting, so the nodes
    // stay fresh and in the ring.
    std::thread::sleep(Duration::from_secs(4));
    let total = 600;
    let split = lab.split(total)?;
    eprintln!("split of {total} new connections: {split:?}");
    let capacity: f64 = COMPUTES.iter().map(|(_, c)| c).sum();
    for (name, c) in COMPUTES {
        let share = f64::from(split.get(name).copied().unwrap_or(0)) / f64::from(total);
        let want = c / capacity;
        ensure!(
            (share - want).abs() <= SPLIT_TOLERANCE,
            "{name}: share {share:.3}, weight share {want:.3} ({split:?})"
        );
    }
    Ok(())
}

#[test]
fn load_shifts_new_flows_and_keeps_open_ones() -> Result<()> {
    let mut lab = SteeringLab::start("shift")?;
    let (holder, held) = lab.hold(200)?;
    eprintln!("200 held connections: {held:?}");
    // compute3 (the biggest) reports 95 % of its requests in flight.
    lab.set_load("compute3", 95)?;
    let start = Instant::now();
    let shifted = loop {
        let split = lab.split(60)?;
        let busy = split.get("compute3").copied().unwrap_or(0);
        // Its weight falls from 1/2 to about 1/21: a handful of 60 at most.
        if busy <= 10 {
            break start.elapsed();
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "new flows did not move away from compute3: {split:?}"
        );
    };
    eprintln!("new flows moved away from the loaded node within {shifted:?}");
    // Let the holder check its connections a few times after the shift, however fast it was.
    std::thread::sleep(Duration::from_secs(1));
    let (broken, moved, rounds) = lab.finish_hold(holder)?;
    ensure!(
        rounds >= 2,
        "the holder checked its connections only {rounds} times"
    );
    ensure!(
        broken == 0 && moved == 0,
        "{broken} connections broke and {moved} moved to another node"
    );
    Ok(())
}

#[test]
fn drain_keeps_flows_and_removal_resteers_them() -> Result<()> {
    let mut lab = SteeringLab::start("drain")?;
    let (holder, held) = lab.hold(60)?;
    ensure!(
        held.get("compute1").copied().unwrap_or(0) > 0,
        "some held connections on compute1: {held:?}"
    );
    lab.reconfigure_ingress(&[("compute1", RemoteChange::Drained)])?;
    let start = Instant::now();
    loop {
        let split = lab.split(30)?;
        if !split.contains_key("compute1") {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "compute1 still gets new flows after drain: {split:?}"
        );
    }
    let (broken, moved, _) = lab.finish_hold(holder)?;
    ensure!(
        broken == 0 && moved == 0,
        "drain broke {broken} and moved {moved} existing connections"
    );

    // Removal: compute2 leaves the configuration; new flows avoid it at once.
    lab.reconfigure_ingress(&[
        ("compute1", RemoteChange::Drained),
        ("compute2", RemoteChange::Removed),
    ])?;
    let start = Instant::now();
    loop {
        let split = lab.split(30)?;
        if split.keys().all(|k| k == "compute3") {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "flows still reach removed or drained nodes: {split:?}"
        );
    }
    Ok(())
}

#[test]
fn agent_restart_under_live_traffic_loses_nothing() -> Result<()> {
    let mut lab = SteeringLab::start("restart")?;
    let (holder, _) = lab.hold(100)?;
    let pings = 300; // 6 s at 20 ms
    let out = lab.ping_in_background(pings)?;
    std::thread::sleep(Duration::from_secs(1));
    let gap = lab.restart_ingress()?;
    eprintln!("no ingress agent ran for {gap:?}");
    let summary = cpn_tests::lab::wait_for("ping to finish", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        Ok(text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .map(str::to_owned))
    })?;
    eprintln!("{summary}");
    ensure!(
        summary.starts_with(&format!("{pings} packets transmitted, {pings} received")),
        "pings lost: {summary}"
    );
    let (broken, moved, rounds) = lab.finish_hold(holder)?;
    ensure!(rounds >= 2, "held connections checked {rounds} times");
    ensure!(
        broken == 0 && moved == 0,
        "restart broke {broken} and moved {moved} connections"
    );
    Ok(())
}
