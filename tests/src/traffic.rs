//! Real TCP traffic from inside a lab's client namespaces, recorded request by request: which
//! node answered each new connection, how long it took, and what load the node reported.
//! Threads enter the client's namespace with `setns`, so no helper processes are involved.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::lab::Node;

/// How long a new connection may take: long enough for one SYN retransmission (1 s), so a
/// connection the network recovers is told apart from one it lost.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer on a held connection may take: a slow answer is not a broken
/// connection (a busy lab machine can stall a service for seconds).
const HELD_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Request threads per client.
pub const THREADS_PER_CLIENT: u32 = 5;

/// One new connection and its one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// When it started, since the traffic started.
    pub at: Duration,
    pub client: String,
    /// The node that answered; `None` if the connection or the request failed.
    pub node: Option<String>,
    pub took: Duration,
    /// The requests in flight the node reported in its answer.
    pub load: Option<u32>,
}

impl Request {
    /// Failed, or needed a retransmission (took longer than the first SYN timeout).
    pub fn disrupted(&self) -> bool {
        self.node.is_none() || self.took >= Duration::from_millis(900)
    }
}

/// New connections from every client to one service at a steady rate, until dropped.
#[derive(Debug)]
pub struct Traffic {
    started: Instant,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `per_second` new connections per second from each of `clients` to `target`,
    /// from [`THREADS_PER_CLIENT`] threads each, so that one connection waiting for a SYN
    /// retransmission does not hold the others back.
    pub fn start(clients: &[Node], target: SocketAddr, per_second: u32) -> Self {
        let started = Instant::now();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let gap = Duration::from_secs(1) * THREADS_PER_CLIENT / per_second.max(1);
        let threads = clients
            .iter()
            .flat_map(|client| {
                (0..THREADS_PER_CLIENT).map(move |i| (client.clone(), gap * i / THREADS_PER_CLIENT))
            })
            .map(|(client, offset)| {
                let (requests, stop) = (requests.clone(), stop.clone());
                std::thread::spawn(move || {
                    let Ok(_inside) = client.enter() else { return };
                    let mut next = Instant::now() + offset;
                    std::thread::sleep(offset);
                    while !stop.load(Ordering::Relaxed) {
                        let begun = Instant::now();
                        let answer = request(target).ok();
                        let (node, load) = answer.map_or((None, None), |(n, l)| (Some(n), l));
                        requests.lock().expect("lock").push(Request {
                            at: begun - started,
                            client: client.name().to_owned(),
                            node,
                            took: begun.elapsed(),
                            load,
                        });
                        next += gap;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        } else {
                            next = Instant::now();
                        }
                    }
                })
            })
            .collect();
        Self {
            started,
            requests,
            stop,
            threads,
        }
    }

    /// Time since the traffic started (the clock of [`Request::at`]).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests that started in `[from, to)`.
    pub fn between(&self, from: Duration, to: Duration) -> Vec<Request> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .cloned()
            .collect()
    }

    /// Stops the clients and returns every request.
    pub fn finish(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.requests.lock().expect("lock"))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request on a new connection: the answering node and the load it reported.
fn request(target: SocketAddr) -> std::io::Result<(String, Option<u32>)> {
    let mut stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    parse_answer(&line).ok_or_else(|| std::io::Error::other(format!("answer {line:?}")))
}

/// `<node> <load>` as the lab's service answers.
fn parse_answer(line: &str) -> Option<(String, Option<u32>)> {
    let mut words = line.split_whitespace();
    let node = words.next()?.to_owned();
    Some((node, words.next().and_then(|w| w.parse().ok())))
}

/// Connections held open and checked: each must keep reaching the node that first answered.
#[derive(Debug)]
pub struct Held {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<HeldReport>>>,
}

/// What happened to held connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldReport {
    pub connections: usize,
    /// Requests answered on them.
    pub answered: u64,
    /// Connections that failed.
    pub broken: u64,
    /// Connections answered by another node than at first.
    pub moved: u64,
    /// Connections by the node that answered them first ...
    pub on: std::collections::BTreeMap<String, usize>,
    /// ... and of those, the ones broken or moved.
    pub lost_on: std::collections::BTreeMap<String, u64>,
    /// Why connections broke (a reset, a timeout, a closed connection), by error.
    pub why_broken: std::collections::BTreeMap<String, u64>,
}

impl Held {
    /// Opens `count` connections from `client` to `target` and checks each every 200 ms.
    pub fn open(client: &Node, target: SocketAddr, count: usize) -> Result<Self> {
        let client = client.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<HeldReport> {
            let _inside = client.enter()?;
            let mut conns = Vec::new();
            for _ in 0..count {
                let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
                stream.set_read_timeout(Some(HELD_ANSWER_TIMEOUT))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let first = ask(&stream, &mut reader)?;
                conns.push((stream, reader, first, true));
            }
            let _ = ready_tx.send(());
            let mut report = HeldReport {
                connections: count,
                ..HeldReport::default()
            };
            for (_, _, first, _) in &conns {
                *report.on.entry(first.clone()).or_default() += 1;
            }
            while !stop_flag.load(Ordering::Relaxed) {
                for (stream, reader, first, alive) in &mut conns {
                    if !*alive {
                        continue;
                    }
                    match ask(stream, reader) {
                        Ok(node) if node == *first => report.answered += 1,
                        Ok(_) => {
                            report.moved += 1;
                            *report.lost_on.entry(first.clone()).or_default() += 1;
                            *alive = false;
                        }
                        Err(error) => {
                            report.broken += 1;
                            *report.why_broken.entry(format!("{error:#}")).or_default() += 1;
                            *report.lost_on.entry(first.clone()).or_default() += 1;
                            *alive = false;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(report)
        });
        let mut held = Self {
            stop,
            thread: Some(thread),
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            return Err(held.close().err().unwrap_or_else(|| {
                anyhow::anyhow!("the held connections did not open within 30 s")
            }));
        }
        Ok(held)
    }

    /// Stops checking, closes the connections and reports.
    pub fn close(&mut self) -> Result<HeldReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("already closed")?
            .join()
            .map_err(|_| anyhow::anyhow!("the holder thread panicked"))?
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn ask(stream: &TcpStream, reader: &mut BufReader<TcpStream>) -> Result<String> {
    let mut writer = stream;
    writer.write_all(b"again\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    parse_answer(&line)
        .map(|(node, _)| node)
        .with_context(|| format!("answer {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_node_and_load() {
        assert_eq!(parse_answer("edge1 17\n"), Some(("edge1".into(), Some(17))));
        assert_eq!(parse_answer("edge1\n"), Some(("edge1".into(), None)));
        assert_eq!(parse_answer("\n"), None);
    }
}
