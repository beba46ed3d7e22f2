//! Files other processes write for the agent: a service's in-flight count (reporting.rs) and a
//! static compute node's published metrics (`[[remote]] metrics_file`). Both are read when
//! they are written, from inotify on their directories, not sampled.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc;

use super::Published;
use crate::core::Event;

/// Writes to a set of files, from inotify on their directories. A file counts as written when
/// closed after writing or renamed into place, so a half-written value is never read. Without
/// inotify (it failed to start: a warning says why) nothing wakes, and the caller reads on
/// its interval alone.
pub(crate) struct Writes {
    events: Option<inotify::EventStream<[u8; 4096]>>,
    names: Vec<OsString>,
    /// What the files are, for the warnings.
    what: &'static str,
}

impl Writes {
    /// Watches `files` (`what` names them in warnings).
    pub fn watch(files: &[&Path], what: &'static str) -> Self {
        let names = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        let events = (!files.is_empty())
            .then(|| Self::events(files))
            .and_then(|started| {
                started
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "not watching {what}: reading them on the interval only");
                    })
                    .ok()
            });
        Self {
            events,
            names,
            what,
        }
    }

    /// Whether writes wake anyone: inotify runs.
    pub const fn is_watching(&self) -> bool {
        self.events.is_some()
    }

    fn events(files: &[&Path]) -> std::io::Result<inotify::EventStream<[u8; 4096]>> {
        let inotify = Inotify::init()?;
        for file in files {
            let dir = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            inotify
                .watches()
                .add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
        inotify.into_event_stream([0; 4096])
    }

    /// The next write to one of the files; never, without inotify.
    pub async fn next(&mut self) {
        let Some(events) = &mut self.events else {
            return std::future::pending().await;
        };
        loop {
            match events.next().await {
                Some(Ok(event))
                    if event
                        .mask
                        .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                        && event.name.as_ref().is_some_and(|n| self.names.contains(n)) =>
                {
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let what = self.what;
                    tracing::warn!(%error, "reading inotify events: reading {what} on the interval only");
                    self.events = None;
                    return std::future::pending().await;
                }
                None => {
                    self.events = None;
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// What the `[[remote]]` metrics files hold, by path: absent when a file is missing or
/// unreadable (its node then has no fresh metrics, and selection excludes it as stale).
pub type RemoteMetrics = BTreeMap<PathBuf, Published>;

/// The `[[remote]]` metrics files, watched from the moment this is made (so that no write
/// after the first read is missed) and read.
pub(crate) struct RemoteFiles {
    files: Vec<PathBuf>,
    written: Writes,
    read: RemoteMetrics,
}

impl RemoteFiles {
    /// Starts watching `files`, then reads them.
    pub fn watch(files: Vec<PathBuf>) -> Self {
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let written = Writes::watch(&paths, "[[remote]] metrics files");
        let read = read_all(&files);
        Self {
            files,
            written,
            read,
        }
    }

    /// What the files held when last read.
    pub const fn metrics(&self) -> &RemoteMetrics {
        &self.read
    }

    /// Reads the files again whenever one is written and hands the routing core what they
    /// hold, once per change; until aborted (a reload that changes the files starts another)
    /// or the core is gone. Without inotify it reads them every `fallback`.
    pub async fn follow(mut self, core: mpsc::Sender<Event>, fallback: Duration) {
        if self.files.is_empty() {
            return;
        }
        loop {
            if self.written.is_watching() {
                self.written.next().await;
            } else {
                tokio::time::sleep(fallback).await;
            }
            let now = read_all(&self.files);
            if now != self.read {
                self.read.clone_from(&now);
                let event = Event::RemoteMetrics {
                    metrics: now,
                    published: None,
                };
                if core.send(event).await.is_err() {
                    return; // the agent is stopping
                }
            }
        }
    }
}

fn read_all(files: &[PathBuf]) -> RemoteMetrics {
    files
        .iter()
        .filter_map(|path| read_published(path).map(|p| (path.clone(), p)))
        .collect()
}

fn read_published(path: &Path) -> Option<Published> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(
            |e| tracing::warn!(path = %path.display(), error = %e, "unreadable metrics file"),
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_written_file_wakes_the_watcher_and_its_neighbours_do_not() {
        let dir = std::env::temp_dir().join(format!("cpn-in-flight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("in_flight");
        std::fs::write(&file, "1\n").unwrap();
        let mut written = Writes::watch(&[file.as_path()], "test files");
        let soon = Duration::from_millis(300);
        // Another file in the same directory: no wake-up.
        std::fs::write(dir.join("other"), "2\n").unwrap();
        assert!(tokio::time::timeout(soon, written.next()).await.is_err());
        // Written and closed: a wake-up.
        std::fs::write(&file, "3\n").unwrap();
        assert!(tokio::time::timeout(soon, written.next()).await.is_ok());
        // Renamed into place (an atomic replace): a wake-up.
        let fresh = dir.join("in_flight.new");
        std::fs::write(&fresh, "4\n").unwrap();
        std::fs::rename(&fresh, &file).unwrap();
        assert!(tokio::time::timeout(soon, written.next()).await.is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A remote's published file reaches the core when it is written (not at the next
    /// selection step), and a file that goes missing takes its node's metrics with it.
    #[tokio::test]
    async fn remote_metrics_reach_the_core_when_written() {
        let dir = std::env::temp_dir().join(format!("cpn-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge1.json");
        let publish = |node: &str| {
            let published = Published {
                node: node.to_owned(),
                services: Vec::new(),
            };
            crate::write_json(&file, &published).unwrap();
        };
        publish("edge1");
        let (events, mut core) = mpsc::channel(4);
        let files = RemoteFiles::watch(vec![file.clone()]);
        assert_eq!(files.metrics()[&file].node, "edge1", "read at start");
        // A fallback far beyond the test: only inotify can wake it.
        let task = tokio::spawn(files.follow(events, Duration::from_hours(1)));
        let next = async |core: &mut mpsc::Receiver<Event>| {
            let event = tokio::time::timeout(Duration::from_secs(2), core.recv()).await;
            match event.expect("an event in time").expect("the follower runs") {
                Event::RemoteMetrics { metrics, .. } => metrics,
                other => panic!("not remote metrics: {other:?}"),
            }
        };
        publish("edge1-renamed");
        assert_eq!(next(&mut core).await[&file].node, "edge1-renamed");
        // Half a writer's work (it should have renamed it into place): no metrics.
        std::fs::write(&file, "not json").unwrap();
        assert!(next(&mut core).await.is_empty(), "unreadable: no metrics");
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
