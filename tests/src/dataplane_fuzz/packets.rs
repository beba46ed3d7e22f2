//! The fuzzer's packets: a generator of frames made of every header the programs parse
//! (Ethernet, VLAN tags, IPv4 with options and fragments, IPv6 with chains of extension
//! headers, SRHs with TLVs, TCP, UDP, ICMP errors quoting flows, packets inside packets), with
//! addresses drawn from what the fuzzed data plane knows; then a mutator that cuts them short,
//! makes their length fields lie and flips their bits.
//!
//! Written independently of the eBPF parser: it knows the wire formats from their RFCs, not
//! from our code, so it imagines what the parser's authors did not.

use std::net::{Ipv4Addr, Ipv6Addr};

use rand::{RngExt as _, SeedableRng as _, rngs::SmallRng};

use crate::packet::{CLIENT_MAC, ROUTER_MAC};

/// The addresses packets are sent from and to: those the data plane has entries for (service
/// addresses, local SIDs, nodes' segments), routed and unrouted ones, and odd ones.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    pub v6: Vec<Ipv6Addr>,
    pub v4: Vec<Ipv4Addr>,
    /// TCP/UDP ports worth hitting (services with a port).
    pub ports: Vec<u16>,
}

/// A length or count field of a generated packet: where it is and how wide (1 or 2 bytes).
#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: u8,
}

/// Bytes being built, and their fields worth lying in.
#[derive(Clone, Debug, Default)]
struct Draft {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl Draft {
    fn field(&mut self, width: u8) {
        self.fields.push(Field {
            at: self.bytes.len(),
            width,
        });
    }

    /// Appends `other`, keeping its fields.
    fn append(&mut self, other: Self) {
        let base = self.bytes.len();
        self.fields.extend(other.fields.into_iter().map(|f| Field {
            at: f.at + base,
            ..f
        }));
        self.bytes.extend(other.bytes);
    }
}

/// IP protocol numbers and extension headers.
mod number {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPV4: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// Values a mutated field takes: the edges and the numbers parsers branch on.
const INTERESTING: [u16; 16] = [
    0, 1, 2, 3, 4, 7, 8, 16, 40, 41, 43, 0x7f, 0x80, 0xff, 0x100, 0xffff,
];

/// Makes fuzz packets from a seed: the same seed, the same packets.
#[derive(Debug)]
pub struct Generator {
    rng: SmallRng,
    pools: Pools,
}

impl Generator {
    pub fn new(seed: u64, pools: Pools) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            pools,
        }
    }

    /// The next packet: well formed about a third of the time, mutated otherwise.
    pub fn packet(&mut self) -> Vec<u8> {
        let mut draft = self.frame();
        if self.rng.random_ratio(2, 3) {
            for _ in 0..self.rng.random_range(1..=3) {
                self.mutate(&mut draft);
            }
        }
        draft.bytes
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_ratio(percent, 100)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.random()).collect()
    }

    fn v6(&mut self) -> Ipv6Addr {
        if self.pools.v6.is_empty() || self.chance(10) {
            return Ipv6Addr::from(self.rng.random::<u128>());
        }
        self.pools.v6[self.rng.random_range(0..self.pools.v6.len())]
    }

    fn v4(&mut self) -> Ipv4Addr {
        if self.pools.v4.is_empty() || self.chance(10) {
            return Ipv4Addr::from(self.rng.random::<u32>());
        }
        self.pools.v4[self.rng.random_range(0..self.pools.v4.len())]
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..4) {
            0 if !self.pools.ports.is_empty() => {
                self.pools.ports[self.rng.random_range(0..self.pools.ports.len())]
            }
            1 => [0, 53, 80, 443][self.rng.random_range(0..4)],
            _ => self.rng.random(),
        }
    }

    fn hop_limit(&mut self) -> u8 {
        [0, 1, 2, 64, 255, self.rng.random()][self.rng.random_range(0..6)]
    }

    /// Ethernet (maybe one or two VLAN tags), then IPv6, IPv4, ARP or anything.
    fn frame(&mut self) -> Draft {
        let mut draft = Draft::default();
        draft.bytes.extend_from_slice(&ROUTER_MAC);
        draft.bytes.extend_from_slice(&CLIENT_MAC);
        match self.rng.random_range(0..100) {
            0..80 => {}
            80..95 => draft.bytes.extend_from_slice(&self.vlan_tag(0x8100)),
            _ => {
                let outer = self.vlan_tag(0x88a8);
                draft.bytes.extend_from_slice(&outer);
                draft.bytes.extend_from_slice(&self.vlan_tag(0x8100));
            }
        }
        let (ether_type, l3) = match self.rng.random_range(0..100) {
            0..62 => (0x86dd, self.ipv6(0)),
            62..94 => (0x0800, self.ipv4(0)),
            94..97 => (0x0806, self.arp()),
            _ => {
                let len = self.rng.random_range(0..80);
                (
                    self.rng.random(),
                    Draft {
                        bytes: self.bytes(len),
                        fields: Vec::new(),
                    },
                )
            }
        };
        draft.bytes.extend_from_slice(&u16::to_be_bytes(ether_type));
        draft.append(l3);
        draft
    }

    fn vlan_tag(&mut self, tpid: u16) -> [u8; 4] {
        let [a, b] = tpid.to_be_bytes();
        let [c, d] = (self.rng.random::<u16>()).to_be_bytes();
        [a, b, c, d]
    }

    fn arp(&mut self) -> Draft {
        let mut bytes = vec![0, 1, 8, 0, 6, 4, 0, 1];
        bytes.extend_from_slice(&CLIENT_MAC);
        bytes.extend_from_slice(&self.v4().octets());
        bytes.extend_from_slice(&[0; 6]);
        bytes.extend_from_slice(&self.v4().octets());
        Draft {
            bytes,
            fields: Vec::new(),
        }
    }

    /// An IPv6 packet; `depth` > 0 inside another packet (no third level).
    fn ipv6(&mut self, depth: u8) -> Draft {
        let (src, dst) = (self.v6(), self.v6());
        let chain_len = match self.rng.random_range(0..100) {
            0..45 => 0,
            45..88 => self.rng.random_range(1..=3),
            88..96 => self.rng.random_range(4..=6),
            _ => self.rng.random_range(7..=12),
        };
        let mut kinds: Vec<u8> = (0..chain_len)
            .map(|i| {
                match self.rng.random_range(0..100) {
                    // Hop-by-Hop belongs first; elsewhere it is a finding too.
                    0..15 if i == 0 || self.chance(20) => number::HOP_BY_HOP,
                    0..30 => number::DEST_OPTS,
                    30..70 => number::ROUTING,
                    70..88 => number::FRAGMENT,
                    88..95 => number::AH,
                    _ => number::ESP,
                }
            })
            .collect();
        // ESP hides what follows: the chain ends there.
        if let Some(esp) = kinds.iter().position(|&k| k == number::ESP) {
            kinds.truncate(esp + 1);
        }
        let (upper_protocol, upper) = if kinds.last() == Some(&number::ESP) {
            let len = self.rng.random_range(8..64);
            (
                number::NO_NEXT,
                Draft {
                    bytes: self.bytes(len),
                    fields: Vec::new(),
                },
            )
        } else {
            self.upper(true, depth)
        };
        let mut next_headers = kinds.clone();
        next_headers.push(upper_protocol);

        let mut body = Draft::default();
        let mut routed_dst = None;
        for (i, &kind) in kinds.iter().enumerate() {
            let next = next_headers[i + 1];
            let header = match kind {
                number::HOP_BY_HOP | number::DEST_OPTS => self.options_header(next),
                number::ROUTING => {
                    let (header, active) = self.routing_header(next);
                    routed_dst = routed_dst.or(active);
                    header
                }
                number::FRAGMENT => self.fragment_header(next),
                number::AH => self.auth_header(next),
                _ => self.esp_header(),
            };
            body.append(header);
        }
        body.append(upper);

        let mut draft = Draft::default();
        let first = *next_headers.first().unwrap_or(&upper_protocol);
        let traffic_flow: u32 = (6 << 28) | (self.rng.random::<u32>() & 0x0fff_ffff);
        draft.bytes.extend_from_slice(&traffic_flow.to_be_bytes());
        draft.field(2);
        let payload_len = u16::try_from(body.bytes.len()).unwrap_or(u16::MAX);
        draft.bytes.extend_from_slice(&payload_len.to_be_bytes());
        draft.field(1);
        draft.bytes.push(first);
        let hop_limit = self.hop_limit();
        draft.bytes.push(hop_limit);
        draft.bytes.extend_from_slice(&src.octets());
        // The destination a source-routed packet has now: the SRH's active segment.
        let dst = routed_dst.filter(|_| self.chance(70)).unwrap_or(dst);
        draft.bytes.extend_from_slice(&dst.octets());
        draft.append(body);
        draft
    }

    /// Hop-by-Hop or Destination Options: `Pad1`, `PadN`, Router Alert, unknown options.
    fn options_header(&mut self, next: u8) -> Draft {
        let units = self.rng.random_range(0..=3usize);
        let mut draft = Draft::default();
        draft.bytes.push(next);
        draft.field(1);
        draft.bytes.push(u8::try_from(units).unwrap_or(0));
        let end = 8 * (units + 1);
        while draft.bytes.len() < end {
            let room = end - draft.bytes.len();
            match self.rng.random_range(0..4) {
                0 => draft.bytes.push(0),
                1 if room >= 4 => draft.bytes.extend_from_slice(&[5, 2, 0, 0]),
                2 if room >= 3 => {
                    let len = self.rng.random_range(0..=room - 2);
                    let option_type = self.rng.random();
                    draft.bytes.push(option_type);
                    draft.field(1);
                    draft.bytes.push(u8::try_from(len).unwrap_or(0));
                    let data = self.bytes(len);
                    draft.bytes.extend(data);
                }
                _ if room >= 2 => {
                    draft.bytes.push(1);
                    draft.bytes.push(u8::try_from(room - 2).unwrap_or(0));
                    draft.bytes.extend(std::iter::repeat_n(0, room - 2));
                }
                _ => draft.bytes.push(0),
            }
        }
        draft
    }

    /// A routing header: mostly an SRH (RFC 8754) with segments from the pools and TLVs, else
    /// another type. Also returns the SRH's active segment.
    fn routing_header(&mut self, next: u8) -> (Draft, Option<Ipv6Addr>) {
        let mut draft = Draft::default();
        if self.chance(15) {
            // Type 0 (deprecated), 2 (mobility), 3 (RPL) or anything: Segments Left decides.
            let units = self.rng.random_range(0..=4usize);
            draft.bytes.push(next);
            draft.field(1);
            draft.bytes.push(u8::try_from(units).unwrap_or(0));
            let routing_type = [0, 2, 3, self.rng.random()][self.rng.random_range(0..4)];
            draft.bytes.push(routing_type);
            draft.field(1);
            draft.bytes.push(self.rng.random_range(0..4));
            let rest = self.bytes(4 + 8 * units);
            draft.bytes.extend(rest);
            return (draft, None);
        }
        let segments: Vec<Ipv6Addr> = (0..self.rng.random_range(1..=8))
            .map(|_| self.v6())
            .collect();
        let tlvs = self.srh_tlvs();
        let count = segments.len();
        let segments_left = if self.chance(90) {
            self.rng.random_range(0..count)
        } else {
            self.rng.random_range(0..=255)
        };
        draft.bytes.push(next);
        draft.field(1);
        draft
            .bytes
            .push(u8::try_from((16 * count + tlvs.len()) / 8).unwrap_or(u8::MAX));
        draft.bytes.push(4);
        draft.field(1);
        draft
            .bytes
            .push(u8::try_from(segments_left).unwrap_or(u8::MAX));
        draft.field(1);
        draft.bytes.push(u8::try_from(count - 1).unwrap_or(u8::MAX));
        draft.bytes.push(self.rng.random());
        draft
            .bytes
            .extend_from_slice(&self.rng.random::<u16>().to_be_bytes());
        // The SRH lists segments last first.
        for segment in segments.iter().rev() {
            draft.bytes.extend_from_slice(&segment.octets());
        }
        draft.bytes.extend(tlvs);
        let active = segments
            .len()
            .checked_sub(segments_left + 1)
            .map(|i| segments[i]);
        (draft, active)
    }

    /// SRH TLVs (RFC 8754 §2.1): `Pad1`, `PadN`, HMAC, unknown; padded to 8 bytes.
    fn srh_tlvs(&mut self) -> Vec<u8> {
        let mut tlvs = Vec::new();
        for _ in 0..self.rng.random_range(0..=2) {
            match self.rng.random_range(0..4) {
                0 => tlvs.push(0),
                1 => {
                    let len = self.rng.random_range(0..6);
                    tlvs.extend_from_slice(&[4, len]);
                    tlvs.extend(std::iter::repeat_n(0, usize::from(len)));
                }
                2 => {
                    // HMAC: type 5, length, D flag and reserved, key id, then 32 bytes.
                    tlvs.extend_from_slice(&[5, 38, 0, 0]);
                    let key = self.bytes(4 + 32);
                    tlvs.extend(key);
                }
                _ => {
                    let (kind, len) = (self.rng.random(), self.rng.random_range(0..12));
                    tlvs.extend_from_slice(&[kind, len]);
                    let data = self.bytes(usize::from(len));
                    tlvs.extend(data);
                }
            }
        }
        while tlvs.len() % 8 != 0 {
            tlvs.push(0);
        }
        tlvs
    }

    fn fragment_header(&mut self, next: u8) -> Draft {
        let mut draft = Draft::default();
        draft.bytes.extend_from_slice(&[next, 0]);
        let offset: u16 = if self.chance(60) {
            0
        } else {
            self.rng.random_range(1..0x2000)
        };
        let more = u16::from(self.chance(60));
        draft.field(2);
        draft
            .bytes
            .extend_from_slice(&(offset << 3 | more).to_be_bytes());
        draft
            .bytes
            .extend_from_slice(&self.rng.random::<u32>().to_be_bytes());
        draft
    }

    /// AH (RFC 4302): its length is in 4-byte units, minus 2.
    fn auth_header(&mut self, next: u8) -> Draft {
        let words = self.rng.random_range(1..=6usize) * 2;
        let mut draft = Draft::default();
        draft.bytes.push(next);
        draft.field(1);
        draft.bytes.push(u8::try_from(words - 2).unwrap_or(0));
        let rest = self.bytes(4 * words - 2);
        draft.bytes.extend(rest);
        draft
    }

    fn esp_header(&mut self) -> Draft {
        Draft {
            bytes: self.bytes(8),
            fields: Vec::new(),
        }
    }

    /// An IPv4 packet, sometimes with options, a fragment.
    fn ipv4(&mut self, depth: u8) -> Draft {
        let (src, dst) = (self.v4(), self.v4());
        let option_words = if self.chance(80) {
            0
        } else {
            self.rng.random_range(1..=10usize)
        };
        let (protocol, upper) = self.upper(false, depth);
        let header_len = 20 + 4 * option_words;
        let total = u16::try_from(header_len + upper.bytes.len()).unwrap_or(u16::MAX);
        let mut draft = Draft::default();
        draft.field(1);
        draft
            .bytes
            .push(0x40 | u8::try_from(5 + option_words).unwrap_or(15));
        draft.bytes.push(self.rng.random());
        draft.field(2);
        draft.bytes.extend_from_slice(&total.to_be_bytes());
        draft
            .bytes
            .extend_from_slice(&self.rng.random::<u16>().to_be_bytes());
        let dont_fragment = u16::from(self.chance(70)) << 14;
        let more = u16::from(self.chance(10)) << 13;
        let offset = if self.chance(85) {
            0
        } else {
            self.rng.random_range(1..0x2000)
        };
        draft.field(2);
        draft
            .bytes
            .extend_from_slice(&(dont_fragment | more | offset).to_be_bytes());
        let ttl = self.hop_limit();
        draft.bytes.extend_from_slice(&[ttl, protocol, 0, 0]);
        draft.bytes.extend_from_slice(&src.octets());
        draft.bytes.extend_from_slice(&dst.octets());
        for _ in 0..option_words {
            let word = match self.rng.random_range(0..3) {
                0 => [1, 1, 1, 0],
                1 => [0x94, 4, 0, 0],
                _ => self.rng.random(),
            };
            draft.bytes.extend_from_slice(&word);
        }
        let checksum = ones_complement(&draft.bytes[..header_len]);
        draft.bytes[10..12].copy_from_slice(&checksum.to_be_bytes());
        draft.append(upper);
        draft
    }

    /// The upper layer: TCP, UDP, ICMP (echo or an error quoting a flow), a packet inside,
    /// or an unknown protocol. Returns its protocol number.
    fn upper(&mut self, v6: bool, depth: u8) -> (u8, Draft) {
        match self.rng.random_range(0..100) {
            0..32 => (number::TCP, self.tcp()),
            32..62 => (number::UDP, self.udp()),
            62..80 => {
                let protocol = if v6 { number::ICMPV6 } else { number::ICMP };
                (protocol, self.icmp(v6, depth))
            }
            80..90 if depth == 0 => (number::IPV6, self.ipv6(depth + 1)),
            90..96 if depth == 0 => (number::IPV4, self.ipv4(depth + 1)),
            _ => {
                let protocol =
                    [number::NO_NEXT, 132, 47, self.rng.random()][self.rng.random_range(0..4)];
                let len = self.rng.random_range(0..48);
                (
                    protocol,
                    Draft {
                        bytes: self.bytes(len),
                        fields: Vec::new(),
                    },
                )
            }
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(0..64),
            70..90 => self.rng.random_range(64..600),
            // Around the MTUs the data plane meets (1300, 1400, 1500), encapsulated or not.
            _ => self.rng.random_range(1100..1500),
        };
        self.bytes(len)
    }

    fn udp(&mut self) -> Draft {
        let payload = self.payload();
        let mut draft = Draft::default();
        draft.bytes.extend_from_slice(&self.port().to_be_bytes());
        draft.bytes.extend_from_slice(&self.port().to_be_bytes());
        draft.field(2);
        let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
        draft.bytes.extend_from_slice(&len.to_be_bytes());
        draft
            .bytes
            .extend_from_slice(&self.rng.random::<u16>().to_be_bytes());
        draft.bytes.extend(payload);
        draft
    }

    /// TCP with options (MSS, window scale, SACK permitted, timestamps, odd ones) and flags
    /// (SYN above all: the TC program clamps SYNs' MSS).
    fn tcp(&mut self) -> Draft {
        let mut options = Vec::new();
        if self.chance(60) {
            for _ in 0..self.rng.random_range(1..=4) {
                match self.rng.random_range(0..6) {
                    0 => options.extend_from_slice(&[2, 4, 0x05, 0xb4]),
                    1 => options.extend_from_slice(&[3, 3, 7]),
                    2 => options.extend_from_slice(&[4, 2]),
                    3 => options.push(1),
                    4 => options.push(0),
                    _ => {
                        let len: u8 = self.rng.random_range(0..10);
                        options.extend_from_slice(&[self.rng.random(), len]);
                        let data = self.bytes(usize::from(len.saturating_sub(2)));
                        options.extend(data);
                    }
                }
            }
        }
        options.truncate(40);
        while options.len() % 4 != 0 {
            options.push(0);
        }
        let flags: u8 =
            [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, self.rng.random()][self.rng.random_range(0..7)];
        let payload = if flags & 0x02 != 0 && self.chance(80) {
            Vec::new()
        } else {
            self.payload()
        };
        let mut draft = Draft::default();
        draft.bytes.extend_from_slice(&self.port().to_be_bytes());
        draft.bytes.extend_from_slice(&self.port().to_be_bytes());
        let seq_ack = self.bytes(8);
        draft.bytes.extend(seq_ack);
        draft.field(1);
        draft
            .bytes
            .push(u8::try_from(5 + options.len() / 4).unwrap_or(15) << 4);
        draft.bytes.push(flags);
        let rest = self.bytes(6);
        draft.bytes.extend(rest);
        draft.bytes.extend(options);
        draft.bytes.extend(payload);
        draft
    }

    /// An echo, or an error quoting a packet of some flow (often one to or from a service).
    fn icmp(&mut self, v6: bool, depth: u8) -> Draft {
        let mut draft = Draft::default();
        let error = self.chance(70);
        let (kind, code) = match (v6, error) {
            (true, true) => (self.rng.random_range(1..=4), self.rng.random_range(0..8)),
            (true, false) => ([128, 129, 135, 136][self.rng.random_range(0..4)], 0),
            (false, true) => (
                [3, 11, 12, 5][self.rng.random_range(0..4)],
                self.rng.random_range(0..6),
            ),
            (false, false) => ([8, 0][self.rng.random_range(0..2)], 0),
        };
        draft.bytes.extend_from_slice(&[kind, code, 0, 0]);
        let rest: [u8; 4] = self.rng.random();
        draft.bytes.extend_from_slice(&rest);
        if error && depth == 0 {
            let mut quoted = if v6 { self.ipv6(1) } else { self.ipv4(1) };
            // A quote is at most what fits in a minimum MTU; often cut shorter.
            let keep = if self.chance(50) {
                quoted.bytes.len()
            } else {
                self.rng.random_range(0..=quoted.bytes.len())
            };
            quoted.bytes.truncate(keep);
            quoted
                .fields
                .retain(|f| f.at + usize::from(f.width) <= keep);
            draft.append(quoted);
        } else {
            let payload = self.payload();
            draft.bytes.extend(payload);
        }
        draft
    }

    /// Cuts the packet short, makes a field lie, flips bits, adds link-layer padding or
    /// removes a span.
    fn mutate(&mut self, draft: &mut Draft) {
        let len = draft.bytes.len();
        if len == 0 {
            return;
        }
        match self.rng.random_range(0..100) {
            0..20 => {
                // Right at a header boundary is likeliest to matter: near a field.
                let cut = if self.chance(50) && !draft.fields.is_empty() {
                    let field = draft.fields[self.rng.random_range(0..draft.fields.len())];
                    (field.at + self.rng.random_range(0..48)).min(len - 1)
                } else {
                    self.rng.random_range(0..len)
                };
                draft.bytes.truncate(cut);
                draft.fields.retain(|f| f.at + usize::from(f.width) <= cut);
            }
            20..55 if !draft.fields.is_empty() => {
                let field = draft.fields[self.rng.random_range(0..draft.fields.len())];
                let value = self.lie(field, &draft.bytes);
                let at = field.at;
                if field.width == 1 {
                    draft.bytes[at] = value.to_be_bytes()[1];
                } else {
                    draft.bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
                }
            }
            55..80 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    // Mostly in the headers.
                    let at = self.rng.random_range(0..len.min(160));
                    draft.bytes[at] ^= 1 << self.rng.random_range(0..8);
                }
            }
            80..92 => {
                let padding = self.rng.random_range(1..=64);
                let tail = self.bytes(padding);
                draft.bytes.extend(tail);
            }
            _ => {
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=16)).min(len);
                draft.bytes.drain(start..end);
                draft
                    .fields
                    .retain(|f| f.at + usize::from(f.width) <= start);
            }
        }
    }

    /// A new value for `field`: an interesting one, or the true one a little off.
    fn lie(&mut self, field: Field, bytes: &[u8]) -> u16 {
        let truth = if field.width == 1 {
            u16::from(bytes[field.at])
        } else {
            u16::from_be_bytes([bytes[field.at], bytes[field.at + 1]])
        };
        let value = match self.rng.random_range(0..3) {
            0 => INTERESTING[self.rng.random_range(0..INTERESTING.len())],
            1 => truth.wrapping_add(self.rng.random_range(1..=16)),
            _ => truth.wrapping_sub(self.rng.random_range(1..=16)),
        };
        if field.width == 1 {
            value & 0xff
        } else {
            value
        }
    }
}

/// The Internet checksum of `bytes` (RFC 1071).
fn ones_complement(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(seed: u64) -> Generator {
        Generator::new(
            seed,
            Pools {
                v6: vec!["2001:db8::1".parse().unwrap()],
                v4: vec![Ipv4Addr::new(192, 0, 2, 1)],
                ports: vec![443],
            },
        )
    }

    #[test]
    fn the_same_seed_makes_the_same_packets() {
        let (mut a, mut b) = (generator(7), generator(7));
        for _ in 0..1000 {
            assert_eq!(a.packet(), b.packet());
        }
    }

    #[test]
    fn well_formed_frames_decode_with_an_independent_decoder() {
        // Unmutated frames are valid as etherparse reads them: the generator's own bugs do not
        // pass for mutations.
        let mut generator = generator(1);
        let mut decoded = 0;
        for _ in 0..2000 {
            let frame = generator.frame().bytes;
            if let Ok(packet) = etherparse::SlicedPacket::from_ethernet(&frame)
                && packet.net.is_some()
            {
                decoded += 1;
            }
        }
        assert!(decoded > 1000, "only {decoded} of 2000 frames decoded");
    }

    #[test]
    fn ipv4_header_checksum_is_right() {
        let mut generator = generator(3);
        let header = generator.ipv4(1).bytes;
        let ihl = usize::from(header[0] & 0xf) * 4;
        assert_eq!(ones_complement(&header[..ihl]), 0);
    }
}
