//! Health checks of this node's services, sent to each service's own address (a check that
//! passed on localhost while the anycast address drops the data would be worthless): a TCP
//! connect, an HTTP GET expecting a status, or a command's exit status, every interval.
//!
//! A service is healthy after `rise` passes in a row and unhealthy after `fall` failures in a
//! row; at start, its first pass is enough. Until it has passed once it is `checking`, and it
//! is not advertised. The reporting loop advertises only healthy services: an unhealthy one is
//! withdrawn, so no new flow goes to it, while flows to the node's other services go on.
//!
//! ```text
//!   one task per checked service ── outcome ──▶ health task (Checker per service)
//!                                                  └── Healths (watch) ──▶ reporting, api
//! ```

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, watch},
};

use crate::dataplane::ServiceAddr;

/// How many outcomes each service keeps for operators.
pub const HISTORY: usize = 20;

/// What to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection to the service's address and this port.
    Tcp(SocketAddr),
    /// `GET path` over HTTP/1.1 to the service's address and port, passing on `status`.
    Http {
        to: SocketAddr,
        path: String,
        status: u16,
    },
    /// A command (no shell), passing on exit status 0.
    Command(Vec<String>),
}

/// One service's check, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub service: ServiceAddr,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// A service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not passed yet since the agent started: not advertised.
    Checking,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Checking => "checking",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub passed: bool,
    /// What it saw: `connected`, `HTTP 503`, `exit status 1`, `timed out`, an error.
    pub detail: String,
    /// How long it took, microseconds.
    pub took_us: u64,
    /// When it ended, microseconds since the Unix epoch.
    pub at_unix_us: u64,
}

/// A service's health for operators: state, since when, and the latest outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: State,
    /// When the state last changed (µs since the Unix epoch).
    pub since_unix_us: Option<u64>,
    pub rise: u32,
    pub fall: u32,
    /// Checks passed and failed since the agent started.
    pub passed: u64,
    pub failed: u64,
    /// The newest last.
    pub history: VecDeque<Outcome>,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            state: State::Checking,
            since_unix_us: None,
            rise: rise.max(1),
            fall: fall.max(1),
            passed: 0,
            failed: 0,
            history: VecDeque::new(),
        }
    }

    /// Takes one outcome; true when the state changed.
    pub fn record(&mut self, outcome: Outcome) -> bool {
        let at = outcome.at_unix_us;
        if outcome.passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.history.push_back(outcome);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let streak = |passed: bool| {
            self.history
                .iter()
                .rev()
                .take_while(|o| o.passed == passed)
                .count()
        };
        let next = match self.state {
            // The first pass is enough at start.
            State::Checking if streak(true) >= 1 => State::Healthy,
            State::Checking | State::Healthy if streak(false) >= self.fall as usize => {
                State::Unhealthy
            }
            State::Unhealthy if streak(true) >= self.rise as usize => State::Healthy,
            same => same,
        };
        if next == self.state {
            return false;
        }
        self.state = next;
        self.since_unix_us = Some(at);
        true
    }

    /// Whether the service may be advertised.
    pub fn healthy(&self) -> bool {
        self.state == State::Healthy
    }
}

/// Every checked service's health.
pub type Healths = BTreeMap<ServiceAddr, Health>;

/// Runs every check; publishes each service's health as it changes (and its history with
/// every outcome).
pub fn spawn(checks: Vec<Check>) -> (watch::Receiver<Healths>, Vec<tokio::task::JoinHandle<()>>) {
    let healths: Healths = checks
        .iter()
        .map(|c| (c.service, Health::new(c.rise, c.fall)))
        .collect();
    let (publish, receiver) = watch::channel(healths);
    let (outcomes, mut inbox) = mpsc::channel::<(ServiceAddr, Outcome)>(64);
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = checks
        .into_iter()
        .map(|check| tokio::spawn(run_check(check, outcomes.clone())))
        .collect();
    tasks.push(tokio::spawn(async move {
        while let Some((service, outcome)) = inbox.recv().await {
            publish.send_modify(|healths| {
                let Some(health) = healths.get_mut(&service) else {
                    return;
                };
                let detail = outcome.detail.clone();
                if health.record(outcome) {
                    if health.healthy() {
                        tracing::info!(%service, %detail, "service healthy: advertised");
                    } else {
                        tracing::warn!(%service, %detail, "service unhealthy: withdrawn");
                    }
                }
            });
        }
    }));
    (receiver, tasks)
}

/// One service's check, every interval, until the health task is gone.
async fn run_check(check: Check, outcomes: mpsc::Sender<(ServiceAddr, Outcome)>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let result = tokio::time::timeout(check.timeout, probe(&check.probe)).await;
        let took = started.elapsed();
        let (passed, detail) = match result {
            Ok(Ok(detail)) => (true, detail),
            Ok(Err(detail)) => (false, detail),
            Err(_) => (
                false,
                format!("timed out after {} ms", check.timeout.as_millis()),
            ),
        };
        let outcome = Outcome {
            passed,
            detail,
            took_us: micros(took),
            at_unix_us: micros(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        };
        if outcomes.send((check.service, outcome)).await.is_err() {
            return;
        }
    }
}

/// One check: what it saw, `Err` for a failure.
async fn probe(probe: &Probe) -> Result<String, String> {
    match probe {
        Probe::Tcp(to) => tokio::net::TcpStream::connect(to)
            .await
            .map(|_| "connected".to_owned())
            .map_err(|e| e.to_string()),
        Probe::Http { to, path, status } => http_status(*to, path).await.and_then(|got| {
            if got == *status {
                Ok(format!("HTTP {got}"))
            } else {
                Err(format!("HTTP {got}, not {status}"))
            }
        }),
        Probe::Command(argv) => {
            let (program, arguments) = argv.split_first().ok_or("no command")?;
            let status = tokio::process::Command::new(program)
                .args(arguments)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("{program}: {e}"))?;
            if status.success() {
                Ok("exit status 0".to_owned())
            } else {
                Err(status.to_string())
            }
        }
    }
}

/// The status code of `GET path` on `to` (HTTP/1.1, the connection closed after it).
async fn http_status(to: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| e.to_string())?;
    let host = match to {
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        SocketAddr::V4(v4) => v4.ip().to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: cpn-agent\r\nConnection: close\r\n\r\n",
        to.port()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a status line".to_owned());
        }
        response.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&response) {
            Ok(_) if parsed.code.is_some() => return Ok(parsed.code.unwrap_or_default()),
            Ok(_) if response.len() < 16 * 1024 => {}
            Ok(_) => return Err("no status line in 16 KiB".to_owned()),
            Err(e) => return Err(format!("not HTTP: {e}")),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(passed: bool, at: u64) -> Outcome {
        Outcome {
            passed,
            detail: String::new(),
            took_us: 1,
            at_unix_us: at,
        }
    }

    #[test]
    fn first_pass_then_fall_then_rise() {
        let mut h = Health::new(2, 3);
        assert!(!h.healthy(), "checking: not advertised");
        assert!(
            !h.record(outcome(false, 1)),
            "a failure at start: still checking"
        );
        assert_eq!(h.state, State::Checking);
        assert!(h.record(outcome(true, 2)), "its first pass is enough");
        assert!(h.healthy());
        assert_eq!(h.since_unix_us, Some(2));
        assert!(!h.record(outcome(false, 3)));
        assert!(!h.record(outcome(false, 4)));
        assert!(h.healthy(), "2 failures of 3");
        assert!(h.record(outcome(false, 5)), "the third: unhealthy");
        assert_eq!(h.state, State::Unhealthy);
        assert!(!h.record(outcome(true, 6)), "one pass of 2");
        assert!(!h.record(outcome(false, 7)));
        assert!(!h.record(outcome(true, 8)));
        assert!(h.record(outcome(true, 9)), "two in a row");
        assert!(h.healthy());
        assert_eq!(h.since_unix_us, Some(9));
    }

    #[test]
    fn the_history_keeps_the_latest() {
        let mut h = Health::new(1, 1);
        for i in 0..30 {
            h.record(outcome(i % 2 == 0, i));
        }
        assert_eq!(h.history.len(), HISTORY);
        assert_eq!(h.history.back().map(|o| o.at_unix_us), Some(29));
    }

    /// The three probes against real sockets and processes on loopback.
    #[tokio::test]
    async fn tcp_http_and_command_probes() {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = if asked.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert_eq!(probe(&Probe::Tcp(to)).await, Ok("connected".to_owned()));
        let http = |path: &str, status| Probe::Http {
            to,
            path: path.to_owned(),
            status,
        };
        assert_eq!(probe(&http("/ok", 200)).await, Ok("HTTP 200".to_owned()));
        assert_eq!(
            probe(&http("/down", 200)).await,
            Err("HTTP 503, not 200".to_owned())
        );
        // A closed port refuses.
        let closed = std::net::TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(&Probe::Tcp(closed)).await.is_err());
        let command =
            |argv: &[&str]| Probe::Command(argv.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(
            probe(&command(&["true"])).await,
            Ok("exit status 0".to_owned())
        );
        assert!(probe(&command(&["false"])).await.is_err());
        assert!(probe(&command(&["/nonexistent/check"])).await.is_err());
    }
}
