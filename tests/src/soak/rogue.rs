//! The soak's rogue BGP peer, on the ingress's link: again and again it opens a session with the
//! transit as the neighbor the transit has configured for it (`ROGUE_PEER`, no agent behind it)
//! and sends it malformed messages, and it tries a session from an address the transit has no
//! neighbor for. The bytes are hand-made, as an attacker's would be.
//!
//! What the transit must do: answer each session-ending message with a NOTIFICATION (or close),
//! take the ones RFC 7606 treats as withdraws without ending the session (a close then counts
//! only while the soak had the transit's agent killed), and never open a session with the
//! unconfigured address. The soak also checks that it stays up throughout.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cpn_lab::{ROGUE_AS, ROGUE_PEER, TRANSIT, UNCONFIGURED_PEER},
    lab::Node,
};

const BGP_PORT: u16 = 179;
const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;

/// What the rogue peer saw, over the soak.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RogueReport {
    /// Sessions the transit took up with it (OPEN and KEEPALIVE answered).
    pub sessions: u64,
    /// Malformed messages sent on them.
    pub malformed: u64,
    /// NOTIFICATIONs the transit answered with.
    pub notifications: u64,
    /// Messages RFC 7606 treats as withdraws, after which the session stayed up.
    pub survived: u64,
    /// Attempts from the unconfigured address, all turned away.
    pub refused: u64,
    /// What went against the rules (the soak fails on any).
    pub violations: Vec<String>,
    /// When a session closed without a NOTIFICATION after a message that must not end it, and
    /// after which one: the transit's agent died then, or broke the rules (the soak tells
    /// which, from when it killed that agent).
    pub bare_closes: Vec<(Instant, &'static str)>,
}

/// The rogue peer at work, until dropped or [`Rogue::finish`]ed.
#[derive(Debug)]
pub struct Rogue {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<RogueReport>>>,
}

impl Rogue {
    /// Starts it in `node` (the ingress, where its addresses are).
    pub fn start(node: &Node) -> Self {
        let node = node.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<RogueReport> {
            let _inside = node.enter()?;
            let mut report = RogueReport::default();
            let mut round = 0_usize;
            while !flag.load(Ordering::Relaxed) {
                round += 1;
                let kind = MALFORMED[round % MALFORMED.len()];
                if let Err(error) = session(kind, &mut report) {
                    tracing_note(&format!("rogue: session {round}: {error:#}"));
                }
                if round.is_multiple_of(4) {
                    unconfigured(&mut report);
                }
                std::thread::sleep(Duration::from_millis(700));
            }
            Ok(report)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it and reports.
    pub fn finish(&mut self) -> Result<RogueReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("already finished")?
            .join()
            .map_err(|_| anyhow::anyhow!("the rogue peer's thread panicked"))?
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Only for a failing soak's post-mortem: the rogue's own trouble is not a finding.
fn tracing_note(line: &str) {
    if std::env::var_os("CPN_SOAK_VERBOSE").is_some() {
        eprintln!("{line}");
    }
}

/// A malformed message, and what RFC 7606 (or RFC 4271 §6) makes of it.
#[derive(Clone, Copy, Debug)]
struct Malformed {
    name: &'static str,
    /// The session ends (a NOTIFICATION), or the UPDATE is treated as a withdraw.
    ends_session: bool,
    build: fn() -> Vec<u8>,
}

const MALFORMED: [Malformed; 5] = [
    Malformed {
        name: "ORIGIN of two bytes (treat-as-withdraw, RFC 7606 §7.1)",
        ends_session: false,
        build: || update(&[&[0x40, 1, 2, 0, 0], &as_path(), &mp_reach(16)]),
    },
    Malformed {
        name: "MP_REACH_NLRI with a 7-byte next hop (session reset, RFC 7606 §7.11)",
        ends_session: true,
        build: || update(&[&[0x40, 1, 1, 0], &as_path(), &mp_reach(7)]),
    },
    Malformed {
        name: "attribute longer than the message (session reset, RFC 7606 §4)",
        ends_session: true,
        build: || update(&[&[0x40, 1, 1, 0], &[0x40, 2, 200, 2, 1, 0, 0]]),
    },
    Malformed {
        name: "a broken marker (Message Header Error, RFC 4271 §6.1)",
        ends_session: true,
        build: || {
            let mut m = message(KEEPALIVE, &[]);
            m[3] = 0;
            m
        },
    },
    Malformed {
        name: "a length of 18 (Message Header Error, RFC 4271 §6.1)",
        ends_session: true,
        build: || {
            let mut m = message(KEEPALIVE, &[]);
            m[17] = 18;
            m
        },
    },
];

/// One session as the configured rogue: up, one malformed message, and the transit's answer.
fn session(kind: Malformed, report: &mut RogueReport) -> Result<()> {
    let mut stream = connect_from(ROGUE_PEER)?;
    stream.write_all(&open())?;
    // The transit may still be idle after the last session's NOTIFICATION: it closes.
    let Some((OPEN, _)) = read_message(&mut stream)? else {
        return Ok(());
    };
    stream.write_all(&message(KEEPALIVE, &[]))?;
    loop {
        match read_message(&mut stream)? {
            Some((KEEPALIVE, _)) => break,
            Some((NOTIFICATION | OPEN, _)) | None => return Ok(()),
            Some(_) => {}
        }
    }
    report.sessions += 1;
    stream.write_all(&(kind.build)())?;
    report.malformed += 1;
    // The answer: a NOTIFICATION and the close, or nothing for a second (the session goes
    // on; the transit's KEEPALIVEs may come meanwhile).
    let deadline = Instant::now() + Duration::from_secs(if kind.ends_session { 3 } else { 1 });
    let mut notified = false;
    let mut closed = false;
    while Instant::now() < deadline && !closed {
        match read_message(&mut stream) {
            Ok(Some((NOTIFICATION, _))) => notified = true,
            Ok(Some(_)) => {}
            Err(e) if is_timeout(&e) => {}
            Ok(None) | Err(_) => closed = true,
        }
    }
    if notified {
        report.notifications += 1;
    }
    match (kind.ends_session, notified || closed) {
        (true, false) => report.violations.push(format!(
            "after {}, the transit kept the session up",
            kind.name
        )),
        (false, true) if notified => report.violations.push(format!(
            "after {}, the transit ended the session with a NOTIFICATION",
            kind.name
        )),
        (false, true) => report.bare_closes.push((Instant::now(), kind.name)),
        (false, false) => report.survived += 1,
        (true, true) => {}
    }
    Ok(())
}

/// A session attempt from an address the transit has no neighbor for: it must not answer
/// with an OPEN.
fn unconfigured(report: &mut RogueReport) {
    let Ok(mut stream) = connect_from(UNCONFIGURED_PEER) else {
        report.refused += 1;
        return;
    };
    let _ = stream.write_all(&open());
    match read_message(&mut stream) {
        Ok(Some((OPEN, _))) => report
            .violations
            .push("the transit opened a session with an unconfigured peer".into()),
        _ => report.refused += 1,
    }
}

fn is_timeout(error: &anyhow::Error) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

fn connect_from(source: &str) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    let source: Ipv6Addr = source.parse()?;
    socket.bind(&SocketAddr::V6(SocketAddrV6::new(source, 0, 0, 0)).into())?;
    let transit: Ipv6Addr = TRANSIT.parse()?;
    let target = SocketAddr::V6(SocketAddrV6::new(transit, BGP_PORT, 0, 0));
    socket.connect_timeout(&target.into(), Duration::from_secs(1))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

/// The next message's type and body; `None` when the transit closed the connection.
fn read_message(stream: &mut TcpStream) -> Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0; 19];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(19..=4096).contains(&len) {
        bail!("the transit sent a message of length {len}");
    }
    let mut body = vec![0; len - 19];
    stream.read_exact(&mut body)?;
    Ok(Some((header[18], body)))
}

/// A BGP message: marker, length, type, body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    let len = u16::try_from(19 + body.len()).expect("short message");
    m.extend_from_slice(&len.to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// The rogue's OPEN: AS `ROGUE_AS`, hold time 9 s, MP-BGP IPv6 unicast, 4-byte ASN.
fn open() -> Vec<u8> {
    let asn = ROGUE_AS.to_be_bytes();
    let two_byte = u16::try_from(ROGUE_AS).expect("a 2-byte ASN").to_be_bytes();
    let capabilities = [
        &[1, 4, 0, 2, 0, 1][..],
        &[65, 4, asn[0], asn[1], asn[2], asn[3]][..],
    ]
    .concat();
    let mut parameters = vec![2, u8::try_from(capabilities.len()).expect("short")];
    parameters.extend(capabilities);
    let mut body = vec![4, two_byte[0], two_byte[1], 0, 9, 10, 99, 99, 99];
    body.push(u8::try_from(parameters.len()).expect("short"));
    body.extend(parameters);
    message(OPEN, &body)
}

/// An UPDATE with no withdrawn routes and these path attributes.
fn update(attributes: &[&[u8]]) -> Vec<u8> {
    let attributes = attributes.concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(
        &u16::try_from(attributes.len())
            .expect("short")
            .to_be_bytes(),
    );
    body.extend(attributes);
    message(UPDATE, &body)
}

/// `AS_PATH`: one `AS_SEQUENCE` of the rogue's AS.
fn as_path() -> Vec<u8> {
    let asn = ROGUE_AS.to_be_bytes();
    vec![0x40, 2, 6, 2, 1, asn[0], asn[1], asn[2], asn[3]]
}

/// `MP_REACH_NLRI` for IPv6 unicast, a next hop of `next_hop_len` bytes, `2001:db8:bad::/48`.
fn mp_reach(next_hop_len: u8) -> Vec<u8> {
    let mut value = vec![0, 2, 1, next_hop_len];
    value.extend((0..next_hop_len).map(|i| if i == 0 { 0x20 } else { i }));
    value.push(0);
    value.extend([48, 0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad]);
    let mut attribute = vec![0x80, 14, u8::try_from(value.len()).expect("short")];
    attribute.extend(value);
    attribute
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rogue_messages_are_framed_as_bgp() {
        let open = open();
        assert_eq!(
            usize::from(u16::from_be_bytes([open[16], open[17]])),
            open.len()
        );
        assert_eq!(open[18], OPEN);
        for kind in MALFORMED {
            let m = (kind.build)();
            assert!(m.len() >= 19, "{}", kind.name);
        }
        // The treat-as-withdraw UPDATE is well framed: only its ORIGIN is wrong.
        let m = (MALFORMED[0].build)();
        assert_eq!(usize::from(u16::from_be_bytes([m[16], m[17]])), m.len());
        let attributes = usize::from(u16::from_be_bytes([m[21], m[22]]));
        assert_eq!(23 + attributes, m.len());
    }
}
