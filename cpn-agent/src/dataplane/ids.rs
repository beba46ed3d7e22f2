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

    /// `key`'s id: its own if it has one, else `preferred` if that is free, else the lowest
    /// free one that `reserved` does not hold back (for another key to prefer).
    pub fn get_preferring(
        &mut self,
        key: &K,
        preferred: Option<u32>,
        reserved: impl Fn(u32) -> bool,
    ) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = preferred
            .filter(|p| *p >= self.first && !self.is_taken(*p))
            .unwrap_or_else(|| {
                (self.first..u32::MAX)
                    .find(|id| !self.is_taken(*id) && !reserved(*id))
                    .unwrap_or(u32::MAX)
            });
        self.ids.insert(key.clone(), id);
        id
    }

    /// Whether some key has `id`.
    pub fn is_taken(&self, id: u32) -> bool {
        self.ids.values().any(|v| *v == id)
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
