//! Internet checksums (RFC 1071).
//!
//! Sums are kept in the CPU's byte order, as the kernel's csum helpers keep theirs: one's
//! complement addition commutes with byte swapping (RFC 1071 §2 B), so the folded sum, stored
//! as it is, is the checksum in network order.

use aya_ebpf::helpers::bpf_csum_diff;

use crate::parse::Frame;

/// Bytes summed per helper call.
const CHUNK: usize = 256;

/// Adds `bytes` (an even number of them) as 16-bit words in the CPU's byte order.
#[inline(always)]
pub fn add_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Adds the `len` packet bytes from `offset` (`len` a multiple of 4, at most `MAX`).
///
/// The bytes go through a stack buffer, `CHUNK` at a time, into `bpf_csum_diff`: a handful of
/// helper calls the verifier walks once each, where a word-by-word loop over a 1232-byte
/// quote cost it tens of thousands of instructions.
#[inline(always)]
pub fn add_packet<const MAX: usize>(
    ctx: &impl Frame,
    mut sum: u32,
    offset: usize,
    len: usize,
) -> Option<u32> {
    #[repr(C, align(8))]
    struct Chunk([u8; CHUNK]);
    // Left uninitialised: the load helper writes what the sum then reads.
    let mut buf = core::mem::MaybeUninit::<Chunk>::uninit();
    let mut done = 0;
    for _ in 0..MAX.div_ceil(CHUNK) {
        // A multiple of 4 up to CHUNK; written so that the verifier sees its bounds.
        let left = len.saturating_sub(done);
        let n = if left >= CHUNK {
            CHUNK
        } else {
            left & (CHUNK - 4)
        } as u32;
        if n == 0 {
            break;
        }
        // SAFETY: helper calls on our context and a stack buffer of at least `n` bytes; the
        // load helper checks the packet bounds itself.
        if !ctx.load_bytes((offset + done) as u32, buf.as_mut_ptr().cast(), n) {
            return None;
        }
        let folded =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr().cast(), n, sum) };
        if folded < 0 {
            return None;
        }
        sum = folded as u32;
        done += n as usize;
    }
    Some(sum)
}

#[inline(always)]
fn fold_once(sum: u32) -> u32 {
    (sum & 0xffff) + (sum >> 16)
}

/// Folds a 32-bit sum into the final one's-complement checksum, ready to store.
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    let folded = fold_once(fold_once(sum));
    (!(folded as u16)).to_ne_bytes()
}
