//! `cpnctl maps dump [NAME]`: the data plane's maps, read straight from their pins (so it
//! works with the agent stopped), decoded into named fields. Rows are JSON objects; the table
//! view shows their fields as columns. Empty slots and zero counters are left out, a ring is
//! summarised as slots per node of its live half, and the next-hop selectors show only the
//! nodes with a live cached next hop (the others take the FIB path).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use cpn_common::{
    maps,
    stats::{ProtoCounter, Reason},
};
use serde_json::{Value, json};

use crate::dataplane::Pinned;

/// The maps `dump` knows, in the order it prints them.
pub const NAMES: [&str; 18] = [
    maps::SERVICES,
    maps::RING_SELECTORS,
    maps::RINGS,
    maps::NODES,
    maps::NEXTHOP_SELECTORS,
    maps::NEXTHOPS,
    maps::FLOWS,
    maps::LOCAL_SIDS,
    maps::SERVICE_STATS,
    maps::NODE_STATS,
    maps::SID_STATS,
    maps::REASON_STATS,
    maps::STEER_PROTO_STATS,
    maps::ENDPOINT_PROTO_STATS,
    maps::ICMP_BUDGET,
    maps::ICMP_PEERS,
    maps::FIB_CACHE,
    maps::FIB_GENERATION,
];

/// Each requested map (all by default) as rows; a map that is not pinned is skipped when
/// dumping all, an error when named.
pub fn dump(pin_dir: &Path, name: Option<&str>) -> Result<BTreeMap<String, Vec<Value>>> {
    if let Some(name) = name
        && !NAMES.contains(&name)
    {
        bail!("no map `{name}`; the maps are: {}", NAMES.join(", "));
    }
    let pinned = Pinned::new(pin_dir);
    let mut out = BTreeMap::new();
    for map in NAMES.into_iter().filter(|m| name.is_none_or(|n| n == *m)) {
        if !pinned.has(map) {
            if name.is_some() {
                bail!(
                    "{} is not pinned (is an agent configured with this pin_dir?)",
                    pin_dir.join(map).display()
                );
            }
            continue;
        }
        let rows = rows(&pinned, map).with_context(|| format!("reading map {map}"))?;
        out.insert(map.to_owned(), rows);
    }
    if out.is_empty() {
        bail!("no cpn maps pinned under {}", pin_dir.display());
    }
    Ok(out)
}

fn rows(pinned: &Pinned, name: &'static str) -> Result<Vec<Value>> {
    fn each<T: serde::Serialize>(rows: Vec<T>) -> Result<Vec<Value>> {
        rows.into_iter()
            .map(|r| Ok(serde_json::to_value(r)?))
            .collect()
    }
    match name {
        maps::SERVICES => each(pinned.services()?),
        maps::RING_SELECTORS => Ok(pinned
            .rings()?
            .into_iter()
            .map(|r| json!({ "service": r.service, "half": r.half, "size": r.size }))
            .collect()),
        maps::RINGS => Ok(pinned
            .rings()?
            .into_iter()
            .flat_map(|r| {
                r.slots.into_iter().map(move |(node, slots)| {
                    json!({ "service": r.service, "node": node, "slots": slots })
                })
            })
            .collect()),
        maps::NODES => each(pinned.nodes()?),
        maps::NEXTHOP_SELECTORS => Ok(pinned
            .nexthop_selectors()?
            .into_iter()
            .map(|(node, selector)| json!({ "node": node, "half": selector.half() }))
            .collect()),
        maps::NEXTHOPS => pinned
            .nexthop_slots()?
            .into_iter()
            .map(|(row, live)| {
                let mut value = serde_json::to_value(row)?;
                value["live"] = json!(live);
                Ok(value)
            })
            .collect(),
        maps::FLOWS => each(pinned.flows()?),
        maps::LOCAL_SIDS => each(pinned.sids()?),
        maps::ICMP_BUDGET => each(pinned.icmp_budget()?),
        maps::ICMP_PEERS => each(pinned.icmp_destinations()?),
        maps::FIB_CACHE => each(pinned.fib_cache()?),
        maps::FIB_GENERATION => Ok(vec![serde_json::json!({
            "generation": pinned.fib_generation()?,
        })]),
        _ => Ok(pinned
            .counters(name)?
            .into_iter()
            .map(|c| {
                json!({ "counter": counter_name(name, c.index), "packets": c.packets, "bytes": c.bytes })
            })
            .collect()),
    }
}

/// A counter's name: reasons and protocols by name, services, nodes and SIDs by index.
pub fn counter_name(map: &str, index: u32) -> String {
    let at = usize::try_from(index).unwrap_or(usize::MAX);
    match map {
        maps::REASON_STATS => Reason::ALL.get(at).map(|r| r.name().to_owned()),
        maps::STEER_PROTO_STATS => maps::steer_proto_counter(index)
            .map(|(hook, counter)| format!("{hook}/{}", counter.name())),
        maps::ENDPOINT_PROTO_STATS => ProtoCounter::ALL.get(at).map(|p| p.name().to_owned()),
        _ => None,
    }
    .unwrap_or_else(|| index.to_string())
}
