//! `cpnctl show services`: the selection explanation of each service, one table each.

use std::fmt::Write as _;

use super::{columns, or_dash, or_unknown};

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
        out.push_str(&candidates(e));
        out.push('\n');
    }
    out
}

/// The candidates of one selection explanation: weight, scores, path and exclusion.
pub fn candidates(explanation: &serde_json::Value) -> String {
    let score = |c: &serde_json::Value, which: &str| {
        or_dash(c["scores"][which].as_f64().map(|s| format!("{s:.3}")))
    };
    let rows: Vec<Vec<String>> = explanation["decision"]["evaluations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let duration = |d: &serde_json::Value| {
                d["secs"]
                    .as_f64()
                    .zip(d["nanos"].as_f64())
                    .map(|(s, n)| s * 1e3 + n / 1e6)
            };
            let published = explanation["published"][c["node"].to_string()].as_f64();
            vec![
                c["name"].as_str().unwrap_or("?").to_owned(),
                or_dash(c["weight"].as_f64().map(|w| format!("{w:.3}"))),
                or_dash(published.map(|w| format!("{w:.3}"))),
                score(c, "l2"),
                score(c, "computing"),
                score(c, "communication"),
                or_unknown(duration(&c["path"]["latency"]).map(|ms| format!("{ms:.2} ms"))),
                or_unknown(
                    c["path"]["loss"]
                        .as_f64()
                        .map(|l| format!("{:.1} %", l * 100.0)),
                ),
                or_dash(c["metrics"]["in_flight"]["value"].as_f64()),
                or_dash(duration(&c["metric_age"]).map(|ms| format!("{:.1} s", ms / 1e3))),
                match &c["excluded"] {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    // `{"latency_too_high": {…}}`: the reason's name.
                    other => other
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_else(|| other.to_string()),
                },
            ]
        })
        .collect();
    columns(
        &[
            "NODE",
            "WEIGHT",
            "PUBLISHED",
            "L2",
            "COMPUTE",
            "NETWORK",
            "LATENCY",
            "LOSS",
            "IN FLIGHT",
            "METRIC AGE",
            "EXCLUDED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_path_reads_unknown_not_zero() {
        let explanation = serde_json::json!({
            "published": {"1": 0.6},
            "decision": {"evaluations": [
                {"node": 1, "name": "near", "weight": 0.6,
                 "path": {"latency": {"secs": 0, "nanos": 2_500_000}, "loss": 0.01},
                 "scores": {"l2": 0.9, "computing": 1.0, "communication": 0.8}},
                {"node": 2, "name": "behind-rr", "weight": 0.4,
                 "path": {"latency": null, "loss": null},
                 "scores": {"l2": 0.9, "computing": 1.0, "communication": 0.8}},
            ]},
        });
        let text = candidates(&explanation);
        let rows = super::super::cells(&text);
        let column = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
        let (latency, loss) = (column("LATENCY"), column("LOSS"));
        assert_eq!(
            (rows[1][latency], rows[1][loss]),
            ("2.50 ms", "1.0 %"),
            "{text}"
        );
        assert_eq!(
            (rows[2][latency], rows[2][loss]),
            ("unknown", "unknown"),
            "{text}"
        );
    }
}
