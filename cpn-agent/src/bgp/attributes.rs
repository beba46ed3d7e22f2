//! RFC 7606 per path attribute, before netgauze reads an UPDATE.
//!
//! netgauze-bgp-pkt 0.13 resumes after a malformed attribute one attribute too far (its
//! recovery skips a length it had already read), so the attribute after a bad AIGP or
//! Prefix-SID vanished, an `MP_REACH_NLRI` after one took its routes with it, and a bad last
//! attribute reset the session. [`Validator::clean`] walks the attribute block itself:
//! every attribute's boundaries come from its own header (RFC 4271 §4.3: flags, type, a 1- or
//! 2-byte length by the Extended Length bit) before its value is looked at, each attribute is
//! decoded alone, and a malformed one is cut out of the message (the lengths adjusted), so
//! that netgauze decodes a clean message and nothing else is lost. What a cut costs is
//! weighed by `errors::check` (RFC 7606 §7 needs to know whether the session is iBGP).

use std::{fmt, ops::Range};

use netgauze_bgp_pkt::{
    iana::PathAttributeType,
    path_attribute::{Aigp, PathAttribute, PathAttributeValue},
    wire::deserializer::BgpParsingContext,
};
use netgauze_parse_utils::{reader::SliceReader, traits::ParseFromWithOneInput as _};

use super::metric_attr;

/// RFC 4271 §4.3: the bits of the Attribute Flags octet.
const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED_LENGTH: u8 = 0x10;

/// RFC 4271 §4.1: marker, length, type.
const HEADER_LEN: usize = 19;
/// RFC 4271 §4.1: the UPDATE message type.
const UPDATE: u8 = 2;

/// One attribute cut out of an UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Its type code; `None` when the block ends before the code.
    pub code: Option<u8>,
    pub fault: Fault,
}

/// What is wrong with an attribute, which also says which rule of RFC 7606 prices it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The Optional or Transitive bit (these flags) disagrees with the type's (RFC 7606 §3 c).
    Flags(u8),
    /// The value cannot be read: the type's own rule (RFC 7606 §7, or the type's RFC).
    Value(String),
    /// A second attribute of the same type (RFC 7606 §3 g).
    Repeated,
    /// The attribute, or its header, runs past the attribute block (RFC 7606 §4): it and
    /// whatever followed it in the block are gone.
    Framing,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => match PathAttributeType::from_repr(code) {
                Some(known) => write!(f, "{known} (type {code})")?,
                None => write!(f, "attribute type {code}")?,
            },
            None => f.write_str("attribute header")?,
        }
        match &self.fault {
            Fault::Flags(flags) => write!(
                f,
                ": flags {flags:#04x} in conflict with the type's optional and transitive bits"
            ),
            Fault::Value(why) => write!(f, ": {why}"),
            Fault::Repeated => f.write_str(": repeated"),
            Fault::Framing => f.write_str(": runs past the path attributes"),
        }
    }
}

/// An UPDATE with its malformed attributes cut out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cleaned {
    /// The whole message, header included, lengths adjusted.
    pub message: Vec<u8>,
    pub malformed: Vec<Malformed>,
}

/// Reads each attribute alone, the way netgauze reads it in a message of the session.
#[derive(Debug)]
pub struct Validator {
    /// The session's ADD-PATH families and AS number size.
    context: BgpParsingContext,
    /// The CPN metric attribute's type code.
    metric_code: u8,
}

impl Validator {
    pub fn new(context: BgpParsingContext, metric_code: u8) -> Self {
        Self {
            context,
            metric_code,
        }
    }

    /// Whether `AS_PATH` and `AGGREGATOR` carry 4-byte AS numbers (RFC 6793).
    pub fn set_asn4(&mut self, asn4: bool) {
        self.context.set_asn4(asn4);
    }

    /// `message` (one whole UPDATE, header included) without its malformed attributes, and
    /// what was cut; `None` when nothing is, or when the UPDATE's own lengths do not hold
    /// (netgauze then reports a Malformed Attribute List, RFC 4271 §6.3).
    pub fn clean(&mut self, message: &[u8]) -> Option<Cleaned> {
        let layout = Layout::of(message)?;
        let block = &message[layout.attributes.clone()];
        let mut kept: Vec<Range<usize>> = Vec::new();
        let mut malformed = Vec::new();
        let mut seen = [false; 256];
        let mut at = 0;
        while at < block.len() {
            let rest = &block[at..];
            let Some(header) = Header::read(rest) else {
                malformed.push(Malformed {
                    code: rest.get(1).copied(),
                    fault: Fault::Framing,
                });
                break;
            };
            let end = header.len + header.value_len;
            if end > rest.len() {
                malformed.push(Malformed {
                    code: Some(header.code),
                    fault: Fault::Framing,
                });
                break;
            }
            let range = at..at + end;
            at += end;
            if std::mem::replace(&mut seen[usize::from(header.code)], true) {
                malformed.push(Malformed {
                    code: Some(header.code),
                    fault: Fault::Repeated,
                });
                continue;
            }
            let in_message =
                layout.attributes.start + range.start..layout.attributes.start + range.end;
            match self.judge(&header, message, in_message) {
                Ok(()) => kept.push(range),
                Err(fault) => malformed.push(Malformed {
                    code: Some(header.code),
                    fault,
                }),
            }
        }
        if malformed.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(message.len());
        out.extend_from_slice(&message[..layout.attributes.start - 2]);
        let kept_len: usize = kept.iter().map(ExactSizeIterator::len).sum();
        let kept_len = u16::try_from(kept_len).expect("no longer than the block it was cut from");
        out.extend_from_slice(&kept_len.to_be_bytes());
        for range in kept {
            out.extend_from_slice(&block[range]);
        }
        out.extend_from_slice(&message[layout.attributes.end..]);
        let len = u16::try_from(out.len()).expect("no longer than the message it was cut from");
        out[16..18].copy_from_slice(&len.to_be_bytes());
        Some(Cleaned {
            message: out,
            malformed,
        })
    }

    /// Whether the attribute at `at` in `message` (header included) is well formed.
    fn judge(&mut self, header: &Header, message: &[u8], at: Range<usize>) -> Result<(), Fault> {
        let attribute = &message[at.clone()];
        let value = &attribute[header.len..];
        if header.code == self.metric_code {
            // Our attribute's own rule (docs/BGP.md), which RFC 7606 §3 c lets it set for its
            // flags too: whatever is wrong with it costs the attribute alone.
            if header.flags & (OPTIONAL | TRANSITIVE) != OPTIONAL | TRANSITIVE {
                return Err(Fault::Value(format!(
                    "CPN metric attribute: flags {:#04x}, not optional transitive",
                    header.flags
                )));
            }
            return metric_attr::decode(value)
                .map(drop)
                .map_err(|e| Fault::Value(format!("CPN metric attribute: {e}")));
        }
        if known_flags(header.code)
            .is_some_and(|flags| header.flags & (OPTIONAL | TRANSITIVE) != flags)
        {
            return Err(Fault::Flags(header.flags));
        }
        length_rule(header.code, value.len()).map_err(Fault::Value)?;
        // Read where it lies in the message, so that errors give offsets in the message.
        let mut reader = SliceReader::new(&message[..at.end]);
        reader
            .read_bytes(at.start)
            .expect("the attribute lies within the message");
        let parsed = PathAttribute::parse(&mut reader, &mut self.context)
            .map_err(|e| Fault::Value(e.to_string()))?;
        if !reader.is_empty() {
            // In the message, netgauze would read the next attribute from the wrong place.
            return Err(Fault::Value(format!(
                "{} of its {} bytes left unread",
                reader.remaining(),
                attribute.len()
            )));
        }
        if let PathAttributeValue::Aigp(Aigp::AccumulatedIgpMetric(u64::MAX)) = parsed.value() {
            // RFC 7311 §3.2: the maximum value SHOULD be considered malformed.
            return Err(Fault::Value("AIGP metric at its maximum".into()));
        }
        Ok(())
    }
}

/// Where the path attributes of an UPDATE are, if its lengths hold (RFC 4271 §4.3).
struct Layout {
    attributes: Range<usize>,
}

impl Layout {
    fn of(message: &[u8]) -> Option<Self> {
        if message.get(18) != Some(&UPDATE) {
            return None;
        }
        let u16_at = |at: usize| {
            message
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let withdrawn_len = u16_at(HEADER_LEN)?;
        let attributes_len_at = HEADER_LEN + 2 + withdrawn_len;
        let start = attributes_len_at + 2;
        let end = start + u16_at(attributes_len_at)?;
        (end <= message.len()).then_some(Self {
            attributes: start..end,
        })
    }
}

/// An attribute's header (RFC 4271 §4.3).
struct Header {
    flags: u8,
    code: u8,
    /// Header bytes: 3, or 4 with the Extended Length bit.
    len: usize,
    value_len: usize,
}

impl Header {
    /// The header at the start of `bytes`, if all of it is there.
    fn read(bytes: &[u8]) -> Option<Self> {
        let (&flags, &code) = (bytes.first()?, bytes.get(1)?);
        Some(if flags & EXTENDED_LENGTH != 0 {
            let len = bytes.get(2..4)?;
            Self {
                flags,
                code,
                len: 4,
                value_len: usize::from(u16::from_be_bytes([len[0], len[1]])),
            }
        } else {
            Self {
                flags,
                code,
                len: 3,
                value_len: usize::from(*bytes.get(2)?),
            }
        })
    }
}

/// The Optional and Transitive bits fixed by the RFCs of the types we read (the others are
/// left to netgauze, whose flag errors their own rules then price).
fn known_flags(code: u8) -> Option<u8> {
    use PathAttributeType as T;
    Some(match PathAttributeType::from_repr(code)? {
        // Well-known, so transitive (RFC 4271 §4.3, §5.1.1-§5.1.3, §5.1.5, §5.1.6).
        T::Origin | T::AsPath | T::NextHop | T::LocalPreference | T::AtomicAggregate => TRANSITIVE,
        // Optional non-transitive: RFC 4271 §5.1.4, RFC 4456 §8, RFC 4760 §3 and §4,
        // RFC 7311 §3.
        T::MultiExitDiscriminator
        | T::OriginatorId
        | T::ClusterList
        | T::MpReachNlri
        | T::MpUnreachNlri
        | T::AccumulatedIgp => OPTIONAL,
        // Optional transitive: RFC 4271 §5.1.7, RFC 1997, RFC 4360 §2, RFC 8092, RFC 8669 §3.
        T::Aggregator
        | T::Communities
        | T::ExtendedCommunities
        | T::LargeCommunities
        | T::BgpPrefixSid => OPTIONAL | TRANSITIVE,
        _ => return None,
    })
}

/// The length rules of RFC 7606 §7 that netgauze does not enforce (it reads an empty
/// COMMUNITIES, say, as no communities).
fn length_rule(code: u8, len: usize) -> Result<(), String> {
    use PathAttributeType as T;
    let multiple_of = match PathAttributeType::from_repr(code) {
        Some(T::Communities | T::ClusterList) => 4, // §7.8, §7.10
        Some(T::ExtendedCommunities) => 8,          // §7.14
        Some(T::LargeCommunities) => 12,            // RFC 8092 §6
        Some(T::OriginatorId) if len != 4 => {
            return Err(format!("length {len}, expected 4")); // §7.9
        }
        _ => return Ok(()),
    };
    if len == 0 || !len.is_multiple_of(multiple_of) {
        return Err(format!(
            "length {len}, expected a non-zero multiple of {multiple_of}"
        ));
    }
    Ok(())
}
