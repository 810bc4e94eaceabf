//! Reading `task_struct` fields at offsets supplied by the loader.
//!
//! Two ways, chosen per program at compile time (`DIRECT`):
//! - tp_btf programs receive BTF-typed task pointers, so a plain load is allowed: the verifier
//!   checks the offset against the struct's BTF (the offsets are constants from frozen .rodata)
//!   and emits a fault-tolerant PROBE_MEM load. No helper call: the cheapest read there is.
//! - raw_tp programs receive untyped pointers and must go through bpf_probe_read_kernel.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated};
use observer_common::{TASK_COMM_LEN, TaskId};

use crate::config;

/// Opaque kernel `struct task_struct *`.
pub type TaskPtr = *const u8;

/// Reads a `T` at `off` bytes into the kernel object at `task` (any kernel pointer: the name
/// is historical, the same two ways apply to every struct).
#[inline(always)]
pub fn read<const DIRECT: bool, T: Copy>(task: TaskPtr, off: usize) -> Option<T> {
    let p = task.wrapping_add(off).cast::<T>();
    if DIRECT {
        if task.is_null() {
            return None;
        }
        // SAFETY: only used from tp_btf programs, where `task` is a BTF-typed pointer and the
        // verifier turns this load into a PROBE_MEM load (a bad address reads as zero instead
        // of faulting) after checking the access lies within a task_struct member.
        Some(unsafe { core::ptr::read_volatile(p) })
    } else {
        // On failure the helper zero-fills `v` (kernel/trace/bpf_trace.c), and a zero reads as
        // "none" to every caller (tid 0 is the idle task, null pointers and zero clocks are
        // filtered), so the result is not tested here. Testing it made LLVM compute on the
        // unloaded value on the failure path (a branchless `Some(v) if v != 0`), a read of a
        // never-written register that the verifier rejects. A null `task` is not tested
        // either, for the same reason (a `None` whose undefined payload LLVM stored anyway):
        // the helper refuses the low address and zero-fills.
        // SAFETY: a zeroed T is a valid value for the plain integers and pointers read here.
        let mut v: T = unsafe { core::mem::zeroed() };
        // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-tolerant path: a bad
        // address yields an error, never a fault. The offset comes from the running kernel's BTF.
        unsafe { generated::bpf_probe_read_kernel(core::ptr::from_mut(&mut v).cast(), core::mem::size_of::<T>() as u32, p.cast()) };
        Some(v)
    }
}

/// `(task->pid, task->tgid)`: thread and process id. pid is 0 for the per-CPU idle tasks.
/// Through probe reads the adjacent pid_t fields are fetched in one helper call; direct loads
/// must stay within one member (the verifier checks each access against the struct's BTF).
#[inline(always)]
pub fn ids<const DIRECT: bool>(task: TaskPtr) -> Option<(u32, u32)> {
    let off = config::task_pid_off();
    if !DIRECT && config::task_tgid_off() == off + 4 {
        let v: u64 = read::<DIRECT, u64>(task, off)?;
        Some((v as u32, (v >> 32) as u32))
    } else {
        Some((read::<DIRECT, u32>(task, off)?, read::<DIRECT, u32>(task, config::task_tgid_off())?))
    }
}

/// `task->pid`.
#[inline(always)]
pub fn tid<const DIRECT: bool>(task: TaskPtr) -> Option<u32> {
    read::<DIRECT, u32>(task, config::task_pid_off())
}

/// `task->tgid`.
#[inline(always)]
pub fn tgid<const DIRECT: bool>(task: TaskPtr) -> Option<u32> {
    read::<DIRECT, u32>(task, config::task_tgid_off())
}

/// `task->on_cpu`: non-zero while the task is running (or switching) on a CPU.
#[inline(always)]
pub fn on_cpu<const DIRECT: bool>(task: TaskPtr) -> bool {
    read::<DIRECT, i32>(task, config::task_on_cpu_off()).is_some_and(|v| v != 0)
}

/// `task->comm`.
#[inline(always)]
pub fn comm<const DIRECT: bool>(task: TaskPtr) -> [u8; TASK_COMM_LEN] {
    // SAFETY: 16 bytes, and any bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(comm_words::<DIRECT>(task)) }
}

/// `task->comm` as two 8-byte words: two loads where reading a `[u8; 16]` takes sixteen (its
/// alignment is 1, and the BPF target has no unaligned loads). Zero where unreadable.
#[inline(always)]
pub fn comm_words<const DIRECT: bool>(task: TaskPtr) -> [u64; 2] {
    let off = config::task_comm_off();
    match (read::<DIRECT, u64>(task, off), read::<DIRECT, u64>(task, off + 8)) {
        (Some(a), Some(b)) => [a, b],
        _ => [0; 2],
    }
}

/// `task->group_leader->comm`: the process name rather than the thread name.
#[inline(always)]
pub fn leader_comm<const DIRECT: bool>(task: TaskPtr) -> [u8; TASK_COMM_LEN] {
    // SAFETY: as in `comm`.
    unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(leader_comm_words::<DIRECT>(task)) }
}

/// `leader_comm` as two 8-byte words (see `comm_words`).
#[inline(always)]
pub fn leader_comm_words<const DIRECT: bool>(task: TaskPtr) -> [u64; 2] {
    match read::<DIRECT, TaskPtr>(task, config::task_group_leader_off()) {
        Some(leader) if !leader.is_null() => comm_words::<DIRECT>(leader),
        _ => comm_words::<DIRECT>(task),
    }
}

/// `task->group_leader->start_time`: when the process started (monotonic ns), which tells it
/// from a later process given the same pid. 0 when unreadable.
#[inline(always)]
pub fn leader_start<const DIRECT: bool>(task: TaskPtr) -> u64 {
    let leader = read::<DIRECT, TaskPtr>(task, config::task_group_leader_off()).filter(|p| !p.is_null());
    read::<DIRECT, u64>(leader.unwrap_or(task), config::task_start_time_off()).unwrap_or(0)
}

/// `task->se.cfs_rq->rq`: the run queue the task is on (or being queued on). None when the
/// chain is not configured or a load faulted (a PROBE_MEM load that faults yields 0).
#[inline(always)]
pub fn rq<const DIRECT: bool>(task: TaskPtr) -> Option<TaskPtr> {
    if config::cfs_rq_rq_off() == 0 {
        return None;
    }
    let cfs_rq = read::<DIRECT, TaskPtr>(task, config::task_cfs_rq_off()).filter(|p| !p.is_null())?;
    read::<DIRECT, TaskPtr>(cfs_rq, config::cfs_rq_rq_off()).filter(|p| !p.is_null())
}

/// `rq->clock`: the run-queue clock, in sched_clock nanoseconds.
#[inline(always)]
pub fn rq_clock<const DIRECT: bool>(rq: TaskPtr) -> Option<u64> {
    read::<DIRECT, u64>(rq, config::rq_clock_off()).filter(|&t| t != 0)
}

/// `rq->prev_steal_time_rq`: the CPU's cumulative hypervisor steal (ns) as last folded into
/// the run-queue clock. None when not configured, unreadable, or still zero.
#[inline(always)]
pub fn rq_steal<const DIRECT: bool>(rq: TaskPtr) -> Option<u64> {
    if config::rq_steal_off() == 0 {
        return None;
    }
    read::<DIRECT, u64>(rq, config::rq_steal_off()).filter(|&t| t != 0)
}

/// The kernel's run-queue accounting of `task` (`task->sched_info`, kernel/sched/stats.h
/// v6.18): `(last_queued, run_delay, pcount)`. `last_queued` is the run-queue clock when the
/// task was last queued and has not run since (0: not waiting), `run_delay` the total it has
/// waited, `pcount` how many times it got a CPU. tp_btf only (configured only there).
#[inline(always)]
pub fn sched_info(task: TaskPtr) -> (u64, u64, u64) {
    (
        read::<true, u64>(task, config::task_last_queued_off()).unwrap_or(0),
        read::<true, u64>(task, config::task_run_delay_off()).unwrap_or(0),
        read::<true, u64>(task, config::task_pcount_off()).unwrap_or(0),
    )
}

/// `task->sched_info.last_queued` alone (see `sched_info`).
#[inline(always)]
pub fn sched_info_last_queued(task: TaskPtr) -> u64 {
    read::<true, u64>(task, config::task_last_queued_off()).unwrap_or(0)
}

/// `task->jobctl` (0 when not configured or unreadable).
#[inline(always)]
pub fn jobctl<const DIRECT: bool>(task: TaskPtr) -> u64 {
    match config::task_jobctl_off() {
        0 => 0,
        off => read::<DIRECT, u64>(task, off).unwrap_or(0),
    }
}

/// `task->parent`: the real parent, or the tracer while the task is ptraced.
#[inline(always)]
pub fn parent<const DIRECT: bool>(task: TaskPtr) -> Option<TaskPtr> {
    read::<DIRECT, TaskPtr>(task, config::task_parent_off()).filter(|p| !p.is_null())
}

/// Identity of `task`: ids, thread name and `task->cred->uid`.
#[inline(always)]
pub fn identity<const DIRECT: bool>(task: TaskPtr) -> TaskId {
    let Some((tid, tgid)) = ids::<DIRECT>(task) else { return TaskId::default() };
    let uid = read::<DIRECT, TaskPtr>(task, config::task_cred_off())
        .filter(|c| !c.is_null())
        .and_then(|cred| read::<DIRECT, u32>(cred, config::cred_uid_off()))
        .unwrap_or(u32::MAX);
    TaskId { tid, tgid, uid, _pad0: 0, comm: comm::<DIRECT>(task) }
}

/// The current task: a signal's sender, a stop's resumer, a clock syscall's caller.
#[inline(always)]
pub fn current() -> TaskId {
    let (tid, tgid) = current_ids();
    TaskId { tid, tgid, uid: bpf_get_current_uid_gid() as u32, _pad0: 0, comm: current_comm() }
}

/// The current thread's (tid, tgid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    (v as u32, (v >> 32) as u32)
}

/// Writes the current thread's name straight into `dst`. Not through aya's helper wrapper: it
/// zeroes its buffer first, and LLVM turns that zeroing into a call of a byte-wise memset (see
/// `words`). The kernel's helper (`strscpy_pad`) writes all 16 bytes, so none is zeroed here.
///
/// # Safety
/// `dst` must be writable: a map value, or this program's stack.
#[inline(always)]
pub unsafe fn current_comm_into(dst: *mut [u8; TASK_COMM_LEN]) {
    // SAFETY: the caller's contract; the helper takes uninitialised memory
    // (ARG_PTR_TO_UNINIT_MEM) and fills all 16 bytes, NUL-padded (zeroed on failure).
    unsafe { generated::bpf_get_current_comm(dst.cast(), TASK_COMM_LEN as u32) };
}

/// The current thread's name (see `current_comm_into`).
#[inline(always)]
pub fn current_comm() -> [u8; TASK_COMM_LEN] {
    let mut comm = core::mem::MaybeUninit::<[u8; TASK_COMM_LEN]>::uninit();
    // SAFETY: a buffer on this program's stack, which the helper fills entirely.
    unsafe {
        current_comm_into(comm.as_mut_ptr());
        comm.assume_init()
    }
}

/// `task->maj_flt`: the kernel's count of this thread's major faults.
#[inline(always)]
pub fn maj_flt(task: TaskPtr) -> Option<u64> {
    read::<true, u64>(task, config::task_maj_flt_off())
}

/// `(inode->i_ino, inode->i_sb->s_dev)`: a file's identity, (0, 0) where unreadable.
#[inline(always)]
pub fn inode_id<const DIRECT: bool>(inode: TaskPtr) -> (u64, u32) {
    let o = config::inode_offsets();
    let ino = read::<DIRECT, u64>(inode, o.ino).unwrap_or(0);
    let dev = read::<DIRECT, TaskPtr>(inode, o.sb).filter(|p| !p.is_null()).and_then(|sb| read::<DIRECT, u32>(sb, o.sb_dev)).unwrap_or(0);
    (ino, dev)
}

/// The syscall the current task is in (its x86-64 number; anything else, e.g. a kernel
/// thread's, matches no caller's table) and its first three arguments, from the user
/// registers saved at syscall entry. tp_btf programs only: the helper wants a BTF task.
#[inline(always)]
pub fn current_syscall() -> (u64, [u64; 3]) {
    let o = config::syscall_regs();
    // SAFETY: helpers without preconditions; the first returns the BTF-typed current task
    // (never NULL in process context), the second its BTF-typed saved registers (or 0), read
    // through fault-tolerant loads.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as TaskPtr;
    let arg = |off: usize| read::<true, u64>(regs, off).unwrap_or(0);
    (read::<true, u64>(regs, o.nr).unwrap_or(u64::MAX), [arg(o.args[0]), arg(o.args[1]), arg(o.args[2])])
}

/// x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls the hooks off
/// the syscall path recognise. The loader attaches those hooks only where `struct pt_regs`
/// has x86-64's members.
pub mod nr {
    pub const MSYNC: u64 = 26;
    pub const FSYNC: u64 = 74;
    pub const FDATASYNC: u64 = 75;
    pub const ADJTIMEX: u64 = 159;
    pub const SETTIMEOFDAY: u64 = 164;
    pub const CLOCK_SETTIME: u64 = 227;
    pub const CLOCK_ADJTIME: u64 = 305;
}
