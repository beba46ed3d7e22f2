//! End to end with agents only (no static nodes, no static routes to locators): compute nodes
//! advertise their service and locator in BGP to a transit agent, which passes them on to the
//! ingress (distributed mode, one AS per node).
//!
//! ```text
//!   client ── ingress ── transit ─┬─ compute1 (cpu 1e12)
//!                                 ├─ compute2 (cpu 2e12)
//!                                 └─ compute3 (cpu 1e12)
//! ```

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cpn_tests::{
    bgp_lab::{self, bgp_section},
    lab::{Agent, Lab, wait_for},
    steering_lab::{MAX_IN_FLIGHT, VIP, split, start_name_server},
};

const COMPUTES: [(u32, f64); 3] = [(1, 1e12), (2, 2e12), (3, 1e12)];
const TRANSIT_AS: u32 = 4_200_000_050;
const INGRESS_AS: u32 = 4_200_000_100;

/// Compute node `n`, an eBGP neighbor of the transit.
fn compute_config(n: u32, capacity: f64, inflight: &std::path::Path) -> String {
    let bgp = bgp_section(
        4_200_000_000 + n,
        &format!("10.0.0.{n}"),
        &[(&format!("2001:db8:1{n}::1"), TRANSIT_AS, "bfd = {}\n")],
    );
    bgp_lab::compute_config(n, capacity, inflight, &bgp)
}

fn transit_config() -> String {
    let mut text = format!(
        "[node]\nname = \"transit\"\nroles = [\"transit\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
         [bgp]\nasn = {TRANSIT_AS}\nrouter_id = \"10.0.0.50\"\nhold_time_s = 3\n\
         next_hop = \"2001:db8:20::2\"\n\n\
         [[bgp.neighbor]]\naddress = \"2001:db8:20::1\"\nasn = {INGRESS_AS}\npassive = true\n\
         bfd = {{}}\n"
    );
    for (n, _) in COMPUTES {
        let _ = write!(
            text,
            "\n[[bgp.neighbor]]\naddress = \"2001:db8:1{n}::2\"\nasn = {}\npassive = true\n\
             bfd = {{}}\n",
            4_200_000_000 + n
        );
    }
    text
}

fn ingress_config() -> String {
    format!(
        "[node]\nname = \"ingress\"\nroles = [\"ingress\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"steer\"\n\n\
         [srv6]\nsource = \"2001:db8:1::2\"\n\n\
         [[policy]]\nservice = \"{VIP}\"\nkind = \"cpu\"\nobjective = {{ latency = 0, load = 1 }}\n\n\
         [selection]\ninterval_ms = 200\nmin_dwell_ms = 500\nmax_churn = 1.0\n\n\
         [bgp]\nasn = {INGRESS_AS}\nrouter_id = \"10.0.0.100\"\nhold_time_s = 3\n\n\
         [[bgp.neighbor]]\naddress = \"2001:db8:20::2\"\nasn = {TRANSIT_AS}\nbfd = {{}}\n"
    )
}

struct Lab5 {
    lab: Lab,
    agents: BTreeMap<String, Agent>,
    knobs: BTreeMap<String, PathBuf>,
    inflight: BTreeMap<String, PathBuf>,
}

impl Lab5 {
    fn start() -> Result<Self> {
        let mut builder = Lab::builder("bgp-e2e")
            .node("client")
            .node("ingress")
            .node("transit")
            .link(("client", "eth0"), ("ingress", "eth0"))
            .link(("ingress", "eth1"), ("transit", "eth0"));
        for (n, _) in COMPUTES {
            let compute = format!("compute{n}");
            builder = builder
                .node(&compute)
                .link(("transit", &format!("eth{n}")), (&compute, "eth0"));
        }
        let mut lab = builder.build()?;
        let client = lab.node("client")?;
        client.add_address("eth0", "2001:db8:1::1/64")?;
        client.add_route(&["default", "via", "2001:db8:1::2"])?;
        client.checksum_in_software("eth0")?;
        let ingress = lab.node("ingress")?;
        ingress.add_address("eth0", "2001:db8:1::2/64")?;
        ingress.add_address("eth1", "2001:db8:20::1/64")?;
        ingress.enable_forwarding()?;
        let transit = lab.node("transit")?;
        transit.add_address("eth0", "2001:db8:20::2/64")?;
        transit.add_route(&["default", "via", "2001:db8:20::1"])?;
        transit.enable_forwarding()?;
        for (n, _) in COMPUTES {
            transit.add_address(&format!("eth{n}"), &format!("2001:db8:1{n}::1/64"))?;
            let node = lab.node(&format!("compute{n}"))?;
            node.add_address("eth0", &format!("2001:db8:1{n}::2/64"))?;
            node.add_address("lo", &format!("{VIP}/128"))?;
            node.add_route(&["default", "via", &format!("2001:db8:1{n}::1")])?;
        }
        let mut agents = BTreeMap::new();
        agents.insert(
            "ingress".to_owned(),
            lab.start_agent("ingress", &ingress_config())?,
        );
        agents.insert(
            "transit".to_owned(),
            lab.start_agent("transit", &transit_config())?,
        );
        let mut knobs = BTreeMap::new();
        let mut inflight = BTreeMap::new();
        for (n, capacity) in COMPUTES {
            let compute = format!("compute{n}");
            let work = lab.workdir().to_path_buf();
            let requests = work.join(format!("{compute}.inflight"));
            let knob = work.join(format!("{compute}.load"));
            fs::write(&knob, "0\n")?;
            let config = compute_config(n, capacity, &requests);
            agents.insert(compute.clone(), lab.start_agent(&compute, &config)?);
            start_name_server(&mut lab, &compute, &requests, &knob)?;
            knobs.insert(compute.clone(), knob);
            inflight.insert(compute, requests);
        }
        Ok(Self {
            lab,
            agents,
            knobs,
            inflight,
        })
    }

    fn split(&self, count: u32) -> Result<BTreeMap<String, u32>> {
        split(&self.lab, count)
    }

    /// Waits until 10 new flows satisfy `want`; returns how long it took (including the
    /// measuring client's own run).
    fn wait_split(
        &self,
        what: &str,
        want: impl Fn(&BTreeMap<String, u32>) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        wait_for(what, Duration::from_secs(20), || {
            let s = self.split(10).unwrap_or_default();
            Ok(want(&s).then_some(()))
        })
        .with_context(|| self.logs())?;
        Ok(started.elapsed())
    }

    fn logs(&self) -> String {
        self.lab.logs(self.agents.keys().map(String::as_str))
    }
}

#[test]
fn agents_only_steer_by_load_fail_over_and_recover() -> Result<()> {
    let mut lab = Lab5::start()?;
    // Every node is learned through the transit, routes to the locators included.
    lab.wait_split("flows on all three compute nodes", |s| s.len() == 3)?;
    let s = lab.split(400)?;
    eprintln!("split of 400: {s:?}");
    let share = |s: &BTreeMap<String, u32>, n: &str| {
        f64::from(s.get(n).copied().unwrap_or(0)) / f64::from(s.values().sum::<u32>().max(1))
    };
    ensure!(
        share(&s, "compute2") > share(&s, "compute1")
            && share(&s, "compute2") > share(&s, "compute3"),
        "the largest node (compute2, half the capacity) takes the most new flows: {s:?}"
    );

    // compute2 gets busy (90 % of its requests in flight): new flows shift away from it.
    fs::write(
        &lab.knobs["compute2"],
        format!("{}\n", MAX_IN_FLIGHT * 9 / 10),
    )?;
    let shifted = lab.wait_split("new flows to shift off the busy compute2", |s| {
        s.values().sum::<u32>() == 10 && share(s, "compute2") < 0.2
    })?;
    eprintln!("load shift within {shifted:?}");
    fs::write(&lab.knobs["compute2"], "0\n")?;

    // compute1's agent dies and its host drops off the network: traffic moves.
    let agent = lab.agents.remove("compute1").context("compute1")?;
    eprintln!("stopping compute1 at {:?}", std::time::SystemTime::now());
    lab.lab.stop(agent.pid)?;
    lab.lab.node("compute1")?.ip("link set eth0 down")?;
    let failover = lab.wait_split("new flows to leave compute1", |s| {
        s.values().sum::<u32>() == 10 && !s.contains_key("compute1")
    })?;
    eprintln!("failover within {failover:?}");
    // The ingress's own record of when its ring dropped compute1.
    let log = fs::read_to_string(lab.lab.workdir().join("ingress.log"))?;
    for line in log.lines().filter(|l| l.contains("new target ring")) {
        eprintln!("ingress: {line}");
    }

    // It comes back: link up, agent restarted; new flows reach it again.
    // (IPv6 drops the link's addresses and routes when it goes down.)
    let compute1 = lab.lab.node("compute1")?;
    compute1.ip("link set eth0 up")?;
    compute1.ip("-6 addr replace 2001:db8:11::2/64 dev eth0 nodad")?;
    compute1.ip("-6 route replace default via 2001:db8:11::1")?;
    let config = compute_config(1, 1e12, &lab.inflight["compute1"]);
    let agent = lab.lab.start_agent("compute1", &config)?;
    lab.agents.insert("compute1".to_owned(), agent);
    let back = lab.wait_split("new flows to reach compute1 again", |s| {
        s.contains_key("compute1")
    })?;
    eprintln!("recovery within {back:?}");
    Ok(())
}
