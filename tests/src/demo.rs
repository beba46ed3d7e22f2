//! The demo's story (`cargo xtask demo`): a lab from a topology file, real traffic from every
//! client, and four acts, each checked against what the traffic measured:
//!
//! 1. steady state: the node with the highest weight takes the largest share of new flows, and
//!    the ingress's own new flows (it is a client too, steered by `cpn_steer_tc_egress`) are
//!    answered;
//! 2. a load surge on that node: its share of new flows falls, its open connections stay;
//! 3. it fails: no new flow reaches it (or fails) later than [`FAILOVER_BOUND`] after;
//! 4. it recovers: it takes new flows again, and no new flow is lost on the way.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cpn_lab::CpnLab,
    lab::Node,
    traffic::{Held, Request, Traffic},
};

/// The longest a failed node may keep getting new flows: BFD declares it dead after
/// 3 × 100 ms, then BGP withdraws its routes and the ingress publishes a ring without it.
pub const FAILOVER_BOUND: Duration = Duration::from_secs(1);
/// New connections per second from each client.
const RATE_PER_CLIENT: u32 = 50;
/// Connections held open through the load surge.
const HELD: usize = 30;
/// How far back the live view's shares and rates look.
const WINDOW: Duration = Duration::from_secs(2);

/// The node whose own traffic is steered on its way out (`tc-egress`), not on arrival.
const HOST_CLIENT: &str = "ingress";

/// Set by Ctrl-C: the demo stops at the next refresh and cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// One act's outcome.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub act: &'static str,
    pub expected: String,
    pub observed: String,
    pub passed: bool,
}

/// One compute node as the live view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// Share of new flows in the window (0..=1).
    pub share: f64,
    pub requests_per_second: f64,
    pub latency_ms: Option<f64>,
    pub in_flight: Option<f64>,
    pub score: Option<f64>,
    pub weight: Option<f64>,
    /// Why the ingress gives it no new flows, if it does not.
    pub excluded: Option<String>,
}

/// A point of the recorded timeline: each node's share of new flows in one second.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub shares: BTreeMap<String, f64>,
}

/// Everything the demo measured.
#[derive(Debug, Default)]
pub struct Record {
    pub verdicts: Vec<Verdict>,
    /// (start, caption) of each act.
    pub acts: Vec<(Duration, &'static str)>,
    pub timeline: Vec<Sample>,
}

/// Runs the four acts of `act_length` each against the lab's first service.
pub fn run(lab: &mut CpnLab, act_length: Duration) -> Result<Record> {
    let service = lab.topology.services[0].clone();
    let target = SocketAddr::new(service.address, service.listen_port());
    // The clients, and the ingress itself: a host sending to the service (its first client
    // stays the one that holds connections).
    let clients = lab
        .topology
        .clients
        .iter()
        .map(|c| c.name.as_str())
        .chain([HOST_CLIENT])
        .map(|name| lab.lab.node(name).cloned())
        .collect::<Result<Vec<_>>>()?;
    let computes: Vec<String> = lab
        .topology
        .computes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut show = Show {
        traffic: Traffic::start(&clients, target, RATE_PER_CLIENT),
        lab,
        view: View::new(computes),
        record: Record::default(),
        act_length,
        clients,
        target,
    };
    let (preferred, steady_share) = show.steady()?;
    show.surge(&preferred, steady_share)?;
    show.failure(&preferred)?;
    show.recovery(&preferred)?;
    let Show {
        traffic,
        mut record,
        ..
    } = show;
    record.timeline = timeline(&traffic.finish());
    Ok(record)
}

/// The demo under way.
struct Show<'a> {
    lab: &'a mut CpnLab,
    traffic: Traffic,
    view: View,
    record: Record,
    act_length: Duration,
    clients: Vec<Node>,
    target: SocketAddr,
}

impl Show<'_> {
    /// Act 1; returns the preferred node and its share of new flows.
    fn steady(&mut self) -> Result<(String, f64)> {
        let start = self.play("steady state: new flows follow capacity, load and path latency")?;
        let steady = self.second_half(start);
        let preferred = heaviest(self.lab)?.context("the ingress has weighed no node yet")?;
        let largest = steady
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(n, _)| n.clone());
        self.record.verdicts.push(Verdict {
            act: "steady",
            expected: format!("{preferred} (highest weight) takes the largest share"),
            observed: describe(&steady),
            passed: largest.as_deref() == Some(preferred.as_str()),
        });
        self.record.verdicts.push(self.host_originated(start));
        let share = steady.get(&preferred).copied().unwrap_or(0.0);
        Ok((preferred, share))
    }

    /// The ingress's own new flows since `start`: all answered, by the compute nodes (its
    /// route to the service leads back to itself unless the flow is steered).
    fn host_originated(&self, start: Duration) -> Verdict {
        let own: Vec<Request> = self
            .traffic
            .between(start, self.traffic.now())
            .into_iter()
            .filter(|r| r.client == HOST_CLIENT)
            .collect();
        let answered = own.iter().filter(|r| r.node.is_some()).count();
        Verdict {
            act: "host",
            expected: format!(
                "the new flows {HOST_CLIENT} sends itself are steered (tc-egress) and answered \
                 (at least 99 %)"
            ),
            observed: format!(
                "{answered} of {} answered: {}",
                own.len(),
                describe(&shares(&own))
            ),
            passed: !own.is_empty() && answered * 100 >= own.len() * 99,
        }
    }

    /// Act 2: a load surge on the preferred node.
    fn surge(&mut self, preferred: &str, steady_share: f64) -> Result<()> {
        let mut held = Held::open(&self.clients[0], self.target, HELD)?;
        self.lab.set_load(preferred, 100)?;
        let start =
            self.play("load surge: the preferred node reports 100 % of its requests in flight")?;
        let surged = self.second_half(start);
        let held = held.close()?;
        let share = surged.get(preferred).copied().unwrap_or(0.0);
        self.record.verdicts.push(Verdict {
            act: "surge",
            expected: format!(
                "{preferred}'s share of new flows falls below 70 % of {:.0} %; held connections \
                 stay",
                steady_share * 100.0
            ),
            observed: format!(
                "{preferred} {:.0} %; {} held: {} moved, {} broken, {} requests answered",
                share * 100.0,
                held.connections,
                held.moved,
                held.broken,
                held.answered
            ),
            passed: share < 0.7 * steady_share && held.moved == 0 && held.broken == 0,
        });
        self.lab.set_load(preferred, 0)
    }

    /// Act 3: the preferred node crashes.
    fn failure(&mut self, preferred: &str) -> Result<()> {
        self.lab.fail(preferred)?;
        let failed_at = self.traffic.now();
        self.play("failure: the preferred node crashes (link down, agent killed)")?;
        let after = self.traffic.between(failed_at, self.traffic.now());
        let last_hit = after
            .iter()
            .filter(|r| r.disrupted() || r.node.as_deref() == Some(preferred))
            .map(|r| r.at.saturating_sub(failed_at))
            .max()
            .unwrap_or_default();
        self.record.verdicts.push(Verdict {
            act: "failure",
            expected: format!(
                "no new flow reaches {preferred} or fails later than {:.1} s after",
                FAILOVER_BOUND.as_secs_f64()
            ),
            observed: format!(
                "last one {:.2} s after the failure; {} of {} new flows disrupted",
                last_hit.as_secs_f64(),
                after.iter().filter(|r| r.disrupted()).count(),
                after.len()
            ),
            passed: last_hit <= FAILOVER_BOUND,
        });
        Ok(())
    }

    /// Act 4: the preferred node comes back.
    fn recovery(&mut self, preferred: &str) -> Result<()> {
        self.lab.recover(preferred)?;
        let start = self.play("recovery: the node is back (link up, agent restarted)")?;
        let recovered = self.second_half(start);
        let back = recovered.get(preferred).copied().unwrap_or(0.0);
        let during = self.traffic.between(start, self.traffic.now());
        let first_back = during
            .iter()
            .find(|r| r.node.as_deref() == Some(preferred))
            .map(|r| r.at.saturating_sub(start));
        let disrupted: Vec<&Request> = during.iter().filter(|r| r.disrupted()).collect();
        self.record.verdicts.push(Verdict {
            act: "recovery",
            expected: format!("{preferred} takes new flows again, none disrupted"),
            observed: format!(
                "{}; first new flow on {preferred} {} s after the restart; {} of {} new flows \
                 disrupted{}",
                describe(&recovered),
                first_back.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
                disrupted.len(),
                during.len(),
                describe_disrupted(&disrupted, start),
            ),
            passed: back > 0.0 && disrupted.is_empty(),
        });
        Ok(())
    }

    /// Each node's share of the new flows in the second half of the act that began at `start`.
    fn second_half(&self, start: Duration) -> BTreeMap<String, f64> {
        shares(
            &self
                .traffic
                .between(start + self.act_length / 2, self.traffic.now()),
        )
    }

    /// Plays one act: refreshes the view every half second; returns when it began.
    fn play(&mut self, caption: &'static str) -> Result<Duration> {
        let start = self.traffic.now();
        self.record.acts.push((start, caption));
        self.view.caption(caption);
        while self.traffic.now() < start + self.act_length {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(500));
            let now = self.traffic.now();
            let recent = self.traffic.between(now.saturating_sub(WINDOW), now);
            let rows = nodes(self.lab, &self.view.computes, &recent);
            self.view.show(&rows, now);
        }
        Ok(start)
    }
}

/// Each node's share of new flows, second by second.
pub fn timeline(requests: &[Request]) -> Vec<Sample> {
    let end = requests.iter().map(|r| r.at).max().unwrap_or_default();
    let seconds = end.as_secs();
    (0..seconds)
        .map(|s| {
            let from = Duration::from_secs(s);
            let to = from + Duration::from_secs(1);
            let in_second: Vec<Request> = requests
                .iter()
                .filter(|r| r.at >= from && r.at < to)
                .cloned()
                .collect();
            Sample {
                at: to,
                shares: shares(&in_second),
            }
        })
        .collect()
}

/// Each node's share of the requests that reached a node.
pub fn shares(requests: &[Request]) -> BTreeMap<String, f64> {
    let answered: Vec<&str> = requests.iter().filter_map(|r| r.node.as_deref()).collect();
    let mut out = BTreeMap::new();
    for node in &answered {
        *out.entry((*node).to_owned()).or_insert(0.0) += 1.0;
    }
    let total = answered.len().max(1);
    for share in out.values_mut() {
        *share /= f64::from(u32::try_from(total).unwrap_or(u32::MAX));
    }
    out
}

/// The disrupted requests, each with when it started (since `since`), who sent it, who
/// answered and how long it took: what tells a lost SYN from a slow service.
fn describe_disrupted(requests: &[&Request], since: Duration) -> String {
    let mut text = String::new();
    for r in requests {
        let _ = write!(
            text,
            "\n               {} at +{:.2} s: {} after {:.2} s",
            r.client,
            r.at.saturating_sub(since).as_secs_f64(),
            r.node.as_deref().unwrap_or("no answer"),
            r.took.as_secs_f64()
        );
    }
    text
}

fn describe(shares: &BTreeMap<String, f64>) -> String {
    shares
        .iter()
        .map(|(n, s)| format!("{n} {:.0} %", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The node the ingress gives the highest weight for the first service.
fn heaviest(lab: &CpnLab) -> Result<Option<String>> {
    let explanations = lab.explanations()?;
    Ok(evaluations(&explanations)
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["weight"].as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name))
}

fn evaluations(explanations: &serde_json::Value) -> Vec<serde_json::Value> {
    explanations[0]["decision"]["evaluations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The live view's rows: traffic measured by the clients, scores from the ingress.
fn nodes(lab: &CpnLab, computes: &[String], recent: &[Request]) -> Vec<NodeView> {
    let explanations = lab.explanations().unwrap_or_default();
    let evaluations = evaluations(&explanations);
    let shares = shares(recent);
    computes
        .iter()
        .map(|name| {
            let e = evaluations
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .cloned()
                .unwrap_or_default();
            let answered = recent
                .iter()
                .filter(|r| r.node.as_deref() == Some(name))
                .count();
            let latency = &e["path"]["latency"];
            NodeView {
                name: name.clone(),
                share: shares.get(name).copied().unwrap_or(0.0),
                requests_per_second: f64::from(u32::try_from(answered).unwrap_or(u32::MAX))
                    / WINDOW.as_secs_f64(),
                latency_ms: latency["secs"]
                    .as_f64()
                    .zip(latency["nanos"].as_f64())
                    .map(|(s, n)| s * 1e3 + n / 1e6),
                in_flight: e["metrics"]["in_flight"]["value"].as_f64(),
                score: e["scores"]["l2"].as_f64(),
                weight: e["weight"].as_f64(),
                excluded: e
                    .get("excluded")
                    .filter(|x| !x.is_null())
                    .map(exclusion_name),
            }
        })
        .collect()
}

fn exclusion_name(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        other => other.to_string(),
    }
}

/// The live table: redrawn in place on a terminal, plain lines once a second otherwise.
#[derive(Debug)]
struct View {
    computes: Vec<String>,
    terminal: bool,
    caption: &'static str,
    last_plain: Option<Duration>,
}

impl View {
    fn new(computes: Vec<String>) -> Self {
        Self {
            computes,
            terminal: std::io::stdout().is_terminal(),
            caption: "",
            last_plain: None,
        }
    }

    fn caption(&mut self, caption: &'static str) {
        self.caption = caption;
        if !self.terminal {
            println!("[demo] act: {caption}");
        }
    }

    fn show(&mut self, nodes: &[NodeView], now: Duration) {
        if self.terminal {
            let mut out = String::from("\x1b[H\x1b[J");
            let _ = writeln!(
                out,
                "cpn demo  t = {:5.1} s   {}\n",
                now.as_secs_f64(),
                self.caption
            );
            out.push_str(&table(nodes));
            out.push_str("\n(Ctrl-C stops the demo and removes the lab)\n");
            print!("{out}");
            let _ = std::io::stdout().flush();
        } else if self
            .last_plain
            .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            self.last_plain = Some(now);
            let line = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} {:.0}% {:.0}/s w={}",
                        n.name,
                        n.share * 100.0,
                        n.requests_per_second,
                        n.weight.map_or("-".into(), |w| format!("{w:.2}"))
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ");
            println!("[demo] t={:5.1}s {line}", now.as_secs_f64());
        }
    }
}

/// The per-node table of the live view.
pub fn table(nodes: &[NodeView]) -> String {
    let mut out = format!(
        "{:<10} {:>11} {:>7} {:>11} {:>10} {:>6} {:>7}  {}\n",
        "node", "new flows", "req/s", "latency ms", "in flight", "score", "weight", "note"
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for n in nodes {
        let _ = writeln!(
            out,
            "{:<10} {:>10.0}% {:>7.0} {:>11} {:>10} {:>6} {:>7}  {}",
            n.name,
            n.share * 100.0,
            n.requests_per_second,
            opt(n.latency_ms, 1),
            opt(n.in_flight, 0),
            opt(n.score, 2),
            opt(n.weight, 2),
            n.excluded.as_deref().unwrap_or("")
        );
    }
    out
}

/// The closing summary: one line per act.
pub fn summary(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<4} {:<9} expected: {}\n               observed: {}",
            if v.passed { "ok" } else { "FAIL" },
            v.act,
            v.expected,
            v.observed
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(node: Option<&str>) -> Request {
        Request {
            at: Duration::ZERO,
            client: "client1".into(),
            node: node.map(str::to_owned),
            took: Duration::from_millis(1),
            load: None,
        }
    }

    #[test]
    fn shares_count_answered_requests_only() {
        let requests = [
            request(Some("a")),
            request(Some("a")),
            request(Some("b")),
            request(None),
        ];
        let s = shares(&requests);
        assert!((s["a"] - 2.0 / 3.0).abs() < 1e-9);
        assert!((s["b"] - 1.0 / 3.0).abs() < 1e-9);
        assert!(shares(&[]).is_empty());
    }

    #[test]
    fn the_table_shows_what_is_unknown_as_a_dash() {
        let text = table(&[NodeView {
            name: "edge1".into(),
            share: 0.5,
            requests_per_second: 12.0,
            ..NodeView::default()
        }]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("edge1"), "{row}");
        assert!(row.contains("50%") && row.contains(" - "), "{row}");
    }
}
