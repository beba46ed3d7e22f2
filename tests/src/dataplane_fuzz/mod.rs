//! The data-plane fuzzer: generated and mutated packets ([`packets`]) through `cpn_steer`, its
//! TC variant and `cpn_endpoint` with `BPF_PROG_TEST_RUN`, on maps as an agent fills them
//! ([`world`]), every outcome checked against the invariants of [`check`].
//!
//! Run by the test `dataplane_fuzz_*` (CI) and by `cargo xtask fuzz --dataplane --packets N`.

pub mod check;
pub mod packets;
pub mod world;

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use cpn_agent::dataplane::{Hook, Program};
use cpn_common::maps::{self, MAX_NODES, MAX_SERVICES, Seen};

use self::{
    check::{Counters, Effect, Target},
    packets::Generator,
    world::World,
};
use crate::fixture::{Outcome, Runner, hex_diff};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub packets: u64,
    pub seed: u64,
    /// Where each failing input is written (a `.hex` file per failure), if anywhere.
    pub save_failures: Option<PathBuf>,
}

/// One broken invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    pub target: Target,
    /// Which packet of the run (with the seed, enough to make it again).
    pub index: u64,
    pub broken: String,
    pub input: Vec<u8>,
    pub outcome: Outcome,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "packet {} through {}: {} (verdict {:?})",
            self.index, self.target, self.broken, self.outcome.action
        )?;
        writeln!(f, "  input:  {}", hex(&self.input))?;
        // The whole input is above (and saved); the diff's first rows show where it changed.
        let diff = hex_diff(&self.input, &self.outcome.output);
        let rows: Vec<&str> = diff.lines().take(12).collect();
        writeln!(f, "{}", rows.join("\n"))
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    pub seed: u64,
    /// Outcomes by program and effect.
    pub effects: BTreeMap<(Target, Effect), u64>,
    /// Packets the kernel's test run refuses, by program: any shorter than Ethernet; for TC,
    /// also one whose IP header is cut short (no socket buffer is built from it). No
    /// interface delivers such a packet to the program.
    pub refused: BTreeMap<Target, u64>,
    /// Every broken invariant is counted; the first few of each kind are kept.
    pub failed: u64,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

/// Failures kept per kind of broken invariant (all are counted).
const KEPT_PER_KIND: usize = 3;

impl Report {
    fn fail(&mut self, failure: Failure, save: Option<&PathBuf>) {
        self.failed += 1;
        let kind = |f: &Failure| (f.target, f.broken.split(':').next().map(str::to_owned));
        let kept = self
            .failures
            .iter()
            .filter(|f| kind(f) == kind(&failure))
            .count();
        if kept < KEPT_PER_KIND {
            if let Some(dir) = save {
                let path = dir.join(format!("{}-{}.hex", self.seed, failure.index));
                // A failure to save is not one of the data plane's: say so and go on.
                if let Err(e) = std::fs::write(&path, hex(&failure.input)) {
                    eprintln!("fuzz: could not write {}: {e}", path.display());
                }
            }
            self.failures.push(failure);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[expect(clippy::cast_precision_loss, reason = "a rate to show")]
        let rate = self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "data-plane fuzz: {} packets (seed {}) in {:.1} s ({rate:.0} packets/s), {} failures",
            self.packets,
            self.seed,
            self.elapsed.as_secs_f64(),
            self.failed
        )?;
        for target in Target::ALL {
            let mut line = format!("  {:<22}", target.name());
            for ((t, effect), n) in &self.effects {
                if *t == target {
                    let _ = write!(line, " {}: {n},", effect.name());
                }
            }
            if let Some(n) = self.refused.get(&target) {
                let _ = write!(line, " refused by the test run: {n},");
            }
            writeln!(f, "{}", line.trim_end_matches(','))?;
        }
        for failure in &self.failures {
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn counters(runner: &Runner, seen: Seen) -> Result<Counters> {
    let dp = runner.dataplane_ref();
    Ok(Counters {
        proto: dp.proto_stats(seen)?.0,
        reasons: dp.reason_stats()?,
    })
}

/// Runs `config.packets` packets through every program; `progress` hears every 10 000.
pub fn run(config: &Config, mut progress: impl FnMut(&Report)) -> Result<Report> {
    let world = World::new()?;
    let mut generator = Generator::new(config.seed, world.pools());
    let mut report = Report {
        seed: config.seed,
        ..Report::default()
    };
    if let Some(dir) = &config.save_failures {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let started = Instant::now();
    let seen = |target| match target {
        Target::SteerXdp => Seen::Steer(Hook::Xdp),
        Target::SteerTc => Seen::Steer(Hook::TcIngress),
        Target::Endpoint => Seen::Endpoint,
    };
    // Two data planes: the steering programs share one (and its reason counters).
    let plane = |target| usize::from(target == Target::Endpoint);
    let runners = [&world.steer, &world.endpoint];
    // The counters after the previous packet, so that each packet costs one read.
    let mut reasons = [
        world.steer.dataplane_ref().reason_stats()?,
        world.endpoint.dataplane_ref().reason_stats()?,
    ];
    let mut proto = BTreeMap::new();
    for target in Target::ALL {
        let dp = runners[plane(target)].dataplane_ref();
        proto.insert(target, dp.proto_stats(seen(target))?.0);
    }
    let mut encapsulated = 0u64;
    for index in 0..config.packets {
        let input = generator.packet();
        for target in Target::ALL {
            let outcome = match target {
                Target::SteerXdp => world.steer.run(Program::Steer, &input),
                Target::SteerTc => world.steer.run_tc(&input),
                Target::Endpoint => world.endpoint.run(Program::Endpoint, &input),
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(_) if refused(target, &input) => {
                    *report.refused.entry(target).or_default() += 1;
                    continue;
                }
                Err(e) => Err(e)
                    .with_context(|| format!("packet {index} through {target}: {}", hex(&input)))?,
            };
            let before = Counters {
                proto: proto[&target].clone(),
                reasons: reasons[plane(target)].clone(),
            };
            let after = counters(runners[plane(target)], seen(target))?;
            match check::check(target, &input, &outcome, &before, &after) {
                Ok(effect) => {
                    encapsulated += u64::from(effect == Effect::Encapsulated);
                    *report.effects.entry((target, effect)).or_default() += 1;
                }
                Err(broken) => report.fail(
                    Failure {
                        target,
                        index,
                        broken,
                        input: input.clone(),
                        outcome,
                    },
                    config.save_failures.as_ref(),
                ),
            }
            proto.insert(target, after.proto);
            reasons[plane(target)] = after.reasons;
        }
        report.packets = index + 1;
        if report.packets.is_multiple_of(10_000) {
            report.elapsed = started.elapsed();
            progress(&report);
        }
    }
    report.elapsed = started.elapsed();
    check_steering_totals(&world.steer, encapsulated, &mut report)?;
    Ok(report)
}

/// Every encapsulation counts its packet once for its service and once for its node.
fn check_steering_totals(steer: &Runner, encapsulated: u64, report: &mut Report) -> Result<()> {
    let dp = steer.dataplane_ref();
    let total = |map, entries: u32| -> Result<u64> {
        (0..entries).try_fold(0, |sum, i| Ok(sum + dp.counter(map, i)?.packets))
    };
    let services = total(maps::SERVICE_STATS, MAX_SERVICES)?;
    let nodes = total(maps::NODE_STATS, MAX_NODES)?;
    if services != encapsulated || nodes != encapsulated {
        report.failed += 1;
        report.failures.push(Failure {
            target: Target::SteerXdp,
            index: report.packets,
            broken: format!(
                "counters do not add up: {encapsulated} packets encapsulated, service_stats \
                 counts {services}, node_stats {nodes}"
            ),
            input: Vec::new(),
            outcome: Outcome {
                action: crate::fixture::XdpAction::Pass,
                output: Vec::new(),
            },
        });
    }
    Ok(())
}

/// Whether the kernel's test run refuses `frame` for `target` (see [`Report::refused`]).
fn refused(target: Target, frame: &[u8]) -> bool {
    match target {
        Target::SteerTc => !crate::fixture::builds_socket_buffer(frame),
        Target::SteerXdp | Target::Endpoint => frame.len() < 14,
    }
}
