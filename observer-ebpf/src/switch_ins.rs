//! What a traced thread's switch-ins carry from one to the next, with waits measured at
//! switch-in (`sched::switch_in_waits`): its `run_delay` baseline, the CPU it left, its
//! process's aggregate slot, whether an episode waits in its task storage or who preempted it,
//! and its latest pure run-queue waits not yet added to the aggregate (`SwitchIn` says why).
//!
//! An array indexed by tid (`SwitchIn` says what threads sharing an entry lose). Under
//! `perf bench sched messaging`, where every switch-in finds the next thread's state cold,
//! task storage cost three dependent cache misses per switch-in (`task->bpf_storage`, the
//! storage's cache of maps, the element) where an inlined array lookup costs one.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap},
};
use observer_common::{PENDING_WAIT_MAX_NS, PENDING_WAITS, SWITCH_IN_PREEMPTED, SwitchIn, hist};

use crate::config;

/// Sized by the agent (`observer_common::switch_ins_entries`), which sets `SWITCH_INS_MASK` to
/// its size − 1. Mmapable: its values then start on a page, so every 64-byte entry is one
/// cache line, and the agent reads the pending waits through a mapping of it.
#[map]
static SWITCH_INS: Array<SwitchIn> = Array::with_max_entries(1 << 15, BPF_F_MMAPABLE);

/// Who preempted a thread (`preempted_by_tid`, `preempted_by_task` of its entry).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Preemption {
    pub by_task: u64,
    pub by_tid: u32,
    _pad: u32,
}

/// Who preempted the threads, still waiting, whose entries other threads took meanwhile (only
/// where threads share entries: tids equal modulo the array's size), until their switch-in.
/// LRU: a record left by a thread that never got a CPU again is pushed out by later ones.
#[map]
static DISPLACED: LruHashMap<u32, Preemption> = LruHashMap::with_max_entries(4096, 0);

/// Who preempted the thread whose entry `e` is, if it was preempted: `e` must be its own.
#[inline(always)]
pub fn preemption(e: &SwitchIn) -> Option<Preemption> {
    (e.flags & SWITCH_IN_PREEMPTED != 0).then_some(Preemption { by_task: e.preempted_by_task, by_tid: e.preempted_by_tid, _pad: 0 })
}

/// Who preempted thread `tid`, whose entry another thread took while it waited (`take`), and
/// forgets it: read once, at its switch-in.
#[inline(always)]
pub fn take_displaced(tid: u32) -> Option<Preemption> {
    // SAFETY: a copy of the value is taken before the entry is removed.
    let p = unsafe { DISPLACED.get(&tid) }.copied()?;
    let _ = DISPLACED.remove(&tid);
    Some(p)
}

/// Thread `tid`'s entry, and whether it holds the thread's own state: `Some((entry, true))`
/// when it does, `(entry, false)` when another thread (or nobody) holds it, or its fields were
/// written by two CPUs at once (their check word disagrees).
#[inline(always)]
pub fn entry(tid: u32) -> Option<(&'static mut SwitchIn, bool)> {
    let p = SWITCH_INS.get_ptr_mut(tid & config::switch_ins_mask())?;
    // SAFETY: pointer into our own map value, valid for this program run. Two CPUs can write
    // one entry at once only for two threads sharing it; the check word detects the mix.
    let e = unsafe { &mut *p };
    let mine = e.tid == tid && e.is_whole();
    Some((e, mine))
}

/// Makes `e` thread `tid`'s, with nothing known of it yet. What it held for another thread is
/// gone, but for who preempted it if it is waiting (`DISPLACED`): the caller adds that
/// thread's pending waits to its aggregate first.
#[inline(always)]
pub fn take(e: &mut SwitchIn, tid: u32) {
    if e.tid != 0 && e.tid != tid && e.is_whole() {
        if let Some(p) = preemption(e) {
            // Full (only under thousands of threads preempted at once while sharing entries):
            // the LRU pushes out the oldest record.
            let _ = DISPLACED.insert(&e.tid, &p, 0);
        }
    }
    e.tid = tid;
    e.last_cpu = 0;
    e.agg_slot = 0;
    e.flags = 0;
    clear_pending(e);
}

/// Adds a pure run-queue wait of `wait` ns (at most `PENDING_WAIT_MAX_NS`) to `e`'s pending
/// waits; true when the list is then full (the caller adds them to the aggregate).
#[inline(always)]
pub fn push_pending(e: &mut SwitchIn, wait: u64) -> bool {
    let n = e.pending;
    let Some(b) = e.pending_buckets.get_mut(n as usize) else { return true };
    *b = hist::bucket(wait) as u8;
    e.pending = n + 1;
    e.pending_ns += wait;
    let wait = wait.min(PENDING_WAIT_MAX_NS) as u32;
    if wait > e.pending_max_ns {
        e.pending_max_ns = wait;
    }
    e.pending as usize >= PENDING_WAITS
}

/// Empties `e`'s pending waits (added to the aggregate, or lost).
#[inline(always)]
pub fn clear_pending(e: &mut SwitchIn) {
    e.pending = 0;
    e.pending_ns = 0;
    e.pending_max_ns = 0;
}

/// Writes `e`'s check word, last.
#[inline(always)]
pub fn seal(e: &mut SwitchIn) {
    // SAFETY: a field of our own map value; volatile so that it stays the last store.
    unsafe { core::ptr::write_volatile(&raw mut e.check, SwitchIn::check_of(e.tid, e.run_delay_ns, e.pending_ns, e.pending)) };
}
