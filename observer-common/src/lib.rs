//! The one ABI shared by the kernel programs (observer-ebpf) and the agent (observer).
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit padding, and has a
//! `const` size assertion, so a layout change on either side fails to compile instead of
//! silently misreading records. With the `user` feature the agent gets `aya::Pod` impls and a
//! length-checked decoder (`decode`), which never transmutes a byte slice.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod hist;

/// Length of `task_struct.comm` (include/linux/sched.h, v6.18: `TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// Components a thread-level pause episode is made of. Each is measured in the kernel.
/// Values are part of the ABI (indexes into `components_ns` and `ProcStats::components`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// Runnable but not running: after a wakeup, or after involuntary preemption.
    Runq = 0,
    /// Uninterruptible sleep (D state); `BlockReason` says why.
    Blocked = 1,
    /// Stopped or traced (T/t state) until woken by SIGCONT or the tracer.
    Stopped = 2,
}

/// Number of per-thread components carried on every episode.
pub const NUM_COMPONENTS: usize = 3;

impl Component {
    pub const ALL: [Component; NUM_COMPONENTS] =
        [Component::Runq, Component::Blocked, Component::Stopped];

    /// Stable snake_case name used in JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Component::Runq => "runq",
            Component::Blocked => "blocked",
            Component::Stopped => "stopped",
        }
    }
}

/// Index of the whole-episode aggregate (after the components). In the kernel's `ProcStats`
/// it holds only the episodes that are not pure run-queue waits (`ProcStats::episodes` gives
/// all of them).
pub const STAT_EPISODE: usize = NUM_COMPONENTS;
/// Index of the hypervisor steal charged to the process's running threads: one value per
/// context switch of a thread whose CPU accrued steal while it ran (an estimate: the CPU's
/// steal between two switches, all charged to the thread that held it). Not part of any
/// episode.
pub const STAT_STEAL: usize = NUM_COMPONENTS + 1;
/// Number of aggregates per process: one per component, the whole episode, and steal.
pub const NUM_STATS: usize = NUM_COMPONENTS + 2;

/// How an episode began.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpisodeStart {
    /// Switched out while still runnable (preempted, or yielded with work left).
    Preempted = 1,
    /// Woken from a voluntary sleep: only the run-queue wait afterwards is a pause.
    Wakeup = 2,
    /// A newly created task waiting for its first run.
    New = 3,
    /// Switched out in uninterruptible sleep.
    Blocked = 4,
    /// Switched out stopped or traced.
    Stopped = 5,
}

impl EpisodeStart {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Preempted,
            2 => Self::Wakeup,
            3 => Self::New,
            4 => Self::Blocked,
            5 => Self::Stopped,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Preempted => "preempted",
            Self::Wakeup => "wakeup",
            Self::New => "new_task",
            Self::Blocked => "blocked",
            Self::Stopped => "stopped",
        }
    }
}

/// Kind tag: the first `u32` of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Pause = 1,
    /// `StopRecord`: one whole-process stop, from its first thread stopping to its last
    /// thread resuming.
    Stop = 2,
    /// `SignalRecord`: a signal generated for an observed process.
    Signal = 3,
    /// `GcRecord`: one runtime stop-the-world (JVM safepoint, Go STW) of a process.
    Gc = 4,
    /// `ExecRecord`: a process called execve (the agent looks for runtimes to probe).
    Exec = 5,
    /// `ClockAdjRecord`: a syscall that changed the system clock (set, step, slew, frequency).
    ClockAdj = 6,
    /// `RetransmitRecord`: one TCP retransmission (or SYN-ACK retransmission).
    Retransmit = 7,
    /// `SyncRecord`: one call of the fsync family at or above `--min-pause`.
    Sync = 8,
    /// `MemStallRecord`: one direct reclaim or compaction stall at or above `--min-pause`.
    MemStall = 9,
    /// `ExitRecord`: the last thread of a process with kernel aggregates exited.
    Exit = 10,
}

/// Causes whose ring-buffer records can be dropped; indexes into the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// A scheduler pause episode did not fit in the ring buffer.
    Sched = 0,
    /// A per-process aggregate could not be created (map full even after LRU eviction failed).
    SchedAggregate = 1,
    /// A whole-process stop record did not fit in the ring buffer.
    Stop = 2,
    /// A signal record did not fit in the ring buffer.
    Signal = 3,
    /// A process's stop could not be tracked (the `PROC_STOPS` map was full).
    StopTracking = 4,
    /// A stop-the-world record did not fit in the ring buffer.
    Gc = 5,
    /// An exec record did not fit in the ring buffer (a runtime started then may be found late).
    Exec = 6,
    /// A clock-changing syscall record did not fit in the ring buffer, or its entry could not
    /// be kept until the syscall returned (`CLOCK_CALLS` full).
    ClockAdj = 7,
    /// A TCP retransmission record did not fit in the ring buffer.
    Retransmit = 8,
    /// A socket's owner could not be remembered (`SOCK_OWNERS` full even after LRU eviction):
    /// its retransmissions are reported without a process.
    SockOwner = 9,
    /// An fsync-family record did not fit in the ring buffer, or its call could not be kept
    /// until it returned (`SYNC_CALLS` full).
    Sync = 10,
    /// A reclaim or compaction stall record did not fit in the ring buffer.
    MemStall = 11,
    /// A process's memory and disk aggregate could not be created (`PROC_MEM` full even
    /// after LRU eviction failed).
    MemAggregate = 12,
    /// A process's pid was reused before the agent read its aggregate for the last time: the
    /// old process's counts since the previous read (at most one second's) were discarded so
    /// that none of them is charged to the new process.
    PidReuse = 13,
    /// An exit record did not fit in the ring buffer: the agent retires that process at its
    /// next once-a-second read instead.
    Exit = 14,
    /// A block request's issue time was overwritten in the in-flight table by another
    /// request's (five requests in flight in one four-way set: the one issued longest ago
    /// gave way): that request is missing from its disk's latency histogram.
    DiskSample = 15,
}
pub const NUM_DROP_CAUSES: usize = 16;

impl DropCause {
    pub const ALL: [DropCause; NUM_DROP_CAUSES] = [
        DropCause::Sched,
        DropCause::SchedAggregate,
        DropCause::Stop,
        DropCause::Signal,
        DropCause::StopTracking,
        DropCause::Gc,
        DropCause::Exec,
        DropCause::ClockAdj,
        DropCause::Retransmit,
        DropCause::SockOwner,
        DropCause::Sync,
        DropCause::MemStall,
        DropCause::MemAggregate,
        DropCause::PidReuse,
        DropCause::Exit,
        DropCause::DiskSample,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            DropCause::Sched => "sched",
            DropCause::SchedAggregate => "sched_aggregate",
            DropCause::Stop => "stop",
            DropCause::Signal => "signal",
            DropCause::StopTracking => "stop_tracking",
            DropCause::Gc => "gc",
            DropCause::Exec => "exec",
            DropCause::ClockAdj => "clock_adj",
            DropCause::Retransmit => "retransmit",
            DropCause::SockOwner => "sock_owner",
            DropCause::Sync => "sync",
            DropCause::MemStall => "mem_stall",
            DropCause::MemAggregate => "mem_aggregate",
            DropCause::PidReuse => "pid_reuse",
            DropCause::Exit => "exit",
            DropCause::DiskSample => "disk_sample",
        }
    }
}

/// What kept a stopped process stopped, from the state its threads left the CPU in
/// (include/linux/sched.h, v6.18).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Job-control stop (`__TASK_STOPPED`): SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU.
    Signal = 1,
    /// ptrace stop (`__TASK_TRACED`): a debugger or profiler holds the thread.
    Ptrace = 2,
    /// cgroup v1 freezer (`TASK_FROZEN`).
    Freezer = 3,
}

impl StopKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Signal,
            2 => Self::Ptrace,
            3 => Self::Freezer,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Ptrace => "ptrace",
            Self::Freezer => "freezer",
        }
    }
}

/// A task as seen by the kernel at one moment: who sent a signal, who resumed a process.
/// `tid == 0` means unknown (e.g. the stop began before pausewatch attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskId {
    pub tid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub _pad0: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<TaskId>() == 32);

/// One whole-process stop: from the first of its threads leaving the CPU stopped, traced or
/// frozen, to the last of them being woken. One record per process, however many threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRecord {
    /// `RecordKind::Stop`.
    pub kind: u32,
    /// `StopKind` of the first thread that stopped.
    pub stop_kind: u32,
    pub tgid: u32,
    /// Threads that stopped in this episode.
    pub threads: u32,
    /// CLOCK_MONOTONIC when the first thread stopped.
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// The stop signal that preceded the stop (0 when none was seen).
    pub stop_sig: u32,
    pub _pad0: u32,
    /// Signal stops: the sender of `stop_sig`. ptrace stops: the tracer holding the process.
    /// (Who resumed it is joined in userspace from the SIGCONT/SIGKILL signal records: the
    /// wakeup often runs on another CPU, in whatever context was current there.)
    pub stopped_by: TaskId,
    /// Process name (thread group leader's comm).
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<StopRecord>() == 88);

/// A signal generated for a thread of an observed process (tracepoint signal_generate,
/// include/trace/events/signal.h, v6.18), in the sender's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalRecord {
    /// `RecordKind::Signal`.
    pub kind: u32,
    pub sig: u32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lost info.
    pub result: u32,
    /// Non-zero when sent to the whole thread group (kill) rather than one thread (tgkill).
    pub group: u32,
    /// CLOCK_MONOTONIC.
    pub ts_mono_ns: u64,
    pub target_tid: u32,
    pub target_tgid: u32,
    pub target_comm: [u8; TASK_COMM_LEN],
    pub sender: TaskId,
}
const _: () = assert!(core::mem::size_of::<SignalRecord>() == 80);

/// Kernel-private state of one process's stop, keyed by tgid in `PROC_STOPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcStop {
    /// Episode clock of the first thread's stop; 0 while not stopped.
    pub start_ns: u64,
    /// Threads currently stopped (atomic).
    pub stopped_threads: u64,
    /// Threads that ever stopped (atomic); minus `threads_at_open`: threads in this stop.
    pub threads_total: u64,
    pub threads_at_open: u64,
    /// `StopKind` of the first thread.
    pub stop_kind: u32,
    /// Last stop signal generated for the process, and its sender (or, for a ptrace stop, the
    /// tracer).
    pub stop_sig: u32,
    pub stopped_by: TaskId,
}
const _: () = assert!(core::mem::size_of::<ProcStop>() == 72);

/// A language runtime whose stop-the-world pauses are traced through user-space probes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// HotSpot JVM: hotspot/hs_private USDT probes in libjvm.so.
    Jvm = 1,
    /// Go: entry uprobes on runtime.stopTheWorldWithSema / startTheWorldWithSema.
    Go = 2,
}

impl Runtime {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Jvm,
            2 => Self::Go,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Jvm => "jvm",
            Self::Go => "go",
        }
    }
}

/// `GcRecord::flags`: the stop-the-world contained a collection (JVM gc__begin/gc__end seen;
/// always set for Go, whose stops the runtime makes for GC phases and a few other reasons).
pub const GC_FLAG_COLLECTION: u32 = 1;
/// `GcRecord::flags`: the collection was a full one (JVM gc__begin's argument).
pub const GC_FLAG_FULL: u32 = 2;
/// `GcRecord::flags`: `reason` is valid (Go 1.21+ passes a stwReason to stopTheWorldWithSema).
pub const GC_FLAG_REASON: u32 = 4;

/// Length of the VM operation name carried on a `GcRecord`.
pub const GC_OP_LEN: usize = 32;

/// One stop-the-world of a process by its runtime: a JVM safepoint (from hs_private
/// safepoint__begin to safepoint__end, which brackets the JVM's own -Xlog:safepoint "Total"),
/// or a Go STW (stopTheWorldWithSema entry to startTheWorldWithSema entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcRecord {
    /// `RecordKind::Gc`.
    pub kind: u32,
    /// `Runtime`.
    pub runtime: u32,
    pub tgid: u32,
    /// The runtime thread that stopped the world (JVM: the VM thread).
    pub tid: u32,
    /// CLOCK_MONOTONIC when the stop began.
    pub start_mono_ns: u64,
    /// Whole stop-the-world, from the request to stop to the restart.
    pub duration_ns: u64,
    /// JVM: the collection inside the safepoint (gc__begin to gc__end), matching -Xlog:gc's
    /// "Pause" time; 0 for safepoints without a collection. Go: equal to `duration_ns`.
    pub gc_ns: u64,
    /// JVM: time to safepoint, from the start of the stop until every Java thread had stopped
    /// (-Xlog:safepoint's "Reaching safepoint"); 0 when not measured.
    pub sync_ns: u64,
    /// Go's stwReason (valid with `GC_FLAG_REASON`).
    pub reason: u32,
    /// `GC_FLAG_*`.
    pub flags: u32,
    /// JVM: the VM operation that required the safepoint (e.g. "G1CollectFull"), NUL-padded.
    pub operation: [u8; GC_OP_LEN],
    /// Process name (thread group leader's comm).
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<GcRecord>() == 104);

/// Kernel-private state of one process's stop-the-world in progress, keyed by tgid in
/// `GC_OPEN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GcState {
    pub start_ns: u64,
    /// When the collection inside began (0: none yet).
    pub gc_start_ns: u64,
    pub gc_ns: u64,
    /// Time to safepoint (0: not yet synchronized, or not measured).
    pub sync_ns: u64,
    pub tid: u32,
    pub flags: u32,
    pub reason: u32,
    pub _pad0: u32,
    pub operation: [u8; GC_OP_LEN],
}
const _: () = assert!(core::mem::size_of::<GcState>() == 80);

/// A process replaced its program image (tracepoint sched_process_exec).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    /// `RecordKind::Exec`.
    pub kind: u32,
    pub tgid: u32,
    /// CLOCK_MONOTONIC.
    pub ts_mono_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ExecRecord>() == 32);

/// The last thread of a process that has kernel aggregates exited (`sched_process_exit` with
/// `group_dead`, Linux 6.16+). It reaches the agent in ring order, before any record of a later
/// process given the same pid, so nothing of that one is charged to this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// `RecordKind::Exit`.
    pub kind: u32,
    pub tgid: u32,
    /// CLOCK_MONOTONIC.
    pub ts_mono_ns: u64,
    /// `ProcStats::start_ns` of the process.
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 24);

/// The syscall behind a `ClockAdjRecord`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSyscall {
    ClockSettime = 1,
    Settimeofday = 2,
    Adjtimex = 3,
    ClockAdjtime = 4,
}

impl ClockSyscall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ClockSettime,
            2 => Self::Settimeofday,
            3 => Self::Adjtimex,
            4 => Self::ClockAdjtime,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::ClockSettime => "clock_settime",
            Self::Settimeofday => "settimeofday",
            Self::Adjtimex => "adjtimex",
            Self::ClockAdjtime => "clock_adjtime",
        }
    }
}

/// `ClockAdjRecord::flags`: `set_sec`/`set_nsec` hold a requested time (clock_settime,
/// settimeofday with a timeval) or, with `ADJ_SETOFFSET`, a requested offset.
pub const CLOCK_FLAG_TIME: u32 = 1;
/// `ClockAdjRecord::flags`: the `struct __kernel_timex` fields are valid (adjtimex,
/// clock_adjtime).
pub const CLOCK_FLAG_TIMEX: u32 = 2;
/// `ClockAdjRecord::flags`: the user memory could not be read; only the syscall is known.
pub const CLOCK_FLAG_UNREADABLE: u32 = 4;

/// A syscall that changes the system clock, recorded at entry (the request, read from the
/// caller's memory) and streamed at exit (with the result). Read-only adjtimex calls (modes 0
/// or ADJ_OFFSET_SS_READ), which NTP daemons make constantly, are never recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockAdjRecord {
    /// `RecordKind::ClockAdj`.
    pub kind: u32,
    /// `ClockSyscall`.
    pub syscall: u32,
    /// clock_settime / clock_adjtime: the clock id (0 = CLOCK_REALTIME); -1 otherwise.
    pub clockid: i32,
    /// `CLOCK_FLAG_*`.
    pub flags: u32,
    /// CLOCK_MONOTONIC at syscall entry.
    pub ts_mono_ns: u64,
    /// Syscall return value (negative errno on failure; adjtimex returns the clock state).
    pub ret: i64,
    /// `struct __kernel_timex.modes` (ADJ_* bits).
    pub modes: u32,
    /// timex.status as requested with ADJ_STATUS.
    pub status: i32,
    /// timex.offset (µs, or ns with ADJ_NANO): the slew requested with ADJ_OFFSET.
    pub offset: i64,
    /// timex.freq: frequency offset in ppm with a 16-bit fraction.
    pub freq: i64,
    /// Requested time (or, with ADJ_SETOFFSET, offset): seconds and nanoseconds.
    pub set_sec: i64,
    pub set_nsec: i64,
    /// timex.maxerror / esterror (µs) as requested with ADJ_MAXERROR / ADJ_ESTERROR.
    pub maxerror: i64,
    pub esterror: i64,
    /// The calling thread.
    pub by: TaskId,
}
const _: () = assert!(core::mem::size_of::<ClockAdjRecord>() == 120);

impl ClockAdjRecord {
    /// A call by `by` at `ts_mono_ns`, before its request has been read or it has returned.
    pub const fn call(syscall: ClockSyscall, clockid: i32, ts_mono_ns: u64, by: TaskId) -> Self {
        Self {
            kind: RecordKind::ClockAdj as u32,
            syscall: syscall as u32,
            clockid,
            flags: 0,
            ts_mono_ns,
            ret: 0,
            modes: 0,
            status: 0,
            offset: 0,
            freq: 0,
            set_sec: 0,
            set_nsec: 0,
            maxerror: 0,
            esterror: 0,
            by,
        }
    }
}

/// `RetransmitRecord::ca_state` when it could not be read.
pub const CA_STATE_UNKNOWN: u8 = 0xff;

/// One TCP retransmission (tcp:tcp_retransmit_skb, include/trace/events/tcp.h v6.18) or SYN-ACK
/// retransmission (tcp:tcp_retransmit_synack). These fire in softirq or timer context: the
/// owning process comes from `SOCK_OWNERS`, filled in process context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitRecord {
    /// `RecordKind::Retransmit`.
    pub kind: u32,
    /// Owning process and the thread that last sent on (or connected, listened with) the
    /// socket; 0 when unknown.
    pub tgid: u32,
    pub tid: u32,
    /// The tracepoint's `err`: 0 when the segment went out (only then does the kernel's
    /// TcpRetransSegs count it); negative errno otherwise.
    pub err: i32,
    /// CLOCK_MONOTONIC.
    pub ts_mono_ns: u64,
    /// Kernel socket address: a connection key inside the agent, never exported.
    pub sock: u64,
    /// The socket's retransmission timeout (icsk_rto, in jiffies: the agent converts it with
    /// the kernel's HZ) and smoothed RTT (srtt_us >> 3, µs).
    pub rto_jiffies: u32,
    pub srtt_us: u32,
    /// tcp_sock.total_retrans: segments this connection has retransmitted so far.
    pub total_retrans: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Segments in the retransmitted skb (tcp_skb_pcount), as TcpRetransSegs counts them.
    pub segs: u16,
    /// TCP state (TCP_ESTABLISHED = 1, ...).
    pub state: u8,
    /// Congestion-avoidance state: 0 open, 1 disorder, 2 cwr, 3 recovery (fast retransmit),
    /// 4 loss (retransmission timeout); `CA_STATE_UNKNOWN`.
    pub ca_state: u8,
    /// icsk_retransmits: consecutive timeouts without progress.
    pub retransmits: u8,
    /// Non-zero for a SYN-ACK retransmission of a listener.
    pub synack: u8,
    /// IPv4 addresses in the first 4 bytes; IPv6 in all 16. Network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<RetransmitRecord>() == 104);

/// Who owns a socket, keyed by the kernel socket address in `SOCK_OWNERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOwner {
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SockOwner>() == 24);

/// Why a thread was in uninterruptible sleep: the activity bracket it was in when it left the
/// CPU (innermost first: reclaim or compaction, then a page fault, then an fsync-family call),
/// or, outside any bracket, its kernel stack. Values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockReason {
    /// No bracket and no stack (the stack map was full, or the raw_tp fallback is in use).
    Unknown = 0,
    /// A page fault on a file mapping (filemap_fault ran): reading the page from disk.
    MajorFault = 1,
    /// A page fault on anonymous memory: reading the page back from swap.
    Swapin = 2,
    /// Inside fsync, fdatasync, sync_file_range, msync(MS_SYNC), sync or syncfs.
    Sync = 3,
    /// Direct reclaim (the allocation had to free memory itself).
    Reclaim = 4,
    /// Reclaim to stay under a memory cgroup's limit.
    MemcgReclaim = 5,
    /// Memory compaction.
    Compaction = 6,
    /// Outside any bracket: the kernel stack (`stack_id`) says where it slept.
    Stack = 7,
}

pub const NUM_BLOCK_REASONS: usize = 8;

impl BlockReason {
    pub const ALL: [BlockReason; NUM_BLOCK_REASONS] = [
        BlockReason::Unknown,
        BlockReason::MajorFault,
        BlockReason::Swapin,
        BlockReason::Sync,
        BlockReason::Reclaim,
        BlockReason::MemcgReclaim,
        BlockReason::Compaction,
        BlockReason::Stack,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::MajorFault,
            2 => Self::Swapin,
            3 => Self::Sync,
            4 => Self::Reclaim,
            5 => Self::MemcgReclaim,
            6 => Self::Compaction,
            7 => Self::Stack,
            _ => return None,
        })
    }

    /// Stable snake_case name used in JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::MajorFault => "major_fault",
            Self::Swapin => "swapin",
            Self::Sync => "fsync",
            Self::Reclaim => "direct_reclaim",
            Self::MemcgReclaim => "memcg_reclaim",
            Self::Compaction => "compaction",
            Self::Stack => "kernel",
        }
    }
}

/// `FaultState::flags`: the entry has been initialised (`majflt_seen` holds a real reading).
pub const FAULT_INIT: u32 = 1;
/// `FaultState::flags`: the latest fault was on a file mapping (mm_filemap_fault fired in it).
pub const FAULT_FILE: u32 = 2;
/// `FaultState::flags`: the latest fault came from user mode (its ip is the user ip, which the
/// task's saved user registers still show while the fault is being handled).
pub const FAULT_USER: u32 = 4;

/// A thread's latest page fault and its major-fault baseline: an entry of the `FAULTS` array,
/// indexed by tid (`tid & mask`, sized like `SWITCH_INS` by `switch_ins_entries`). Every
/// fault on the host writes one, so it is found by an inlined array lookup rather than by
/// task storage's two helper calls, which were nearly all of `page_fault_user`'s cost.
///
/// Only programs running as the thread write its entry (its faults, its exit); its switch-out
/// in D reads it on the same CPU. Threads whose tids are equal modulo the array's size share an
/// entry (on hosts whose `pid_max` is above `SWITCH_INS_MAX`): the one that last faulted holds
/// it, and the other starts again from its next fault, its previous fault not counted as major
/// even if it was. Kernel-private, kept here so its size is checked once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultState {
    /// Whose entry this is (0: nobody's; a thread's exit clears it).
    pub tid: u32,
    /// `FAULT_*`.
    pub flags: u32,
    /// Instruction pointer and address of the latest fault.
    pub ip: u64,
    pub addr: u64,
    /// File faults: inode number, page offset and device (mm_filemap_fault).
    pub ino: u64,
    pub pgoff: u64,
    /// `task->maj_flt` at the latest fault: a change at the next one (or at exit) means that
    /// fault was major.
    pub majflt_seen: u64,
    pub dev: u32,
    /// `FaultState::check_of(tid, majflt_seen)`, written last: an entry two CPUs wrote at once
    /// for two threads sharing it (whose fields may then be mixed) fails it and is taken
    /// afresh, so one thread's baseline never counts another's faults.
    pub check: u32,
    /// To 64 bytes: with the array mmapable (values from a page boundary), one cache line.
    pub _pad: u64,
}
const _: () = assert!(core::mem::size_of::<FaultState>() == 64);

impl FaultState {
    /// The check word of an entry of thread `tid` with baseline `majflt_seen`.
    #[inline(always)]
    pub const fn check_of(tid: u32, majflt_seen: u64) -> u32 {
        tid_entry_check(tid, majflt_seen)
    }
}

/// The check word of an entry of an array indexed by tid (`SwitchIn`, `FaultState`) that
/// belongs to thread `tid` and holds `value`, the field two threads sharing the entry would
/// mix with the tid. Not zero for a zeroed entry, so a fresh array holds nobody's entries.
#[inline(always)]
pub const fn tid_entry_check(tid: u32, value: u64) -> u32 {
    tid ^ (value as u32) ^ ((value >> 32) as u32) ^ 0x9e37_79b9
}

/// Kernel-private per-thread brackets, in BPF task storage (`ACTIVITY`): the reclaim or
/// compaction and the fsync-family call in progress. Looked up only by those hooks and by a
/// switch-out in D, never on every fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Activity {
    /// Start of the reclaim or compaction in progress (episode clock: bpf_ktime_get_ns).
    pub mem_start_ns: u64,
    /// `BlockReason` of the reclaim or compaction in progress; 0 when none.
    pub mem_reason: u32,
    /// The fsync-family call in progress, timed from ext4's tracepoints: its `SyncSyscall`,
    /// 0 when none. In the first cache line, with the other brackets a D sleep is checked
    /// against; the call's details follow.
    pub sync_call: u32,
    /// CLOCK_MONOTONIC at the call's entry.
    pub sync_start_ns: u64,
    /// As `SyncRecord::arg`, `ino`, `dev` and `flags`.
    pub sync_arg: u64,
    pub sync_ino: u64,
    pub sync_dev: u32,
    pub sync_flags: u32,
}
const _: () = assert!(core::mem::size_of::<Activity>() == 48);

/// The fsync-family syscall behind a `SyncRecord`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSyscall {
    Fsync = 1,
    Fdatasync = 2,
    SyncFileRange = 3,
    Msync = 4,
    Sync = 5,
    Syncfs = 6,
}

impl SyncSyscall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Fsync,
            2 => Self::Fdatasync,
            3 => Self::SyncFileRange,
            4 => Self::Msync,
            5 => Self::Sync,
            6 => Self::Syncfs,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::Fdatasync => "fdatasync",
            Self::SyncFileRange => "sync_file_range",
            Self::Msync => "msync",
            Self::Sync => "sync",
            Self::Syncfs => "syncfs",
        }
    }

    /// Whether `arg` is a file descriptor.
    pub const fn takes_fd(self) -> bool {
        matches!(
            self,
            Self::Fsync | Self::Fdatasync | Self::SyncFileRange | Self::Syncfs
        )
    }
}

/// One call of the fsync family, kept per thread from entry (`SYNC_CALLS`) and streamed at
/// exit when it lasted at least `--min-pause`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRecord {
    /// `RecordKind::Sync`.
    pub kind: u32,
    /// `SyncSyscall`.
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC at entry.
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// Return value (negative errno on failure).
    pub ret: i64,
    /// The fd (msync: the start address; sync: 0; `SYNC_NO_FD`: a sync with no descriptor,
    /// such as io_uring's, seen by ext4's tracepoints).
    pub arg: u64,
    /// The file's inode number and device (kernel dev_t), read from the fd at entry; 0 when
    /// unknown (msync, sync, a bad fd).
    pub ino: u64,
    pub dev: u32,
    /// msync / sync_file_range flags.
    pub flags: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SyncRecord>() == 80);

/// `SyncRecord::arg` of a sync that named no descriptor.
pub const SYNC_NO_FD: u64 = u64::MAX;

/// One direct reclaim, memcg reclaim or compaction, charged to the thread that stalled in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStallRecord {
    /// `RecordKind::MemStall`.
    pub kind: u32,
    /// `BlockReason::{Reclaim, MemcgReclaim, Compaction}`.
    pub reason: u32,
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC at the begin tracepoint.
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// Reclaim: pages reclaimed. Compaction: the kernel's compact_result.
    pub result: u64,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<MemStallRecord>() == 56);

/// Count, total and maximum of one kind of stall.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StallStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// In-kernel per-process memory and disk aggregate, keyed by tgid in the `PROC_MEM` LRU hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcMem {
    /// Major faults (the kernel's own `maj_flt` accounting) by what the fault was on.
    pub major_file: u64,
    pub major_swap: u64,
    /// Blocked phases of episodes by `BlockReason`: the time each kept a thread off the CPU.
    pub blocked: [StallStats; NUM_BLOCK_REASONS],
    /// Direct reclaim, memcg reclaim, compaction (indexed by `BlockReason - Reclaim`), whole
    /// duration from begin to end tracepoint, on or off the CPU.
    pub mem_stalls: [StallStats; 3],
    /// Every fsync-family call, whole duration.
    pub sync: ComponentStats,
}

impl ProcMem {
    pub const ZERO: Self = Self {
        major_file: 0,
        major_swap: 0,
        blocked: [StallStats {
            count: 0,
            total_ns: 0,
            max_ns: 0,
        }; NUM_BLOCK_REASONS],
        mem_stalls: [StallStats {
            count: 0,
            total_ns: 0,
            max_ns: 0,
        }; 3],
        sync: ComponentStats::ZERO,
    };
}

/// One streamed pause episode of one thread (episodes at or above `--min-pause`).
///
/// `components_ns` sum exactly to `duration_ns`: the kernel closes a phase where the next begins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseRecord {
    /// `RecordKind::Pause`.
    pub kind: u32,
    /// CPU the thread resumed on.
    pub cpu: u32,
    pub tid: u32,
    pub tgid: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) when the episode began.
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// Indexed by `Component`.
    pub components_ns: [u64; NUM_COMPONENTS],
    /// CPU the thread last left (differs from `cpu` when it migrated while waiting).
    pub prev_cpu: u32,
    /// `EpisodeStart`.
    pub start_reason: u32,
    /// For `Preempted`: the thread that took the CPU (0 when unknown).
    pub preempted_by_tid: u32,
    /// Why the `Blocked` component happened: a `BlockReason` (0 when there was none).
    pub block_reason: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub preempted_by_comm: [u8; TASK_COMM_LEN],
    /// `BlockReason::Stack`: the kernel stack, in `BLOCK_STACKS` (with `STACK_ID_RING`) or
    /// `STACKS` (negative: not captured).
    pub stack_id: i32,
    /// Faults: the file's device (kernel dev_t: major << 20 | minor; 0 for anonymous memory).
    /// fsync family: the file's device.
    pub block_dev: u32,
    /// Faults: the faulting address. fsync family: the fd (msync: the address).
    pub block_addr: u64,
    /// Faults and fsync family: the file's inode number (0: anonymous memory, or unknown).
    pub block_ino: u64,
    /// File faults: the page offset in the file.
    pub block_pgoff: u64,
}
const _: () = assert!(core::mem::size_of::<PauseRecord>() == 136);

/// Total, max and a log-linear histogram (see `hist`) of one component for one process.
///
/// No count is kept: every value lands in exactly one bucket (values above the last bucket's
/// edge are clamped into it), so the count is the histogram's sum (`count`). Keeping it
/// beside the histogram cost the kernel one more locked add per value, on every context
/// switch that ends a wait.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentStats {
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<ComponentStats>() == 8 * (2 + hist::BUCKETS));

impl ComponentStats {
    pub const ZERO: Self = Self {
        total_ns: 0,
        max_ns: 0,
        hist: [0; hist::BUCKETS],
    };

    /// How many values were added: the histogram's sum. A read that races the kernel's
    /// updates can see a value in the total but not yet in its bucket, or the reverse.
    pub fn count(&self) -> u64 {
        self.hist.iter().sum()
    }
}

/// What a block request did, as the kernel's I/O statistics group it
/// (`/sys/block/<dev>/stat`, Documentation/block/stat.rst), with cache flushes apart: the
/// kernel counts the flush requests a device executes (`flush_rq`, issued for one or more
/// waiting flushes) in its own flush fields, not as the writes that asked for them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskOp {
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
}

impl DiskOp {
    pub const ALL: [DiskOp; 4] = [DiskOp::Read, DiskOp::Write, DiskOp::Flush, DiskOp::Discard];

    /// The group of a request whose `cmd_flags` are `flags` (include/linux/blk_types.h,
    /// v6.18: the operation is the low `REQ_OP_BITS` (8) bits; `REQ_OP_FLUSH` 2,
    /// `REQ_OP_DISCARD` 3; an odd operation writes, as `op_is_write` says, and
    /// `op_stat_group` counts every other as a read).
    pub const fn of_cmd_flags(flags: u32) -> Self {
        match flags & 0xff {
            2 => Self::Flush,
            3 => Self::Discard,
            op if op & 1 != 0 => Self::Write,
            _ => Self::Read,
        }
    }

    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Flush,
            3 => Self::Discard,
            _ => return None,
        })
    }

    /// Stable snake_case name used in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Discard => "discard",
        }
    }
}

/// Key of the kernel's per-disk latency map: the whole disk's dev_t (major << 20 |
/// first_minor) and the `DiskOp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskKey {
    pub dev: u32,
    pub op: u32,
}
const _: () = assert!(core::mem::size_of::<DiskKey>() == 8);

/// Latency of one disk's requests of one `DiskOp`, from issue to the driver to completion, and
/// the bytes they carried (each request's size at its first completion).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStats {
    pub latency: ComponentStats,
    pub bytes: u64,
}
const _: () =
    assert!(core::mem::size_of::<DiskStats>() == core::mem::size_of::<ComponentStats>() + 8);

impl DiskStats {
    pub const ZERO: Self = Self {
        latency: ComponentStats::ZERO,
        bytes: 0,
    };
}

/// A block request in flight: its key (nonzero; 0: a free way) and issue time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub rq: u64,
    pub issued_ns: u64,
}

/// Ways of an in-flight set: four 16-byte entries, one cache line.
pub const IN_FLIGHT_WAYS: usize = 4;

/// A set of the kernel's in-flight request table (observer-ebpf's disk.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightSet {
    pub ways: [InFlight; IN_FLIGHT_WAYS],
}
const _: () = assert!(core::mem::size_of::<InFlightSet>() == 64);

impl InFlightSet {
    /// The way request `key` takes: its own (a request issued again after a requeue), else
    /// the first free one, else the one issued longest ago, whose request is then lost
    /// (`true`).
    #[inline(always)]
    pub fn way_for(&self, key: u64) -> (usize, bool) {
        let (mut free, mut oldest, mut oldest_ns) = (IN_FLIGHT_WAYS, 0, u64::MAX);
        for (i, w) in self.ways.iter().enumerate() {
            if w.rq == key {
                return (i, false);
            }
            if w.rq == 0 {
                if free == IN_FLIGHT_WAYS {
                    free = i;
                }
            } else if w.issued_ns < oldest_ns {
                (oldest, oldest_ns) = (i, w.issued_ns);
            }
        }
        if free < IN_FLIGHT_WAYS {
            (free, false)
        } else {
            (oldest, true)
        }
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::{InFlight, InFlightSet};

    #[test]
    fn a_request_takes_its_own_way_then_a_free_one_then_the_oldest() {
        let held = |rq, issued_ns| InFlight { rq, issued_ns };
        let mut set = InFlightSet::default();
        assert_eq!(set.way_for(7), (0, false));
        set.ways[0] = held(7, 50);
        set.ways[2] = held(9, 10);
        // Issued again after a requeue: the same way.
        assert_eq!(set.way_for(7), (0, false));
        assert_eq!(set.way_for(9), (2, false));
        // A new request: the first free way.
        assert_eq!(set.way_for(11), (1, false));
        set.ways[1] = held(11, 30);
        set.ways[3] = held(12, 40);
        // Full: the way issued longest ago, and its request is lost.
        assert_eq!(set.way_for(13), (2, true));
        assert_eq!(set.way_for(12), (3, false));
    }
}

#[cfg(test)]
mod disk_op_tests {
    use super::DiskOp;

    /// Grouped as the kernel's `op_stat_group` groups them (block/blk.h, v6.18), with
    /// `REQ_OP_FLUSH` apart; the request flags above the operation's 8 bits do not matter.
    #[test]
    fn operations_group_as_the_kernels_io_statistics() {
        // Request flags (`enum req_flag_bits`) start at bit 8, above the operation.
        let (low, mid, top) = (1 << 8, 1 << 17, 1 << 31);
        for (flags, op) in [
            (0, DiskOp::Read),              // REQ_OP_READ
            (1 | low | top, DiskOp::Write), // REQ_OP_WRITE
            (2 | mid, DiskOp::Flush), // REQ_OP_FLUSH, with REQ_PREFLUSH as blk_kick_flush sets it
            (3, DiskOp::Discard),     // REQ_OP_DISCARD
            (5, DiskOp::Write),       // REQ_OP_SECURE_ERASE
            (7, DiskOp::Write),       // REQ_OP_ZONE_APPEND
            (9, DiskOp::Write),       // REQ_OP_WRITE_ZEROES
            (10, DiskOp::Read),       // REQ_OP_ZONE_OPEN
            (34, DiskOp::Read),       // REQ_OP_DRV_IN
            (35, DiskOp::Write),      // REQ_OP_DRV_OUT
        ] {
            assert_eq!(DiskOp::of_cmd_flags(flags), op, "{flags:#x}");
        }
        for op in DiskOp::ALL {
            assert_eq!(DiskOp::from_u32(op as u32), Some(op));
        }
        assert_eq!(DiskOp::from_u32(4), None);
    }
}

/// In-kernel per-process aggregate: a slot of the `PROC_STATS` array, found through the
/// `PROC_SLOTS` hash (tgid → slot) and cached in each thread's task storage, so that a context
/// switch reaches its process's aggregate by index instead of by a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// The process whose slot this is; 0 while the slot is free.
    pub tgid: u32,
    pub _pad0: u32,
    /// Start time of the thread group leader (`task->group_leader->start_time`, monotonic ns):
    /// which process this entry belongs to. A pid reused before the agent retired the entry
    /// shows up as a different start time (0: unreadable).
    pub start_ns: u64,
    /// Episodes of this process that were at or above the threshold but did not fit in the ring.
    pub dropped_records: u64,
    /// Name of the thread group leader when the entry was created or last streamed an episode.
    pub comm: [u8; TASK_COMM_LEN],
    /// Indexed by `Component`, then `STAT_EPISODE` and `STAT_STEAL`. After the identity
    /// fields, which every switch that ends an episode reads to validate the slot, so that they
    /// share a cache line with the run-queue component's counters.
    ///
    /// An episode that is a pure run-queue wait (the common case on a busy host) is counted
    /// once, in `stats[Runq]`: it *is* its run-queue component. Any other episode is counted
    /// per component, in `stats[STAT_EPISODE]` whole, and its run-queue part again in
    /// `mixed_runq`. That spares the hot path two cache lines and two atomic adds per
    /// episode; `episodes()` puts the whole-episode aggregate back together exactly.
    pub stats: [ComponentStats; NUM_STATS],
    /// The run-queue components of the episodes in `stats[STAT_EPISODE]`.
    pub mixed_runq: ComponentStats,
    /// To a whole number of cache lines: `PROC_STATS` is mmapable, so the kernel puts its
    /// first value on a page boundary, and every slot then starts a cache line. The identity
    /// fields and the run-queue total and maximum a switch-in updates are then one line (and
    /// the histogram bucket another, or the same for bucket 0) in every slot. Without both, a
    /// slot started at any multiple of 8 bytes into a line (the array's values begin 56 bytes
    /// into one on Linux 6.18, and the size was 24 bytes over 49 lines), and those bytes
    /// straddled two lines in 7 slots of 8.
    pub _pad1: [u64; 3],
}
const _: () = assert!(
    core::mem::size_of::<ProcStats>()
        == (NUM_STATS + 1) * core::mem::size_of::<ComponentStats>() + 64
        && core::mem::size_of::<ProcStats>().is_multiple_of(64)
        && core::mem::offset_of!(ProcStats, stats) + 2 * 8 <= 64
);

impl ProcStats {
    /// An empty aggregate (too large for the BPF stack: the kernel programs copy theirs from a
    /// zeroed per-CPU map instead).
    pub const ZERO: Self = Self {
        stats: [ComponentStats::ZERO; NUM_STATS],
        mixed_runq: ComponentStats::ZERO,
        dropped_records: 0,
        comm: [0; TASK_COMM_LEN],
        start_ns: 0,
        tgid: 0,
        _pad0: 0,
        _pad1: [0; 3],
    };

    /// Every episode of the process: the pure run-queue waits (the run-queue component's
    /// values less those of mixed episodes) and the mixed episodes. Exact, since each side
    /// holds the same values it was given; a read that races the kernel's updates can see one
    /// side ahead by an episode, which saturates rather than wraps and is gone by the next read.
    /// The maximum is exact too: a mixed episode's run-queue part is never longer than it.
    pub fn episodes(&self) -> ComponentStats {
        let (runq, mixed, mixed_runq) = (
            &self.stats[Component::Runq as usize],
            &self.stats[STAT_EPISODE],
            &self.mixed_runq,
        );
        let mut all = ComponentStats {
            total_ns: mixed.total_ns + runq.total_ns.saturating_sub(mixed_runq.total_ns),
            max_ns: mixed.max_ns.max(runq.max_ns),
            hist: mixed.hist,
        };
        for (b, h) in all.hist.iter_mut().enumerate() {
            *h += runq.hist[b].saturating_sub(mixed_runq.hist[b]);
        }
        all
    }
}

/// Frames kept of a blocked thread's kernel stack, innermost first (`BlockStack`).
pub const BLOCK_STACK_DEPTH: usize = 32;
/// Captures each CPU keeps in `BLOCK_STACKS` (a power of two): capture `n` is entry
/// `n % BLOCK_STACK_RING` of the CPU that wrote the record, until overwritten.
pub const BLOCK_STACK_RING: u32 = 128;
/// `PauseRecord::stack_id` bit marking a capture in `BLOCK_STACKS`, the bits below it its
/// sequence number; without it, the id is one in the `STACKS` stack-trace map.
pub const STACK_ID_RING: i32 = 1 << 30;

/// One kernel stack in the `BLOCK_STACKS` per-CPU ring: the stack a blocked thread slept on,
/// captured as it got the CPU back, for a streamed episode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStack {
    /// The capture's sequence number on its CPU, below `STACK_ID_RING` (says which of the
    /// captures that share this entry wrote it).
    pub seq: u32,
    /// Bytes of `ips` written.
    pub len: u32,
    pub ips: [u64; BLOCK_STACK_DEPTH],
}
const _: () = assert!(core::mem::size_of::<BlockStack>() == 8 + 8 * BLOCK_STACK_DEPTH);

impl BlockStack {
    /// The frames captured, innermost first.
    pub fn frames(&self) -> &[u64] {
        &self.ips[..(self.len as usize / 8).min(BLOCK_STACK_DEPTH)]
    }
}

/// Per CPU, in the `CPU_STEAL` per-CPU array: the scheduler's steal clock
/// (`rq->prev_steal_time_rq`, ns since boot) at the CPU's first and latest context switch
/// seen. `last_ns - first_ns` is the steal pausewatch saw and charged (or could not charge)
/// on that CPU. Both 0 until the first non-zero reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSteal {
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CpuSteal>() == 16);

/// Per-thread state of an episode in progress, keyed by tid in the `THREADS` LRU hash.
/// Kernel-private, but kept here so its size is checked once and visible to the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    // What the episode's end reads first comes first: BPF task storage puts the value 8 bytes
    // into a cache-line-aligned `bpf_local_storage_data`, so these share one cache line with
    // the `smap` pointer the lookup itself checks.
    /// Start of the episode in progress; 0: none.
    pub episode_start_ns: u64,
    /// The `start_ns` of the `agg_slot` aggregate when it was found, which tells a slot since
    /// given to another process.
    pub agg_start_ns: u64,
    pub tgid: u32,
    /// The thread's process aggregate: its `PROC_STATS` slot + 1 (0: not yet known). Kept
    /// across episodes in task storage (tp_btf); the raw_tp path looks it up every time.
    pub agg_slot: u32,
    /// `Component` of the phase in progress.
    pub phase: u32,
    /// Start of the phase in progress (`phase`).
    pub phase_start_ns: u64,
    pub components_ns: [u64; NUM_COMPONENTS],
    /// `EpisodeStart`.
    pub start_reason: u32,
    pub prev_cpu: u32,
    pub preempted_by_tid: u32,
    /// `BlockReason` of the blocked phase (an episode has at most one: it begins with it).
    pub block_reason: u32,
    pub preempted_by_comm: [u8; TASK_COMM_LEN],
    /// As on `PauseRecord`.
    pub stack_id: i32,
    pub block_dev: u32,
    pub block_addr: u64,
    pub block_ino: u64,
    pub block_pgoff: u64,
}
const _: () = assert!(
    core::mem::size_of::<ThreadState>() == 128
        && core::mem::offset_of!(ThreadState, phase) + 4 <= 56
);

/// What a traced thread's switch-ins need from the one before, with waits measured at
/// switch-in (`sched_info`): an entry of the `SWITCH_INS` array, indexed by tid modulo its
/// size, one cache line (the array is mmapable, so its values start on a page). One cache miss
/// per switch-in where task storage took three (the task's storage pointer, its cache of maps,
/// the element). Blocked and stopped episodes stay in task storage; `EPISODE` says to look
/// there. A preemption needs none: the wait it starts is a run-queue wait like any other, and
/// the entry keeps who took the CPU (`PREEMPTED`). Under `taskset -c 0 perf bench sched pipe`,
/// where 45% of switches are preemptions, that took pausewatch's program on sched_switch from
/// 72 to 54 ns per switch net of the statistics' own cost (medians of 4 rotated runs).
///
/// It also holds the thread's latest pure run-queue waits below `--min-pause` that are not yet
/// in its process's aggregate (`pending*`, up to `PENDING_WAITS`): they are added there all at
/// once, when the list is full, when the entry is taken by another thread and when the thread
/// exits, so that most switch-ins touch no line of the aggregate (three misses each under
/// `perf bench sched messaging`: its slot's header, the total, the bucket). The agent adds the
/// pending waits of every entry to what it reads of the aggregates (`source::pending_waits`),
/// so its totals never lag behind the kernel's.
///
/// Threads whose tids are equal modulo the array's size share an entry: whichever got a CPU
/// last holds it (the other's pending waits are added to its aggregate first), and the other is
/// then seen as if for the first time (its wait is the one on the run queue it gets the CPU
/// from; waits on run queues it was migrated away from are not known), and looks in task
/// storage for an episode, and in a small hash for who preempted it (put there by the thread
/// that took its entry while it waited). Kernel-private but for the agent's read of the pending
/// waits, kept here so its size is checked once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchIn {
    /// The thread's `sched_info.run_delay` once the kernel had accounted its last arrival on a
    /// CPU (valid when `last_cpu` is non-zero).
    pub run_delay_ns: u64,
    /// The pending waits (not yet in the aggregate): their sum (`pending_max_ns` and
    /// `pending_buckets` say more of them),
    pub pending_ns: u64,
    /// With `SWITCH_IN_PREEMPTED`: the `task_struct` that took the CPU from the thread, whose
    /// name its wait is streamed with if long enough. Only read through the kernel's
    /// fault-tolerant copy, and only while its `pid` is still `preempted_by_tid`.
    pub preempted_by_task: u64,
    /// Whose entry this is.
    pub tid: u32,
    /// Its process's `PROC_STATS` slot + 1 (0: not yet known; known whenever `pending` > 0).
    pub agg_slot: u32,
    /// `agg_start_tag` of the `agg_slot` aggregate's `start_ns` when it was found.
    pub agg_start: u32,
    /// `SwitchIn::check_of(tid, run_delay_ns, pending_ns, pending)`, written last: an entry two
    /// CPUs wrote at once for two threads (whose fields may then be mixed), or that the agent
    /// read while the kernel wrote it, fails it and counts as unknown.
    pub check: u32,
    /// The largest pending wait (a wait longer than `PENDING_WAIT_MAX_NS` is never pending),
    pub pending_max_ns: u32,
    /// With `SWITCH_IN_PREEMPTED`: the tid of the thread that took the CPU (0: the idle task).
    pub preempted_by_tid: u32,
    /// The CPU the thread last got + 1 (0: not known), which is the CPU it last left when it
    /// next gets one.
    pub last_cpu: u16,
    /// `SWITCH_IN_EPISODE` or `SWITCH_IN_PREEMPTED`: how the thread last left its CPU.
    pub flags: u8,
    /// How many pending waits there are (at most `PENDING_WAITS`),
    pub pending: u8,
    /// and each one's histogram bucket (`hist::bucket`), in order.
    pub pending_buckets: [u8; PENDING_WAITS],
}
const _: () = assert!(core::mem::size_of::<SwitchIn>() == 64);

/// Pure run-queue waits a `SwitchIn` entry holds before adding them to the aggregate: what
/// fills its cache line.
pub const PENDING_WAITS: usize = 12;
const _: () = assert!(hist::BUCKETS <= u8::MAX as usize);

/// `SwitchIn::flags`: an episode is in the thread's task storage (the thread left its CPU
/// blocked or stopped).
pub const SWITCH_IN_EPISODE: u8 = 1;
/// `SwitchIn::flags`: the thread was preempted (left its CPU still runnable) by
/// `preempted_by_tid`. Its wait is measured like any other from the kernel's `sched_info`,
/// which starts counting it right then; the entry keeps who took the CPU, and nothing goes to
/// task storage.
pub const SWITCH_IN_PREEMPTED: u8 = 2;
/// The longest wait a `SwitchIn` keeps pending (`pending_max_ns` is 32 bits: 4.29 s): longer
/// ones, possible only with a `--min-pause` above it, go to the aggregate at once.
pub const PENDING_WAIT_MAX_NS: u64 = u32::MAX as u64;

/// What a `SwitchIn` keeps of an aggregate's `start_ns` (its low 32 bits) to tell its slot
/// from one since given to another process: that also needs the same tgid, so a wrong match
/// needs a pid reused for a process started a multiple of 2^32 ns (4.29 s) later, give or
/// take a nanosecond.
#[inline(always)]
pub const fn agg_start_tag(start_ns: u64) -> u32 {
    start_ns as u32
}

impl SwitchIn {
    /// The check word of an entry of thread `tid` with baseline `run_delay_ns` and `pending`
    /// waits of `pending_ns` in all.
    #[inline(always)]
    pub const fn check_of(tid: u32, run_delay_ns: u64, pending_ns: u64, pending: u8) -> u32 {
        tid_entry_check(
            tid,
            run_delay_ns
                ^ pending_ns.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ ((pending as u64) << 40),
        )
    }

    /// Whether the entry's check word matches its fields: it holds one thread's state, written
    /// whole.
    #[inline(always)]
    pub const fn is_whole(&self) -> bool {
        self.check == Self::check_of(self.tid, self.run_delay_ns, self.pending_ns, self.pending)
    }
}

/// Bounds of the `SWITCH_INS` array's size: the pid space rounded up to a power of two (tids
/// below it never share an entry), at most `SWITCH_INS_MAX` (8 MiB).
pub const SWITCH_INS_MIN: u32 = 1 << 10;
pub const SWITCH_INS_MAX: u32 = 1 << 17;

/// Entries of the `SWITCH_INS` array for a host whose `kernel.pid_max` is `pid_max`.
pub fn switch_ins_entries(pid_max: u32) -> u32 {
    pid_max
        .clamp(SWITCH_INS_MIN, SWITCH_INS_MAX)
        .next_power_of_two()
}

/// Trims a NUL-padded `comm` to its bytes.
pub fn comm_bytes(comm: &[u8; TASK_COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    &comm[..end]
}

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::*;
