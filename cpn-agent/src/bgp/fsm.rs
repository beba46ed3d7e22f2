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

use super::{
    graceful::{self, Families, Family, PeerRestart, Retain},
    route::AddPath,
};

/// RFC 4271 §8.2.2 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// BFD lost the neighbor: tear the session down now (RFC 5882 §4.3) instead of waiting
    /// for the hold timer.
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
    /// The session went down; `retain` says what becomes of the peer's paths.
    Down {
        why: Down,
        retain: Retain,
    },
    /// An UPDATE to process (Established only).
    Update(BgpUpdateMessage),
    /// The peer's End-of-RIB for a family (RFC 4724 §2): its routes of that family are
    /// complete, and those still stale from its restart go.
    EndOfRib(Family),
    /// The peer's paths of these families still stale from its restart go: it came back
    /// without their forwarding state, or did not send End-of-RIB in time (RFC 4724 §4.2).
    RemoveStale(Families),
    /// The peer asked for our routes again (ROUTE-REFRESH, RFC 2918).
    ResendAll,
    /// The colliding connection loses: send it a Cease (Connection Collision Resolution) and
    /// close it.
    RejectColliding,
    /// The colliding connection wins: send the current one a Cease (Connection Collision
    /// Resolution), close it, and carry on over the colliding one.
    AdoptColliding,
}

/// A session's end, for operators (what becomes of the peer's paths is [`Retain`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    pub reason: DownReason,
    /// Whether the session had come up (Established) before it ended.
    pub established: bool,
}

/// Why a session ended, named after the RFC 4271 §8.1 event where there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// Event 2, `ManualStop`: the agent stops (or the neighbor left the configuration).
    ManualStop,
    /// Event 10, `HoldTimer_Expires`.
    HoldTimerExpires,
    /// Event 18, `TcpConnectionFails`: the connection failed or closed.
    TcpConnectionFails,
    /// BFD lost the neighbor, ended with Cease / BFD Down (RFC 9384).
    PeerDead,
    /// Events 24 and 25, `NotifMsgVerErr` / `NotifMsg`: the peer's NOTIFICATION.
    NotificationReceived(String),
    /// Events 21 and 28, `BGPHeaderErr` / `UpdateMsgErr`: a message that ends the session
    /// (errors.rs), and what was wrong with it.
    MalformedMessage(String),
    /// Event 22, `BGPOpenMsgErr`: the peer's OPEN was refused, and why.
    OpenRefused(String),
    /// A message the state does not take (a Finite State Machine Error, RFC 6608).
    UnexpectedMessage { message: String, state: State },
    /// More paths than the neighbor's `max_prefixes` (Cease, RFC 4486).
    TooManyPrefixes(usize),
    /// The peer connected again while the session was up: it restarted (RFC 4724 §4.2).
    PeerRestarted,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.established && self.reason != DownReason::ManualStop {
            f.write_str("session not established: ")?;
        }
        match &self.reason {
            DownReason::ManualStop => f.write_str("stopped by the operator"),
            DownReason::HoldTimerExpires => f.write_str("hold timer expired"),
            DownReason::TcpConnectionFails => f.write_str("the TCP connection closed"),
            DownReason::PeerDead => f.write_str("BFD: the neighbor's session went down"),
            DownReason::NotificationReceived(n) => write!(f, "the peer sent {n}"),
            DownReason::MalformedMessage(why) => write!(f, "malformed message: {why}"),
            DownReason::OpenRefused(why) => write!(f, "OPEN refused: {why}"),
            DownReason::UnexpectedMessage { message, state } => {
                write!(f, "unexpected {message} in {state:?}")
            }
            DownReason::TooManyPrefixes(limit) => {
                write!(f, "more than {limit} prefixes received")
            }
            DownReason::PeerRestarted => {
                f.write_str("the peer restarted: it connected again while the session was up")
            }
        }
    }
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
    /// The families both sides offered (RFC 4760): End-of-RIB goes out for each.
    pub families: Families,
    /// The peer's Graceful Restart capability, if it sent one.
    pub peer_restart: Option<PeerRestart>,
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
    /// Graceful Restart (RFC 4724).
    pub graceful: graceful::Ours,
}

/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
const LARGE_HOLD: Duration = Duration::from_mins(4);
/// How long a session closed for too many prefixes stays down before it restarts (as FRR's
/// `maximum-prefix N restart 1`).
pub const MAX_PREFIX_IDLE_HOLD: Duration = Duration::from_mins(1);
/// A second OPEN this soon after the session came up is the other half of a simultaneous
/// open (RFC 4271 §6.8), not the peer back from a restart: a restart takes longer.
const SIMULTANEOUS_OPEN_WINDOW: Duration = Duration::from_secs(3);
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
    /// The Restart State bit of our OPEN: set until the session is first up, since the agent
    /// (re)started (RFC 4724 §4.1).
    restarting: bool,
    /// The peer's paths kept stale while it restarts.
    stale: Option<Stale>,
    /// When the session last came up.
    established_at: Option<Instant>,
}

/// Paths of a restarting peer, kept (RFC 4724 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stale {
    families: Families,
    /// They go at this time: the peer's restart time after its session ended, then, once it
    /// is up again, our own restart time for its End-of-RIB.
    until: Instant,
}

/// How a session ended, as RFC 4724 §4 weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The TCP connection closed or failed without a NOTIFICATION: a restarting peer's paths
    /// stay.
    ConnectionLost,
    /// A NOTIFICATION went one way or the other (hold timer expiries and BFD downs included:
    /// without RFC 8538 they are not graceful): the normal procedures apply.
    Notification,
    /// The operator stopped the session (with a Cease when it was open).
    Stopped,
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
            restarting: config.graceful.enabled(),
            stale: None,
            established_at: None,
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
            self.stale.map(|s| s.until),
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
            // RFC 4724 §4.2: from a peer with Graceful Restart, a new connection while the
            // session is up means that the peer restarted and its old connection is gone.
            (State::Established, Event::CollidingOpen { open, outgoing })
                if !outgoing && self.peer_may_restart(now) =>
            {
                self.peer_restarted(now, &open, outgoing)
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
            (_, Event::TcpFailed) => {
                self.reset(now, DownReason::TcpConnectionFails, Ending::ConnectionLost)
            }
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
                // Without one to send, the peer's own broken NOTIFICATION ended the session.
                let mut actions: Vec<Action> = n.into_iter().map(notification).collect();
                actions.extend(self.reset(
                    now,
                    DownReason::MalformedMessage(why),
                    Ending::Notification,
                ));
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
                DownReason::PeerDead,
            ),
            (State::OpenSent, Event::Message(BgpMessage::Open(open))) => {
                self.open_received(now, &open)
            }
            (State::OpenConfirm, Event::Message(BgpMessage::KeepAlive)) => self.established(now),
            (State::Established, Event::Message(BgpMessage::KeepAlive)) => {
                self.hold_at = self.hold_deadline(now);
                vec![]
            }
            (State::Established, Event::Message(BgpMessage::Update(update))) => {
                self.update(now, update)
            }
            (State::Established, Event::Message(BgpMessage::RouteRefresh(_))) => {
                self.hold_at = self.hold_deadline(now);
                vec![Action::ResendAll]
            }
            (_, Event::Message(BgpMessage::Notification(n))) => self.reset(
                now,
                DownReason::NotificationReceived(format!("{n:?}")),
                Ending::Notification,
            ),
            (state, Event::Message(m)) => self.unexpected(now, state, &m),
        }
    }

    /// A message the state does not take: a Finite State Machine Error.
    fn unexpected(&mut self, now: Instant, state: State, m: &BgpMessage) -> Vec<Action> {
        let error = match state {
            State::OpenSent => FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState {
                value: vec![m.get_type() as u8].into(),
            },
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
        actions.extend(self.reset(
            now,
            DownReason::UnexpectedMessage {
                message: format!("{:?}", m.get_type()),
                state,
            },
            Ending::Notification,
        ));
        actions
    }

    /// An UPDATE in Established: routes, or End-of-RIB (RFC 4724 §2).
    fn update(&mut self, now: Instant, update: BgpUpdateMessage) -> Vec<Action> {
        self.hold_at = self.hold_deadline(now);
        match update.end_of_rib() {
            None => vec![Action::Update(update)],
            // Another family's End-of-RIB: nothing of ours to complete.
            Some(address_type) => Family::from_address_type(address_type)
                .map(|family| self.end_of_rib(family))
                .into_iter()
                .collect(),
        }
    }

    /// Whether a new connection from the peer while the session is up means that the peer
    /// restarted: it has Graceful Restart, and the session is not just up.
    fn peer_may_restart(&self, now: Instant) -> bool {
        self.negotiated.is_some_and(|n| n.peer_restart.is_some())
            && self
                .established_at
                .is_some_and(|at| now >= at + SIMULTANEOUS_OPEN_WINDOW)
    }

    /// Fires the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let due = |at: Option<Instant>| at.is_some_and(|t| t <= now);
        if let Some(stale) = self.stale.filter(|s| s.until <= now) {
            self.stale = None;
            return vec![Action::RemoveStale(stale.families)];
        }
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
            actions.extend(self.reset(now, DownReason::HoldTimerExpires, Ending::Notification));
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
        let actions = self.cease(now, error, DownReason::TooManyPrefixes(limit));
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
        actions.extend(self.reset(now, DownReason::ManualStop, Ending::Stopped));
        actions
    }

    fn start(&mut self, now: Instant) -> Vec<Action> {
        self.stopped = false;
        // A manual start overtakes an automatic restart still pending: left armed, it would
        // start the session again later, under the one that is up (found by the bgp_session
        // fuzz target).
        self.restart_at = None;
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
            actions.extend(self.reset(now, DownReason::OpenRefused(why), Ending::Notification));
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
            families: families(open),
            peer_restart: PeerRestart::from_open(open),
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
    fn cease(&mut self, now: Instant, error: CeaseError, why: DownReason) -> Vec<Action> {
        let mut actions = vec![notification(BgpNotificationMessage::CeaseError(error))];
        actions.extend(self.reset(now, why, Ending::Notification));
        actions
    }

    fn reset(&mut self, now: Instant, reason: DownReason, ending: Ending) -> Vec<Action> {
        let was_up = self.state == State::Established;
        let retain = self.retain(now, was_up, ending);
        self.state = State::Idle;
        self.negotiated = None;
        self.hold_at = None;
        self.keepalive_at = None;
        self.connect_retry_at = None;
        self.restart_at = (!self.stopped).then(|| now + self.config.connect_retry);
        let why = Down {
            reason,
            established: was_up,
        };
        vec![Action::Disconnect, Action::Down { why, retain }]
    }

    /// What a session end keeps of the peer's paths (RFC 4724 §4.2), and until when.
    fn retain(&mut self, now: Instant, was_up: bool, ending: Ending) -> Retain {
        let restarting_peer = self
            .negotiated
            .and_then(|n| n.peer_restart)
            .filter(|p| !p.families.is_empty() && !p.restart_time.is_zero());
        match (ending, was_up, restarting_peer) {
            (Ending::ConnectionLost, true, Some(peer)) if self.config.graceful.enabled() => {
                self.stale = Some(Stale {
                    families: peer.families,
                    until: now + peer.restart_time,
                });
                Retain::MarkStale(peer.families)
            }
            // A connection that fails before the session is up changes nothing: the peer
            // may still come back in time.
            (Ending::ConnectionLost, false, _) => Retain::StaleOnly,
            _ => {
                self.stale = None;
                Retain::Nothing
            }
        }
    }

    /// `OpenConfirm` to `Established`. Paths kept from the peer's restart stay only in the
    /// families whose forwarding state it kept (RFC 4724 §4.2), until its End-of-RIB or
    /// our restart time.
    fn established(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Established;
        self.established_at = Some(now);
        self.restarting = false;
        self.hold_at = self.hold_deadline(now);
        let negotiated = self.negotiated.expect("negotiated in OpenSent");
        let mut actions = vec![Action::Up(negotiated)];
        if let Some(stale) = self.stale.take() {
            let preserved = negotiated
                .peer_restart
                .map_or(Families::NONE, |p| p.forwarding_preserved);
            let kept = stale.families.and(preserved);
            let gone = stale.families.without(kept);
            if !gone.is_empty() {
                actions.push(Action::RemoveStale(gone));
            }
            if !kept.is_empty() {
                self.stale = Some(Stale {
                    families: kept,
                    until: now + self.config.graceful.restart_time,
                });
            }
        }
        actions
    }

    fn end_of_rib(&mut self, family: Family) -> Action {
        if let Some(stale) = &mut self.stale {
            stale.families.remove(family);
            if stale.families.is_empty() {
                self.stale = None;
            }
        }
        Action::EndOfRib(family)
    }

    /// RFC 4724 §4.2: the session ends as if its connection had closed, and goes on over the
    /// new connection from the peer's OPEN.
    fn peer_restarted(
        &mut self,
        now: Instant,
        open: &BgpOpenMessage,
        outgoing: bool,
    ) -> Vec<Action> {
        let retain = self.retain(now, true, Ending::ConnectionLost);
        let mut actions = vec![
            Action::Down {
                why: Down {
                    reason: DownReason::PeerRestarted,
                    established: true,
                },
                retain,
            },
            Action::AdoptColliding,
        ];
        self.negotiated = None;
        self.keepalive_at = None;
        self.outgoing = outgoing;
        self.state = State::OpenSent;
        actions.push(Action::Send(self.open()));
        actions.extend(self.open_received(now, open));
        actions
    }

    /// Our OPEN: MP-BGP IPv6 and IPv4 unicast, 4-byte ASN, ADD-PATH send/receive, route
    /// refresh, IPv4 unicast over IPv6 next hops (RFC 8950), and Graceful Restart (RFC 4724)
    /// unless it is off.
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
        let capabilities = capabilities
            .into_iter()
            .chain(self.config.graceful.capability(self.restarting))
            .collect::<Vec<_>>();
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

/// The families both sides speak: those the peer's Multiprotocol Extensions capabilities
/// offer (we offer both); IPv4 unicast alone from a peer without any, which speaks plain
/// RFC 4271.
fn families(open: &BgpOpenMessage) -> Families {
    let mut offered = open
        .capabilities()
        .into_iter()
        .filter_map(|c| match c {
            BgpCapability::MultiProtocolExtensions(mp) => Some(mp.address_type()),
            _ => None,
        })
        .peekable();
    if offered.peek().is_none() {
        return [Family::Ipv4Unicast].into_iter().collect();
    }
    offered.filter_map(Family::from_address_type).collect()
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
            graceful: graceful::Ours {
                restart_time: RESTART_TIME,
                forwarding_preserved: true,
            },
        }
    }

    const RESTART_TIME: Duration = Duration::from_mins(2);

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
        assert!(actions.iter().any(|x| matches!(
            x,
            Action::Down {
                retain: Retain::Nothing,
                ..
            }
        )));
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
                .any(|x| matches!(x, Action::Down { why, retain: Retain::Nothing } if why.reason == DownReason::HoldTimerExpires)),
            "a hold timer expiry sends a NOTIFICATION: no Graceful Restart (RFC 4724 §4)"
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

    #[test]
    fn a_manual_start_overtakes_a_pending_automatic_restart() {
        let now = Instant::now();
        let mut a = Fsm::new(config(4_200_000_001, 4_200_000_002, [10, 0, 0, 1], false));
        let mut b = Fsm::new(config(4_200_000_002, 4_200_000_001, [10, 0, 0, 2], true));
        a.handle(now, Event::ManualStart);
        a.handle(now, Event::TcpConnected { outgoing: true });
        // The connection fails before the session is up: an automatic restart is armed ...
        a.handle(now, Event::TcpFailed);
        assert_eq!(a.state(), State::Idle);
        // ... and the operator starts the session first; it comes up.
        assert_eq!(a.handle(now, Event::ManualStart), vec![Action::Connect]);
        b.handle(now, Event::ManualStart);
        let (a_open, _) = split(a.handle(now, Event::TcpConnected { outgoing: true }));
        let (b_open, _) = split(b.handle(now, Event::TcpConnected { outgoing: false }));
        pump(&mut a, &mut b, now, a_open, b_open);
        assert_eq!(a.state(), State::Established);
        // With the peer's KEEPALIVEs, nothing takes it down: no restart fires under it.
        let done = run(&mut a, now, now + Duration::from_secs(30));
        assert!(done.is_empty(), "{done:?}");
        assert_eq!(a.state(), State::Established);
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
                .any(|x| matches!(x, Action::Down { why, .. } if why.reason == DownReason::MalformedMessage("too long".into())))
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
    /// The Graceful Restart capability of an OPEN.
    fn restart_capability(open: &BgpMessage) -> Option<PeerRestart> {
        let BgpMessage::Open(open) = open else {
            panic!("{open:?}")
        };
        PeerRestart::from_open(open)
    }

    #[test]
    fn the_restart_bit_is_set_until_the_session_is_first_up() {
        let fresh = Fsm::new(config(65001, 65002, [10, 0, 0, 1], false));
        let ours = restart_capability(&fresh.open()).unwrap();
        assert!(
            ours.restarted,
            "a starting agent has restarted, as far as peers know"
        );
        assert_eq!(ours.restart_time, RESTART_TIME);
        assert_eq!(ours.forwarding_preserved, Families::ALL);
        let (mut a, _, now) = established();
        a.handle(now, Event::TcpFailed);
        let again = restart_capability(&a.open()).unwrap();
        assert!(
            !again.restarted,
            "RFC 4724 §4.2: not set unless we restarted"
        );
        let mut off = config(65001, 65002, [10, 0, 0, 1], false);
        off.graceful = graceful::Ours::OFF;
        assert_eq!(restart_capability(&Fsm::new(off).open()), None);
    }

    /// `a`, up with a peer that has just restarted (a new FSM for it, with `peer` settings).
    fn reconnect(a: &mut Fsm, now: Instant, peer: PeerConfig) -> (Fsm, Vec<Action>) {
        let mut b = Fsm::new(peer);
        b.handle(now, Event::ManualStart);
        assert_eq!(a.poll(now), vec![Action::Connect]);
        let (a_open, _) = split(a.handle(now, Event::TcpConnected { outgoing: true }));
        let (b_open, _) = split(b.handle(now, Event::TcpConnected { outgoing: false }));
        let (ea, _) = pump(a, &mut b, now, a_open, b_open);
        assert_eq!(a.state(), State::Established);
        (b, ea)
    }

    fn peer_config() -> PeerConfig {
        config(4_200_000_002, 4_200_000_001, [10, 0, 0, 2], true)
    }

    fn end_of_rib(family: Family) -> Event {
        let BgpMessage::Update(update) = crate::bgp::route::end_of_rib(family) else {
            unreachable!()
        };
        Event::Message(BgpMessage::Update(update))
    }

    /// Runs `a` second by second from `from` to `to` with the peer's KEEPALIVEs arriving;
    /// what it does besides sending KEEPALIVEs.
    fn run(a: &mut Fsm, from: Instant, to: Instant) -> Vec<(Duration, Action)> {
        let mut done = Vec::new();
        let mut t = from;
        while t < to {
            t += Duration::from_secs(1);
            let mut actions = a.handle(t, Event::Message(BgpMessage::KeepAlive));
            actions.extend(a.poll(t));
            done.extend(
                actions
                    .into_iter()
                    .filter(|x| *x != Action::Send(BgpMessage::KeepAlive))
                    .map(|x| (t - from, x)),
            );
        }
        done
    }

    #[test]
    fn a_peer_whose_connection_closes_keeps_its_paths_stale_until_it_is_back_and_done() {
        let (mut a, _, now) = established();
        let down = a.handle(now, Event::TcpFailed);
        assert_eq!(
            down[1],
            Action::Down {
                why: Down {
                    reason: DownReason::TcpConnectionFails,
                    established: true,
                },
                retain: Retain::MarkStale(Families::ALL),
            },
            "RFC 4724 §4.2: the families of the peer's capability stay"
        );
        // It comes back with its forwarding state: the paths wait for its End-of-RIB.
        let later = now + Duration::from_secs(5);
        let (_, up) = reconnect(&mut a, later, peer_config());
        assert!(
            !up.iter().any(|x| matches!(x, Action::RemoveStale(_))),
            "{up:?}"
        );
        assert_eq!(
            a.handle(later, end_of_rib(Family::Ipv6Unicast)),
            vec![Action::EndOfRib(Family::Ipv6Unicast)]
        );
        // No IPv4 End-of-RIB: those go at our restart time after the session came back.
        assert_eq!(
            run(&mut a, later, later + RESTART_TIME + Duration::from_secs(5)),
            vec![(
                RESTART_TIME,
                Action::RemoveStale([Family::Ipv4Unicast].into_iter().collect())
            )]
        );
        assert_eq!(a.state(), State::Established);
    }

    #[test]
    fn stale_paths_go_at_the_peers_restart_time_if_it_does_not_come_back() {
        let (mut a, _, now) = established();
        a.handle(now, Event::TcpFailed);
        // A connection that fails before the session is up leaves the stale paths waiting.
        let retry = now + Duration::from_secs(5);
        assert_eq!(a.poll(retry), vec![Action::Connect]);
        a.handle(retry, Event::TcpConnected { outgoing: true });
        assert_eq!(
            a.handle(retry, Event::TcpFailed)[1],
            Action::Down {
                why: Down {
                    reason: DownReason::TcpConnectionFails,
                    established: false,
                },
                retain: Retain::StaleOnly,
            }
        );
        let mut t = retry;
        let mut removed = Vec::new();
        while removed.is_empty() {
            t += Duration::from_secs(1);
            removed = a
                .poll(t)
                .into_iter()
                .filter(|x| matches!(x, Action::RemoveStale(_)))
                .collect();
            if a.state() == State::Connect {
                a.handle(t, Event::TcpFailed);
            }
        }
        assert_eq!(
            t,
            now + RESTART_TIME,
            "the restart time of the peer's capability"
        );
        assert_eq!(removed, vec![Action::RemoveStale(Families::ALL)]);
    }

    #[test]
    fn a_peer_back_without_its_forwarding_state_loses_its_stale_paths_at_once() {
        for (what, graceful) in [
            (
                "no F bit",
                graceful::Ours {
                    restart_time: RESTART_TIME,
                    forwarding_preserved: false,
                },
            ),
            ("no capability", graceful::Ours::OFF),
        ] {
            let (mut a, _, now) = established();
            a.handle(now, Event::TcpFailed);
            let mut peer = peer_config();
            peer.graceful = graceful;
            let later = now + Duration::from_secs(5);
            let (_, up) = reconnect(&mut a, later, peer);
            assert!(
                up.contains(&Action::RemoveStale(Families::ALL)),
                "RFC 4724 §4.2, {what}: the stale paths go: {up:?}"
            );
            assert_eq!(
                a.handle(later, end_of_rib(Family::Ipv4Unicast)),
                vec![Action::EndOfRib(Family::Ipv4Unicast)],
                "End-of-RIB is read from any peer"
            );
            // Without a capability (or families in it), a lost connection keeps nothing.
            let down = a.handle(later, Event::TcpFailed);
            assert!(
                matches!(
                    &down[1],
                    Action::Down {
                        retain: Retain::Nothing,
                        ..
                    }
                ),
                "{what}: {down:?}"
            );
        }
    }

    #[test]
    fn a_session_ended_by_a_notification_keeps_nothing() {
        let (mut a, _, now) = established();
        let cease = BgpMessage::Notification(BgpNotificationMessage::CeaseError(
            CeaseError::AdministrativeShutdown { value: empty() },
        ));
        let down = a.handle(now, Event::Message(cease));
        assert!(
            matches!(
                &down[1],
                Action::Down {
                    retain: Retain::Nothing,
                    ..
                }
            ),
            "RFC 4724 §4: {down:?}"
        );
    }

    #[test]
    fn a_new_connection_from_a_restarted_peer_replaces_the_session() {
        let (mut a, _, now) = established();
        let BgpMessage::Open(open) = Fsm::new(peer_config()).open() else {
            unreachable!()
        };
        let colliding = || Event::CollidingOpen {
            open: open.clone(),
            outgoing: false,
        };
        // The other half of a simultaneous open: the session stays.
        assert_eq!(a.handle(now, colliding()), vec![Action::RejectColliding]);
        let later = now + Duration::from_secs(4);
        let actions = a.handle(later, colliding());
        assert!(
            matches!(
                &actions[..],
                [
                    Action::Down {
                        retain: Retain::MarkStale(_),
                        ..
                    },
                    Action::AdoptColliding,
                    Action::Send(BgpMessage::Open(_)),
                    Action::Send(BgpMessage::KeepAlive),
                ]
            ),
            "RFC 4724 §4.2: {actions:?}"
        );
        assert_eq!(a.state(), State::OpenConfirm);
    }

    #[test]
    fn end_of_rib_goes_for_the_families_the_peer_offers() {
        let (a, _, _) = established();
        assert_eq!(a.negotiated().unwrap().families, Families::ALL);
        let BgpMessage::Open(open) = a.open() else {
            unreachable!()
        };
        let ipv6_only = BgpOpenMessage::new(
            open.my_as(),
            open.hold_time(),
            open.bgp_id(),
            vec![BgpOpenMessageParameter::new_capabilities(vec![
                BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                    AddressType::Ipv6Unicast,
                )),
            ])],
        );
        assert_eq!(
            families(&ipv6_only),
            [Family::Ipv6Unicast].into_iter().collect()
        );
        let plain = BgpOpenMessage::new(open.my_as(), open.hold_time(), open.bgp_id(), vec![]);
        assert_eq!(
            families(&plain),
            [Family::Ipv4Unicast].into_iter().collect()
        );
    }
}
