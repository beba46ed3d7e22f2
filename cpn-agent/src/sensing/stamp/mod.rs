//! STAMP (RFC 8762) along the steered paths: an ingress measures each candidate's delay,
//! jitter and loss with test packets inside the candidate's own SRv6 encapsulation
//! (encap.rs), addressed to the service's anycast address, so that only the candidate's node
//! takes them in; the compute agent reflects them (stateless, §4.3.1).
//!
//! ```text
//!   steering ── Targets (watch) ──▶ sender: one task per candidate ──▶ raw socket, H.Encaps
//!                                     ▲ reflected packets, on its own UDP port
//!   routing core ◀── Paths (watch) ───┘
//!
//!   reflector (compute nodes): UDP 862 ──▶ the reflected packet, straight back
//! ```
//!
//! The kernel stamps when a packet arrives (`SO_TIMESTAMPNS`), at both ends, so that a busy
//! agent does not stretch the round trip it reports.

pub mod encap;
pub mod packet;
pub mod session;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use nix::sys::socket::{self as nix_socket, MsgFlags, SockaddrIn6};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
};

use self::{
    packet::{ERROR_ESTIMATE, LEN, Reflected, Test, Timestamp},
    session::{PathStats, Session},
};
use super::udp;
use crate::dataplane::Node;

/// What an ingress measures: per candidate node (by name), its encapsulation and the service
/// address its test packets go to.
pub type Targets = BTreeMap<String, Target>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: Node,
    /// One of the node's IPv6 services: after decapsulation only the node itself takes it in.
    pub address: Ipv6Addr,
}

/// What the test packets measured, by candidate node.
pub type Paths = HashMap<String, PathStats>;

/// How often, how patient, and to which port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub port: u16,
}

/// Reflects every test packet that reaches `port` on this node.
pub fn spawn_reflector(port: u16) -> io::Result<tokio::task::JoinHandle<()>> {
    let socket = UdpSocket::from_std(udp::listen(port, true)?)?;
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok(received) = udp::receive(&socket, &mut buf).await else {
                continue;
            };
            let Ok(test) = Test::decode(&buf[..received.len]) else {
                continue; // not a STAMP test packet: nothing to reflect
            };
            let arrived = received.at.unwrap_or_else(SystemTime::now);
            let reflected = Reflected {
                sequence: test.sequence,
                timestamp: Timestamp::now(),
                error_estimate: ERROR_ESTIMATE,
                receive_timestamp: Timestamp::from_system(arrived),
                sender: test,
                sender_ttl: received.ttl.unwrap_or(255),
            };
            // As long as the test packet (RFC 8762 §4.3: symmetrical size).
            let mut reply = reflected.encode().to_vec();
            reply.resize(received.len.max(LEN), 0);
            let _ = socket.send_to(&reply, received.from).await;
        }
    }))
}

/// Measures every target `targets` names, from `source` (an address of this node that the
/// nodes can answer); publishes what it measured.
pub fn spawn_sender(
    settings: Settings,
    source: Ipv6Addr,
    mut targets: watch::Receiver<Targets>,
) -> io::Result<(watch::Receiver<Paths>, tokio::task::JoinHandle<()>)> {
    let raw = raw_socket()?;
    let (publish, paths) = watch::channel(Paths::new());
    let task = tokio::spawn(async move {
        let raw = std::sync::Arc::new(raw);
        let (measured, mut results) = mpsc::channel::<(String, PathStats)>(256);
        let mut running: HashMap<String, (Target, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut current = Paths::new();
        let mut publish_at = tokio::time::Instant::now();
        let mut dirty = false;
        loop {
            tokio::select! {
                changed = targets.changed() => {
                    if changed.is_err() {
                        break; // steering is gone
                    }
                    let wanted = targets.borrow_and_update().clone();
                    running.retain(|name, (target, task)| {
                        let keep = wanted.get(name) == Some(target);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    current.retain(|name, _| running.contains_key(name));
                    for (name, target) in wanted {
                        if running.contains_key(&name) {
                            continue;
                        }
                        match spawn_session(settings, source, &name, &target, raw.clone(), measured.clone()) {
                            Ok(task) => {
                                running.insert(name, (target, task));
                            }
                            Err(error) => tracing::warn!(node = %name, %error, "STAMP: no session"),
                        }
                    }
                    dirty = true;
                }
                Some((name, stats)) = results.recv() => {
                    if running.contains_key(&name) {
                        current.insert(name, stats);
                        dirty = true;
                    }
                }
                () = tokio::time::sleep_until(publish_at), if dirty => {}
            }
            // At most one table per interval: measurements are not news by themselves.
            let now = tokio::time::Instant::now();
            if dirty && now >= publish_at {
                publish.send_replace(current.clone());
                dirty = false;
                publish_at = now + settings.interval;
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
    });
    Ok((paths, task))
}

/// One candidate's Session-Sender: a test packet every interval, its answers on its own port.
fn spawn_session(
    settings: Settings,
    source: Ipv6Addr,
    name: &str,
    target: &Target,
    raw: std::sync::Arc<OwnedFd>,
    measured: mpsc::Sender<(String, PathStats)>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let replies = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V6(source), 0))?;
    nix_socket::setsockopt(&replies, nix_socket::sockopt::ReceiveTimestampns, &true)?;
    replies.set_nonblocking(true)?;
    let port = replies.local_addr()?.port();
    let replies = UdpSocket::from_std(replies)?;
    let inner = encap::Inner {
        source,
        source_port: port,
        target: target.address,
        port: settings.port,
    };
    let (name, node) = (name.to_owned(), target.node.clone());
    let first_segment = SockaddrIn6::from(SocketAddrV6::new(node.segments[0], 0, 0, 0));
    // One flow label per session: its packets keep to one ECMP path.
    let flow_label = u32::from(port);
    Ok(tokio::spawn(async move {
        let mut session = Session::new(settings.timeout);
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    session.expire(now);
                    let test = session.test(now, Timestamp::now());
                    let bytes = encap::packet(&node, &inner, &test.encode(), flow_label);
                    // A send error (no route yet) is a lost test packet, counted as such.
                    let _ = nix_socket::sendto(raw.as_raw_fd(), &bytes, &first_segment, MsgFlags::empty());
                }
                received = udp::receive(&replies, &mut buf) => {
                    let Ok(received) = received else { continue };
                    let Ok(reply) = Reflected::decode(&buf[..received.len]) else { continue };
                    let arrived = Timestamp::from_system(received.at.unwrap_or_else(SystemTime::now));
                    if !session.reflected(&reply, Instant::now(), arrived) {
                        continue;
                    }
                }
            }
            if measured
                .send((name.clone(), session.stats()))
                .await
                .is_err()
            {
                return;
            }
        }
    }))
}

/// A raw IPv6 socket whose packets carry their own IPv6 header (`IPPROTO_RAW` implies
/// `IPV6_HDRINCL`), nonblocking: a full buffer loses the test packet, it does not wait.
fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
