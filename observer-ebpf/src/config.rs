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
/// `task->start_time` (monotonic ns): tells a process from a later one with the same pid.
#[unsafe(no_mangle)]
static TASK_START_TIME_OFF: u64 = 0;
/// `task->se.cfs_rq`, `cfs_rq->rq`, `rq->clock` (0 in all three: read bpf_ktime_get_ns).
#[unsafe(no_mangle)]
static TASK_CFS_RQ_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CFS_RQ_RQ_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_CLOCK_OFF: u64 = 0;
/// `rq->prev_steal_time_rq`: the CPU's hypervisor steal in ns, as the scheduler last folded it
/// in (CONFIG_PARAVIRT_TIME_ACCOUNTING). 0: steal is not charged to processes.
#[unsafe(no_mangle)]
static RQ_STEAL_OFF: u64 = 0;

/// `task->sched_info.last_queued`, `.run_delay` and `.pcount` (CONFIG_SCHED_INFO): the kernel's
/// own run-queue accounting, from which sched_switch measures a thread's wait when it gets the
/// CPU (`sched::switch_in_waits`). 0 in `TASK_RUN_DELAY_OFF`: waits start at sched_wakeup.
#[unsafe(no_mangle)]
static TASK_LAST_QUEUED_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_RUN_DELAY_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_PCOUNT_OFF: u64 = 0;

/// `task->parent` (the tracer while ptraced), `task->cred`, `cred->uid`.
#[unsafe(no_mangle)]
static TASK_PARENT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_CRED_OFF: u64 = 0;
/// `task->jobctl`: its JOBCTL_TRAP_FREEZE bit marks a task in the cgroup v2 freezer's trap.
/// 0: v2 freezes are not recognised.
#[unsafe(no_mangle)]
static TASK_JOBCTL_OFF: u64 = 0;
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
/// `SWITCH_INS`'s size − 1 (a power of two − 1): a tid's entry is `tid & SWITCH_INS_MASK`.
#[unsafe(no_mangle)]
static SWITCH_INS_MASK: u32 = (1 << 15) - 1;
/// `FAULTS`'s size − 1 (a power of two − 1): a tid's entry is `tid & FAULTS_MASK`.
#[unsafe(no_mangle)]
static FAULTS_MASK: u32 = (1 << 15) - 1;

#[inline(always)]
fn get<T: Copy>(v: &T) -> T {
    // SAFETY: `v` is a valid reference to a static; the volatile read stops the compiler from
    // folding the default value in, since the loader rewrites .rodata before loading.
    unsafe { read_volatile(v) }
}

#[inline(always)]
pub fn task_start_time_off() -> usize {
    get(&TASK_START_TIME_OFF) as usize
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
pub fn switch_ins_mask() -> u32 {
    get(&SWITCH_INS_MASK)
}
#[inline(always)]
pub fn faults_mask() -> u32 {
    get(&FAULTS_MASK)
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
pub fn rq_steal_off() -> usize {
    get(&RQ_STEAL_OFF) as usize
}
#[inline(always)]
pub fn task_last_queued_off() -> usize {
    get(&TASK_LAST_QUEUED_OFF) as usize
}
#[inline(always)]
pub fn task_run_delay_off() -> usize {
    get(&TASK_RUN_DELAY_OFF) as usize
}
#[inline(always)]
pub fn task_pcount_off() -> usize {
    get(&TASK_PCOUNT_OFF) as usize
}
#[inline(always)]
pub fn task_parent_off() -> usize {
    get(&TASK_PARENT_OFF) as usize
}
#[inline(always)]
pub fn task_jobctl_off() -> usize {
    get(&TASK_JOBCTL_OFF) as usize
}
#[inline(always)]
pub fn task_cred_off() -> usize {
    get(&TASK_CRED_OFF) as usize
}
#[inline(always)]
pub fn cred_uid_off() -> usize {
    get(&CRED_UID_OFF) as usize
}

/// `struct sock_common` / `inet_connection_sock` / `tcp_sock` / `sk_buff` offsets for the TCP
/// programs (all relative to the `struct sock *`, which begins every one of them), from BTF.
#[unsafe(no_mangle)]
static SK_FAMILY_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_STATE_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_DADDR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_RCV_SADDR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_DPORT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_NUM_OFF: u64 = 0;
/// 0: the kernel has no IPv6 (IPv6 addresses read as zero).
#[unsafe(no_mangle)]
static SK_V6_DADDR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SK_V6_RCV_SADDR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static ICSK_RTO_OFF: u64 = 0;
#[unsafe(no_mangle)]
static ICSK_RETRANSMITS_OFF: u64 = 0;
/// `icsk_ca_state` is a 5-bit bitfield: the byte holding it and the bit shift within it.
#[unsafe(no_mangle)]
static ICSK_CA_STATE_BYTE_OFF: u64 = 0;
#[unsafe(no_mangle)]
static ICSK_CA_STATE_SHIFT: u64 = 0;
#[unsafe(no_mangle)]
static TP_SRTT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TP_TOTAL_RETRANS_OFF: u64 = 0;
/// `sk_buff.cb`, where `struct tcp_skb_cb` lives (its `tcp_gso_segs` at +8).
#[unsafe(no_mangle)]
static SKB_CB_OFF: u64 = 0;
/// Non-zero when tcp_retransmit_skb passes its `err` as a third argument (v6.13+).
#[unsafe(no_mangle)]
static RETRANSMIT_HAS_ERR: u32 = 0;

/// Offsets of the TCP programs, read together.
#[derive(Clone, Copy)]
pub struct SockOffsets {
    pub family: usize,
    pub state: usize,
    pub daddr: usize,
    pub rcv_saddr: usize,
    pub dport: usize,
    pub num: usize,
    pub v6_daddr: usize,
    pub v6_rcv_saddr: usize,
    pub rto: usize,
    pub retransmits: usize,
    pub ca_state_byte: usize,
    pub ca_state_shift: u32,
    pub srtt: usize,
    pub total_retrans: usize,
    pub skb_cb: usize,
}

#[inline(always)]
pub fn sock_offsets() -> SockOffsets {
    SockOffsets {
        family: get(&SK_FAMILY_OFF) as usize,
        state: get(&SK_STATE_OFF) as usize,
        daddr: get(&SK_DADDR_OFF) as usize,
        rcv_saddr: get(&SK_RCV_SADDR_OFF) as usize,
        dport: get(&SK_DPORT_OFF) as usize,
        num: get(&SK_NUM_OFF) as usize,
        v6_daddr: get(&SK_V6_DADDR_OFF) as usize,
        v6_rcv_saddr: get(&SK_V6_RCV_SADDR_OFF) as usize,
        rto: get(&ICSK_RTO_OFF) as usize,
        retransmits: get(&ICSK_RETRANSMITS_OFF) as usize,
        ca_state_byte: get(&ICSK_CA_STATE_BYTE_OFF) as usize,
        ca_state_shift: get(&ICSK_CA_STATE_SHIFT) as u32,
        srtt: get(&TP_SRTT_OFF) as usize,
        total_retrans: get(&TP_TOTAL_RETRANS_OFF) as usize,
        skb_cb: get(&SKB_CB_OFF) as usize,
    }
}

#[inline(always)]
pub fn retransmit_has_err() -> bool {
    get(&RETRANSMIT_HAS_ERR) != 0
}

/// Offsets for the memory and disk programs (0: the group that needs it is not attached).
/// `task->maj_flt`, `pt_regs.ip`, `address_space.host`, `inode.i_ino`, `inode.i_sb`,
/// `super_block.s_dev`, `task->files`, `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`,
/// `file.f_inode`, `request.q`, `request_queue.disk`, `gendisk.major`, `gendisk.first_minor`.
#[unsafe(no_mangle)]
static TASK_MAJ_FLT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_IP_OFF: u64 = 0;
#[unsafe(no_mangle)]
static MAPPING_HOST_OFF: u64 = 0;
#[unsafe(no_mangle)]
static INODE_INO_OFF: u64 = 0;
#[unsafe(no_mangle)]
static INODE_SB_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SB_DEV_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_FILES_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FILES_FDT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FDT_MAX_FDS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FDT_FD_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FILE_INODE_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_Q_OFF: u64 = 0;
#[unsafe(no_mangle)]
static Q_DISK_OFF: u64 = 0;
#[unsafe(no_mangle)]
static DISK_MAJOR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static DISK_FIRST_MINOR_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_CMD_FLAGS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_DATA_LEN_OFF: u64 = 0;

/// `pt_regs.orig_ax`, `.di`, `.si` and `.dx` (x86-64): the syscall a task is in and its first
/// three arguments, read by the hooks that replace the syscall tracepoints (0: not loaded).
#[unsafe(no_mangle)]
static PT_REGS_ORIG_AX_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_DI_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_SI_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_DX_OFF: u64 = 0;

/// Where the saved user registers keep the syscall number and its first three arguments.
#[derive(Clone, Copy)]
pub struct SyscallRegs {
    pub nr: usize,
    pub args: [usize; 3],
}

#[inline(always)]
pub fn syscall_regs() -> SyscallRegs {
    SyscallRegs {
        nr: get(&PT_REGS_ORIG_AX_OFF) as usize,
        args: [get(&PT_REGS_DI_OFF) as usize, get(&PT_REGS_SI_OFF) as usize, get(&PT_REGS_DX_OFF) as usize],
    }
}

#[inline(always)]
pub fn task_maj_flt_off() -> usize {
    get(&TASK_MAJ_FLT_OFF) as usize
}
#[inline(always)]
pub fn pt_regs_ip_off() -> usize {
    get(&PT_REGS_IP_OFF) as usize
}

/// `address_space.host`, then the inode's number and its super block's device.
#[derive(Clone, Copy)]
pub struct InodeOffsets {
    pub mapping_host: usize,
    pub ino: usize,
    pub sb: usize,
    pub sb_dev: usize,
}

#[inline(always)]
pub fn inode_offsets() -> InodeOffsets {
    InodeOffsets {
        mapping_host: get(&MAPPING_HOST_OFF) as usize,
        ino: get(&INODE_INO_OFF) as usize,
        sb: get(&INODE_SB_OFF) as usize,
        sb_dev: get(&SB_DEV_OFF) as usize,
    }
}

/// From a task to the file behind one of its descriptors.
#[derive(Clone, Copy)]
pub struct FdOffsets {
    pub task_files: usize,
    pub files_fdt: usize,
    pub fdt_max_fds: usize,
    pub fdt_fd: usize,
    pub file_inode: usize,
}

#[inline(always)]
pub fn fd_offsets() -> FdOffsets {
    FdOffsets {
        task_files: get(&TASK_FILES_OFF) as usize,
        files_fdt: get(&FILES_FDT_OFF) as usize,
        fdt_max_fds: get(&FDT_MAX_FDS_OFF) as usize,
        fdt_fd: get(&FDT_FD_OFF) as usize,
        file_inode: get(&FILE_INODE_OFF) as usize,
    }
}

/// From a block request to its disk's device number, its operation and its size.
#[derive(Clone, Copy)]
pub struct DiskOffsets {
    pub rq_q: usize,
    pub q_disk: usize,
    pub major: usize,
    pub first_minor: usize,
    pub cmd_flags: usize,
    pub data_len: usize,
}

#[inline(always)]
pub fn disk_offsets() -> DiskOffsets {
    DiskOffsets {
        rq_q: get(&RQ_Q_OFF) as usize,
        q_disk: get(&Q_DISK_OFF) as usize,
        major: get(&DISK_MAJOR_OFF) as usize,
        first_minor: get(&DISK_FIRST_MINOR_OFF) as usize,
        cmd_flags: get(&RQ_CMD_FLAGS_OFF) as usize,
        data_len: get(&RQ_DATA_LEN_OFF) as usize,
    }
}
