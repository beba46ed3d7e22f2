//! The flow hash, shared by the data plane (ring slot, outer flow label) and the agent
//! (`explain`), so both compute the same value for a flow.

#![expect(
    clippy::inline_always,
    reason = "the eBPF programs call these; a BPF-to-BPF call would cost stack and verifier work"
)]

use crate::maps::FlowKey;

/// The seed `cpn_steer` hashes flows with (ring slot, outer flow label).
pub const FLOW_HASH_SEED: u32 = 0;

/// Odd 64-bit multiplier (2^64 / φ): multiplication by it spreads each bit over the higher
/// ones.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 40 bytes of a flow key as five little-endian words, folded in by multiply and
/// xor-shift (one dependent multiplication per word: this runs for every steered packet, and
/// a 32-bit hash over ten words cost three times the latency), then `MurmurHash3`'s 64-bit
/// finalizer so that every key bit reaches every hash bit (ring slot `hash % size`, flow
/// label `hash & 0xfffff`).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let words = [
        half(&key.src, 0),
        half(&key.src, 8),
        half(&key.dst, 0),
        half(&key.dst, 8),
        u64::from_le_bytes([
            key.src_port[0],
            key.src_port[1],
            key.dst_port[0],
            key.dst_port[1],
            key.protocol,
            0,
            0,
            0,
        ]),
    ];
    let mut h = u64::from(seed) ^ 0x28; // the key length, 40 bytes
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(K);
        h ^= h >> 29;
        i += 1;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low half of a mixed hash"
    )]
    let low = fmix64(h) as u32;
    low
}

#[inline(always)]
fn half(bytes: &[u8; 16], at: usize) -> u64 {
    u64::from_le_bytes([
        bytes[at],
        bytes[at + 1],
        bytes[at + 2],
        bytes[at + 3],
        bytes[at + 4],
        bytes[at + 5],
        bytes[at + 6],
        bytes[at + 7],
    ])
}

#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
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
    fn spreads_addresses_over_ring_slots_and_label_bits() {
        // IPv4-mapped clients 10.0.0.0 onwards: only the last word of the source changes.
        let mut slots = [0u32; 97];
        let mut bits = [0u32; 20];
        let n = 97_000u32;
        for i in 0..n {
            let mut k = key(0, 40_000);
            k.src[10..12].copy_from_slice(&[0xff, 0xff]);
            k.src[12..].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            let h = flow_hash(&k, 0);
            slots[(h % 97) as usize] += 1;
            for (b, count) in bits.iter_mut().enumerate() {
                *count += (h >> b) & 1;
            }
        }
        for s in slots {
            assert!((850..1150).contains(&s), "{slots:?}");
        }
        for b in bits {
            assert!((n * 48 / 100..n * 52 / 100).contains(&b), "{bits:?}");
        }
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
