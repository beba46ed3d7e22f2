//! Stable small ids for the data plane's entries (services, nodes).

use std::collections::{BTreeMap, BTreeSet};

/// Stable small ids for named things (services, nodes), kept across reloads so that a flow's
/// node id means the same node before and after.
#[derive(Debug, Default)]
pub struct Ids<K: Ord> {
    ids: BTreeMap<K, u32>,
    first: u32,
}

impl<K: Ord + Clone> Ids<K> {
    pub fn starting_at(first: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            first,
        }
    }

    pub fn get(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let mut id = self.first;
        while used.contains(&id) {
            id += 1;
        }
        self.ids.insert(key.clone(), id);
        id
    }

    /// Id → name, for the operator's views.
    pub fn names(&self) -> BTreeMap<u32, K> {
        self.ids.iter().map(|(k, v)| (*v, k.clone())).collect()
    }

    pub fn forget(&mut self, id: u32) {
        self.ids.retain(|_, v| *v != id);
    }

    pub fn forget_except(&mut self, keep: &[K]) -> Vec<u32> {
        let gone: Vec<K> = self
            .ids
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        gone.iter().filter_map(|k| self.ids.remove(k)).collect()
    }
}
