//! BFD (RFC 5880) with this agent's BGP neighbors: single hop (RFC 5881) and multihop (RFC
//! 5883) sessions in Asynchronous mode, one task for all of them.
//!
//! ```text
//!   UDP 3784 / 4784 (received, TTL read) ─┐                    ┌─▶ one socket per session,
//!                                         ├─▶ sessions ────────┤   source port 49152–65535,
//!   timers (next packet, detection time) ─┘   (session.rs)     │   TTL 255 (RFC 5881 §4, §5)
//!                                                              └─▶ Event::Bfd ─▶ routing core
//! ```
//!
//! Each state change goes to the routing core as a typed event; the BGP session of the
//! neighbor reads it in the core's snapshot and closes when BFD goes down (RFC 5882 §4.3).
//!
//! The sessions run on a thread of their own: at 10 ms × 3, a neighbor declares us dead after
//! 30 ms without a packet, and the agent's runtime may well be busy that long (a table
//! arriving, rings rebuilt in a debug build). bfdd is a daemon of its own in FRR for the same
//! reason.

pub mod packet;
pub mod session;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use nix::sys::socket::{self as nix_socket, sockopt};
use serde::{Deserialize, Serialize};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
};

use self::{
    packet::{Control, Diagnostic, MULTIHOP_PORT, SINGLE_HOP_PORT, State},
    session::{Session, Timers, Transition},
};
use super::udp::Received;
use crate::core::Event as CoreEvent;

/// Single-hop packets that left their sender with TTL 255 and crossed no router (RFC 5881 §5,
/// the GTSM of RFC 5082).
const SINGLE_HOP_TTL: u8 = 255;
/// Source ports for sessions' packets (RFC 5881 §4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// One neighbor to run BFD with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    /// Multihop (RFC 5883, UDP 4784, any TTL) or single hop (RFC 5881, UDP 3784, TTL 255).
    pub multihop: bool,
    pub timers: Timers,
}

/// A session as the routing core keeps it and operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub remote_state: State,
    /// Why the session last went down (`none` while it has not).
    pub diagnostic: Diagnostic,
    pub multihop: bool,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// The configured interval and multiplier.
    pub interval_us: u64,
    pub multiplier: u8,
    /// What is in force now: our pace, and how long the remote may be silent.
    pub transmit_interval_us: u64,
    pub detection_time_us: Option<u64>,
    /// When the state last changed, and when it last left Up: microseconds since the Unix
    /// epoch (`None`: never).
    pub changed_at_unix_us: Option<u64>,
    pub down_at_unix_us: Option<u64>,
}

impl Status {
    /// BFD saw the neighbor fail: it went from Up to Down on its own (detection time, or the
    /// neighbor said Down), not because the neighbor's operator took it down (RFC 5882 §3.2).
    pub fn failed_since(&self, before: &Self) -> bool {
        before.state == State::Up
            && self.state == State::Down
            && self.remote_state != State::AdminDown
    }
}

/// Why a received packet went no further, counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dropped {
    /// A single-hop packet whose TTL was not 255: it crossed a router (RFC 5881 §5).
    Ttl,
    /// Broke a rule of RFC 5880 §6.8.6 that needs no session.
    Malformed,
    /// From an address with no session on that port, or for another session's discriminator.
    NoSession,
    /// Authenticated: this agent runs no authentication.
    Authenticated,
}

impl Dropped {
    /// As `cpnctl` and Prometheus name it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::Malformed => "malformed",
            Self::NoSession => "no_session",
            Self::Authenticated => "authenticated",
        }
    }
}

/// Starts one session per peer on the BFD thread; each state change goes to `core`. The
/// thread ends with the core. Answers the counts of dropped packets, as they grow.
pub async fn spawn(
    peers: &[Peer],
    core: mpsc::Sender<CoreEvent>,
) -> io::Result<watch::Receiver<Drops>> {
    let (drops, counted) = watch::channel(Drops::new());
    let single_hop = if peers.iter().any(|p| !p.multihop) {
        Some(super::udp::listen(SINGLE_HOP_PORT, false)?)
    } else {
        None
    };
    let multihop = if peers.iter().any(|p| p.multihop) {
        Some(super::udp::listen(MULTIHOP_PORT, false)?)
    } else {
        None
    };
    let now = Instant::now();
    let mut sessions = Vec::new();
    let mut discriminators = std::collections::HashSet::new();
    for peer in peers {
        // Unique, nonzero, and random (§6.8.1).
        let discriminator = loop {
            let d = fastrand::u32(1..);
            if discriminators.insert(d) {
                break d;
            }
        };
        let session = Session::new(discriminator, peer.timers, now);
        let socket = sender(peer)?;
        let status = status(peer, &session, Changes::default());
        let _ = core
            .send(CoreEvent::Bfd {
                neighbor: peer.address,
                status,
            })
            .await;
        sessions.push((*peer, session, socket, status));
    }
    // The thread's runtime, and its sockets registered with it, before the thread: whatever
    // fails, fails here, for the agent to report.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (single_hop, multihop) = {
        let _in_runtime = runtime.enter();
        (
            single_hop.map(UdpSocket::from_std).transpose()?,
            multihop.map(UdpSocket::from_std).transpose()?,
        )
    };
    let sessions = sessions
        .into_iter()
        .map(|(peer, session, socket, status)| Running {
            peer,
            session,
            socket,
            status,
            changes: Changes::default(),
        })
        .collect();
    let bfd = Bfd {
        sessions,
        core,
        drops,
    };
    std::thread::Builder::new()
        .name("bfd".to_owned())
        .spawn(move || runtime.block_on(bfd.run(single_hop, multihop)))?;
    Ok(counted)
}

struct Running {
    peer: Peer,
    session: Session,
    /// Nonblocking, and only written: a send never waits (a full buffer is a lost packet).
    socket: std::net::UdpSocket,
    /// As the core last heard it.
    status: Status,
    changes: Changes,
}

/// When a session changed state, and when it last left Up (µs since the Unix epoch).
#[derive(Clone, Copy, Debug, Default)]
struct Changes {
    last: Option<u64>,
    down: Option<u64>,
}

impl Running {
    fn changed(&mut self, transition: Transition) {
        let now = unix_us();
        self.changes.last = Some(now);
        if transition.from == State::Up {
            self.changes.down = Some(now);
        }
        log_transition(&self.peer, transition);
    }
}

struct Bfd {
    sessions: Vec<Running>,
    core: mpsc::Sender<CoreEvent>,
    drops: watch::Sender<Drops>,
}

impl Bfd {
    async fn run(mut self, single_hop: Option<UdpSocket>, multihop: Option<UdpSocket>) {
        // One buffer per socket: both are read at once.
        let (mut single_buf, mut multi_buf) = ([0u8; 128], [0u8; 128]);
        loop {
            let wake = self
                .sessions
                .iter()
                .filter_map(|s| s.session.wake_at())
                .min();
            tokio::select! {
                () = self.core.closed() => return, // the agent is stopping
                received = receive(single_hop.as_ref(), &mut single_buf) => {
                    // An error is one from an earlier send (ICMP), or the like: nothing to read.
                    if let Ok(received) = received {
                        self.received(false, received, &single_buf);
                    }
                }
                received = receive(multihop.as_ref(), &mut multi_buf) => {
                    if let Ok(received) = received {
                        self.received(true, received, &multi_buf);
                    }
                }
                () = sleep_until(wake) => {}
            }
            self.step();
        }
    }

    fn received(&mut self, multihop: bool, received: Received, buf: &[u8]) {
        let now = Instant::now();
        let payload = &buf[..received.len];
        if !multihop && received.ttl != Some(SINGLE_HOP_TTL) {
            self.drop_packet(
                Dropped::Ttl,
                received.from.ip(),
                "TTL is not 255 (RFC 5881 §5)",
            );
            return;
        }
        let packet = match Control::decode(payload) {
            Ok(packet) => packet,
            Err(discard) => {
                self.drop_packet(Dropped::Malformed, received.from.ip(), &discard.to_string());
                return;
            }
        };
        let from = received.from.ip().to_canonical();
        let Some(running) = self
            .sessions
            .iter_mut()
            .find(|s| s.peer.multihop == multihop && s.peer.address.to_canonical() == from)
        else {
            self.drop_packet(
                Dropped::NoSession,
                received.from.ip(),
                "no session with this address",
            );
            return;
        };
        match running.session.receive(&packet, now) {
            Ok(Some(transition)) => running.changed(transition),
            Ok(None) => {}
            Err(ignored) => {
                let reason = match ignored {
                    session::Ignored::Authenticated => Dropped::Authenticated,
                    session::Ignored::NotOurs(_) => Dropped::NoSession,
                };
                self.drop_packet(reason, received.from.ip(), &ignored.to_string());
            }
        }
    }

    fn drop_packet(&mut self, reason: Dropped, from: IpAddr, why: &str) {
        let mut first = false;
        self.drops.send_modify(|drops| {
            let count = drops.entry(reason).or_default();
            *count += 1;
            first = *count == 1;
        });
        // The first of each kind is worth a line; the rest only count.
        if first {
            tracing::warn!(%from, why, "BFD packet dropped (further ones only counted)");
        }
    }

    /// Detection times, packets due, and what the core should hear.
    fn step(&mut self) {
        let now = Instant::now();
        for running in &mut self.sessions {
            if let Some(transition) = running.session.expire(now) {
                running.changed(transition);
            }
            if let Some(packet) = running.session.transmit(now, fastrand::f64()) {
                // A failed send (no route yet, the neighbor's port unreachable) is a packet
                // lost: the remote's detection time deals with it.
                let _ = running.socket.send(&packet.encode());
            }
            let status = status(&running.peer, &running.session, running.changes);
            if status != running.status {
                let event = CoreEvent::Bfd {
                    neighbor: running.peer.address,
                    status,
                };
                // Never wait for a busy core (a full table arriving fills its inbox): the
                // packets must go on. A change it had no room for goes again next step.
                match self.core.try_send(event) {
                    Ok(()) => running.status = status,
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return, // the agent is stopping
                }
            }
        }
    }
}

fn log_transition(peer: &Peer, t: Transition) {
    let neighbor = peer.address;
    match t.to {
        State::Up => tracing::info!(%neighbor, from = %t.from, "BFD session up"),
        State::Down | State::AdminDown => tracing::warn!(
            %neighbor, from = %t.from, diagnostic = %t.diagnostic, "BFD session down"
        ),
        State::Init => tracing::info!(%neighbor, from = %t.from, "BFD session init"),
    }
}

fn status(peer: &Peer, session: &Session, changes: Changes) -> Status {
    Status {
        state: session.state(),
        remote_state: session.remote_state(),
        diagnostic: session.diagnostic(),
        multihop: peer.multihop,
        local_discriminator: session.local_discriminator(),
        remote_discriminator: session.remote_discriminator(),
        interval_us: micros(peer.timers.interval),
        multiplier: peer.timers.multiplier,
        transmit_interval_us: micros(session.transmit_interval()),
        detection_time_us: session.detection_time().map(micros),
        changed_at_unix_us: changes.last,
        down_at_unix_us: changes.down,
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, micros)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A session's own socket: connected to the neighbor's port, from a source port of the
/// range, sending with TTL 255.
fn sender(peer: &Peer) -> io::Result<std::net::UdpSocket> {
    let port = if peer.multihop {
        MULTIHOP_PORT
    } else {
        SINGLE_HOP_PORT
    };
    let unspecified = match peer.address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut last_error = None;
    // Random ports first, so that sessions of agents restarting quickly differ.
    for _ in 0..64 {
        let source = fastrand::u16(SOURCE_PORTS);
        match std::net::UdpSocket::bind(SocketAddr::new(unspecified, source)) {
            Ok(socket) => {
                match peer.address {
                    IpAddr::V4(_) => nix_socket::setsockopt(&socket, sockopt::Ipv4Ttl, &255)?,
                    IpAddr::V6(_) => nix_socket::setsockopt(&socket, sockopt::Ipv6Ttl, &255)?,
                }
                socket.connect(SocketAddr::new(peer.address, port))?;
                socket.set_nonblocking(true)?;
                return Ok(socket);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free source port")))
}

/// The next packet on `socket`; never, without one.
async fn receive(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<Received> {
    match socket {
        Some(socket) => super::udp::receive(socket, buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Each neighbor's BFD session, as the routing core last heard of it.
pub type Statuses = HashMap<IpAddr, Status>;

/// The packets BFD dropped so far, by reason.
pub type Drops = BTreeMap<Dropped, u64>;
