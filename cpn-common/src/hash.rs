//! The flow hash, shared by the data plane (ring slot, outer flow label) and the agent
//! (`explain`), so both compute the same value for a flow.

#![expect(
    clippy::inline_always,
    reason = "the eBPF programs call these; a BPF-to-BPF call would cost stack and verifier work"
)]

use crate::maps::FlowKey;

/// The seed `cpn_steer` hashes flows with (ring slot, outer flow label).
pub const FLOW_HASH_SEED: u32 = 0;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// `MurmurHash3` (x86, 32-bit) over the 40 bytes of a flow key, read as little-endian words.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < 4 {
        h = mix(h, word(&key.src, i));
        h = mix(h, word(&key.dst, i));
        i += 1;
    }
    h = mix(
        h,
        u32::from_le_bytes([
            key.src_port[0],
            key.src_port[1],
            key.dst_port[0],
            key.dst_port[1],
        ]),
    );
    h = mix(h, u32::from(key.protocol));
    fmix(h ^ 0x28) // the key length, 40 bytes
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([
        bytes[i * 4],
        bytes[i * 4 + 1],
        bytes[i * 4 + 2],
        bytes[i * 4 + 3],
    ])
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, port: u16) -> FlowKey {
        let mut src = [0; 16];
        src[15] = last;
        FlowKey {
            src,
            dst: [1; 16],
            src_port: port.to_be_bytes(),
            dst_port: [0, 80],
            protocol: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = flow_hash(&key(1, 1000), 0);
        assert_ne!(base, flow_hash(&key(2, 1000), 0));
        assert_ne!(base, flow_hash(&key(1, 1001), 0));
        let mut other = key(1, 1000);
        other.protocol = 17;
        assert_ne!(base, flow_hash(&other, 0));
        assert_ne!(base, flow_hash(&key(1, 1000), 1));
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            buckets[(flow_hash(&key(7, port), 0) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "{buckets:?}");
        }
    }
}
