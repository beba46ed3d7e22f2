//! A BGP session driven by a hostile peer and a hostile clock: sequences of connection events,
//! timer expiries and bytes from the peer go through the parts the agent's session task is made
//! of (the FSM, the peer's import and export, the Adj-RIB-In), wired as session.rs and the
//! routing core wire them, and after every step the session must still make sense.
//!
//! Input layout: byte 0 chooses the session (bit 0: passive, bit 1: an iBGP peer, bit 2: our
//! Graceful Restart, bit 3: the peer's, bit 4: keep routes the import policy would drop, bit 5:
//! a prefix limit of byte 1), then steps, each an opcode byte and its operands:
//!
//! | op % 10 | step |
//! |---|---|
//! | 0 | n: the clock moves n × 50 ms; every timer due fires |
//! | 1 | b: a TCP connection is up (b & 1: ours) |
//! | 2 | the connection fails |
//! | 3 | BFD loses the neighbor |
//! | 4, 5 | the operator stops, starts the session |
//! | 6 | hi lo bytes…: that many raw bytes from the peer |
//! | 7, 8 | the peer's OPEN, a KEEPALIVE |
//! | 9 | f p i: the peer announces (or, f & 1, withdraws) prefix p, path i |
//!
//! Checked: nothing panics; timers that fire move the next deadline on (else the session task
//! would spin); a cascade of actions settles; a session that is not up holds no fresh paths
//! of the peer (only stale ones, RFC 4724); it never holds more than its prefix limit while up;
//! the RIB's per-neighbor count matches its paths; everything we send decodes.

#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use cpn_agent::bgp::{
    attributes::Malformed,
    errors::{self, Codec},
    fsm::{Action, Event, Fsm, PeerConfig, State},
    graceful::{self, Families, Retain},
    metric_attr,
    peer::{Learnt, PeerState},
    policy::{Import, Local, Peer},
    rib::{RibCommand, RibIn},
    route::{self, AddPath, Encoding, Route, ServiceSid},
    speaker,
};
use libfuzzer_sys::fuzz_target;
use netgauze_bgp_pkt::{BgpMessage, codec::BgpCodecDecoderError};
use tokio_util::codec::{Decoder as _, Encoder as _};

const US: u32 = 65001;
const METRIC_CODE: u8 = metric_attr::DEFAULT_TYPE_CODE;
const NEIGHBOR: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
/// More rounds than this for one event is a cascade that does not settle.
const MAX_ROUNDS: usize = 64;
/// More timer expiries than this in one clock step is a timer that does not move on.
const MAX_EXPIRIES: usize = 1000;

struct Harness {
    fsm: Fsm,
    peer: PeerState,
    rib: RibIn,
    peer_asn: u32,
    peer_graceful: graceful::Ours,
    max_prefixes: Option<usize>,
    originated: Vec<Route>,
    now: Instant,
    /// The TCP connection: what the peer sent that is not read yet, and our codec for it.
    conn: Option<(BytesMut, Codec)>,
    /// What the peer's end decodes what we send with (our ADD-PATH towards it).
    peer_codec: Codec,
    /// The attributes the codec cut out of the message being handled (RFC 7606).
    skipped: Vec<Malformed>,
    /// Paths the peer ever announced: the RIB cannot hold more.
    announced: usize,
}

impl Harness {
    fn new(flags: u8, limit: u8) -> Self {
        let internal = flags & 2 != 0;
        let peer_asn = if internal { US } else { 65002 };
        let ours = graceful::Ours {
            restart_time: if flags & 4 != 0 {
                Duration::from_secs(120)
            } else {
                Duration::ZERO
            },
            forwarding_preserved: true,
        };
        let peer_graceful = graceful::Ours {
            restart_time: if flags & 8 != 0 {
                Duration::from_secs(90)
            } else {
                Duration::ZERO
            },
            forwarding_preserved: flags & 0x80 != 0,
        };
        let fsm = Fsm::new(PeerConfig {
            local_asn: US,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            peer_asn,
            hold_time: Duration::from_secs(9),
            connect_retry: Duration::from_secs(5),
            passive: flags & 1 != 0,
            graceful: ours,
        });
        let me = Local {
            asn: US,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id: Ipv4Addr::new(10, 0, 0, 1),
            next_hop: Ipv6Addr::UNSPECIFIED,
        };
        let peer = PeerState::new(
            me,
            Peer {
                address: NEIGHBOR,
                asn: peer_asn,
                rr_client: internal,
                add_path: AddPath::default(),
            },
            METRIC_CODE,
            Import {
                locators: vec!["fc00::/16".parse().unwrap()],
                keep_other: flags & 0x10 != 0,
            },
        );
        Self {
            fsm,
            peer,
            rib: RibIn::default(),
            peer_asn,
            peer_graceful,
            max_prefixes: (flags & 0x20 != 0).then_some(usize::from(limit)),
            originated: vec![
                route_to(Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0), 32, 0, None),
                route_to(
                    Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1),
                    128,
                    1,
                    Some(ServiceSid {
                        sid: Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0x100),
                        behavior: 0x0013,
                    }),
                ),
            ],
            now: Instant::now(),
            conn: None,
            peer_codec: speaker::codec(AddPath::default(), METRIC_CODE),
            skipped: Vec::new(),
            announced: 0,
        }
    }

    /// An event to the FSM, and everything that follows from it, as session.rs carries it out.
    fn event(&mut self, event: Event) {
        let actions = self.fsm.handle(self.now, event);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, mut actions: Vec<Action>) {
        let mut rounds = 0;
        while !actions.is_empty() {
            rounds += 1;
            assert!(
                rounds <= MAX_ROUNDS,
                "the actions do not settle: {actions:?}"
            );
            let mut more = Vec::new();
            for action in std::mem::take(&mut actions) {
                more.extend(self.act(action));
            }
            actions = more;
        }
        self.check();
    }

    fn act(&mut self, action: Action) -> Vec<Action> {
        match action {
            // The harness decides when connections come up (step 1).
            Action::Connect | Action::RejectColliding | Action::AdoptColliding => vec![],
            Action::Disconnect => {
                self.conn = None;
                vec![]
            }
            Action::Send(message) => self.send(message),
            Action::Up(negotiated) => {
                self.peer
                    .up(&negotiated, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
                if let Some((_, codec)) = &mut self.conn {
                    *codec = speaker::codec(negotiated.add_path_rx, METRIC_CODE);
                }
                self.peer_codec = speaker::codec(negotiated.add_path_tx, METRIC_CODE);
                let awaited = match negotiated.peer_restart {
                    Some(peer) if !peer.restarted => negotiated.families,
                    _ => Families::NONE,
                };
                self.rib.apply(RibCommand::Up {
                    neighbor: NEIGHBOR,
                    awaited,
                });
                self.advertise()
            }
            Action::Down { why, retain } => {
                let nothing_kept = retain == Retain::Nothing;
                self.rib.apply(RibCommand::Down {
                    neighbor: NEIGHBOR,
                    why,
                    retain,
                });
                self.peer.forget_advertised();
                if nothing_kept {
                    assert_eq!(
                        self.rib.paths_from(NEIGHBOR),
                        0,
                        "a session ended without retention kept paths"
                    );
                }
                vec![]
            }
            Action::Update(update) => {
                match self.peer.learn(&update, &std::mem::take(&mut self.skipped)) {
                    Learnt::Reset { notification, why } => self.fsm.handle(
                        self.now,
                        Event::Malformed {
                            notification: Some(notification),
                            why,
                        },
                    ),
                    Learnt::Changes { changes, .. } => {
                        self.announced += changes
                            .iter()
                            .filter(|c| matches!(c, cpn_agent::bgp::rib::PathChange::Announce(_)))
                            .count();
                        self.rib.apply(RibCommand::Learn {
                            neighbor: NEIGHBOR,
                            changes,
                            fresh: None,
                        });
                        let fresh = self.fresh();
                        match self.max_prefixes {
                            Some(limit) if fresh > limit => {
                                self.fsm.handle(self.now, Event::TooManyPrefixes(limit))
                            }
                            _ => vec![],
                        }
                    }
                }
            }
            Action::EndOfRib(family) => {
                self.rib.apply(RibCommand::EndOfRib {
                    neighbor: NEIGHBOR,
                    family,
                });
                vec![]
            }
            Action::RemoveStale(families) => {
                self.rib.apply(RibCommand::RemoveStale {
                    neighbor: NEIGHBOR,
                    families,
                });
                vec![]
            }
            Action::ResendAll => {
                self.peer.forget_advertised();
                self.advertise()
            }
        }
    }

    fn fresh(&self) -> usize {
        self.rib.paths_from(NEIGHBOR) - self.rib.stale_from(NEIGHBOR)
    }

    /// Our routes to the peer; the RIB is only its own paths, which are never sent back.
    fn advertise(&mut self) -> Vec<Action> {
        let originated = self.originated.clone();
        let messages = self.peer.export(&originated, &self.rib);
        messages.into_iter().flat_map(|m| self.send(m)).collect()
    }

    /// A message to the peer: encoded by our codec, it must decode at the peer's end.
    fn send(&mut self, message: BgpMessage) -> Vec<Action> {
        let Some((_, codec)) = &mut self.conn else {
            return vec![];
        };
        let mut wire = BytesMut::new();
        if let Err(error) = codec.encode(message.clone(), &mut wire) {
            panic!("our own message does not encode: {error:?}\n{message:?}");
        }
        match self.peer_codec.decode(&mut wire) {
            Ok(Some(_)) if wire.is_empty() => {}
            other => panic!("what we send does not decode: {other:?}\n{message:?}"),
        }
        vec![]
    }

    /// Bytes from the peer, read as the session reads its connection.
    fn receive(&mut self, bytes: &[u8]) {
        let Some((buffer, _)) = &mut self.conn else {
            return;
        };
        buffer.extend_from_slice(bytes);
        loop {
            let Some((buffer, codec)) = &mut self.conn else {
                return;
            };
            let event = match codec.decode(buffer) {
                Ok(Some((message, skipped))) => {
                    // As session.rs: the attributes the codec cut out go with the UPDATE.
                    self.skipped = skipped;
                    Event::Message(message)
                }
                Ok(None) => return,
                Err(error @ BgpCodecDecoderError::BgpMessageParsingError(_)) => Event::Malformed {
                    notification: errors::notification(&error),
                    why: error.to_string(),
                },
                Err(_) => {
                    self.conn = None;
                    Event::TcpFailed
                }
            };
            let ends = matches!(event, Event::Malformed { .. } | Event::TcpFailed);
            self.event(event);
            if ends {
                return;
            }
        }
    }

    /// The clock moves on to `until`; every timer due on the way fires.
    fn advance(&mut self, until: Instant) {
        let mut expiries = 0;
        while let Some(deadline) = self.fsm.next_deadline().filter(|d| *d <= until) {
            expiries += 1;
            assert!(
                expiries <= MAX_EXPIRIES,
                "timers keep firing at {deadline:?}"
            );
            self.now = self.now.max(deadline);
            // Timers due at the same time fire one poll each; one that never moves on makes
            // the session task spin, and trips the count above.
            let actions = self.fsm.poll(self.now);
            self.carry_out(actions);
        }
        self.now = until;
    }

    /// What holds after every step.
    fn check(&self) {
        let paths = self.rib.paths_from(NEIGHBOR);
        assert_eq!(
            paths,
            self.rib.routes().filter(|l| l.neighbor == NEIGHBOR).count(),
            "the RIB's count of the neighbor's paths is off"
        );
        assert!(self.rib.stale_from(NEIGHBOR) <= paths);
        assert!(
            paths <= self.announced,
            "the RIB holds paths the peer never sent"
        );
        if self.fsm.state() != State::Established {
            assert_eq!(
                self.fresh(),
                0,
                "a session that is down ({:?}) holds fresh paths",
                self.fsm.state()
            );
        } else if let Some(limit) = self.max_prefixes {
            assert!(
                self.fresh() <= limit,
                "an up session holds {} paths over its limit of {limit}",
                self.fresh()
            );
        }
    }

    /// The peer's OPEN, as a cpn agent with its settings would send it.
    fn peer_open(&self) -> BgpMessage {
        Fsm::new(PeerConfig {
            local_asn: self.peer_asn,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            peer_asn: US,
            hold_time: Duration::from_secs(9),
            connect_retry: Duration::from_secs(5),
            passive: false,
            graceful: self.peer_graceful,
        })
        .open()
    }

    /// A message from the peer, over the wire and the codec.
    fn from_peer(&mut self, message: BgpMessage, add_path: AddPath) {
        if self.conn.is_none() {
            return;
        }
        let mut wire = BytesMut::new();
        let mut codec = speaker::codec(add_path, METRIC_CODE);
        if codec.encode(message, &mut wire).is_ok() {
            self.receive(&wire);
        }
    }

    /// The peer announces or withdraws one of a few hundred paths: some services, some
    /// locators, some plain prefixes.
    fn route(&mut self, flags: u8, prefix: u8, path_id: u8) {
        let add_path = self
            .fsm
            .negotiated()
            .map(|n| n.add_path_rx)
            .unwrap_or_default();
        let mut r = match prefix % 3 {
            0 => route_to(
                Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, u16::from(prefix)),
                128,
                u32::from(path_id),
                Some(ServiceSid {
                    sid: Ipv6Addr::new(0xfc00, 2, 0, 0, 0, 0, 0, u16::from(path_id)),
                    behavior: u16::from(flags >> 4),
                }),
            ),
            1 => route_to(
                Ipv6Addr::new(0xfc00, u16::from(prefix), 0, 0, 0, 0, 0, 0),
                32,
                u32::from(path_id),
                None,
            ),
            _ => route_to(
                Ipv6Addr::new(0x2001, 0xdb8, u16::from(prefix), 0, 0, 0, 0, 0),
                48,
                u32::from(path_id),
                None,
            ),
        };
        r.as_path = if self.peer_asn == US {
            vec![]
        } else {
            vec![self.peer_asn]
        };
        if flags & 2 != 0 {
            r.as_path.push(US); // a loop
        }
        r.next_hop = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let message = if flags & 1 != 0 {
            let withdrawn = [route::Withdrawn {
                prefix: r.prefix,
                path_id: r.path_id,
            }];
            route::withdraw(&withdrawn, add_path).into_iter().next()
        } else {
            Some(route::announce(
                &r,
                Encoding {
                    metric_code: METRIC_CODE,
                    add_path,
                    local_asn: self.peer_asn,
                    internal: self.peer_asn == US,
                },
            ))
        };
        if let Some(message) = message {
            self.from_peer(message, add_path);
        }
    }
}

fn route_to(addr: Ipv6Addr, len: u8, path_id: u32, service: Option<ServiceSid>) -> Route {
    Route {
        prefix: ipnet::Ipv6Net::new(addr, len).unwrap().trunc().into(),
        path_id,
        next_hop: Ipv6Addr::UNSPECIFIED,
        service,
        aigp: Some(0),
        metrics: None,
        link_bandwidth: None,
        as_path: Vec::new(),
        originator_id: None,
        cluster_list: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, steps @ ..] = data else {
        return;
    };
    let mut h = Harness::new(*flags, *limit);
    h.event(Event::ManualStart);
    let mut steps = steps.iter().copied();
    while let Some(op) = steps.next() {
        let mut operand = || steps.next().unwrap_or(0);
        match op % 10 {
            0 => {
                let until = h.now + Duration::from_millis(50) * u32::from(operand());
                h.advance(until);
            }
            1 => {
                let outgoing = operand() & 1 != 0;
                // As session.rs takes a new connection: only while the FSM waits for one (a
                // colliding one is not modelled).
                if matches!(h.fsm.state(), State::Connect | State::Active) && h.conn.is_none() {
                    h.conn = Some((
                        BytesMut::new(),
                        speaker::codec(AddPath::default(), METRIC_CODE),
                    ));
                    h.peer_codec = speaker::codec(AddPath::default(), METRIC_CODE);
                    h.event(Event::TcpConnected { outgoing });
                }
            }
            2 => {
                h.conn = None;
                h.event(Event::TcpFailed);
            }
            3 => h.event(Event::PeerDead),
            4 => h.event(Event::ManualStop),
            5 => h.event(Event::ManualStart),
            6 => {
                let len = usize::from(u16::from_be_bytes([operand(), operand()]));
                let bytes: Vec<u8> = steps.by_ref().take(len).collect();
                h.receive(&bytes);
            }
            7 => {
                let open = h.peer_open();
                h.from_peer(open, AddPath::default());
            }
            8 => h.from_peer(BgpMessage::KeepAlive, AddPath::default()),
            _ => {
                let (flags, prefix, path_id) = (operand(), operand(), operand());
                h.route(flags, prefix, path_id);
            }
        }
    }
});
