//! Loading and attaching the kernel programs, feature probing, privileges.
pub mod btf;
pub mod calibration;
pub mod cost;
pub mod privileges;
pub mod syscall_hooks;

use std::{os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, bail};

use self::cost::{ProgramCost, STATS_FLOOR, StatsMode};
use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        BtfTracePoint, Program, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
    },
};

/// The kernel object built by build.rs (empty when built with PAUSEWATCH_SKIP_EBPF=1).
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pausewatch"));

/// How tracepoint programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tp_btf where the kernel allows it, raw tracepoints otherwise.
    Auto,
    /// BTF-typed tracepoints only (BPF_PROG_TYPE_TRACING).
    Btf,
    /// Raw tracepoints only: same arguments, older kernels, hosts that restrict TRACING programs.
    Raw,
}

/// Where run-queue waits are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunqSource {
    /// `sched-info` where the kernel allows it, `wakeup` otherwise.
    Auto,
    /// When a thread gets the CPU, from the kernel's own run-queue accounting
    /// (`task->sched_info`, the figures behind /proc/<pid>/schedstat): no program runs on
    /// wakeups. Needs tp_btf, the run-queue clock and CONFIG_SCHED_INFO.
    SchedInfo,
    /// From sched_wakeup to sched_switch, a program on every wakeup (any kernel, raw
    /// tracepoints included).
    Wakeup,
}

/// What the loader needs from the command line.
pub struct LoadOptions<'a> {
    pub btf_path: &'a Path,
    pub min_pause_ns: u64,
    pub pids: &'a [u32],
    pub attach: AttachMode,
    /// When BPF run-time statistics are on (and the empty calibration programs attached).
    pub stats: StatsMode,
    /// When to attach the syscall tracepoints (fsync family, clock setters) rather than the
    /// hooks off the syscall path (`syscall_hooks`). Any syscall tracepoint sends every
    /// syscall of every process through the kernel's tracing path.
    pub syscall_hooks: syscall_hooks::SyscallHooks,
    /// The agent's table bound (`--max-processes`): the kernel has twice as many aggregate
    /// slots (`PROC_STATS`) and as many memory aggregates (`PROC_MEM`).
    pub max_processes: u32,
    pub runq_source: RunqSource,
}

/// An empty calibration program, loaded at start when statistics may be on, attached only
/// while they are (so it costs nothing the rest of the time).
struct Floor {
    prog: &'static str,
    tracepoint: &'static str,
    btf: bool,
}

enum FloorLink {
    Btf(&'static str, BtfTracePointLinkId),
    Raw(&'static str, RawTracePointLinkId),
}

/// A loaded and attached set of programs. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    /// Tracepoint mechanism in use for the scheduler programs ("tp_btf" or "raw_tp").
    pub sched_mechanism: &'static str,
    /// Where run-queue waits are measured: "sched_info" (at switch-in, from the kernel's own
    /// accounting) or "sched_wakeup".
    pub runq_source: &'static str,
    /// Entries of the switch-in array (`observer_common::SwitchIn`) when `runq_source` is
    /// "sched_info"; 0 otherwise (it is not used).
    pub switch_in_entries: u32,
    /// While the statistics are on: the fd that keeps them on (the kernel turns them off again,
    /// if nobody else holds them, when it closes) and since when.
    stats_on: Option<(OwnedFd, std::time::Instant)>,
    pub stats_mode: StatsMode,
    /// Whether the statistics were on at any time (the kernel's counters mean something).
    pub stats_seen: bool,
    /// How long they were on in earlier spells, ns.
    stats_on_ns: u64,
    floors: Vec<Floor>,
    floor_links: Vec<FloorLink>,
    /// Names of the programs attached, for cost reporting.
    pub attached: Vec<&'static str>,
    /// Degraded modes: a cause or detail not observed, and why.
    pub notices: Vec<String>,
    /// Things done to the host that an operator should know (e.g. tracefs mounted).
    pub infos: Vec<String>,
    /// How fsync-family calls and clock changes are seen (`syscall_hooks`): the mode's name
    /// ("off_syscall_path", "syscall_tracepoints") and why; None when neither is attached
    /// (said by a notice).
    pub syscall_hooks: Option<(&'static str, String)>,
}

/// With waits measured at switch-in: a thread's exit (tp_btf only, as that measurement).
const THREAD_EXIT: TracepointProgs = (
    "sched_process_exit",
    "sched_thread_exit",
    "sched_thread_exit",
);

const SCHED: [TracepointProgs; 3] = [
    ("sched_switch", "sched_switch_btf", "sched_switch_raw"),
    ("sched_wakeup", "sched_wakeup_btf", "sched_wakeup_raw"),
    (
        "sched_wakeup_new",
        "sched_wakeup_new_btf",
        "sched_wakeup_new_raw",
    ),
];

/// Optional tracepoints: (tracepoint, tp_btf program, raw_tp program). The scheduler's
/// mechanism is used for them too, so every episode boundary comes from one clock.
const SIGNAL: [TracepointProgs; 1] = [(
    "signal_generate",
    "signal_generate_btf",
    "signal_generate_raw",
)];
const EXEC: [TracepointProgs; 1] = [(
    "sched_process_exec",
    "sched_process_exec_btf",
    "sched_process_exec_raw",
)];

/// TCP socket owners (process context) and retransmissions (softirq/timer context).
const TCP_OWNERS: [TracepointProgs; 3] = [
    (
        "inet_sock_set_state",
        "inet_sock_set_state_btf",
        "inet_sock_set_state_raw",
    ),
    (
        "tcp_sendmsg_locked",
        "tcp_sendmsg_locked_btf",
        "tcp_sendmsg_locked_raw",
    ),
    (
        "tcp_destroy_sock",
        "tcp_destroy_sock_btf",
        "tcp_destroy_sock_raw",
    ),
];
const TCP_RETRANSMITS: [TracepointProgs; 2] = [
    (
        "tcp_retransmit_skb",
        "tcp_retransmit_skb_btf",
        "tcp_retransmit_skb_raw",
    ),
    (
        "tcp_retransmit_synack",
        "tcp_retransmit_synack_btf",
        "tcp_retransmit_synack_raw",
    ),
];

/// Clock-changing syscalls: (syscall, entry program, exit program). Classic tracepoints.
const CLOCK_SYSCALLS: [(&str, &str, &str); 4] = [
    ("clock_settime", "clock_settime_enter", "clock_settime_exit"),
    ("settimeofday", "settimeofday_enter", "settimeofday_exit"),
    ("adjtimex", "adjtimex_enter", "adjtimex_exit"),
    ("clock_adjtime", "clock_adjtime_enter", "clock_adjtime_exit"),
];

/// Memory brackets and major-fault accounting: (tracepoint, tp_btf program). tp_btf only:
/// they read the task's `maj_flt` and saved registers through BTF-typed pointers, and a D
/// sleep's brackets are in task storage, which needs them too.
const FAULTS: [(&str, &str); 4] = [
    ("page_fault_user", "page_fault_user"),
    ("page_fault_kernel", "page_fault_kernel"),
    ("mm_filemap_fault", "mm_filemap_fault"),
    ("sched_process_exit", "mem_process_exit"),
];
const MEM_STALLS: [(&str, &str); 6] = [
    ("mm_vmscan_direct_reclaim_begin", "direct_reclaim_begin"),
    ("mm_vmscan_direct_reclaim_end", "direct_reclaim_end"),
    ("mm_vmscan_memcg_reclaim_begin", "memcg_reclaim_begin"),
    ("mm_vmscan_memcg_reclaim_end", "memcg_reclaim_end"),
    ("mm_compaction_begin", "compaction_begin"),
    ("mm_compaction_end", "compaction_end"),
];
const DISK: [(&str, &str); 2] = [
    ("block_rq_issue", "block_rq_issue"),
    ("block_rq_complete", "block_rq_complete"),
];

/// The fsync family: (syscall, entry program). One exit program serves them all.
const SYNC_SYSCALLS: [(&str, &str); 6] = [
    ("fsync", "fsync_enter"),
    ("fdatasync", "fdatasync_enter"),
    ("sync_file_range", "sync_file_range_enter"),
    ("msync", "msync_enter"),
    ("sync", "sync_enter"),
    ("syncfs", "syncfs_enter"),
];
const SYNC_EXIT: &str = "sync_exit";

/// Off the syscall path (`syscall_hooks`): ext4's fsync tracepoints and the CAP_SYS_TIME
/// check, (tracepoint, tp_btf program).
const EXT4_SYNC: [(&str, &str); 2] = [
    ("ext4_sync_file_enter", "ext4_fsync_enter"),
    ("ext4_sync_file_exit", "ext4_fsync_exit"),
];
const CLOCK_CAP: [(&str, &str); 1] = [("cap_capable", "clock_capable")];

/// Where fsync-family calls are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncHooks {
    Syscalls,
    Ext4,
    None,
}

/// Where tracefs is expected; pausewatch mounts it there when no tracefs is mounted.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes tracefs available for classic tracepoints. Some(note) when it had to mount it.
fn ensure_tracefs() -> Result<Option<String>, String> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(None);
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no mount data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Some(format!(
        "mounted tracefs at {TRACEFS} (needed for the clock syscall tracepoints)"
    )))
}

/// Whether this binary carries real kernel programs.
pub fn has_object() -> bool {
    !OBJECT.is_empty()
}

/// Fails, saying how to get them, when this binary carries no kernel programs.
pub(crate) fn require_object() -> anyhow::Result<()> {
    if !has_object() {
        bail!(
            "this pausewatch was built with PAUSEWATCH_SKIP_EBPF=1 and has no eBPF programs; rebuild it after `cargo xtask setup`"
        );
    }
    Ok(())
}

pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Probes> {
    require_object()?;
    let kbtf = btf::Btf::from_file(opts.btf_path)?;
    let off = btf::TaskOffsets::from_btf(&kbtf)?;

    let mut notices = Vec::new();
    // Zeros make the programs read bpf_ktime_get_ns instead of the run-queue clock.
    let rq = btf::RqClockOffsets::from_btf(&kbtf).unwrap_or_else(|e| {
        notices.push(format!("run-queue clock not reachable through BTF ({e}); timing with bpf_ktime_get_ns, which costs more per event"));
        btf::RqClockOffsets { task_cfs_rq: 0, cfs_rq_rq: 0, rq_clock: 0, rq_steal: 0 }
    });
    if rq.rq_clock != 0 && rq.rq_steal == 0 {
        notices.push(
            "steal per process not observed: the kernel has no rq.prev_steal_time_rq (built without CONFIG_PARAVIRT_TIME_ACCOUNTING); host steal is still sampled from /proc/stat".to_string(),
        );
    }
    // Waits measured at switch-in need the run-queue clock (the kernel's own accounting is
    // in it) and tp_btf; zeros make the programs time them from sched_wakeup.
    let sched_info_offsets = match (opts.runq_source, opts.attach) {
        (RunqSource::Wakeup, _) => None,
        (RunqSource::SchedInfo, AttachMode::Raw) => bail!(
            "--runq-source sched-info needs tp_btf programs, not --attach raw; use --runq-source wakeup"
        ),
        (_, AttachMode::Raw) => None,
        (source, _) => match (btf::SchedInfoOffsets::from_btf(&kbtf), rq.rq_clock) {
            (Ok(si), clock) if clock != 0 => Some(si),
            (Err(e), _) if source == RunqSource::SchedInfo => bail!(
                "--runq-source sched-info: the kernel's run-queue accounting is not in its BTF ({e}; built without CONFIG_SCHED_INFO?); use --runq-source wakeup"
            ),
            (_, _) if source == RunqSource::SchedInfo => bail!(
                "--runq-source sched-info needs the run-queue clock, which is not reachable through BTF; use --runq-source wakeup"
            ),
            _ => None,
        },
    };
    let sched_info = sched_info_offsets.is_some();
    let [last_queued_off, run_delay_off, pcount_off] = sched_info_offsets.map_or([0u64; 3], |si| {
        [si.last_queued, si.run_delay, si.pcount].map(u64::from)
    });
    let (task_cfs_rq_off, cfs_rq_rq_off, rq_clock_off, rq_steal_off) = (
        u64::from(rq.task_cfs_rq),
        u64::from(rq.cfs_rq_rq),
        u64::from(rq.rq_clock),
        u64::from(rq.rq_steal),
    );
    // Zeros: tracers and uids read as unknown (uid u32::MAX reads as "unknown" in userspace).
    let id = btf::IdentityOffsets::from_btf(&kbtf).unwrap_or_else(|e| {
        notices.push(format!(
            "task identity offsets not in BTF ({e}): tracers of ptrace stops are not named, \
             cgroup v2 freezes are not recognised"
        ));
        btf::IdentityOffsets {
            task_parent: 0,
            task_cred: 0,
            cred_uid: 0,
            task_jobctl: 0,
        }
    });
    let (task_parent_off, task_cred_off, cred_uid_off, task_jobctl_off) = (
        u64::from(id.task_parent),
        u64::from(id.task_cred),
        u64::from(id.cred_uid),
        u64::from(id.task_jobctl),
    );
    let net = btf::NetOffsets::from_btf(&kbtf);
    let net_vals: [u64; 15] = match &net {
        Ok(n) => [
            n.family,
            n.state,
            n.daddr,
            n.rcv_saddr,
            n.dport,
            n.num,
            n.v6_daddr,
            n.v6_rcv_saddr,
            n.rto,
            n.retransmits,
            n.ca_state_byte,
            n.ca_state_shift,
            n.srtt,
            n.total_retrans,
            n.skb_cb,
        ]
        .map(u64::from),
        Err(_) => [0; 15],
    };
    let retransmit_has_err =
        u32::from(kbtf.tracepoint_args("tcp_retransmit_skb").unwrap_or(2) >= 3);
    let filter: u32 = u32::from(!opts.pids.is_empty());
    let self_tgid = std::process::id();
    let (pid_off, tgid_off, comm_off, leader_off, on_cpu_off, start_time_off) = (
        u64::from(off.pid),
        u64::from(off.tgid),
        u64::from(off.comm),
        u64::from(off.group_leader),
        u64::from(off.on_cpu),
        u64::from(off.start_time),
    );
    const NET_GLOBALS: [&str; 15] = [
        "SK_FAMILY_OFF",
        "SK_STATE_OFF",
        "SK_DADDR_OFF",
        "SK_RCV_SADDR_OFF",
        "SK_DPORT_OFF",
        "SK_NUM_OFF",
        "SK_V6_DADDR_OFF",
        "SK_V6_RCV_SADDR_OFF",
        "ICSK_RTO_OFF",
        "ICSK_RETRANSMITS_OFF",
        "ICSK_CA_STATE_BYTE_OFF",
        "ICSK_CA_STATE_SHIFT",
        "TP_SRTT_OFF",
        "TP_TOTAL_RETRANS_OFF",
        "SKB_CB_OFF",
    ];
    let mem = btf::MemOffsets::from_btf(&kbtf);
    let mut hooks_host = syscall_hooks::Host {
        tp_btf: false, // known once the scheduler programs are attached
        regs_missing: mem
            .missing(btf::MemGroup::SyscallRegs)
            .map(|e| e.to_string()),
        cap_capable: kbtf.tracepoint_args("cap_capable").is_some(),
        ext4_sync_file: kbtf.tracepoint_args("ext4_sync_file_enter").is_some()
            && kbtf.tracepoint_args("ext4_sync_file_exit").is_some(),
        blind_spots: match syscall_hooks::host_mounts() {
            Ok(m) => syscall_hooks::blind_spots(m),
            Err(e) => vec![syscall_hooks::Mount {
                fs_type: format!("an unknown file system (mount table unreadable: {e:#})"),
                mount_point: "?".into(),
                read_only: false,
            }],
        },
    };
    let exit_has_group_dead = kbtf.tracepoint_args("sched_process_exit").unwrap_or(1) >= 2;
    // Our parse of the kernel's BTF (about 10 MiB) goes before aya parses it again and loads
    // the object: the two at once were the agent's peak memory.
    drop(kbtf);
    let aya_btf = Btf::parse_file(opts.btf_path, Endianness::default())
        .with_context(|| format!("parsing kernel BTF at {}", opts.btf_path.display()))?;
    // Sizes of the maps only one scheduler attachment uses go by the attachment planned, and
    // the object is loaded again if tp_btf is refused (below).
    let switch_ins = if sched_info { switch_ins_entries()? } else { 1 };
    let faults = faults_entries()?;
    let load_object = |tp_btf: bool| -> anyhow::Result<Ebpf> {
        let mut loader = EbpfLoader::new();
        // Twice the table's bound in aggregate slots: a slot is held by every process that
        // pauses, from its first pause until the agent retires it, so more live processes than
        // the table keeps (it lets the least-paused go) still have their pauses counted.
        for map in ["PROC_STATS", "PROC_SLOTS", "FREE_SLOTS"] {
            loader.map_max_entries(map, opts.max_processes.saturating_mul(2));
        }
        loader.map_max_entries("PROC_MEM", opts.max_processes);
        // One switch-in entry per possible tid, up to 8 MiB (`observer_common::SwitchIn`),
        // where waits are measured at switch-in; one entry, never used, where they come from
        // wakeups.
        let switch_ins = if tp_btf { switch_ins } else { 1 };
        loader.map_max_entries("SWITCH_INS", switch_ins);
        // Every thread's latest fault: 64 bytes per possible tid, up to 8 MiB
        // (`observer_common::FaultState`).
        loader.map_max_entries("FAULTS", faults);
        // Stacks taken at switch-out are the raw tracepoints' (tp_btf programs take them as the
        // thread gets the CPU back, into BLOCK_STACKS): about 2 MiB of kernel memory they
        // alone need.
        if tp_btf {
            loader.map_max_entries("STACKS", 1);
        }
        for (name, v) in NET_GLOBALS.iter().zip(net_vals.iter()) {
            loader.override_global(name, v, true);
        }
        for (name, v) in &mem.values {
            loader.override_global(name, v, true);
        }
        let switch_ins_mask = switch_ins - 1;
        let faults_mask = faults - 1;
        let mut ebpf = loader
            .btf(Some(&aya_btf))
            .override_global("RETRANSMIT_HAS_ERR", &retransmit_has_err, true)
            // TASK_EPISODES (task-local storage) has no userspace API in aya 0.14; only the
            // kernel programs use it.
            .allow_unsupported_maps()
            .override_global("TASK_PID_OFF", &pid_off, true)
            .override_global("TASK_TGID_OFF", &tgid_off, true)
            .override_global("TASK_COMM_OFF", &comm_off, true)
            .override_global("TASK_GROUP_LEADER_OFF", &leader_off, true)
            .override_global("TASK_ON_CPU_OFF", &on_cpu_off, true)
            .override_global("TASK_START_TIME_OFF", &start_time_off, true)
            .override_global("TASK_CFS_RQ_OFF", &task_cfs_rq_off, true)
            .override_global("CFS_RQ_RQ_OFF", &cfs_rq_rq_off, true)
            .override_global("RQ_CLOCK_OFF", &rq_clock_off, true)
            .override_global("RQ_STEAL_OFF", &rq_steal_off, true)
            .override_global("TASK_LAST_QUEUED_OFF", &last_queued_off, true)
            .override_global("TASK_RUN_DELAY_OFF", &run_delay_off, true)
            .override_global("TASK_PCOUNT_OFF", &pcount_off, true)
            .override_global("TASK_PARENT_OFF", &task_parent_off, true)
            .override_global("TASK_CRED_OFF", &task_cred_off, true)
            .override_global("CRED_UID_OFF", &cred_uid_off, true)
            .override_global("TASK_JOBCTL_OFF", &task_jobctl_off, true)
            .override_global("MIN_PAUSE_NS", &opts.min_pause_ns, true)
            .override_global("FILTER_PIDS", &filter, true)
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("SWITCH_INS_MASK", &switch_ins_mask, true)
            .override_global("FAULTS_MASK", &faults_mask, true)
            .load(OBJECT)
            .context("loading the eBPF object into the kernel")?;
        crate::source::harvest::fill_free_slots(&mut ebpf)?;
        if !opts.pids.is_empty() {
            let mut watched: BpfHashMap<&mut MapData, u32, u8> =
                BpfHashMap::try_from(ebpf.map_mut("WATCHED").context("map WATCHED missing")?)?;
            for &pid in opts.pids {
                watched
                    .insert(pid, 1, 0)
                    .with_context(|| format!("watching pid {pid}"))?;
            }
        }
        Ok(ebpf)
    };
    let mut ebpf = load_object(opts.attach != AttachMode::Raw)?;

    let follow = !opts.pids.is_empty();
    let (mechanism, attached) = match opts.attach {
        AttachMode::Btf => (
            "tp_btf",
            attach_sched_btf(&mut ebpf, &aya_btf, sched_info, follow)?,
        ),
        AttachMode::Raw => ("raw_tp", attach_sched(&mut ebpf, None, false, follow)?),
        AttachMode::Auto => match attach_sched_btf(&mut ebpf, &aya_btf, sched_info, follow) {
            Ok(a) => ("tp_btf", a),
            Err(e) => {
                notices.push(format!(
                    "tp_btf unavailable ({e:#}); using raw tracepoints for the scheduler"
                ));
                // Again, with the maps sized for raw tracepoints; the programs attached before
                // the failure are detached as the first object is dropped.
                drop(ebpf);
                ebpf = load_object(false)?;
                ("raw_tp", attach_sched(&mut ebpf, None, false, follow)?)
            }
        },
    };
    if opts.runq_source == RunqSource::SchedInfo && mechanism != "tp_btf" {
        bail!(
            "--runq-source sched-info needs tp_btf programs, which this kernel refused; use --runq-source wakeup"
        );
    }
    let mut probes = Probes {
        ebpf,
        sched_mechanism: mechanism,
        runq_source: if sched_info && mechanism == "tp_btf" {
            "sched_info"
        } else {
            "sched_wakeup"
        },
        switch_in_entries: if sched_info && mechanism == "tp_btf" {
            switch_ins
        } else {
            0
        },
        stats_on: None,
        stats_mode: opts.stats,
        stats_seen: false,
        stats_on_ns: 0,
        floors: Vec::new(),
        floor_links: Vec::new(),
        attached,
        notices,
        infos: Vec::new(),
        syscall_hooks: None,
    };
    probes.attach_optional(
        &SIGNAL,
        &aya_btf,
        "signals (senders of stops, every signal to an observed process)",
    );
    probes.attach_optional(
        &EXEC,
        &aya_btf,
        "exec events (runtimes started after pausewatch are found only at start-up)",
    );
    match &net {
        Ok(_) => {
            for p in TCP_OWNERS {
                probes.attach_optional(
                    &[p],
                    &aya_btf,
                    &format!("TCP socket owners from {} (retransmissions of sockets first seen elsewhere have no process)", p.0),
                );
            }
            probes.attach_optional(&TCP_RETRANSMITS, &aya_btf, "TCP retransmissions");
        }
        Err(e) => probes
            .notices
            .push(format!("TCP retransmissions not observed: {e}")),
    }
    hooks_host.tp_btf = probes.sched_mechanism == "tp_btf";
    let sync_hooks = match syscall_hooks::choose(opts.syscall_hooks, &hooks_host) {
        syscall_hooks::Choice::OffPath => {
            probes.syscall_hooks = Some((
                "off_syscall_path",
                "fsync, fdatasync and msync are timed from ext4's own tracepoints and clock changes \
                 seen at their CAP_SYS_TIME check: no syscall tracepoint, which would tax every \
                 syscall on the host (sync_file_range, sync and syncfs are not timed, their waits \
                 are still named from the kernel stack; --syscall-tracepoints always times them)"
                    .into(),
            ));
            probes.attach_btf_only(&CLOCK_CAP, &aya_btf, "who changes the clock");
            SyncHooks::Ext4
        }
        syscall_hooks::Choice::Syscalls(why) => {
            probes.syscall_hooks = Some((
                "syscall_tracepoints",
                format!(
                    "syscall tracepoints attached for fsync-family calls and clock setters, at \
                     about 45 ns to every syscall on the host: {} (--no-syscall-tracepoints \
                     leaves them off)",
                    why.as_deref().unwrap_or("--syscall-tracepoints always")
                ),
            ));
            probes.attach_clock_syscalls();
            SyncHooks::Syscalls
        }
        syscall_hooks::Choice::Neither(why) => {
            probes.notices.push(format!(
                "syscall tracepoints off (--no-syscall-tracepoints) and the hooks off the syscall \
                 path unusable ({why}): fsync-family calls are not timed (their waits are still \
                 named from the kernel stack) and who changes the clock is not known (steps are \
                 still measured)"
            ));
            SyncHooks::None
        }
    };
    probes.attach_memory(&aya_btf, &mem, sync_hooks);
    // Process exits in ring order (a later process with the same pid is never taken for an
    // exited one) need sched_process_exit's `group_dead` argument (Linux 6.16+).
    if exit_has_group_dead {
        probes.attach_btf_only(
            &[("sched_process_exit", "process_exit")],
            &aya_btf,
            "process exits in ring order (exits are noticed at the once-a-second read instead)",
        );
    } else {
        probes.notices.push(
            "process exits are noticed at the once-a-second read: sched_process_exit has no group_dead argument before Linux 6.16".into(),
        );
    }
    if opts.stats != StatsMode::Off {
        // The empty `stats_floor` programs: the run-time statistics time each run with
        // sched_clock() around the program, so they include about one clock read of their own
        // (~70 ns on our VMs); an empty program's mean is that overhead, measured in the same
        // seconds, and `net_ns` in the cost report subtracts it. One on sched_switch (either
        // mechanism) and, with tp_btf, one on each other hot hook.
        probes.load_floors(&aya_btf);
        if opts.stats == StatsMode::Continuous
            && let Err(e) = probes.set_stats(true)
        {
            probes.notices.push(format!(
                "BPF run-time statistics unavailable ({e:#}): pausewatch's own cost is not shown"
            ));
        }
    }
    Ok(probes)
}

/// A tracepoint and its program in the tp_btf and raw_tp builds.
pub(crate) type TracepointProgs = (&'static str, &'static str, &'static str);

/// Loads and attaches one tracepoint's program: the tp_btf build when given the kernel's BTF,
/// the raw_tp build otherwise. Returns the program's name.
pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    (tp, btf_prog, raw_prog): TracepointProgs,
) -> anyhow::Result<&'static str> {
    if let Some(btf) = btf {
        attach_btf(ebpf, btf, tp, btf_prog)?;
        Ok(btf_prog)
    } else {
        let p: &mut RawTracePoint = ebpf
            .program_mut(raw_prog)
            .with_context(|| format!("program {raw_prog} missing"))?
            .try_into()?;
        p.load().with_context(|| format!("loading raw_tp/{tp}"))?;
        p.attach(tp)
            .with_context(|| format!("attaching raw_tp/{tp}"))?;
        Ok(raw_prog)
    }
}

/// Loads and attaches the tp_btf program `prog` on tracepoint `tp`.
pub(crate) fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, tp: &str, prog: &str) -> anyhow::Result<()> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    p.load(tp, btf)
        .with_context(|| format!("loading tp_btf/{tp}"))?;
    p.attach()
        .with_context(|| format!("attaching tp_btf/{tp}"))?;
    Ok(())
}

/// Attaches the classic tracepoint program `prog` to syscalls/`tp`, loading it first when
/// `load` (a program attached to several tracepoints is loaded once).
fn attach_syscall(ebpf: &mut Ebpf, prog: &str, tp: &str, load: bool) -> anyhow::Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    if load {
        p.load()
            .with_context(|| format!("loading tracepoint/syscalls/{tp}"))?;
    }
    p.attach("syscalls", tp)
        .with_context(|| format!("attaching tracepoint/syscalls/{tp}"))?;
    Ok(())
}

/// Attaches `progs` in order, adding each attached name to `done`; stops at the first failure.
fn attach_all(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    progs: &[TracepointProgs],
    done: &mut Vec<&'static str>,
) -> anyhow::Result<()> {
    for &p in progs {
        done.push(attach_one(ebpf, btf, p)?);
    }
    Ok(())
}

/// `attach_sched` with tp_btf programs. `PAUSEWATCH_REFUSE_TP_BTF=1` fails it after they are
/// attached, as a kernel that refuses one of them would: the tests' way to the raw-tracepoint
/// fallback, which our kernels never take.
fn attach_sched_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
    sched_info: bool,
    follow_forks: bool,
) -> anyhow::Result<Vec<&'static str>> {
    let names = attach_sched(ebpf, Some(btf), sched_info, follow_forks)?;
    if std::env::var_os("PAUSEWATCH_REFUSE_TP_BTF").is_some_and(|v| v == "1") {
        bail!("refused on request (PAUSEWATCH_REFUSE_TP_BTF=1)");
    }
    Ok(names)
}

/// The scheduler programs. With waits measured at switch-in (`sched_info`, tp_btf only)
/// sched_wakeup needs no program, and sched_wakeup_new only follows forks under `--pid`.
fn attach_sched(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    sched_info: bool,
    follow_forks: bool,
) -> anyhow::Result<Vec<&'static str>> {
    let mut names = Vec::new();
    if btf.is_some() && sched_info {
        // sched_switch, and a thread's exit to add its pending waits to its aggregate
        // (`observer_common::SwitchIn`).
        let progs = if follow_forks {
            &[SCHED[0], THREAD_EXIT, SCHED[2]][..]
        } else {
            &[SCHED[0], THREAD_EXIT][..]
        };
        attach_all(ebpf, btf, progs, &mut names)?;
    } else {
        attach_all(ebpf, btf, &SCHED, &mut names)?;
    }
    Ok(names)
}

impl Probes {
    /// Attaches a cause family's programs with the scheduler's mechanism. A kernel without them
    /// loses that cause only: a notice names it, whatever did attach stays (each program stands
    /// alone), and everything else keeps working.
    fn attach_optional(&mut self, progs: &[TracepointProgs], btf: &Btf, what: &str) {
        let btf = (self.sched_mechanism == "tp_btf").then_some(btf);
        if let Err(e) = attach_all(&mut self.ebpf, btf, progs, &mut self.attached) {
            self.notices.push(format!("{what} not observed: {e:#}"));
        }
    }

    /// Attaches tp_btf-only programs (no raw_tp build: they need BTF-typed pointers), each on
    /// its own: one that fails is named in a notice and the others stay.
    fn attach_btf_only(&mut self, progs: &[(&str, &'static str)], btf: &Btf, what: &str) {
        if self.sched_mechanism != "tp_btf" {
            self.notices.push(format!(
                "{what} not observed: needs tp_btf programs, which this kernel refused"
            ));
            return;
        }
        for &(tp, prog) in progs {
            match attach_btf(&mut self.ebpf, btf, tp, prog) {
                Ok(()) => self.attached.push(prog),
                Err(e) => self.notices.push(format!("{what}: {e:#}")),
            }
        }
    }

    /// Memory and disk pauses: fault brackets and major-fault accounting, reclaim and
    /// compaction stalls, the fsync family, block device latency.
    fn attach_memory(&mut self, btf: &Btf, mem: &btf::MemOffsets, sync: SyncHooks) {
        match (
            mem.missing(btf::MemGroup::Faults),
            mem.missing(btf::MemGroup::SyncFiles),
        ) {
            (None, None) => self.attach_btf_only(&FAULTS, btf, "page faults"),
            (Some(e), _) | (None, Some(e)) => self.notices.push(format!(
                "page faults not observed (offsets not in BTF: {e})"
            )),
        }
        self.attach_btf_only(&MEM_STALLS, btf, "reclaim and compaction stalls");
        match mem.missing(btf::MemGroup::Disk) {
            None => self.attach_btf_only(&DISK, btf, "block device latency"),
            Some(e) => self.notices.push(format!(
                "block device latency not observed (offsets not in BTF: {e})"
            )),
        }
        if sync == SyncHooks::None {
            return;
        }
        if let Some(e) = mem.missing(btf::MemGroup::SyncFiles) {
            self.notices.push(format!(
                "fsync-family calls are timed but their files are unknown (offsets not in BTF: {e})"
            ));
        }
        match sync {
            SyncHooks::Ext4 => self.attach_btf_only(&EXT4_SYNC, btf, "ext4 fsync calls"),
            _ => self.attach_sync_syscalls(),
        }
    }

    /// The fsync-family syscall tracepoints (classic: tracefs must be there, which
    /// `attach_clock_syscalls` made sure of).
    fn attach_sync_syscalls(&mut self) {
        let r = (|| -> anyhow::Result<()> {
            let exit: &mut TracePoint = self
                .ebpf
                .program_mut(SYNC_EXIT)
                .with_context(|| format!("program {SYNC_EXIT} missing"))?
                .try_into()?;
            exit.load()
                .context("loading the fsync-family exit program")?;
            Ok(())
        })();
        if let Err(e) = r {
            self.notices
                .push(format!("fsync-family calls not observed: {e:#}"));
            return;
        }
        let mut exit_attached = false;
        for (syscall, enter) in SYNC_SYSCALLS {
            let r = attach_syscall(&mut self.ebpf, enter, &format!("sys_enter_{syscall}"), true)
                .and_then(|()| {
                    attach_syscall(
                        &mut self.ebpf,
                        SYNC_EXIT,
                        &format!("sys_exit_{syscall}"),
                        false,
                    )
                });
            match r {
                Ok(()) => {
                    self.attached.push(enter);
                    exit_attached = true;
                }
                Err(e) => self
                    .notices
                    .push(format!("{syscall} calls not observed: {e:#}")),
            }
        }
        if exit_attached {
            self.attached.push(SYNC_EXIT);
        }
    }

    /// Attaches the clock syscall tracepoints (mounting tracefs if needed). Who changed the
    /// clock is lost without them; steps themselves are still measured.
    fn attach_clock_syscalls(&mut self) {
        match ensure_tracefs() {
            Ok(Some(note)) => self.infos.push(note),
            Ok(None) => {}
            Err(e) => {
                self.notices
                    .push(format!("who changes the clock is not observed: {e}"));
                return;
            }
        }
        for (syscall, enter, exit) in CLOCK_SYSCALLS {
            for (prog, tp) in [
                (enter, format!("sys_enter_{syscall}")),
                (exit, format!("sys_exit_{syscall}")),
            ] {
                let r = attach_syscall(&mut self.ebpf, prog, &tp, true);
                match r {
                    Ok(()) => self.attached.push(prog),
                    Err(e) => {
                        self.notices
                            .push(format!("who calls {syscall} is not observed: {e:#}"));
                        break;
                    }
                }
            }
        }
    }

    /// Loads the empty calibration programs (attached only while the statistics are on).
    fn load_floors(&mut self, btf: &Btf) {
        let btf_mode = self.sched_mechanism == "tp_btf";
        let mut floors = vec![Floor {
            prog: if btf_mode {
                STATS_FLOOR.0
            } else {
                STATS_FLOOR.1
            },
            tracepoint: "sched_switch",
            btf: btf_mode,
        }];
        if btf_mode {
            // Only next to programs that are attached (sched_wakeup's is not when waits are
            // measured at switch-in).
            let attached = &self.attached;
            floors.extend(
                cost::HOOK_FLOORS
                    .iter()
                    .filter(|f| attached.contains(&f.2))
                    .map(|&(prog, tracepoint, _)| Floor {
                        prog,
                        tracepoint,
                        btf: true,
                    }),
            );
        }
        for f in floors {
            let loaded = match self.ebpf.program_mut(f.prog) {
                Some(Program::BtfTracePoint(p)) if f.btf => p.load(f.tracepoint, btf),
                Some(Program::RawTracePoint(p)) if !f.btf => p.load(),
                _ => {
                    self.notices
                        .push(format!("calibration program {} missing", f.prog));
                    continue;
                }
            };
            match loaded {
                Ok(()) => self.floors.push(f),
                Err(e) => self.notices.push(format!(
                    "the statistics' own overhead on {} is not measured (costs shown include their clock read): {e}",
                    f.tracepoint
                )),
            }
        }
    }

    /// Turns the kernel's BPF run-time statistics on (holding a BPF_ENABLE_STATS fd, and
    /// attaching the empty calibration programs) or off (closing it, detaching them).
    pub fn set_stats(&mut self, on: bool) -> anyhow::Result<()> {
        if on == self.stats_on.is_some() {
            return Ok(());
        }
        if on {
            let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("BPF_ENABLE_STATS refused")?;
            for f in &self.floors {
                let link = match self.ebpf.program_mut(f.prog) {
                    Some(Program::BtfTracePoint(p)) => {
                        p.attach().map(|l| FloorLink::Btf(f.prog, l))
                    }
                    Some(Program::RawTracePoint(p)) => {
                        p.attach(f.tracepoint).map(|l| FloorLink::Raw(f.prog, l))
                    }
                    _ => continue,
                };
                // A floor that does not attach leaves its programs measured against the one
                // on sched_switch (or gross); the statistics themselves are on.
                if let Ok(l) = link {
                    self.floor_links.push(l);
                }
            }
            self.stats_on = Some((fd, std::time::Instant::now()));
            self.stats_seen = true;
        } else {
            for l in self.floor_links.drain(..) {
                let _ = match l {
                    FloorLink::Btf(name, id) => match self.ebpf.program_mut(name) {
                        Some(Program::BtfTracePoint(p)) => p.detach(id),
                        _ => Ok(()),
                    },
                    FloorLink::Raw(name, id) => match self.ebpf.program_mut(name) {
                        Some(Program::RawTracePoint(p)) => p.detach(id),
                        _ => Ok(()),
                    },
                };
            }
            if let Some((_fd, since)) = self.stats_on.take() {
                self.stats_on_ns += since.elapsed().as_nanos() as u64;
            }
        }
        Ok(())
    }

    /// How long the statistics have been on, ns.
    pub fn stats_on_ns(&self) -> u64 {
        self.stats_on_ns
            + self
                .stats_on
                .as_ref()
                .map_or(0, |(_, since)| since.elapsed().as_nanos() as u64)
    }

    /// Cost of every attached program so far, of the calibration programs, and of the runtime
    /// uprobe programs loaded since (zeros when stats were never on).
    pub fn costs(&self) -> Vec<ProgramCost> {
        let mut out = Vec::new();
        let names = self
            .attached
            .iter()
            .copied()
            .chain(self.floors.iter().map(|f| f.prog))
            .chain(crate::runtimes::PROGRAMS.iter().copied());
        for name in names {
            let Some(info) = self.ebpf.program(name).and_then(|p| p.info().ok()) else {
                continue;
            };
            out.push(ProgramCost {
                name,
                run_count: info.run_count(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            });
        }
        out
    }
}

/// Entries of the `SWITCH_INS` array: from `kernel.pid_max`, or `PAUSEWATCH_SWITCH_INS_ENTRIES`
/// (a power of two; the tests set 1 to make every thread share one entry).
fn switch_ins_entries() -> anyhow::Result<u32> {
    tid_array_entries("PAUSEWATCH_SWITCH_INS_ENTRIES")
}

/// Entries of the `FAULTS` array: as `SWITCH_INS`, or `PAUSEWATCH_FAULTS_ENTRIES`.
fn faults_entries() -> anyhow::Result<u32> {
    tid_array_entries("PAUSEWATCH_FAULTS_ENTRIES")
}

/// Entries of an array indexed by tid: `kernel.pid_max` rounded up to a power of two, within
/// `observer_common::switch_ins_entries`'s bounds, unless the variable `var` sets it.
fn tid_array_entries(var: &'static str) -> anyhow::Result<u32> {
    match std::env::var(var) {
        Err(_) => Ok(observer_common::switch_ins_entries(pid_max())),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n.is_power_of_two() && n <= 1 << 22 => Ok(n),
            _ => bail!(
                "{var}={v:?} is not a power of two from 1 to 4194304; unset it to size the table from kernel.pid_max"
            ),
        },
    }
}

/// `kernel.pid_max`: tids stay below it. Unreadable, the largest the kernel allows (4M).
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 22)
}

/// The embedded object as built (not for a stub build, which has no programs).
#[cfg(all(test, not(pausewatch_stub_ebpf)))]
mod object_tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// Programs that run on every context switch, wakeup, page fault or TCP send.
    const HOT: [&str; 7] = [
        "sched_switch_btf",
        "sched_wakeup_btf",
        "sched_switch_raw",
        "sched_wakeup_raw",
        "page_fault_user",
        "page_fault_kernel",
        "tcp_sendmsg_locked_btf",
    ];

    /// compiler_builtins' memory routines are byte-at-a-time loops on the BPF target. LLVM
    /// calls them for struct copies and runs of zero stores it merges, invisibly in the source:
    /// starting an episode once ran 76 iterations of memset, most of sched_wakeup's cost. The
    /// hot programs must call none, on any path.
    #[test]
    fn hot_programs_call_no_byte_wise_memory_routine() {
        let file = object::File::parse(super::OBJECT).expect("the embedded eBPF object");
        let mut offenders = Vec::new();
        for name in HOT {
            let prog = file
                .symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap_or_else(|| panic!("program {name} is in the object"));
            let section = file
                .section_by_index(prog.section_index().expect("a program lives in a section"))
                .expect("its section");
            let span = prog.address()..prog.address() + prog.size();
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(target) = reloc.target() else {
                    continue;
                };
                let callee = file
                    .symbol_by_index(target)
                    .and_then(|s| s.name().map(str::to_owned));
                if span.contains(&offset)
                    && matches!(
                        callee.as_deref(),
                        Ok("memset" | "memcpy" | "memmove" | "memcmp")
                    )
                {
                    offenders.push(format!(
                        "{name} at +{:#x} calls {}",
                        offset - span.start,
                        callee.unwrap()
                    ));
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
