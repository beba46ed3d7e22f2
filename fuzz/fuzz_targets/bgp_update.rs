//! Bytes from a peer, decoded the way cpn-agent's BGP speaker decodes them.
//!
//! Input layout: the first byte chooses the session (bit 0: ADD-PATH received for IPv6 unicast,
//! bit 1: for IPv4 unicast, bit 2: an iBGP session), the rest is the TCP byte stream. Every
//! whole message the speaker's codec yields is decoded; UPDATEs go through RFC 7606's checks
//! (`errors::check`) and `route::parse` as the speaker does, and a decoding error is mapped to
//! its NOTIFICATION. The whole input
//! is also read as a CPN metric attribute, and what decodes must survive an encode/decode round
//! trip unchanged. Nothing may panic.

#![no_main]

use bytes::BytesMut;
use cpn_agent::bgp::{
    errors,
    metric_attr::{self, CpnMetrics},
    route::{self, AddPath},
    speaker,
};
use libfuzzer_sys::fuzz_target;
use netgauze_bgp_pkt::BgpMessage;
use tokio_util::codec::Decoder as _;

/// The CPN metric attribute's type code, as the agent configures it by default.
const METRIC_CODE: u8 = metric_attr::DEFAULT_TYPE_CODE;

fn bgp_stream(selector: u8, stream: &[u8]) {
    let add_path = AddPath {
        ipv6: selector & 1 != 0,
        ipv4: selector & 2 != 0,
    };
    let internal = selector & 4 != 0;
    let mut codec = speaker::codec(add_path, METRIC_CODE);
    let mut buf = BytesMut::from(stream);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some((BgpMessage::Update(update), skipped))) => {
                let _ = errors::check(&update, &skipped, internal);
                let _ = route::parse(&update, METRIC_CODE);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            // The speaker answers and closes the session at its first undecodable message.
            Err(error) => {
                let _ = errors::notification(&error);
                break;
            }
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
        bgp_stream(selector, stream);
    }
    metric_attribute(data);
});
