//! Counter indexes and counter values.

/// What the parser found in a packet; the index into a protocol counter map.
///
/// `Ipv6`, `Ipv4`, `Arp`, `OtherEthertype` and `Malformed` partition all packets a program saw;
/// `VlanTagged` additionally counts those that carried one 802.1Q/802.1ad tag.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoCounter {
    /// IPv6 packets whose fixed header was complete.
    Ipv6 = 0,
    /// IPv4 packets whose header (including options, by IHL) was complete and well formed.
    Ipv4 = 1,
    /// ARP frames.
    Arp = 2,
    /// Frames of any other EtherType (passed to the kernel untouched).
    OtherEthertype = 3,
    /// Frames cut short before the end of a header we had to read, or whose IP version field
    /// disagrees with the EtherType, or an IPv4 IHL below 5. Passed to the kernel untouched.
    Malformed = 4,
    /// Frames that carried one VLAN tag (also counted by their inner protocol).
    VlanTagged = 5,
}

impl ProtoCounter {
    /// Number of counters, i.e. entries in a protocol counter map.
    pub const COUNT: u32 = 6;

    /// All counters in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Ipv6,
        Self::Ipv4,
        Self::Arp,
        Self::OtherEthertype,
        Self::Malformed,
        Self::VlanTagged,
    ];

    /// The stable name operators see (`cpnctl`, metrics labels).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv6 => "ipv6",
            Self::Ipv4 => "ipv4",
            Self::Arp => "arp",
            Self::OtherEthertype => "other_ethertype",
            Self::Malformed => "malformed",
            Self::VlanTagged => "vlan_tagged",
        }
    }

    /// The counter at `index`, if there is one.
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

/// One per-CPU counter slot: packets and bytes (frame length as the program saw it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

impl Counter {
    /// Sum of the per-CPU values of one slot.
    #[must_use]
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Self>) -> Self {
        per_cpu.into_iter().fold(Self::default(), |acc, c| Self {
            packets: acc.packets.wrapping_add(c.packets),
            bytes: acc.bytes.wrapping_add(c.bytes),
        })
    }
}

// SAFETY: `Counter` is `repr(C)`, `Copy`, has no padding (two u64) and every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::ProtoCounter;

    #[test]
    fn indexes_match_discriminants() {
        for (i, c) in ProtoCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(
                ProtoCounter::from_index(u32::try_from(i).unwrap()),
                Some(*c)
            );
        }
        assert_eq!(ProtoCounter::from_index(ProtoCounter::COUNT), None);
    }
}
