//! The BGP speaker's I/O edges: a listener, one task per neighbor driving its [`Fsm`] over a
//! framed TCP connection, and the Adj-RIB-In they fill.
//!
//! ```text
//!   listener ──accepted stream──▶ session(neighbor) ◀──▶ TCP ◀──▶ peer
//!   local routes (watch) ───────▶ session: announce / withdraw on change
//!   session ──UPDATEs──▶ Adj-RIB-In (shared) ──▶ steering (candidates)
//!                              └──(changed)──▶ every session: export (policy.rs) to its peer
//! ```
//!
//! Each session ends its initial routes with End-of-RIB (RFC 4724 §2). A peer with Graceful
//! Restart whose connection closes without a NOTIFICATION keeps its paths, marked stale, until
//! it sends them again and its End-of-RIB, or until its restart time (RFC 4724 §4.2).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage,
    codec::BgpCodecDecoderError,
    notification::{BgpNotificationMessage, CeaseError},
    update::BgpUpdateMessage,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_util::codec::Framed;

use super::{
    attributes::Malformed,
    errors::{self, Verdict},
    fsm::{Action, Down, Event, Fsm, Negotiated, PeerConfig, State},
    graceful::{self, Deferral, Families, Family, Retain},
    policy::{self, Local, PathIds, Peer, Received},
    route::{self, AddPath, Route},
};
use crate::probe::{Links, Liveness};

/// The speaker's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// RFC 4456 cluster id when we reflect routes (default: the router id).
    pub cluster_id: Option<Ipv4Addr>,
    /// Next hop for routes we pass on over eBGP.
    pub next_hop: std::net::Ipv6Addr,
    pub listen: SocketAddr,
    pub hold_time: Duration,
    pub connect_retry: Duration,
    pub metric_code: u8,
    /// Which learned routes are kept.
    pub import: policy::Import,
    /// Graceful Restart (RFC 4724): our restart time, and whether our forwarding state
    /// survives an agent restart.
    pub graceful: graceful::Ours,
    /// How long an agent that restarted with its forwarding state waits for its peers'
    /// End-of-RIB before it sends its own (RFC 4724 §4.1, the `Selection_Deferral_Timer`).
    pub selection_deferral: Duration,
    pub neighbors: Vec<NeighborConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborConfig {
    pub address: IpAddr,
    pub port: u16,
    pub asn: u32,
    pub passive: bool,
    /// An iBGP neighbor whose routes we reflect (we are its route reflector).
    pub rr_client: bool,
    /// More paths than this from the neighbor end the session (RFC 4486 Cease subcode 1).
    pub max_prefixes: Option<usize>,
    /// TCP MD5 signature key (RFC 2385).
    pub md5_key: Option<Vec<u8>>,
}

/// A route learned from a neighbor.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    pub neighbor: IpAddr,
    pub route: Route,
}

/// A path in the Adj-RIB-In: neighbor, prefix, path identifier.
type PathKey = (IpAddr, IpNet, u32);

/// Adj-RIB-In: every path from every neighbor (ADD-PATH keeps all sites of a prefix).
#[derive(Debug)]
pub struct RibIn {
    routes: BTreeMap<PathKey, Received>,
    /// The paths kept from restarting neighbors (RFC 4724 §4.2); used as any other until they
    /// are sent again or go.
    stale: BTreeSet<PathKey>,
    /// The families whose End-of-RIB each neighbor has sent in its current session.
    end_of_rib: BTreeMap<IpAddr, Families>,
    /// Our wait for the neighbors' End-of-RIB after a restart (RFC 4724 §4.1).
    deferral: Deferral,
    /// Paths per neighbor in `routes`, kept along with it: the prefix limit reads it on every
    /// UPDATE, and counting a neighbor's paths would walk its whole table each time.
    paths: BTreeMap<IpAddr, usize>,
    /// Session states, for operators.
    pub sessions: BTreeMap<IpAddr, State>,
    /// Messages exchanged with each neighbor, for operators.
    pub messages: BTreeMap<IpAddr, MessageCounts>,
    /// Paths each neighbor sent that the import policy dropped (neither services nor cpn
    /// locators), for operators.
    pub filtered: BTreeMap<IpAddr, u64>,
    /// Bumped on every change of `routes`, so that each session re-exports to its peer.
    changed: watch::Sender<u64>,
}

impl Default for RibIn {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
            stale: BTreeSet::new(),
            end_of_rib: BTreeMap::new(),
            deferral: Deferral::none(),
            paths: BTreeMap::new(),
            sessions: BTreeMap::new(),
            messages: BTreeMap::new(),
            filtered: BTreeMap::new(),
            changed: watch::Sender::new(0),
        }
    }
}

impl RibIn {
    pub fn routes(&self) -> impl Iterator<Item = Learned> + '_ {
        self.routes.values().map(|r| Learned {
            neighbor: r.from.address,
            route: r.route.clone(),
        })
    }

    /// Notified on every change of the RIB.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A path kept from a neighbor that restarts, not sent again yet.
    pub fn is_stale(&self, learned: &Learned) -> bool {
        self.stale.contains(&(
            learned.neighbor,
            learned.route.prefix,
            learned.route.path_id,
        ))
    }

    /// The families whose End-of-RIB `neighbor` has sent since its session came up: its
    /// routes of those families are complete.
    pub fn end_of_rib(&self, neighbor: IpAddr) -> Families {
        self.end_of_rib.get(&neighbor).copied().unwrap_or_default()
    }

    /// `neighbor`'s session ended: its paths go, or stay stale (RFC 4724 §4.2).
    fn session_down(&mut self, neighbor: IpAddr, retain: Retain) {
        let stale = &mut self.stale;
        self.routes.retain(|key, _| {
            if key.0 != neighbor {
                return true;
            }
            let was_stale = stale.contains(key);
            let keep = match retain {
                Retain::Nothing => false,
                // Paths still stale from an earlier restart go (consecutive restarts).
                Retain::MarkStale(families) => !was_stale && families.contains(Family::of(&key.1)),
                Retain::StaleOnly => was_stale,
            };
            if keep {
                stale.insert(*key);
            } else {
                stale.remove(key);
            }
            keep
        });
        let left = self.routes.keys().filter(|key| key.0 == neighbor).count();
        if left == 0 {
            self.paths.remove(&neighbor);
        } else {
            self.paths.insert(neighbor, left);
        }
        self.end_of_rib.remove(&neighbor);
    }

    /// Removes `neighbor`'s stale paths of `families`; how many went.
    fn remove_stale(&mut self, neighbor: IpAddr, families: Families) -> usize {
        let gone: Vec<PathKey> = self
            .stale
            .iter()
            .filter(|key| key.0 == neighbor && families.contains(Family::of(&key.1)))
            .copied()
            .collect();
        for key in &gone {
            self.remove(key);
        }
        gone.len()
    }

    /// Paths from `neighbor` in the RIB.
    pub fn paths_from(&self, neighbor: IpAddr) -> usize {
        self.paths.get(&neighbor).copied().unwrap_or(0)
    }

    fn insert(&mut self, key: PathKey, received: Received) {
        if self.routes.insert(key, received).is_none() {
            *self.paths.entry(key.0).or_default() += 1;
        }
    }

    /// Removes a path (stale or not); whether there was one.
    fn remove(&mut self, key: &PathKey) -> bool {
        self.stale.remove(key);
        let removed = self.routes.remove(key).is_some();
        if removed && let Some(n) = self.paths.get_mut(&key.0) {
            *n -= 1;
        }
        removed
    }

    /// A path as if `neighbor` (AS 65000) had sent it, for other modules' tests.
    #[cfg(test)]
    pub fn insert_for_test(&mut self, neighbor: IpAddr, route: Route) {
        let key = (neighbor, route.prefix, route.path_id);
        let from = Peer {
            address: neighbor,
            asn: 65000,
            rr_client: false,
            add_path: AddPath::default(),
        };
        self.insert(
            key,
            Received {
                from,
                from_id: Ipv4Addr::UNSPECIFIED,
                route,
                link_us: 0,
            },
        );
    }

    fn touch(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

pub type SharedRib = Arc<Mutex<RibIn>>;

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

/// Starts the listener and the sessions. `local` holds the routes this node originates;
/// `liveness` and `links` come from link sensing (probe.rs).
pub async fn spawn(
    config: SpeakerConfig,
    local: watch::Receiver<Vec<Route>>,
    mut liveness: Liveness,
    links: Links,
) -> std::io::Result<(SharedRib, Vec<tokio::task::JoinHandle<()>>)> {
    let rib = SharedRib::default();
    if config.graceful.enabled() && config.graceful.forwarding_preserved {
        let until = Instant::now() + config.selection_deferral;
        rib.lock().expect("rib lock").deferral =
            Deferral::new(config.neighbors.iter().map(|n| n.address), until);
    }
    let rib_changed = rib.lock().expect("rib lock").changed.subscribe();
    let local_speaker = Local {
        asn: config.asn,
        router_id: config.router_id,
        cluster_id: config.cluster_id.unwrap_or(config.router_id),
        next_hop: config.next_hop,
    };
    let listener = TcpListener::bind(config.listen).await?;
    for neighbor in &config.neighbors {
        if let Some(key) = &neighbor.md5_key {
            super::md5::set_key(&listener, neighbor.address, key)?;
        }
    }
    let mut inboxes = HashMap::new();
    let mut tasks = Vec::new();
    for neighbor in &config.neighbors {
        let (tx, rx) = mpsc::channel(4);
        inboxes.insert(neighbor.address, tx);
        let peer = PeerConfig {
            local_asn: config.asn,
            router_id: config.router_id,
            peer_asn: neighbor.asn,
            hold_time: config.hold_time,
            connect_retry: config.connect_retry,
            passive: neighbor.passive,
            graceful: config.graceful,
        };
        let session = Session {
            neighbor: neighbor.clone(),
            fsm: Fsm::new(peer),
            metric_code: config.metric_code,
            import: config.import.clone(),
            me: local_speaker,
            peer: Peer {
                address: neighbor.address,
                asn: neighbor.asn,
                rr_client: neighbor.rr_client,
                add_path: AddPath::default(),
            },
            next_hop_self: config.next_hop.is_unspecified(),
            peer_id: Ipv4Addr::UNSPECIFIED,
            ipv4_over_ipv6: false,
            rib: rib.clone(),
            rib_changed: rib_changed.clone(),
            local: local.clone(),
            conn: None,
            colliding: None,
            path_ids: PathIds::default(),
            skipped: Vec::new(),
            advertised: Vec::new(),
            end_of_rib_due: Families::NONE,
            originated_complete: false,
            alive: liveness.remove(&neighbor.address),
            links: links.clone(),
        };
        tasks.push(tokio::spawn(session.run(rx)));
    }
    tasks.push(tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                continue;
            };
            if let Some(inbox) = inboxes.get(&canonical(from.ip())) {
                let _ = inbox.send(stream).await;
            } else {
                tracing::warn!(%from, "BGP connection from an unconfigured address refused");
            }
        }
    }));
    Ok((rib, tasks))
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

struct Session {
    neighbor: NeighborConfig,
    fsm: Fsm,
    metric_code: u8,
    import: policy::Import,
    me: Local,
    /// The neighbor as policy sees it (ADD-PATH once negotiated).
    peer: Peer,
    /// No next hop configured: routes we pass on carry our address on this session.
    next_hop_self: bool,
    /// The neighbor's BGP identifier, once the session is up.
    peer_id: Ipv4Addr,
    /// The neighbor takes IPv4 routes with an IPv6 next hop (RFC 8950), once the session is up.
    ipv4_over_ipv6: bool,
    rib: SharedRib,
    rib_changed: watch::Receiver<u64>,
    /// The routes this node originates.
    local: watch::Receiver<Vec<Route>>,
    conn: Option<Framed<TcpStream, errors::Codec>>,
    /// A second connection to the same peer, held until its OPEN settles the collision
    /// (RFC 4271 §6.8), and whether we opened it.
    colliding: Option<(Framed<TcpStream, errors::Codec>, bool)>,
    path_ids: PathIds,
    /// The attributes the codec cut out of the message being handled (RFC 7606).
    skipped: Vec<Malformed>,
    /// What this session has announced to the peer.
    advertised: Vec<Route>,
    /// The families whose End-of-RIB is still to be sent: those negotiated, from the time the
    /// session is up until our initial routes are out.
    end_of_rib_due: Families,
    /// The routes this node originates are all there: the reporting loop published them
    /// once, or has nothing to publish (it dropped its sender).
    originated_complete: bool,
    /// The neighbor's link liveness, when it is probed.
    alive: Option<watch::Receiver<bool>>,
    links: Links,
}

impl Session {
    async fn run(mut self, mut accepted: mpsc::Receiver<TcpStream>) {
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
            self.rib
                .lock()
                .expect("rib lock")
                .sessions
                .insert(self.neighbor.address, self.fsm.state());
            let deadline = self.fsm.next_deadline().map(tokio::time::Instant::from_std);
            let deferral = self.deferral_deadline();
            let event = tokio::select! {
                incoming = next_message(&mut self.conn) => match incoming {
                    Incoming::Closed | Incoming::Message(BgpMessage::Notification(_), _)
                        if self.colliding.is_some()
                            && matches!(self.fsm.state(), State::OpenSent | State::OpenConfirm) =>
                    {
                        let (conn, outgoing) = self.colliding.take().expect("checked above");
                        tracing::debug!(neighbor = %self.neighbor.address, "the peer resolved the collision first: carrying on over the other connection");
                        self.conn = Some(conn);
                        Event::ConnectionReplaced { outgoing }
                    }
                    Incoming::Message(message, skipped) => {
                        self.count(false, &message);
                        self.skipped = skipped;
                        Event::Message(message)
                    }
                    Incoming::Malformed(notification, why) => {
                        tracing::warn!(neighbor = %self.neighbor.address, %why, "malformed BGP message");
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
                        tracing::debug!(neighbor = %self.neighbor.address, %error, "connect failed");
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
                dead = link_died(&mut self.alive) => {
                    if !dead {
                        continue;
                    }
                    tracing::warn!(neighbor = %self.neighbor.address, "link probe: neighbor lost, closing the session");
                    Event::PeerDead
                }
                changed = self.rib_changed.changed(), if self.fsm.state() == State::Established => {
                    if changed.is_ok() {
                        actions = self.advertise().await;
                    }
                    continue;
                }
                () = sleep_until(deferral), if !self.end_of_rib_due.is_empty() => {
                    actions = self.advertise().await;
                    continue;
                }
            };
            actions = self.fsm.handle(Instant::now(), event);
        }
    }

    /// A new connection: taken if the FSM is waiting for one; held as colliding when a
    /// session is under way (its OPEN decides, RFC 4271 §6.8); else dropped.
    fn offer(&mut self, stream: TcpStream, outgoing: bool) -> Option<Event> {
        let _ = stream.set_nodelay(true);
        let framed = Framed::new(stream, codec(AddPath::default(), self.metric_code));
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
                let target = SocketAddr::new(self.neighbor.address, self.neighbor.port);
                let key = self.neighbor.md5_key.clone();
                let tx = connected.clone();
                tokio::spawn(async move {
                    let result = tokio::time::timeout(Duration::from_secs(5), connect(target, key))
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
                tracing::info!(neighbor = %self.neighbor.address, "connection collision: carrying on over the peer's connection");
                if let Some(mut old) = self.conn.take() {
                    let _ = old.send(collision_cease()).await;
                }
                self.conn = self.colliding.take().map(|(conn, _)| conn);
                vec![]
            }
            Action::Send(message) => self.send(message).await,
            Action::Up(negotiated) => self.up(negotiated).await,
            Action::Down { why, retain } => self.down(&why, retain),
            Action::EndOfRib(family) => self.peer_end_of_rib(family),
            Action::RemoveStale(families) => {
                let mut rib = self.rib.lock().expect("rib lock");
                let gone = rib.remove_stale(self.neighbor.address, families);
                rib.touch();
                drop(rib);
                tracing::info!(neighbor = %self.neighbor.address, ?families, gone, "stale paths removed: the neighbor did not bring them back in time or kept no forwarding state (RFC 4724 §4.2)");
                vec![]
            }
            Action::ResendAll => {
                self.advertised.clear();
                self.advertise().await
            }
            Action::Update(update) => self.learn(&update),
        }
    }

    /// The session is up: per-session settings from what was negotiated, then our routes.
    async fn up(&mut self, negotiated: Negotiated) -> Vec<Action> {
        // Without a configured next hop, next-hop-self is our end of this session.
        if self.next_hop_self
            && let Some(IpAddr::V6(local)) = self
                .conn
                .as_ref()
                .and_then(|c| c.get_ref().local_addr().ok())
                .map(|a| canonical(a.ip()))
        {
            self.me.next_hop = local;
        }
        tracing::info!(neighbor = %self.neighbor.address, asn = negotiated.peer_asn, add_path_tx = ?negotiated.add_path_tx, add_path_rx = ?negotiated.add_path_rx, graceful_restart = ?negotiated.peer_restart, "BGP session established");
        self.peer.add_path = negotiated.add_path_tx;
        self.peer_id = negotiated.peer_router_id;
        self.ipv4_over_ipv6 = negotiated.ipv4_over_ipv6;
        if !negotiated.ipv4_over_ipv6 {
            tracing::info!(neighbor = %self.neighbor.address, "the neighbor takes no IPv4 routes with IPv6 next hops (RFC 8950): none are sent to it");
        }
        if let Some(conn) = &mut self.conn {
            *conn.codec_mut() = codec(negotiated.add_path_rx, self.metric_code);
        }
        self.end_of_rib_due = negotiated.families;
        {
            // A peer that restarted itself, or has no Graceful Restart, does not make a
            // restarting speaker wait (RFC 4724 §4.1).
            let awaited = match negotiated.peer_restart {
                Some(peer) if !peer.restarted => negotiated.families,
                _ => Families::NONE,
            };
            let mut rib = self.rib.lock().expect("rib lock");
            rib.end_of_rib.remove(&self.neighbor.address);
            rib.deferral.peer_up(self.neighbor.address, awaited);
            rib.touch();
        }
        self.advertised.clear();
        self.advertise().await
    }

    /// The session is down: the neighbor's paths go, or stay stale while it restarts.
    fn down(&mut self, why: &Down, retain: Retain) -> Vec<Action> {
        let mut rib = self.rib.lock().expect("rib lock");
        rib.session_down(self.neighbor.address, retain);
        let stale = rib
            .stale
            .iter()
            .filter(|k| k.0 == self.neighbor.address)
            .count();
        rib.touch();
        drop(rib);
        if stale > 0 {
            tracing::info!(neighbor = %self.neighbor.address, reason = %why, stale, "BGP session down; the neighbor restarts: its paths stay, stale (RFC 4724 §4.2)");
        } else {
            tracing::info!(neighbor = %self.neighbor.address, reason = %why, "BGP session down");
        }
        self.advertised.clear();
        self.end_of_rib_due = Families::NONE;
        vec![]
    }

    /// The neighbor's End-of-RIB: its routes of `family` are complete, the stale ones go.
    fn peer_end_of_rib(&mut self, family: Family) -> Vec<Action> {
        let mut rib = self.rib.lock().expect("rib lock");
        let gone = rib.remove_stale(self.neighbor.address, [family].into_iter().collect());
        rib.end_of_rib
            .entry(self.neighbor.address)
            .or_default()
            .insert(family);
        rib.deferral.end_of_rib(self.neighbor.address, family);
        rib.touch();
        drop(rib);
        tracing::info!(neighbor = %self.neighbor.address, family = family.name(), stale_paths_removed = gone, "End-of-RIB received");
        vec![]
    }

    /// Takes an UPDATE into the Adj-RIB-In, weighed by RFC 7606 (errors.rs) and loop
    /// prevention, and enforces the neighbor's prefix limit.
    fn learn(&mut self, update: &BgpUpdateMessage) -> Vec<Action> {
        let internal = self.peer.asn == self.me.asn;
        let skipped = std::mem::take(&mut self.skipped);
        let mut parsed = route::parse(update, self.metric_code);
        match errors::check(update, &skipped, internal) {
            Verdict::Accept { discarded } => parsed.discarded.extend(discarded),
            Verdict::TreatAsWithdraw { why, withdrawn } => {
                tracing::warn!(neighbor = %self.neighbor.address, %why, "UPDATE treated as withdraw (RFC 7606)");
                // Every prefix announced, also those `parse` could not make a route of.
                parsed.announced.clear();
                parsed.withdrawn.extend(withdrawn);
            }
            Verdict::SessionReset { notification, why } => {
                return self.fsm.handle(
                    Instant::now(),
                    Event::Malformed {
                        notification: Some(notification),
                        why,
                    },
                );
            }
        }
        for discarded in &parsed.discarded {
            tracing::warn!(neighbor = %self.neighbor.address, %discarded, "attribute discarded (RFC 7606)");
        }
        let mut rib = self.rib.lock().expect("rib lock");
        // Whether the RIB changed: an UPDATE whose routes the import policy all dropped (a
        // full table's) wakes nobody.
        let mut changed = false;
        for w in parsed.withdrawn {
            changed |= rib.remove(&(self.neighbor.address, w.prefix, w.path_id));
        }
        for r in parsed.announced {
            let key = (self.neighbor.address, r.prefix, r.path_id);
            // Sent again: no longer stale, whatever becomes of it.
            rib.stale.remove(&key);
            if let Err(looped) = policy::accept(&self.me, &r) {
                // Treated as withdrawn: an earlier copy of the path goes too.
                tracing::debug!(neighbor = %self.neighbor.address, prefix = %r.prefix, %looped, "route ignored");
                changed |= rib.remove(&key);
                continue;
            }
            if self.import.classify(&r) == policy::Imported::Filtered {
                // Not a route cpn keeps (import policy): dropped and counted; an earlier copy
                // of the path goes too.
                changed |= rib.remove(&key);
                *rib.filtered.entry(self.neighbor.address).or_default() += 1;
                continue;
            }
            let received = Received {
                from: self.peer,
                from_id: self.peer_id,
                route: r,
                link_us: 0, // filled in when exported
            };
            rib.insert(key, received);
            changed = true;
        }
        // Stale paths wait for the peer to send them again: only fresh ones count.
        let stale = rib
            .stale
            .iter()
            .filter(|key| key.0 == self.neighbor.address)
            .count();
        let received = rib.paths_from(self.neighbor.address) - stale;
        if changed {
            rib.touch();
        }
        drop(rib);
        match self.neighbor.max_prefixes {
            Some(limit) if received > limit => {
                tracing::warn!(neighbor = %self.neighbor.address, received, limit, "maximum prefixes exceeded, closing the session");
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
            tracing::debug!(neighbor = %self.neighbor.address, %error, "send failed");
            self.conn = None;
            return self.fsm.handle(Instant::now(), Event::TcpFailed);
        }
        vec![]
    }

    fn count(&self, sent: bool, message: &BgpMessage) {
        self.rib
            .lock()
            .expect("rib lock")
            .messages
            .entry(self.neighbor.address)
            .or_default()
            .count(sent, message);
    }

    /// Sends what changed in what we export to this peer (our routes and those we pass on)
    /// since the last advertisement; then End-of-RIB, once the initial routes are out.
    async fn advertise(&mut self) -> Vec<Action> {
        // A value sent (or the sender gone) since the session task started: the reporting
        // loop has published.
        self.originated_complete |= self.local.has_changed().unwrap_or(true);
        let originated = self.local.borrow_and_update().clone();
        let mut received: Vec<Received> = {
            let rib = self.rib.lock().expect("rib lock");
            self.rib_changed.mark_unchanged();
            rib.routes.values().cloned().collect()
        };
        {
            let links = self.links.borrow();
            for r in &mut received {
                // AIGP has no "unknown": an unmeasured link adds nothing to it.
                r.link_us = links
                    .get(&r.from.address)
                    .and_then(|l| l.one_way_us().known())
                    .unwrap_or(0);
            }
        }
        let mut current = policy::export(
            &self.me,
            &originated,
            &received,
            &self.peer,
            &mut self.path_ids,
        );
        // Our IPv4 routes carry an IPv6 next hop: only for a neighbor that takes them.
        current.retain(|r| self.ipv4_over_ipv6 || matches!(r.prefix, IpNet::V6(_)));
        let encoding = route::Encoding {
            metric_code: self.metric_code,
            add_path: self.peer.add_path,
            local_asn: self.me.asn,
            internal: self.peer.asn == self.me.asn,
        };
        let messages = route::changes(&self.advertised, &current, encoding);
        self.advertised = current;
        let mut actions = Vec::new();
        for message in messages {
            actions.extend(self.send(message).await);
        }
        actions.extend(self.end_of_rib().await);
        actions
    }

    /// End-of-RIB for every negotiated family (RFC 4724 §2, also when there was nothing to
    /// send), once our originated routes are all out and, after a restart, every peer's
    /// routes are in (RFC 4724 §4.1).
    async fn end_of_rib(&mut self) -> Vec<Action> {
        if self.end_of_rib_due.is_empty() {
            return vec![];
        }
        // Asked first: past its deadline the wait ends, whatever else holds End-of-RIB back.
        let peers_done = self
            .rib
            .lock()
            .expect("rib lock")
            .deferral
            .over(Instant::now());
        if !peers_done || !self.originated_complete {
            return vec![];
        }
        let due = std::mem::take(&mut self.end_of_rib_due);
        tracing::debug!(neighbor = %self.neighbor.address, families = ?due, "initial routes sent: End-of-RIB");
        let mut actions = Vec::new();
        for family in due.iter() {
            actions.extend(self.send(route::end_of_rib(family)).await);
        }
        actions
    }

    /// When the wait for the peers' End-of-RIB ends at the latest, while it lasts.
    fn deferral_deadline(&self) -> Option<tokio::time::Instant> {
        self.rib
            .lock()
            .expect("rib lock")
            .deferral
            .deadline()
            .map(tokio::time::Instant::from_std)
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

/// Connects to a neighbor, signing the connection with `key` when there is one.
async fn connect(target: SocketAddr, key: Option<Vec<u8>>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    if let Some(key) = key {
        super::md5::set_key(&socket, target.ip(), &key)?;
    }
    socket.connect(target).await
}

/// Resolves with `true` when the probed link dies (`false` when it comes back).
async fn link_died(alive: &mut Option<watch::Receiver<bool>>) -> bool {
    let Some(rx) = alive else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    !*rx.borrow_and_update()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A codec for one session; path identifiers are read once ADD-PATH is negotiated, the CPN
/// metric attribute under `metric_code`.
pub fn codec(add_path: AddPath, metric_code: u8) -> errors::Codec {
    errors::Codec::new(add_path, metric_code)
}

#[cfg(test)]
mod tests {
    //! The speaker over real TCP on loopback, against a scripted peer.

    use std::net::Ipv6Addr;

    use netgauze_bgp_pkt::notification::MessageHeaderError;

    use super::*;
    use crate::bgp::fsm::PeerConfig;

    const US: u32 = 65001;
    const PEER: u32 = 65002;

    /// Our speaker listening on a loopback port for one passive neighbor, 127.0.0.1.
    async fn speaker() -> (SharedRib, SocketAddr) {
        speaker_with(None).await
    }

    async fn speaker_with(max_prefixes: Option<usize>) -> (SharedRib, SocketAddr) {
        // Dropping the sender: this node originates nothing.
        let (rib, listen, _) = launch(max_prefixes).await;
        (rib, listen)
    }

    /// Our speaker, and the sender of the routes it originates.
    async fn launch(
        max_prefixes: Option<usize>,
    ) -> (SharedRib, SocketAddr, watch::Sender<Vec<Route>>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let config = SpeakerConfig {
            asn: US,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id: None,
            next_hop: Ipv6Addr::LOCALHOST,
            listen,
            hold_time: Duration::from_secs(30),
            connect_retry: Duration::from_secs(1),
            metric_code: 255,
            // These tests announce plain prefixes: keep them to see what the RIB does.
            import: policy::Import {
                keep_other: true,
                ..policy::Import::default()
            },
            graceful: GRACEFUL,
            selection_deferral: Duration::from_secs(30),
            neighbors: vec![NeighborConfig {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 1, // never dialled: passive
                asn: PEER,
                passive: true,
                rr_client: false,
                max_prefixes,
                md5_key: None,
            }],
        };
        let (tx, local) = watch::channel(Vec::new());
        let (rib, _tasks) = spawn(
            config,
            local,
            Liveness::default(),
            watch::channel(HashMap::new()).1,
        )
        .await
        .unwrap();
        (rib, listen, tx)
    }

    /// Graceful Restart as agents have it with their data plane kept attached.
    const GRACEFUL: graceful::Ours = graceful::Ours {
        restart_time: Duration::from_mins(2),
        forwarding_preserved: true,
    };
    const NEIGHBOR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A scripted peer: connects, opens, is Established with the speaker and has its
    /// End-of-RIB for both families (the speaker originates nothing).
    async fn peer(to: SocketAddr) -> Framed<TcpStream, errors::Codec> {
        let mut conn = open_session(to, GRACEFUL).await;
        expect_end_of_rib(&mut conn).await;
        conn
    }

    /// A scripted peer with `graceful`, Established with the speaker.
    async fn open_session(
        to: SocketAddr,
        graceful: graceful::Ours,
    ) -> Framed<TcpStream, errors::Codec> {
        open_session_with(to, peer_open(graceful)).await
    }

    /// The scripted peer's OPEN: a fresh agent's (Restart State bit set).
    fn peer_open(graceful: graceful::Ours) -> BgpMessage {
        Fsm::new(PeerConfig {
            local_asn: PEER,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            peer_asn: US,
            hold_time: Duration::from_secs(30),
            connect_retry: Duration::from_secs(1),
            passive: false,
            graceful,
        })
        .open()
    }

    async fn open_session_with(
        to: SocketAddr,
        open: BgpMessage,
    ) -> Framed<TcpStream, errors::Codec> {
        // Both sides offer ADD-PATH in both directions.
        let mut conn = Framed::new(
            TcpStream::connect(to).await.unwrap(),
            codec(AddPath::BOTH, 255),
        );
        conn.send(open).await.unwrap();
        conn.send(BgpMessage::KeepAlive).await.unwrap();
        // The speaker's OPEN and KEEPALIVE.
        for _ in 0..2 {
            conn.next().await.unwrap().unwrap();
        }
        conn
    }

    /// The next messages are End-of-RIB for IPv6 and IPv4 unicast.
    async fn expect_end_of_rib(conn: &mut Framed<TcpStream, errors::Codec>) {
        for family in Family::ALL {
            let message = next_non_keepalive(conn).await;
            assert!(
                matches!(&message, Some(BgpMessage::Update(u)) if u.end_of_rib() == Some(family.address_type())),
                "End-of-RIB for {family:?}: {message:?}"
            );
        }
    }

    /// An UPDATE for `fc00::5/128`, path id 1 (both sides offer ADD-PATH), with this ORIGIN
    /// value (0 is IGP, 7 is malformed).
    fn update(origin: u8) -> Vec<u8> {
        update_path(origin, 1)
    }

    fn update_path(origin: u8, path_id: u8) -> Vec<u8> {
        let mut attrs = vec![0x40, 1, 1, origin, 0x40, 2, 0, 0x80, 14, 42, 0, 2, 1, 16];
        attrs.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        attrs.extend_from_slice(&[0, 0, 0, 0, path_id, 128]);
        attrs.extend_from_slice(&"fc00::5".parse::<Ipv6Addr>().unwrap().octets());
        message(
            2,
            &[
                &[0, 0],
                &u16::try_from(attrs.len()).unwrap().to_be_bytes(),
                &attrs,
            ],
        )
    }

    fn message(kind: u8, body: &[&[u8]]) -> Vec<u8> {
        let body = body.concat();
        let mut out = vec![0xff; 16];
        out.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        out.push(kind);
        out.extend(body);
        out
    }

    async fn raw(conn: &mut Framed<TcpStream, errors::Codec>, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        conn.get_mut().write_all(bytes).await.unwrap();
    }

    async fn eventually(rib: &SharedRib, what: &str, f: impl Fn(&RibIn) -> bool) {
        for _ in 0..200 {
            if f(&rib.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[test]
    fn paths_per_neighbor_follow_the_rib() {
        let route = |prefix: &str| Route {
            prefix: prefix.parse().unwrap(),
            path_id: 1,
            next_hop: Ipv6Addr::LOCALHOST,
            service: None,
            aigp: None,
            metrics: None,
            link_bandwidth: None,
            as_path: vec![PEER],
            originator_id: None,
            cluster_list: Vec::new(),
        };
        let (a, b) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        let mut rib = RibIn::default();
        rib.insert_for_test(a, route("2001:db8:1::/48"));
        rib.insert_for_test(a, route("2001:db8:1::/48")); // replaces the path
        rib.insert_for_test(a, route("2001:db8:2::/48"));
        rib.insert_for_test(b, route("2001:db8:1::/48"));
        assert_eq!((rib.paths_from(a), rib.paths_from(b)), (2, 1));
        let key = (a, "2001:db8:2::/48".parse().unwrap(), 1);
        assert!(rib.remove(&key));
        assert!(!rib.remove(&key));
        assert_eq!(rib.paths_from(a), 1);
        rib.session_down(a, Retain::Nothing);
        assert_eq!((rib.paths_from(a), rib.paths_from(b)), (0, 1));
        assert_eq!(rib.routes().count(), 1);
        // A restart keeps the path stale, and counted, until it goes.
        rib.insert_for_test(a, route("2001:db8:3::/48"));
        rib.session_down(a, Retain::MarkStale(Families::ALL));
        assert_eq!(rib.paths_from(a), 1);
        assert_eq!(rib.remove_stale(a, Families::ALL), 1);
        assert_eq!(rib.paths_from(a), 0);
    }

    #[tokio::test]
    async fn a_malformed_origin_withdraws_the_route_and_keeps_the_session() {
        let (rib, listen) = speaker().await;
        let mut conn = peer(listen).await;
        raw(&mut conn, &update(0)).await;
        eventually(&rib, "the route is learned", |r| r.routes().count() == 1).await;
        raw(&mut conn, &update(7)).await;
        eventually(&rib, "the route is withdrawn", |r| r.routes().count() == 0).await;
        // Still up: a good UPDATE is taken again.
        raw(&mut conn, &update(0)).await;
        eventually(&rib, "the route is learned again", |r| {
            r.routes().count() == 1
                && r.sessions.get(&IpAddr::V4(Ipv4Addr::LOCALHOST)) == Some(&State::Established)
        })
        .await;
    }

    /// The next message from the speaker that is not a KEEPALIVE.
    async fn next_non_keepalive(conn: &mut Framed<TcpStream, errors::Codec>) -> Option<BgpMessage> {
        loop {
            match conn.next().await {
                Some(Ok((BgpMessage::KeepAlive, _))) => {}
                Some(Ok((message, _))) => return Some(message),
                _ => return None,
            }
        }
    }

    #[tokio::test]
    async fn more_prefixes_than_allowed_end_the_session() {
        let (rib, listen) = speaker_with(Some(1)).await;
        let mut conn = peer(listen).await;
        raw(&mut conn, &update_path(0, 1)).await;
        eventually(&rib, "the first path is learned", |r| {
            r.routes().count() == 1
        })
        .await;
        raw(&mut conn, &update_path(0, 2)).await;
        let answer = next_non_keepalive(&mut conn).await;
        assert!(
            matches!(
                answer,
                Some(BgpMessage::Notification(
                    BgpNotificationMessage::CeaseError(
                        CeaseError::MaximumNumberOfPrefixesReached { .. }
                    )
                ))
            ),
            "{answer:?}"
        );
        eventually(&rib, "the session's routes are gone", |r| {
            r.routes().count() == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_message_over_4096_bytes_is_answered_with_bad_message_length() {
        let (rib, listen) = speaker().await;
        let mut conn = peer(listen).await;
        raw(&mut conn, &update(0)).await;
        eventually(&rib, "the route is learned", |r| r.routes().count() == 1).await;
        raw(&mut conn, &message(2, &[&[0u8; 4100]])).await;
        let answer = next_non_keepalive(&mut conn).await;
        let Some(BgpMessage::Notification(n)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(
            n,
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength {
                value: Box::new(4119u16.to_be_bytes()),
            })
        );
        eventually(&rib, "the session's routes are gone", |r| {
            r.routes().count() == 0
        })
        .await;
    }
    #[tokio::test]
    async fn end_of_rib_follows_the_originated_routes_in_each_family() {
        let (rib, listen, local) = launch(None).await;
        let mut conn = open_session(listen, GRACEFUL).await;
        // The reporting loop has not published yet: our routes are not complete.
        let early = tokio::time::timeout(Duration::from_millis(300), next_non_keepalive(&mut conn));
        assert!(early.await.is_err(), "nothing before the originated routes");
        let locator = Route {
            prefix: "fc00:1::/32".parse().unwrap(),
            path_id: 1,
            next_hop: Ipv6Addr::LOCALHOST,
            service: None,
            aigp: Some(0),
            metrics: None,
            link_bandwidth: None,
            as_path: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
        };
        local.send_replace(vec![locator]);
        let Some(BgpMessage::Update(first)) = next_non_keepalive(&mut conn).await else {
            panic!("the locator's UPDATE")
        };
        assert_eq!(route::parse(&first, 255).announced.len(), 1, "{first:?}");
        expect_end_of_rib(&mut conn).await;
        // The peer's End-of-RIB: its routes of that family are complete.
        conn.send(route::end_of_rib(Family::Ipv6Unicast))
            .await
            .unwrap();
        eventually(&rib, "the peer's End-of-RIB is recorded", |r| {
            r.end_of_rib(NEIGHBOR) == [Family::Ipv6Unicast].into_iter().collect()
        })
        .await;
    }

    /// Paths from 127.0.0.1: (path id, stale).
    fn paths(rib: &RibIn) -> Vec<(u32, bool)> {
        rib.routes()
            .map(|l| (l.route.path_id, rib.is_stale(&l)))
            .collect()
    }

    /// Waits until the session is Active again: the speaker takes a new connection.
    async fn until_active(rib: &SharedRib) {
        eventually(rib, "the session waits for the peer", |r| {
            r.sessions.get(&NEIGHBOR) == Some(&State::Active)
        })
        .await;
    }

    #[tokio::test]
    async fn a_restarting_peer_keeps_its_paths_stale_until_its_end_of_rib() {
        let (rib, listen) = speaker().await;
        let mut conn = peer(listen).await;
        raw(&mut conn, &update_path(0, 1)).await;
        raw(&mut conn, &update_path(0, 2)).await;
        eventually(&rib, "two paths", |r| r.routes().count() == 2).await;
        // The peer's agent stops: its connection closes without a NOTIFICATION.
        drop(conn);
        eventually(&rib, "both paths stay, stale", |r| {
            paths(r) == [(1, true), (2, true)]
        })
        .await;
        until_active(&rib).await;
        // Back with its forwarding state: path 1 again, then End-of-RIB; path 2 is gone.
        let mut conn = peer(listen).await;
        raw(&mut conn, &update_path(0, 1)).await;
        eventually(&rib, "path 1 fresh, path 2 still stale", |r| {
            paths(r) == [(1, false), (2, true)]
        })
        .await;
        conn.send(route::end_of_rib(Family::Ipv6Unicast))
            .await
            .unwrap();
        eventually(&rib, "only path 1", |r| paths(r) == [(1, false)]).await;
    }

    #[tokio::test]
    async fn a_restarting_peer_that_stays_away_loses_its_paths_at_its_restart_time() {
        let (rib, listen) = speaker().await;
        let quick = graceful::Ours {
            restart_time: Duration::from_secs(1),
            forwarding_preserved: true,
        };
        let mut conn = open_session(listen, quick).await;
        expect_end_of_rib(&mut conn).await;
        raw(&mut conn, &update(0)).await;
        eventually(&rib, "the path", |r| r.routes().count() == 1).await;
        drop(conn);
        eventually(&rib, "the path stays, stale", |r| paths(r) == [(1, true)]).await;
        eventually(&rib, "the path goes after 1 s", |r| r.routes().count() == 0).await;

        // A peer that ends its session with a NOTIFICATION loses its paths at once.
        until_active(&rib).await;
        let mut conn = peer(listen).await;
        raw(&mut conn, &update(0)).await;
        eventually(&rib, "the path again", |r| r.routes().count() == 1).await;
        let cease = BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown {
            value: Box::new([]),
        });
        conn.send(BgpMessage::Notification(cease)).await.unwrap();
        eventually(&rib, "the path goes at once", |r| r.routes().count() == 0).await;
    }
    #[tokio::test]
    async fn after_a_restart_end_of_rib_waits_for_the_peers_own() {
        use netgauze_bgp_pkt::{
            capabilities::{BgpCapability, GracefulRestartCapability},
            open::{BgpOpenMessage, BgpOpenMessageParameter},
        };
        // The speaker has just started with its forwarding state (a restart); the peer has
        // not restarted: it has no Restart State bit, so the speaker waits for its routes.
        let (_rib, listen) = speaker().await;
        let BgpMessage::Open(open) = peer_open(GRACEFUL) else {
            unreachable!()
        };
        let capabilities: Vec<BgpCapability> = open
            .capabilities()
            .into_iter()
            .map(|c| match c {
                BgpCapability::GracefulRestartCapability(gr) => {
                    BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
                        false,
                        false,
                        gr.time(),
                        gr.address_families().to_vec(),
                    ))
                }
                other => other.clone(),
            })
            .collect();
        let settled = BgpOpenMessage::new(
            open.my_as(),
            open.hold_time(),
            open.bgp_id(),
            vec![BgpOpenMessageParameter::new_capabilities(capabilities)],
        );
        let mut conn = open_session_with(listen, BgpMessage::Open(settled)).await;
        let early = tokio::time::timeout(Duration::from_millis(300), next_non_keepalive(&mut conn));
        assert!(
            early.await.is_err(),
            "RFC 4724 §4.1: not before the peer's End-of-RIB"
        );
        for family in Family::ALL {
            conn.send(route::end_of_rib(family)).await.unwrap();
        }
        expect_end_of_rib(&mut conn).await;
    }
}
