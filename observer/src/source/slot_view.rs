//! The kernel's per-process aggregates (`PROC_STATS`, an mmapable array), read a window at a
//! time through a read-only mapping. A harvest finds the slots in use by their `tgid` and
//! copies them in place, where it iterated `PROC_SLOTS` (two system calls per process) and
//! looked each slot up (a third, and a 3 KiB copy through it).
//!
//! Windows, not the whole map: every page of a mapped BPF array is inserted when it is mapped,
//! so a standing mapping of the default 8,192 slots put 26 MB of the kernel's memory in the
//! agent's RSS. A 1 MB window is mapped, read and unmapped in turn. Mapping one costs about as
//! much as 30 lookups, so a window with fewer slots to read is read through lookups, and the
//! scan of every slot's tgid is for hosts with many processes (the caller's choice): on an idle
//! host, mapping all 26 windows each harvest cost more than the lookups it saved.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr::NonNull,
};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData};
use observer_common::ProcStats;

pub struct SlotView {
    map: Array<MapData, ProcStats>,
    /// The map's, for mapping windows of it.
    fd: OwnedFd,
    slots: u32,
    /// Slots per window: a whole number of pages and of slots.
    window: u32,
}

/// About this many bytes mapped at once.
const WINDOW_BYTES: usize = 1 << 20;

/// Slots to read in a window for it to be mapped rather than looked up slot by slot: mapping
/// and unmapping a 1 MB window costs about as much as 30 lookups.
const MAP_AT_LEAST: usize = 32;

impl SlotView {
    pub fn new(map: Map) -> anyhow::Result<Self> {
        let fd = array_fd(&map, "PROC_STATS")?;
        let map = Array::try_from(map)?;
        let slots = map.len();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let window = window_slots(page, size_of::<ProcStats>(), WINDOW_BYTES) as u32;
        let view = Self {
            map,
            fd,
            slots,
            window,
        };
        // Once now, so that a kernel that cannot map it says so at start.
        Window::<ProcStats>::map(&view.fd, 0, view.window.min(slots)).with_context(|| {
            "mapping the kernel's per-process aggregates (PROC_STATS is created mmapable, \
             which Linux supports since 5.5)"
        })?;
        Ok(view)
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// (slot, tgid) of every slot, 0 for a free one.
    pub fn tgids(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(self.slots as usize);
        for first in (0..self.slots).step_by(self.window as usize) {
            let n = self.window.min(self.slots - first);
            match Window::<ProcStats>::map(&self.fd, first, n) {
                Ok(w) => out.extend((first..first + n).map(|slot| (slot, w.tgid(slot)))),
                Err(_) => out.extend(
                    (first..first + n).map(|slot| (slot, self.get(slot).map_or(0, |s| s.tgid))),
                ),
            }
        }
        out
    }

    /// Hands `f` the aggregate of each (slot, tgid) of `wanted` (sorted by slot) that is still
    /// that process's, copied from the mapping.
    pub fn read(&self, wanted: &[(u32, u32)], mut f: impl FnMut(u32, u32, &ProcStats)) {
        let mut rest = wanted;
        while let Some(&(slot, _)) = rest.first() {
            let first = slot - slot % self.window;
            let n = self.window.min(self.slots - first);
            let end = rest.partition_point(|&(s, _)| s < first + n);
            let (these, later) = rest.split_at(end);
            let w = (these.len() >= MAP_AT_LEAST)
                .then(|| Window::<ProcStats>::map(&self.fd, first, n).ok())
                .flatten();
            for &(slot, tgid) in these {
                // Through a lookup when the window could not be mapped.
                let s = match &w {
                    Some(w) => Some(w.get(slot)),
                    None => self.get(slot),
                };
                if let Some(s) = s.filter(|s| s.tgid == tgid) {
                    f(tgid, slot, &s);
                }
            }
            rest = later;
        }
    }

    /// One slot, through a lookup.
    pub fn get(&self, slot: u32) -> Option<ProcStats> {
        self.map.get(&slot, 0).ok()
    }

    /// Empties `slot`.
    pub fn clear(&mut self, slot: u32) -> bool {
        self.map.set(slot, ProcStats::ZERO, 0).is_ok()
    }
}

/// A descriptor of its own for array `map` (named `name` in errors), to map windows of it.
pub(super) fn array_fd(map: &Map, name: &str) -> anyhow::Result<OwnedFd> {
    let Map::Array(data) = map else {
        anyhow::bail!("map {name} is not an array");
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicating the {name} map's descriptor"))
}

/// Slots per window of about `bytes`: a multiple of the slots that fill a whole number of
/// pages (the mapping's offset is in pages), at least one such multiple.
fn window_slots(page: usize, slot: usize, bytes: usize) -> usize {
    let unit_bytes = page / gcd(page, slot) * slot;
    (bytes / unit_bytes).max(1) * (unit_bytes / slot)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Values `first..first + n` of an mmapable BPF array of `T` mapped read-only, unmapped on
/// drop.
pub(super) struct Window<T> {
    base: NonNull<T>,
    first: u32,
    n: u32,
}

impl<T: Copy> Window<T> {
    /// `first` must start a page (windows are whole pages) or be 0.
    pub(super) fn map(fd: &OwnedFd, first: u32, n: u32) -> io::Result<Self> {
        let bytes = n as usize * size_of::<T>();
        // SAFETY: a new shared read-only mapping of values the map holds (an mmapable array
        // maps its values from offset 0; `first` starts a page, as windows are whole pages);
        // nothing else is mapped where the kernel puts it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (first as usize * size_of::<T>()) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap gave NULL"))?,
            first,
            n,
        })
    }

    fn at(&self, i: u32) -> *const T {
        assert!(
            (self.first..self.first + self.n).contains(&i),
            "index outside its window"
        );
        // SAFETY: within the mapping (checked above).
        unsafe { self.base.as_ptr().add((i - self.first) as usize) }
    }

    /// A copy of value `i`. Like a lookup's copy it is not atomic: counters the kernel updates
    /// meanwhile can be a count apart, which the next harvest settles.
    pub(super) fn get(&self, i: u32) -> T {
        // SAFETY: an aligned, mapped value; every bit pattern is a valid T for the plain
        // integer structs mapped here; volatile, as the kernel writes it meanwhile.
        unsafe { std::ptr::read_volatile(self.at(i)) }
    }
}

impl Window<ProcStats> {
    fn tgid(&self, slot: u32) -> u32 {
        // SAFETY: an aligned u32 of a mapped value; volatile, as the kernel writes it meanwhile.
        unsafe { std::ptr::read_volatile(&raw const (*self.at(slot)).tgid) }
    }
}

impl<T> Drop for Window<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.n as usize * size_of::<T>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::window_slots;

    #[test]
    fn windows_are_whole_pages_and_whole_slots() {
        for (page, slot) in [(4096, 3200), (16384, 3200), (65536, 3200), (4096, 4096)] {
            let n = window_slots(page, slot, 1 << 20);
            assert!(
                (n * slot).is_multiple_of(page),
                "page {page}, slot {slot}: {n}"
            );
            assert!(n > 0);
        }
        assert_eq!(window_slots(4096, 3200, 1 << 20), 320);
        // Slots and pages that meet only past the window: one such multiple anyway.
        assert_eq!(window_slots(65536, 3200, 1 << 20), 512);
    }
}
