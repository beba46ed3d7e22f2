//! Graceful Restart (RFC 4724), sans-I/O: the capability we send and what we read from the
//! peer's, the address families it covers, and the restarting speaker's wait for its peers'
//! End-of-RIB. The FSM (fsm.rs) decides what a session end keeps; the speaker keeps the stale
//! paths in its Adj-RIB-In.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use netgauze_bgp_pkt::{
    capabilities::{BgpCapability, GracefulRestartAddressFamily, GracefulRestartCapability},
    open::BgpOpenMessage,
};
use netgauze_iana::address_family::AddressType;

/// The address families (AFI/SAFI) we speak: End-of-RIB and Graceful Restart are per family.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv6Unicast,
    Ipv4Unicast,
}

impl Family {
    pub const ALL: [Self; 2] = [Self::Ipv6Unicast, Self::Ipv4Unicast];

    /// The family a route's prefix belongs to.
    pub const fn of(prefix: &IpNet) -> Self {
        match prefix {
            IpNet::V6(_) => Self::Ipv6Unicast,
            IpNet::V4(_) => Self::Ipv4Unicast,
        }
    }

    pub const fn address_type(self) -> AddressType {
        match self {
            Self::Ipv6Unicast => AddressType::Ipv6Unicast,
            Self::Ipv4Unicast => AddressType::Ipv4Unicast,
        }
    }

    /// `None` for the families we do not speak.
    pub fn from_address_type(address_type: AddressType) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.address_type() == address_type)
    }

    /// Short name for operators.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv6Unicast => "ipv6",
            Self::Ipv4Unicast => "ipv4",
        }
    }
}

/// A set of [`Family`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    ipv6: bool,
    ipv4: bool,
}

impl Families {
    pub const NONE: Self = Self {
        ipv6: false,
        ipv4: false,
    };
    pub const ALL: Self = Self {
        ipv6: true,
        ipv4: true,
    };

    fn slot(&mut self, family: Family) -> &mut bool {
        match family {
            Family::Ipv6Unicast => &mut self.ipv6,
            Family::Ipv4Unicast => &mut self.ipv4,
        }
    }

    pub const fn contains(self, family: Family) -> bool {
        match family {
            Family::Ipv6Unicast => self.ipv6,
            Family::Ipv4Unicast => self.ipv4,
        }
    }

    pub fn insert(&mut self, family: Family) {
        *self.slot(family) = true;
    }

    pub fn remove(&mut self, family: Family) {
        *self.slot(family) = false;
    }

    pub const fn is_empty(self) -> bool {
        !self.ipv6 && !self.ipv4
    }

    /// The families in both.
    #[must_use]
    pub const fn and(self, other: Self) -> Self {
        Self {
            ipv6: self.ipv6 && other.ipv6,
            ipv4: self.ipv4 && other.ipv4,
        }
    }

    /// The families in `self` and not in `other`.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self {
            ipv6: self.ipv6 && !other.ipv6,
            ipv4: self.ipv4 && !other.ipv4,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Family> for Families {
    fn from_iter<I: IntoIterator<Item = Family>>(families: I) -> Self {
        let mut set = Self::NONE;
        for family in families {
            set.insert(family);
        }
        set
    }
}

/// The largest restart time the capability can carry: 12 bits of seconds (RFC 4724 §3).
pub const MAX_RESTART_TIME: Duration = Duration::from_secs(4095);

/// Our side of Graceful Restart for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ours {
    /// How long peers may keep our routes when our session ends without a NOTIFICATION;
    /// zero turns Graceful Restart off (no capability; a peer's routes go when its session
    /// ends).
    pub restart_time: Duration,
    /// Our forwarding state survives a restart of the agent (its data plane stays attached):
    /// the families go into the capability, each with its Forwarding State bit. Without it the
    /// capability lists none (RFC 4724 §3: we then only help peers that restart).
    pub forwarding_preserved: bool,
}

impl Ours {
    pub const OFF: Self = Self {
        restart_time: Duration::ZERO,
        forwarding_preserved: false,
    };

    pub const fn enabled(self) -> bool {
        !self.restart_time.is_zero()
    }

    /// The capability for our OPEN; `restarting` sets the Restart State bit. No Notification
    /// bit: RFC 8538 is not implemented, so every NOTIFICATION ends a session the RFC 4271
    /// way (RFC 4724 §4).
    pub fn capability(self, restarting: bool) -> Option<BgpCapability> {
        if !self.enabled() {
            return None;
        }
        let time = u16::try_from(self.restart_time.min(MAX_RESTART_TIME).as_secs())
            .expect("4095 fits in 16 bits");
        let families: Vec<GracefulRestartAddressFamily> = if self.forwarding_preserved {
            Family::ALL
                .iter()
                .map(|f| GracefulRestartAddressFamily::new(true, f.address_type()))
                .collect()
        } else {
            Vec::new()
        };
        Some(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(restarting, false, time, families),
        ))
    }
}

/// What the peer's Graceful Restart capability says (RFC 4724 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRestart {
    /// How long to keep its routes after its session ends without a NOTIFICATION.
    pub restart_time: Duration,
    /// The Restart State bit: it has restarted and does not wait for our End-of-RIB.
    pub restarted: bool,
    /// The families whose routes we keep while it restarts.
    pub families: Families,
    /// Of those, the ones whose forwarding state it kept through its last restart.
    pub forwarding_preserved: Families,
}

impl PeerRestart {
    /// The peer's capability; of several, the last counts (RFC 4724 §3). Families we do not
    /// speak are left out.
    pub fn from_open(open: &BgpOpenMessage) -> Option<Self> {
        let capability = open
            .capabilities()
            .into_iter()
            .filter_map(|c| match c {
                BgpCapability::GracefulRestartCapability(gr) => Some(gr),
                _ => None,
            })
            .next_back()?;
        let listed = || {
            capability
                .address_families()
                .iter()
                .filter_map(|f| Some((Family::from_address_type(f.address_type())?, f)))
        };
        Some(Self {
            restart_time: Duration::from_secs(u64::from(capability.time())),
            restarted: capability.restart(),
            families: listed().map(|(family, _)| family).collect(),
            forwarding_preserved: listed()
                .filter(|(_, f)| f.forwarding_state())
                .map(|(family, _)| family)
                .collect(),
        })
    }
}

/// What happens to a neighbor's paths when its session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retain {
    /// They all go.
    Nothing,
    /// The peer restarts (RFC 4724 §4.2): its paths of these families stay, marked stale;
    /// paths still stale from an earlier restart go (consecutive restarts), and so does every
    /// path of another family.
    MarkStale(Families),
    /// The session never came up, and no NOTIFICATION was exchanged: the paths still stale
    /// from the restart keep waiting for the peer.
    StaleOnly,
}

/// The restarting speaker's wait (RFC 4724 §4.1): End-of-RIB goes to no peer before every
/// peer has sent its own, except peers without Graceful Restart or that restarted themselves,
/// or until the selection deferral time is over. Otherwise a peer would drop the stale paths
/// we pass on from a neighbor whose routes have not arrived again yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deferral {
    /// When the wait ends at the latest; `None` once it is over (or there is none).
    until: Option<Instant>,
    /// For each neighbor, the families whose End-of-RIB we still wait for; `None` while its
    /// session has not come up since the agent started.
    awaited: BTreeMap<IpAddr, Option<Families>>,
}

impl Deferral {
    /// A wait for `neighbors`, until `until` at the latest.
    pub fn new(neighbors: impl IntoIterator<Item = IpAddr>, until: Instant) -> Self {
        Self {
            until: Some(until),
            awaited: neighbors.into_iter().map(|n| (n, None)).collect(),
        }
    }

    /// No wait: we did not restart with our forwarding state.
    pub fn none() -> Self {
        Self::default()
    }

    /// `neighbor`'s session is up; we wait for its End-of-RIB of `families` (none when it
    /// restarted itself or has no Graceful Restart).
    pub fn peer_up(&mut self, neighbor: IpAddr, families: Families) {
        if let Some(awaited) = self.awaited.get_mut(&neighbor) {
            *awaited = Some(families);
        }
    }

    pub fn end_of_rib(&mut self, neighbor: IpAddr, family: Family) {
        if let Some(Some(awaited)) = self.awaited.get_mut(&neighbor) {
            awaited.remove(family);
        }
    }

    /// Ends the wait once every peer's End-of-RIB is in; once over, it stays over.
    pub fn settle(&mut self) {
        let all_in = self
            .awaited
            .values()
            .all(|a| a.is_some_and(Families::is_empty));
        if all_in {
            self.until = None;
        }
    }

    /// Ends the wait: its deadline has passed.
    pub const fn expire(&mut self) {
        self.until = None;
    }

    /// Whether we may send End-of-RIB.
    pub const fn over(&self) -> bool {
        self.until.is_none()
    }

    /// When the wait ends at the latest, while it lasts.
    pub const fn deadline(&self) -> Option<Instant> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use bytes::BytesMut;
    use netgauze_bgp_pkt::{BgpMessage, codec::BgpCodec, open::BgpOpenMessageParameter};
    use tokio_util::codec::{Decoder as _, Encoder as _};

    use super::*;

    fn open_with(capabilities: Vec<BgpCapability>) -> BgpOpenMessage {
        BgpOpenMessage::new(
            65001,
            9,
            Ipv4Addr::new(10, 0, 0, 1),
            vec![BgpOpenMessageParameter::new_capabilities(capabilities)],
        )
    }

    /// Through the codec and back, as the peer reads it.
    fn on_the_wire(open: BgpOpenMessage) -> (Vec<u8>, BgpOpenMessage) {
        let mut bytes = BytesMut::new();
        BgpCodec::default()
            .encode(BgpMessage::Open(open), &mut bytes)
            .unwrap();
        let wire = bytes.to_vec();
        let Some((BgpMessage::Open(read), _)) = BgpCodec::default().decode(&mut bytes).unwrap()
        else {
            panic!("not an OPEN")
        };
        (wire, read)
    }

    #[test]
    fn our_capability_carries_the_restart_time_the_bits_and_both_families() {
        let ours = Ours {
            restart_time: Duration::from_mins(2),
            forwarding_preserved: true,
        };
        let (wire, read) = on_the_wire(open_with(vec![ours.capability(true).unwrap()]));
        // Optional parameter 2 (capabilities), capability 64 of 10 bytes: R bit and 120 s
        // (0x8078), then IPv6 unicast (2, 1) and IPv4 unicast (1, 1), each with the F bit.
        let capability = [64, 10, 0x80, 0x78, 0, 2, 1, 0x80, 0, 1, 1, 0x80];
        assert!(
            wire.windows(capability.len()).any(|w| w == capability),
            "{wire:02x?}"
        );
        let peer = PeerRestart::from_open(&read).unwrap();
        assert_eq!(
            peer,
            PeerRestart {
                restart_time: Duration::from_mins(2),
                restarted: true,
                families: Families::ALL,
                forwarding_preserved: Families::ALL,
            }
        );
    }

    #[test]
    fn without_preserved_forwarding_the_capability_lists_no_family() {
        let helper = Ours {
            restart_time: Duration::from_secs(4095),
            forwarding_preserved: false,
        };
        let (wire, read) = on_the_wire(open_with(vec![helper.capability(false).unwrap()]));
        let capability = [64, 2, 0x0f, 0xff];
        assert!(
            wire.windows(capability.len()).any(|w| w == capability),
            "{wire:02x?}"
        );
        let peer = PeerRestart::from_open(&read).unwrap();
        assert!(peer.families.is_empty() && !peer.restarted);
        assert_eq!(Ours::OFF.capability(true), None, "0 s: no capability");
    }

    #[test]
    fn the_last_of_several_capabilities_counts_and_unknown_families_are_left_out() {
        let first = BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
            false,
            false,
            300,
            vec![GracefulRestartAddressFamily::new(
                true,
                AddressType::Ipv6Unicast,
            )],
        ));
        let last = BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
            false,
            false,
            60,
            vec![
                GracefulRestartAddressFamily::new(false, AddressType::Ipv4Unicast),
                GracefulRestartAddressFamily::new(true, AddressType::L2VpnBgpEvpn),
            ],
        ));
        let (_, read) = on_the_wire(open_with(vec![first, last]));
        let peer = PeerRestart::from_open(&read).unwrap();
        assert_eq!(peer.restart_time, Duration::from_mins(1));
        assert_eq!(peer.families, [Family::Ipv4Unicast].into_iter().collect());
        assert!(peer.forwarding_preserved.is_empty());
        assert_eq!(PeerRestart::from_open(&open_with(vec![])), None);
    }

    #[test]
    fn the_deferral_ends_with_every_peers_end_of_rib_or_at_its_deadline() {
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let until = Instant::now() + Duration::from_secs(30);
        let mut wait = Deferral::new([a, b, c], until);
        wait.settle();
        assert!(!wait.over(), "no peer is up yet");
        wait.peer_up(a, Families::ALL);
        wait.peer_up(b, Families::NONE); // restarted itself, or no Graceful Restart
        wait.peer_up(c, [Family::Ipv6Unicast].into_iter().collect());
        wait.end_of_rib(a, Family::Ipv6Unicast);
        wait.end_of_rib(c, Family::Ipv6Unicast);
        wait.settle();
        assert!(!wait.over(), "a's IPv4 End-of-RIB is missing");
        assert_eq!(wait.deadline(), Some(until));
        wait.end_of_rib(a, Family::Ipv4Unicast);
        wait.settle();
        assert!(wait.over());
        assert_eq!(wait.deadline(), None);

        let mut silent = Deferral::new([a], until);
        assert!(!silent.over());
        silent.expire();
        assert!(silent.over(), "the deadline ends it");
        silent.peer_up(a, Families::ALL);
        silent.settle();
        assert!(silent.over(), "and it stays over");
        assert!(Deferral::none().over());
    }
}
