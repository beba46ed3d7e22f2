//! `cpnctl show routes`.

use super::{columns, millis, or_dash};
use crate::api::LearnedPath;

pub fn table(paths: Vec<LearnedPath>) -> String {
    let rows: Vec<Vec<String>> = paths
        .into_iter()
        .map(|p| {
            let as_path: Vec<String> = p.as_path.iter().map(u32::to_string).collect();
            vec![
                p.prefix,
                p.neighbor.to_string(),
                p.path_id.to_string(),
                p.next_hop.to_string(),
                if as_path.is_empty() {
                    "(local)".into()
                } else {
                    as_path.join(" ")
                },
                or_dash(p.aigp.map(millis)),
                or_dash(p.sid),
                or_dash(p.node),
                or_dash(p.score.map(|s| format!("{:.2}", s.l2))),
                or_dash(p.kernel),
            ]
        })
        .collect();
    columns(
        &[
            "PREFIX", "NEIGHBOR", "PATH-ID", "NEXT HOP", "AS PATH", "AIGP", "SID", "NODE", "L2",
            "KERNEL",
        ],
        &rows,
    )
}
