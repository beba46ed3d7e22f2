//! `cpnctl show services`: the selection explanation of each service, one table each.

use std::fmt::Write as _;

use super::{columns, or_dash};

pub fn table(explanations: &serde_json::Value) -> String {
    let mut out = String::new();
    for e in explanations.as_array().into_iter().flatten() {
        let port = e["port"]
            .as_u64()
            .map_or(String::new(), |p| format!(" port {p}"));
        let _ = writeln!(
            out,
            "service {}{port}  ({}, {})",
            e["address"].as_str().unwrap_or("?"),
            e["decision"]["normalisation"].as_str().unwrap_or("?"),
            e["verdict"]
                .as_str()
                .map_or_else(|| e["verdict"].to_string(), str::to_owned),
        );
        let rows: Vec<Vec<String>> = e["decision"]["evaluations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let latency = &c["path"]["latency"];
                let ms = latency["secs"]
                    .as_f64()
                    .zip(latency["nanos"].as_f64())
                    .map(|(s, n)| format!("{:.2} ms", s * 1e3 + n / 1e6));
                vec![
                    c["name"].as_str().unwrap_or("?").to_owned(),
                    or_dash(c["weight"].as_f64().map(|w| format!("{w:.3}"))),
                    or_dash(c["scores"]["l2"].as_f64().map(|s| format!("{s:.3}"))),
                    or_dash(ms),
                    or_dash(c["metrics"]["in_flight"]["value"].as_f64()),
                    if c["excluded"].is_null() {
                        String::new()
                    } else {
                        c["excluded"].to_string()
                    },
                ]
            })
            .collect();
        out.push_str(&columns(
            &["NODE", "WEIGHT", "L2", "LATENCY", "IN FLIGHT", "EXCLUDED"],
            &rows,
        ));
        out.push('\n');
    }
    out
}
