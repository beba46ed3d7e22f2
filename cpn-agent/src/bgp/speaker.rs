//! The BGP speaker: the listener and one session task per neighbor (session.rs), reporting to
//! the routing core (core.rs), which owns the RIB (rib.rs).
//!
//! ```text
//!   listener ──accepted stream──▶ session(neighbor) ◀──▶ TCP ◀──▶ peer
//!   local routes (watch) ───────▶ session: announce / withdraw on change
//!   session ──RibCommand──▶ core ──snapshot──▶ steering, locators, api
//!                                  └─────────▶ every session: export (peer.rs) to its peer
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use super::{
    fsm::{Fsm, PeerConfig},
    graceful::{self, Deferral},
    peer::PeerState,
    policy::{self, Local, Peer},
    route::{AddPath, Route},
    session::{Session, SessionStats},
};
use crate::core::{Event as CoreEvent, View as CoreView};

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
    /// GTSM (RFC 5082): how many routers away the neighbor is.
    pub ttl_security_hops: Option<u8>,
}

/// A running speaker: each session's state, for the rest of the agent; the tasks, for
/// shutdown.
#[derive(Debug)]
pub struct Speaker {
    pub sessions: BTreeMap<IpAddr, watch::Receiver<SessionStats>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the routing core's RIB waits for at start: after our restart with our forwarding
/// state kept, the neighbors' End-of-RIB, until `selection_deferral` from now (RFC 4724 §4.1).
/// `took_over`: this agent took over a data plane a killed one left forwarding; its state is
/// kept in fact, though the capability does not promise it to the peers (their stale routes
/// of an agent that dies for good would outlive it by the restart time).
pub fn deferral(config: &SpeakerConfig, took_over: bool) -> Deferral {
    if config.graceful.enabled() && (config.graceful.forwarding_preserved || took_over) {
        let until = Instant::now() + config.selection_deferral;
        Deferral::new(config.neighbors.iter().map(|n| n.address), until)
    } else {
        Deferral::none()
    }
}

/// Starts the listener and the sessions, which report to the routing core `core` (its inbox
/// and its snapshots, BFD's among them). `local` holds the routes this node originates.
pub async fn spawn(
    config: SpeakerConfig,
    core: (mpsc::Sender<CoreEvent>, CoreView),
    local: watch::Receiver<Vec<Route>>,
) -> std::io::Result<Speaker> {
    let listener = TcpListener::bind(config.listen).await?;
    for neighbor in &config.neighbors {
        if let Some(key) = &neighbor.md5_key {
            super::md5::set_key(&listener, neighbor.address, key)?;
        }
    }
    let me = Local {
        asn: config.asn,
        router_id: config.router_id,
        cluster_id: config.cluster_id.unwrap_or(config.router_id),
        next_hop: config.next_hop,
    };
    let ttl_security: HashMap<IpAddr, u8> = config
        .neighbors
        .iter()
        .filter_map(|n| Some((n.address, n.ttl_security_hops?)))
        .collect();
    let mut inboxes = HashMap::new();
    let mut sessions = BTreeMap::new();
    let mut tasks = Vec::new();
    for neighbor in &config.neighbors {
        let (tx, rx) = mpsc::channel(4);
        inboxes.insert(neighbor.address, tx);
        let fsm = Fsm::new(PeerConfig {
            local_asn: config.asn,
            router_id: config.router_id,
            peer_asn: neighbor.asn,
            hold_time: config.hold_time,
            connect_retry: config.connect_retry,
            passive: neighbor.passive,
            graceful: config.graceful,
        });
        let peer = PeerState::new(
            me,
            Peer {
                address: neighbor.address,
                asn: neighbor.asn,
                rr_client: neighbor.rr_client,
                add_path: AddPath::default(),
            },
            config.metric_code,
            config.import.clone(),
        );
        let (session, stats) =
            Session::new(neighbor.clone(), fsm, peer, core.clone(), local.clone());
        sessions.insert(neighbor.address, stats);
        tasks.push(tokio::spawn(session.run(rx)));
    }
    tasks.push(tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                continue;
            };
            let peer = canonical(from.ip());
            if let Some(&hops) = ttl_security.get(&peer)
                && let Err(error) = super::gtsm::protect(&stream, from.ip(), hops)
            {
                tracing::warn!(%from, %error, "GTSM could not be set: connection refused");
                continue;
            }
            if let Some(inbox) = inboxes.get(&peer) {
                let _ = inbox.send(stream).await;
            } else {
                tracing::warn!(%from, "BGP connection from an unconfigured address refused");
            }
        }
    }));
    Ok(Speaker { sessions, tasks })
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A codec for one session; path identifiers are read once ADD-PATH is negotiated, the CPN
/// metric attribute under `metric_code`.
pub fn codec(add_path: AddPath, metric_code: u8) -> super::errors::Codec {
    super::errors::Codec::new(add_path, metric_code)
}

#[cfg(test)]
mod tests {
    //! The speaker over real TCP on loopback, against a scripted peer.

    use std::net::Ipv6Addr;

    use futures_util::{SinkExt as _, StreamExt as _};
    use netgauze_bgp_pkt::{
        BgpMessage,
        notification::{BgpNotificationMessage, CeaseError, MessageHeaderError},
    };
    use tokio::net::TcpStream;
    use tokio_util::codec::Framed;

    use super::*;
    use crate::bgp::rib::RibIn;
    use crate::bgp::{errors, fsm::State, graceful::Family, route};

    const US: u32 = 65001;
    const PEER: u32 = 65002;

    /// Our speaker listening on a loopback port for one passive neighbor, 127.0.0.1.
    async fn speaker() -> (Running, SocketAddr) {
        speaker_with(None).await
    }

    async fn speaker_with(max_prefixes: Option<usize>) -> (Running, SocketAddr) {
        // Dropping the sender: this node originates nothing.
        let (rib, listen, _) = launch(max_prefixes).await;
        (rib, listen)
    }

    /// Our speaker, and the sender of the routes it originates.
    async fn launch(
        max_prefixes: Option<usize>,
    ) -> (Running, SocketAddr, watch::Sender<Vec<Route>>) {
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
                ttl_security_hops: None,
            }],
        };
        let (tx, local) = watch::channel(Vec::new());
        let (core, _task) = crate::core::spawn(RibIn::new(deferral(&config, false)), None);
        let view = core.view.clone();
        let speaker = spawn(config, (core.events, core.view), local)
            .await
            .unwrap();
        (Running { speaker, view }, listen, tx)
    }

    /// A speaker and the routing core its sessions report to.
    struct Running {
        speaker: Speaker,
        view: CoreView,
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

    async fn eventually(speaker: &Running, what: &str, f: impl Fn(&RibIn) -> bool) {
        for _ in 0..200 {
            if f(&speaker.view.borrow().rib) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
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
        })
        .await;
        assert_eq!(state(&rib), State::Established);
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
            aigp: Some(0),
            ..Route::for_test("fc00:1::/32")
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
    async fn until_active(speaker: &Running) {
        for _ in 0..200 {
            if state(speaker) == State::Active {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: the session waits for the peer");
    }

    /// The session's state as it publishes it.
    fn state(speaker: &Running) -> State {
        speaker.speaker.sessions[&NEIGHBOR].borrow().state
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
