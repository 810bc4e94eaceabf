//! The agent's memory and disk state: naming what blocked threads waited on (files, kernel
//! stacks), fsync-family calls and reclaim stalls, per-process totals, disk latency.
use std::collections::VecDeque;

use aya::maps::{HashMap as BpfHashMap, MapData};
use observer_common::{
    BlockReason, DiskKey, DiskOp, DiskStats, MemStallRecord, ProcMem, SyncRecord, SyncSyscall,
};

use crate::{
    model::{
        episode::Episode,
        memory::{
            DiskTable, FaultCounts, MemStall, MemTotals, SyncCall, ThreadFaults, disk_readings,
        },
        process::ProcessTable,
    },
    source::{files::FileNames, harvest::Harvest, stacks::Stacks},
};

/// Most recent fsync-family calls and reclaim stalls kept for the views.
const RECENT: usize = 64;

/// fds are small; anything above this on a `Sync` blocked phase is an msync address.
const MAX_FD: u64 = 1 << 24;

pub struct MemState {
    pub files: FileNames,
    /// The kernel's latency per disk and operation (read at every harvest and before naming a
    /// slow fsync's disk); None when the map could not be opened.
    disk_map: Option<BpfHashMap<MapData, DiskKey, DiskStats>>,
    /// None when the stack map could not be opened (stacks are then not named).
    pub stacks: Option<Stacks>,
    pub disks: DiskTable,
    pub recent_sync: VecDeque<SyncCall>,
    pub recent_stalls: VecDeque<MemStall>,
    /// Blocked phases whose kernel stack could not be named (map entry gone or kallsyms
    /// unreadable).
    pub unnamed_stacks: u64,
}

impl MemState {
    pub fn new(
        stacks: Option<Stacks>,
        disk_map: Option<BpfHashMap<MapData, DiskKey, DiskStats>>,
    ) -> Self {
        Self {
            files: FileNames::default(),
            disk_map,
            stacks,
            disks: DiskTable::default(),
            recent_sync: VecDeque::new(),
            recent_stalls: VecDeque::new(),
            unnamed_stacks: 0,
        }
    }

    /// Names the file or kernel place behind an episode's blocked phase, while the process
    /// still exists.
    pub fn resolve(&mut self, ep: &mut Episode) {
        let pid = ep.pid;
        let Some(b) = ep.blocked.as_mut() else { return };
        b.resolved = match b.reason {
            BlockReason::MajorFault => self.files.mapping(pid, b.addr, Some((b.dev, b.ino))),
            BlockReason::Sync if b.addr < MAX_FD => self.files.fd_path(pid, b.addr, b.dev, b.ino),
            BlockReason::Sync => self.files.mapping(pid, b.addr, Some((b.dev, b.ino))),
            BlockReason::Stack => {
                let place = b
                    .stack_id
                    .and_then(|id| self.stacks.as_mut()?.place(id, ep.cpu))
                    .map(|(place, _)| place);
                if place.is_none() {
                    self.unnamed_stacks += 1;
                }
                place
            }
            _ => None,
        };
    }

    pub fn on_sync(&mut self, r: &SyncRecord) -> SyncCall {
        let mut c = SyncCall::from_record(r);
        c.path = match c.syscall {
            Some(s) if s.takes_fd() => c
                .fd()
                .and_then(|fd| self.files.fd_path(c.pid, fd, c.dev, c.ino)),
            Some(SyncSyscall::Msync) => self.files.mapping(c.pid, c.arg, None),
            _ => None,
        };
        c.device = self.files.device(c.dev);
        self.refresh_disks();
        c.disk_p99_ns = self.disks.recent_p99(c.dev);
        c.disk_write_p99_ns = self.disks.recent_op_p99(c.dev, DiskOp::Write);
        c.disk_flush_p99_ns = self.disks.recent_op_p99(c.dev, DiskOp::Flush);
        push(&mut self.recent_sync, c.clone());
        c
    }

    pub fn on_stall(&mut self, r: &MemStallRecord) -> MemStall {
        let s = MemStall::from_record(r);
        push(&mut self.recent_stalls, s.clone());
        s
    }

    /// Applies one harvest's memory totals (with the processes' own fault counters): the
    /// periodic one's, or a single exited process's final read.
    pub fn on_harvest(&mut self, h: &Harvest, table: &mut ProcessTable) {
        for (pid, m) in &h.mem {
            let faults = (!h.retired.contains(pid))
                .then(|| proc_faults(*pid))
                .flatten();
            // Threads are read only when the process's major faults moved (or on first
            // sight): a process that faults only in minor ways costs one read a second.
            let known = table.get(*pid).and_then(|e| e.faults).map(|f| f.major);
            let threads = match faults {
                Some(f) if known != Some(f.major) => thread_faults(*pid),
                _ => Vec::new(),
            };
            table.apply_mem(*pid, &MemTotals::from(m as &ProcMem), faults, threads);
        }
    }

    /// Reads every disk's cumulative latency: at every periodic harvest, and before naming a
    /// slow fsync's disk. Not at each process's final read: a hash map's iteration is a
    /// system call per key and scans its empty buckets, and under a fork storm doing it at
    /// every exit was a fifth of the agent's CPU samples (perf record).
    pub fn refresh_disks(&mut self) {
        let Some(map) = &self.disk_map else { return };
        let now = crate::source::clock::WallClock::mono_now();
        for (dev, ops) in disk_readings(map.iter().flatten()) {
            let name = self.files.device(dev);
            self.disks.apply(dev, name, ops, now);
        }
    }
}

fn push<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= RECENT {
        list.pop_front();
    }
    list.push_back(item);
}

/// Threads read per process at most, so a process with tens of thousands of them costs a
/// bounded read.
const MAX_THREADS_READ: usize = 1024;

/// The kernel's fault counters for each thread of a process (/proc/<pid>/task/*/stat); empty
/// when the process is gone.
fn thread_faults(pid: u32) -> Vec<ThreadFaults> {
    let Ok(tasks) = procfs::process::Process::new(pid as i32).and_then(|p| p.tasks()) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .take(MAX_THREADS_READ)
        .filter_map(|t| {
            let s = t.stat().ok()?;
            Some(ThreadFaults {
                tid: t.tid as u32,
                comm: s.comm,
                minor: s.minflt,
                major: s.majflt,
            })
        })
        .collect()
}

/// The kernel's fault counters for a process (/proc/<pid>/stat).
fn proc_faults(pid: u32) -> Option<FaultCounts> {
    let s = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()?;
    Some(FaultCounts {
        minor: s.minflt,
        major: s.majflt,
    })
}
