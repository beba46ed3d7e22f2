use std::{net::Ipv4Addr, time::Duration};

use super::*;
use crate::{
    bgp::{
        fsm::{Down, DownReason},
        graceful::{Deferral, Families, Family, Retain},
        rib::PathChange,
        route::Route,
    },
    metrics::Measure,
};

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

fn learn(neighbor: IpAddr, prefix: &str, fresh: Option<oneshot::Sender<usize>>) -> Event {
    let route = Route::for_test(prefix);
    Event::Bgp(RibCommand::Learn {
        neighbor,
        changes: vec![PathChange::announce_for_test(neighbor, route)],
        fresh,
    })
}

fn drain(node: &str, drain: bool) -> (Event, oneshot::Receiver<u64>) {
    let (published, version) = oneshot::channel();
    let event = Event::Drain {
        node: node.to_owned(),
        drain,
        published,
    };
    (event, version)
}

fn link(alive: bool, rtt_ms: u64) -> LinkStats {
    LinkStats {
        rtt: Measure::Known(Duration::from_millis(rtt_ms)),
        alive: Measure::Known(alive),
        ..LinkStats::default()
    }
}

#[tokio::test]
async fn events_apply_in_order_and_a_burst_is_one_snapshot() {
    let (core, _task) = spawn(RibIn::default(), Measured::default());
    let mut view = core.view;
    let (fresh, answer) = oneshot::channel();
    // Queued before the task runs: one burst.
    core.events
        .send(learn(A, "fc00:1::/32", None))
        .await
        .unwrap();
    core.events
        .send(learn(A, "fc00:2::/32", Some(fresh)))
        .await
        .unwrap();
    let (event, drained) = drain("edge1", true);
    core.events.send(event).await.unwrap();
    assert_eq!(answer.await.unwrap(), 2, "the second UPDATE sees the first");
    assert_eq!(drained.await.unwrap(), 1, "the burst's snapshot");
    view.changed().await.unwrap();
    let snapshot = view.borrow_and_update().clone();
    assert_eq!(snapshot.version, 1);
    assert_eq!(snapshot.rib.routes().count(), 2);
    assert_eq!(*snapshot.drained, BTreeSet::from(["edge1".to_owned()]));
    assert!(!view.has_changed().unwrap(), "one snapshot for the burst");

    let down = RibCommand::Down {
        neighbor: A,
        why: Down {
            reason: DownReason::TcpConnectionFails,
            established: true,
        },
        retain: Retain::Nothing,
    };
    core.events.send(Event::Bgp(down)).await.unwrap();
    view.changed().await.unwrap();
    let next = view.borrow().clone();
    assert_eq!(next.rib.routes().count(), 0);
    assert!(
        Arc::ptr_eq(&next.drained, &snapshot.drained),
        "what a burst left alone is shared, not copied"
    );
    assert!(next.news_since(&snapshot));
}

#[tokio::test]
async fn a_link_measurement_is_published_but_only_liveness_is_news() {
    let (measure, links) = watch::channel(LinkTable::from([(A, link(true, 2))]));
    let (core, _task) = spawn(
        RibIn::default(),
        Measured {
            links: Some(links),
            ..Measured::default()
        },
    );
    let mut view = core.view;
    let first = view.borrow_and_update().clone();
    assert_eq!(first.links[&A], link(true, 2), "the table at start");

    measure.send_replace(LinkTable::from([(A, link(true, 3))]));
    view.changed().await.unwrap();
    let measured = view.borrow_and_update().clone();
    assert_eq!(measured.links[&A], link(true, 3));
    assert!(!measured.news_since(&first), "a new round-trip time alone");

    measure.send_replace(LinkTable::from([(A, link(false, 3))]));
    view.changed().await.unwrap();
    assert!(
        view.borrow_and_update().news_since(&measured),
        "the link died"
    );

    measure.send_replace(LinkTable::from([(A, link(false, 3)), (B, link(true, 1))]));
    view.changed().await.unwrap();
    assert!(view.borrow().news_since(&measured), "a new neighbor");
    drop(core.events);
}

#[tokio::test]
async fn the_wait_for_end_of_rib_ends_at_its_deadline_or_when_every_peer_sent_its_own() {
    let wait = Duration::from_millis(200);
    let until = Instant::now() + wait;
    let (core, _task) = spawn(
        RibIn::new(Deferral::new([A, B], until)),
        Measured::default(),
    );
    let mut view = core.view;
    assert!(!view.borrow().rib.deferral_over());
    let up = |neighbor, awaited| Event::Bgp(RibCommand::Up { neighbor, awaited });
    core.events
        .send(up(A, [Family::Ipv6Unicast].into_iter().collect()))
        .await
        .unwrap();
    core.events.send(up(B, Families::NONE)).await.unwrap();
    view.changed().await.unwrap();
    assert!(
        !view.borrow_and_update().rib.deferral_over(),
        "A's End-of-RIB is awaited"
    );
    let end_of_rib = RibCommand::EndOfRib {
        neighbor: A,
        family: Family::Ipv6Unicast,
    };
    core.events.send(Event::Bgp(end_of_rib)).await.unwrap();
    view.changed().await.unwrap();
    assert!(view.borrow_and_update().rib.deferral_over());

    // A peer that never comes up: the wait ends at the deadline.
    let started = Instant::now();
    let (core, _task) = spawn(
        RibIn::new(Deferral::new([A], started + wait)),
        Measured::default(),
    );
    let mut view = core.view;
    view.changed().await.unwrap();
    assert!(view.borrow().rib.deferral_over());
    assert!(started.elapsed() >= wait);
    drop(core.events);
}
