//! The rings map mapped into the agent's memory (the map is `BPF_F_MMAPABLE`).
//!
//! A new ring is 65 537 slots. Written one `bpf(BPF_MAP_UPDATE_ELEM)` at a time it took tens of
//! milliseconds, most of the time from a load change to the new ring; stores into the mapping
//! take well under one. The data plane reads only the live half, and the agent flips the
//! selector (a syscall, after a fence) once the idle half is written, so nothing reads a slot
//! while it is stored.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;
use cpn_common::maps::{RING_CAPACITY, RINGS_ENTRIES, ring_index};

/// An array map stores each value at an 8-byte stride (`round_up(value_size, 8)`): a slot is
/// the first 4 bytes of its `u64`.
type Slot = u64;

/// The whole rings map, mapped shared: stores are the map's contents.
#[derive(Debug)]
pub struct RingMemory {
    base: NonNull<Slot>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; the data-plane owner is its
// only user, from one thread at a time.
unsafe impl Send for RingMemory {}

impl RingMemory {
    /// Maps `rings`; fails (and the caller writes through syscalls) when the map was created
    /// without `BPF_F_MMAPABLE`, as one pinned by an older agent.
    pub fn map(rings: &MapData) -> std::io::Result<Self> {
        let len = RINGS_ENTRIES as usize * size_of::<Slot>();
        let fd = rings.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd over exactly its size; the kernel
        // checks the map type, its flags and the length.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Page-aligned, so aligned for `Slot`.
        let base =
            NonNull::new(base.cast::<Slot>()).ok_or_else(|| std::io::Error::other("mmap"))?;
        Ok(Self { base, len })
    }

    /// Writes `ring` into `half` of service `id`'s ring (the caller checked the bounds), then
    /// fences so that the selector write after it is seen after every slot.
    pub fn write(&mut self, id: u32, half: u32, ring: &[u32]) {
        assert!(
            ring.len() <= RING_CAPACITY as usize,
            "ring larger than its capacity"
        );
        let first = ring_index(id, half, 0) as usize;
        assert!(
            first + ring.len() <= RINGS_ENTRIES as usize,
            "ring beyond the map"
        );
        for (slot, &node) in ring.iter().enumerate() {
            // SAFETY: in bounds (asserted above) and aligned; volatile because the kernel's
            // readers are invisible to the compiler.
            unsafe {
                self.base
                    .as_ptr()
                    .add(first + slot)
                    .cast::<u32>()
                    .write_volatile(node);
            }
        }
        fence(Ordering::SeqCst);
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, used by nothing after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
