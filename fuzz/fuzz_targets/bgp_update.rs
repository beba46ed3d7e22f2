//! Bytes from a peer, decoded the way cpn-agent's BGP speaker decodes them.
//!
//! Input layout: the first byte chooses the session's codec (low bit set: ADD-PATH negotiated
//! for IPv4 and IPv6 unicast), the rest is the TCP byte stream. Every whole message the codec
//! yields is decoded, and UPDATEs go through `route::parse` as the speaker does. The whole input
//! is also read as a CPN metric attribute, and what decodes must survive an encode/decode round
//! trip unchanged. Nothing may panic.

#![no_main]

use std::collections::HashMap;

use bytes::BytesMut;
use cpn_agent::bgp::{
    metric_attr::{self, CpnMetrics},
    route,
};
use libfuzzer_sys::fuzz_target;
use netgauze_bgp_pkt::{BgpMessage, codec::BgpCodec, wire::deserializer::BgpParsingContext};
use netgauze_iana::address_family::AddressType;
use tokio_util::codec::Decoder as _;

/// The CPN metric attribute's type code, as the agent configures it by default.
const METRIC_CODE: u8 = metric_attr::DEFAULT_TYPE_CODE;

/// The codec of one session, as `speaker::codec` builds it.
fn codec(add_path: bool) -> BgpCodec {
    let families = HashMap::from([
        (AddressType::Ipv6Unicast, add_path),
        (AddressType::Ipv4Unicast, add_path),
    ]);
    BgpCodec::new_from_ctx(
        true,
        BgpParsingContext::new(true, HashMap::new(), families, false, false, false, false),
    )
}

fn bgp_stream(add_path: bool, stream: &[u8]) {
    let mut codec = codec(add_path);
    let mut buf = BytesMut::from(stream);
    // The speaker stops reading a session at its first undecodable message.
    while let Ok(Some((message, _ignored))) = codec.decode(&mut buf) {
        if let BgpMessage::Update(update) = message {
            let _ = route::parse(&update, METRIC_CODE);
        }
    }
}

/// Equal, with NaN equal to itself: a NaN metric is carried bit for bit, but `f64`'s
/// `PartialEq` would call the round trip lossy. Debug formatting names every field and prints
/// floats exactly (including the sign of zero), so it compares the values structurally.
fn same(a: &CpnMetrics, b: &CpnMetrics) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

fn metric_attribute(bytes: &[u8]) {
    let Ok(decoded) = metric_attr::decode(bytes) else {
        return;
    };
    let encoded = metric_attr::encode(&decoded);
    let again = metric_attr::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "encode(decode(x)) does not decode: {e}\ndecoded: {decoded:?}\nencoded: {encoded:02x?}"
        )
    });
    assert!(
        same(&decoded, &again),
        "round trip changed the value\nbefore: {decoded:?}\nafter:  {again:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, stream)) = data.split_first() {
        bgp_stream(selector & 1 == 1, stream);
    }
    metric_attribute(data);
});
