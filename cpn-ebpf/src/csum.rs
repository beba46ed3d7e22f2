//! Internet checksums (RFC 1071) over headers and packet bytes.

use aya_ebpf::programs::XdpContext;

use crate::parse::read;

/// Adds 16-bit big-endian words of `bytes` to `sum`.
#[inline(always)]
pub fn add_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        sum += u32::from(bytes[N - 1]) << 8;
    }
    sum
}

/// Adds `len` bytes of the packet from `offset` (`len` a multiple of 4, at most `MAX`).
#[inline(always)]
pub fn add_packet<const MAX: usize>(
    ctx: &XdpContext,
    mut sum: u32,
    offset: usize,
    len: usize,
) -> Option<u32> {
    for i in 0..MAX / 4 {
        let at = i * 4;
        if at >= len {
            break;
        }
        let word: [u8; 4] = read(ctx, offset + at)?;
        // Fold as we go so that 32 bits never overflow.
        sum = fold_once(sum + u32::from(u16::from_be_bytes([word[0], word[1]])))
            + u32::from(u16::from_be_bytes([word[2], word[3]]));
    }
    Some(sum)
}

#[inline(always)]
fn fold_once(sum: u32) -> u32 {
    (sum & 0xffff) + (sum >> 16)
}

/// Folds a 32-bit sum into the final one's-complement checksum, in network order.
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    let folded = fold_once(fold_once(sum));
    (!(folded as u16)).to_be_bytes()
}
