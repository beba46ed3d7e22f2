//! One STAMP Session-Sender (RFC 8762 §4.2) towards one candidate, without I/O: it numbers the
//! test packets, matches the reflected ones, and keeps what they measured.
//!
//! Until the first reflected packet, nothing is known: a node that never answers (no reflector
//! there) has an unknown path, never a 100 % lossy one. From then on, a test packet with no
//! answer within the timeout is lost.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::packet::{ERROR_ESTIMATE, Reflected, Test, Timestamp};
use crate::metrics::Measure;

/// Loss is the share of the last this many test packets left unanswered.
pub const LOSS_WINDOW: usize = 100;
/// The Hop Limit the inner packet starts with (encap.rs).
const INNER_HOP_LIMIT: u8 = 64;

/// What a candidate's test packets measured; all unknown until one came back (jitter until
/// two did).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathStats {
    /// Round trip less the reflector's time, smoothed (RFC 6298 weights).
    pub rtt: Measure<Duration>,
    /// One way: half the round trip (the two ends' clocks need not agree).
    pub delay: Measure<Duration>,
    /// Mean deviation of successive round trips (RFC 3550 §6.4.1 style).
    pub jitter: Measure<Duration>,
    /// Share of recent test packets without an answer, 0..=1.
    pub loss: Measure<f64>,
    /// Routers the test packet crossed after its decapsulation, from the Hop Limit the
    /// reflector saw.
    pub inner_hops: Measure<u8>,
    pub sent: u64,
    pub received: u64,
}

/// One sender's state, driven with injected time.
#[derive(Debug)]
pub struct Session {
    timeout: Duration,
    next_sequence: u32,
    /// The test packets sent since the first answer (and any still outstanding), in the order
    /// they went: loss counts over the last `LOSS_WINDOW` sent a timeout ago or more, whose
    /// fate is known.
    history: VecDeque<Sent>,
    /// When the first packet that got an answer was sent: earlier ones measured nothing.
    first_answered: Option<Instant>,
    last_rtt: Option<Duration>,
    stats: PathStats,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    sequence: u32,
    at: Instant,
    answered: bool,
}

impl Session {
    /// A reply later than `timeout` counts as lost.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            next_sequence: 0,
            history: VecDeque::new(),
            first_answered: None,
            last_rtt: None,
            stats: PathStats::default(),
        }
    }

    pub const fn stats(&self) -> PathStats {
        self.stats
    }

    /// The next test packet, sent at `now` (`wall`: the same moment on the clock that goes
    /// into the packet).
    pub fn test(&mut self, now: Instant, wall: Timestamp) -> Test {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.history.push_back(Sent {
            sequence,
            at: now,
            answered: false,
        });
        self.stats.sent += 1;
        Test {
            sequence,
            timestamp: wall,
            error_estimate: ERROR_ESTIMATE,
        }
    }

    /// A reflected packet that arrived at `now` (`arrived`: on the clock the test packets
    /// carry); false if it answers nothing outstanding (late, duplicated, or not ours).
    pub fn reflected(&mut self, reply: &Reflected, now: Instant, arrived: Timestamp) -> bool {
        let timeout = self.timeout;
        let Some(sent) = self.history.iter_mut().find(|s| {
            s.sequence == reply.sender.sequence && !s.answered && now.duration_since(s.at) < timeout
        }) else {
            return false;
        };
        sent.answered = true;
        let at = sent.at;
        self.first_answered.get_or_insert(at);
        self.stats.received += 1;
        let rtt = reply.round_trip(arrived);
        let smoothed = match self.stats.rtt {
            Measure::Unknown => rtt,
            Measure::Known(s) => (s * 7 + rtt) / 8,
        };
        self.stats.rtt = Measure::Known(smoothed);
        self.stats.delay = Measure::Known(smoothed / 2);
        if let Some(previous) = self.last_rtt {
            // RFC 3550 A.8 starts the estimator at 0 and lets it converge.
            let jitter = self.stats.jitter.known().unwrap_or(Duration::ZERO);
            self.stats.jitter = Measure::Known((jitter * 15 + rtt.abs_diff(previous)) / 16);
        }
        self.last_rtt = Some(rtt);
        self.stats.inner_hops = Measure::Known(INNER_HOP_LIMIT.saturating_sub(reply.sender_ttl));
        self.expire(now);
        true
    }

    /// Settles what the timeout decided by `now`, and the loss over the window.
    pub fn expire(&mut self, now: Instant) {
        let Some(first) = self.first_answered else {
            // Nothing answered yet: nothing is lost, only unmeasured.
            let timeout = self.timeout;
            self.history.retain(|s| now.duration_since(s.at) < timeout);
            return;
        };
        self.history.retain(|s| s.at >= first);
        // Only packets past the timeout count, answered or not: counting the answered ones
        // sooner would leave out the recent losses, not known yet.
        let settled = |s: &Sent| now.duration_since(s.at) >= self.timeout;
        let settled_count = self.history.iter().filter(|s| settled(s)).count();
        // Keep the window's worth of settled packets and whatever is still outstanding.
        let mut surplus = settled_count.saturating_sub(LOSS_WINDOW);
        while surplus > 0 && self.history.front().is_some_and(&settled) {
            self.history.pop_front();
            surplus -= 1;
        }
        let (lost, counted) = self
            .history
            .iter()
            .filter(|s| settled(s))
            .fold((0usize, 0usize), |(l, c), s| {
                (l + usize::from(!s.answered), c + 1)
            });
        if counted > 0 {
            #[expect(clippy::cast_precision_loss, reason = "at most LOSS_WINDOW")]
            let share = lost as f64 / counted as f64;
            self.stats.loss = Measure::Known(share);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The reflector's answer to `test`, received `there` after it was sent and held `held`.
    fn reflect(test: &Test, there: Duration, held: Duration, ttl: u8) -> Reflected {
        let t1 = test.timestamp;
        let t2 = Timestamp(t1.0 + ticks(there));
        Reflected {
            sequence: test.sequence,
            timestamp: Timestamp(t2.0 + ticks(held)),
            error_estimate: ERROR_ESTIMATE,
            receive_timestamp: t2,
            sender: *test,
            sender_ttl: ttl,
        }
    }

    fn ticks(d: Duration) -> u64 {
        u64::try_from((d.as_nanos() << 32) / 1_000_000_000).unwrap()
    }

    fn wall(t0: SystemTime, at: Duration) -> Timestamp {
        Timestamp::from_system(t0 + at)
    }

    #[test]
    fn round_trip_delay_jitter_and_hops() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut s = Session::new(1000 * MS);
        let test = s.test(t0, wall(w0, Duration::ZERO));
        // 20 ms there, held 3 ms, 20 ms back: 40 ms of path.
        let reply = reflect(&test, 20 * MS, 3 * MS, 62);
        assert!(s.reflected(&reply, t0 + 43 * MS, wall(w0, 43 * MS)));
        let stats = s.stats();
        let near = |m: Measure<Duration>, want: Duration| {
            m.known()
                .is_some_and(|d| d.abs_diff(want) < Duration::from_micros(1))
        };
        assert!(near(stats.rtt, 40 * MS), "{stats:?}");
        assert!(near(stats.delay, 20 * MS), "{stats:?}");
        assert_eq!(stats.jitter, Measure::Unknown, "one answer: no jitter yet");
        assert_eq!(stats.inner_hops, Measure::Known(2));
        assert_eq!(
            stats.loss,
            Measure::Unknown,
            "loss counts packets a timeout old"
        );
        assert!(
            !s.reflected(&reply, t0 + 44 * MS, wall(w0, 44 * MS)),
            "a duplicate answers nothing"
        );
        let test = s.test(t0 + 100 * MS, wall(w0, 100 * MS));
        let reply = reflect(&test, 24 * MS, Duration::ZERO, 62);
        assert!(s.reflected(&reply, t0 + 148 * MS, wall(w0, 148 * MS)));
        let stats = s.stats();
        assert!(near(stats.jitter, 8 * MS / 16), "{stats:?}");
        assert!(near(stats.rtt, (40 * MS * 7 + 48 * MS) / 8), "{stats:?}");
        assert_eq!((stats.sent, stats.received), (2, 2));
        s.expire(t0 + 1100 * MS);
        assert_eq!(s.stats().loss, Measure::Known(0.0), "both answered");
    }

    /// No reflector answering: unknown, however many packets go out; after a first answer,
    /// a test packet unanswered for the timeout is lost, and loss counts over the window.
    #[test]
    fn unknown_until_answered_then_loss_over_the_window() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut s = Session::new(1000 * MS);
        for i in 0..50 {
            s.test(t0 + i * 10 * MS, wall(w0, i * 10 * MS));
            s.expire(t0 + i * 10 * MS);
        }
        s.expire(t0 + 5000 * MS);
        let stats = s.stats();
        assert_eq!(
            (stats.rtt, stats.delay, stats.loss, stats.jitter),
            (
                Measure::Unknown,
                Measure::Unknown,
                Measure::Unknown,
                Measure::Unknown
            )
        );
        assert_eq!(stats.sent, 50);

        // Every 10th test packet lost from then on.
        let start = 6000u32;
        for i in 0..300u32 {
            let at = Duration::from_millis(u64::from(start + i * 10));
            let test = s.test(t0 + at, wall(w0, at));
            if i % 10 != 9 {
                let reply = reflect(&test, 5 * MS, Duration::ZERO, 63);
                s.reflected(&reply, t0 + at + 10 * MS, wall(w0, at + 10 * MS));
            }
            s.expire(t0 + at);
        }
        s.expire(t0 + Duration::from_millis(u64::from(start + 300 * 10 + 1000)));
        let loss = s.stats().loss.known().unwrap();
        assert!((loss - 0.1).abs() < 0.011, "every 10th lost: {loss}");
    }
}
