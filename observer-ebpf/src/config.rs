//! Load-time globals, set by the loader with `EbpfLoader::set_global` before verification, so
//! the verifier sees them as constants and prunes disabled branches.
use core::ptr::read_volatile;

/// Byte offsets of `task_struct` fields in the running kernel (from its BTF).
#[unsafe(no_mangle)]
static TASK_PID_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_COMM_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_ON_CPU_OFF: u64 = 0;
/// `task->se.cfs_rq`, `cfs_rq->rq`, `rq->clock` (0 in all three: read bpf_ktime_get_ns).
#[unsafe(no_mangle)]
static TASK_CFS_RQ_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CFS_RQ_RQ_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_CLOCK_OFF: u64 = 0;

/// `task->parent` (the tracer while ptraced), `task->cred`, `cred->uid`.
#[unsafe(no_mangle)]
static TASK_PARENT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_CRED_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CRED_UID_OFF: u64 = 0;

/// Episodes at or above this many nanoseconds are streamed; shorter ones are only aggregated.
#[unsafe(no_mangle)]
static MIN_PAUSE_NS: u64 = 5_000_000;
/// Non-zero: only tgids present in `WATCHED` are traced (`--pid`), plus their later children.
#[unsafe(no_mangle)]
static FILTER_PIDS: u32 = 0;
/// The agent's own tgid, never traced (its ring-buffer reads would otherwise feed themselves).
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

#[inline(always)]
fn get<T: Copy>(v: &T) -> T {
    // SAFETY: `v` is a valid reference to a static; the volatile read stops the compiler from
    // folding the default value in, since the loader rewrites .rodata before loading.
    unsafe { read_volatile(v) }
}

#[inline(always)]
pub fn task_pid_off() -> usize {
    get(&TASK_PID_OFF) as usize
}
#[inline(always)]
pub fn task_tgid_off() -> usize {
    get(&TASK_TGID_OFF) as usize
}
#[inline(always)]
pub fn task_comm_off() -> usize {
    get(&TASK_COMM_OFF) as usize
}
#[inline(always)]
pub fn task_group_leader_off() -> usize {
    get(&TASK_GROUP_LEADER_OFF) as usize
}
#[inline(always)]
pub fn task_on_cpu_off() -> usize {
    get(&TASK_ON_CPU_OFF) as usize
}
#[inline(always)]
pub fn min_pause_ns() -> u64 {
    get(&MIN_PAUSE_NS)
}
#[inline(always)]
pub fn filter_pids() -> bool {
    get(&FILTER_PIDS) != 0
}
#[inline(always)]
pub fn self_tgid() -> u32 {
    get(&SELF_TGID)
}
#[inline(always)]
pub fn task_cfs_rq_off() -> usize {
    get(&TASK_CFS_RQ_OFF) as usize
}
#[inline(always)]
pub fn cfs_rq_rq_off() -> usize {
    get(&CFS_RQ_RQ_OFF) as usize
}
#[inline(always)]
pub fn rq_clock_off() -> usize {
    get(&RQ_CLOCK_OFF) as usize
}
#[inline(always)]
pub fn task_parent_off() -> usize {
    get(&TASK_PARENT_OFF) as usize
}
#[inline(always)]
pub fn task_cred_off() -> usize {
    get(&TASK_CRED_OFF) as usize
}
#[inline(always)]
pub fn cred_uid_off() -> usize {
    get(&CRED_UID_OFF) as usize
}
