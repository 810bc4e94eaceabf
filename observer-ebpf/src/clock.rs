//! Who changes the system clock: the clock_settime, settimeofday, adjtimex and clock_adjtime
//! syscall tracepoints (classic tracepoints: syscalls have no raw or BTF tracepoint of their
//! own short of sys_enter for every syscall).
//!
//! At entry the request is read from the caller's memory and kept per thread; at exit it is
//! streamed with the result, so a refused call (EPERM) is told apart from a step that happened.
//! Read-only adjtimex calls (modes 0, or ADJ_OFFSET_SS_READ), which NTP daemons make many
//! times a second, are dismissed after one 4-byte read and never reach the ring buffer.
//!
//! Off the syscall path (chosen by the loader with ext4's fsync tracepoints, see `sync`): the
//! capability check every clock change makes, `cap_capable(CAP_SYS_TIME)`, which fires for
//! nothing else the host does often. The call and its arguments come from the caller's saved
//! registers; the record is streamed at the check with its verdict as `ret` (0, or -EPERM for
//! a refused call), since no exit is seen.
//!
//! Clock changes are host-wide, so they are recorded whatever `--pid` says.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{CLOCK_FLAG_TIME, CLOCK_FLAG_TIMEX, CLOCK_FLAG_UNREADABLE, ClockAdjRecord, ClockSyscall, DropCause};

use crate::{output, sched, task};

/// Calls in progress, by thread.
#[map]
static CLOCK_CALLS: HashMap<u32, ClockAdjRecord> = HashMap::with_max_entries(1024, 0);

/// Syscall tracepoint layout (include/trace/syscall.h, v6.18): 8-byte common header,
/// `__syscall_nr`, then each argument as 8 bytes from offset 16; exit's `ret` at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;

/// `modes` bits (include/uapi/linux/timex.h).
const ADJ_ADJTIME: u32 = 0x8000;
const ADJ_OFFSET_READONLY: u32 = 0x2000;
const ADJ_SETOFFSET: u32 = 0x0100;
const ADJ_NANO: u32 = 0x2000;

/// The head of `struct __kernel_timex` (include/uapi/linux/timex.h), up to `time`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TimexHead {
    modes: u32,
    _pad0: i32,
    offset: i64,
    freq: i64,
    maxerror: i64,
    esterror: i64,
    status: i32,
    _pad1: i32,
    constant: i64,
    precision: i64,
    tolerance: i64,
    time_sec: i64,
    /// µs, or ns with ADJ_NANO.
    time_usec: i64,
}

#[inline(always)]
fn new_record(syscall: ClockSyscall, clockid: i32) -> ClockAdjRecord {
    ClockAdjRecord::call(syscall, clockid, sched::now(), task::current())
}

#[inline(always)]
fn keep(rec: &ClockAdjRecord) {
    if CLOCK_CALLS.insert(&rec.by.tid, rec, 0).is_err() {
        output::count_drop(DropCause::ClockAdj);
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: reads within the tracepoint record at the fixed syscall-tracepoint layout.
    unsafe { ctx.read_at::<u64>(off) }.unwrap_or(0)
}

/// Reads a `(sec, sub)` pair from user memory; `sub_ns` converts its second half to ns.
#[inline(always)]
fn read_pair(rec: &mut ClockAdjRecord, ptr: u64, sub_ns: i64) {
    // SAFETY: bpf_probe_read_user copies through the fault-tolerant path.
    match unsafe { bpf_probe_read_user(ptr as *const [i64; 2]) } {
        Ok([sec, sub]) => {
            rec.set_sec = sec;
            rec.set_nsec = sub.wrapping_mul(sub_ns);
            rec.flags |= CLOCK_FLAG_TIME;
        }
        Err(_) => rec.flags |= CLOCK_FLAG_UNREADABLE,
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_clock_settime")]
pub fn clock_settime_enter(ctx: TracePointContext) -> u32 {
    let mut rec = new_record(ClockSyscall::ClockSettime, arg(&ctx, ARG0) as i32);
    read_pair(&mut rec, arg(&ctx, ARG1), 1);
    keep(&rec);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_settimeofday")]
pub fn settimeofday_enter(ctx: TracePointContext) -> u32 {
    let tv = arg(&ctx, ARG0);
    // settimeofday(NULL, tz) only sets the timezone (or warps an RTC-local clock once): not a
    // change of the clock pausewatch tracks.
    if tv == 0 {
        return 0;
    }
    let mut rec = new_record(ClockSyscall::Settimeofday, -1);
    read_pair(&mut rec, tv, 1000);
    keep(&rec);
    0
}

#[inline(always)]
fn on_timex(syscall: ClockSyscall, clockid: i32, ptr: u64) {
    if let Some(rec) = timex_record(syscall, clockid, ptr) {
        keep(&rec);
    }
}

/// The record of a timex call at `ptr`; None for a read-only one.
#[inline(always)]
fn timex_record(syscall: ClockSyscall, clockid: i32, ptr: u64) -> Option<ClockAdjRecord> {
    // SAFETY: bpf_probe_read_user copies through the fault-tolerant path.
    let Ok(modes) = (unsafe { bpf_probe_read_user(ptr as *const u32) }) else {
        let mut rec = new_record(syscall, clockid);
        rec.flags |= CLOCK_FLAG_UNREADABLE;
        return Some(rec);
    };
    if modes == 0 || (modes & ADJ_ADJTIME != 0 && modes & ADJ_OFFSET_READONLY != 0) {
        return None;
    }
    let mut rec = new_record(syscall, clockid);
    rec.modes = modes;
    // SAFETY: as above.
    match unsafe { bpf_probe_read_user(ptr as *const TimexHead) } {
        Ok(t) => {
            rec.flags |= CLOCK_FLAG_TIMEX;
            rec.offset = t.offset;
            rec.freq = t.freq;
            rec.maxerror = t.maxerror;
            rec.esterror = t.esterror;
            rec.status = t.status;
            if modes & ADJ_SETOFFSET != 0 {
                rec.set_sec = t.time_sec;
                rec.set_nsec = if modes & ADJ_NANO != 0 { t.time_usec } else { t.time_usec.wrapping_mul(1000) };
                rec.flags |= CLOCK_FLAG_TIME;
            }
        }
        Err(_) => rec.flags |= CLOCK_FLAG_UNREADABLE,
    }
    Some(rec)
}

#[tracepoint(category = "syscalls", name = "sys_enter_adjtimex")]
pub fn adjtimex_enter(ctx: TracePointContext) -> u32 {
    on_timex(ClockSyscall::Adjtimex, -1, arg(&ctx, ARG0));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clock_adjtime")]
pub fn clock_adjtime_enter(ctx: TracePointContext) -> u32 {
    on_timex(ClockSyscall::ClockAdjtime, arg(&ctx, ARG0) as i32, arg(&ctx, ARG1));
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the entry is copied out before it is removed; only this thread writes its key.
    let Some(rec) = (unsafe { CLOCK_CALLS.get(&tid) }) else { return 0 };
    let mut rec = *rec;
    let _ = CLOCK_CALLS.remove(&tid);
    rec.ret = arg(ctx, ARG0) as i64;
    output::emit_now(rec, DropCause::ClockAdj);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_clock_settime")]
pub fn clock_settime_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_settimeofday")]
pub fn settimeofday_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_adjtimex")]
pub fn adjtimex_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_clock_adjtime")]
pub fn clock_adjtime_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

// ---- off the syscall path
//   cap_capable(const struct cred *cred, struct user_namespace *target_ns,
//               const struct user_namespace *capable_ns, int cap, int ret)

/// include/uapi/linux/capability.h
const CAP_SYS_TIME: i32 = 25;

/// Thread → when it passed the first of the two CAP_SYS_TIME checks of one timex call with
/// ADJ_SETOFFSET (`timekeeping_validate_timex`, kernel/time/timekeeping.c v6.18, checks once for
/// any change and again to inject an offset): the second, microseconds later with nothing that
/// sleeps between, is not a second call. A check older than `SAME_CALL_NS` starts a new call,
/// so a kernel that checks only once loses nothing; LRU, as such a kernel leaves every entry
/// behind.
#[map]
static SETOFFSET_CHECKED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Two checks of one call are this close; two steps by one thread never are.
const SAME_CALL_NS: u64 = 100_000;

#[btf_tracepoint(function = "cap_capable")]
pub fn clock_capable(ctx: BtfTracePointContext) -> i32 {
    if ctx.arg::<i32>(3) != CAP_SYS_TIME {
        return 0;
    }
    let verdict = i64::from(ctx.arg::<i32>(4));
    let (nr, [a0, a1, _]) = task::current_syscall();
    let mut rec = match nr {
        task::nr::CLOCK_SETTIME => {
            let mut rec = new_record(ClockSyscall::ClockSettime, a0 as i32);
            read_pair(&mut rec, a1, 1);
            rec
        }
        // settimeofday(NULL, tz) is checked too: it only sets the timezone.
        task::nr::SETTIMEOFDAY if a0 != 0 => {
            let mut rec = new_record(ClockSyscall::Settimeofday, -1);
            read_pair(&mut rec, a0, 1000);
            rec
        }
        task::nr::ADJTIMEX | task::nr::CLOCK_ADJTIME => {
            let (syscall, clockid, ptr) =
                if nr == task::nr::ADJTIMEX { (ClockSyscall::Adjtimex, -1, a0) } else { (ClockSyscall::ClockAdjtime, a0 as i32, a1) };
            let Some(rec) = timex_record(syscall, clockid, ptr) else { return 0 };
            if rec.modes & ADJ_SETOFFSET != 0 && verdict == 0 {
                let tid = rec.by.tid;
                // SAFETY: read-only copy of a u64 of our own map.
                let first = unsafe { SETOFFSET_CHECKED.get(&tid) }.copied();
                if first.is_some_and(|t| rec.ts_mono_ns.saturating_sub(t) < SAME_CALL_NS) {
                    let _ = SETOFFSET_CHECKED.remove(&tid);
                    return 0;
                }
                // An LRU insert does not fail for want of room.
                let _ = SETOFFSET_CHECKED.insert(&tid, &rec.ts_mono_ns, 0);
            }
            rec
        }
        // RTC ioctls, 32-bit callers and whatever else checks CAP_SYS_TIME: not a change of
        // the system clock by a call this table knows.
        _ => return 0,
    };
    rec.ret = verdict;
    output::emit_now(rec, DropCause::ClockAdj);
    0
}
