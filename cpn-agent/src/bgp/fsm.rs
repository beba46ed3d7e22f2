//! The BGP session FSM (RFC 4271 §8), sans-I/O: events in, actions out, time injected. The
//! tokio edges turn sockets and timers into [`Event`]s and carry out [`Action`]s, so this can be
//! tested deterministically without sleeping.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        AddPathAddressFamily, AddPathCapability, BgpCapability, ExtendedNextHopEncoding,
        ExtendedNextHopEncodingCapability, FourOctetAsCapability,
        MultiProtocolExtensionsCapability,
    },
    notification::{
        BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
        OpenMessageError,
    },
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    update::BgpUpdateMessage,
};
use netgauze_iana::address_family::{AddressFamily, AddressType};

use super::route::AddPath;

/// RFC 4271 §8.2.2 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// What the edges tell the FSM.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    ManualStart,
    ManualStop,
    /// A TCP connection to (`outgoing`) or from the peer is up.
    TcpConnected {
        outgoing: bool,
    },
    /// The peer's OPEN on a second connection while this one is past Active: a connection
    /// collision (RFC 4271 §6.8). The edges hold that connection until the FSM answers with
    /// [`Action::RejectColliding`] or [`Action::AdoptColliding`].
    CollidingOpen {
        open: BgpOpenMessage,
        outgoing: bool,
    },
    /// The current connection closed (or the peer closed it with a NOTIFICATION) before the
    /// session was up, while a colliding one waits: the peer resolved the collision first and
    /// kept the other connection, which becomes the current one.
    ConnectionReplaced {
        outgoing: bool,
    },
    /// The TCP connection failed or closed.
    TcpFailed,
    Message(BgpMessage),
    /// Link sensing (probe.rs) lost the neighbor: tear the session down now, as BGP does on a
    /// BFD down (RFC 5882 §4.1), instead of waiting for the hold timer.
    PeerDead,
    /// The neighbor sent more prefixes than its configured maximum (RFC 4486 §4).
    TooManyPrefixes(usize),
    /// A message that ends the session (errors.rs): this NOTIFICATION goes to the peer first,
    /// unless there is none to send (a broken NOTIFICATION is never answered).
    Malformed {
        notification: Option<BgpNotificationMessage>,
        why: String,
    },
}

/// What the FSM asks the edges to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    Send(BgpMessage),
    /// The session is up with these parameters.
    Up(Negotiated),
    /// The session went down.
    Down(String),
    /// An UPDATE to process (Established only).
    Update(BgpUpdateMessage),
    /// The peer asked for our routes again (ROUTE-REFRESH, RFC 2918).
    ResendAll,
    /// The colliding connection loses: send it a Cease (Connection Collision Resolution) and
    /// close it.
    RejectColliding,
    /// The colliding connection wins: send the current one a Cease (Connection Collision
    /// Resolution), close it, and carry on over the colliding one.
    AdoptColliding,
}

/// What both sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    pub hold_time: Duration,
    /// We send path identifiers: the families where the peer receives them.
    pub add_path_tx: AddPath,
    /// The peer sends path identifiers: the families where it said so.
    pub add_path_rx: AddPath,
    /// The peer takes IPv4 unicast routes with an IPv6 next hop (RFC 8950): the only kind of
    /// IPv4 route we send, so without it we send none.
    pub ipv4_over_ipv6: bool,
}

/// A session's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub peer_asn: u32,
    pub hold_time: Duration,
    pub connect_retry: Duration,
    /// Wait for the peer to connect instead of connecting.
    pub passive: bool,
}

/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
const LARGE_HOLD: Duration = Duration::from_mins(4);
/// How long a session closed for too many prefixes stays down before it restarts (as FRR's
/// `maximum-prefix N restart 1`).
pub const MAX_PREFIX_IDLE_HOLD: Duration = Duration::from_mins(1);
/// `AS_TRANS` (RFC 6793), sent in the 2-byte field when the ASN needs 4 bytes.
pub const AS_TRANS: u16 = 23456;

#[derive(Debug)]
pub struct Fsm {
    config: PeerConfig,
    state: State,
    negotiated: Option<Negotiated>,
    connect_retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    /// Restart automatically after a failure (RFC 4271 `AutomaticStart`), at this time.
    restart_at: Option<Instant>,
    stopped: bool,
    /// Whether we opened the current connection (collision resolution keeps the one opened by
    /// the speaker with the higher BGP identifier).
    outgoing: bool,
}

impl Fsm {
    pub fn new(config: PeerConfig) -> Self {
        Self {
            config,
            state: State::Idle,
            negotiated: None,
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            restart_at: None,
            stopped: true,
            outgoing: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The earliest time [`Fsm::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.connect_retry_at,
            self.hold_at,
            self.keepalive_at,
            self.restart_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one event at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match (self.state, event) {
            (State::Idle, Event::ManualStart) => self.start(now),
            (_, Event::ManualStop) => self.stop(now),
            (State::Connect | State::Active, Event::TcpConnected { outgoing }) => {
                self.outgoing = outgoing;
                self.connect_retry_at = None;
                self.hold_at = Some(now + LARGE_HOLD);
                self.state = State::OpenSent;
                vec![Action::Send(self.open())]
            }
            (State::OpenSent | State::OpenConfirm, Event::CollidingOpen { open, outgoing }) => {
                self.resolve_collision(now, &open, outgoing)
            }
            (State::OpenSent | State::OpenConfirm, Event::ConnectionReplaced { outgoing }) => {
                self.replace_connection(now, outgoing)
            }
            // Established: the session that is up stays (RFC 4271 §6.8, without the optional
            // CollisionDetectEstablishedState); Idle, Connect and Active: not expected.
            (_, Event::CollidingOpen { .. }) => vec![Action::RejectColliding],
            // No-ops: a second connection while one is open is a collision (above), handled
            // once its OPEN arrives; a start while running; a failure while idle.
            (_, Event::TcpConnected { .. } | Event::ManualStart)
            | (State::Idle, Event::TcpFailed) => vec![],
            (State::Connect | State::Active, Event::TcpFailed) => {
                self.state = State::Active;
                self.connect_retry_at = Some(now + self.config.connect_retry);
                vec![]
            }
            (_, Event::TcpFailed) => self.reset(now, "the TCP connection closed"),
            (State::Established, Event::TooManyPrefixes(limit)) => {
                self.too_many_prefixes(now, limit)
            }
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::Malformed {
                    notification: n,
                    why,
                },
            ) => {
                let mut actions: Vec<Action> = n.into_iter().map(notification).collect();
                actions.extend(self.reset(now, &format!("malformed message: {why}")));
                actions
            }
            (_, Event::Malformed { .. } | Event::ConnectionReplaced { .. }) => {
                vec![Action::Disconnect]
            }
            (_, Event::TooManyPrefixes(_))
            | (State::Idle | State::Connect | State::Active, Event::PeerDead) => vec![],
            // BFD Down (RFC 9384), in case the TCP path still works.
            (_, Event::PeerDead) => self.cease(
                now,
                CeaseError::BfdDown { value: empty() },
                "link probe: the neighbor stopped answering",
            ),
            (State::OpenSent, Event::Message(BgpMessage::Open(open))) => {
                self.open_received(now, &open)
            }
            (State::OpenConfirm, Event::Message(BgpMessage::KeepAlive)) => {
                self.state = State::Established;
                self.hold_at = self.hold_deadline(now);
                vec![Action::Up(self.negotiated.expect("negotiated in OpenSent"))]
            }
            (State::Established, Event::Message(BgpMessage::KeepAlive)) => {
                self.hold_at = self.hold_deadline(now);
                vec![]
            }
            (State::Established, Event::Message(BgpMessage::Update(update))) => {
                self.hold_at = self.hold_deadline(now);
                vec![Action::Update(update)]
            }
            (State::Established, Event::Message(BgpMessage::RouteRefresh(_))) => {
                self.hold_at = self.hold_deadline(now);
                vec![Action::ResendAll]
            }
            (_, Event::Message(BgpMessage::Notification(n))) => {
                self.reset(now, &format!("the peer sent {n:?}"))
            }
            (state, Event::Message(m)) => {
                let error = match state {
                    State::OpenSent => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState {
                            value: vec![m.get_type() as u8].into(),
                        }
                    }
                    State::OpenConfirm => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState {
                            value: vec![m.get_type() as u8].into(),
                        }
                    }
                    State::Established => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState {
                            value: vec![m.get_type() as u8].into(),
                        }
                    }
                    _ => return vec![Action::Disconnect],
                };
                let mut actions = vec![notification(
                    BgpNotificationMessage::FiniteStateMachineError(error),
                )];
                actions.extend(
                    self.reset(now, &format!("unexpected {:?} in {state:?}", m.get_type())),
                );
                actions
            }
        }
    }

    /// Fires the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let due = |at: Option<Instant>| at.is_some_and(|t| t <= now);
        if due(self.restart_at) {
            self.restart_at = None;
            return self.start(now);
        }
        if due(self.hold_at) {
            let mut actions = vec![notification(BgpNotificationMessage::HoldTimerExpiredError(
                HoldTimerExpiredError::Unspecific {
                    sub_code: 0,
                    value: empty(),
                },
            ))];
            actions.extend(self.reset(now, "hold timer expired"));
            return actions;
        }
        if due(self.keepalive_at) {
            self.keepalive_at = self
                .negotiated
                .map(|n| now + keepalive_interval(n.hold_time))
                .filter(|_| !self.negotiated.is_some_and(|n| n.hold_time.is_zero()));
            return vec![Action::Send(BgpMessage::KeepAlive)];
        }
        if due(self.connect_retry_at) {
            self.connect_retry_at = Some(now + self.config.connect_retry);
            if self.config.passive {
                return vec![];
            }
            self.state = State::Connect;
            return vec![Action::Connect];
        }
        vec![]
    }

    fn too_many_prefixes(&mut self, now: Instant, limit: usize) -> Vec<Action> {
        // Data: AFI (2), SAFI (1), the limit (4).
        let mut value = vec![0, 2, 1];
        value.extend_from_slice(&u32::try_from(limit).unwrap_or(u32::MAX).to_be_bytes());
        let error = CeaseError::MaximumNumberOfPrefixesReached {
            value: value.into_boxed_slice(),
        };
        let actions = self.cease(now, error, &format!("more than {limit} prefixes received"));
        // A peer that floods us would flood us again at once: stay down longer.
        self.restart_at = self.restart_at.map(|_| now + MAX_PREFIX_IDLE_HOLD);
        actions
    }

    fn stop(&mut self, now: Instant) -> Vec<Action> {
        self.stopped = true;
        let mut actions = Vec::new();
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            actions.push(notification(BgpNotificationMessage::CeaseError(
                CeaseError::AdministrativeShutdown { value: empty() },
            )));
        }
        actions.extend(self.reset(now, "stopped by the operator"));
        actions
    }

    fn start(&mut self, now: Instant) -> Vec<Action> {
        self.stopped = false;
        self.connect_retry_at = Some(now + self.config.connect_retry);
        if self.config.passive {
            self.state = State::Active;
            vec![]
        } else {
            self.state = State::Connect;
            vec![Action::Connect]
        }
    }

    fn open_received(&mut self, now: Instant, open: &BgpOpenMessage) -> Vec<Action> {
        let peer_asn = open.my_asn4();
        let hold = Duration::from_secs(u64::from(open.hold_time()));
        let refuse = |error: OpenMessageError, why: String| (error, why);
        let problem = if peer_asn != self.config.peer_asn {
            Some(refuse(
                OpenMessageError::BadPeerAs { value: empty() },
                format!("peer AS {peer_asn}, expected {}", self.config.peer_asn),
            ))
        } else if !hold.is_zero() && hold < Duration::from_secs(3) {
            Some(refuse(
                OpenMessageError::UnacceptableHoldTime { value: empty() },
                format!("hold time {hold:?} below 3 s"),
            ))
        } else if open.bgp_id().is_unspecified() || open.bgp_id() == self.config.router_id {
            Some(refuse(
                OpenMessageError::BadBgpIdentifier { value: empty() },
                format!("BGP identifier {}", open.bgp_id()),
            ))
        } else {
            None
        };
        if let Some((error, why)) = problem {
            let mut actions = vec![notification(BgpNotificationMessage::OpenMessageError(
                error,
            ))];
            actions.extend(self.reset(now, &why));
            return actions;
        }
        let (add_path_tx, add_path_rx) = add_path(open);
        let hold_time = hold.min(self.config.hold_time);
        self.negotiated = Some(Negotiated {
            peer_asn,
            peer_router_id: open.bgp_id(),
            hold_time,
            add_path_tx,
            add_path_rx,
            ipv4_over_ipv6: ipv4_over_ipv6(open),
        });
        self.state = State::OpenConfirm;
        self.hold_at = self.hold_deadline(now);
        self.keepalive_at = (!hold_time.is_zero()).then(|| now + keepalive_interval(hold_time));
        vec![Action::Send(BgpMessage::KeepAlive)]
    }

    /// RFC 4271 §6.8: the connection opened by the speaker with the higher BGP identifier
    /// stays. Between two connections opened by the same side, the older one stays.
    fn resolve_collision(
        &mut self,
        now: Instant,
        open: &BgpOpenMessage,
        outgoing: bool,
    ) -> Vec<Action> {
        let we_are_higher = u32::from(self.config.router_id) > u32::from(open.bgp_id());
        let keep_current = outgoing == self.outgoing || self.outgoing == we_are_higher;
        if keep_current {
            return vec![Action::RejectColliding];
        }
        // Over the new connection: our OPEN, then the peer's, as if it had come first.
        self.outgoing = outgoing;
        self.state = State::OpenSent;
        let mut actions = vec![Action::AdoptColliding, Action::Send(self.open())];
        actions.extend(self.open_received(now, open));
        actions
    }

    /// Starts over, from our OPEN, on the connection that replaced the current one.
    fn replace_connection(&mut self, now: Instant, outgoing: bool) -> Vec<Action> {
        self.negotiated = None;
        self.keepalive_at = None;
        self.state = State::Active;
        self.handle(now, Event::TcpConnected { outgoing })
    }

    fn hold_deadline(&self, now: Instant) -> Option<Instant> {
        self.negotiated
            .map(|n| n.hold_time)
            .filter(|h| !h.is_zero())
            .map(|h| now + h)
    }

    /// Back to Idle; restarts automatically after the connect-retry time unless stopped.
    /// Ends the session with a Cease NOTIFICATION.
    fn cease(&mut self, now: Instant, error: CeaseError, why: &str) -> Vec<Action> {
        let mut actions = vec![notification(BgpNotificationMessage::CeaseError(error))];
        actions.extend(self.reset(now, why));
        actions
    }

    fn reset(&mut self, now: Instant, why: &str) -> Vec<Action> {
        let was_up = self.state == State::Established;
        self.state = State::Idle;
        self.negotiated = None;
        self.hold_at = None;
        self.keepalive_at = None;
        self.connect_retry_at = None;
        self.restart_at = (!self.stopped).then(|| now + self.config.connect_retry);
        let mut actions = vec![Action::Disconnect];
        if was_up || why.contains("operator") {
            actions.push(Action::Down(why.to_owned()));
        } else {
            actions.push(Action::Down(format!("session not established: {why}")));
        }
        actions
    }

    /// Our OPEN: MP-BGP IPv6 and IPv4 unicast, 4-byte ASN, ADD-PATH send/receive, route
    /// refresh, and IPv4 unicast over IPv6 next hops (RFC 8950).
    pub fn open(&self) -> BgpMessage {
        let my_as = u16::try_from(self.config.local_asn).unwrap_or(AS_TRANS);
        let hold = u16::try_from(self.config.hold_time.as_secs()).unwrap_or(u16::MAX);
        let capabilities = vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv6Unicast,
            )),
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv4Unicast,
            )),
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(self.config.local_asn)),
            BgpCapability::AddPath(AddPathCapability::new(vec![
                AddPathAddressFamily::new(AddressType::Ipv6Unicast, true, true),
                AddPathAddressFamily::new(AddressType::Ipv4Unicast, true, true),
            ])),
            BgpCapability::RouteRefresh,
            BgpCapability::ExtendedNextHopEncoding(ExtendedNextHopEncodingCapability::new(vec![
                ExtendedNextHopEncoding::new(AddressType::Ipv4Unicast, AddressFamily::IPv6),
            ])),
        ];
        BgpMessage::Open(BgpOpenMessage::new(
            my_as,
            hold,
            self.config.router_id,
            vec![BgpOpenMessageParameter::new_capabilities(capabilities)],
        ))
    }
}

/// RFC 4271 §10: keepalives at a third of the hold time.
fn keepalive_interval(hold: Duration) -> Duration {
    hold / 3
}

/// ADD-PATH per direction and family from the peer's OPEN (RFC 7911 §4): we offered to send
/// and receive for both families, so we send where the peer receives and read path
/// identifiers where it sends.
fn add_path(open: &BgpOpenMessage) -> (AddPath, AddPath) {
    let (mut tx, mut rx) = (AddPath::default(), AddPath::default());
    for capability in open.capabilities() {
        let BgpCapability::AddPath(add_path) = capability else {
            continue;
        };
        for family in add_path.address_families() {
            let (tx_slot, rx_slot) = match family.address_type() {
                AddressType::Ipv6Unicast => (&mut tx.ipv6, &mut rx.ipv6),
                AddressType::Ipv4Unicast => (&mut tx.ipv4, &mut rx.ipv4),
                _ => continue,
            };
            *tx_slot |= family.receive();
            *rx_slot |= family.send();
        }
    }
    (tx, rx)
}

/// Whether the peer's OPEN offers IPv4 unicast NLRI with IPv6 next hops (RFC 8950 §3).
fn ipv4_over_ipv6(open: &BgpOpenMessage) -> bool {
    open.capabilities().iter().any(|c| {
        matches!(c, BgpCapability::ExtendedNextHopEncoding(e) if e.encodings().iter().any(|e| {
            e.address_type() == AddressType::Ipv4Unicast && e.next_hop_afi() == AddressFamily::IPv6
        }))
    })
}

fn notification(n: BgpNotificationMessage) -> Action {
    Action::Send(BgpMessage::Notification(n))
}

fn empty() -> Box<[u8]> {
    Box::new([])
}

#[cfg(test)]
mod tests {
    use netgauze_bgp_pkt::{iana::RouteRefreshSubcode, route_refresh::BgpRouteRefreshMessage};

    use super::*;

    fn config(asn: u32, peer: u32, id: [u8; 4], passive: bool) -> PeerConfig {
        PeerConfig {
            local_asn: asn,
            router_id: Ipv4Addr::from(id),
            peer_asn: peer,
            hold_time: Duration::from_secs(9),
            connect_retry: Duration::from_secs(5),
            passive,
        }
    }

    /// Splits actions into messages to send and the rest.
    fn split(actions: Vec<Action>) -> (Vec<BgpMessage>, Vec<Action>) {
        let mut sends = Vec::new();
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Send(m) => sends.push(m),
                other => rest.push(other),
            }
        }
        (sends, rest)
    }

    /// Two speakers over one "connection": delivers each side's messages to the other until
    /// both are quiet; returns the non-message actions of each.
    fn pump(
        a: &mut Fsm,
        b: &mut Fsm,
        now: Instant,
        mut to_b: Vec<BgpMessage>,
        mut to_a: Vec<BgpMessage>,
    ) -> (Vec<Action>, Vec<Action>) {
        let (mut events_a, mut events_b) = (Vec::new(), Vec::new());
        while !(to_a.is_empty() && to_b.is_empty()) {
            for m in std::mem::take(&mut to_b) {
                let (sends, rest) = split(b.handle(now, Event::Message(m)));
                to_a.extend(sends);
                events_b.extend(rest);
            }
            for m in std::mem::take(&mut to_a) {
                let (sends, rest) = split(a.handle(now, Event::Message(m)));
                to_b.extend(sends);
                events_a.extend(rest);
            }
        }
        (events_a, events_b)
    }

    fn established() -> (Fsm, Fsm, Instant) {
        let now = Instant::now();
        let mut a = Fsm::new(config(4_200_000_001, 4_200_000_002, [10, 0, 0, 1], false));
        let mut b = Fsm::new(config(4_200_000_002, 4_200_000_001, [10, 0, 0, 2], true));
        assert_eq!(a.handle(now, Event::ManualStart), vec![Action::Connect]);
        assert_eq!(b.handle(now, Event::ManualStart), vec![]);
        assert_eq!(b.state(), State::Active);
        let (a_open, _) = split(a.handle(now, Event::TcpConnected { outgoing: true }));
        let (b_open, _) = split(b.handle(now, Event::TcpConnected { outgoing: false }));
        let (ea, eb) = pump(&mut a, &mut b, now, a_open, b_open);
        assert!(ea.iter().any(|x| matches!(x, Action::Up(_))), "{ea:?}");
        assert!(eb.iter().any(|x| matches!(x, Action::Up(_))), "{eb:?}");
        (a, b, now)
    }

    #[test]
    fn two_speakers_establish_with_add_path_and_4_byte_asns() {
        let (a, b, _) = established();
        assert_eq!(a.state(), State::Established);
        assert_eq!(b.state(), State::Established);
        let n = a.negotiated().unwrap();
        assert_eq!(n.peer_asn, 4_200_000_002);
        assert_eq!(n.add_path_tx, AddPath::BOTH);
        assert_eq!(n.add_path_rx, AddPath::BOTH);
        assert_eq!(n.hold_time, Duration::from_secs(9));
        assert!(
            n.ipv4_over_ipv6,
            "both offer IPv4 over IPv6 next hops (RFC 8950)"
        );
        let BgpMessage::Open(open) = a.open() else {
            unreachable!()
        };
        // A peer without that capability (FRR unless configured) gets no IPv4 routes.
        let plain = BgpOpenMessage::new(
            open.my_as(),
            open.hold_time(),
            open.bgp_id(),
            vec![BgpOpenMessageParameter::new_capabilities(
                open.capabilities()
                    .into_iter()
                    .filter(|c| !matches!(c, BgpCapability::ExtendedNextHopEncoding(_)))
                    .cloned()
                    .collect::<Vec<_>>(),
            )],
        );
        assert!(ipv4_over_ipv6(&open) && !ipv4_over_ipv6(&plain));
        assert_eq!(
            open.my_as(),
            AS_TRANS,
            "4-byte ASNs send AS_TRANS in the 2-byte field"
        );
    }

    #[test]
    fn a_route_refresh_asks_for_everything_again_and_keeps_the_session_alive() {
        let (mut a, _, now) = established();
        let refresh = BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
            AddressType::Ipv6Unicast,
            RouteRefreshSubcode::NormalRequest,
        ));
        let later = now + Duration::from_secs(8);
        assert_eq!(
            a.handle(later, Event::Message(refresh)),
            vec![Action::ResendAll]
        );
        // The hold timer restarted at the refresh: still up past the original 9 s.
        for s in 9..=16 {
            let actions = a.poll(now + Duration::from_secs(s));
            assert!(
                actions
                    .iter()
                    .all(|x| matches!(x, Action::Send(BgpMessage::KeepAlive))),
                "{s}: {actions:?}"
            );
        }
        assert_eq!(a.state(), State::Established);
    }

    #[test]
    fn a_dead_link_tears_the_session_down_at_once() {
        let (mut a, _, now) = established();
        let actions = a.handle(now + Duration::from_millis(300), Event::PeerDead);
        assert!(
            matches!(
                &actions[0],
                Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::CeaseError(CeaseError::BfdDown { .. })
                ))
            ),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Disconnect));
        assert!(actions.iter().any(|x| matches!(x, Action::Down(_))));
        assert_eq!(a.state(), State::Idle);
        // Not connected: nothing to tear down.
        assert!(a.handle(now, Event::PeerDead).is_empty());
    }

    #[test]
    fn too_many_prefixes_end_the_session_with_the_limit_in_the_notification() {
        let (mut a, _, now) = established();
        let actions = a.handle(now, Event::TooManyPrefixes(100));
        let Action::Send(BgpMessage::Notification(BgpNotificationMessage::CeaseError(
            CeaseError::MaximumNumberOfPrefixesReached { value },
        ))) = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(&value[..], &[0, 2, 1, 0, 0, 0, 100]);
        assert_eq!(a.state(), State::Idle);
        assert_eq!(a.next_deadline(), Some(now + MAX_PREFIX_IDLE_HOLD));
    }

    #[test]
    fn keepalives_at_a_third_of_the_hold_time() {
        let (mut a, _, now) = established();
        assert!(a.poll(now + Duration::from_secs(2)).is_empty());
        assert_eq!(
            a.poll(now + Duration::from_secs(3)),
            vec![Action::Send(BgpMessage::KeepAlive)]
        );
    }

    #[test]
    fn hold_timer_expiry_tears_down_and_restarts() {
        let (mut a, _, now) = established();
        // Keepalives go out, but nothing comes back.
        let mut t = now;
        let mut down = Vec::new();
        while a.state() == State::Established {
            t += Duration::from_secs(1);
            down = a.poll(t);
        }
        assert_eq!(
            t - now,
            Duration::from_secs(9),
            "torn down exactly at the hold time"
        );
        assert!(
            matches!(
                &down[0],
                Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::HoldTimerExpiredError(_)
                ))
            ),
            "{down:?}"
        );
        assert!(down.contains(&Action::Disconnect));
        assert!(
            down.iter()
                .any(|x| matches!(x, Action::Down(why) if why.contains("hold timer")))
        );
        assert_eq!(a.state(), State::Idle);
        assert_eq!(
            a.next_deadline(),
            Some(t + Duration::from_secs(5)),
            "automatic restart after connect-retry"
        );
        assert_eq!(a.poll(t + Duration::from_secs(5)), vec![Action::Connect]);
        assert_eq!(a.state(), State::Connect);
    }

    #[test]
    fn wrong_peer_as_is_refused_with_open_error() {
        let now = Instant::now();
        let mut a = Fsm::new(config(65001, 65099, [10, 0, 0, 1], false));
        let b = Fsm::new(config(65002, 65001, [10, 0, 0, 2], false));
        a.handle(now, Event::ManualStart);
        a.handle(now, Event::TcpConnected { outgoing: false });
        let actions = a.handle(now, Event::Message(b.open()));
        assert!(
            matches!(
                &actions[0],
                Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { .. })
                ))
            ),
            "{actions:?}"
        );
        assert_eq!(a.state(), State::Idle);
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let now = Instant::now();
        let mut a = Fsm::new(config(65001, 65002, [10, 0, 0, 1], false));
        a.handle(now, Event::ManualStart);
        a.handle(now, Event::TcpConnected { outgoing: false });
        let actions = a.handle(now, Event::Message(BgpMessage::KeepAlive));
        assert!(
            matches!(
                &actions[0],
                Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::FiniteStateMachineError(_)
                ))
            ),
            "{actions:?}"
        );
        assert_eq!(a.state(), State::Idle);
    }

    #[test]
    fn stop_sends_cease_and_stays_down() {
        let (mut a, _, now) = established();
        let actions = a.handle(now, Event::ManualStop);
        assert!(matches!(
            &actions[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown { .. })
            ))
        ));
        assert_eq!(
            a.next_deadline(),
            None,
            "no automatic restart after a manual stop"
        );
    }

    #[test]
    fn failed_connections_are_retried() {
        let now = Instant::now();
        let mut a = Fsm::new(config(65001, 65002, [10, 0, 0, 1], false));
        a.handle(now, Event::ManualStart);
        assert!(a.handle(now, Event::TcpFailed).is_empty());
        assert_eq!(a.state(), State::Active);
        assert_eq!(a.poll(now + Duration::from_secs(5)), vec![Action::Connect]);
    }

    /// The peer's OPEN from a speaker with identifier `id`.
    fn open_from(id: [u8; 4]) -> BgpOpenMessage {
        let BgpMessage::Open(open) = Fsm::new(config(65002, 65001, id, false)).open() else {
            unreachable!()
        };
        open
    }

    /// A speaker in `OpenSent` over a connection it opened itself.
    fn open_sent(id: [u8; 4]) -> (Fsm, Instant) {
        let now = Instant::now();
        let mut a = Fsm::new(config(65001, 65002, id, false));
        a.handle(now, Event::ManualStart);
        a.handle(now, Event::TcpConnected { outgoing: true });
        assert_eq!(a.state(), State::OpenSent);
        (a, now)
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_identifier() {
        // We (10.0.0.1) opened the current connection; the peer (10.0.0.2) is higher, so its
        // connection wins: Cease on ours, our OPEN and a KEEPALIVE on the peer's.
        let (mut a, now) = open_sent([10, 0, 0, 1]);
        let colliding = Event::CollidingOpen {
            open: open_from([10, 0, 0, 2]),
            outgoing: false,
        };
        let actions = a.handle(now, colliding);
        assert_eq!(actions[0], Action::AdoptColliding);
        assert!(matches!(actions[1], Action::Send(BgpMessage::Open(_))));
        assert_eq!(actions[2], Action::Send(BgpMessage::KeepAlive));
        assert_eq!(a.state(), State::OpenConfirm);
        assert_eq!(
            a.negotiated().unwrap().peer_router_id,
            Ipv4Addr::new(10, 0, 0, 2)
        );

        // We are higher (10.0.0.3): ours stays, the peer's goes.
        let (mut a, now) = open_sent([10, 0, 0, 3]);
        let colliding = Event::CollidingOpen {
            open: open_from([10, 0, 0, 2]),
            outgoing: false,
        };
        assert_eq!(a.handle(now, colliding), vec![Action::RejectColliding]);
        assert_eq!(a.state(), State::OpenSent);
    }

    #[test]
    fn collision_with_an_established_session_keeps_the_session() {
        let (mut a, _, now) = established();
        // a (10.0.0.1) is lower and opened the session's connection, but it is up: it stays.
        let colliding = Event::CollidingOpen {
            open: open_from([10, 0, 0, 2]),
            outgoing: false,
        };
        assert_eq!(a.handle(now, colliding), vec![Action::RejectColliding]);
        assert_eq!(a.state(), State::Established);
    }

    #[test]
    fn simultaneous_connects_settle_on_one_connection() {
        // a (10.0.0.1) and b (10.0.0.2) connect to each other at once: connection 0 is a's,
        // connection 1 is b's. Each sees the other's OPEN on the second connection.
        let now = Instant::now();
        let mut a = Fsm::new(config(65001, 65002, [10, 0, 0, 1], false));
        let mut b = Fsm::new(config(65002, 65001, [10, 0, 0, 2], false));
        a.handle(now, Event::ManualStart);
        b.handle(now, Event::ManualStart);
        let (a_open, _) = split(a.handle(now, Event::TcpConnected { outgoing: true }));
        let (b_open, _) = split(b.handle(now, Event::TcpConnected { outgoing: true }));
        let open_of = |m: &BgpMessage| match m {
            BgpMessage::Open(o) => o.clone(),
            other => panic!("{other:?}"),
        };
        let b_verdict = b.handle(
            now,
            Event::CollidingOpen {
                open: open_of(&a_open[0]),
                outgoing: false,
            },
        );
        assert_eq!(b_verdict, vec![Action::RejectColliding], "b keeps its own");
        let a_verdict = a.handle(
            now,
            Event::CollidingOpen {
                open: open_of(&b_open[0]),
                outgoing: false,
            },
        );
        assert_eq!(a_verdict[0], Action::AdoptColliding, "a moves to b's");
        // Both now talk over b's connection only.
        let (to_b, _) = split(a_verdict);
        let (ea, eb) = pump(&mut a, &mut b, now, to_b, Vec::new());
        assert!(ea.iter().any(|x| matches!(x, Action::Up(_))), "{ea:?}");
        assert!(eb.iter().any(|x| matches!(x, Action::Up(_))), "{eb:?}");
        assert_eq!(
            (a.state(), b.state()),
            (State::Established, State::Established)
        );
    }

    #[test]
    fn a_malformed_message_ends_the_session_with_its_notification() {
        let (mut a, _, now) = established();
        let header_error = BgpNotificationMessage::MessageHeaderError(
            netgauze_bgp_pkt::notification::MessageHeaderError::BadMessageLength {
                value: Box::new(5000u16.to_be_bytes()),
            },
        );
        let actions = a.handle(
            now,
            Event::Malformed {
                notification: Some(header_error.clone()),
                why: "too long".into(),
            },
        );
        assert_eq!(actions[0], notification(header_error));
        assert!(actions.contains(&Action::Disconnect));
        assert!(
            actions
                .iter()
                .any(|x| matches!(x, Action::Down(why) if why.contains("too long")))
        );
        assert_eq!(a.state(), State::Idle);
    }

    #[test]
    fn a_collision_the_peer_resolved_first_carries_on_over_the_other_connection() {
        // We sent our OPEN on our connection; the peer closed it (it kept its own, which we
        // hold as colliding): our OPEN goes out on the peer's connection instead.
        let (mut a, now) = open_sent([10, 0, 0, 1]);
        let actions = a.handle(now, Event::ConnectionReplaced { outgoing: false });
        assert!(
            matches!(actions[..], [Action::Send(BgpMessage::Open(_))]),
            "{actions:?}"
        );
        assert_eq!(a.state(), State::OpenSent);
        let b = Fsm::new(config(65002, 65001, [10, 0, 0, 2], false));
        let actions = a.handle(now, Event::Message(b.open()));
        assert_eq!(actions, vec![Action::Send(BgpMessage::KeepAlive)]);
        assert_eq!(a.state(), State::OpenConfirm);
    }
}
