//! One task per neighbor: it drives the neighbor's [`Fsm`] over a framed TCP connection,
//! hands what the peer sends to the routing core as typed commands (rib.rs) after peer.rs has
//! weighed it, and exports to the peer whenever our routes or the RIB in the core's snapshot
//! change.
//!
//! ```text
//!   listener ──accepted stream──▶ session ◀──▶ TCP ◀──▶ peer
//!   local routes (watch) ───────▶ session ──RibCommand──▶ core ──snapshot──▶ session
//! ```

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use netgauze_bgp_pkt::{
    BgpMessage,
    codec::BgpCodecDecoderError,
    notification::{BgpNotificationMessage, CeaseError},
    update::BgpUpdateMessage,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};
use tokio_util::codec::Framed;

use super::{
    attributes::Malformed,
    errors,
    fsm::{Action, Down, Event, Fsm, Negotiated, State},
    graceful::{Families, Retain},
    peer::{Learnt, PeerState},
    rib::{RibCommand, RibIn},
    route::{self, AddPath, Route},
    speaker::{NeighborConfig, canonical, codec},
};
use crate::core::{Event as CoreEvent, View as CoreView};

/// BGP messages received from and sent to one neighbor, by type (`open`, `update`,
/// `notification`, `keepalive`, `route_refresh`), over the agent's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageCounts {
    pub received: BTreeMap<String, u64>,
    pub sent: BTreeMap<String, u64>,
}

impl MessageCounts {
    fn count(&mut self, sent: bool, message: &BgpMessage) {
        let kind = match message {
            BgpMessage::Open(_) => "open",
            BgpMessage::Update(_) => "update",
            BgpMessage::Notification(_) => "notification",
            BgpMessage::KeepAlive => "keepalive",
            BgpMessage::RouteRefresh(_) => "route_refresh",
        };
        let counts = if sent {
            &mut self.sent
        } else {
            &mut self.received
        };
        *counts.entry(kind.to_owned()).or_default() += 1;
    }
}

/// A session as operators see it, published by its task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStats {
    pub state: State,
    pub messages: MessageCounts,
    /// Paths the neighbor sent that the import policy dropped (neither services nor cpn
    /// locators).
    pub filtered: u64,
}

impl Default for SessionStats {
    fn default() -> Self {
        Self {
            state: State::Idle,
            messages: MessageCounts::default(),
            filtered: 0,
        }
    }
}

/// One neighbor's session task (started by speaker.rs).
pub(super) struct Session {
    neighbor: NeighborConfig,
    fsm: Fsm,
    peer: PeerState,
    core: mpsc::Sender<CoreEvent>,
    view: CoreView,
    /// The RIB of the core's snapshot last exported from: a snapshot with another one is
    /// exported again (one with new link measurements alone is not).
    exported: Arc<RibIn>,
    /// The routes this node originates.
    local: watch::Receiver<Vec<Route>>,
    /// The neighbor's BFD session as the core's snapshot last said (none without BFD).
    bfd: Option<crate::sensing::bfd::Status>,
    /// The core is gone (the agent is stopping): no snapshots to wait for.
    core_gone: bool,
    stats: watch::Sender<SessionStats>,
    conn: Option<Framed<TcpStream, errors::Codec>>,
    /// A second connection to the same peer, held until its OPEN settles the collision
    /// (RFC 4271 §6.8), and whether we opened it.
    colliding: Option<(Framed<TcpStream, errors::Codec>, bool)>,
    /// The attributes the codec cut out of the message being handled (RFC 7606).
    skipped: Vec<Malformed>,
    /// The families whose End-of-RIB is still to be sent: those negotiated, from the time the
    /// session is up until our initial routes are out.
    end_of_rib_due: Families,
    /// The routes this node originates are all there: the reporting loop published them
    /// once, or has nothing to publish (it dropped its sender).
    originated_complete: bool,
}

impl Session {
    pub fn new(
        neighbor: NeighborConfig,
        fsm: Fsm,
        peer: PeerState,
        core: (mpsc::Sender<CoreEvent>, CoreView),
        local: watch::Receiver<Vec<Route>>,
    ) -> (Self, watch::Receiver<SessionStats>) {
        let (stats, seen) = watch::channel(SessionStats::default());
        let (core, view) = core;
        let exported = view.borrow().rib.clone();
        let session = Self {
            neighbor,
            fsm,
            peer,
            core,
            exported,
            view,
            local,
            bfd: None,
            core_gone: false,
            stats,
            conn: None,
            colliding: None,
            skipped: Vec::new(),
            end_of_rib_due: Families::NONE,
            originated_complete: false,
        };
        (session, seen)
    }

    const fn address(&self) -> IpAddr {
        self.neighbor.address
    }

    /// Whether the neighbor's BFD session went from Up to Down since the last snapshot (not
    /// by its operator's `AdminDown`, RFC 5882 §3.2).
    fn bfd_failed(&mut self) -> bool {
        let now = self.view.borrow().bfd.get(&self.address()).copied();
        let before = std::mem::replace(&mut self.bfd, now);
        matches!((before, now), (Some(before), Some(now)) if now.failed_since(&before))
    }

    pub async fn run(mut self, mut accepted: mpsc::Receiver<TcpStream>) {
        let (connected_tx, mut connected) = mpsc::channel::<std::io::Result<TcpStream>>(1);
        let mut actions = self.fsm.handle(Instant::now(), Event::ManualStart);
        let mut local_done = false;
        loop {
            // Carrying out an action can lead to more (a failed send, a prefix limit, a
            // malformed UPDATE): run them all before waiting again.
            while !actions.is_empty() {
                for action in std::mem::take(&mut actions) {
                    let more = self.act(action, &connected_tx).await;
                    actions.extend(more);
                }
            }
            let state = self.fsm.state();
            self.stats.send_if_modified(|s| {
                let changed = s.state != state;
                s.state = state;
                changed
            });
            let deadline = self.fsm.next_deadline().map(tokio::time::Instant::from_std);
            let event = tokio::select! {
                incoming = next_message(&mut self.conn) => match incoming {
                    Incoming::Closed | Incoming::Message(BgpMessage::Notification(_), _)
                        if self.colliding.is_some()
                            && matches!(self.fsm.state(), State::OpenSent | State::OpenConfirm) =>
                    {
                        let (conn, outgoing) = self.colliding.take().expect("checked above");
                        tracing::debug!(neighbor = %self.address(), "the peer resolved the collision first: carrying on over the other connection");
                        self.conn = Some(conn);
                        Event::ConnectionReplaced { outgoing }
                    }
                    Incoming::Message(message, skipped) => {
                        self.count(false, &message);
                        self.skipped = skipped;
                        Event::Message(message)
                    }
                    Incoming::Malformed(notification, why) => {
                        tracing::warn!(neighbor = %self.address(), %why, "malformed BGP message");
                        Event::Malformed { notification, why }
                    }
                    Incoming::Closed => {
                        self.conn = None;
                        Event::TcpFailed
                    }
                },
                Some(stream) = accepted.recv() => match self.offer(stream, false) {
                    Some(event) => event,
                    None => continue,
                },
                Some(result) = connected.recv() => match result {
                    Ok(stream) => match self.offer(stream, true) {
                        Some(event) => event,
                        None => continue,
                    },
                    Err(error) => {
                        tracing::debug!(neighbor = %self.address(), %error, "connect failed");
                        Event::TcpFailed
                    }
                },
                message = next_colliding(&mut self.colliding) => {
                    let Some((BgpMessage::Open(open), outgoing)) = message else {
                        self.colliding = None;
                        continue;
                    };
                    Event::CollidingOpen { open, outgoing }
                }
                () = sleep_until(deadline) => {
                    actions = self.fsm.poll(Instant::now());
                    continue;
                }
                changed = self.local.changed(), if self.fsm.state() == State::Established && !local_done => {
                    self.originated_complete = true;
                    // A node that originates nothing drops its sender: nothing more to announce.
                    if changed.is_err() {
                        local_done = true;
                    } else {
                        actions = self.advertise().await;
                    }
                    continue;
                }
                // A new snapshot: BFD may have lost the neighbor; the RIB may have changed (or
                // the wait for the peers' End-of-RIB ended), to export.
                changed = self.view.changed(), if !self.core_gone => {
                    if changed.is_err() {
                        self.core_gone = true;
                        continue;
                    }
                    if self.bfd_failed() {
                        if matches!(self.fsm.state(), State::OpenSent | State::OpenConfirm | State::Established) {
                            tracing::warn!(neighbor = %self.address(), "BFD: the neighbor's session went down, closing the BGP session (RFC 5882 §4.3)");
                        }
                        Event::PeerDead
                    } else {
                        if self.fsm.state() == State::Established
                            && !Arc::ptr_eq(&self.view.borrow().rib, &self.exported)
                        {
                            actions = self.advertise().await;
                        }
                        continue;
                    }
                }
            };
            actions = self.fsm.handle(Instant::now(), event);
        }
    }

    /// A new connection: taken if the FSM is waiting for one; held as colliding when a
    /// session is under way (its OPEN decides, RFC 4271 §6.8); else dropped.
    fn offer(&mut self, stream: TcpStream, outgoing: bool) -> Option<Event> {
        let _ = stream.set_nodelay(true);
        let framed = Framed::new(stream, codec(AddPath::default(), self.peer.metric_code));
        match self.fsm.state() {
            State::Connect | State::Active if self.conn.is_none() => {
                self.conn = Some(framed);
                Some(Event::TcpConnected { outgoing })
            }
            State::OpenSent | State::OpenConfirm | State::Established => {
                self.colliding = Some((framed, outgoing));
                None // its OPEN is the event
            }
            _ => None,
        }
    }

    async fn act(
        &mut self,
        action: Action,
        connected: &mpsc::Sender<std::io::Result<TcpStream>>,
    ) -> Vec<Action> {
        match action {
            Action::Connect => {
                let target = SocketAddr::new(self.address(), self.neighbor.port);
                let key = self.neighbor.md5_key.clone();
                let hops = self.neighbor.ttl_security_hops;
                let tx = connected.clone();
                tokio::spawn(async move {
                    let attempt = connect(target, key, hops);
                    let result = tokio::time::timeout(Duration::from_secs(5), attempt)
                        .await
                        .unwrap_or_else(|_| {
                            Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
                        });
                    let _ = tx.send(result).await;
                });
                vec![]
            }
            Action::Disconnect => {
                self.conn = None;
                self.colliding = None;
                vec![]
            }
            Action::RejectColliding => {
                if let Some((mut conn, _)) = self.colliding.take() {
                    let _ = conn.send(collision_cease()).await;
                }
                vec![]
            }
            Action::AdoptColliding => {
                tracing::info!(neighbor = %self.address(), "connection collision: carrying on over the peer's connection");
                if let Some(mut old) = self.conn.take() {
                    let _ = old.send(collision_cease()).await;
                }
                self.conn = self.colliding.take().map(|(conn, _)| conn);
                vec![]
            }
            Action::Send(message) => self.send(message).await,
            Action::Up(negotiated) => self.up(negotiated).await,
            Action::Down { why, retain } => self.down(why, retain).await,
            Action::EndOfRib(family) => {
                self.tell(RibCommand::EndOfRib {
                    neighbor: self.address(),
                    family,
                })
                .await;
                vec![]
            }
            Action::RemoveStale(families) => {
                self.tell(RibCommand::RemoveStale {
                    neighbor: self.address(),
                    families,
                })
                .await;
                vec![]
            }
            Action::ResendAll => {
                self.peer.forget_advertised();
                self.advertise().await
            }
            Action::Update(update) => self.learn(&update).await,
        }
    }

    /// Hands a command to the routing core (gone only when the agent stops).
    async fn tell(&self, command: RibCommand) {
        let _ = self.core.send(CoreEvent::Bgp(command)).await;
    }

    /// The session is up: per-session settings from what was negotiated, then our routes.
    async fn up(&mut self, negotiated: Negotiated) -> Vec<Action> {
        let local = self
            .conn
            .as_ref()
            .and_then(|c| c.get_ref().local_addr().ok())
            .map(|a| canonical(a.ip()));
        tracing::info!(neighbor = %self.address(), asn = negotiated.peer_asn, add_path_tx = ?negotiated.add_path_tx, add_path_rx = ?negotiated.add_path_rx, graceful_restart = ?negotiated.peer_restart, "BGP session established");
        if !negotiated.ipv4_over_ipv6 {
            tracing::info!(neighbor = %self.address(), "the neighbor takes no IPv4 routes with IPv6 next hops (RFC 8950): none are sent to it");
        }
        self.peer.up(&negotiated, local);
        if let Some(conn) = &mut self.conn {
            *conn.codec_mut() = codec(negotiated.add_path_rx, self.peer.metric_code);
        }
        self.end_of_rib_due = negotiated.families;
        // A peer that restarted itself, or has no Graceful Restart, does not make a
        // restarting speaker wait (RFC 4724 §4.1).
        let awaited = match negotiated.peer_restart {
            Some(peer) if !peer.restarted => negotiated.families,
            _ => Families::NONE,
        };
        self.tell(RibCommand::Up {
            neighbor: self.address(),
            awaited,
        })
        .await;
        self.advertise().await
    }

    /// The session is down: the neighbor's paths go, or stay stale while it restarts.
    async fn down(&mut self, why: Down, retain: Retain) -> Vec<Action> {
        self.tell(RibCommand::Down {
            neighbor: self.address(),
            why,
            retain,
        })
        .await;
        self.peer.forget_advertised();
        self.end_of_rib_due = Families::NONE;
        vec![]
    }

    /// Hands an UPDATE's changes to the RIB, and enforces the neighbor's prefix limit.
    async fn learn(&mut self, update: &BgpUpdateMessage) -> Vec<Action> {
        let skipped = std::mem::take(&mut self.skipped);
        let (changes, filtered) = match self.peer.learn(update, &skipped) {
            Learnt::Changes { changes, filtered } => (changes, filtered),
            Learnt::Reset { notification, why } => {
                return self.fsm.handle(
                    Instant::now(),
                    Event::Malformed {
                        notification: Some(notification),
                        why,
                    },
                );
            }
        };
        if filtered > 0 {
            self.stats.send_modify(|s| s.filtered += filtered);
        }
        // An UPDATE whose routes the import policy all dropped (a full table's) and that
        // withdraws nothing wakes nobody.
        if changes.is_empty() {
            return vec![];
        }
        let (fresh, answer) = match self.neighbor.max_prefixes {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        self.tell(RibCommand::Learn {
            neighbor: self.address(),
            changes,
            fresh,
        })
        .await;
        // Stale paths wait for the peer to send them again: only fresh ones count.
        let (Some(limit), Some(answer)) = (self.neighbor.max_prefixes, answer) else {
            return vec![];
        };
        match answer.await {
            Ok(received) if received > limit => {
                tracing::warn!(neighbor = %self.address(), received, limit, "maximum prefixes exceeded, closing the session");
                self.fsm
                    .handle(Instant::now(), Event::TooManyPrefixes(limit))
            }
            _ => vec![],
        }
    }

    async fn send(&mut self, message: BgpMessage) -> Vec<Action> {
        if self.conn.is_none() {
            return vec![];
        }
        // Counted when handed to the connection; if that fails, the session fails with it.
        self.count(true, &message);
        if let Some(conn) = &mut self.conn
            && let Err(error) = conn.send(message).await
        {
            tracing::debug!(neighbor = %self.address(), %error, "send failed");
            self.conn = None;
            return self.fsm.handle(Instant::now(), Event::TcpFailed);
        }
        vec![]
    }

    fn count(&self, sent: bool, message: &BgpMessage) {
        self.stats.send_modify(|s| s.messages.count(sent, message));
    }

    /// Sends what changed in what we export to this peer (our routes and those we pass on)
    /// since the last advertisement; then End-of-RIB, once the initial routes are out.
    async fn advertise(&mut self) -> Vec<Action> {
        // A value sent (or the sender gone) since the session task started: the reporting
        // loop has published.
        self.originated_complete |= self.local.has_changed().unwrap_or(true);
        let originated = self.local.borrow_and_update().clone();
        let snapshot = self.view.borrow_and_update().clone();
        self.exported = snapshot.rib.clone();
        let rib = snapshot.rib;
        let messages = self.peer.export(&originated, &rib);
        let mut actions = Vec::new();
        for message in messages {
            actions.extend(self.send(message).await);
        }
        actions.extend(self.end_of_rib(rib.deferral_over()).await);
        actions
    }

    /// End-of-RIB for every negotiated family (RFC 4724 §2, also when there was nothing to
    /// send), once our originated routes are all out and, after a restart, every peer's
    /// routes are in (`peers_done`, RFC 4724 §4.1).
    async fn end_of_rib(&mut self, peers_done: bool) -> Vec<Action> {
        if self.end_of_rib_due.is_empty() || !peers_done || !self.originated_complete {
            return vec![];
        }
        let due = std::mem::take(&mut self.end_of_rib_due);
        tracing::debug!(neighbor = %self.address(), families = ?due, "initial routes sent: End-of-RIB");
        let mut actions = Vec::new();
        for family in due.iter() {
            actions.extend(self.send(route::end_of_rib(family)).await);
        }
        actions
    }
}

/// What arrives on a connection.
enum Incoming {
    /// A message, with the attributes the codec cut out of it (RFC 7606).
    Message(BgpMessage, Vec<Malformed>),
    /// A message that cannot be read: the NOTIFICATION to answer with, and why.
    Malformed(Option<BgpNotificationMessage>, String),
    Closed,
}

async fn next_message(conn: &mut Option<Framed<TcpStream, errors::Codec>>) -> Incoming {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    match conn.next().await {
        Some(Ok((message, skipped))) => Incoming::Message(message, skipped),
        Some(Err(error @ BgpCodecDecoderError::BgpMessageParsingError(_))) => {
            Incoming::Malformed(errors::notification(&error), error.to_string())
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "BGP connection failed");
            Incoming::Closed
        }
        None => Incoming::Closed,
    }
}

async fn next_colliding(
    colliding: &mut Option<(Framed<TcpStream, errors::Codec>, bool)>,
) -> Option<(BgpMessage, bool)> {
    let Some((conn, outgoing)) = colliding else {
        return std::future::pending().await;
    };
    let outgoing = *outgoing;
    match conn.next().await {
        Some(Ok((message, _))) => Some((message, outgoing)),
        _ => None,
    }
}

fn collision_cease() -> BgpMessage {
    BgpMessage::Notification(BgpNotificationMessage::CeaseError(
        CeaseError::ConnectionCollisionResolution {
            value: Box::new([]),
        },
    ))
}

/// Connects to a neighbor, signing the connection with `key` when there is one, under GTSM
/// when the neighbor is `ttl_security_hops` away.
async fn connect(
    target: SocketAddr,
    key: Option<Vec<u8>>,
    ttl_security_hops: Option<u8>,
) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    if let Some(key) = key {
        super::md5::set_key(&socket, target.ip(), &key)?;
    }
    if let Some(hops) = ttl_security_hops {
        super::gtsm::protect(&socket, target.ip(), hops)?;
    }
    socket.connect(target).await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
