//! The next-hop cache's maps: per node, how to reach its first segment without a FIB lookup
//! (egress interface, MTU, MACs), resolved by the agent (resolver.rs) and read by `cpn_steer`.
//!
//! Each node has two [`NextHopEntry`] slots and a [`NextHopSelector`], as the rings have two
//! halves: an update writes the idle slot, then flips the selector with one 4-byte store, so
//! the data plane never reads a half-written entry. A selector of
//! [`NextHopSelector::NONE`] sends the node's packets through `bpf_fib_lookup`, as without a
//! cache; that is what a node without a usable answer gets, and what every node gets while no
//! agent keeps the cache current (at start, until resolved, and after the agent stops).

use std::{fmt, net::Ipv6Addr, str::FromStr};

use aya::maps::Array;
use cpn_common::maps::{
    self, MAX_NODES, NextHopEntry, NextHopSelector, NodeEntry, NodeState, nexthop_index,
};
use serde::{Deserialize, Serialize};

use super::{Dataplane, Error, pinned::NextHopRow};

/// An Ethernet address, shown and serialised as `02:00:5e:10:00:01`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Not six hexadecimal bytes separated by colons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (six hexadecimal bytes separated by colons)")]
pub struct BadMac(String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(text.to_owned());
        let mut bytes = [0; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(bytes))
    }
}

impl MacAddr {
    /// The address of a link-layer attribute, if it is an Ethernet one (six bytes, not all
    /// zero: a device without one, such as `lo` or a tunnel, reports zeros or nothing).
    pub fn from_link_layer(bytes: &[u8]) -> Option<Self> {
        let mac: [u8; 6] = bytes.try_into().ok()?;
        (mac != [0; 6]).then_some(Self(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a node's first segment is reached: what `bpf_fib_lookup` would answer for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    /// The egress interface.
    pub ifindex: u32,
    /// The route's MTU if it sets one, else the egress interface's.
    pub mtu: u32,
    /// Where the packets go on that link: the route's gateway, or the first segment itself when
    /// it is on a connected subnet.
    pub neighbour: Ipv6Addr,
    /// The neighbour's MAC.
    pub dst_mac: MacAddr,
    /// The egress interface's MAC.
    pub src_mac: MacAddr,
}

impl NextHop {
    /// The map entry the data plane reads.
    pub const fn entry(&self) -> NextHopEntry {
        NextHopEntry {
            ifindex: self.ifindex,
            mtu: self.mtu,
            dst_mac: self.dst_mac.0,
            src_mac: self.src_mac.0,
            _pad: [0; 4],
        }
    }
}

/// The writes of one update, in order: the entry (slot index and value), then the selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Update {
    entry: Option<(u32, NextHopEntry)>,
    selector: NextHopSelector,
}

/// What updating node `id`, whose selector is `current`, to `next_hop` writes: a next hop goes
/// to the half the selector does not name (so never under a reader's feet) and then becomes
/// live; none only turns the selector off.
fn update(id: u32, current: NextHopSelector, next_hop: Option<&NextHop>) -> Update {
    match next_hop {
        None => Update {
            entry: None,
            selector: NextHopSelector::NONE,
        },
        Some(next_hop) => {
            let half = current.half() ^ 1;
            Update {
                entry: Some((nexthop_index(id, half), next_hop.entry())),
                selector: NextHopSelector::live(half),
            }
        }
    }
}

/// The first segment (travel order) of a node entry in use.
pub(super) fn first_segment(entry: &NodeEntry) -> Option<Ipv6Addr> {
    let count = usize::from(entry.segment_count).min(maps::MAX_SIDS);
    (entry.state != NodeState::Unused as u8 && count > 0)
        .then(|| Ipv6Addr::from(entry.segments[count - 1]))
}

/// A next-hop entry with its node and half, as a map row.
pub(super) fn row(node: u32, half: u32, entry: &NextHopEntry) -> NextHopRow {
    NextHopRow {
        node,
        half,
        ifindex: entry.ifindex,
        mtu: entry.mtu,
        dst_mac: MacAddr(entry.dst_mac),
        src_mac: MacAddr(entry.src_mac),
    }
}

impl Dataplane {
    /// Caches how node `id`'s first segment is reached (`None`: no cached next hop, the data
    /// plane asks the FIB for every packet): writes the idle half, then flips the selector.
    pub fn set_nexthop(&mut self, id: u32, next_hop: Option<NextHop>) -> Result<(), Error> {
        super::tables::check("node id", id, MAX_NODES)?;
        let current = self.nexthop_selector(id)?;
        let Update { entry, selector } = update(id, current, next_hop.as_ref());
        if let Some((index, entry)) = entry {
            let name = maps::NEXTHOPS;
            let mut entries: Array<_, NextHopEntry> = Array::try_from(self.map_mut(name)?)
                .map_err(|source| Error::Map { map: name, source })?;
            entries
                .set(index, entry, 0)
                .map_err(|source| Error::Map { map: name, source })?;
        } else if !current.is_live() {
            return Ok(());
        }
        self.write_nexthop_selector(id, selector)
    }

    /// Node `id`'s live cached next hop; none: its packets take the FIB path.
    pub fn nexthop(&self, id: u32) -> Result<Option<NextHopRow>, Error> {
        super::tables::check("node id", id, MAX_NODES)?;
        let selector = self.nexthop_selector(id)?;
        if !selector.is_live() {
            return Ok(None);
        }
        let name = maps::NEXTHOPS;
        let entries: Array<_, NextHopEntry> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        let entry = entries
            .get(&nexthop_index(id, selector.half()), 0)
            .map_err(|source| Error::Map { map: name, source })?;
        Ok(Some(row(id, selector.half(), &entry)))
    }

    /// Turns every node's cached next hop off (the FIB path for all): for when nobody keeps
    /// the cache current, at the agent's start and stop.
    pub fn clear_nexthops(&mut self) -> Result<(), Error> {
        for id in 0..MAX_NODES {
            if self.nexthop_selector(id)?.is_live() {
                self.write_nexthop_selector(id, NextHopSelector::NONE)?;
            }
        }
        Ok(())
    }

    fn nexthop_selector(&self, id: u32) -> Result<NextHopSelector, Error> {
        let name = maps::NEXTHOP_SELECTORS;
        let selectors: Array<_, NextHopSelector> =
            Array::try_from(self.map(name)?).map_err(|source| Error::Map { map: name, source })?;
        selectors
            .get(&id, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    fn write_nexthop_selector(&mut self, id: u32, selector: NextHopSelector) -> Result<(), Error> {
        let name = maps::NEXTHOP_SELECTORS;
        let mut selectors: Array<_, NextHopSelector> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| Error::Map { map: name, source })?;
        selectors
            .set(id, selector, 0)
            .map_err(|source| Error::Map { map: name, source })
    }

    /// Before node `id`'s entry changes to one whose first segment is `first` (none: removed):
    /// a cached next hop for another first segment goes first, so that no packet takes the new
    /// segment to the old one's next hop.
    pub(super) fn forget_nexthop_unless(
        &mut self,
        id: u32,
        old: Option<Ipv6Addr>,
        first: Option<Ipv6Addr>,
    ) -> Result<(), Error> {
        if old.is_some() && old == first {
            return Ok(());
        }
        self.set_nexthop(id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_hop(last: u8) -> NextHop {
        NextHop {
            ifindex: 3,
            mtu: 1500,
            neighbour: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            dst_mac: MacAddr([2, 0, 0, 0, 0, last]),
            src_mac: MacAddr([2, 0, 0, 0, 1, 1]),
        }
    }

    /// Each update writes the half readers are not on, then names it; turning off writes no
    /// entry.
    #[test]
    fn updates_write_the_idle_half_then_flip() {
        let id = 7;
        let mut selector = NextHopSelector::NONE;
        let mut halves = Vec::new();
        for last in 1..=4 {
            let nh = next_hop(last);
            let Update {
                entry,
                selector: next,
            } = update(id, selector, Some(&nh));
            let (index, written) = entry.expect("a next hop is written");
            assert!(next.is_live());
            assert_ne!(
                selector.is_live().then(|| selector.half()),
                Some(next.half()),
                "never the live half"
            );
            assert_eq!(index, nexthop_index(id, next.half()));
            assert_eq!(index / 2, id, "node {id}'s own slots");
            assert_eq!(written.dst_mac, [2, 0, 0, 0, 0, last]);
            halves.push(next.half());
            selector = next;
        }
        assert_eq!(halves, [1, 0, 1, 0]);
        assert_eq!(
            update(id, selector, None),
            Update {
                entry: None,
                selector: NextHopSelector::NONE
            }
        );
    }

    #[test]
    fn the_entry_is_the_answer() {
        let nh = next_hop(9);
        assert_eq!(
            nh.entry(),
            NextHopEntry {
                ifindex: 3,
                mtu: 1500,
                dst_mac: [2, 0, 0, 0, 0, 9],
                src_mac: [2, 0, 0, 0, 1, 1],
                _pad: [0; 4],
            }
        );
    }

    #[test]
    fn macs_read_and_print_as_ip_does() {
        let mac: MacAddr = "02:00:5e:10:0a:ff".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 0x5e, 0x10, 0x0a, 0xff]));
        assert_eq!(mac.to_string(), "02:00:5e:10:0a:ff");
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"02:00:5e:10:0a:ff\""
        );
        for bad in [
            "02:00:5e:10:0a",
            "02:00:5e:10:0a:ff:01",
            "2:00:5e:10:0a:ff",
            "zz:00:5e:10:0a:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(MacAddr::from_link_layer(&[0; 6]), None);
        assert_eq!(MacAddr::from_link_layer(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn a_node_entry_names_its_first_segment_last() {
        let mut entry = NodeEntry::EMPTY;
        assert_eq!(first_segment(&entry), None);
        entry.segments[0] = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0xd6).octets();
        entry.segments[1] = Ipv6Addr::new(0xfc00, 7, 0, 0, 0, 0, 0, 1).octets();
        entry.segment_count = 2;
        entry.state = NodeState::Active as u8;
        assert_eq!(
            first_segment(&entry),
            Some(Ipv6Addr::new(0xfc00, 7, 0, 0, 0, 0, 0, 1))
        );
    }
}
