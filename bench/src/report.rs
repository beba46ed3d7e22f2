//! The report: `report.json` (everything measured), `report.md` (the tables) and PNG charts.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;
use serde::Serialize;

use crate::{
    bigtable::BigTable,
    control::Control,
    host_tcp::HostTcp,
    labs::LabRun,
    sensing::Sensing,
    sim::Simulation,
    stats::Spread,
    testrun::PerPacket,
    throughput::{MultiQueue, Throughput, ThroughputArm},
};

/// Debian's `DejaVu` Sans (package fonts-dejavu-core, installed by `cargo xtask setup`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub lscpu: String,
}

impl Machine {
    pub fn probe() -> Self {
        let text = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let lscpu = text("lscpu", &[]);
        let cpu = lscpu
            .lines()
            .find_map(|l| l.strip_prefix("Model name:"))
            .map(|m| m.trim().to_owned())
            .unwrap_or_default();
        Self {
            kernel: text("uname", &["-sr"]),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            lscpu,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    /// The cargo profile the bench binary was built with (userspace timings need `release`).
    pub profile: &'static str,
    pub seconds: f64,
    pub machine: Machine,
    pub per_packet: Option<PerPacket>,
    pub throughput: Option<Throughput>,
    /// The same arms with several flows over multi-queue veths.
    pub throughput_multi_queue: Option<MultiQueue>,
    /// A host's bulk TCP through its own TC steering, against the kernel's seg6 route.
    pub host_tcp: Option<HostTcp>,
    pub control: Option<Control>,
    pub simulation: Option<Simulation>,
    pub labs: Vec<LabRun>,
    pub bigtable: Option<BigTable>,
    pub sensing: Option<Sensing>,
    /// Parts of the issue this run did not measure, and why.
    pub not_measured: Vec<String>,
}

/// Writes report.json, report.md and the charts into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    let mut charts = Vec::new();
    register_font()?;
    if let Some(p) = &report.per_packet {
        let bars: Vec<Bar> = p
            .arms
            .iter()
            .map(|a| Bar {
                label: a.name.clone(),
                value: a.ns,
            })
            .collect();
        let name = "per_packet_ns.png";
        chart(
            &dir.join(name),
            "ns per packet through BPF_PROG_TEST_RUN (median, p10-p90 over rounds)",
            "ns per call (kernel-measured)",
            &bars,
        )?;
        charts.push(name.to_owned());
    }
    if let Some(t) = &report.throughput {
        let bars: Vec<Bar> = t
            .arms
            .iter()
            .map(|a| Bar {
                label: a.name.clone(),
                value: a.mpps,
            })
            .collect();
        let name = "throughput_mpps.png";
        chart(
            &dir.join(name),
            "veth path: frames per second at the sink (median, p10-p90)",
            "Mpps",
            &bars,
        )?;
        charts.push(name.to_owned());
    }
    if let Some(s) = &report.simulation {
        let bars: Vec<Bar> = s
            .runs
            .iter()
            .map(|r| Bar {
                label: format!("{} agents, {}", r.agents, r.mode),
                value: r.convergence_ms,
            })
            .collect();
        let name = "simulation_convergence_ms.png";
        chart(
            &dir.join(name),
            "simulated convergence after one metric change (median, p10-p90 over labs)",
            "ms (simulated link delays + measured handling)",
            &bars,
        )?;
        charts.push(name.to_owned());
    }
    Ok(charts)
}

/// The tables of report.md (docs/BENCHMARKS.md quotes them).
#[expect(clippy::too_many_lines, reason = "one section per part, in order")]
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# cpn benchmark report\n");
    let _ = writeln!(
        md,
        "Machine: {} ({} CPUs), {}. Mode: {}, bench binary built `{}`, {:.0} s. Values are \
         `median [p10–p90]`.\n",
        report.machine.cpu,
        report.machine.cpus,
        report.machine.kernel,
        if report.quick { "quick" } else { "full" },
        report.profile,
        report.seconds
    );
    if let Some(p) = &report.per_packet {
        let _ = writeln!(md, "## Per-packet cost (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            md,
            "Method: {}. {} rounds × {} packets per arm. Katran-like peer: `test_xdp_noinline.c` \
             from {}.\n",
            p.method, p.rounds, p.batch, p.katran_source
        );
        let _ = writeln!(
            md,
            "| arm | verdict | ns/call | net ns (− no-op) | × no-op | × Katran-like | net × Katran-like |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for a in &p.arms {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                a.name,
                a.verdict,
                a.ns.show(0),
                a.net_ns.show(0),
                a.vs_noop.show(2),
                a.vs_katran.show(2),
                a.net_vs_katran.show(2)
            );
        }
        let _ = writeln!(
            md,
            "\nCross-check, in the same rounds: programs that leave their packet unchanged, run \
             `repeat` times per call (the timer's cost paid once per call, not per run), against \
             their net cost with `repeat = 1`:\n"
        );
        let _ = writeln!(
            md,
            "| program | repeat | ns per run | net ns, repeat = 1 | net / per run |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for a in &p.amortized {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                a.name,
                a.repeat,
                a.ns.show(1),
                a.net_repeat_1_ns.show(1),
                a.ratio.show(2)
            );
        }
        let _ = writeln!(
            md,
            "\nProgram sizes as loaded (kernel's program info, as `bpftool prog show`):\n"
        );
        let _ = writeln!(
            md,
            "| program | xlated insns | jited bytes | verified insns |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        let opt = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        for s in &p.programs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                s.program,
                opt(s.xlated_insns),
                opt(s.jited_bytes),
                opt(s.verified_insns)
            );
        }
        for (n, share) in &p.flow_table_residency {
            let _ = writeln!(
                md,
                "\nAffinity table with {n} flows: {:.1}% of a sample of them resident after filling.",
                share * 100.0
            );
        }
        let _ = writeln!(md);
    }
    if let Some(t) = &report.throughput {
        let _ = writeln!(md, "## Throughput through a veth path\n");
        let _ = writeln!(md, "{}\n", t.method);
        throughput_table(&mut md, &t.arms);
    }
    if let Some(t) = &report.throughput_multi_queue {
        multi_queue_markdown(&mut md, t);
    }
    if let Some(h) = &report.host_tcp {
        let _ = writeln!(md, "## A host's bulk TCP through its own steering\n");
        let _ = writeln!(md, "{}; {} rounds.\n", h.method, h.rounds);
        let _ = writeln!(md, "| arm | Gbit/s |");
        let _ = writeln!(md, "|---|---|");
        let _ = writeln!(
            md,
            "| kernel `encap seg6` route | {} |",
            h.kernel_gbps.show(2)
        );
        let _ = writeln!(md, "| `cpn_steer_tc_egress` | {} |", h.cpn_gbps.show(2));
        let _ = writeln!(
            md,
            "| cpn / kernel, per round (goal ≥ 1.0) | {} |\n",
            h.ratio.show(2)
        );
    }
    if let Some(c) = &report.control {
        let _ = writeln!(md, "## Control plane, in process\n");
        let _ = writeln!(md, "| what | value |");
        let _ = writeln!(md, "|---|---|");
        let _ = writeln!(
            md,
            "| Maglev rebuild, {} slots × {} nodes | {} ms |",
            c.maglev.slots,
            c.maglev.nodes,
            c.maglev.build_ms.show(2)
        );
        let _ = writeln!(
            md,
            "| UPDATE encode ({} bytes each) | {} k/s |",
            c.codec.update_bytes,
            c.codec.encode_k_per_s.show(1)
        );
        let _ = writeln!(
            md,
            "| UPDATE decode + parse | {} k/s |",
            c.codec.decode_k_per_s.show(1)
        );
        let _ = writeln!(md);
    }
    if !report.labs.is_empty() {
        let _ = writeln!(md, "## Control plane in namespace labs\n");
        let _ = writeln!(
            md,
            "Real agents over veth links; the client sends one new UDP flow per millisecond; \
             times polled every 2 ms from the pinned maps of the ingress (ring selectors, the \
             per-node packet counter of the node that changes) and of that node (its SID's \
             packet counter).\n"
        );
        let _ = writeln!(
            md,
            "| agents | mode | rounds | lab start s | metric change → new ring ms | → first packet steered to the node ms | → first packet at the node ms | death → last packet steered to it ms |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for l in &report.labs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
                l.agents,
                l.mode,
                l.rounds,
                l.start_s,
                l.metric_to_ring_ms.show(0),
                l.metric_to_first_packet_ms.show(0),
                l.metric_to_first_packet_at_node_ms.show(0),
                l.death_to_last_packet_ms.show(0)
            );
        }
        let _ = writeln!(md);
    }
    if let Some(s) = &report.sensing {
        sensing_tables(&mut md, s);
    }
    if let Some(s) = &report.simulation {
        let _ = writeln!(md, "## Announcement modes, simulated\n");
        let _ = writeln!(md, "{}\n", s.method);
        let _ = writeln!(
            md,
            "| agents | mode | sessions | convergence ms | ingress has it after ms | UPDATEs per change | bytes per change | wall ms per change |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &s.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.agents,
                r.mode,
                r.sessions,
                r.convergence_ms.show(1),
                r.ingress_ms.show(1),
                r.messages_per_change.show(0),
                r.bytes_per_change.show(0),
                r.wall_ms.show(2)
            );
        }
        let _ = writeln!(md);
    }
    if let Some(b) = &report.bigtable {
        bigtable_markdown(&mut md, b);
    }
    if !report.not_measured.is_empty() {
        let _ = writeln!(md, "## Not measured in this run\n");
        for n in &report.not_measured {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn throughput_table(md: &mut String, arms: &[ThroughputArm]) {
    let _ = writeln!(
        md,
        "| arm | Mpps at sink | × plain forwarding | sink / sent | Mpps per busy core |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for a in arms {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            a.name,
            a.mpps.show(3),
            a.vs_plain.show(2),
            a.delivered.show(2),
            a.mpps_per_busy_core.show(3)
        );
    }
    let _ = writeln!(md);
}

fn multi_queue_markdown(md: &mut String, t: &MultiQueue) {
    let _ = writeln!(
        md,
        "## Throughput, {} flows over a {}-queue veth\n",
        t.flows, t.queues
    );
    let _ = writeln!(md, "{}\n", t.method);
    if let Some(limit) = &t.limit {
        let _ = writeln!(md, "**Not a multi-queue measurement**: {limit}\n");
    } else {
        throughput_table(md, &t.arms);
    }
    if t.spread.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Where the frames went (share of each arm's frames, all rounds):\n"
    );
    let _ = writeln!(
        md,
        "| arm | sent per generator thread | d0 (dut ingress) rx queues | s1 (sink) rx queues | sink's CPUs |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in &t.spread {
        let generators: Vec<String> = t
            .generator_cpus
            .iter()
            .map(|cpu| format!("on CPU {cpu}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.arm,
            shares(&s.generator_sent, |i| generators
                .get(i)
                .cloned()
                .unwrap_or_default()),
            shares(&s.dut_rx_queues, |i| format!("q{i}")),
            shares(&s.sink_rx_queues, |i| format!("q{i}")),
            shares(&s.sink_cpus, |i| format!("CPU {i}"))
        );
    }
    let _ = writeln!(md);
}

/// `q0 51% · q1 49%`, from counts.
#[expect(clippy::cast_precision_loss, reason = "counts fit f64")]
fn shares(counts: &[u64], label: impl Fn(usize) -> String) -> String {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return "none".to_owned();
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} {:.0}%", label(i), c as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn bigtable_markdown(md: &mut String, b: &BigTable) {
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
    };
    let _ = writeln!(md, "## A full table from a router\n");
    let _ = writeln!(
        md,
        "Method: {}. Sent: {} UPDATEs, {} bytes.\n",
        b.method, b.sent.updates, b.sent.bytes
    );
    let _ = writeln!(
        md,
        "| speaker | learn s | × BIRD | slowest poll ms | sent s | routes processed | kept | RSS before MiB (peak at start) | peak RSS MiB | × BIRD | kernel routes added | ring slots of the static node before → after |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &b.peers {
        let slots = match (p.ring_slots_before, p.ring_slots_after) {
            (Some(a), Some(b)) => format!("{a} → {b}"),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {:.1} ({:.1}) | {:.1} | {} | {} | {} |",
            p.version,
            opt(p.learn_s, 2),
            opt(p.learn_vs_bird, 2),
            p.slowest_poll_ms,
            p.sent_s,
            p.processed,
            p.kept,
            p.rss_before_mib,
            p.peak_before_mib,
            p.peak_rss_mib,
            opt(p.peak_rss_vs_bird, 2),
            p.kernel_routes_added
                .map_or_else(|| "–".to_owned(), |n| n.to_string()),
            slots
        );
    }
    for p in &b.peers {
        if let Some(why) = &p.session_ended {
            let _ = writeln!(md, "\n{} ended the session: {why}", p.name);
        }
    }
    let _ = writeln!(md);
}

struct Bar {
    label: String,
    value: Spread,
}

fn register_font() -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading the chart font {FONT} (run `cargo xtask setup`)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, font.leak())
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

/// Horizontal bars with p10-p90 whiskers.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "a few dozen bars"
)]
fn chart(path: &Path, title: &str, unit: &str, bars: &[Bar]) -> Result<()> {
    if bars.is_empty() {
        return Ok(());
    }
    let height = 120 + 28 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let max = bars
        .iter()
        .map(|b| b.value.p90.max(b.value.median))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(380)
        // A segmented 0..k has k + 1 segments (the last one empty): k = n - 1 gives n bars.
        .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())
        .map_err(plot_error)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => labels
                .get(usize::try_from(*i).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    let color = RGBColor(31, 119, 180);
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let i = i as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (b.value.median, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.7).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            PathElement::new(
                [
                    (b.value.p10, SegmentValue::CenterOf(i as i32)),
                    (b.value.p90, SegmentValue::CenterOf(i as i32)),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// BFD and health-check detection as ratios to their intervals; STAMP against the lines.
fn sensing_tables(md: &mut String, s: &Sensing) {
    let _ = writeln!(md, "## Sensing\n");
    let _ = writeln!(
        md,
        "Detection: from the cut (BFD: the link taken down on the far side) or the kill (health: \
         the service process) to the agent's own timestamp of the change, over the configured \
         interval. BFD finds a neighbour silent for its multiplier's intervals after the last \
         packet it heard (at most 3 × here); a check with fall 3 fails its third time within \
         2-3 intervals of the death.\n"
    );
    let _ = writeln!(
        md,
        "| what | interval ms | × | rounds | detection ms | detection / interval |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (what, rows) in [("BFD", &s.bfd), ("health check (TCP)", &s.health)] {
        for d in rows {
            let _ = writeln!(
                md,
                "| {what} | {} | {} | {} | {} | {} |",
                d.interval_ms,
                d.multiplier,
                d.rounds,
                d.took_ms.show(1),
                d.ratio.show(2)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nSTAMP through a plain router and delay lines (one way each), test packets every 20 ms \
         inside each node's encapsulation; samples 500 ms apart once every path has a full loss \
         window:\n"
    );
    let _ = writeln!(
        md,
        "| line | measured delay ms | error ms | measured loss | error, points |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for a in &s.stamp {
        let line = if a.drop_every == 0 {
            format!("{} ms", a.delay_ms)
        } else {
            format!("{} ms, loses 1 in {}", a.delay_ms, a.drop_every)
        };
        let _ = writeln!(
            md,
            "| {line} | {} | {} | {} | {} |",
            a.measured_delay_ms.show(2),
            a.delay_error_ms.show(2),
            a.measured_loss.show(3),
            a.loss_error_points.show(1)
        );
    }
    let _ = writeln!(md);
}
