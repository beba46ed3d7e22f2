//! The demo's chart (`--record DIR`): each compute node's share of new flows over time, with
//! the acts marked.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;

use crate::demo::Record;

/// Debian's `DejaVu` Sans (package fonts-dejavu-core, installed by `cargo xtask setup`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Line colours that stay apart on white.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `record` as a PNG at `path`.
pub fn draw(record: &Record, nodes: &[String], path: &Path) -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading the chart font {FONT} (run `cargo xtask setup`)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, font.leak())
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))?;
    let end = record
        .timeline
        .last()
        .map_or(1.0, |s| s.at.as_secs_f64())
        .max(1.0);
    let root = BitMapBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "cpn demo: share of new flows per compute node",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..100.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("% of new flows")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    for (i, (start, caption)) in record.acts.iter().enumerate() {
        let x = start.as_secs_f64();
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, 100.0)], BLACK.mix(0.3)))
            .map_err(plot_error)?;
        let label = caption.split(':').next().unwrap_or(caption);
        chart
            .draw_series([Text::new(
                format!("{}. {label}", i + 1),
                (x + 0.2, 97.0),
                ("sans-serif", 15),
            )])
            .map_err(plot_error)?;
    }
    for (i, node) in nodes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        let points = record.timeline.iter().map(|s| {
            (
                s.at.as_secs_f64(),
                s.shares.get(node).copied().unwrap_or(0.0) * 100.0,
            )
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(plot_error)?
            .label(node.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}
