//! The demo's four acts on its own topology, as `cargo xtask demo` plays them: every act, and
//! the ingress's own traffic (steered by `tc-egress`), must show the expected steering,
//! measured on real traffic (see `cpn_tests::demo`).

use std::time::Duration;

use anyhow::{Result, ensure};
use cpn_tests::{
    cpn_lab::{CpnLab, Topology},
    demo,
};

#[test]
fn the_demo_shows_steering_surge_failover_and_recovery() -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml");
    let topology = Topology::parse(&path, &std::fs::read_to_string(&path)?)?;
    let mut lab = CpnLab::start("demo-test", topology)?;
    let record = demo::run(&mut lab, Duration::from_secs(6))?;
    let summary = demo::summary(&record.verdicts);
    eprintln!("{summary}");
    let checks: Vec<&str> = record.verdicts.iter().map(|v| v.act).collect();
    ensure!(
        checks == ["steady", "host", "surge", "failure", "recovery"],
        "four acts and the host's own traffic: {summary}"
    );
    ensure!(
        record.verdicts.iter().all(|v| v.passed),
        "every act shows the expected steering:\n{summary}\n{}",
        lab.logs()
    );
    Ok(())
}
