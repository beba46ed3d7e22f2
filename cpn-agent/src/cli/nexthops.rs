//! `cpnctl show nexthops`: the next-hop cache, one row per node.

use super::{columns, or_dash};
use crate::api::{CacheState, NextHopView};

pub fn table(nexthops: Vec<NextHopView>) -> String {
    let rows: Vec<Vec<String>> = nexthops
        .into_iter()
        .map(|n| {
            let state = match n.state {
                CacheState::Cached => "cached".to_owned(),
                CacheState::NotCached { why } => format!("not cached: {why}"),
                CacheState::Pending => "resolved, not written yet".to_owned(),
            };
            vec![
                or_dash(n.name),
                n.first_segment.to_string(),
                state,
                or_dash(n.dev),
                or_dash(n.gateway),
                or_dash(n.dst_mac),
                or_dash(n.mtu),
                or_dash(n.half),
            ]
        })
        .collect();
    columns(
        &[
            "NODE",
            "FIRST SEGMENT",
            "STATE",
            "DEV",
            "GATEWAY",
            "MAC",
            "MTU",
            "HALF",
        ],
        &rows,
    )
}
