//! `cpnctl show sids`: the local SIDs `cpn_endpoint` processes.

use super::{columns, or_dash};
use crate::api::SidView;

pub fn table(sids: Vec<SidView>) -> String {
    let rows: Vec<Vec<String>> = sids
        .into_iter()
        .map(|s| {
            let e = s.entry;
            let target = match e.behavior {
                Some(b) if b.looks_up() => format!("table {}", e.oif_or_table),
                Some(b) if b.cross_connects() => format!("oif {}", e.oif_or_table),
                _ => String::new(),
            };
            vec![
                e.sid.to_string(),
                e.behavior
                    .map_or_else(|| format!("unknown({})", e.code), |b| b.name().to_owned()),
                target,
                or_dash(e.nexthop),
                s.packets.to_string(),
                s.bytes.to_string(),
            ]
        })
        .collect();
    columns(
        &["SID", "BEHAVIOR", "TARGET", "NEXT HOP", "PACKETS", "BYTES"],
        &rows,
    )
}
