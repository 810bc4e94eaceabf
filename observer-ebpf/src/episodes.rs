//! Where a thread's episode in progress lives.
//!
//! - tp_btf programs (`DIRECT`): BPF task-local storage. The kernel keeps the value in the
//!   task itself (`task->bpf_storage`, kernel/bpf/bpf_task_storage.c, v6.18): a lookup is a
//!   pointer walk with no hashing and no locks, an entry is allocated once per task lifetime
//!   (never per episode), and it is freed with the task, so threads that exit mid-episode leave
//!   nothing behind and a reused tid can never see a predecessor's start timestamp.
//!   "No episode" is `episode_start_ns == 0` (ktime is never 0 once the kernel runs).
//! - raw_tp programs: an LRU hash keyed by tid, whose entries are deleted when consumed. The
//!   task-storage helpers need a BTF-typed task pointer, which raw tracepoints do not provide.
//!   (How the storage map is declared: `storage`.)
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use observer_common::{Component, EpisodeStart, ThreadState};

use crate::{storage::TaskStorageDef, task::TaskPtr};

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_EPISODES")]
static TASK_EPISODES: TaskStorageDef<ThreadState> = TaskStorageDef::new();

/// Episodes in progress for the raw_tp programs, one per thread inside an episode. LRU bounds
/// what threads that exit mid-episode leave behind.
#[map]
static THREADS: LruHashMap<u32, ThreadState> = LruHashMap::with_max_entries(16384, 0);

/// The episode in progress of `task` (thread `tid`), if any.
#[inline(always)]
pub fn get<const DIRECT: bool>(task: TaskPtr, tid: u32) -> Option<*mut ThreadState> {
    if DIRECT {
        // SAFETY: pointer into this task's own storage, valid for the program's run.
        TASK_EPISODES.get::<false>(task).filter(|&p| unsafe { (*p).episode_start_ns } != 0)
    } else {
        THREADS.get_ptr_mut(&tid)
    }
}

/// Where `task`'s episode is or would go: `(slot, active)`. tp_btf: its task storage, created
/// on first use (once per task lifetime) so a following `start_in` needs no second helper
/// call; raw_tp: the map entry, which exists only while an episode is active.
#[inline(always)]
pub fn slot<const DIRECT: bool>(task: TaskPtr, tid: u32) -> (Option<*mut ThreadState>, bool) {
    if DIRECT {
        let p = TASK_EPISODES.get::<true>(task);
        // SAFETY: pointer into this task's own storage, valid for the program's run.
        let active = p.is_some_and(|p| unsafe { (*p).episode_start_ns } != 0);
        (p, active)
    } else {
        let p = THREADS.get_ptr_mut(&tid);
        (p, p.is_some())
    }
}

/// Zeroed template for new `THREADS` entries (raw_tp): a 128-byte value does not fit on the
/// stack beside sched_switch's.
#[map]
static THREAD_INIT: PerCpuArray<ThreadState> = PerCpuArray::with_max_entries(1, 0);

/// Where a new episode of `task` (thread `tid`) goes, for `init` to fill: tp_btf, its task
/// storage (`slot` when the caller already has it, created otherwise: once per task lifetime);
/// raw_tp, a new `THREADS` entry. None when that cannot be had (allocation failure, full map):
/// the episode is then not measured, and not counted either, so nothing false is reported.
#[inline(always)]
pub fn place<const DIRECT: bool>(slot: Option<*mut ThreadState>, task: TaskPtr, tid: u32) -> Option<*mut ThreadState> {
    if DIRECT {
        return slot.or_else(|| TASK_EPISODES.get::<true>(task));
    }
    let zero = THREAD_INIT.get_ptr(0)?;
    // SAFETY: pointer into our own per-CPU map value, valid for this program run.
    THREADS.insert(&tid, unsafe { &*zero }, 0).ok()?;
    THREADS.get_ptr_mut(&tid)
}

/// Begins a fresh episode at `p` (from `place`): started at `ts` in `phase` on `cpu`, with
/// nothing else known yet. The thread's cached aggregate slot after it is left alone.
///
/// Field by field, with volatile stores: building the state as a value and copying it made
/// LLVM call a byte-wise `memset` (see `words`).
///
/// # Safety
/// `p` must point to a writable `ThreadState` that no other CPU updates meanwhile (updates of
/// one thread's episode are serialised by the run-queue lock held around sched_switch and
/// try_to_wake_up).
#[inline(always)]
pub unsafe fn init(p: *mut ThreadState, ts: u64, tgid: u32, phase: Component, reason: EpisodeStart, cpu: u32) {
    use core::ptr::{addr_of_mut, write_volatile as put};
    // SAFETY: the caller's contract; every pointer below is a field of `*p`.
    unsafe {
        put(addr_of_mut!((*p).episode_start_ns), ts);
        put(addr_of_mut!((*p).phase_start_ns), ts);
        put(addr_of_mut!((*p).components_ns[0]), 0);
        put(addr_of_mut!((*p).components_ns[1]), 0);
        put(addr_of_mut!((*p).components_ns[2]), 0);
        put(addr_of_mut!((*p).tgid), tgid);
        put(addr_of_mut!((*p).phase), phase as u32);
        put(addr_of_mut!((*p).start_reason), reason as u32);
        put(addr_of_mut!((*p).prev_cpu), cpu);
        put(addr_of_mut!((*p).preempted_by_tid), 0);
        put(addr_of_mut!((*p).block_reason), 0);
        crate::words::put_name(addr_of_mut!((*p).preempted_by_comm), [0; 2]);
        put(addr_of_mut!((*p).stack_id), -1);
        put(addr_of_mut!((*p).block_dev), 0);
        put(addr_of_mut!((*p).block_addr), 0);
        put(addr_of_mut!((*p).block_ino), 0);
        put(addr_of_mut!((*p).block_pgoff), 0);
    }
}

/// Marks the episode at `p` (from `get`) consumed, so its timestamps are never reused.
#[inline(always)]
pub fn end<const DIRECT: bool>(p: *mut ThreadState, tid: u32) {
    if DIRECT {
        // SAFETY: `p` came from `get` in this same program run.
        unsafe { (*p).episode_start_ns = 0 };
    } else {
        let _ = THREADS.remove(&tid);
    }
}

// `words::put_name` and `words::name` need these names 8-byte aligned.
const _: () = assert!(
    core::mem::offset_of!(ThreadState, preempted_by_comm) % 8 == 0
        && core::mem::offset_of!(observer_common::PauseRecord, comm) % 8 == 0
        && core::mem::offset_of!(observer_common::PauseRecord, preempted_by_comm) % 8 == 0
        && core::mem::offset_of!(observer_common::ProcStats, comm) % 8 == 0
);
