//! BFD control packets (RFC 5880 §4.1), as single-hop (RFC 5881) and multihop (RFC 5883)
//! sessions carry them over UDP, and the checks a receiver makes before a packet reaches its
//! session (§6.8.6).
//!
//! ```text
//!   Vers(3) Diag(5) | Sta(2) P F C A D M | Detect Mult | Length
//!   My Discriminator | Your Discriminator
//!   Desired Min TX Interval | Required Min RX Interval | Required Min Echo RX Interval (µs)
//!   [Auth Type | Auth Len | ...]   when A is set
//! ```

use std::fmt;

/// Single-hop control packets go to this UDP port (RFC 5881 §4).
pub const SINGLE_HOP_PORT: u16 = 3784;
/// Multihop control packets go to this one (RFC 5883 §5).
pub const MULTIHOP_PORT: u16 = 4784;
/// The mandatory section's length; a packet without authentication is exactly this long.
pub const MANDATORY_LEN: usize = 24;
const VERSION: u8 = 1;

/// A session's state (§4.1, §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AdminDown => "admin-down",
            Self::Down => "down",
            Self::Init => "init",
            Self::Up => "up",
        })
    }
}

/// Why the local system last left Up (§4.1); codes 9–31 are unassigned and kept as they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Diagnostic {
    None,
    DetectionTimeExpired,
    EchoFailed,
    NeighborSignaledDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdminDown,
    ReverseConcatenatedPathDown,
    Unassigned(u8),
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::DetectionTimeExpired => "detection time expired",
            Self::EchoFailed => "echo failed",
            Self::NeighborSignaledDown => "neighbor signaled down",
            Self::ForwardingPlaneReset => "forwarding plane reset",
            Self::PathDown => "path down",
            Self::ConcatenatedPathDown => "concatenated path down",
            Self::AdminDown => "administratively down",
            Self::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Self::Unassigned(code) => return write!(f, "unassigned code {code}"),
        })
    }
}

impl Diagnostic {
    fn from_code(code: u8) -> Self {
        match code {
            0 => Self::None,
            1 => Self::DetectionTimeExpired,
            2 => Self::EchoFailed,
            3 => Self::NeighborSignaledDown,
            4 => Self::ForwardingPlaneReset,
            5 => Self::PathDown,
            6 => Self::ConcatenatedPathDown,
            7 => Self::AdminDown,
            8 => Self::ReverseConcatenatedPathDown,
            other => Self::Unassigned(other & 0x1f),
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::DetectionTimeExpired => 1,
            Self::EchoFailed => 2,
            Self::NeighborSignaledDown => 3,
            Self::ForwardingPlaneReset => 4,
            Self::PathDown => 5,
            Self::ConcatenatedPathDown => 6,
            Self::AdminDown => 7,
            Self::ReverseConcatenatedPathDown => 8,
            Self::Unassigned(code) => code & 0x1f,
        }
    }
}

/// One control packet. Intervals are in microseconds, as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "the wire's flag bits, a field each"
)]
pub struct Control {
    pub diagnostic: Diagnostic,
    pub state: State,
    /// P: the sender asks for a Final (a parameter change, §6.5).
    pub poll: bool,
    /// F: the answer to a Poll.
    pub final_: bool,
    /// C: the sender's BFD does not share fate with its control plane.
    pub control_plane_independent: bool,
    /// D: the sender wants Demand mode.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    /// 0 until the sender has heard from us.
    pub your_discriminator: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
    /// The authentication section (type, then the rest), when A is set. This agent runs no
    /// authentication; its sessions discard such packets (§6.8.6), but they decode.
    pub authentication: Option<Authentication>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authentication {
    pub kind: u8,
    /// The section after Auth Type and Auth Len.
    pub data: Vec<u8>,
}

/// A packet §6.8.6 says to discard before it reaches a session, and which rule it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("shorter than the {MANDATORY_LEN}-byte mandatory section ({0} bytes)")]
    Truncated(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    /// `minimum` is 26 when the A bit says an authentication section follows.
    #[error("Length {length} is below the {minimum} bytes it needs")]
    LengthTooSmall {
        length: u8,
        minimum: usize,
        authenticated: bool,
    },
    #[error("Length {length} is beyond the {received} bytes received")]
    LengthBeyondPayload { length: u8, received: usize },
    #[error("Detect Mult is 0")]
    ZeroDetectMult,
    #[error("the Multipoint bit is set")]
    Multipoint,
    #[error("My Discriminator is 0")]
    ZeroMyDiscriminator,
    #[error("Your Discriminator is 0 in state {0}")]
    ZeroYourDiscriminator(State),
    #[error("Auth Len {auth_len} does not fit the packet's Length {length}")]
    AuthLength { auth_len: u8, length: u8 },
}

impl Control {
    /// The packet as sent: the mandatory section, then the authentication section if any.
    pub fn encode(&self) -> Vec<u8> {
        let auth_len = self.authentication.as_ref().map_or(0, |a| 2 + a.data.len());
        let length = u8::try_from(MANDATORY_LEN + auth_len).unwrap_or(u8::MAX);
        let flags = u8::from(self.poll) << 5
            | u8::from(self.final_) << 4
            | u8::from(self.control_plane_independent) << 3
            | u8::from(self.authentication.is_some()) << 2
            | u8::from(self.demand) << 1;
        let mut out = Vec::with_capacity(usize::from(length));
        out.push(VERSION << 5 | self.diagnostic.code());
        out.push((self.state as u8) << 6 | flags);
        out.push(self.detect_mult);
        out.push(length);
        for word in [
            self.my_discriminator,
            self.your_discriminator,
            self.desired_min_tx_us,
            self.required_min_rx_us,
            self.required_min_echo_rx_us,
        ] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        if let Some(auth) = &self.authentication {
            out.push(auth.kind);
            out.push(u8::try_from(2 + auth.data.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&auth.data);
        }
        out.truncate(usize::from(length));
        out
    }

    /// A received UDP payload, checked by every rule of §6.8.6 that needs no session; bytes
    /// after Length are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, Discard> {
        let header: &[u8; MANDATORY_LEN] = payload
            .get(..MANDATORY_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Discard::Truncated(payload.len()))?;
        let version = header[0] >> 5;
        if version != VERSION {
            return Err(Discard::Version(version));
        }
        let flags = header[1];
        let authenticated = flags & 0x04 != 0;
        let length = header[3];
        let minimum = if authenticated {
            MANDATORY_LEN + 2
        } else {
            MANDATORY_LEN
        };
        if usize::from(length) < minimum {
            return Err(Discard::LengthTooSmall {
                length,
                minimum,
                authenticated,
            });
        }
        if usize::from(length) > payload.len() {
            return Err(Discard::LengthBeyondPayload {
                length,
                received: payload.len(),
            });
        }
        let detect_mult = header[2];
        if detect_mult == 0 {
            return Err(Discard::ZeroDetectMult);
        }
        if flags & 0x01 != 0 {
            return Err(Discard::Multipoint);
        }
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let state = State::from_bits(flags >> 6);
        let (my_discriminator, your_discriminator) = (word(4), word(8));
        if my_discriminator == 0 {
            return Err(Discard::ZeroMyDiscriminator);
        }
        if your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(Discard::ZeroYourDiscriminator(state));
        }
        let authentication = if authenticated {
            let section = &payload[MANDATORY_LEN..usize::from(length)];
            let auth_len = section[1];
            if auth_len < 2 || usize::from(auth_len) > section.len() {
                return Err(Discard::AuthLength { auth_len, length });
            }
            Some(Authentication {
                kind: section[0],
                data: section[2..usize::from(auth_len)].to_vec(),
            })
        } else {
            None
        };
        Ok(Self {
            diagnostic: Diagnostic::from_code(header[0] & 0x1f),
            state,
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult,
            my_discriminator,
            your_discriminator,
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
            authentication,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Control {
        Control {
            diagnostic: Diagnostic::None,
            state: State::Up,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 0x0a0b_0c0d,
            desired_min_tx_us: 10_000,
            required_min_rx_us: 10_000,
            required_min_echo_rx_us: 0,
            authentication: None,
        }
    }

    /// The bytes of `up()`, laid out by hand from RFC 5880 §4.1; `tcpdump -vv` decodes them
    /// (in UDP to port 3784) as `BFDv1 Control, State Up, Multiplier 3, My Discriminator
    /// 0x01020304, Your Discriminator 0x0a0b0c0d, min Tx 10 ms, min Rx 10 ms, Echo 0 ms`.
    const UP_BYTES: [u8; 24] = [
        0x20, 0xc0, 3, 24, // version 1, no diagnostic; Up, no flags; mult 3; length 24
        1, 2, 3, 4, // my discriminator
        0x0a, 0x0b, 0x0c, 0x0d, // your discriminator
        0, 0, 0x27, 0x10, // desired min TX 10 ms
        0, 0, 0x27, 0x10, // required min RX 10 ms
        0, 0, 0, 0, // no echo
    ];

    #[test]
    fn a_control_packet_is_written_as_rfc_5880_lays_it_out() {
        assert_eq!(up().encode(), UP_BYTES);
        assert_eq!(Control::decode(&UP_BYTES), Ok(up()));
    }

    #[test]
    fn flags_diagnostics_and_authentication_round_trip() {
        let packet = Control {
            diagnostic: Diagnostic::DetectionTimeExpired,
            state: State::Down,
            poll: true,
            final_: true,
            control_plane_independent: true,
            demand: true,
            your_discriminator: 0,
            authentication: Some(Authentication {
                kind: 1,
                data: vec![1, b's', b'e', b'c'],
            }),
            ..up()
        };
        let bytes = packet.encode();
        assert_eq!(bytes.len(), 30);
        assert_eq!(bytes[0], 0x21);
        assert_eq!(bytes[1], 0x40 | 0x3e, "Down, P F C A D");
        assert_eq!(bytes[3], 30);
        assert_eq!(Control::decode(&bytes), Ok(packet));
        let odd = Control {
            diagnostic: Diagnostic::Unassigned(17),
            ..up()
        };
        assert_eq!(Control::decode(&odd.encode()), Ok(odd));
    }

    #[test]
    fn bytes_after_length_are_ignored() {
        let mut bytes = UP_BYTES.to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        assert_eq!(Control::decode(&bytes), Ok(up()));
    }

    #[test]
    fn every_discard_rule_of_section_6_8_6_is_applied() {
        let with = |f: &dyn Fn(&mut [u8])| {
            let mut bytes = UP_BYTES.to_vec();
            f(&mut bytes);
            Control::decode(&bytes)
        };
        assert_eq!(
            Control::decode(&UP_BYTES[..23]),
            Err(Discard::Truncated(23))
        );
        assert_eq!(with(&|b| b[0] = 0x40), Err(Discard::Version(2)));
        assert_eq!(
            with(&|b| b[3] = 20),
            Err(Discard::LengthTooSmall {
                length: 20,
                minimum: 24,
                authenticated: false
            })
        );
        assert_eq!(
            with(&|b| b[1] |= 0x04),
            Err(Discard::LengthTooSmall {
                length: 24,
                minimum: 26,
                authenticated: true
            })
        );
        assert_eq!(
            with(&|b| b[3] = 28),
            Err(Discard::LengthBeyondPayload {
                length: 28,
                received: 24
            })
        );
        assert_eq!(with(&|b| b[2] = 0), Err(Discard::ZeroDetectMult));
        assert_eq!(with(&|b| b[1] |= 0x01), Err(Discard::Multipoint));
        assert_eq!(
            with(&|b| b[4..8].fill(0)),
            Err(Discard::ZeroMyDiscriminator)
        );
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(Discard::ZeroYourDiscriminator(State::Up))
        );
        // Down and AdminDown may not know the peer's discriminator yet.
        for state in [State::Down, State::AdminDown] {
            let decoded = with(&|b| {
                b[8..12].fill(0);
                b[1] = (state as u8) << 6;
            });
            assert_eq!(decoded.map(|c| c.state), Ok(state));
        }
    }

    #[test]
    fn an_authentication_section_must_fit_its_packet() {
        let mut bytes = UP_BYTES.to_vec();
        bytes[1] |= 0x04;
        bytes[3] = 28;
        bytes.extend_from_slice(&[1, 9, 0, 0]);
        assert_eq!(
            Control::decode(&bytes),
            Err(Discard::AuthLength {
                auth_len: 9,
                length: 28
            })
        );
        bytes[25] = 4;
        let decoded = Control::decode(&bytes).expect("a 4-byte section fits");
        assert_eq!(
            decoded.authentication,
            Some(Authentication {
                kind: 1,
                data: vec![0, 0]
            })
        );
    }
}
