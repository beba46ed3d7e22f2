//! Link sensing between BGP neighbors: a light UDP echo every `interval` measures round-trip
//! time, jitter and loss, and declares a neighbor dead after `multiplier` intervals without a
//! reply, far sooner than a BGP hold timer (the role BFD plays for routers, RFC 5880/5882).
//!
//! ```text
//!   probe (20 bytes): "CPNP" | version 1 | kind (1 request, 2 reply) | reserved (2)
//!                     | sequence (4) | sender's timestamp, ns (8)
//! ```
//! A reply echoes the request's sequence and timestamp, so only the sender's clock matters.
//! Neighbors that never answer (a router without cpn: BIRD, FRR, GoBGP) are never declared
//! dead and their link is unknown, not 100 % lossy: like BFD, a link is watched only once it
//! has come up, and its loss counts only the probes sent from its first answer on.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::watch};

use crate::metrics::Measure;

const MAGIC: &[u8; 4] = b"CPNP";
const VERSION: u8 = 1;
const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const LEN: usize = 20;
/// Loss is the share of the last this many probes left unanswered.
const LOSS_WINDOW: usize = 50;

/// A probe on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub reply: bool,
    pub sequence: u32,
    pub sent_ns: u64,
}

impl Probe {
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0; LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = if self.reply { REPLY } else { REQUEST };
        out[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
        out
    }

    /// `None` for anything that is not a version-1 probe.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; LEN] = bytes.try_into().ok()?;
        if &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let reply = match bytes[5] {
            REQUEST => false,
            REPLY => true,
            _ => return None,
        };
        Some(Self {
            reply,
            sequence: u32::from_be_bytes(bytes[8..12].try_into().ok()?),
            sent_ns: u64::from_be_bytes(bytes[12..20].try_into().ok()?),
        })
    }
}

/// What the probes say about one neighbor: all unknown until it first answers (jitter until
/// it answered twice).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Smoothed round-trip time (RFC 6298 weights).
    pub rtt: Measure<Duration>,
    /// Mean deviation of successive round-trip times (RFC 3550 §6.4.1 style).
    pub jitter: Measure<Duration>,
    /// Share of recent probes without a reply, 0..=1.
    pub loss: Measure<f64>,
    /// Up while it answers; down after `multiplier` intervals of silence.
    pub alive: Measure<bool>,
}

impl LinkStats {
    /// One-way latency estimate for path metrics (AIGP), microseconds.
    pub fn one_way_us(&self) -> Measure<u64> {
        self.rtt
            .map(|rtt| u64::try_from(rtt.as_micros() / 2).unwrap_or(u64::MAX))
    }

    pub fn up(&self) -> bool {
        self.alive == Measure::Known(true)
    }
}

/// The probe state of one neighbor, driven with injected time.
#[derive(Debug)]
pub struct Link {
    interval: Duration,
    dead_after: Duration,
    next_sequence: u32,
    /// Sent and not yet answered or counted: (sequence, sent at).
    outstanding: VecDeque<(u32, Instant)>,
    /// Recent outcomes, true = answered.
    outcomes: VecDeque<bool>,
    last_reply: Option<Instant>,
    last_rtt: Option<Duration>,
    /// When the first probe that got an answer was sent: earlier ones measured nothing.
    first_answered: Option<Instant>,
    stats: LinkStats,
}

impl Link {
    pub fn new(interval: Duration, multiplier: u32) -> Self {
        Self {
            interval,
            dead_after: interval * multiplier,
            next_sequence: 0,
            outstanding: VecDeque::new(),
            outcomes: VecDeque::new(),
            last_reply: None,
            last_rtt: None,
            first_answered: None,
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The next request to send at `now`; `epoch` anchors the timestamps.
    pub fn request(&mut self, now: Instant, epoch: Instant) -> Probe {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.outstanding.push_back((sequence, now));
        Probe {
            reply: false,
            sequence,
            sent_ns: u64::try_from(now.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A reply arrived at `now`.
    pub fn reply(&mut self, probe: &Probe, now: Instant) {
        let Some(at) = self
            .outstanding
            .iter()
            .position(|(s, _)| *s == probe.sequence)
        else {
            return; // late (already counted lost) or not ours
        };
        let (_, sent) = self.outstanding.remove(at).expect("found above");
        let rtt = now.duration_since(sent);
        self.first_answered.get_or_insert(sent);
        self.record(true);
        self.stats.rtt = Measure::Known(match self.stats.rtt {
            Measure::Unknown => rtt,
            Measure::Known(smoothed) => (smoothed * 7 + rtt) / 8,
        });
        if let Some(previous) = self.last_rtt {
            let delta = rtt.abs_diff(previous);
            // RFC 3550 A.8 starts the estimator at 0 and lets it converge.
            let jitter = self.stats.jitter.known().unwrap_or(Duration::ZERO);
            self.stats.jitter = Measure::Known((jitter * 15 + delta) / 16);
        }
        self.last_rtt = Some(rtt);
        self.last_reply = Some(now);
        self.stats.alive = Measure::Known(true);
    }

    /// Ages probes out as lost and decides liveness at `now`; true when the link just died.
    pub fn poll(&mut self, now: Instant) -> bool {
        while let Some(&(_, sent)) = self.outstanding.front() {
            if now.duration_since(sent) < self.dead_after {
                break;
            }
            self.outstanding.pop_front();
            // Before its first answer a neighbor is not lossy, just unmeasured.
            if self.first_answered.is_some_and(|first| sent >= first) {
                self.record(false);
            }
        }
        let silent = self
            .last_reply
            .is_some_and(|at| now.duration_since(at) >= self.dead_after);
        if self.stats.up() && silent {
            self.stats.alive = Measure::Known(false);
            return true;
        }
        false
    }

    fn record(&mut self, answered: bool) {
        self.outcomes.push_back(answered);
        if self.outcomes.len() > LOSS_WINDOW {
            self.outcomes.pop_front();
        }
        let unanswered = self.outcomes.iter().filter(|a| !**a).count();
        #[expect(clippy::cast_precision_loss, reason = "at most LOSS_WINDOW")]
        let share = unanswered as f64 / self.outcomes.len() as f64;
        self.stats.loss = Measure::Known(share);
    }

    pub const fn interval(&self) -> Duration {
        self.interval
    }
}

/// Every neighbor's link statistics, for path metrics and operators: a snapshot the probe
/// task publishes on every probe interval.
pub type Links = watch::Receiver<HashMap<IpAddr, LinkStats>>;

/// Binds `port` and probes `neighbors` every `interval`; answers their probes too.
pub async fn spawn(
    port: u16,
    neighbors: &[IpAddr],
    interval: Duration,
    multiplier: u32,
) -> std::io::Result<(Links, tokio::task::JoinHandle<()>)> {
    let socket = UdpSocket::bind(SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        port,
    ))
    .await?;
    let (publish, links) = watch::channel(HashMap::new());
    let watched = neighbors
        .iter()
        .map(|&neighbor| (neighbor, Link::new(interval, multiplier)))
        .collect();
    let task = tokio::spawn(run(socket, port, watched, publish, interval));
    Ok((links, task))
}

async fn run(
    socket: UdpSocket,
    port: u16,
    mut watched: HashMap<IpAddr, Link>,
    links: watch::Sender<HashMap<IpAddr, LinkStats>>,
    interval: Duration,
) {
    let epoch = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                for (neighbor, link) in &mut watched {
                    if link.poll(now) {
                        tracing::info!(%neighbor, "link probe: neighbor stopped answering");
                    }
                    let probe = link.request(now, epoch);
                    // A send error (no route yet) is just a lost probe.
                    let _ = socket.send_to(&probe.encode(), SocketAddr::new(*neighbor, port)).await;
                }
                let stats = watched.iter().map(|(n, link)| (*n, link.stats())).collect();
                links.send_replace(stats);
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let from_ip = canonical(from.ip());
                let (Some(probe), Some(link)) =
                    (Probe::decode(&buf[..len]), watched.get_mut(&from_ip))
                else {
                    continue; // not a probe, or not from a neighbor: no answer, no reflection
                };
                if probe.reply {
                    let was_alive = link.stats().up();
                    link.reply(&probe, Instant::now());
                    if !was_alive {
                        tracing::info!(neighbor = %from_ip, "link probe: neighbor answering");
                    }
                } else {
                    let answer = Probe { reply: true, ..probe };
                    let _ = socket.send_to(&answer.encode(), from).await;
                }
            }
        }
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn probe_bytes_both_ways() {
        let probe = Probe {
            reply: true,
            sequence: 0x0102_0304,
            sent_ns: 0x1122_3344_5566_7788,
        };
        let bytes = probe.encode();
        assert_eq!(
            bytes,
            [
                b'C', b'P', b'N', b'P', 1, 2, 0, 0, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                0x77, 0x88
            ]
        );
        assert_eq!(Probe::decode(&bytes), Some(probe));
        assert_eq!(Probe::decode(&bytes[..19]), None, "truncated");
        let mut other = bytes;
        other[4] = 2;
        assert_eq!(Probe::decode(&other), None, "unknown version");
        other = bytes;
        other[5] = 3;
        assert_eq!(Probe::decode(&other), None, "unknown kind");
    }

    #[test]
    fn rtt_jitter_and_loss() {
        let t0 = Instant::now();
        let mut link = Link::new(100 * MS, 3);
        // Replies after 10 ms and 14 ms, then two probes unanswered.
        let p = link.request(t0, t0);
        link.reply(&Probe { reply: true, ..p }, t0 + 10 * MS);
        assert_eq!(
            link.stats().jitter,
            Measure::Unknown,
            "one answer: no jitter yet"
        );
        let p = link.request(t0 + 100 * MS, t0);
        link.reply(&Probe { reply: true, ..p }, t0 + 114 * MS);
        let stats = link.stats();
        assert!(stats.up());
        let rtt = (10 * MS * 7 + 14 * MS) / 8;
        assert_eq!(stats.rtt, Measure::Known(rtt));
        assert_eq!(stats.jitter, Measure::Known(4 * MS / 16));
        assert_eq!(
            stats.one_way_us(),
            Measure::Known(u64::try_from(rtt.as_micros() / 2).unwrap())
        );
        assert_eq!(stats.loss, Measure::Known(0.0));
        link.request(t0 + 200 * MS, t0);
        link.request(t0 + 300 * MS, t0);
        link.poll(t0 + 600 * MS);
        assert_eq!(link.stats().loss, Measure::Known(0.5));
    }

    /// A neighbor that never answers (BIRD, FRR, GoBGP) is unknown, not 100 % lossy; one that
    /// answered and then went silent is measured: lossy, then down.
    #[test]
    fn unknown_until_answered_then_measured_loss() {
        let t0 = Instant::now();
        let mut link = Link::new(100 * MS, 3);
        for i in 0..20 {
            link.request(t0 + i * 100 * MS, t0);
            link.poll(t0 + i * 100 * MS);
        }
        // 20 probes unanswered.
        let stats = link.stats();
        assert_eq!(
            (stats.rtt, stats.jitter, stats.loss, stats.alive),
            (
                Measure::Unknown,
                Measure::Unknown,
                Measure::Unknown,
                Measure::Unknown
            )
        );
        assert_eq!(stats.one_way_us(), Measure::Unknown);
        assert!(!stats.up());

        // It starts answering (an agent came up): the silence before measured nothing, even
        // for probes that age out after its first answer.
        let p = link.request(t0 + 2000 * MS, t0);
        link.reply(&Probe { reply: true, ..p }, t0 + 2001 * MS);
        link.poll(t0 + 2001 * MS);
        assert_eq!(link.stats().loss, Measure::Known(0.0));
        assert_eq!(link.stats().alive, Measure::Known(true));

        // Then silent: measured loss, and down.
        let mut died = false;
        for i in 21..25 {
            died |= link.poll(t0 + i * 100 * MS);
            link.request(t0 + i * 100 * MS, t0);
        }
        assert!(died);
        let stats = link.stats();
        assert_eq!(stats.alive, Measure::Known(false));
        assert!(
            stats.loss.known().is_some_and(|l| l > 0.0),
            "silence after answers is loss: {stats:?}"
        );
        assert!(stats.rtt.is_known(), "the last measured RTT stays");
    }

    #[test]
    fn dead_after_multiplier_intervals_of_silence_and_only_once_up() {
        let t0 = Instant::now();
        let mut link = Link::new(100 * MS, 3);
        // Never answered: never declared dead (a neighbor without cpn).
        for i in 0..10 {
            link.request(t0 + i * 100 * MS, t0);
            assert!(!link.poll(t0 + i * 100 * MS));
        }
        let p = link.request(t0 + MS * 1000, t0);
        link.reply(&Probe { reply: true, ..p }, t0 + MS * 1001);
        assert!(link.stats().up());
        assert!(!link.poll(t0 + MS * 1300), "299 ms of silence: still alive");
        assert!(link.poll(t0 + MS * 1301), "300 ms: dead");
        assert_eq!(link.stats().alive, Measure::Known(false));
        assert!(!link.poll(t0 + MS * 1500), "reported once");
        // A duplicate reply is ignored; a fresh one revives the link.
        link.reply(&Probe { reply: true, ..p }, t0 + MS * 1502);
        assert!(!link.stats().up());
        let p = link.request(t0 + MS * 1600, t0);
        link.reply(&Probe { reply: true, ..p }, t0 + MS * 1601);
        assert!(link.stats().up());
    }
}
