//! The routing core: the one task that owns what this agent knows of the network (the
//! Adj-RIB-In, BFD's sessions, the paths STAMP measured, the metrics static nodes publish, the
//! nodes the operator drained) and publishes it as snapshots.
//!
//! ```text
//!   BGP sessions ──Event::Bgp──────────────┐
//!   [[remote]] files ──Event::RemoteMetrics┼──▶ core task ──Snapshot (watch)──▶ steering,
//!   operator (api) ──Event::Drain──────────┤   (owns RIB, links, BFD,         sessions (export,
//!   BFD ──Event::Bfd───────────────────────┤    paths, remote metrics,        BFD down), locators,
//!   STAMP ──Paths (watch)──────────────────┘    drains)                       api
//! ```
//!
//! Everything that changes this state is a typed event, applied in the order it arrives; a
//! burst (everything already queued: a full table, several peers at once) becomes one
//! snapshot. Nobody else writes it and nobody reads it under a lock: readers hold a snapshot,
//! whose parts are shared (`Arc`) so that a reader can tell cheaply which of them changed.
//!
//! Node ids are not here: an id is a slot in the data plane's node map, free again only once
//! no ring names it, and only selection, which writes the rings, knows when that is.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    bgp::rib::{RibCommand, RibIn},
    metrics::files::RemoteMetrics,
    sensing::{bfd, stamp},
};

/// A change to the core's state, from whoever saw it.
#[derive(Debug)]
pub enum Event {
    /// What a BGP session's peer changed (or the session itself).
    Bgp(RibCommand),
    /// What the `[[remote]]` metrics files hold now (all of them); with `published`, answered
    /// with the version of the first snapshot that has it.
    RemoteMetrics {
        metrics: RemoteMetrics,
        published: Option<oneshot::Sender<u64>>,
    },
    /// The BFD session with `neighbor` changed state (or its intervals).
    Bfd {
        neighbor: IpAddr,
        status: bfd::Status,
    },
    /// The operator drains `node` (no new flows; its open flows stay) or, with `drain` false,
    /// gives it new flows again. Answered with the version of the first snapshot that says so.
    Drain {
        node: String,
        drain: bool,
        published: oneshot::Sender<u64>,
    },
}

/// What the core knows, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Counts the snapshots published: whoever has acted on version `n` has acted on every
    /// event the core took before publishing it.
    pub version: u64,
    pub rib: Arc<RibIn>,
    /// Each BFD session, by neighbor.
    pub bfd: Arc<bfd::Statuses>,
    /// What STAMP measured of each candidate's path, by node name.
    pub paths: Arc<stamp::Paths>,
    /// What the `[[remote]]` metrics files hold.
    pub remote: Arc<RemoteMetrics>,
    /// The nodes the operator drained, by name.
    pub drained: Arc<BTreeSet<String>>,
}

impl Snapshot {
    /// Whether the routes, the remote metrics, the drains or the set of measured paths changed
    /// since `seen`. New measurements of paths already measured (every STAMP interval) are not
    /// news: readers take them up at their next regular step. A path measured for the first
    /// time is: its node may be waiting for it to join.
    pub fn news_since(&self, seen: &Self) -> bool {
        let measured = |s: &Self| {
            s.paths
                .iter()
                .filter(|(_, p)| p.delay.is_known())
                .map(|(node, _)| node.clone())
                .collect::<BTreeSet<String>>()
        };
        !Arc::ptr_eq(&self.rib, &seen.rib)
            || !Arc::ptr_eq(&self.remote, &seen.remote)
            || !Arc::ptr_eq(&self.drained, &seen.drained)
            || (!Arc::ptr_eq(&self.paths, &seen.paths) && measured(self) != measured(seen))
    }
}

/// The core's snapshots, as last published.
pub type View = watch::Receiver<Snapshot>;

/// The core's inbox and snapshots.
#[derive(Debug)]
pub struct Core {
    pub events: mpsc::Sender<Event>,
    pub view: View,
}

/// Starts the core with `rib` (empty, or waiting for the peers' End-of-RIB after our restart)
/// and the paths STAMP measures, when it runs. It runs until every sender of events is gone.
pub fn spawn(
    rib: RibIn,
    paths: Option<watch::Receiver<stamp::Paths>>,
) -> (Core, tokio::task::JoinHandle<()>) {
    let (events, inbox) = mpsc::channel(256);
    let state = State {
        rib,
        paths: paths
            .as_ref()
            .map(|p| Arc::new(p.borrow().clone()))
            .unwrap_or_default(),
        bfd: bfd::Statuses::new(),
        remote: Arc::default(),
        drained: BTreeSet::new(),
    };
    let (publish, view) = watch::channel(state.snapshot(0));
    let task = tokio::spawn(run(state, inbox, paths, publish));
    (Core { events, view }, task)
}

/// The core's own state between events.
struct State {
    rib: RibIn,
    paths: Arc<stamp::Paths>,
    bfd: bfd::Statuses,
    remote: Arc<RemoteMetrics>,
    drained: BTreeSet<String>,
}

impl State {
    fn snapshot(&self, version: u64) -> Snapshot {
        Snapshot {
            version,
            rib: Arc::new(self.rib.clone()),
            paths: self.paths.clone(),
            bfd: Arc::new(self.bfd.clone()),
            remote: self.remote.clone(),
            drained: Arc::new(self.drained.clone()),
        }
    }
}

/// What changed in one burst of events, to publish.
#[derive(Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per part of the snapshot"
)]
struct Changed {
    rib: bool,
    drained: bool,
    bfd: bool,
    /// Links and remote metrics, shared as they are kept.
    shared: bool,
    /// Requests to answer with the version that publishes them.
    answers: Vec<oneshot::Sender<u64>>,
}

impl Changed {
    const fn any(&self) -> bool {
        self.rib || self.drained || self.bfd || self.shared
    }
}

async fn run(
    mut state: State,
    mut inbox: mpsc::Receiver<Event>,
    mut paths: Option<watch::Receiver<stamp::Paths>>,
    publish: watch::Sender<Snapshot>,
) {
    loop {
        let mut changed = Changed::default();
        let deadline = state.rib.deferral_deadline();
        tokio::select! {
            event = inbox.recv() => {
                let Some(event) = event else {
                    return; // the agent is stopping
                };
                state.apply(event, &mut changed);
                while let Ok(event) = inbox.try_recv() {
                    state.apply(event, &mut changed);
                }
            }
            measured = changed_or_gone(&mut paths) => {
                state.paths = Arc::new(measured);
                changed.shared = true;
            }
            () = sleep_until(deadline) => {
                tracing::info!("the wait for the peers' End-of-RIB is over: its deadline passed (RFC 4724 §4.1)");
                state.rib.expire_deferral();
                changed.rib = true;
            }
        }
        if changed.any() {
            state.publish(&publish, changed);
        } else {
            // Nothing new: the snapshot out already has it.
            let version = publish.borrow().version;
            for answer in changed.answers {
                let _ = answer.send(version);
            }
        }
    }
}

impl State {
    fn apply(&mut self, event: Event, changed: &mut Changed) {
        match event {
            Event::Bgp(command) => changed.rib |= self.rib.apply(command),
            Event::RemoteMetrics { metrics, published } => {
                if *self.remote != metrics {
                    self.remote = Arc::new(metrics);
                    changed.shared = true;
                }
                changed.answers.extend(published);
            }
            Event::Bfd { neighbor, status } => {
                if self.bfd.insert(neighbor, status) != Some(status) {
                    changed.bfd = true;
                }
            }
            Event::Drain {
                node,
                drain,
                published,
            } => {
                if drain {
                    tracing::info!(%node, "drained by the operator");
                    self.drained.insert(node);
                } else {
                    tracing::info!(%node, "undrained by the operator");
                    self.drained.remove(&node);
                }
                changed.drained = true;
                changed.answers.push(published);
            }
        }
    }

    /// Publishes a snapshot that shares the parts a burst left as they were.
    fn publish(&mut self, publish: &watch::Sender<Snapshot>, changed: Changed) {
        if changed.rib {
            self.rib.settle_deferral();
        }
        let last = publish.borrow().clone();
        let version = last.version + 1;
        let snapshot = Snapshot {
            version,
            rib: if changed.rib {
                Arc::new(self.rib.clone())
            } else {
                last.rib
            },
            paths: self.paths.clone(),
            bfd: if changed.bfd {
                Arc::new(self.bfd.clone())
            } else {
                last.bfd
            },
            remote: self.remote.clone(),
            drained: if changed.drained {
                Arc::new(self.drained.clone())
            } else {
                last.drained
            },
        };
        publish.send_replace(snapshot);
        for answer in changed.answers {
            // The operator may have given up waiting; nothing to tell then.
            let _ = answer.send(version);
        }
    }
}

/// The next table a sensing task publishes; never, once it is gone (or there is none).
async fn changed_or_gone<T: Clone>(table: &mut Option<watch::Receiver<T>>) -> T {
    if let Some(receiver) = table {
        if receiver.changed().await.is_ok() {
            return receiver.borrow_and_update().clone();
        }
        *table = None;
    }
    std::future::pending().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
