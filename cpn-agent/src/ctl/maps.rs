//! `cpnctl maps dump [NAME]`: the data plane's maps, read straight from their pins (so it
//! works with the agent stopped), decoded into named fields. Rows are JSON objects; the table
//! view shows their fields as columns. Empty slots and zero counters are left out, and a ring
//! is summarised as slots per node of its live half.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use cpn_common::{
    maps::{
        self, Behavior, FlowEntry, FlowKey, NodeEntry, NodeState, RING_CAPACITY, RingSelector,
        ServiceEntry, ServiceKey, SidEntry, ring_index,
    },
    stats::{Counter, ProtoCounter, Reason},
};
use serde_json::{Value, json};

/// The maps `dump` knows, in the order it prints them.
pub const NAMES: [&str; 12] = [
    maps::SERVICES,
    maps::RING_SELECTORS,
    maps::RINGS,
    maps::NODES,
    maps::FLOWS,
    maps::LOCAL_SIDS,
    maps::SERVICE_STATS,
    maps::NODE_STATS,
    maps::SID_STATS,
    maps::REASON_STATS,
    maps::STEER_PROTO_STATS,
    maps::ENDPOINT_PROTO_STATS,
];

/// Each requested map (all by default) as rows; a map that is not pinned is skipped with a
/// note when dumping all, an error when named.
pub fn dump(pin_dir: &Path, name: Option<&str>) -> Result<BTreeMap<String, Vec<Value>>> {
    if let Some(name) = name
        && !NAMES.contains(&name)
    {
        bail!("no map `{name}`; the maps are: {}", NAMES.join(", "));
    }
    let mut out = BTreeMap::new();
    for map in NAMES.into_iter().filter(|m| name.is_none_or(|n| n == *m)) {
        let path = pin_dir.join(map);
        if !path.exists() {
            if name.is_some() {
                bail!(
                    "{} is not pinned (is an agent configured with this pin_dir?)",
                    path.display()
                );
            }
            continue;
        }
        let data = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .with_context(|| format!("opening {}", path.display()))?;
        out.insert(map.to_owned(), rows(map, pin_dir, data)?);
    }
    if out.is_empty() {
        bail!("no cpn maps pinned under {}", pin_dir.display());
    }
    Ok(out)
}

fn rows(name: &str, pin_dir: &Path, map: Map) -> Result<Vec<Value>> {
    Ok(match name {
        maps::SERVICES => {
            let services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map)?;
            services
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    json!({
                        "address": address(k.addr),
                        "protocol": k.protocol,
                        "port": u16::from_be_bytes(k.port),
                        "service": v.id,
                        "affinity": v.flags & maps::SERVICE_AFFINITY != 0,
                        "idle_timeout_s": v.affinity_timeout_s,
                    })
                })
                .collect()
        }
        maps::RING_SELECTORS => selectors(map)?
            .into_iter()
            .map(|(id, s)| json!({ "service": id, "half": s.half(), "size": s.size() }))
            .collect(),
        maps::RINGS => ring_slots(pin_dir, map)?,
        maps::NODES => nodes(map)?,
        maps::FLOWS => {
            let flows: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(map)?;
            flows
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    json!({
                        "source": address(k.src),
                        "destination": address(k.dst),
                        "protocol": k.protocol,
                        "source_port": u16::from_be_bytes(k.src_port),
                        "destination_port": u16::from_be_bytes(k.dst_port),
                        "node": v.node,
                        "last_seen_ns": v.last_seen_ns,
                    })
                })
                .collect()
        }
        maps::LOCAL_SIDS => {
            let sids: HashMap<_, [u8; 16], SidEntry> = HashMap::try_from(map)?;
            sids.iter()
                .filter_map(Result::ok)
                .map(|(sid, e)| {
                    json!({
                        "sid": Ipv6Addr::from(sid).to_string(),
                        "behavior": Behavior::from_u32(e.behavior).map_or("?", Behavior::name),
                        "oif_or_table": e.oif_or_table,
                        "nexthop": address(e.nexthop),
                        "counter": e.stats_index,
                    })
                })
                .collect()
        }
        maps::REASON_STATS => counters(map, |i| {
            Reason::ALL
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .map_or_else(|| i.to_string(), |r| r.name().to_owned())
        })?,
        maps::STEER_PROTO_STATS | maps::ENDPOINT_PROTO_STATS => counters(map, |i| {
            ProtoCounter::ALL
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .map_or_else(|| i.to_string(), |p| p.name().to_owned())
        })?,
        // Service, node and SID counters are indexed by id.
        _ => counters(map, |i| i.to_string())?,
    })
}

/// Each live ring as slots per node.
fn ring_slots(pin_dir: &Path, map: Map) -> Result<Vec<Value>> {
    let selectors_path = pin_dir.join(maps::RING_SELECTORS);
    let selectors = selectors(
        MapData::from_pin(&selectors_path)
            .and_then(Map::from_map_data)
            .with_context(|| format!("opening {}", selectors_path.display()))?,
    )?;
    let rings: Array<_, u32> = Array::try_from(map)?;
    let mut out = Vec::new();
    for (id, selector) in selectors {
        let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
        for slot in 0..selector.size().min(RING_CAPACITY) {
            let node = rings.get(&ring_index(id, selector.half(), slot), 0)?;
            *slots.entry(node).or_default() += 1;
        }
        for (node, count) in slots {
            out.push(json!({ "service": id, "node": node, "slots": count }));
        }
    }
    Ok(out)
}

/// The node entries in use.
fn nodes(map: Map) -> Result<Vec<Value>> {
    let nodes: Array<_, NodeEntry> = Array::try_from(map)?;
    Ok(nodes
        .iter()
        .enumerate()
        .filter_map(|(id, n)| Some((id, n.ok()?)))
        .filter(|(_, n)| n.state != NodeState::Unused as u8)
        .map(|(id, n)| {
            let count = usize::from(n.segment_count).min(maps::MAX_SIDS);
            let segments: Vec<String> = n.segments[..count].iter().map(|s| address(*s)).collect();
            json!({
                "node": id,
                "state": state_name(n.state),
                "segments": segments.join(" "),
                "encap_src": address(n.encap_src),
                "reduced": n.flags & maps::NODE_REDUCED != 0,
            })
        })
        .collect())
}

/// Every service's ring selector that names a ring.
fn selectors(map: Map) -> Result<Vec<(u32, RingSelector)>> {
    let selectors: Array<_, RingSelector> = Array::try_from(map)?;
    Ok(selectors
        .iter()
        .enumerate()
        .filter_map(|(id, s)| Some((u32::try_from(id).ok()?, s.ok()?)))
        .filter(|(_, s)| s.size() > 0)
        .collect())
}

/// A per-CPU counter array, summed over CPUs; zero rows left out.
fn counters(map: Map, name: impl Fn(u32) -> String) -> Result<Vec<Value>> {
    let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
    let mut out = Vec::new();
    for (index, values) in array.iter().enumerate() {
        let values = values?;
        let (packets, bytes) = values
            .iter()
            .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
        if packets > 0 {
            let index = u32::try_from(index)?;
            out.push(json!({ "counter": name(index), "packets": packets, "bytes": bytes }));
        }
    }
    Ok(out)
}

/// An address from 16 bytes: IPv4-mapped ones as IPv4.
fn address(bytes: [u8; 16]) -> String {
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped()
        .map_or_else(|| v6.to_string(), |v4: Ipv4Addr| v4.to_string())
}

fn state_name(state: u8) -> &'static str {
    match state {
        s if s == NodeState::Active as u8 => "active",
        s if s == NodeState::Draining as u8 => "draining",
        s if s == NodeState::Down as u8 => "down",
        _ => "unused",
    }
}
