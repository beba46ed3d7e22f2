//! `cpnctl show flows`: the flow affinity table, most recently active first.

use super::{columns, or_dash};
use crate::api::{FlowView, protocol_name};

pub fn table(flows: Vec<FlowView>) -> String {
    let rows: Vec<Vec<String>> = flows
        .into_iter()
        .map(|f| {
            let e = f.entry;
            vec![
                protocol_name(e.protocol),
                endpoint(e.source, e.source_port),
                endpoint(e.destination, e.destination_port),
                or_dash(f.name),
                e.node.to_string(),
                format!("{}.{:03} s", e.idle_ms / 1000, e.idle_ms % 1000),
            ]
        })
        .collect();
    columns(&["PROTO", "CLIENT", "SERVICE", "NODE", "ID", "IDLE"], &rows)
}

/// `[addr]:port` for IPv6, `addr:port` for IPv4; the address alone without a port.
pub fn endpoint(address: std::net::IpAddr, port: u16) -> String {
    match (address, port) {
        (a, 0) => a.to_string(),
        (std::net::IpAddr::V6(a), p) => format!("[{a}]:{p}"),
        (a, p) => format!("{a}:{p}"),
    }
}
