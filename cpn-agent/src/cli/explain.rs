//! `cpnctl explain CLIENT SERVICE [PROTO] [PORT]`: where the data plane sends a flow (its own
//! lookup, replayed on the maps: service, affinity, ring, node) and why the ring looks the way
//! it does (the selection's scores, weights and hysteresis state).

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use super::{flows::endpoint, or_dash, services};

/// The IP protocol number of `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, or a number.
pub fn protocol(text: &str) -> Result<u8, String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        n => n.parse().map_err(|_| {
            format!("unknown protocol `{text}`: use tcp, udp, sctp, icmp, icmpv6 or a number")
        })?,
    })
}

pub fn text(answer: &Value) -> String {
    let mut out = String::new();
    let flows = answer["flows"].as_array().cloned().unwrap_or_default();
    // Node names, from the ring and the answers' chosen nodes.
    let names: BTreeMap<String, String> = answer["ring"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(&flows)
        .filter_map(|n| Some((n["node"].to_string(), n["name"].as_str()?.to_owned())))
        .collect();
    let name = |id: &Value| {
        names
            .get(&id.to_string())
            .map_or_else(|| format!("node {id}"), |n| format!("{n} (node {id})"))
    };
    match flows.len() {
        0 => out.push_str(
            "no open flow from this client to the service in the affinity table; a new flow's \
             node depends on its source port (`--source-port`): the ring below decides\n\n",
        ),
        1 => {}
        n => {
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for f in &flows {
                *per_node.entry(or_dash(f["name"].as_str())).or_default() += 1;
            }
            let counts: Vec<String> = per_node.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "{n} open flows: {}\n", counts.join(", "));
        }
    }
    for flow in &flows {
        flow_text(&mut out, flow, &name);
        out.push('\n');
    }
    if let Some(ring) = answer["ring"].as_array().filter(|r| !r.is_empty()) {
        let shares: Vec<String> = ring
            .iter()
            .map(|s| {
                format!(
                    "{} {:.1} %",
                    s["name"]
                        .as_str()
                        .map_or_else(|| s["node"].to_string(), str::to_owned),
                    s["share"].as_f64().unwrap_or(0.0) * 100.0
                )
            })
            .collect();
        let _ = writeln!(out, "ring: {}\n", shares.join(", "));
    }
    let selection = &answer["selection"];
    if !selection.is_null() {
        let _ = writeln!(
            out,
            "selection: {}, {} slots still to move, {} target rings, {} ring writes",
            selection["verdict"]
                .as_str()
                .map_or_else(|| selection["verdict"].to_string(), str::to_owned),
            selection["pending_slots"],
            selection["target_changes"],
            selection["ring_updates"],
        );
        out.push_str(&services::candidates(selection));
    }
    out
}

fn flow_text(out: &mut String, f: &Value, name: &dyn Fn(&Value) -> String) {
    let flow = &f["flow"];
    let at = |address: &Value, port: &Value| {
        let address = address.as_str().and_then(|a| a.parse().ok());
        let port = port
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        address.map_or_else(|| "?".to_owned(), |a| endpoint(a, port))
    };
    let protocol = flow["protocol"]
        .as_u64()
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "flow {} {} -> {}",
        crate::api::protocol_name(protocol),
        at(&flow["source"], &flow["source_port"]),
        at(&flow["destination"], &flow["destination_port"]),
    );
    let service = &f["service"];
    if service.is_null() {
        out.push_str("  service   none: not a service address, passed to the kernel\n");
        return;
    }
    let _ = writeln!(
        out,
        "  service   {} (id {}, key {}/{}), affinity {}",
        service["address"].as_str().unwrap_or("?"),
        service["service"],
        crate::api::protocol_name(
            service["protocol"]
                .as_u64()
                .and_then(|p| u8::try_from(p).ok())
                .unwrap_or(0)
        ),
        service["port"],
        match (
            service["affinity"].as_bool(),
            service["idle_timeout_s"].as_u64()
        ) {
            (Some(true), Some(0)) => "on (kept until evicted)".to_owned(),
            (Some(true), Some(t)) => format!("on (idle timeout {t} s)"),
            _ => "off".to_owned(),
        }
    );
    let _ = writeln!(out, "  hash      {:#010x}", f["hash"].as_u64().unwrap_or(0));
    steps_text(out, f, name);
}

/// The affinity and ring steps, and what they decided.
fn steps_text(out: &mut String, f: &Value, node: &dyn Fn(&Value) -> String) {
    let service = &f["service"];
    let decided = f["decided_by"].as_str();
    let a = &f["affinity"];
    if !a.is_null() {
        let _ = writeln!(
            out,
            "  affinity  {}, idle {:.1} s, {}, {}{}",
            node(&a["node"]),
            a["idle_ms"].as_f64().unwrap_or(0.0) / 1e3,
            if a["fresh"] == true {
                "fresh"
            } else {
                "expired"
            },
            if a["usable"] == true {
                "usable"
            } else {
                "not usable"
            },
            if decided == Some("affinity") {
                "  <- decides"
            } else {
                "  (skipped)"
            },
        );
    } else if service["affinity"] == true {
        out.push_str("  affinity  no entry: a new flow\n");
    }
    let r = &f["ring"];
    let skipped = |r: &Value| {
        let down: Vec<String> = r["skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .map(node)
            .collect();
        if down.is_empty() {
            String::new()
        } else {
            format!(" (re-hashed past {}, not usable)", down.join(", "))
        }
    };
    if !r.is_null() {
        let _ = writeln!(
            out,
            "  ring      half {}, slot {} of {} -> {}{}{}",
            r["half"],
            r["slot"],
            r["size"],
            node(&r["node"]),
            skipped(r),
            if decided == Some("ring") {
                "  <- decides"
            } else {
                "  (not usable)"
            },
        );
    }
    match f["node"].as_u64() {
        Some(id) => {
            let segments: Vec<&str> = f["segments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let _ = writeln!(
                out,
                "  result    {} (node {id}) by {}, segments {}",
                or_dash(f["name"].as_str()),
                decided.unwrap_or("?"),
                segments.join(" "),
            );
        }
        None => out.push_str(
            "  result    no usable node: passed to the kernel (counted as no_usable_node)\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_name_or_number() {
        assert_eq!(protocol("TCP"), Ok(6));
        assert_eq!(protocol("icmpv6"), Ok(58));
        assert_eq!(protocol("47"), Ok(47));
        assert!(protocol("gre-ish").unwrap_err().contains("tcp, udp"));
    }

    #[test]
    fn a_flow_decided_by_its_ring_slot_reads_as_such() {
        let answer = serde_json::json!({
            "flows": [{
                "flow": {"source": "10.0.1.1", "destination": "10.9.9.9", "protocol": 17,
                         "source_port": 5000, "destination_port": 53},
                "service": {"address": "10.9.9.9", "protocol": 0, "port": 0, "service": 2,
                            "affinity": false, "idle_timeout_s": 0},
                "hash": 255,
                "affinity": null,
                "ring": {"half": 1, "size": 7, "slot": 3, "node": 4, "usable": true},
                "node": 4, "decided_by": "ring", "name": "edge9", "segments": ["fc00:9::d6"],
            }],
            "ring": [{"node": 4, "name": "edge9", "slots": 7, "share": 1.0}],
            "selection": null,
        });
        assert_eq!(
            text(&answer),
            "flow udp 10.0.1.1:5000 -> 10.9.9.9:53\n\
             \x20 service   10.9.9.9 (id 2, key any/0), affinity off\n\
             \x20 hash      0x000000ff\n\
             \x20 ring      half 1, slot 3 of 7 -> edge9 (node 4)  <- decides\n\
             \x20 result    edge9 (node 4) by ring, segments fc00:9::d6\n\
             \n\
             ring: edge9 100.0 %\n\n"
        );
    }
}
