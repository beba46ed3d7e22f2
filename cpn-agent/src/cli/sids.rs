//! `cpnctl show sids`: the local SIDs `cpn_endpoint` processes.

use super::{columns, or_dash};
use crate::api::SidView;

pub fn table(sids: Vec<SidView>) -> String {
    let rows: Vec<Vec<String>> = sids
        .into_iter()
        .map(|s| {
            let e = s.entry;
            let target = match e.behavior.as_str() {
                "End.DT6" | "End.DT4" | "End.DT46" => format!("table {}", e.oif_or_table),
                "End" => String::new(),
                _ => format!("oif {}", e.oif_or_table),
            };
            vec![
                e.sid.to_string(),
                e.behavior,
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
