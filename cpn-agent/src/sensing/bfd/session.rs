//! One BFD session in Asynchronous mode (RFC 5880 §6.8), without I/O: the caller passes the
//! time in, hands it the packets that came for it, and sends the ones it asks for.
//!
//! ```text
//!            Down/AdminDown ┌──────┐ Init/Up
//!          ┌───────────────▶│ Down │─────────────┐
//!          │                └──────┘ Down        │
//!          │                    │                ▼
//!   ┌──────┴─┐   Init/Up     ┌──┴───┐   Up   ┌──────┐
//!   │  Up    │◀──────────────│ Init │  ◀──── │      │   (received state on the arrows;
//!   └────────┘               └──────┘        └──────┘    detection time: Up/Init → Down)
//! ```
//!
//! While it is not Up, a session sends at most once a second (§6.8.3); once Up it moves to
//! the configured interval with a Poll Sequence, as it does for any change of its intervals.
//! No authentication, no Demand mode of its own, no Echo function: the agent runs none of them.

use std::time::{Duration, Instant};

use super::packet::{Control, Diagnostic, State};

/// The slowest a session transmits while it is not Up (§6.8.3: at least one second).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// What the operator configured for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Desired Min TX and Required Min RX once Up.
    pub interval: Duration,
    /// Detect Mult: how many intervals of silence make the remote dead.
    pub multiplier: u8,
}

/// A change of the session's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Why, when it went down (§4.1 codes).
    pub diagnostic: Diagnostic,
    /// The remote's state in the packet that caused it (`AdminDown` is not a failure, RFC 5882
    /// §3.2); `None` when the detection time expired.
    pub remote: Option<State>,
}

/// A received packet the session discards (§6.8.6, the rules that need a session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("authenticated, and this session runs no authentication")]
    Authenticated,
    #[error("Your Discriminator {0:#x} is not this session's")]
    NotOurs(u32),
}

/// The intervals in force, what the remote last said, and the timers.
#[derive(Clone, Debug)]
pub struct Session {
    timers: Timers,
    state: State,
    remote_state: State,
    local_discriminator: u32,
    remote_discriminator: u32,
    diagnostic: Diagnostic,
    /// bfd.DesiredMinTxInterval: what we advertise.
    desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval.
    required_min_rx: Duration,
    /// The Desired Min TX that paces our packets; it lags an increase of `desired_min_tx`
    /// until the Poll Sequence ends (§6.8.3).
    pacing_tx: Duration,
    /// bfd.RemoteMinRxInterval (1 µs until the remote says, §6.8.1).
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// bfd.RemoteDemandMode.
    remote_demand: bool,
    /// A Poll Sequence is under way: our packets carry P until a Final comes back.
    polling: bool,
    /// A Poll came in at this time: a Final goes out now, whatever the pacing (§6.8.7).
    final_due: Option<Instant>,
    last_sent: Option<Instant>,
    /// This interval's share of the full one, 0.75..=1 (§6.8.7 jitter), drawn per packet.
    jitter: f64,
    next_send: Instant,
    /// When the remote is dead unless a packet comes: unset until the first one has.
    detect_at: Option<Instant>,
}

impl Session {
    /// A session in Down, sending from `now` on; `local_discriminator` is nonzero and unique
    /// on this system (§6.8.1).
    pub fn new(local_discriminator: u32, timers: Timers, now: Instant) -> Self {
        debug_assert_ne!(local_discriminator, 0);
        Self {
            timers,
            state: State::Down,
            remote_state: State::Down,
            local_discriminator,
            remote_discriminator: 0,
            diagnostic: Diagnostic::None,
            desired_min_tx: SLOW_TX.max(timers.interval),
            required_min_rx: timers.interval,
            pacing_tx: SLOW_TX.max(timers.interval),
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            remote_demand: false,
            polling: false,
            final_due: None,
            last_sent: None,
            jitter: 1.0,
            next_send: now,
            detect_at: None,
        }
    }

    pub const fn state(&self) -> State {
        self.state
    }

    pub const fn remote_state(&self) -> State {
        self.remote_state
    }

    pub const fn diagnostic(&self) -> Diagnostic {
        self.diagnostic
    }

    pub const fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    pub const fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }

    /// The interval between our packets, before jitter (§6.8.2): the slower of what we want
    /// and what the remote can take.
    pub fn transmit_interval(&self) -> Duration {
        self.pacing_tx.max(self.remote_min_rx)
    }

    /// How long the remote may stay silent (§6.8.4): its Detect Mult times the slower of
    /// what we can take and what it sends at. `None` before it has said anything.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult > 0).then(|| {
            self.required_min_rx.max(self.remote_desired_min_tx)
                * u32::from(self.remote_detect_mult)
        })
    }

    /// When the session next needs the caller: a packet to send, or the detection time.
    /// `None` while it has nothing to send and nothing to detect.
    pub fn wake_at(&self) -> Option<Instant> {
        let periodic = self.periodic_allowed().then_some(self.next_send);
        [periodic, self.final_due, self.detect_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// A packet that came for this session at `now`, checked by §6.8.6.
    pub fn receive(
        &mut self,
        packet: &Control,
        now: Instant,
    ) -> Result<Option<Transition>, Ignored> {
        if packet.authentication.is_some() {
            return Err(Ignored::Authenticated);
        }
        if packet.your_discriminator != 0 && packet.your_discriminator != self.local_discriminator {
            return Err(Ignored::NotOurs(packet.your_discriminator));
        }
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_demand = packet.demand;
        self.remote_detect_mult = packet.detect_mult;
        self.remote_desired_min_tx = Duration::from_micros(packet.desired_min_tx_us.into());
        self.remote_min_rx = Duration::from_micros(packet.required_min_rx_us.into());
        if packet.final_ && self.polling {
            self.polling = false;
            // The remote has seen our new intervals: an increase paces us from now on.
            self.pacing_tx = self.desired_min_tx;
        }
        if packet.poll {
            self.final_due = Some(now);
        }
        self.reschedule();
        self.detect_at = self.detection_time().map(|d| now + d);

        let from = self.state;
        let to = match (self.state, packet.state) {
            (State::AdminDown, _) => return Ok(None),
            (State::Down, State::AdminDown) => State::Down,
            (State::Down, State::Down) => State::Init,
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => State::Up,
            (_, State::AdminDown) | (State::Up, State::Down) => {
                self.diagnostic = Diagnostic::NeighborSignaledDown;
                State::Down
            }
            (state, _) => state,
        };
        Ok(self.enter(from, to, Some(packet.state)))
    }

    /// The detection time, checked at `now` (§6.8.4): a session that heard nothing for that
    /// long goes Down.
    pub fn expire(&mut self, now: Instant) -> Option<Transition> {
        let expired = self.detect_at.is_some_and(|at| now >= at);
        if !expired {
            return None;
        }
        self.detect_at = None;
        // §6.8.1: the remote's discriminator is forgotten after a detection time of silence.
        self.remote_discriminator = 0;
        self.remote_state = State::Down;
        let from = self.state;
        if matches!(from, State::Init | State::Up) {
            self.diagnostic = Diagnostic::DetectionTimeExpired;
            self.enter(from, State::Down, None)
        } else {
            None
        }
    }

    /// The packet to send at `now`, if one is due; `random` in 0..1 draws the next interval's
    /// jitter (§6.8.7: 75–100 % of the interval, 75–90 % with a Detect Mult of 1).
    pub fn transmit(&mut self, now: Instant, random: f64) -> Option<Control> {
        let periodic = now >= self.next_send && self.periodic_allowed();
        if !(self.final_due.is_some() || periodic) {
            return None;
        }
        let final_ = self.final_due.take().is_some();
        let packet = Control {
            diagnostic: self.diagnostic,
            state: self.state,
            // P and F never together; the next periodic packet carries the Poll.
            poll: self.polling && !final_,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.timers.multiplier,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx_us: micros(self.desired_min_tx),
            required_min_rx_us: micros(self.required_min_rx),
            required_min_echo_rx_us: 0,
            authentication: None,
        };
        if periodic {
            let spread = if self.timers.multiplier == 1 {
                0.15
            } else {
                0.25
            };
            self.jitter = 1.0 - spread * random.clamp(0.0, 1.0);
            self.last_sent = Some(now);
            self.reschedule();
        }
        Some(packet)
    }

    /// §6.8.7: no periodic packets while the remote says it cannot receive them (Required
    /// Min RX 0), nor once both ends are Up and the remote asked for Demand mode. A Final
    /// goes out whatever.
    fn periodic_allowed(&self) -> bool {
        let demand =
            self.remote_demand && self.state == State::Up && self.remote_state == State::Up;
        !self.remote_min_rx.is_zero() && !demand
    }

    fn enter(&mut self, from: State, to: State, remote: Option<State>) -> Option<Transition> {
        if from == to {
            return None;
        }
        self.state = to;
        if to == State::Up {
            self.diagnostic = Diagnostic::None;
        }
        // §6.8.3: at least a second apart while not Up; the configured interval once Up.
        let desired = if to == State::Up {
            self.timers.interval
        } else {
            SLOW_TX.max(self.timers.interval)
        };
        if desired != self.desired_min_tx {
            let slower = desired > self.desired_min_tx;
            self.desired_min_tx = desired;
            // An increase while Up waits for the remote's Final; any other change paces us
            // at once (faster is always safe for the remote's detection time).
            if !(slower && to == State::Up) {
                self.pacing_tx = desired;
            }
            self.polling = to == State::Up;
        }
        if to != State::Up {
            self.polling = false;
        }
        // The packet already due still goes at its time: it tells the remote at once, where
        // a slower rate would leave it to its detection time.
        let due = self.next_send;
        self.reschedule();
        self.next_send = self.next_send.min(due);
        Some(Transition {
            from,
            to,
            diagnostic: self.diagnostic,
            remote,
        })
    }

    /// The next periodic packet: one (jittered) interval after the last, whatever the interval
    /// is now.
    fn reschedule(&mut self) {
        if let Some(last) = self.last_sent {
            self.next_send = last + self.transmit_interval().mul_f64(self.jitter);
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const FAST: Timers = Timers {
        interval: Duration::from_millis(10),
        multiplier: 3,
    };

    /// Two sessions on a lossless wire, stepped 1 ms at a time; packets arrive in the same
    /// step. Returns the transitions each saw, with when.
    struct Wire {
        a: Session,
        b: Session,
        now: Instant,
        a_to_b: bool,
        b_to_a: bool,
        seen: Vec<(char, Transition, Instant)>,
        sent_by_a: Vec<(Instant, Control)>,
    }

    impl Wire {
        fn new(a: Timers, b: Timers) -> Self {
            let now = Instant::now();
            Self {
                a: Session::new(0xa, a, now),
                b: Session::new(0xb, b, now),
                now,
                a_to_b: true,
                b_to_a: true,
                seen: Vec::new(),
                sent_by_a: Vec::new(),
            }
        }

        fn step(&mut self) {
            let now = self.now;
            for (name, t) in [('a', self.a.expire(now)), ('b', self.b.expire(now))] {
                if let Some(t) = t {
                    self.seen.push((name, t, now));
                }
            }
            if let Some(p) = self.a.transmit(now, 0.5) {
                self.sent_by_a.push((now, p.clone()));
                if self.a_to_b
                    && let Some(t) = self.b.receive(&p, now).unwrap()
                {
                    self.seen.push(('b', t, now));
                }
            }
            if let Some(p) = self.b.transmit(now, 0.5)
                && self.b_to_a
                && let Some(t) = self.a.receive(&p, now).unwrap()
            {
                self.seen.push(('a', t, now));
            }
            self.now += MS;
        }

        fn run_for(&mut self, d: Duration) {
            let until = self.now + d;
            while self.now < until {
                self.step();
            }
        }
    }

    #[test]
    fn two_sessions_come_up_then_poll_to_the_fast_interval() {
        let mut wire = Wire::new(FAST, FAST);
        // Slow while not Up (§6.8.3): the three-way handshake takes a few 750 ms intervals.
        assert_eq!(wire.a.transmit_interval(), SLOW_TX);
        wire.run_for(4000 * MS);
        assert_eq!((wire.a.state(), wire.b.state()), (State::Up, State::Up));
        let states: Vec<_> = wire
            .seen
            .iter()
            .map(|(n, t, _)| (*n, t.from, t.to))
            .collect();
        assert!(
            states.contains(&('a', State::Down, State::Init))
                || states.contains(&('b', State::Down, State::Init)),
            "one side passes Init: {states:?}"
        );
        assert!(
            states.contains(&('a', State::Init, State::Up))
                || states.contains(&('a', State::Down, State::Up))
        );
        assert_eq!(wire.a.remote_discriminator(), 0xb);
        assert_eq!(wire.b.remote_discriminator(), 0xa);
        // The Poll Sequence ran and ended: 10 ms now, detection 3 × 10 ms.
        assert!(
            wire.sent_by_a.iter().any(|(_, p)| p.poll),
            "a polled for its new interval"
        );
        assert!(
            !wire.a.polling && !wire.b.polling,
            "both polls were answered"
        );
        assert_eq!(wire.a.transmit_interval(), 10 * MS);
        assert_eq!(wire.a.detection_time(), Some(30 * MS));
        // Packets never carry P and F together, and a Final answers a Poll at once.
        assert!(wire.sent_by_a.iter().all(|(_, p)| !(p.poll && p.final_)));
        // Up, the gaps between a's periodic packets are 75–100 % of 10 ms (0.5 draws 87.5 %).
        let periodic: Vec<Instant> = wire
            .sent_by_a
            .iter()
            .filter(|(_, p)| !p.final_ && p.state == State::Up && !p.poll)
            .map(|(at, _)| *at)
            .collect();
        let gaps: Vec<Duration> = periodic.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() > 100, "{} packets", periodic.len());
        assert!(
            gaps.iter().all(|g| *g >= 8 * MS && *g <= 10 * MS),
            "{gaps:?}"
        );
    }

    #[test]
    fn silence_for_the_detection_time_takes_it_down() {
        let mut wire = Wire::new(FAST, FAST);
        wire.run_for(4000 * MS);
        assert_eq!(wire.a.state(), State::Up);
        wire.seen.clear();
        // b's packets stop reaching a (a link cut in one direction).
        wire.b_to_a = false;
        let cut = wire.now;
        wire.run_for(100 * MS);
        let (_, down, at) = wire
            .seen
            .iter()
            .find(|(n, _, _)| *n == 'a')
            .copied()
            .unwrap();
        assert_eq!(
            (down.from, down.to, down.diagnostic, down.remote),
            (
                State::Up,
                State::Down,
                Diagnostic::DetectionTimeExpired,
                None
            )
        );
        assert!(at - cut <= 30 * MS, "within 3 intervals: {:?}", at - cut);
        assert_eq!(wire.a.remote_discriminator(), 0, "§6.8.1: forgotten");
        // a says Down; b hears it and goes down too (diagnostic 3), not waiting for its timer.
        let (_, b_down, _) = wire
            .seen
            .iter()
            .find(|(n, _, _)| *n == 'b')
            .copied()
            .unwrap();
        assert_eq!(
            (b_down.to, b_down.diagnostic, b_down.remote),
            (
                State::Down,
                Diagnostic::NeighborSignaledDown,
                Some(State::Down)
            )
        );
        // Back to the slow rate while down.
        assert_eq!(wire.a.transmit_interval(), SLOW_TX);
        // The link heals: up again.
        wire.b_to_a = true;
        wire.run_for(4000 * MS);
        assert_eq!((wire.a.state(), wire.b.state()), (State::Up, State::Up));
        assert_eq!(wire.a.diagnostic(), Diagnostic::None);
    }

    #[test]
    fn admin_down_from_the_remote_is_a_signal_not_a_failure() {
        let mut wire = Wire::new(FAST, FAST);
        wire.run_for(4000 * MS);
        let mut admin = wire.b.transmit(wire.now + 20 * MS, 0.0).unwrap();
        admin.state = State::AdminDown;
        admin.diagnostic = Diagnostic::AdminDown;
        let t = wire.a.receive(&admin, wire.now).unwrap().unwrap();
        assert_eq!(
            (t.from, t.to, t.diagnostic, t.remote),
            (
                State::Up,
                State::Down,
                Diagnostic::NeighborSignaledDown,
                Some(State::AdminDown)
            )
        );
        // Still AdminDown: a stays Down (no Init).
        assert_eq!(wire.a.receive(&admin, wire.now + MS), Ok(None));
        assert_eq!(wire.a.state(), State::Down);
    }

    #[test]
    fn the_state_table_of_6_8_6() {
        use State::{AdminDown, Down, Init, Up};
        let now = Instant::now();
        let remote = |state: State| Control {
            diagnostic: Diagnostic::None,
            state,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0xb,
            your_discriminator: if state == State::Down { 0 } else { 0xa },
            desired_min_tx_us: 1_000_000,
            required_min_rx_us: 10_000,
            required_min_echo_rx_us: 0,
            authentication: None,
        };
        let after = |states: &[State]| {
            let mut s = Session::new(0xa, FAST, now);
            for state in states {
                s.receive(&remote(*state), now).unwrap();
            }
            s.state()
        };
        assert_eq!(after(&[Down]), Init);
        assert_eq!(after(&[Init]), Up);
        assert_eq!(
            after(&[Up]),
            Down,
            "Up is not heard in Down: the remote must see us first"
        );
        assert_eq!(after(&[AdminDown]), Down);
        assert_eq!(after(&[Down, Up]), Up);
        assert_eq!(after(&[Down, Init]), Up);
        assert_eq!(after(&[Down, Down]), Init);
        assert_eq!(after(&[Init, Init]), Up);
        assert_eq!(after(&[Init, Down]), Down);
        // The remote's intervals are taken from every packet.
        let mut s = Session::new(0xa, FAST, now);
        s.receive(&remote(Down), now).unwrap();
        assert_eq!(
            s.detection_time(),
            Some(3 * SLOW_TX),
            "3 × its 1 s Desired Min TX"
        );
        assert_eq!(s.transmit_interval(), SLOW_TX, "not Up: slow");
    }

    #[test]
    fn packets_for_another_session_or_authenticated_are_ignored() {
        let now = Instant::now();
        let mut s = Session::new(0xa, FAST, now);
        let mut p = Session::new(0xb, FAST, now).transmit(now, 0.0).unwrap();
        p.your_discriminator = 0x1234;
        assert_eq!(s.receive(&p, now), Err(Ignored::NotOurs(0x1234)));
        p.your_discriminator = 0;
        p.authentication = Some(super::super::packet::Authentication {
            kind: 1,
            data: vec![1, b'k'],
        });
        assert_eq!(s.receive(&p, now), Err(Ignored::Authenticated));
        assert_eq!(
            s.remote_discriminator(),
            0,
            "an ignored packet changes nothing"
        );
    }

    #[test]
    fn a_poll_is_answered_at_once_and_jitter_stays_in_its_range() {
        let now = Instant::now();
        let mut s = Session::new(0xa, FAST, now);
        // First packet right away.
        let first = s.transmit(now, 1.0).unwrap();
        assert_eq!(first.your_discriminator, 0);
        assert!(s.transmit(now + MS, 0.0).is_none(), "paced");
        // Drawn 1.0: the next is 75 % of the slow second later.
        assert_eq!(s.wake_at(), Some(now + 750 * MS));
        let mut poll = Session::new(0xb, FAST, now).transmit(now, 0.0).unwrap();
        poll.poll = true;
        s.receive(&poll, now + 2 * MS).unwrap();
        assert_eq!(s.wake_at(), Some(now + 2 * MS), "a Final is due now");
        let answer = s.transmit(now + 2 * MS, 0.0).unwrap();
        assert!(answer.final_ && !answer.poll);
        assert_eq!(
            s.wake_at(),
            Some(now + 750 * MS).min(s.detect_at),
            "then paced again"
        );
        // Detect Mult 1: 75–90 %.
        let mut one = Session::new(
            0xc,
            Timers {
                multiplier: 1,
                ..FAST
            },
            now,
        );
        one.transmit(now, 0.0).unwrap();
        assert_eq!(one.wake_at(), Some(now + SLOW_TX));
        let mut one = Session::new(
            0xc,
            Timers {
                multiplier: 1,
                ..FAST
            },
            now,
        );
        one.transmit(now, 1.0).unwrap();
        assert_eq!(one.wake_at(), Some(now + 850 * MS));
    }
}
