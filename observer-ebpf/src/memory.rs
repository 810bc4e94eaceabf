//! Memory pauses: page faults (file-backed and swap-in), direct and memcg reclaim, compaction,
//! and why a thread was in uninterruptible sleep.
//!
//! Each thread has activity brackets in BPF task storage (`ACTIVITY`), set by tracepoints
//! (tp_btf only: task storage needs a BTF-typed task pointer):
//!
//! - **Fault**: exceptions page_fault_user / page_fault_kernel record the latest fault's ip and
//!   address in the thread's `FAULTS` entry (an array indexed by tid, `FaultState` says why);
//!   filemap mm_filemap_fault marks it file-backed (with inode, device, page offset).
//!   There is no fault-exit tracepoint, so a fault counts as in progress while the thread's
//!   saved user registers still show the faulting ip: a return to user space and any later
//!   kernel entry (syscall, another fault) change them.
//! - **Reclaim / compaction**: vmscan direct and memcg reclaim begin/end, compaction
//!   begin/end; each stall is timed, aggregated, and streamed when at or above `--min-pause`.
//!
//! Major faults are counted from the kernel's own accounting (`task->maj_flt`, which is what
//! /proc/<pid>/stat sums): a change seen at the thread's next fault, or at its exit, means its
//! previous fault was major, and the bracket says whether that fault was on a file or on
//! anonymous memory (a swap-in). The hot path (every fault) is one inlined array lookup and a
//! few stores; the per-process map is touched only for major faults.
//!
//! When a thread leaves the CPU in D, `explain_block` names the innermost bracket it is in
//! (reclaim/compaction, then fault, then an fsync-family call), or marks it for its kernel
//! stack: taken by `block_stack` as it gets the CPU back if its pause is streamed (tp_btf), or
//! at once with `bpf_get_stackid` (the raw-tracepoint fallback).
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_REUSE_STACKID, BPF_NOEXIST},
    helpers::{
        bpf_get_current_task_btf,
        generated::{bpf_get_task_stack, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap, PerCpuArray, StackTrace},
    programs::{BtfTracePointContext, tracing::StackIdContext},
};
use observer_common::{
    Activity, BLOCK_STACK_RING, BlockReason, BlockStack, DropCause, FAULT_FILE, FAULT_INIT, FAULT_USER, FaultState, MemStallRecord,
    ProcMem, RecordKind, STACK_ID_RING, ThreadState,
};

use crate::{
    config, counters, output, sched,
    storage::TaskStorageDef,
    sync,
    task::{self, TaskPtr},
};

/// Each thread's latest fault, indexed by tid (`FaultState`). Sized by the agent like
/// `SWITCH_INS`, which sets `FAULTS_MASK` to its size − 1. Mmapable only for where that puts
/// the values: from a page boundary, so that every 64-byte entry is one cache line. Nothing
/// maps it.
#[map]
static FAULTS: Array<FaultState> = Array::with_max_entries(1 << 15, BPF_F_MMAPABLE);

/// Reclaim, compaction and fsync brackets per thread (a BTF-defined task-storage map, see
/// `storage`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "ACTIVITY")]
static ACTIVITY: TaskStorageDef<Activity> = TaskStorageDef::new();

/// Per-process memory and disk aggregates, keyed by tgid; harvested and retired like
/// `PROC_STATS`.
#[map]
static PROC_MEM: LruHashMap<u32, ProcMem> = LruHashMap::with_max_entries(4096, 0);

/// Zeroed template for new `PROC_MEM` entries (too large for the BPF stack).
#[map]
static PROC_MEM_INIT: PerCpuArray<ProcMem> = PerCpuArray::with_max_entries(1, 0);

/// Kernel stacks of threads that went into D outside any bracket. The agent symbolises a
/// stack when its episode arrives and then deletes it, so the map holds only recent stacks;
/// REUSE_STACKID lets a new stack replace an old one whose hash collides instead of failing.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(2048, 0);

/// Kernel stacks of blocked threads whose episode is streamed, captured as they get the CPU
/// back (tp_btf): a ring of `BLOCK_STACK_RING` per CPU, read by the agent when the record
/// arrives. Capturing only these, rather than every D sleep outside a bracket at switch-out,
/// keeps the stack walk (about a microsecond) off the common short sleeps.
#[map]
static BLOCK_STACKS: PerCpuArray<BlockStack> = PerCpuArray::with_max_entries(BLOCK_STACK_RING, 0);

/// Per CPU: the sequence number of its next `BLOCK_STACKS` capture.
#[map]
static BLOCK_STACK_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn activity<const CREATE: bool>(task: TaskPtr) -> Option<&'static mut Activity> {
    // SAFETY: pointers from the map point to this task's entry, valid for the program's run; a
    // task's entry is only written by programs running as that task.
    ACTIVITY.get::<CREATE>(task).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn current_task() -> TaskPtr {
    // SAFETY: helper without preconditions; the result is BTF-typed (never NULL in process
    // context).
    unsafe { bpf_get_current_task_btf() as TaskPtr }
}

/// Whether process `tgid` has a memory aggregate.
#[inline(always)]
pub fn has_aggregate(tgid: u32) -> bool {
    // SAFETY: presence check only; the value is not read.
    unsafe { PROC_MEM.get(&tgid).is_some() }
}

/// The process's memory aggregate, created on first use.
#[inline(always)]
pub fn proc_mem(tgid: u32) -> Option<&'static mut ProcMem> {
    if let Some(p) = PROC_MEM.get_ptr_mut(&tgid) {
        // SAFETY: pointer into our own map value, valid for this invocation.
        return Some(unsafe { &mut *p });
    }
    let init = PROC_MEM_INIT.get_ptr(0)?;
    // NOEXIST: another CPU may have created the entry meanwhile; then we use theirs.
    // SAFETY: `init` points to a valid, zeroed ProcMem in the per-CPU array.
    let _ = PROC_MEM.insert(&tgid, unsafe { &*init }, BPF_NOEXIST as u64);
    match PROC_MEM.get_ptr_mut(&tgid) {
        // SAFETY: as above.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            output::count_drop(DropCause::MemAggregate);
            None
        }
    }
}

// ---- page faults
//   page_fault_user / page_fault_kernel(unsigned long address, struct pt_regs *regs,
//                                       unsigned long error_code)   (arch/x86)
//   mm_filemap_fault(struct address_space *mapping, pgoff_t index)

#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user(ctx: BtfTracePointContext) -> i32 {
    on_fault(ctx.arg(0), ctx.arg(1), FAULT_USER);
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: BtfTracePointContext) -> i32 {
    on_fault(ctx.arg(0), ctx.arg(1), 0);
    0
}

#[inline(always)]
fn on_fault(addr: u64, regs: TaskPtr, user: u32) {
    let task = current_task();
    let Some(tid) = task::tid::<true>(task) else { return };
    let Some((e, mine)) = fault_entry(tid) else { return };
    let Some(maj) = task::maj_flt(task) else { return };
    if mine {
        settle_major(e, maj);
    } else {
        // First sight of this thread (or the entry was another's): its earlier faults are not
        // ours to count.
        e.tid = tid;
    }
    e.majflt_seen = maj;
    e.ip = task::read::<true, u64>(regs, config::pt_regs_ip_off()).unwrap_or(0);
    e.addr = addr;
    // Volatile: LLVM merges adjacent zero stores into a call of a byte-wise memset (`words`).
    // SAFETY: fields of our own map value.
    unsafe {
        core::ptr::write_volatile(&raw mut e.ino, 0);
        core::ptr::write_volatile(&raw mut e.pgoff, 0);
    }
    e.dev = 0;
    e.flags = FAULT_INIT | user;
    // SAFETY: a field of our own map value; volatile so that it stays the last store.
    unsafe { core::ptr::write_volatile(&raw mut e.check, FaultState::check_of(tid, maj)) };
}

/// Thread `tid`'s `FAULTS` entry, and whether it holds the thread's own state (its tid, and
/// a check word that agrees: not mixed by two threads sharing the entry).
#[inline(always)]
fn fault_entry(tid: u32) -> Option<(&'static mut FaultState, bool)> {
    let p = FAULTS.get_ptr_mut(tid & config::faults_mask())?;
    // SAFETY: pointer into our own map value, valid for this program run. Two CPUs write one
    // entry at once only for two threads sharing it; the check word detects the mix.
    let e = unsafe { &mut *p };
    let mine = e.tid == tid && e.check == FaultState::check_of(tid, e.majflt_seen);
    Some((e, mine))
}

/// Counts the thread's previous fault (its entry `e`, its own) as major if the kernel's
/// `maj_flt` moved to `maj` since.
#[inline(always)]
fn settle_major(e: &FaultState, maj: u64) {
    if e.flags & FAULT_INIT == 0 || maj <= e.majflt_seen {
        return;
    }
    let n = maj - e.majflt_seen;
    let (_, tgid) = task::current_ids();
    if !sched::is_traced(tgid) {
        return;
    }
    let Some(pm) = proc_mem(tgid) else { return };
    if e.flags & FAULT_FILE != 0 {
        counters::atomic_add(&mut pm.major_file, n);
    } else {
        counters::atomic_add(&mut pm.major_swap, n);
    }
}

#[btf_tracepoint(function = "mm_filemap_fault")]
pub fn mm_filemap_fault(ctx: BtfTracePointContext) -> i32 {
    let (tid, _) = task::current_ids();
    // Inside the fault page_fault_user/kernel has just recorded in the entry.
    let Some((e, true)) = fault_entry(tid) else { return 0 };
    let mapping: TaskPtr = ctx.arg(0);
    let o = config::inode_offsets();
    e.flags |= FAULT_FILE;
    e.pgoff = ctx.arg::<u64>(1);
    if let Some(inode) = task::read::<true, TaskPtr>(mapping, o.mapping_host).filter(|p| !p.is_null()) {
        (e.ino, e.dev) = task::inode_id::<true>(inode);
    }
    0
}

/// A thread exits: its last fault is settled (nothing after it would do so), and its entry is
/// left to nobody, so that a later thread given the same tid starts afresh.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn mem_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let task = current_task();
    let Some(tid) = task::tid::<true>(task) else { return 0 };
    if let Some((e, true)) = fault_entry(tid) {
        if let Some(maj) = task::maj_flt(task) {
            settle_major(e, maj);
        }
        e.tid = 0;
    }
    0
}

// ---- reclaim and compaction
//   mm_vmscan_direct_reclaim_begin / mm_vmscan_memcg_reclaim_begin(int order, gfp_t gfp_flags)
//   mm_vmscan_direct_reclaim_end / mm_vmscan_memcg_reclaim_end(unsigned long nr_reclaimed)
//   mm_compaction_begin(struct compact_control *cc, unsigned long zone_start,
//                       unsigned long zone_end, bool sync)
//   mm_compaction_end(..., bool sync, int status)

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_reclaim_begin(_ctx: BtfTracePointContext) -> i32 {
    stall_begin(BlockReason::Reclaim);
    0
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn direct_reclaim_end(ctx: BtfTracePointContext) -> i32 {
    stall_end(BlockReason::Reclaim, ctx.arg::<u64>(0));
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_reclaim_begin(_ctx: BtfTracePointContext) -> i32 {
    stall_begin(BlockReason::MemcgReclaim);
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end(ctx: BtfTracePointContext) -> i32 {
    stall_end(BlockReason::MemcgReclaim, ctx.arg::<u64>(0));
    0
}

#[btf_tracepoint(function = "mm_compaction_begin")]
pub fn compaction_begin(_ctx: BtfTracePointContext) -> i32 {
    stall_begin(BlockReason::Compaction);
    0
}

#[btf_tracepoint(function = "mm_compaction_end")]
pub fn compaction_end(ctx: BtfTracePointContext) -> i32 {
    stall_end(BlockReason::Compaction, ctx.arg::<i64>(4) as u64);
    0
}

#[inline(always)]
fn stall_begin(reason: BlockReason) {
    let (_, tgid) = task::current_ids();
    if !sched::is_traced(tgid) {
        return;
    }
    let Some(act) = activity::<true>(current_task()) else { return };
    act.mem_reason = reason as u32;
    act.mem_start_ns = sched::now();
}

#[inline(always)]
fn stall_end(reason: BlockReason, result: u64) {
    let Some(act) = activity::<false>(current_task()) else { return };
    if act.mem_reason != reason as u32 {
        return;
    }
    act.mem_reason = 0;
    let duration = sched::now().saturating_sub(act.mem_start_ns);
    let (tid, tgid) = task::current_ids();
    if let Some(pm) = proc_mem(tgid) {
        let i = reason as usize - BlockReason::Reclaim as usize;
        if let Some(s) = pm.mem_stalls.get_mut(i) {
            counters::add_stall(s, duration);
        }
    }
    if duration >= config::min_pause_ns() {
        output::emit(
            MemStallRecord {
                kind: RecordKind::MemStall as u32,
                reason: reason as u32,
                tgid,
                tid,
                start_mono_ns: act.mem_start_ns,
                duration_ns: duration,
                result,
                comm: task::comm::<true>(current_task()),
            },
            DropCause::MemStall,
        );
    }
}

// ---- why a thread is in D

/// The user-mode instruction pointer `task` will return to (its saved registers).
#[inline(always)]
fn user_ip(task: TaskPtr) -> Option<u64> {
    // SAFETY: `task` is a BTF-typed task pointer; the helper returns a BTF-typed pt_regs
    // pointer (or 0), read through a fault-tolerant load.
    let regs = unsafe { bpf_task_pt_regs(task.cast_mut().cast()) } as TaskPtr;
    task::read::<true, u64>(regs, config::pt_regs_ip_off())
}

/// Fills in why `prev` (thread `tid`) is leaving the CPU in uninterruptible sleep.
/// `DIRECT`: tp_btf, where brackets are readable; raw_tp has the kernel stack only.
#[inline(always)]
pub fn explain_block<const DIRECT: bool, C: StackIdContext>(ctx: &C, prev: TaskPtr, tid: u32, st: &mut ThreadState) {
    if DIRECT {
        // Innermost first: a reclaim or compaction (possibly inside a fault), then the fault,
        // then the fsync-family call around it.
        let act = activity::<false>(prev);
        if let Some(act) = act.as_ref().filter(|a| a.mem_reason != 0) {
            st.block_reason = act.mem_reason;
            return;
        }
        if let Some((e, true)) = fault_entry(tid) {
            if e.flags & FAULT_USER != 0 && user_ip(prev) == Some(e.ip) {
                st.block_reason = if e.flags & FAULT_FILE != 0 { BlockReason::MajorFault as u32 } else { BlockReason::Swapin as u32 };
                st.block_addr = e.addr;
                st.block_ino = e.ino;
                st.block_pgoff = e.pgoff;
                st.block_dev = e.dev;
                return;
            }
        }
        if let Some(act) = act.filter(|a| a.sync_call != 0) {
            in_sync(st, act.sync_arg, act.sync_ino, act.sync_dev);
            return;
        }
    }
    // Calls timed from the syscall tracepoints (any attach mechanism).
    if let Some(call) = sync::call_of(tid) {
        in_sync(st, call.arg, call.ino, call.dev);
        return;
    }
    st.block_reason = BlockReason::Stack as u32;
    // tp_btf: taken when the thread gets the CPU back, if its episode is streamed
    // (`block_stack`); its stack is the one it sleeps on until then.
    if !DIRECT {
        st.stack_id = ctx.get_stackid(&STACKS, BPF_F_REUSE_STACKID as u64).map_or(-1, |id| id as i32);
    }
}

/// The blocked phase of `st` is inside an fsync-family call on `arg` (the fd, or msync's
/// address), file `ino` on device `dev`.
#[inline(always)]
fn in_sync(st: &mut ThreadState, arg: u64, ino: u64, dev: u32) {
    st.block_reason = BlockReason::Sync as u32;
    st.block_addr = arg;
    st.block_ino = ino;
    st.block_dev = dev;
}

/// The kernel stack of `task`, which slept outside any bracket and is about to get the CPU
/// back (it is still on the stack it slept on: the switch to it comes after sched_switch),
/// kept in this CPU's `BLOCK_STACKS` ring; its `stack_id`, or -1 when the stack could not be
/// read. Only for streamed episodes.
#[inline(always)]
pub fn block_stack(task: TaskPtr) -> i32 {
    let Some(seq) = BLOCK_STACK_SEQ.get_ptr_mut(0) else { return -1 };
    // SAFETY: this CPU's counter; sched_switch runs with preemption off.
    let n = unsafe {
        let n = *seq & (STACK_ID_RING as u32 - 1);
        *seq = n.wrapping_add(1);
        n
    };
    let Some(e) = BLOCK_STACKS.get_ptr_mut(n & (BLOCK_STACK_RING - 1)) else { return -1 };
    // SAFETY: `task` is a BTF-typed task_struct pointer (sched_switch's `next`), `e` this
    // CPU's entry, written whole before its sequence number says whose it is.
    unsafe {
        let len = bpf_get_task_stack(
            task.cast_mut().cast(),
            core::ptr::addr_of_mut!((*e).ips).cast(),
            core::mem::size_of_val(&(*e).ips) as u32,
            0,
        );
        if len <= 0 {
            return -1;
        }
        (*e).len = len as u32;
        (*e).seq = n;
    }
    STACK_ID_RING | n as i32
}

/// Charges an episode's blocked phase to its process, by reason.
#[inline(always)]
pub fn charge_block(st: &ThreadState, blocked_ns: u64) {
    let Some(pm) = proc_mem(st.tgid) else { return };
    if let Some(s) = pm.blocked.get_mut(st.block_reason as usize) {
        counters::add_stall(s, blocked_ns);
    }
}
