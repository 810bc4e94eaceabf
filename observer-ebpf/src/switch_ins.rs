//! What a traced thread's switch-ins carry from one to the next, with waits measured at
//! switch-in (`sched::switch_in_waits`): its `run_delay` baseline, the CPU it left, its
//! process's aggregate slot, and whether an episode waits in its task storage.
//!
//! An array indexed by tid (`SwitchIn` says why, and what threads sharing an entry lose).
//! Under `perf bench sched messaging`, where every switch-in finds the next thread's state
//! cold, task storage cost three dependent cache misses per switch-in (`task->bpf_storage`,
//! the storage's cache of maps, the element) where an inlined array lookup costs one.
use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use observer_common::{SWITCH_IN_EPISODE, SwitchIn};

use crate::config;

/// Sized by the agent (`observer_common::switch_ins_entries`), which sets `SWITCH_INS_MASK` to
/// its size − 1. Mmapable only for where that puts the values: from a page boundary, so that
/// no 32-byte entry straddles two cache lines. Nothing maps it.
#[map]
static SWITCH_INS: Array<SwitchIn> = Array::with_max_entries(1 << 15, BPF_F_MMAPABLE);

/// Thread `tid`'s entry, and whether it holds the thread's own state: `Some((entry, true))`
/// when it does, `(entry, false)` when another thread (or nobody) holds it, or its fields were
/// written by two CPUs at once (their check word disagrees).
#[inline(always)]
pub fn entry(tid: u32) -> Option<(&'static mut SwitchIn, bool)> {
    let p = SWITCH_INS.get_ptr_mut(tid & config::switch_ins_mask())?;
    // SAFETY: pointer into our own map value, valid for this program run. Two CPUs can write
    // one entry at once only for two threads sharing it; the check word detects the mix.
    let e = unsafe { &mut *p };
    let mine = e.tid == tid && e.check == SwitchIn::check_of(tid, e.run_delay_ns);
    Some((e, mine))
}

/// Makes `e` thread `tid`'s, with nothing known of it yet.
#[inline(always)]
pub fn take(e: &mut SwitchIn, tid: u32) {
    e.tid = tid;
    e.last_cpu = 0;
    e.agg_slot = 0;
    e.flags = 0;
}

/// Records that thread `tid`, leaving its CPU, starts an episode kept in its task storage:
/// its next switch-in must look there.
#[inline(always)]
pub fn mark_episode(tid: u32) {
    if let Some((e, mine)) = entry(tid) {
        if !mine {
            take(e, tid);
            seal(e);
        }
        e.flags = SWITCH_IN_EPISODE;
    }
}

/// Writes `e`'s check word, last.
#[inline(always)]
pub fn seal(e: &mut SwitchIn) {
    // SAFETY: a field of our own map value; volatile so that it stays the last store.
    unsafe { core::ptr::write_volatile(&raw mut e.check, SwitchIn::check_of(e.tid, e.run_delay_ns)) };
}
