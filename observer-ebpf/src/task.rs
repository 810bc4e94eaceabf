//! Reading `task_struct` fields at offsets supplied by the loader.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use observer_common::TASK_COMM_LEN;

use crate::config;

/// Opaque kernel `struct task_struct *`.
pub type TaskPtr = *const u8;

#[inline(always)]
fn read<T>(task: TaskPtr, off: usize) -> Option<T> {
    if task.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-tolerant path: a bad
    // address yields an error, never a fault. The offset comes from the running kernel's BTF.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(off).cast::<T>()).ok() }
}

/// `task->pid`: the thread id. 0 for the per-CPU idle tasks.
#[inline(always)]
pub fn tid(task: TaskPtr) -> Option<u32> {
    read::<i32>(task, config::task_pid_off()).map(|v| v as u32)
}

/// `task->tgid`: the process id.
#[inline(always)]
pub fn tgid(task: TaskPtr) -> Option<u32> {
    read::<i32>(task, config::task_tgid_off()).map(|v| v as u32)
}

/// `task->comm`.
#[inline(always)]
pub fn comm(task: TaskPtr) -> [u8; TASK_COMM_LEN] {
    read::<[u8; TASK_COMM_LEN]>(task, config::task_comm_off()).unwrap_or([0; TASK_COMM_LEN])
}

/// `task->group_leader->comm`: the process name rather than the thread name.
#[inline(always)]
pub fn leader_comm(task: TaskPtr) -> [u8; TASK_COMM_LEN] {
    match read::<TaskPtr>(task, config::task_group_leader_off()) {
        Some(leader) => comm(leader),
        None => comm(task),
    }
}
