//! The kernel's per-process aggregates (`PROC_STATS`, an mmapable array) mapped read-only into
//! the agent: a harvest reads every slot in place, where a lookup was a system call and a
//! 3 KiB copy per process, and finds the slots in use by their `tgid` instead of iterating
//! `PROC_SLOTS` (two more calls per process).
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::bail;
use aya::maps::MapData;
use observer_common::ProcStats;

pub struct SlotView {
    base: NonNull<ProcStats>,
    slots: usize,
}

// SAFETY: the view owns its mapping (unmapped on drop) and only reads through it; the kernel
// programs write the memory concurrently whichever thread reads it.
unsafe impl Send for SlotView {}

impl SlotView {
    /// Maps the `slots` values of the array `map`, whose value is a `ProcStats` (a whole
    /// number of cache lines, so the kernel's element stride is its size).
    pub fn new(map: &MapData, slots: u32) -> anyhow::Result<Self> {
        let slots = slots as usize;
        let bytes = slots * size_of::<ProcStats>();
        if bytes == 0 {
            bail!("the kernel's per-process aggregate map has no slots");
        }
        // SAFETY: a new shared read-only mapping of the map's values (an mmapable BPF array
        // maps them from offset 0); nothing else is mapped at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mapping the kernel's per-process aggregates ({bytes} bytes): {} (the map is \
                 created mmapable, which Linux supports since 5.5)",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: NonNull::new(p.cast()).expect("mmap returned NULL without MAP_FIXED"),
            slots,
        })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn slot(&self, slot: usize) -> Option<*const ProcStats> {
        // SAFETY: within the mapping, which holds `slots` values.
        (slot < self.slots).then(|| unsafe { self.base.as_ptr().add(slot) }.cast_const())
    }

    /// The process whose aggregate `slot` holds (0: free).
    pub fn tgid(&self, slot: usize) -> u32 {
        // SAFETY: an aligned u32 of a mapped value; volatile, as the kernel writes it meanwhile.
        self.slot(slot).map_or(0, |p| unsafe {
            std::ptr::read_volatile(&raw const (*p).tgid)
        })
    }

    /// A copy of `slot`'s aggregate. Like a lookup's copy it is not atomic: counters the
    /// kernel updates meanwhile can be a count apart, which the next harvest settles.
    pub fn get(&self, slot: usize) -> Option<ProcStats> {
        // SAFETY: an aligned, mapped value; every bit pattern is a valid ProcStats (integers
        // and bytes only); volatile, as the kernel writes it meanwhile.
        self.slot(slot)
            .map(|p| unsafe { std::ptr::read_volatile(p) })
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this length, unmapped once.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.slots * size_of::<ProcStats>(),
            )
        };
    }
}
