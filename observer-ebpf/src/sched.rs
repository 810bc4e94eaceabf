//! Scheduler pauses: run-queue wait, uninterruptible (D) sleep and stopped time per thread.
//!
//! Per-thread state machine (kernel/sched/core.c, v6.18):
//!
//! ```text
//!  sched_switch, prev runnable (preempted/yield) ──► Runq ──────────────┐
//!  sched_switch, prev in D (not TASK_NOLOAD) ──► Blocked ─ wakeup ─► Runq ┤ sched_switch in:
//!  sched_switch, prev stopped/traced ─────────► Stopped ─ wakeup ─► Runq ┤ episode ends,
//!  sched_wakeup of a voluntary sleeper ───────────────────────────► Runq ┤ aggregated, and
//!  sched_wakeup_new (fork) ───────────────────────────────────────► Runq ┘ streamed if ≥ min
//! ```
//!
//! Each transition closes the phase in progress, so the components sum exactly to the episode.
//! Voluntary sleep (S) is not a pause: a thread switched out in S has no state until woken.
//!
//! Where the kernel keeps its own run-queue accounting (`task->sched_info`, CONFIG_SCHED_INFO)
//! and the run-queue clock is reachable, the wakeup needs no program at all
//! (`switch_in_waits`): when a thread gets the CPU, `sched_info.last_queued` still holds when it
//! was queued on this run queue and `run_delay` what it waited on run queues it was migrated
//! away from (sched_info_switch runs after the tracepoint, in context_switch). Its wait since it
//! last left a CPU is the growth of `run_delay` plus the current wait, which also splits a D or
//! stopped episode at its wakeup: the queueing is the wakeup. `sched_wakeup` is then not
//! attached, and `sched_wakeup_new` only to follow forks under `--pid`. What a thread carries
//! from one switch-in to the next (its `run_delay` baseline, who preempted it) is in
//! `switch_ins`; a D or stopped episode begun at switch-out stays in its task storage.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, Queue},
    programs::{BtfTracePointContext, RawTracePointContext, tracing::StackIdContext},
};
use observer_common::{
    BlockReason, Component, ComponentStats, CpuSteal, DropCause, EpisodeStart, ExitRecord, PENDING_WAIT_MAX_NS, PENDING_WAITS, PauseRecord,
    ProcStats, RecordKind, STAT_EPISODE, STAT_STEAL, SWITCH_IN_EPISODE, SWITCH_IN_PREEMPTED, StopKind, SwitchIn, ThreadState,
    agg_start_tag, hist,
};

use crate::{
    config, counters, episodes, memory, output, stops, switch_ins,
    task::{self, TaskPtr},
    words,
};

// task->__state bits (include/linux/sched.h, v6.18).
const TASK_RUNNING: u32 = 0x0000;
const TASK_UNINTERRUPTIBLE: u32 = 0x0002;
const TASK_STOPPED: u32 = 0x0004;
const TASK_TRACED: u32 = 0x0008;
/// Set with TASK_UNINTERRUPTIBLE for TASK_IDLE sleepers (idle kworkers, rcu threads): D state
/// that does not count towards load and is not a pause.
const TASK_NOLOAD: u32 = 0x0400;
const TASK_INTERRUPTIBLE: u32 = 0x0001;
/// cgroup v1 freezer (kernel/freezer.c): the frozen task's state.
const TASK_FROZEN: u32 = 0x8000;
/// `task->jobctl` bit of the cgroup v2 freezer's trap (include/linux/sched/jobctl.h, bit 23
/// since Linux 5.2): a v2-frozen task sleeps in `do_freezer_trap` (kernel/signal.c) as
/// TASK_INTERRUPTIBLE (| TASK_FREEZABLE) with this bit set, until the thaw clears it and wakes
/// the task.
const JOBCTL_TRAP_FREEZE: u64 = 1 << 23;

/// Per-process aggregates, one slot per process (`ProcStats::tgid` says whose). Sized by the
/// agent (`--max-processes`), which also frees the slots of exited processes. Mmapable only
/// for where that puts the values: from a page boundary, so that every slot starts a cache
/// line (`ProcStats::_pad1`). Nothing maps it.
#[map]
pub(crate) static PROC_STATS: Array<ProcStats> = Array::with_max_entries(4096, BPF_F_MMAPABLE);

/// tgid → its `PROC_STATS` slot. Looked up once per thread (the slot is then cached in the
/// thread's task storage) and by the agent, which deletes entries when it frees their slots.
#[map]
static PROC_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Free `PROC_STATS` slots, filled by the agent before the programs attach and refilled as it
/// retires processes. Empty: a new process gets no aggregate (a `SchedAggregate` drop).
#[map]
static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(4096, 0);

/// Per CPU: the CPU's cumulative steal (`rq->prev_steal_time_rq`) at its first and last
/// context switch; 0 until first read. The agent reads it at exit.
#[map]
static CPU_STEAL: PerCpuArray<CpuSteal> = PerCpuArray::with_max_entries(1, 0);

/// Processes under observation with `--pid` (and the children they fork afterwards).
#[map]
static WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// Zeroed template for new `PROC_STATS` entries: too large for the 512-byte BPF stack.
#[map]
static PROC_STATS_INIT: PerCpuArray<ProcStats> = PerCpuArray::with_max_entries(1, 0);

// ---- entry points: tp_btf where the kernel allows BPF_PROG_TYPE_TRACING, raw_tp otherwise.
// Both receive the same arguments:
//   sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
//                unsigned int prev_state)
//   sched_wakeup(struct task_struct *p), sched_wakeup_new(struct task_struct *p)

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    on_switch::<true, _>(&ctx, ctx.arg::<u64>(0) != 0, ctx.arg(1), ctx.arg(2), ctx.arg::<u64>(3) as u32);
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup::<true>(ctx.arg(0), EpisodeStart::Wakeup);
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup::<true>(ctx.arg(0), EpisodeStart::New);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    on_switch::<false, _>(&ctx, ctx.arg::<u64>(0) != 0, ctx.arg(1), ctx.arg(2), ctx.arg::<u64>(3) as u32);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup::<false>(ctx.arg(0), EpisodeStart::Wakeup);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup::<false>(ctx.arg(0), EpisodeStart::New);
    0
}

// ---- logic

/// Whether a process is traced at all.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    if tgid == config::self_tgid() {
        return false;
    }
    if !config::filter_pids() {
        return true;
    }
    // SAFETY: read-only lookup of a u8 flag; a concurrent delete can only make us read a stale
    // but valid byte.
    unsafe { WATCHED.get(&tgid).is_some() }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions. CLOCK_MONOTONIC, shared by all CPUs, so a thread
    // that migrates between wakeup and switch-in is still measured correctly.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether run-queue waits are measured at switch-in from the kernel's `sched_info` (tp_btf,
/// run-queue clock and `sched_info` offsets configured) rather than from sched_wakeup.
#[inline(always)]
pub fn switch_in_waits<const D: bool>() -> bool {
    uses_rq_clock::<D>() && config::task_run_delay_off() != 0
}

/// Whether episode boundaries are run-queue clock readings (tp_btf with the offsets
/// configured) rather than CLOCK_MONOTONIC.
#[inline(always)]
pub fn uses_rq_clock<const D: bool>() -> bool {
    D && config::rq_clock_off() != 0
}

/// Timestamp of an episode boundary of `task`, which is on (or being queued on) this CPU's or
/// the wakeup target's run queue, whose lock the scheduler holds and whose clock it has just
/// updated. The run-queue clock (sched_clock, synchronised across CPUs when the TSC is stable)
/// is what schedstat's run_delay uses, and three loads are far cheaper than
/// bpf_ktime_get_ns on virtual machines (measured: ~70 ns per clock read on our VMs, see the
/// README's benchmark). Every boundary of an episode comes from the same clock, chosen per
/// program at load time; only streamed records are converted to CLOCK_MONOTONIC (`emit`).
/// CLOCK_MONOTONIC start of an interval that began at episode-clock `start` and lasted
/// `duration` up to now.
#[inline(always)]
pub fn to_mono<const D: bool>(start: u64, duration: u64) -> u64 {
    if uses_rq_clock::<D>() { now().saturating_sub(duration) } else { start }
}

#[inline(always)]
pub fn clock<const D: bool>(task: TaskPtr) -> Option<u64> {
    clock_of::<D>(if uses_rq_clock::<D>() { task::rq::<D>(task) } else { None })
}

/// The episode clock, given the task's run queue (read by the caller only when it is needed:
/// `uses_rq_clock`, or for the steal clock).
#[inline(always)]
fn clock_of<const D: bool>(rq: Option<TaskPtr>) -> Option<u64> {
    if uses_rq_clock::<D>() { rq.and_then(task::rq_clock::<D>) } else { Some(now()) }
}

#[inline(always)]
pub fn cpu() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn on_switch<const D: bool, C: StackIdContext>(ctx: &C, preempt: bool, prev: TaskPtr, next: TaskPtr, prev_state: u32) {
    // prev and next share this CPU's run queue.
    let rq = if uses_rq_clock::<D>() || config::rq_steal_off() != 0 { task::rq::<D>(next) } else { None };
    let Some(ts) = clock_of::<D>(rq) else { return };
    // Every switch moves the CPU's steal baseline, whoever ran: steal under the idle task or
    // an untraced process is not charged to the next traced one.
    let stolen = match rq {
        Some(rq) => steal_since_last_switch::<D>(rq),
        None => 0,
    };
    // Read once: switch_out names it as the preemptor, switch_in ends its episode.
    let next_tid = task::tid::<D>(next);
    // The idle tasks are pid 0 on every CPU: never a victim, and never a shared key.
    if let Some((prev_tid, prev_tgid)) = task::ids::<D>(prev) {
        if prev_tid != 0 && is_traced(prev_tgid) {
            if stolen > 0 {
                if let Some(ps) = proc_stats::<D>(prev_tgid, prev) {
                    counters::add_stat(&mut ps.stats[STAT_STEAL], stolen);
                }
            }
            switch_out::<D, C>(ctx, ts, preempt, prev, prev_tid, prev_tgid, next, next_tid, prev_state);
        }
    }
    if let Some(tid) = next_tid {
        if switch_in_waits::<D>() {
            switch_in_measured(ts, next, tid);
        } else {
            switch_in::<D>(ts, next, tid);
        }
    }
}

/// `prev` leaves the CPU: start an episode unless it is going to sleep voluntarily.
#[inline(always)]
fn switch_out<const D: bool, C: StackIdContext>(
    ctx: &C,
    ts: u64,
    preempt: bool,
    prev: TaskPtr,
    tid: u32,
    tgid: u32,
    next: TaskPtr,
    next_tid: Option<u32>,
    prev_state: u32,
) {
    let (phase, reason, stop) = if preempt || prev_state == TASK_RUNNING {
        // Still runnable: preempted, or yielded/cond_resched'ed with work left. Waits like
        // this are what /proc/<pid>/schedstat's run_delay counts, as do we.
        (Component::Runq, EpisodeStart::Preempted, None)
    } else if prev_state & TASK_UNINTERRUPTIBLE != 0 && prev_state & TASK_NOLOAD == 0 {
        (Component::Blocked, EpisodeStart::Blocked, None)
    } else if prev_state & TASK_TRACED != 0 {
        (Component::Stopped, EpisodeStart::Stopped, Some(StopKind::Ptrace))
    } else if prev_state & TASK_FROZEN != 0 {
        (Component::Stopped, EpisodeStart::Stopped, Some(StopKind::Freezer))
    } else if prev_state & TASK_STOPPED != 0 {
        (Component::Stopped, EpisodeStart::Stopped, Some(StopKind::Signal))
    } else if prev_state & TASK_INTERRUPTIBLE != 0 && task::jobctl::<D>(prev) & JOBCTL_TRAP_FREEZE != 0 {
        // The cgroup v2 freezer's trap: an S sleep that is a stop. One load of the current
        // task's own (cache-hot) task_struct on the voluntary-sleep path.
        (Component::Stopped, EpisodeStart::Stopped, Some(StopKind::Freezer))
    } else {
        // Voluntary sleep (S, TASK_IDLE) or exit (TASK_DEAD): not a pause. The thread has no
        // entry to clear: its last episode was consumed when it got the CPU, and on_wakeup
        // creates none for a thread still on a CPU. (No map operation on this, the most
        // common, path.)
        return;
    };
    if let Some(kind) = stop {
        let holder = if kind == StopKind::Ptrace { task::parent::<D>(prev).map(task::identity::<D>) } else { None };
        stops::thread_stopped(tgid, ts, kind, holder);
    }
    if phase == Component::Runq && switch_in_waits::<D>() {
        // The kernel starts timing this wait right after this program (sched_info_depart
        // queues a still-runnable task again): it is measured at the switch-in like any other,
        // and needs no episode. Its entry keeps who took the CPU.
        mark_preempted(tid, next_tid.unwrap_or(0), next);
        return;
    }
    let Some(p) = episodes::place::<D>(None, prev, tid) else { return };
    if switch_in_waits::<D>() {
        mark_episode(tid);
    }
    // SAFETY: this thread's episode; the run-queue lock serialises its updates.
    let st = unsafe {
        episodes::init(p, ts, tgid, phase, reason, cpu());
        &mut *p
    };
    if phase == Component::Blocked {
        memory::explain_block::<D, C>(ctx, prev, tid, st);
    }
    if phase == Component::Runq {
        if let Some(by) = next_tid {
            st.preempted_by_tid = by;
            if by != 0 {
                // SAFETY: a field of this thread's episode, 8-byte aligned.
                unsafe { words::put_name(&raw mut st.preempted_by_comm, task::comm_words::<D>(next)) };
            }
        }
    }
}

/// `p` is woken: close its D/stopped phase and start its run-queue wait.
#[inline(always)]
fn on_wakeup<const D: bool>(p: TaskPtr, reason: EpisodeStart) {
    let Some((tid, tgid)) = task::ids::<D>(p) else { return };
    if tid == 0 {
        return;
    }
    if switch_in_waits::<D>() {
        // Waits are measured at switch-in; only sched_wakeup_new is attached, to follow forks
        // under --pid.
        if reason == EpisodeStart::New && config::filter_pids() && !is_traced(tgid) {
            follow_fork::<D>(tgid);
        }
        return;
    }
    if !is_traced(tgid) {
        if reason == EpisodeStart::New && config::filter_pids() && follow_fork::<D>(tgid) {
            // A new process forked by a watched one: now watched too.
        } else {
            return;
        }
    }
    let Some(ts) = clock::<D>(p) else { return };
    let (slot, active) = episodes::slot::<D>(p, tid);
    if let (Some(st), true) = (slot, active) {
        // SAFETY: pointer to this thread's episode; concurrent updates of one thread's entry
        // are serialised by the runqueue lock held around sched_switch and ttwu.
        let st = unsafe { &mut *st };
        if st.phase != Component::Runq as u32 {
            if st.phase == Component::Stopped as u32 {
                stops::thread_resumed::<D>(p, tgid, ts);
            }
            add_phase(st, ts);
            st.phase = Component::Runq as u32;
            st.phase_start_ns = ts;
        }
        // Already waiting in the run queue (woken while preempted): nothing changes.
        return;
    }
    // A wakeup of a thread that is still on its CPU (ttwu_runnable: it set its state to sleep
    // but had not yet switched out) is not a wait; creating an episode for it would leave a
    // stale start behind when it next sleeps voluntarily.
    if task::on_cpu::<D>(p) {
        return;
    }
    // A voluntary sleeper (or a new task): the pause is only the wait that starts now.
    if let Some(st) = episodes::place::<D>(slot, p, tid) {
        // SAFETY: this thread's episode; the run-queue lock serialises its updates.
        unsafe { episodes::init(st, ts, tgid, Component::Runq, reason, cpu()) };
    }
}

/// In `sched_wakeup_new` the current task is the parent (`wake_up_new_task` is called from
/// `kernel_clone`, kernel/fork.c v6.18): if the parent's process is watched, so is the child.
#[inline(always)]
fn follow_fork<const D: bool>(child_tgid: u32) -> bool {
    // SAFETY: helper without preconditions; returns the current task_struct pointer. It is an
    // untyped scalar to the verifier, so it is always read through bpf_probe_read_kernel.
    let parent = unsafe { bpf_get_current_task() } as TaskPtr;
    let Some((_, parent_tgid)) = task::ids::<false>(parent) else { return false };
    // SAFETY: read-only lookup of a u8 flag.
    if parent_tgid == child_tgid || unsafe { WATCHED.get(&parent_tgid).is_none() } {
        return false;
    }
    // Full map: the child is not followed (WATCHED is sized far above what --pid needs).
    WATCHED.insert(&child_tgid, &1, 0).is_ok()
}

/// Closes the phase in progress at `ts`. Timestamps are monotonic; the saturating sub guards
/// against a stale entry of a reused tid rather than letting it underflow to 2^64.
#[inline(always)]
fn add_phase(st: &mut ThreadState, ts: u64) {
    let d = ts.saturating_sub(st.phase_start_ns);
    match st.phase {
        0 => st.components_ns[0] += d,
        1 => st.components_ns[1] += d,
        _ => st.components_ns[2] += d,
    }
}

/// `next` gets the CPU: its episode (if any) ends now.
#[inline(always)]
fn switch_in<const D: bool>(ts: u64, next: TaskPtr, tid: u32) {
    if tid == 0 {
        return;
    }
    let Some(stp) = episodes::get::<D>(next, tid) else {
        // No episode: it was not traced, or its wakeup was missed (e.g. attached mid-sleep).
        return;
    };
    // SAFETY: pointer into our own map; the runqueue lock serialises this thread's updates.
    let st = unsafe { &mut *stp };
    // A missing wakeup (D/stopped phase still open) counts up to now as that phase.
    if st.phase == Component::Stopped as u32 {
        stops::thread_resumed::<D>(next, st.tgid, ts);
    }
    add_phase(st, ts);
    finish::<D>(ts, next, tid, stp);
}

/// `next` (thread `tid`) gets the CPU, its run-queue wait measured from the kernel's own
/// accounting (`switch_in_waits`; tp_btf only). Every traced thread's `SWITCH_INS` entry is
/// touched here, to keep the `run_delay` it will have once the kernel has accounted this
/// arrival; its task storage only when an episode may be waiting there.
#[inline(always)]
fn switch_in_measured(ts: u64, next: TaskPtr, tid: u32) {
    if tid == 0 {
        return;
    }
    let Some(tgid) = task::tgid::<true>(next) else { return };
    if !is_traced(tgid) {
        return;
    }
    let Some((e, mine)) = switch_ins::entry(tid) else { return };
    let (last_queued, run_delay, pcount) = task::sched_info(next);
    // Queued on this run queue since `last_queued` (sched_info_arrive adds it to run_delay
    // right after this program, with the same clock reading).
    let current = if last_queued != 0 { ts.saturating_sub(last_queued) } else { 0 };
    let after = run_delay + current;
    let queued = if pcount == 0 {
        // A new task's first run: everything it ever waited is this wait (and an entry left
        // by an exited thread with the same tid is not its own).
        after
    } else if mine && e.last_cpu != 0 {
        after.saturating_sub(e.run_delay_ns)
    } else {
        // First seen getting a CPU (started before pausewatch, or its entry was taken by a
        // thread sharing it): waits on run queues it left before this one are not known.
        current
    };
    let left = if mine && pcount != 0 { u32::from(e.last_cpu) } else { 0 };
    // An episode begun when it left the CPU (D, stopped) is in its task storage: the entry
    // says so, or cannot say (not its own).
    let look = !mine || e.flags & SWITCH_IN_EPISODE != 0;
    // Preempted: who by is in the entry, or was, if another thread took it meanwhile (a new
    // thread's first run cannot follow a preemption).
    let preempted = match (mine, pcount) {
        (true, _) => switch_ins::preemption(e),
        (false, 0) => None,
        (false, _) => switch_ins::take_displaced(tid),
    };
    if !mine {
        take_entry(e, tid);
    }
    let here = cpu();
    e.flags = 0;
    e.last_cpu = (here + 1) as u16;
    e.run_delay_ns = after;
    end_wait(ts, next, tid, tgid, e, look, (last_queued, queued, pcount), (left, here, preempted));
    // Last, once: whatever ending the wait changed in the entry.
    switch_ins::seal(e);
}

/// The rest of `switch_in_measured` for thread `tid` of process `tgid` (task `next`), whose
/// entry `e` is its own and holds its new baseline: the episode in task storage (when `look`)
/// ends, or the wait alone (`queued` ns; since a preemption when `preempted` says by whom) is
/// streamed when long enough and kept pending.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn end_wait(
    ts: u64,
    next: TaskPtr,
    tid: u32,
    tgid: u32,
    e: &mut SwitchIn,
    look: bool,
    (last_queued, queued, pcount): (u64, u64, u64),
    (left, here, preempted): (u32, u32, Option<switch_ins::Preemption>),
) {
    if look {
        if let Some(stp) = episodes::get::<true>(next, tid) {
            // SAFETY: this thread's own task storage; the run-queue lock serialises its updates.
            let st = unsafe { &mut *stp };
            // A D or stopped phase ended when the thread was queued again: its wakeup.
            if st.phase != Component::Runq as u32 {
                let woken = ts - queued.min(ts.saturating_sub(st.phase_start_ns));
                if st.phase == Component::Stopped as u32 {
                    stops::thread_resumed::<true>(next, tgid, woken);
                }
                add_phase(st, woken);
                st.phase = Component::Runq as u32;
                st.phase_start_ns = woken;
            }
            add_phase(st, ts);
            finish::<true>(ts, next, tid, stp);
            return;
        }
    }
    // Preempted, woken from a voluntary sleep, or new: the pause is the wait alone.
    if last_queued == 0 && queued == 0 {
        return;
    }
    let streamed = queued >= config::min_pause_ns();
    if streamed {
        // Streamed, straight from here: a wait alone needs no episode in task storage.
        let (reason, by) = match (preempted, pcount) {
            (Some(p), _) => (EpisodeStart::Preempted, preemptor(p)),
            (None, 0) => (EpisodeStart::New, (0, [0; 2])),
            (None, _) => (EpisodeStart::Wakeup, (0, [0; 2])),
        };
        let prev_cpu = if left != 0 { left - 1 } else { here };
        if !emit_wait(tid, tgid, next, queued, reason, prev_cpu, by) {
            if let Some(ps) = cached_proc_stats::<true, _>(&mut e.agg_slot, &mut e.agg_start, tgid, next) {
                counters::atomic_add(&mut ps.dropped_records, 1);
            }
        }
    }
    if queued > PENDING_WAIT_MAX_NS {
        // Longer than an entry keeps (only with a --min-pause above it): aggregated now.
        if let Some(ps) = cached_proc_stats::<true, _>(&mut e.agg_slot, &mut e.agg_start, tgid, next) {
            add_runq_wait::<true>(ps, queued, next, streamed);
        }
        return;
    }
    // Kept in the entry with the thread's other pending waits, which go to the process's
    // run-queue aggregate together (`SwitchIn`). The slot is found at the thread's first
    // wait, so that the agent can tell whose they are.
    if e.agg_slot == 0 && cached_proc_stats::<true, _>(&mut e.agg_slot, &mut e.agg_start, tgid, next).is_none() {
        // No slot (counted as a drop): the wait cannot be aggregated.
        return;
    }
    if switch_ins::push_pending(e, queued) {
        flush_pending(e, tgid, next, true);
    }
}

/// The thread of preemption `p`: its tid, and the name its task has now. The task may have
/// exited since, so it is read through the kernel's fault-tolerant copy, and only while it
/// still has that tid (its memory may since hold another task); otherwise the name is unknown
/// (zero).
#[inline(always)]
fn preemptor(p: switch_ins::Preemption) -> (u32, [u64; 2]) {
    let by = p.by_tid;
    let task = p.by_task as TaskPtr;
    if by == 0 || task.is_null() || task::tid::<false>(task) != Some(by) {
        return (by, [0; 2]);
    }
    (by, task::comm_words::<false>(task))
}

/// Streams a wait of `wait` ns, ending now, of thread `tid` of process `tgid` (task `next`)
/// that is a whole episode (`emit` for one kept in task storage), since a preemption by
/// `preempted_by` (tid and name; 0 when not preempted); false (the drop counted) when the ring
/// buffer is full.
#[inline(always)]
fn emit_wait(tid: u32, tgid: u32, next: TaskPtr, wait: u64, reason: EpisodeStart, prev_cpu: u32, preempted_by: (u32, [u64; 2])) -> bool {
    let Some(mut entry) = output::reserve::<PauseRecord>(DropCause::Sched) else { return false };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` points to a reserved, writable PauseRecord in the ring buffer; every field
    // is written before submit.
    unsafe {
        (*r).kind = RecordKind::Pause as u32;
        (*r).cpu = cpu();
        (*r).tid = tid;
        (*r).tgid = tgid;
        (*r).start_mono_ns = now().saturating_sub(wait);
        (*r).duration_ns = wait;
        (*r).components_ns = [wait, 0, 0];
        (*r).prev_cpu = prev_cpu;
        (*r).start_reason = reason as u32;
        (*r).preempted_by_tid = preempted_by.0;
        (*r).block_reason = 0;
        words::put_name(&raw mut (*r).comm, task::comm_words::<true>(next));
        words::put_name(&raw mut (*r).preempted_by_comm, preempted_by.1);
        (*r).stack_id = -1;
        (*r).block_dev = 0;
        (*r).block_addr = 0;
        (*r).block_ino = 0;
        (*r).block_pgoff = 0;
    }
    output::submit(entry);
    true
}

/// Ends the episode at `stp` (thread `tid`, task `next`, which gets the CPU at `ts`, every
/// phase closed): streams it when long enough, adds it to its process's aggregate.
#[inline(always)]
fn finish<const D: bool>(ts: u64, next: TaskPtr, tid: u32, stp: *mut ThreadState) {
    // SAFETY: pointer into our own map or task storage; the runqueue lock serialises this
    // thread's updates.
    let st = unsafe { &mut *stp };
    let duration = ts.saturating_sub(st.episode_start_ns);
    // Stops are streamed once per process (stops.rs), not once per stopped thread.
    let streamed = duration >= config::min_pause_ns() && st.components_ns[Component::Stopped as usize] == 0;
    if D && streamed && st.block_reason == BlockReason::Stack as u32 && st.components_ns[Component::Blocked as usize] > 0 {
        st.stack_id = memory::block_stack(next);
    }
    // Read in place (a copy would not fit beside the record on the 512-byte BPF stack): nothing
    // below touches the episode maps, so the entry stays valid until `end`.
    let dropped = streamed && !emit::<D>(tid, next, st, duration);
    aggregate::<D>(st, duration, next, streamed, dropped);
    let blocked = st.components_ns[Component::Blocked as usize];
    if blocked > 0 {
        memory::charge_block(st, blocked);
    }
    // Consumed: the start timestamps must not be reused by a later episode.
    episodes::end::<D>(stp, tid);
}

/// Streams one episode, written straight into the ring buffer (a 136-byte record built on
/// the stack first would not fit beside the rest of sched_switch); returns false (and counts
/// the drop) when the ring buffer is full.
#[inline(always)]
fn emit<const D: bool>(tid: u32, next: TaskPtr, st: &ThreadState, duration: u64) -> bool {
    let Some(mut entry) = output::reserve::<PauseRecord>(DropCause::Sched) else { return false };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` points to a reserved, writable PauseRecord in the ring buffer; every field
    // is written before submit.
    unsafe {
        (*r).kind = RecordKind::Pause as u32;
        (*r).cpu = cpu();
        (*r).tid = tid;
        (*r).tgid = st.tgid;
        (*r).start_mono_ns = to_mono::<D>(st.episode_start_ns, duration);
        (*r).duration_ns = duration;
        words::copy(&raw mut (*r).components_ns, &st.components_ns);
        (*r).prev_cpu = st.prev_cpu;
        (*r).start_reason = st.start_reason;
        (*r).preempted_by_tid = st.preempted_by_tid;
        (*r).block_reason = st.block_reason;
        words::put_name(&raw mut (*r).comm, task::comm_words::<D>(next));
        words::put_name(&raw mut (*r).preempted_by_comm, words::name(&st.preempted_by_comm));
        (*r).stack_id = st.stack_id;
        (*r).block_dev = st.block_dev;
        (*r).block_addr = st.block_addr;
        (*r).block_ino = st.block_ino;
        (*r).block_pgoff = st.block_pgoff;
    }
    output::submit(entry);
    true
}

/// Adds one episode to its process's aggregate. Counters are updated with atomic adds (several
/// CPUs can finish episodes of one process at once); `max` is a racy read-compare-write, which
/// can lose a concurrent larger value but never produce an invalid one.
#[inline(always)]
fn aggregate<const D: bool>(st: &mut ThreadState, duration: u64, next: TaskPtr, streamed: bool, dropped: bool) {
    let Some(ps) = thread_proc_stats::<D>(st, next) else { return };
    if dropped {
        counters::atomic_add(&mut ps.dropped_records, 1);
    }
    let c = &st.components_ns;
    if c[1] == 0 && c[2] == 0 {
        add_runq_wait::<D>(ps, c[0], next, streamed);
        return;
    }
    refresh_name::<D>(ps, STAT_EPISODE, duration, next, streamed);
    if c[0] > 0 {
        counters::add_stat(&mut ps.stats[0], c[0]);
        counters::add_stat(&mut ps.mixed_runq, c[0]);
    }
    if c[1] > 0 {
        counters::add_stat(&mut ps.stats[1], c[1]);
    }
    if c[2] > 0 {
        counters::add_stat(&mut ps.stats[2], c[2]);
    }
    counters::add_stat(&mut ps.stats[STAT_EPISODE], duration);
}

/// A pure run-queue wait of `wait` ns (an episode with nothing else in it) of a thread of the
/// process whose aggregate is `ps` (task `next`). It is its own run-queue component: counted
/// once (ProcStats says how the whole-episode aggregate is put back together).
#[inline(always)]
fn add_runq_wait<const D: bool>(ps: &mut ProcStats, wait: u64, next: TaskPtr, streamed: bool) {
    refresh_name::<D>(ps, Component::Runq as usize, wait, next, streamed);
    counters::add_stat(&mut ps.stats[Component::Runq as usize], wait);
}

/// Records that thread `tid`, leaving its CPU still runnable, was preempted by thread `by`
/// (task `by_task`): its next switch-in streams its wait under that name if long enough.
#[inline(always)]
fn mark_preempted(tid: u32, by: u32, by_task: TaskPtr) {
    if let Some(e) = leaving_entry(tid) {
        e.flags = SWITCH_IN_PREEMPTED;
        e.preempted_by_tid = by;
        e.preempted_by_task = by_task as u64;
        switch_ins::seal(e);
    }
}

/// Records that thread `tid`, leaving its CPU, starts an episode kept in its task storage:
/// its next switch-in must look there.
#[inline(always)]
fn mark_episode(tid: u32) {
    if let Some(e) = leaving_entry(tid) {
        e.flags = SWITCH_IN_EPISODE;
        switch_ins::seal(e);
    }
}

/// Thread `tid`'s entry as it leaves its CPU, made its own: the caller records how it left and
/// seals it.
#[inline(always)]
fn leaving_entry(tid: u32) -> Option<&'static mut SwitchIn> {
    let (e, mine) = switch_ins::entry(tid)?;
    if !mine {
        take_entry(e, tid);
    }
    Some(e)
}

/// Makes `e` thread `tid`'s. The pending waits it holds for the thread that had it go to that
/// thread's aggregate first, when the entry is whole and the slot it names is still the one
/// they were counted for; otherwise they are lost, and counted as a `SchedAggregate` drop.
#[inline(always)]
fn take_entry(e: &mut SwitchIn, tid: u32) {
    if e.pending != 0 {
        let ps = match e.is_whole() && e.agg_slot != 0 {
            true => PROC_STATS.get_ptr_mut(e.agg_slot - 1),
            false => None,
        };
        match ps {
            // SAFETY: pointer into our own map value, valid for this program run.
            Some(ps) if unsafe { (*ps).tgid != 0 && agg_start_tag((*ps).start_ns) == e.agg_start } => {
                // SAFETY: as above.
                add_pending(unsafe { &mut *ps }, e)
            }
            _ => output::count_drop(DropCause::SchedAggregate),
        }
    }
    switch_ins::take(e, tid);
}

/// Adds `e`'s pending waits (of thread `task` of process `tgid`) to the process's run-queue
/// aggregate, and empties them. With `rename`, the aggregate takes the process's name when
/// they hold its longest wait yet (`refresh_name`); an exiting thread's need not (the exit
/// of the process sets the name it ends with).
#[inline(always)]
fn flush_pending(e: &mut SwitchIn, tgid: u32, task: TaskPtr, rename: bool) {
    if let Some(ps) = cached_proc_stats::<true, _>(&mut e.agg_slot, &mut e.agg_start, tgid, task) {
        if rename {
            refresh_name::<true>(ps, Component::Runq as usize, u64::from(e.pending_max_ns), task, false);
        }
        add_pending(ps, e);
    }
    switch_ins::clear_pending(e);
}

/// `e`'s pending waits into `ps`'s run-queue component (each is its own: see `ProcStats`).
#[inline(always)]
fn add_pending(ps: &mut ProcStats, e: &SwitchIn) {
    let s = &mut ps.stats[Component::Runq as usize];
    counters::atomic_add(&mut s.total_ns, e.pending_ns);
    if u64::from(e.pending_max_ns) > s.max_ns {
        s.max_ns = u64::from(e.pending_max_ns);
    }
    for i in 0..PENDING_WAITS {
        if i >= e.pending as usize {
            break;
        }
        if let Some(&b) = e.pending_buckets.get(i) {
            if let Some(slot) = s.hist.get_mut(b as usize) {
                counters::atomic_add(slot, 1);
            }
        }
    }
}

/// A thread exits: its pending waits go to its process's aggregate (nothing after this would
/// add them), and its entry is left to nobody, so that a later thread given the same tid
/// starts afresh. Attached with waits measured at switch-in, with the scheduler's programs and
/// so before `process_exit` on the same tracepoint, whose exit record then finds the aggregate
/// whole.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_thread_exit(_ctx: BtfTracePointContext) -> i32 {
    let (tid, tgid) = task::current_ids();
    if tid == 0 {
        return 0;
    }
    if let Some((e, true)) = switch_ins::entry(tid) {
        if e.pending != 0 {
            flush_pending(e, tgid, memory::current_task(), false);
        }
        // Nobody's: the check word no longer matches.
        e.tid = 0;
    }
    0
}

/// Processes rename themselves (prctl; exec is handled by its own program) after their first
/// episode. The aggregate's name is refreshed on streamed episodes and on every value `v`
/// about to be added to `ps.stats[stat]` that is a new maximum there (the first one always
/// is): among n waits of similar sizes about ln n are, so that keeps the name current early in
/// a process's life without a read on every switch, and reads only the cache line the add
/// writes anyway. Exit (`process_exit`) sets the name the process ends with.
#[inline(always)]
fn refresh_name<const D: bool>(ps: &mut ProcStats, stat: usize, v: u64, next: TaskPtr, streamed: bool) {
    let record = ps.stats.get(stat).is_some_and(|s| v > s.max_ns);
    if streamed || record {
        // SAFETY: a field of our own map value, 8-byte aligned.
        unsafe { words::put_name(&raw mut ps.comm, task::leader_comm_words::<D>(next)) };
    }
}

/// The last thread of a process exits (`group_dead`, the tracepoint's second argument since
/// Linux 6.16; the agent attaches this only where it exists). The agent hears of it in ring
/// order, before any record of a later process given the same pid, and reads the process's
/// aggregates one last time. Only for processes that have aggregates: a fork storm of
/// processes that never paused costs one map lookup each.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(ctx: BtfTracePointContext) -> i32 {
    if ctx.arg::<u64>(1) & 0xff == 0 {
        return 0;
    }
    let task: TaskPtr = ctx.arg(0);
    let Some((_, tgid)) = task::ids::<true>(task) else { return 0 };
    if !is_traced(tgid) {
        return 0;
    }
    let start_ns = task::leader_start::<true>(task);
    // SAFETY: read-only lookup of a u32.
    let slot = unsafe { PROC_SLOTS.get(&tgid) }.and_then(|&slot| PROC_STATS.get_ptr_mut(slot));
    match slot {
        // The name the process ends with (it may have renamed itself after the episodes that
        // refreshed the aggregate's name), for its summary.
        // SAFETY: pointer into our own map value, valid for this invocation.
        Some(ps) if unsafe { (*ps).tgid == tgid && (*ps).start_ns == start_ns } => unsafe { (*ps).comm = task::leader_comm::<true>(task) },
        Some(_) => {}
        None if memory::has_aggregate(tgid) => {}
        None => return 0,
    }
    output::emit(ExitRecord { kind: RecordKind::Exit as u32, tgid, ts_mono_ns: now(), start_ns }, DropCause::Exit);
    0
}

/// The aggregate slot of process `tgid` (named after `task`'s group leader), taken from
/// `FREE_SLOTS` on first use. A slot left by an earlier process with the same pid (reused
/// before the agent retired it) is taken over, and what the agent had not yet read of it
/// counted as a `PidReuse` drop. None, counted as a drop, when no slot is free.
#[inline(always)]
fn proc_slot<const D: bool>(tgid: u32, task: TaskPtr) -> Option<(u32, &'static mut ProcStats)> {
    let start = task::leader_start::<D>(task);
    // No slot, or a stale entry (its slot was freed meanwhile): one is taken below.
    if let Some((slot, ps)) = indexed_slot(tgid) {
        if ps.start_ns != start && ps.start_ns != 0 && start != 0 {
            output::count_drop(DropCause::PidReuse);
            init_slot::<D>(slot, tgid, start, task)?;
        }
        return Some((slot, ps));
    }
    let Ok(Some(slot)) = FREE_SLOTS.pop() else {
        output::count_drop(DropCause::SchedAggregate);
        return None;
    };
    init_slot::<D>(slot, tgid, start, task)?;
    if PROC_SLOTS.insert(&tgid, &slot, BPF_NOEXIST as u64).is_err() {
        // Another CPU gave the process a slot meanwhile (use theirs, give ours back), or the
        // entry is stale (take it over).
        if let Some(theirs) = indexed_slot(tgid) {
            free_slot(slot);
            return Some(theirs);
        }
        if PROC_SLOTS.insert(&tgid, &slot, 0).is_err() {
            free_slot(slot);
            output::count_drop(DropCause::SchedAggregate);
            return None;
        }
    }
    // SAFETY: pointer into our own map value, valid for this program invocation (the 'static
    // is the verifier's lifetime of a map value, not a promise to keep it).
    PROC_STATS.get_ptr_mut(slot).map(|p| (slot, unsafe { &mut *p }))
}

/// Makes `slot` the empty aggregate of process `tgid` started at `start`.
#[inline(always)]
fn init_slot<const D: bool>(slot: u32, tgid: u32, start: u64, task: TaskPtr) -> Option<()> {
    let init = PROC_STATS_INIT.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot owned by this program invocation; only `comm`, `start_ns`
    // and `tgid` are ever written, so its counters stay zero.
    unsafe {
        (*init).comm = task::leader_comm::<D>(task);
        (*init).start_ns = start;
        (*init).tgid = tgid;
        PROC_STATS.set(slot, &*init, 0).ok()
    }
}

/// Gives an unused slot back (marked free first, so no cached reference matches it).
#[inline(always)]
fn free_slot(slot: u32) {
    if let Some(p) = PROC_STATS.get_ptr_mut(slot) {
        // SAFETY: pointer into our own map value.
        unsafe { (*p).tgid = 0 };
    }
    let _ = FREE_SLOTS.push(slot, 0);
}

/// The slot `PROC_SLOTS` gives process `tgid`, and its aggregate, if that slot is still the
/// process's.
#[inline(always)]
fn indexed_slot(tgid: u32) -> Option<(u32, &'static mut ProcStats)> {
    // SAFETY: read-only lookup of a u32.
    let slot = *unsafe { PROC_SLOTS.get(&tgid) }?;
    // SAFETY: pointer into our own map value, valid for this program invocation.
    let ps = unsafe { &mut *PROC_STATS.get_ptr_mut(slot)? };
    (ps.tgid == tgid).then_some((slot, ps))
}

/// The aggregate of process `tgid` if it has one (no slot is taken).
#[inline(always)]
pub fn existing_proc_stats(tgid: u32) -> Option<&'static mut ProcStats> {
    indexed_slot(tgid).map(|(_, ps)| ps)
}

/// The aggregate of process `tgid`, without a thread's cached slot.
#[inline(always)]
fn proc_stats<const D: bool>(tgid: u32, task: TaskPtr) -> Option<&'static mut ProcStats> {
    proc_slot::<D>(tgid, task).map(|(_, ps)| ps)
}

/// The aggregate of the process of the thread whose episode is `st` (task `task`), through the
/// slot cached in its task storage (`cached_proc_stats`).
#[inline(always)]
fn thread_proc_stats<const D: bool>(st: &mut ThreadState, task: TaskPtr) -> Option<&'static mut ProcStats> {
    let tgid = st.tgid;
    cached_proc_stats::<D, _>(&mut st.agg_slot, &mut st.agg_start_ns, tgid, task)
}

/// What a cached aggregate slot keeps of the aggregate's `start_ns`: all of it (an episode in
/// task storage) or its tag (a `SwitchIn` entry, which has no room for more).
trait AggStart: Copy + PartialEq {
    fn of(start_ns: u64) -> Self;
}

impl AggStart for u64 {
    #[inline(always)]
    fn of(start_ns: u64) -> Self {
        start_ns
    }
}

impl AggStart for u32 {
    #[inline(always)]
    fn of(start_ns: u64) -> Self {
        agg_start_tag(start_ns)
    }
}

/// The aggregate of process `tgid` (named after `task`'s group leader) through a cached slot
/// (`slot`: its index + 1, 0 for none; `start`: what it kept of the aggregate's `start_ns`
/// when it was cached) when that slot is still the process's, else looked up and cached. A
/// thread's task storage (episodes) and its `SWITCH_INS` entry (pure run-queue waits) each keep
/// one; the raw_tp path (`D` false) looks it up every time.
#[inline(always)]
fn cached_proc_stats<const D: bool, S: AggStart>(
    slot: &mut u32,
    start: &mut S,
    tgid: u32,
    task: TaskPtr,
) -> Option<&'static mut ProcStats> {
    if D && *slot != 0 {
        if let Some(p) = PROC_STATS.get_ptr_mut(*slot - 1) {
            // SAFETY: pointer into our own map value, valid for this program invocation.
            let ps = unsafe { &mut *p };
            if ps.tgid == tgid && S::of(ps.start_ns) == *start {
                return Some(ps);
            }
        }
    }
    let (found, ps) = proc_slot::<D>(tgid, task)?;
    *slot = found + 1;
    *start = S::of(ps.start_ns);
    Some(ps)
}

/// The hypervisor steal this CPU accrued since its previous context switch, which the caller
/// charges to `prev`, the thread that held the CPU through it: the host descheduled the vCPU
/// under it, so it stood still although the guest saw it running. A halted (idle) vCPU
/// accrues no steal, so nearly all of it lands on a running thread. Threads waiting in this
/// CPU's run queue meanwhile were delayed too; their wait is already counted as run-queue wait.
///
/// The fast path (no new steal) is one per-CPU array load, one `rq` load and a compare.
#[inline(always)]
fn steal_since_last_switch<const D: bool>(rq: TaskPtr) -> u64 {
    let Some(now) = task::rq_steal::<D>(rq) else { return 0 };
    let Some(last) = CPU_STEAL.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot; sched_switch runs with the run-queue lock held and preemption
    // off, so no other program touches it meanwhile.
    let slot = unsafe { &mut *last };
    let before = slot.last_ns;
    if now == before {
        return 0;
    }
    slot.last_ns = now;
    // First reading on this CPU (everything since boot is not ours to charge), or the counter
    // went backwards (never expected): start again from here.
    if before == 0 || now < before {
        slot.first_ns = now;
        return 0;
    }
    now - before
}

// ---- cost calibration (attached only with --bpf-stats)

/// Does nothing: its mean run time in the kernel's BPF statistics is the statistics' own
/// overhead, which the cost report subtracts from the other programs' means.
#[btf_tracepoint(function = "sched_switch")]
pub fn stats_floor_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn stats_floor_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

/// What `stats_least_wait` adds up, per CPU (`pw-empty-hooks --least-wait` reads it at exit).
#[map]
static LEAST_WAITS: PerCpuArray<ComponentStats> = PerCpuArray::with_max_entries(1, 0);

/// The least a program on sched_switch does to put every run-queue wait into a histogram: the
/// next thread's process (its `tgid`, in the line beside `pid`), when it was queued
/// (`sched_info.last_queued`) and the run-queue clock, and one add to a per-CPU histogram,
/// without atomics, per-thread state, per-process aggregates, waits before a migration or
/// anything about the thread leaving. Never attached by pausewatch: `cargo xtask bench` runs it
/// (through `pw-empty-hooks --least-wait`, beside `stats_floor_btf`) to measure what any
/// observer that times each wait pays on each workload, next to what pausewatch's
/// `sched_switch_btf` pays doing all of its work.
#[btf_tracepoint(function = "sched_switch")]
pub fn stats_least_wait(ctx: BtfTracePointContext) -> i32 {
    let next: TaskPtr = ctx.arg(2);
    // The idle tasks (pid and tgid 0) are never queued.
    match task::tgid::<true>(next) {
        Some(tgid) if tgid != 0 => {}
        _ => return 0,
    }
    let last_queued = task::sched_info_last_queued(next);
    if last_queued == 0 {
        return 0;
    }
    let Some(now) = task::rq::<true>(next).and_then(task::rq_clock::<true>) else { return 0 };
    let Some(s) = LEAST_WAITS.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot; sched_switch runs with preemption off, so nothing else on this
    // CPU touches it meanwhile, and no other CPU touches this slot.
    let s = unsafe { &mut *s };
    let wait = now.saturating_sub(last_queued);
    s.total_ns += wait;
    if let Some(slot) = s.hist.get_mut(hist::bucket(wait)) {
        *slot += 1;
    }
    0
}

/// The same on sched_wakeup: the floor next to `sched_wakeup_btf`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn stats_floor_wakeup(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The same on page_fault_user: the floor next to `page_fault_user`.
#[btf_tracepoint(function = "page_fault_user")]
pub fn stats_floor_fault(_ctx: BtfTracePointContext) -> i32 {
    0
}
