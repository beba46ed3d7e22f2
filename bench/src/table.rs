//! A minimal BGP speaker that sends a full table, for the big-table part (bigtable.rs).
//!
//! It opens a session (MP-BGP IPv4 and IPv6 unicast, 4-byte ASN, route refresh; no ADD-PATH,
//! as a router sending its table usually has none), sends the generated routes packed many
//! prefixes per UPDATE (IPv4 as classic NLRI with `NEXT_HOP`, IPv6 in `MP_REACH_NLRI`; every
//! UPDATE with `ORIGIN`, its own `AS_PATH` and a community), then End-of-RIB for both
//! families (RFC 4724 §2: an empty UPDATE for IPv4, an `MP_UNREACH_NLRI` without NLRI for
//! IPv6), and keeps the session up with keepalives until it is closed. Messages are built
//! and framed by netgauze-bgp-pkt through cpn-agent's session codec.
//!
//! ```text
//!   Table::generate ──▶ UPDATE bytes, in chunks of whole messages (before the clock starts)
//!   Session::open   ──▶ OPEN / KEEPALIVE exchanged: Established
//!   Session::send   ──▶ every chunk, then End-of-RIB        (reader thread: drains the peer,
//!                                                             keeps its NOTIFICATION if any;
//!                                                            keepalive thread: every hold/3)
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::BytesMut;
use cpn_agent::bgp::{errors, route::AddPath, speaker};
use ipnet::{Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{BgpCapability, FourOctetAsCapability, MultiProtocolExtensionsCapability},
    community::Community,
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    path_attribute::{
        As4PathSegment, AsPath, AsPathSegmentType, Communities, MpReach, MpUnreach, NextHop,
        Origin, PathAttribute, PathAttributeValue,
    },
    update::BgpUpdateMessage,
};
use netgauze_iana::address_family::AddressType;
use tokio_util::codec::{Decoder as _, Encoder as _};

/// RFC 4271 §4: no message is longer (we offer no extended messages, RFC 8654).
const MAX_MESSAGE: usize = 4096;
/// Prefixes per UPDATE: as many as fit in 4096 bytes with the longest `AS_PATH` we send
/// (IPv4 /24: 4 bytes each; IPv6 /48: 7 bytes each inside `MP_REACH_NLRI`).
const IPV4_PER_UPDATE: usize = 1000;
const IPV6_PER_UPDATE: usize = 570;
/// Whole messages are written in chunks of about this size, so that a keepalive never lands
/// inside a message.
const CHUNK: usize = 64 * 1024;
/// AS 23456 (RFC 6793) in the OPEN's two-byte field when the AS needs four.
const AS_TRANS: u16 = 23456;

/// Who sends the table.
#[derive(Clone, Copy, Debug)]
pub struct Sender {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// `NEXT_HOP` of the IPv4 routes and the next hop in `MP_REACH_NLRI` of the IPv6 ones.
    pub next_hop_v4: Ipv4Addr,
    pub next_hop_v6: Ipv6Addr,
    pub hold_time: Duration,
}

/// A generated table, encoded.
#[derive(Debug)]
pub struct Table {
    pub ipv4: usize,
    pub ipv6: usize,
    pub updates: usize,
    pub bytes: usize,
    /// Whole UPDATE messages, End-of-RIB last.
    chunks: Vec<Vec<u8>>,
}

/// The `n`th IPv4 prefix: /24s upwards from 11.0.0.0 (1M of them end at 26.255.255.0/24).
fn ipv4_prefix(n: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    let n = u32::try_from(n).expect("fewer than 2^24 prefixes");
    Ipv4Net::new(Ipv4Addr::from(base + (n << 8)), 24).expect("a /24")
}

/// The `n`th IPv6 prefix: /48s upwards from `2400::/48`.
fn ipv6_prefix(n: usize) -> Ipv6Net {
    let n = u32::try_from(n).expect("fewer than 2^32 prefixes");
    let high = u16::try_from(n >> 16).expect("16 bits");
    let low = u16::try_from(n & 0xffff).expect("16 bits");
    let address = Ipv6Addr::new(0x2400, high, low, 0, 0, 0, 0, 0);
    Ipv6Net::new(address, 48).expect("a /48")
}

fn attribute(optional: bool, transitive: bool, value: PathAttributeValue) -> PathAttribute {
    PathAttribute::from(optional, transitive, false, true, value)
        .unwrap_or_else(|(_, e)| panic!("attribute flags: {e:?}"))
}

/// The attributes every UPDATE has: `ORIGIN`, an `AS_PATH` of 2 to 4 ASes (the sender's, 0 to
/// 2 transits and an origin AS that differs from one UPDATE to the next), a community.
fn common_attributes(sender: &Sender, k: usize) -> Vec<PathAttribute> {
    let k32 = u32::try_from(k).expect("fewer than 2^32 UPDATEs");
    let mut path = vec![sender.asn];
    path.extend((0..k % 3).map(|t| 64_600 + u32::try_from(t).expect("small") + k32 % 7));
    path.push(100_000 + k32);
    vec![
        attribute(false, true, PathAttributeValue::Origin(Origin::IGP)),
        attribute(
            false,
            true,
            PathAttributeValue::AsPath(AsPath::As4PathSegments(
                vec![As4PathSegment::new(AsPathSegmentType::AsSequence, path)].into(),
            )),
        ),
        attribute(
            true,
            true,
            PathAttributeValue::Communities(Communities::new(vec![Community::new(
                (64_512 << 16) | (k32 & 0xffff),
            )])),
        ),
    ]
}

impl Table {
    /// `ipv4` and `ipv6` routes, encoded as UPDATEs from `sender`, and End-of-RIB.
    pub fn generate(sender: &Sender, ipv4: usize, ipv6: usize) -> Result<Self> {
        let mut codec = speaker::codec(
            AddPath::default(),
            cpn_agent::bgp::metric_attr::DEFAULT_TYPE_CODE,
        );
        let mut messages = Vec::new();
        let mut k = 0;
        for start in (0..ipv4).step_by(IPV4_PER_UPDATE) {
            let nlri: Vec<Ipv4UnicastAddress> = (start..ipv4.min(start + IPV4_PER_UPDATE))
                .map(|n| {
                    Ipv4UnicastAddress::new(
                        None,
                        Ipv4Unicast::from_net(ipv4_prefix(n)).expect("unicast"),
                    )
                })
                .collect();
            let mut attrs = common_attributes(sender, k);
            attrs.push(attribute(
                false,
                true,
                PathAttributeValue::NextHop(NextHop::new(sender.next_hop_v4)),
            ));
            messages.push(BgpMessage::Update(BgpUpdateMessage::new(
                vec![],
                attrs,
                nlri,
            )));
            k += 1;
        }
        for start in (0..ipv6).step_by(IPV6_PER_UPDATE) {
            let nlri: Vec<Ipv6UnicastAddress> = (start..ipv6.min(start + IPV6_PER_UPDATE))
                .map(|n| {
                    Ipv6UnicastAddress::new(
                        None,
                        Ipv6Unicast::from_net(ipv6_prefix(n)).expect("unicast"),
                    )
                })
                .collect();
            let mut attrs = common_attributes(sender, k);
            attrs.push(attribute(
                true,
                false,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: sender.next_hop_v6,
                    next_hop_local: None,
                    nlri: nlri.into(),
                }),
            ));
            messages.push(BgpMessage::Update(BgpUpdateMessage::new(
                vec![],
                attrs,
                vec![],
            )));
            k += 1;
        }
        let updates = messages.len();
        // End-of-RIB (RFC 4724 §2).
        messages.push(BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![],
            vec![],
        )));
        messages.push(BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![attribute(
                true,
                false,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                    nlri: vec![].into(),
                }),
            )],
            vec![],
        )));
        let mut chunks = vec![Vec::new()];
        let mut bytes = 0;
        let mut buf = BytesMut::new();
        for message in messages {
            buf.clear();
            codec
                .encode(message, &mut buf)
                .context("encoding an UPDATE")?;
            ensure!(
                buf.len() <= MAX_MESSAGE,
                "an UPDATE of {} bytes: fewer prefixes per UPDATE",
                buf.len()
            );
            bytes += buf.len();
            let last = chunks.last_mut().expect("one chunk at least");
            if last.len() + buf.len() > CHUNK {
                chunks.push(buf.to_vec());
            } else {
                last.extend_from_slice(&buf);
            }
        }
        Ok(Self {
            ipv4,
            ipv6,
            updates,
            bytes,
            chunks,
        })
    }

    pub fn routes(&self) -> usize {
        self.ipv4 + self.ipv6
    }

    pub const fn per_update() -> (usize, usize) {
        (IPV4_PER_UPDATE, IPV6_PER_UPDATE)
    }
}

/// An Established session to the peer under test.
#[derive(Debug)]
pub struct Session {
    writer: Arc<Mutex<TcpStream>>,
    /// The same socket, to shut it down while a write is blocked.
    socket: TcpStream,
    stop: Arc<AtomicBool>,
    /// The peer's NOTIFICATION, if it sent one, or why the connection ended.
    ended: Arc<Mutex<Option<String>>>,
    threads: Vec<JoinHandle<()>>,
}

fn encode(message: BgpMessage) -> Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    speaker::codec(
        AddPath::default(),
        cpn_agent::bgp::metric_attr::DEFAULT_TYPE_CODE,
    )
    .encode(message, &mut buf)
    .context("encoding a message")?;
    Ok(buf.to_vec())
}

/// Reads the next message from `stream`, with `buf` holding what was read past the last one.
fn read_message(
    stream: &mut TcpStream,
    codec: &mut errors::Codec,
    buf: &mut BytesMut,
) -> Result<Option<BgpMessage>> {
    loop {
        if let Some((message, _)) = codec
            .decode(buf)
            .map_err(|e| anyhow::anyhow!("undecodable message from the peer: {e}"))?
        {
            return Ok(Some(message));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to `to`, again every 100 ms until `deadline` (the peer may still be starting).
pub fn connect(to: SocketAddr, deadline: Duration) -> Result<TcpStream> {
    let since = Instant::now();
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(e) if since.elapsed() > deadline => {
                bail!("could not connect to the peer at {to} within {deadline:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl Session {
    /// OPEN and KEEPALIVE both ways: the session is Established when this returns.
    pub fn open(mut stream: TcpStream, sender: &Sender) -> Result<Self> {
        stream.set_nodelay(true)?;
        let capabilities = vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv4Unicast,
            )),
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv6Unicast,
            )),
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(sender.asn)),
            BgpCapability::RouteRefresh,
        ];
        let hold = u16::try_from(sender.hold_time.as_secs()).unwrap_or(u16::MAX);
        let open = BgpMessage::Open(BgpOpenMessage::new(
            u16::try_from(sender.asn).unwrap_or(AS_TRANS),
            hold,
            sender.router_id,
            vec![BgpOpenMessageParameter::new_capabilities(capabilities)],
        ));
        stream.write_all(&encode(open)?)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut codec = speaker::codec(
            AddPath::default(),
            cpn_agent::bgp::metric_attr::DEFAULT_TYPE_CODE,
        );
        let mut buf = BytesMut::new();
        let mut their_hold = hold;
        let mut opened = false;
        loop {
            match read_message(&mut stream, &mut codec, &mut buf)
                .context("waiting for the peer's OPEN and KEEPALIVE")?
            {
                Some(BgpMessage::Open(open)) => {
                    their_hold = open.hold_time();
                    opened = true;
                    stream.write_all(&encode(BgpMessage::KeepAlive)?)?;
                }
                Some(BgpMessage::KeepAlive) if opened => break,
                Some(BgpMessage::Notification(n)) => bail!("the peer refused the session: {n:?}"),
                Some(_) => {}
                None => bail!("the peer closed the connection during the OPEN exchange"),
            }
        }
        stream.set_read_timeout(None)?;
        let negotiated = Duration::from_secs(u64::from(hold.min(their_hold)));
        let keepalive = (negotiated / 3).max(Duration::from_secs(1));
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let socket = stream.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(Mutex::new(None));
        let reader = {
            let ended = Arc::clone(&ended);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // Whatever the peer sends (keepalives, its own routes) is read and dropped.
                let why = loop {
                    match read_message(&mut stream, &mut codec, &mut buf) {
                        Ok(Some(BgpMessage::Notification(n))) => {
                            break format!("NOTIFICATION {n:?}");
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break "the peer closed the connection".to_owned(),
                        Err(e) => break format!("{e:#}"),
                    }
                };
                if !stop.load(Ordering::Relaxed) {
                    *ended.lock().expect("lock") = Some(why);
                }
            })
        };
        let keeper = {
            let writer = Arc::clone(&writer);
            let stop = Arc::clone(&stop);
            let message = encode(BgpMessage::KeepAlive)?;
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= keepalive {
                        last = Instant::now();
                        if writer.lock().expect("lock").write_all(&message).is_err() {
                            return;
                        }
                    }
                }
            })
        };
        Ok(Self {
            writer,
            socket,
            stop,
            ended,
            threads: vec![reader, keeper],
        })
    }

    /// Sends the table and End-of-RIB; returns when the kernel has taken the last byte.
    pub fn send(&self, table: &Table) -> Result<()> {
        for chunk in &table.chunks {
            self.writer
                .lock()
                .expect("lock")
                .write_all(chunk)
                .context("sending the table")?;
        }
        Ok(())
    }

    /// Closes the connection, which also ends a [`Session::send`] blocked on a peer that
    /// stopped reading.
    pub fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Why the session ended, if the peer ended it.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().expect("lock").clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.abort();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender {
            asn: 4_200_000_200,
            router_id: Ipv4Addr::new(10, 255, 0, 1),
            next_hop_v4: Ipv4Addr::new(10, 255, 0, 1),
            next_hop_v6: "2001:db8:ff::1".parse().unwrap(),
            hold_time: Duration::from_secs(90),
        }
    }

    #[test]
    fn the_table_decodes_to_its_routes_and_ends_with_end_of_rib() {
        let table = Table::generate(&sender(), 2500, 1200).unwrap();
        assert_eq!(table.updates, 3 + 3);
        let mut codec = speaker::codec(
            AddPath::default(),
            cpn_agent::bgp::metric_attr::DEFAULT_TYPE_CODE,
        );
        let mut buf = BytesMut::from(table.chunks.concat().as_slice());
        let (mut v4, mut v6, mut messages) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((BgpMessage::Update(update), _)) = codec.decode(&mut buf).unwrap() {
            let parsed = cpn_agent::bgp::route::parse(&update, 255);
            for r in &parsed.announced {
                match r.prefix {
                    ipnet::IpNet::V4(p) => v4.push(p),
                    ipnet::IpNet::V6(p) => v6.push(p),
                }
            }
            messages.push(update);
        }
        assert!(buf.is_empty());
        assert_eq!(v4.len(), 2500);
        assert_eq!(v6.len(), 1200);
        assert_eq!(v4[2499], ipv4_prefix(2499));
        assert_eq!(v6[1199], "2400:0:4af::/48".parse::<Ipv6Net>().unwrap());
        // End-of-RIB: an empty UPDATE, then MP_UNREACH_NLRI for IPv6 unicast without NLRI.
        let eor = &messages[messages.len() - 2..];
        assert!(eor[0].path_attributes().is_empty() && eor[0].nlri().is_empty());
        assert!(matches!(
            eor[1].path_attributes()[0].value(),
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) if nlri.is_empty()
        ));
    }

    #[test]
    fn a_full_size_update_fits_in_4096_bytes() {
        // Generating checks every message's size.
        let table = Table::generate(&sender(), 3 * IPV4_PER_UPDATE, 3 * IPV6_PER_UPDATE).unwrap();
        assert_eq!(table.updates, 6);
    }
}
