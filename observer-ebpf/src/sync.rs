//! Disk flush stalls: the fsync family (fsync, fdatasync, sync_file_range, msync with
//! MS_SYNC, sync, syncfs), timed from the syscall tracepoints. These are per-syscall classic
//! tracepoints, so processes that never call them pay nothing.
//!
//! At entry the call is kept per thread with the file's inode and device, read from the fd
//! (`task->files->fdt->fd[fd]->f_inode`): the agent resolves the path from /proc/<pid>/fd and
//! checks it is still the same inode. At exit every call is aggregated, and calls at or above
//! `--min-pause` are streamed. While a call is in progress it is the bracket that explains a
//! D sleep of its thread (memory.rs).
use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use observer_common::{DropCause, RecordKind, SyncRecord, SyncSyscall};

use crate::{
    config, counters, memory, output, sched,
    task::{self, TaskPtr},
};

/// Calls in progress, by thread. LRU: a thread killed inside a call leaves its entry behind.
#[map]
static SYNC_CALLS: LruHashMap<u32, SyncRecord> = LruHashMap::with_max_entries(8192, 0);

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

/// The call in progress of thread `tid`, if any.
#[inline(always)]
pub fn call_of(tid: u32) -> Option<SyncRecord> {
    // SAFETY: read-only copy of our own map value.
    unsafe { SYNC_CALLS.get(&tid) }.copied()
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

#[inline(always)]
fn enter(syscall: SyncSyscall, arg0: u64, flags: u64) {
    let v = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (tid, tgid) = (v as u32, (v >> 32) as u32);
    if !sched::is_traced(tgid) {
        return;
    }
    let (ino, dev) = if syscall.takes_fd() { fd_inode(arg0) } else { (0, 0) };
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
    }
}

#[inline(always)]
fn exit(ctx: &TracePointContext) {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(mut rec) = call_of(tid) else { return };
    let _ = SYNC_CALLS.remove(&tid);
    rec.duration_ns = sched::now().saturating_sub(rec.start_mono_ns);
    rec.ret = arg(ctx, ARG0) as i64;
    if let Some(pm) = memory::proc_mem(rec.tgid) {
        counters::add_stat(&mut pm.sync, rec.duration_ns);
    }
    if rec.duration_ns >= config::min_pause_ns() {
        output::emit(rec, DropCause::Sync);
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
    exit(&ctx);
    0
}
