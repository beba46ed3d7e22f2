//! Reading the per-CPU counters.

use std::path::Path;

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use cpn_common::{
    maps::Seen,
    stats::{Counter, ProtoCounter},
};

use super::Error;

/// Per-protocol counters of one program (at one hook), summed over CPUs, in [`ProtoCounter`]
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtoStats(pub Vec<(ProtoCounter, Counter)>);

impl ProtoStats {
    /// Reads `seen`'s counters from its map (loaded by this process or opened from its pin).
    pub fn read(map: &Map, seen: Seen) -> Result<Self, MapError> {
        let array = PerCpuArray::<_, Counter>::try_from(map)?;
        let mut out = Vec::with_capacity(ProtoCounter::ALL.len());
        for counter in ProtoCounter::ALL {
            let per_cpu = array.get(&seen.index(counter), 0)?;
            out.push((counter, Counter::sum(per_cpu.iter())));
        }
        Ok(Self(out))
    }

    /// The value of one counter.
    pub fn get(&self, which: ProtoCounter) -> Counter {
        self.0
            .iter()
            .find(|(c, _)| *c == which)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }
}

/// Reads `seen`'s counters from the map pinned under `pin_dir`; works without the agent.
pub fn pinned_proto_stats(pin_dir: &Path, seen: impl Into<Seen>) -> Result<ProtoStats, Error> {
    let seen = seen.into();
    let name = seen.map();
    let map = MapData::from_pin(pin_dir.join(name))
        .and_then(Map::from_map_data)
        .map_err(|source| Error::Map { map: name, source })?;
    ProtoStats::read(&map, seen).map_err(|source| Error::Map { map: name, source })
}
