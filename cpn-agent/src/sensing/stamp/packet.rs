//! STAMP test packets (RFC 8762), unauthenticated mode: the Session-Sender's (§4.2.1) and the
//! Session-Reflector's (§4.3.1), both 44 bytes, timestamps in NTP format (RFC 5905).
//!
//! ```text
//!   sender:    Sequence (4) | Timestamp (8) | Error Estimate (2) | MBZ (30)
//!   reflector: Sequence (4) | Timestamp (8) | Error Estimate (2) | MBZ (2)
//!              | Receive Timestamp (8) | Sender Sequence (4) | Sender Timestamp (8)
//!              | Sender Error Estimate (2) | MBZ (2) | Sender TTL (1) | MBZ (3)
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The well-known STAMP port (RFC 8762 §4.1).
pub const PORT: u16 = 862;
/// Both packets' length in unauthenticated mode.
pub const LEN: usize = 44;
/// Seconds from the NTP era (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp: seconds since 1900 and a binary fraction of a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs() + NTP_UNIX_OFFSET;
        let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
        Self((seconds << 32) | fraction)
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Self) -> Duration {
        let ticks = self.0.saturating_sub(earlier.0);
        // 2^32 ticks a second.
        let nanos = (u128::from(ticks) * 1_000_000_000) >> 32;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The Error Estimate of RFC 4656 §4.1.2 that this agent sends: not synchronized to UTC (S 0),
/// NTP format (Z 0), about a millisecond (Multiplier 1 × 2^(Scale 22 - 32) s).
pub const ERROR_ESTIMATE: u16 = (22 << 8) | 1;

/// What a Session-Sender sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Test {
    pub sequence: u32,
    pub timestamp: Timestamp,
    pub error_estimate: u16,
}

/// What a Session-Reflector sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reflected {
    /// In stateless mode (this agent's), the sender's sequence number again.
    pub sequence: u32,
    /// When the reflector sent it.
    pub timestamp: Timestamp,
    pub error_estimate: u16,
    /// When the reflector received the test packet.
    pub receive_timestamp: Timestamp,
    pub sender: Test,
    /// The test packet's TTL or Hop Limit as it arrived (255 when unknown).
    pub sender_ttl: u8,
}

/// A packet that is no STAMP packet of the kind expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0} bytes, shorter than the {LEN} of an unauthenticated STAMP packet")]
    Truncated(usize),
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn double(b: &[u8], at: usize) -> u64 {
    (u64::from(word(b, at)) << 32) | u64::from(word(b, at + 4))
}

fn half(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Sequence, timestamp and error estimate: how both packets begin.
fn head(sequence: u32, timestamp: Timestamp, error_estimate: u16) -> [u8; LEN] {
    let mut out = [0; LEN];
    out[0..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..12].copy_from_slice(&timestamp.0.to_be_bytes());
    out[12..14].copy_from_slice(&error_estimate.to_be_bytes());
    out
}

/// The same three fields read back from `at`.
fn read_head(bytes: &[u8], at: usize) -> (u32, Timestamp, u16) {
    (
        word(bytes, at),
        Timestamp(double(bytes, at + 4)),
        half(bytes, at + 12),
    )
}

impl Test {
    pub fn encode(&self) -> [u8; LEN] {
        head(self.sequence, self.timestamp, self.error_estimate)
    }

    /// A test packet; what follows its first 14 bytes is not read (MBZ, or padding).
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        if bytes.len() < LEN {
            return Err(Malformed::Truncated(bytes.len()));
        }
        let (sequence, timestamp, error_estimate) = read_head(bytes, 0);
        Ok(Self {
            sequence,
            timestamp,
            error_estimate,
        })
    }
}

impl Reflected {
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = head(self.sequence, self.timestamp, self.error_estimate);
        out[16..24].copy_from_slice(&self.receive_timestamp.0.to_be_bytes());
        out[24..38].copy_from_slice(&self.sender.encode()[..14]);
        out[40] = self.sender_ttl;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        if bytes.len() < LEN {
            return Err(Malformed::Truncated(bytes.len()));
        }
        let (sequence, timestamp, error_estimate) = read_head(bytes, 0);
        // The sender's fields lie as in its own packet, 24 bytes on (the Receive Timestamp
        // and an MBZ in between the two heads).
        let (sender_sequence, sender_timestamp, sender_error) = read_head(bytes, 24);
        Ok(Self {
            sequence,
            timestamp,
            error_estimate,
            receive_timestamp: Timestamp(double(bytes, 16)),
            sender: Test {
                sequence: sender_sequence,
                timestamp: sender_timestamp,
                error_estimate: sender_error,
            },
            sender_ttl: bytes[40],
        })
    }

    /// The round trip less the time the reflector held the packet (RFC 8762 §4.2.1's T4 - T1
    /// - (T3 - T2)), given when the reply arrived.
    pub fn round_trip(&self, arrived: Timestamp) -> Duration {
        arrived
            .since(self.sender.timestamp)
            .saturating_sub(self.timestamp.since(self.receive_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_timestamps_count_from_1900_in_binary_fractions() {
        let t = UNIX_EPOCH + Duration::new(1, 500_000_000);
        let ntp = Timestamp::from_system(t);
        assert_eq!(ntp.0 >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp.0 & 0xffff_ffff, 0x8000_0000, "half a second");
        let later = Timestamp::from_system(t + Duration::from_micros(1250));
        let d = later.since(ntp);
        assert!(
            d.abs_diff(Duration::from_micros(1250)) < Duration::from_nanos(2),
            "{d:?}"
        );
        assert_eq!(ntp.since(later), Duration::ZERO);
    }

    /// The bytes of RFC 8762 §4.2.1 and §4.3.1, laid out by hand.
    #[test]
    fn sender_and_reflector_packets_as_rfc_8762_lays_them_out() {
        let test = Test {
            sequence: 7,
            timestamp: Timestamp(0x1122_3344_5566_7788),
            error_estimate: ERROR_ESTIMATE,
        };
        let mut want = [0u8; LEN];
        want[..14].copy_from_slice(&[
            0, 0, 0, 7, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 22, 1,
        ]);
        assert_eq!(test.encode(), want);
        assert_eq!(Test::decode(&want), Ok(test));
        assert_eq!(Test::decode(&want[..43]), Err(Malformed::Truncated(43)));

        let reflected = Reflected {
            sequence: 7,
            timestamp: Timestamp(0xa0a1_a2a3_a4a5_a6a7),
            error_estimate: 0x8001,
            receive_timestamp: Timestamp(0xb0b1_b2b3_b4b5_b6b7),
            sender: test,
            sender_ttl: 62,
        };
        let bytes = reflected.encode();
        let mut want = [0u8; LEN];
        want[0..4].copy_from_slice(&[0, 0, 0, 7]);
        want[4..12].copy_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7]);
        want[12..14].copy_from_slice(&[0x80, 0x01]);
        want[16..24].copy_from_slice(&[0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7]);
        want[24..28].copy_from_slice(&[0, 0, 0, 7]);
        want[28..36].copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        want[36..38].copy_from_slice(&[22, 1]);
        want[40] = 62;
        assert_eq!(bytes, want);
        assert_eq!(Reflected::decode(&bytes), Ok(reflected));
    }

    #[test]
    fn the_round_trip_leaves_out_the_reflectors_time() {
        let t1 = Timestamp::from_system(UNIX_EPOCH + Duration::from_secs(100));
        let at = |ms: u64| {
            Timestamp::from_system(
                UNIX_EPOCH + Duration::from_secs(100) + Duration::from_millis(ms),
            )
        };
        let reflected = Reflected {
            sequence: 1,
            timestamp: at(15),
            error_estimate: ERROR_ESTIMATE,
            receive_timestamp: at(10),
            sender: Test {
                sequence: 1,
                timestamp: t1,
                error_estimate: ERROR_ESTIMATE,
            },
            sender_ttl: 64,
        };
        let rtt = reflected.round_trip(at(25));
        assert!(
            rtt.abs_diff(Duration::from_millis(20)) < Duration::from_micros(1),
            "{rtt:?}"
        );
    }
}
