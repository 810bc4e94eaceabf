//! Runtime stop-the-world: JVM safepoints and GC (hotspot USDT), Go STW (runtime uprobes), and
//! the exec events that tell the agent a new runtime may have started.
//!
//! The agent attaches these uprobes at addresses it reads from each binary (the `.note.stapsdt`
//! probe notes of libjvm.so, the symbol table of a Go executable), once per file: a uprobe on a
//! file fires in every process that maps it, now or later.
//!
//! JVM nesting, as observed on OpenJDK 17 (all on the VM thread):
//!
//! ```text
//! hs_private:safepoint__begin ─ hotspot:vmops__begin(name) ─ hotspot:gc__begin(full)
//!   ─ hotspot:gc__end ─ hotspot:vmops__end ─ hs_private:safepoint__end
//! ```
//!
//! safepoint__begin/end bracket -Xlog:safepoint's "Total" (reaching the safepoint, cleanup and
//! the operation), gc__begin/end bracket -Xlog:gc's "Pause" time. A safepoint is one record.
//!
//! Go: `runtime.stopTheWorldWithSema` entry starts the stop, `runtime.startTheWorldWithSema`
//! entry ends it. Entry probes only: a uretprobe rewrites the return address on the stack, and
//! Go moves goroutine stacks. Only one stop-the-world runs at a time per process (worldsema).
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user_str_bytes},
    macros::{btf_tracepoint, map, raw_tracepoint, uprobe},
    maps::LruHashMap,
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext},
};
use observer_common::{
    DropCause, ExecRecord, GC_FLAG_COLLECTION, GC_FLAG_FULL, GC_FLAG_REASON, GcRecord, GcState, RecordKind, Runtime, TASK_COMM_LEN,
};

use crate::{output, sched, task};

/// Stop-the-worlds in progress, per process. LRU: a runtime that dies mid-stop leaves its entry
/// behind until evicted; the next stop of a reused pid overwrites it.
#[map]
static GC_OPEN: LruHashMap<u32, GcState> = LruHashMap::with_max_entries(4096, 0);

/// Name of the current process (its thread group leader), not of the runtime thread.
#[inline(always)]
fn process_comm() -> [u8; TASK_COMM_LEN] {
    // SAFETY: helper without preconditions; the pointer is only read through probe reads.
    let task = unsafe { bpf_get_current_task() } as task::TaskPtr;
    task::leader_comm::<false>(task)
}

#[inline(always)]
fn open(runtime_reason: Option<u32>) {
    let (tid, tgid) = task::current_ids();
    if !sched::is_traced(tgid) {
        return;
    }
    let mut st = GcState { start_ns: sched::now(), tid, ..GcState::default() };
    if let Some(r) = runtime_reason {
        st.reason = r;
        st.flags |= GC_FLAG_REASON;
    }
    // LRU: the insert evicts the coldest entry when full, so it cannot fail for space.
    let _ = GC_OPEN.insert(&tgid, &st, 0);
}

#[inline(always)]
fn close(runtime: Runtime) {
    let (_, tgid) = task::current_ids();
    // SAFETY: the entry is only touched by this process's runtime thread that holds the
    // safepoint or worldsema; we copy it out before deleting.
    let Some(st) = (unsafe { GC_OPEN.get(&tgid) }).copied() else { return };
    let _ = GC_OPEN.remove(&tgid);
    let now = sched::now();
    let duration_ns = now.saturating_sub(st.start_ns);
    let flags = st.flags;
    let gc_ns = if runtime == Runtime::Go { duration_ns } else { st.gc_ns };
    output::emit(
        GcRecord {
            kind: RecordKind::Gc as u32,
            runtime: runtime as u32,
            tgid,
            tid: st.tid,
            start_mono_ns: st.start_ns,
            duration_ns,
            gc_ns,
            sync_ns: st.sync_ns,
            reason: st.reason,
            flags,
            operation: st.operation,
            comm: process_comm(),
        },
        DropCause::Gc,
    );
}

/// The open stop of the current process, to annotate.
#[inline(always)]
fn with_open(f: impl FnOnce(&mut GcState)) {
    let (_, tgid) = task::current_ids();
    if let Some(st) = GC_OPEN.get_ptr_mut(&tgid) {
        // SAFETY: valid map value pointer; only the VM thread holding the safepoint writes it.
        f(unsafe { &mut *st });
    }
}

// ---- JVM (hotspot USDT; OpenJDK 17 probe arguments from its .note.stapsdt)

#[uprobe]
pub fn jvm_safepoint_begin(_ctx: ProbeContext) -> u32 {
    open(None);
    0
}

/// Entry of `RuntimeService::record_safepoint_synchronized`, which HotSpot calls once every Java
/// thread has reached the safepoint (right after the clock read that ends -Xlog:safepoint's
/// "Reaching safepoint"): the end of the time to safepoint.
#[uprobe]
pub fn jvm_safepoint_synchronized(_ctx: ProbeContext) -> u32 {
    let now = sched::now();
    with_open(|st| {
        if st.sync_ns == 0 {
            st.sync_ns = now.saturating_sub(st.start_ns).max(1);
        }
    });
    0
}

#[uprobe]
pub fn jvm_safepoint_end(_ctx: ProbeContext) -> u32 {
    close(Runtime::Jvm);
    0
}

/// vmops__begin(char *name, size_t len, int mode): name is `8@%r12` on OpenJDK 17 x86_64. The
/// agent passes the register through the program variant it attaches: USDT arguments live in
/// whatever register the compiler chose, so the loader picks `jvm_vmop_begin_<reg>`.
#[inline(always)]
fn vmop_begin(name: u64) {
    with_open(|st| {
        if st.operation[0] == 0 && name != 0 {
            // SAFETY: probe read of user memory: a bad pointer yields an error, not a fault.
            let _ = unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut st.operation) };
        }
    });
}

/// One `jvm_vmop_begin_<reg>` program per general-purpose register.
macro_rules! vmop_begin_programs {
    ($($name:ident => $reg:ident),* $(,)?) => {$(
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            // SAFETY: ctx.regs points at the probed thread's saved user registers.
            vmop_begin(unsafe { (*ctx.regs).$reg });
            0
        }
    )*};
}

vmop_begin_programs!(
    jvm_vmop_begin_rax => rax, jvm_vmop_begin_rbx => rbx, jvm_vmop_begin_rcx => rcx,
    jvm_vmop_begin_rdx => rdx, jvm_vmop_begin_rsi => rsi, jvm_vmop_begin_rdi => rdi,
    jvm_vmop_begin_rbp => rbp, jvm_vmop_begin_r8 => r8, jvm_vmop_begin_r9 => r9,
    jvm_vmop_begin_r10 => r10, jvm_vmop_begin_r11 => r11, jvm_vmop_begin_r12 => r12,
    jvm_vmop_begin_r13 => r13, jvm_vmop_begin_r14 => r14, jvm_vmop_begin_r15 => r15,
);

#[inline(always)]
fn gc_begin(full: bool) {
    let now = sched::now();
    with_open(|st| {
        st.gc_start_ns = now;
        st.flags |= GC_FLAG_COLLECTION | if full { GC_FLAG_FULL } else { 0 };
    });
}

/// gc__begin(bool full) with `full` in a register: `1@%dil` on OpenJDK 17 and 25.
#[uprobe]
pub fn jvm_gc_begin_rdi(ctx: ProbeContext) -> u32 {
    // SAFETY: ctx.regs points at the probed thread's saved user registers.
    gc_begin(unsafe { (*ctx.regs).rdi } & 0xff != 0);
    0
}

/// gc__begin at a site where the compiler knew `full` was true (`1@$1`, OpenJDK 25).
#[uprobe]
pub fn jvm_gc_begin_full(_ctx: ProbeContext) -> u32 {
    gc_begin(true);
    0
}

/// gc__begin where `full` is false or cannot be read.
#[uprobe]
pub fn jvm_gc_begin_partial(_ctx: ProbeContext) -> u32 {
    gc_begin(false);
    0
}

#[uprobe]
pub fn jvm_gc_end(_ctx: ProbeContext) -> u32 {
    let now = sched::now();
    with_open(|st| {
        if st.gc_start_ns != 0 {
            st.gc_ns += now.saturating_sub(st.gc_start_ns);
            st.gc_start_ns = 0;
        }
    });
    0
}

// ---- Go (entry uprobes on runtime symbols; ABIInternal passes the first integer argument in
// RAX, which is stopTheWorldWithSema's stwReason since Go 1.21)

#[uprobe]
pub fn go_stw_stop(_ctx: ProbeContext) -> u32 {
    open(None);
    0
}

#[uprobe]
pub fn go_stw_stop_reason(ctx: ProbeContext) -> u32 {
    // SAFETY: as above.
    open(Some(unsafe { (*ctx.regs).rax } as u32 & 0xff));
    0
}

#[uprobe]
pub fn go_stw_start(_ctx: ProbeContext) -> u32 {
    close(Runtime::Go);
    0
}

// ---- exec: sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm),
// in the context of the task that exec'd.

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec_btf(_ctx: BtfTracePointContext) -> i32 {
    on_exec();
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec_raw(_ctx: RawTracePointContext) -> i32 {
    on_exec();
    0
}

#[inline(always)]
fn on_exec() {
    let (_, tgid) = task::current_ids();
    if !sched::is_traced(tgid) {
        return;
    }
    let comm = process_comm();
    // The process's aggregates carry the name it had when it first paused: after exec it is
    // another program (a shell that exec'd the workload), so the name follows.
    if let Some(ps) = sched::existing_proc_stats(tgid) {
        ps.comm = comm;
    }
    output::emit(ExecRecord { kind: RecordKind::Exec as u32, tgid, ts_mono_ns: sched::now(), comm }, DropCause::Exec);
}
