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
    sensing::stamp::{Paths, session::PathStats},
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

/// A STAMP measurement of `delay_ms`, or one that has not come back yet (`None`).
fn path(delay_ms: Option<u64>) -> PathStats {
    PathStats {
        delay: delay_ms.map_or(Measure::Unknown, |ms| {
            Measure::Known(Duration::from_millis(ms))
        }),
        sent: 1,
        ..PathStats::default()
    }
}

#[tokio::test]
async fn events_apply_in_order_and_a_burst_is_one_snapshot() {
    let (core, _task) = spawn(RibIn::default(), None);
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
async fn a_path_measured_is_published_but_only_a_first_measurement_is_news() {
    let table = |entries: &[(&str, Option<u64>)]| -> Paths {
        entries
            .iter()
            .map(|(node, ms)| ((*node).to_owned(), path(*ms)))
            .collect()
    };
    let (measure, paths) = watch::channel(table(&[("c1", Some(2)), ("c2", None)]));
    let (core, _task) = spawn(RibIn::default(), Some(paths));
    let mut view = core.view;
    let first = view.borrow_and_update().clone();
    assert_eq!(first.paths["c1"], path(Some(2)), "the table at start");

    measure.send_replace(table(&[("c1", Some(3)), ("c2", None)]));
    view.changed().await.unwrap();
    let measured = view.borrow_and_update().clone();
    assert_eq!(measured.paths["c1"], path(Some(3)));
    assert!(
        !measured.news_since(&first),
        "a new delay of a measured path alone"
    );

    measure.send_replace(table(&[("c1", Some(3)), ("c2", Some(9))]));
    view.changed().await.unwrap();
    assert!(
        view.borrow().news_since(&measured),
        "c2 measured for the first time: it may be waiting to join"
    );
    drop(core.events);
}

#[tokio::test]
async fn the_wait_for_end_of_rib_ends_at_its_deadline_or_when_every_peer_sent_its_own() {
    let wait = Duration::from_millis(200);
    let until = Instant::now() + wait;
    let (core, _task) = spawn(RibIn::new(Deferral::new([A, B], until)), None);
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
    let (core, _task) = spawn(RibIn::new(Deferral::new([A], started + wait)), None);
    let mut view = core.view;
    view.changed().await.unwrap();
    assert!(view.borrow().rib.deferral_over());
    assert!(started.elapsed() >= wait);
    drop(core.events);
}
