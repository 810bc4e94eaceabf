//! Stops and signals: who stopped a process, for how long, and who resumed it.
//!
//! - `signal_generate` (in the sender's context, include/trace/events/signal.h, v6.18) streams
//!   every signal sent to an observed process with its sender, and remembers the sender of a
//!   stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) until the process stops.
//! - The scheduler programs tell us when each thread leaves the CPU stopped, traced or frozen
//!   (`thread_stopped`) and when it is woken (`thread_resumed`, in the waker's context: the
//!   SIGCONT sender, the tracer, or the task thawing the cgroup). A process's stop runs from its
//!   first thread stopping to its last thread being woken, and is streamed once, whatever the
//!   number of threads.
//!
//! SIGCONT wakes the stopped threads inside `prepare_signal`, before its own `signal_generate`
//! fires (kernel/signal.c, v6.18), which is why the resumer is taken from the wakeup and not
//! from the signal.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{DropCause, ProcStop, RecordKind, SignalRecord, StopKind, StopRecord, TaskId};

use crate::{
    counters, output, sched,
    task::{self, TaskPtr},
    words,
};

const SIGCONT: u32 = 18;
const SIGSTOP: u32 = 19;
const SIGTTOU: u32 = 22;

/// Stops in progress and the last stop signal, per process. LRU: a process that exits while
/// its entry is idle leaves it behind.
#[map]
static PROC_STOPS: LruHashMap<u32, ProcStop> = LruHashMap::with_max_entries(4096, 0);

/// Processes whose stop is open. Inserting with BPF_NOEXIST and deleting are atomic, so of
/// several threads stopping (or resuming) at once on different CPUs exactly one opens (or
/// closes and streams) the process's stop.
#[map]
static STOP_OPEN: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

// signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
//                 int result)

#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> i32 {
    on_signal::<true>(ctx.arg::<u64>(0) as u32, ctx.arg(2), ctx.arg::<u64>(3) as u32, ctx.arg::<u64>(4) as u32);
    0
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    on_signal::<false>(ctx.arg::<u64>(0) as u32, ctx.arg(2), ctx.arg::<u64>(3) as u32, ctx.arg::<u64>(4) as u32);
    0
}

#[inline(always)]
fn on_signal<const D: bool>(sig: u32, target: TaskPtr, group: u32, result: u32) {
    let Some((tid, tgid)) = task::ids::<D>(target) else { return };
    if tid == 0 || !sched::is_traced(tgid) {
        return;
    }
    // Routine signals are neither stop signals nor SIGCONT: nothing to remember or stream.
    if routine(sig) {
        return;
    }
    let sender = task::current();
    // A delivered stop signal: remember who sent it until the process stops. SIGCONT clears a
    // stop signal that never stopped anything (one handled or ignored by the process).
    if result == 0 && (SIGSTOP..=SIGTTOU).contains(&sig) {
        if let Some(ps) = proc_stop(tgid) {
            // SAFETY: pointer into our own map value, valid for this run.
            unsafe {
                (*ps).stop_sig = sig;
                words::copy(&raw mut (*ps).stopped_by, &sender);
            }
        }
    } else if sig == SIGCONT {
        if let Some(ps) = PROC_STOPS.get_ptr_mut(&tgid) {
            // SAFETY: as above.
            unsafe {
                if (*ps).start_ns == 0 {
                    (*ps).stop_sig = 0;
                }
            }
        }
    }
    output::emit(
        SignalRecord {
            kind: RecordKind::Signal as u32,
            sig,
            result,
            group,
            ts_mono_ns: sched::now(),
            target_tid: tid,
            target_tgid: tgid,
            target_comm: task::comm::<D>(target),
            sender,
        },
        DropCause::Signal,
    );
}

/// Signals a process gets as a matter of course, in the thousands: SIGCHLD for every child
/// that exits (a fork storm), SIGURG for every Go async preemption, timer signals (SIGALRM,
/// SIGVTALRM, SIGPROF), SIGWINCH, SIGIO and real-time signals. They stop nothing and kill
/// nothing, so they are not streamed (and their sender is not even read).
#[inline(always)]
fn routine(sig: u32) -> bool {
    matches!(sig, 14 | 17 | 23 | 26 | 27 | 28 | 29) || sig >= 32
}

/// The stop state of `tgid`, created empty if missing (a drop of `StopTracking` when the map
/// cannot take it). NOEXIST: another CPU may create it meanwhile; then we use theirs.
#[inline(always)]
fn proc_stop(tgid: u32) -> Option<*mut ProcStop> {
    if let Some(p) = PROC_STOPS.get_ptr_mut(&tgid) {
        return Some(p);
    }
    let mut fresh = core::mem::MaybeUninit::<ProcStop>::uninit();
    // SAFETY: an all-zero ProcStop is its default; zeroed word by word (`words`).
    let fresh = unsafe {
        words::zero(fresh.as_mut_ptr());
        fresh.assume_init_ref()
    };
    let _ = PROC_STOPS.insert(&tgid, fresh, BPF_NOEXIST as u64);
    let p = PROC_STOPS.get_ptr_mut(&tgid);
    if p.is_none() {
        output::count_drop(DropCause::StopTracking);
    }
    p
}

/// A thread of `tgid` left the CPU in a stopped, traced or frozen state at episode clock `ts`;
/// `holder` is the tracer for a ptrace stop.
#[inline(always)]
pub fn thread_stopped(tgid: u32, ts: u64, kind: StopKind, holder: Option<TaskId>) {
    let Some(ps) = proc_stop(tgid) else { return };
    // SAFETY: pointer into our own map value, valid for this run.
    let ps = unsafe { &mut *ps };
    if STOP_OPEN.insert(&tgid, &ts, BPF_NOEXIST as u64).is_ok() {
        // The first thread of this stop.
        ps.start_ns = ts;
        ps.stop_kind = kind as u32;
        ps.threads_at_open = ps.threads_total;
        if let Some(h) = holder {
            // SAFETY: a field of our own map value, 8-byte aligned.
            unsafe { words::copy(&raw mut ps.stopped_by, &h) };
            ps.stop_sig = 0;
        }
    }
    counters::atomic_add(&mut ps.stopped_threads, 1);
    counters::atomic_add(&mut ps.threads_total, 1);
}

/// A stopped thread of the process whose task is `p` was woken at episode clock `ts` (or found
/// running without a wakeup we saw). The last one closes the process's stop and streams it.
#[inline(always)]
pub fn thread_resumed<const D: bool>(p: TaskPtr, tgid: u32, ts: u64) {
    let Some(ps) = PROC_STOPS.get_ptr_mut(&tgid) else { return };
    // SAFETY: pointer into our own map value, valid for this run.
    let ps = unsafe { &mut *ps };
    if ps.stopped_threads == 0 {
        // Stopped before the entry existed (or the entry was evicted and recreated): nothing
        // to close.
        return;
    }
    counters::atomic_add(&mut ps.stopped_threads, u64::MAX); // - 1
    if ps.stopped_threads != 0 {
        return; // Other threads are still stopped.
    }
    // Several threads can see zero at once; only the one whose delete succeeds closes the stop.
    if STOP_OPEN.remove(&tgid).is_err() {
        return;
    }
    let start = ps.start_ns;
    let duration = ts.saturating_sub(start);
    let kind = ps.stop_kind;
    let signal_stop = kind == StopKind::Signal as u32;
    let held = signal_stop || kind == StopKind::Ptrace as u32;
    // Written in place, word by word where LLVM would call a byte-wise memset (`words`).
    if let Some(mut entry) = output::reserve::<StopRecord>(DropCause::Stop) {
        let r = entry.as_mut_ptr();
        // SAFETY: `r` is a reserved, writable StopRecord in the ring buffer (8-byte aligned);
        // every field is written before submit.
        unsafe {
            (*r).kind = RecordKind::Stop as u32;
            (*r).stop_kind = kind;
            (*r).tgid = tgid;
            (*r).threads = ps.threads_total.saturating_sub(ps.threads_at_open) as u32;
            (*r).start_mono_ns = sched::to_mono::<D>(start, duration);
            (*r).duration_ns = duration;
            core::ptr::write_volatile(&raw mut (*r).stop_sig, if signal_stop { ps.stop_sig } else { 0 });
            core::ptr::write_volatile(&raw mut (*r)._pad0, 0);
            if held {
                words::copy(&raw mut (*r).stopped_by, &ps.stopped_by);
            } else {
                words::zero(&raw mut (*r).stopped_by);
            }
            words::put_name(&raw mut (*r).comm, task::leader_comm_words::<D>(p));
        }
        output::submit(entry);
    }
    // SAFETY: fields of our own map value (`stopped_by` 8-byte aligned).
    unsafe {
        core::ptr::write_volatile(&raw mut ps.start_ns, 0);
        core::ptr::write_volatile(&raw mut ps.stop_sig, 0);
        words::zero(&raw mut ps.stopped_by);
    }
}

// `words` moves these 8 bytes at a time.
const _: () = assert!(
    core::mem::offset_of!(ProcStop, stopped_by) % 8 == 0
        && core::mem::offset_of!(StopRecord, stopped_by) % 8 == 0
        && core::mem::offset_of!(StopRecord, comm) % 8 == 0
        && core::mem::align_of::<ProcStop>() == 8
);
