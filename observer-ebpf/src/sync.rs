//! Disk flush stalls: the fsync family (fsync, fdatasync, sync_file_range, msync with
//! MS_SYNC, sync, syncfs), timed from the syscall tracepoints, or, where every file system
//! whose fsync can wait is ext4, from ext4's own fsync tracepoints (fsync, fdatasync and
//! msync only, but without the syscall tracepoints' cost to every other syscall on the host:
//! attaching any of them sets the kernel's syscall-tracepoint work on every thread).
//!
//! At entry the call is kept per thread with the file's inode and device, read from the fd
//! (`task->files->fdt->fd[fd]->f_inode`), or from the file itself at ext4's tracepoint. ext4's
//! tracepoints (tp_btf) keep it in the thread's task storage (`Activity`): no hash, no lock.
//! The syscall tracepoints keep it in an LRU hash by tid, which the raw-tracepoint fallback of
//! the scheduler programs can look up too. The agent resolves the path from /proc/<pid>/fd and
//! checks it is still the same inode. At exit every call is aggregated, and calls at or above
//! `--min-pause` are streamed. While a call is in progress it is the bracket that explains a
//! D sleep of its thread (memory.rs).
use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{DropCause, RecordKind, SYNC_NO_FD, SyncRecord, SyncSyscall};

use crate::{
    config, counters, memory, output, sched,
    task::{self, TaskPtr},
};

/// Calls in progress seen by the syscall tracepoints, by thread. LRU: a thread killed inside a call leaves its entry behind.
#[map]
static SYNC_CALLS: LruHashMap<u32, SyncRecord> = LruHashMap::with_max_entries(8192, 0);

/// Whether a syscall tracepoint has ever kept a call in `SYNC_CALLS` (non-zero): until then
/// the map is empty and a D sleep need not look there. On hosts timing fsync from ext4's
/// tracepoints it stays 0, which spares every D sleep outside a bracket a hash lookup.
#[map]
static SYNC_CALLS_USED: Array<u32> = Array::with_max_entries(1, 0);

/// Syscall tracepoint layout (include/trace/syscall.h): arguments as 8 bytes from offset 16;
/// exit's `ret` at 16.
const ARG0: usize = 16;
const ARG2: usize = 32;
const ARG3: usize = 40;

/// msync(2) `MS_SYNC`: only then does msync wait for the write-back.
const MS_SYNC: u64 = 4;

#[inline(always)]
fn arg(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: reads within the tracepoint record at the fixed syscall-tracepoint layout.
    unsafe { ctx.read_at::<u64>(off) }.unwrap_or(0)
}

/// The call in progress of thread `tid` seen by the syscall tracepoints, if any.
#[inline(always)]
pub fn call_of(tid: u32) -> Option<SyncRecord> {
    // SAFETY: read-only copies of our own map values.
    unsafe {
        if SYNC_CALLS_USED.get(0).is_none_or(|u| *u == 0) {
            return None;
        }
        SYNC_CALLS.get(&tid).copied()
    }
}

/// `(inode number, device)` of the current task's open file `fd`.
#[inline(always)]
fn fd_inode(fd: u64) -> (u64, u32) {
    let o = config::fd_offsets();
    // SAFETY: helper without preconditions; an untyped pointer, read through probe reads.
    let task = unsafe { bpf_get_current_task() } as TaskPtr;
    let nonnull = |p: &TaskPtr| !p.is_null();
    let Some(fdt) = task::read::<false, TaskPtr>(task, o.task_files)
        .filter(nonnull)
        .and_then(|files| task::read::<false, TaskPtr>(files, o.files_fdt))
        .filter(nonnull)
    else {
        return (0, 0);
    };
    let max = task::read::<false, u32>(fdt, o.fdt_max_fds).unwrap_or(0);
    if fd >= u64::from(max) {
        return (0, 0);
    }
    let Some(inode) = task::read::<false, TaskPtr>(fdt, o.fdt_fd)
        .filter(nonnull)
        .and_then(|arr| task::read::<false, TaskPtr>(arr, (fd * 8) as usize))
        .filter(nonnull)
        .and_then(|file| task::read::<false, TaskPtr>(file, o.file_inode))
        .filter(nonnull)
    else {
        return (0, 0);
    };
    task::inode_id::<false>(inode)
}

/// The current thread and its process, if the process is observed.
#[inline(always)]
fn traced_caller() -> Option<(u32, u32)> {
    let (tid, tgid) = task::current_ids();
    sched::is_traced(tgid).then_some((tid, tgid))
}

#[inline(always)]
fn enter(syscall: SyncSyscall, arg0: u64, flags: u64) {
    let Some(ids) = traced_caller() else { return };
    let (ino, dev) = if syscall.takes_fd() { fd_inode(arg0) } else { (0, 0) };
    keep(ids, syscall, arg0, flags, ino, dev);
}

/// Keeps the call thread `tid` of process `tgid` (the current one) is entering, for its exit.
#[inline(always)]
fn keep((tid, tgid): (u32, u32), syscall: SyncSyscall, arg0: u64, flags: u64, ino: u64, dev: u32) {
    let rec = SyncRecord {
        kind: RecordKind::Sync as u32,
        syscall: syscall as u32,
        tgid,
        tid,
        start_mono_ns: sched::now(),
        duration_ns: 0,
        ret: 0,
        arg: arg0,
        ino,
        dev,
        flags: flags as u32,
        comm: crate::task::current_comm(),
    };
    if SYNC_CALLS.insert(&tid, &rec, 0).is_err() {
        output::count_drop(DropCause::Sync);
        return;
    }
    if let Some(used) = SYNC_CALLS_USED.get_ptr_mut(0) {
        // SAFETY: our own map value; set once, so the line is not written on every call.
        unsafe {
            if *used == 0 {
                *used = 1;
            }
        }
    }
}

#[inline(always)]
fn exit(ret: i64) {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(mut rec) = call_of(tid) else { return };
    let _ = SYNC_CALLS.remove(&tid);
    rec.duration_ns = sched::now().saturating_sub(rec.start_mono_ns);
    rec.ret = ret;
    close(rec.tgid, rec.duration_ns, || rec);
}

/// A call of process `tgid` that took `duration_ns` has returned: every call goes into the
/// process's aggregate, and calls at or above `--min-pause` are streamed (`record` is built
/// only for those).
#[inline(always)]
fn close(tgid: u32, duration_ns: u64, record: impl FnOnce() -> SyncRecord) {
    if let Some(pm) = memory::proc_mem(tgid) {
        counters::add_stat(&mut pm.sync, duration_ns);
    }
    if duration_ns >= config::min_pause_ns() {
        output::emit(record(), DropCause::Sync);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_fsync")]
pub fn fsync_enter(ctx: TracePointContext) -> u32 {
    enter(SyncSyscall::Fsync, arg(&ctx, ARG0), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fdatasync")]
pub fn fdatasync_enter(ctx: TracePointContext) -> u32 {
    enter(SyncSyscall::Fdatasync, arg(&ctx, ARG0), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sync_file_range")]
pub fn sync_file_range_enter(ctx: TracePointContext) -> u32 {
    enter(SyncSyscall::SyncFileRange, arg(&ctx, ARG0), arg(&ctx, ARG3));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_msync")]
pub fn msync_enter(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, ARG2);
    // MS_ASYNC / MS_INVALIDATE alone return without waiting for the disk.
    if flags & MS_SYNC != 0 {
        enter(SyncSyscall::Msync, arg(&ctx, ARG0), flags);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sync")]
pub fn sync_enter(_ctx: TracePointContext) -> u32 {
    enter(SyncSyscall::Sync, 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_syncfs")]
pub fn syncfs_enter(ctx: TracePointContext) -> u32 {
    enter(SyncSyscall::Syncfs, arg(&ctx, ARG0), 0);
    0
}

/// One exit program serves every call of the family: the entry kept says which it was.
#[tracepoint(category = "syscalls", name = "sys_exit_fsync")]
pub fn sync_exit(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, ARG0) as i64);
    0
}

// ---- off the syscall path: ext4's own fsync tracepoints (tp_btf), chosen by the loader when
// every file system on the host whose fsync can wait is ext4. Any syscall tracepoint sends
// every syscall of every process through the kernel's tracing path; these fire only inside
// ext4_sync_file, which fsync, fdatasync, msync(MS_SYNC) and io_uring's fsync reach (overlayfs
// passes its fsync on to the upper file system's).
//   ext4_sync_file_enter(struct file *file, int datasync)
//   ext4_sync_file_exit(struct inode *inode, int ret)

#[btf_tracepoint(function = "ext4_sync_file_enter")]
pub fn ext4_fsync_enter(ctx: BtfTracePointContext) -> i32 {
    if traced_caller().is_none() {
        return 0;
    }
    let file: TaskPtr = ctx.arg(0);
    let datasync: i32 = ctx.arg(1);
    // Which call brought the thread here, from its saved registers: the file system only
    // knows it was asked for a (data) sync.
    let (nr, [a0, _, a2]) = task::current_syscall();
    let (syscall, arg0, flags) = match nr {
        task::nr::FSYNC => (SyncSyscall::Fsync, a0, 0),
        task::nr::FDATASYNC => (SyncSyscall::Fdatasync, a0, 0),
        task::nr::MSYNC => (SyncSyscall::Msync, a0, a2),
        // io_uring and other kernel-initiated syncs: no descriptor to report.
        _ if datasync != 0 => (SyncSyscall::Fdatasync, SYNC_NO_FD, 0),
        _ => (SyncSyscall::Fsync, SYNC_NO_FD, 0),
    };
    let (ino, dev) = task::read::<true, TaskPtr>(file, config::fd_offsets().file_inode)
        .filter(|p| !p.is_null())
        .map(task::inode_id::<true>)
        .unwrap_or((0, 0));
    // Kept in the thread's task storage, next to the other brackets a D sleep is checked
    // against: no hash, no lock, freed with the thread if it dies inside the call.
    let Some(act) = memory::activity::<true>(memory::current_task()) else {
        output::count_drop(DropCause::Sync);
        return 0;
    };
    act.sync_start_ns = sched::now();
    act.sync_arg = arg0;
    act.sync_ino = ino;
    act.sync_dev = dev;
    act.sync_flags = flags as u32;
    act.sync_call = syscall as u32;
    0
}

#[btf_tracepoint(function = "ext4_sync_file_exit")]
pub fn ext4_fsync_exit(ctx: BtfTracePointContext) -> i32 {
    let Some(act) = memory::activity::<false>(memory::current_task()) else { return 0 };
    if act.sync_call == 0 {
        return 0;
    }
    let syscall = core::mem::replace(&mut act.sync_call, 0);
    let duration_ns = sched::now().saturating_sub(act.sync_start_ns);
    let (tid, tgid) = task::current_ids();
    // The record (and the thread's name) only for calls that are streamed.
    close(tgid, duration_ns, || SyncRecord {
        kind: RecordKind::Sync as u32,
        syscall,
        tgid,
        tid,
        start_mono_ns: act.sync_start_ns,
        duration_ns,
        ret: i64::from(ctx.arg::<i32>(1)),
        arg: act.sync_arg,
        ino: act.sync_ino,
        dev: act.sync_dev,
        flags: act.sync_flags,
        comm: crate::task::current_comm(),
    });
    0
}
