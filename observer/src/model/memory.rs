//! Memory and disk pauses in the agent: why a thread was blocked, fsync-family calls, reclaim
//! and compaction stalls, per-process totals, and disk latency for context.
use std::collections::BTreeMap;

use observer_common::{
    BlockReason, DiskKey, DiskOp, DiskStats, MemStallRecord, NUM_BLOCK_REASONS, PauseRecord,
    ProcMem, StallStats, SyncRecord, SyncSyscall,
};

use super::{episode::comm_string, stats::Aggregate, units::fmt_ns};

/// A kernel dev_t (major << 20 | minor) as "major:minor".
pub fn dev_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

/// Where a blocked thread was, as the kernel saw it when it left the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedWhy {
    pub reason: BlockReason,
    /// Faults: the faulting address. fsync family: the fd (msync: the address).
    pub addr: u64,
    /// The file's device and inode (0: anonymous memory or unknown).
    pub dev: u32,
    pub ino: u64,
    /// File faults: page offset in the file.
    pub pgoff: u64,
    /// Outside any bracket: the kernel stack id (None when not captured).
    pub stack_id: Option<u32>,
    /// Resolved by the agent while the process still exists: the file (path) or, for kernel
    /// stacks, where it slept ("jbd2 commit"); None until resolved or when it cannot be.
    pub resolved: Option<String>,
}

impl BlockedWhy {
    /// None when the episode had no blocked phase.
    pub fn from_record(r: &PauseRecord) -> Option<Self> {
        if r.components_ns[observer_common::Component::Blocked as usize] == 0 {
            return None;
        }
        Some(Self {
            reason: BlockReason::from_u32(r.block_reason).unwrap_or(BlockReason::Unknown),
            addr: r.block_addr,
            dev: r.block_dev,
            ino: r.block_ino,
            pgoff: r.block_pgoff,
            stack_id: u32::try_from(r.stack_id).ok(),
            resolved: None,
        })
    }

    /// File faults: the byte offset in the file (None when the page offset is out of range:
    /// a record this build cannot have written).
    pub fn file_offset(&self) -> Option<u64> {
        const PAGE_SIZE: u64 = 4096; // x86_64, the only target
        self.pgoff.checked_mul(PAGE_SIZE)
    }

    /// The label of the blocked component: `major_fault`, `fsync`, or for kernel stacks the
    /// place it slept (`kernel: jbd2 commit`).
    pub fn label(&self) -> String {
        match (self.reason, &self.resolved) {
            (BlockReason::Stack, Some(place)) => format!("kernel: {place}"),
            (r, _) => r.name().to_string(),
        }
    }

    /// One line for people: "major_fault at 0x7f00 in /data/x (offset 0x1000)".
    pub fn describe(&self) -> String {
        let file = || match &self.resolved {
            Some(p) => p.clone(),
            None if self.ino != 0 => format!("inode {} on {}", self.ino, dev_name(self.dev)),
            None => "unknown file".to_string(),
        };
        match self.reason {
            BlockReason::MajorFault => format!(
                "major_fault at {:#x} in {} (offset {})",
                self.addr,
                file(),
                self.file_offset()
                    .map_or_else(|| "unknown".into(), |o| format!("{o:#x}"))
            ),
            BlockReason::Swapin => format!("swapin at {:#x}", self.addr),
            BlockReason::Sync => format!("fsync of {}", file()),
            BlockReason::Stack => self.label(),
            r => r.name().to_string(),
        }
    }
}

/// One fsync-family call at or above the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall: Option<SyncSyscall>,
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    pub ret: i64,
    /// fd (msync: address).
    pub arg: u64,
    pub dev: u32,
    pub ino: u64,
    /// The file's path, resolved while the process holds the fd; None: unknown.
    pub path: Option<String>,
    /// The device's name ("loop0", "vda"), or its mount source for devices without one.
    pub device: Option<String>,
    /// The disk's p99 request latency over the last window, when the device is a disk: every
    /// request, its writes, its cache flushes.
    pub disk_p99_ns: Option<u64>,
    pub disk_write_p99_ns: Option<u64>,
    pub disk_flush_p99_ns: Option<u64>,
}

impl SyncCall {
    pub fn from_record(r: &SyncRecord) -> Self {
        Self {
            pid: r.tgid,
            tid: r.tid,
            comm: comm_string(&r.comm),
            syscall: SyncSyscall::from_u32(r.syscall),
            start_mono_ns: r.start_mono_ns,
            duration_ns: r.duration_ns,
            ret: r.ret,
            arg: r.arg,
            dev: r.dev,
            ino: r.ino,
            path: None,
            device: None,
            disk_p99_ns: None,
            disk_write_p99_ns: None,
            disk_flush_p99_ns: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.syscall.map_or("fsync-family call", SyncSyscall::name)
    }

    /// The descriptor the call named; None for calls without one, and for syncs the kernel
    /// made on a thread's behalf (io_uring's fsync, seen by ext4's tracepoints: `NO_FD`).
    pub fn fd(&self) -> Option<u64> {
        self.syscall
            .filter(|s| s.takes_fd())
            .map(|_| self.arg)
            .filter(|&fd| fd != observer_common::SYNC_NO_FD)
    }

    /// "fsync of /data/wal (loop0) took 450ms; the disk's p99 was 1.0ms for writes, 2.0ms for
    /// cache flushes: the time went to queueing or throttling before the device".
    pub fn describe(&self) -> String {
        let what = match (&self.path, self.syscall) {
            (_, Some(SyncSyscall::Sync)) => "all file systems".to_string(),
            (Some(p), _) => p.clone(),
            (None, _) if self.ino != 0 => {
                format!("inode {} (the process no longer had it open)", self.ino)
            }
            (None, _) => "an unknown file".to_string(),
        };
        let dev = self
            .device
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let mut s = format!(
            "{} of {what}{dev} took {}",
            self.name(),
            fmt_ns(self.duration_ns)
        );
        // What the device itself takes for a write and the flush after it.
        let device_ns = match (self.disk_write_p99_ns, self.disk_flush_p99_ns) {
            (Some(w), Some(f)) => {
                s.push_str(&format!(
                    "; the disk's p99 was {} for writes, {} for cache flushes",
                    fmt_ns(w),
                    fmt_ns(f)
                ));
                Some(w + f)
            }
            (Some(w), None) => {
                s.push_str(&format!("; the disk's p99 was {} for writes", fmt_ns(w)));
                Some(w)
            }
            (None, Some(f)) => {
                s.push_str(&format!(
                    "; the disk's p99 was {} for cache flushes",
                    fmt_ns(f)
                ));
                Some(f)
            }
            (None, None) => self.disk_p99_ns.inspect(|&p99| {
                s.push_str(&format!("; the disk's p99 was {}", fmt_ns(p99)));
            }),
        };
        match device_ns {
            Some(d) if self.duration_ns > d.saturating_mul(10) => {
                s.push_str(": the time went to queueing or throttling before the device, or to waiting behind other write-back");
            }
            _ if self
                .disk_flush_p99_ns
                .is_some_and(|f| f.saturating_mul(2) >= self.duration_ns) =>
            {
                s.push_str(": most of it can be the device's cache flush");
            }
            _ => {}
        }
        s
    }
}

/// One reclaim or compaction stall at or above the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemStall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub reason: BlockReason,
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// Reclaim: pages reclaimed; compaction: the kernel's result code.
    pub result: u64,
}

impl MemStall {
    pub fn from_record(r: &MemStallRecord) -> Self {
        Self {
            pid: r.tgid,
            tid: r.tid,
            comm: comm_string(&r.comm),
            reason: BlockReason::from_u32(r.reason).unwrap_or(BlockReason::Unknown),
            start_mono_ns: r.start_mono_ns,
            duration_ns: r.duration_ns,
            result: r.result,
        }
    }

    pub fn describe(&self) -> String {
        match self.reason {
            BlockReason::Reclaim | BlockReason::MemcgReclaim => format!(
                "{} {} ({} pages reclaimed)",
                self.reason.name(),
                fmt_ns(self.duration_ns),
                self.result
            ),
            r => format!("{} {}", r.name(), fmt_ns(self.duration_ns)),
        }
    }
}

/// Count, total and maximum of one kind of stall, in userspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl From<&StallStats> for Stall {
    fn from(s: &StallStats) -> Self {
        Self {
            count: s.count,
            total_ns: s.total_ns,
            max_ns: s.max_ns,
        }
    }
}

impl Stall {
    fn merge(&mut self, o: &Stall) {
        self.count += o.count;
        self.total_ns += o.total_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }
}

/// A process's memory and disk totals (the userspace form of the kernel's `ProcMem`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemTotals {
    pub major_file: u64,
    pub major_swap: u64,
    /// Blocked time by `BlockReason`.
    pub blocked: [Stall; NUM_BLOCK_REASONS],
    /// Direct reclaim, memcg reclaim, compaction.
    pub mem_stalls: [Stall; 3],
    /// fsync-family calls.
    pub sync: Aggregate,
}

impl From<&ProcMem> for MemTotals {
    fn from(m: &ProcMem) -> Self {
        Self {
            major_file: m.major_file,
            major_swap: m.major_swap,
            blocked: std::array::from_fn(|i| Stall::from(&m.blocked[i])),
            mem_stalls: std::array::from_fn(|i| Stall::from(&m.mem_stalls[i])),
            sync: Aggregate::from(&m.sync),
        }
    }
}

impl MemTotals {
    pub fn merge(&mut self, o: &MemTotals) {
        self.major_file += o.major_file;
        self.major_swap += o.major_swap;
        for (a, b) in self.blocked.iter_mut().zip(&o.blocked) {
            a.merge(b);
        }
        for (a, b) in self.mem_stalls.iter_mut().zip(&o.mem_stalls) {
            a.merge(b);
        }
        self.sync.merge(&o.sync);
    }

    /// Whether a fresh kernel snapshot is smaller than this one: the entry was recreated.
    pub fn reset_by(&self, fresh: &MemTotals) -> bool {
        let events = |m: &MemTotals| {
            m.major_file
                + m.major_swap
                + m.sync.count
                + m.blocked.iter().map(|s| s.count).sum::<u64>()
                + m.mem_stalls.iter().map(|s| s.count).sum::<u64>()
        };
        events(fresh) < events(self)
    }

    pub fn is_empty(&self) -> bool {
        *self == MemTotals::default()
    }

    pub fn stall(&self, r: BlockReason) -> Stall {
        match r {
            BlockReason::Reclaim | BlockReason::MemcgReclaim | BlockReason::Compaction => {
                self.mem_stalls[r as usize - BlockReason::Reclaim as usize]
            }
            _ => Stall::default(),
        }
    }
}

/// The kernel's own fault counters for a process (/proc/<pid>/stat minflt and majflt, which
/// include its exited threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
}

/// The kernel's fault counters of one thread (/proc/<pid>/task/<tid>/stat minflt, majflt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadFaults {
    pub tid: u32,
    pub comm: String,
    pub minor: u64,
    pub major: u64,
}

/// Threads kept per process: those with the most major faults, then the most minor ones.
pub const KEPT_THREADS: usize = 8;

/// Merges a fresh reading of a process's threads into `kept`: a thread's newer reading
/// replaces its older one, a thread that has exited since keeps its last reading, and only the
/// `KEPT_THREADS` that faulted most (major faults first) stay.
pub fn merge_thread_faults(kept: &mut Vec<ThreadFaults>, fresh: Vec<ThreadFaults>) {
    kept.retain(|k| !fresh.iter().any(|f| f.tid == k.tid));
    kept.extend(fresh);
    kept.sort_by(|a, b| (b.major, b.minor, a.tid).cmp(&(a.major, a.minor, b.tid)));
    kept.truncate(KEPT_THREADS);
}

/// Snapshots of a disk's latency kept for its recent p99 (one per harvest, about a second).
const DISK_WINDOW: usize = 10;

/// One disk's cumulative latency and bytes for one operation, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskOpTotals {
    pub latency: Aggregate,
    pub bytes: u64,
}

/// A reading of one disk: its operations' cumulative totals.
pub type DiskReading = BTreeMap<DiskOp, DiskOpTotals>;

/// The kernel's per-(disk, operation) entries grouped into one reading per disk (keyed by
/// dev_t). An operation this agent does not know (none today) is left out.
pub fn disk_readings(
    entries: impl IntoIterator<Item = (DiskKey, DiskStats)>,
) -> BTreeMap<u32, DiskReading> {
    let mut disks: BTreeMap<u32, DiskReading> = BTreeMap::new();
    for (k, s) in entries {
        let Some(op) = DiskOp::from_u32(k.op) else {
            continue;
        };
        disks.entry(k.dev).or_default().insert(
            op,
            DiskOpTotals {
                latency: Aggregate::from(&s.latency),
                bytes: s.bytes,
            },
        );
    }
    disks
}

/// Block request latency of one disk: cumulative per operation, and over the last few seconds.
#[derive(Debug, Clone)]
pub struct Disk {
    pub dev: u32,
    pub name: Option<String>,
    /// (CLOCK_MONOTONIC of the reading, cumulative per operation), at least `DISK_STEP_NS`
    /// apart except for the newest, which later readings within the step replace. Only the
    /// operations the disk has done take room.
    snapshots: std::collections::VecDeque<(u64, DiskReading)>,
}

/// Spacing of the kept snapshots.
const DISK_STEP_NS: u64 = 1_000_000_000;

impl Disk {
    /// Cumulative, per operation, at the latest reading.
    pub fn ops(&self) -> &DiskReading {
        static NONE: DiskReading = BTreeMap::new();
        self.snapshots.back().map_or(&NONE, |s| &s.1)
    }

    /// Every operation's requests together.
    pub fn total(&self) -> Aggregate {
        let mut a = Aggregate::default();
        for o in self.ops().values() {
            a.merge(&o.latency);
        }
        a
    }

    /// Bytes every operation carried.
    pub fn bytes(&self) -> u64 {
        self.ops().values().map(|o| o.bytes).sum()
    }

    /// Latency of the operations `ops` says over the last `DISK_WINDOW` snapshots.
    fn recent_of(&self, ops: impl Fn(DiskOp) -> bool) -> Aggregate {
        let mut a = Aggregate::default();
        let Some(last) = self.snapshots.back() else {
            return a;
        };
        let first = self.snapshots.front().filter(|_| self.snapshots.len() > 1);
        for (op, o) in last.1.iter().filter(|(op, _)| ops(**op)) {
            match first.and_then(|f| f.1.get(op)) {
                Some(earlier) => a.merge(&o.latency.since(&earlier.latency)),
                None => a.merge(&o.latency),
            }
        }
        a
    }

    /// Latency over the last `DISK_WINDOW` snapshots, every operation together.
    pub fn recent(&self) -> Aggregate {
        self.recent_of(|_| true)
    }

    /// Latency of one operation over the last `DISK_WINDOW` snapshots.
    pub fn recent_op(&self, op: DiskOp) -> Aggregate {
        self.recent_of(|o| o == op)
    }
}

/// Every disk's latency, keyed by kernel dev_t.
#[derive(Debug, Default)]
pub struct DiskTable {
    disks: BTreeMap<u32, Disk>,
}

impl DiskTable {
    /// A cumulative reading of a disk's operations at `now_ns`.
    pub fn apply(&mut self, dev: u32, name: Option<String>, ops: DiskReading, now_ns: u64) {
        // A disk enters the kernel's map with its first request, after the agent's previous
        // reading: it had none before that, so an empty reading is its window's baseline. (Else
        // requests made before its first reading would never be recent: a first reading and an
        // identical second one, as when a fast disk's only requests end between two harvests
        // and the call that waited on them, gave no recent latency at all.)
        let d = self.disks.entry(dev).or_insert_with(|| Disk {
            dev,
            name: None,
            snapshots: [(now_ns, DiskReading::new())].into(),
        });
        if name.is_some() {
            d.name = name;
        }
        let n = d.snapshots.len();
        if n >= 2 && now_ns.saturating_sub(d.snapshots[n - 2].0) < DISK_STEP_NS {
            d.snapshots.pop_back();
        } else if n > DISK_WINDOW {
            d.snapshots.pop_front();
        }
        d.snapshots.push_back((now_ns, ops));
    }

    /// The disk a file system on `dev` lives on: the same dev_t, else the disk of the same
    /// major with the highest first minor at or below it (a partition's disk).
    pub fn for_dev(&self, dev: u32) -> Option<&Disk> {
        self.disks.get(&dev).or_else(|| {
            self.disks
                .range(..=dev)
                .next_back()
                .map(|(_, d)| d)
                .filter(|d| d.dev >> 20 == dev >> 20)
        })
    }

    /// The disk's p99 request latency over the last seconds (None: no requests then).
    pub fn recent_p99(&self, dev: u32) -> Option<u64> {
        self.for_dev(dev)?.recent().percentile(0.99)
    }

    /// The p99 latency of the disk's requests of operation `op` over the last seconds (None:
    /// none then).
    pub fn recent_op_p99(&self, dev: u32, op: DiskOp) -> Option<u64> {
        self.for_dev(dev)?.recent_op(op).percentile(0.99)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Disk> {
        self.disks.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{RecordKind, TASK_COMM_LEN};

    fn sync_rec(duration_ns: u64) -> SyncRecord {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..2].copy_from_slice(b"pg");
        SyncRecord {
            kind: RecordKind::Sync as u32,
            syscall: SyncSyscall::Fdatasync as u32,
            tgid: 10,
            tid: 11,
            start_mono_ns: 5,
            duration_ns,
            ret: 0,
            arg: 3,
            ino: 12,
            dev: (7 << 20) | 1,
            flags: 0,
            comm,
        }
    }

    #[test]
    fn sync_calls_say_where_the_time_went() {
        let no_fd = SyncRecord {
            arg: observer_common::SYNC_NO_FD,
            ..sync_rec(1)
        };
        assert_eq!(
            SyncCall::from_record(&no_fd).fd(),
            None,
            "io_uring's fsync names no fd"
        );
        let mut c = SyncCall::from_record(&sync_rec(450_000_000));
        assert_eq!(c.fd(), Some(3));
        assert_eq!(
            c.describe(),
            "fdatasync of inode 12 (the process no longer had it open) took 450.0ms"
        );
        c.path = Some("/data/wal".into());
        c.device = Some("loop1".into());
        c.disk_p99_ns = Some(3_000_000);
        assert_eq!(
            c.describe(),
            "fdatasync of /data/wal (loop1) took 450.0ms; the disk's p99 was 3.0ms: the time went to queueing or throttling before the device, or to waiting behind other write-back"
        );
        c.disk_p99_ns = Some(100_000_000);
        assert!(c.describe().ends_with("the disk's p99 was 100.0ms"));
        // Writes and cache flushes apart: the device's share is a write and a flush.
        c.disk_write_p99_ns = Some(2_000_000);
        c.disk_flush_p99_ns = Some(20_000_000);
        assert_eq!(
            c.describe(),
            "fdatasync of /data/wal (loop1) took 450.0ms; the disk's p99 was 2.0ms for writes, 20.0ms for cache flushes: the time went to queueing or throttling before the device, or to waiting behind other write-back"
        );
        c.disk_flush_p99_ns = Some(300_000_000);
        assert!(
            c.describe()
                .ends_with("300.0ms for cache flushes: most of it can be the device's cache flush"),
            "{}",
            c.describe()
        );
        c.disk_flush_p99_ns = Some(100_000_000);
        assert!(
            c.describe().ends_with("100.0ms for cache flushes"),
            "{}",
            c.describe()
        );
        c.disk_flush_p99_ns = None;
        assert!(c.describe().ends_with("the disk's p99 was 2.0ms for writes: the time went to queueing or throttling before the device, or to waiting behind other write-back"));
    }

    #[test]
    fn blocked_reasons_are_described() {
        let mut w = BlockedWhy {
            reason: BlockReason::MajorFault,
            addr: 0x7f00_0000_1000,
            dev: (254 << 20),
            ino: 42,
            pgoff: 3,
            stack_id: None,
            resolved: None,
        };
        assert_eq!(
            w.describe(),
            "major_fault at 0x7f0000001000 in inode 42 on 254:0 (offset 0x3000)"
        );
        // A page offset no kernel writes (found by the ring_records fuzz target) is unknown,
        // not an overflow.
        let huge = BlockedWhy {
            pgoff: u64::MAX / 16,
            ..w.clone()
        };
        assert_eq!(huge.file_offset(), None);
        assert!(huge.describe().ends_with("(offset unknown)"));
        w.resolved = Some("/usr/lib/libx.so".into());
        assert_eq!(
            w.describe(),
            "major_fault at 0x7f0000001000 in /usr/lib/libx.so (offset 0x3000)"
        );
        w.reason = BlockReason::Stack;
        w.resolved = Some("jbd2 commit".into());
        assert_eq!(w.label(), "kernel: jbd2 commit");
    }

    #[test]
    fn a_partition_finds_its_disk_and_the_window_slides() {
        let mut t = DiskTable::default();
        let disk = 254 << 20;
        let mut a = Aggregate::default();
        a.record(900_000_000);
        t.apply(disk, Some("vda".into()), writes(&a), 0);
        for i in 1..=DISK_WINDOW as u64 {
            a.record(1_000_000);
            // A reading between steps replaces the newest instead of shortening the window.
            t.apply(disk, None, writes(&a), i * DISK_STEP_NS - 1);
            t.apply(disk, None, writes(&a), i * DISK_STEP_NS);
        }
        assert_eq!(t.for_dev(disk + 1).unwrap().name.as_deref(), Some("vda"));
        assert!(t.for_dev(253 << 20).is_none());
        // The 900 ms request has left the window; the recent p99 is about 1 ms.
        let p99 = t.recent_p99(disk + 1).unwrap();
        assert!((750_000..=1_048_576).contains(&p99), "{p99}");
        assert_eq!(
            t.for_dev(disk).unwrap().total().count,
            1 + DISK_WINDOW as u64
        );
    }

    /// A disk whose only requests ended before its first reading: the reading at the end of the
    /// call that waited on them still shows their latency (the throttled-fsync test once found
    /// none: a harvest had read the new loop device between its last request and the fsync's end).
    #[test]
    fn requests_before_a_disks_first_reading_are_recent() {
        let mut t = DiskTable::default();
        let disk = 7 << 20;
        let mut a = Aggregate::default();
        a.record(300_000);
        a.record(400_000);
        t.apply(disk, Some("loop0".into()), writes(&a), 5 * DISK_STEP_NS);
        t.apply(disk, None, writes(&a), 5 * DISK_STEP_NS + 200_000_000);
        let p99 = t.recent_p99(disk).expect("the requests are recent");
        assert!((262_144..=524_288).contains(&p99), "{p99}");
        // Nothing new for a whole window: no recent latency.
        for i in 6..=6 + DISK_WINDOW as u64 * 2 {
            t.apply(disk, None, writes(&a), i * DISK_STEP_NS);
        }
        assert_eq!(t.recent_p99(disk), None);
    }

    /// A reading of writes alone, of 4 KiB each.
    fn writes(a: &Aggregate) -> DiskReading {
        [(
            DiskOp::Write,
            DiskOpTotals {
                latency: a.clone(),
                bytes: 4096 * a.count,
            },
        )]
        .into()
    }

    /// The kernel keeps one entry per disk and operation: a disk's reading holds each, its
    /// total and recent latency all of them together.
    #[test]
    fn a_disks_operations_are_read_apart_and_summed() {
        let stats = |values: &[u64], bytes: u64| {
            let mut s = DiskStats::ZERO;
            for &v in values {
                s.latency.total_ns += v;
                s.latency.max_ns = s.latency.max_ns.max(v);
                s.latency.hist[observer_common::hist::bucket(v)] += 1;
            }
            s.bytes = bytes;
            s
        };
        let (vda, loop0) = (254 << 20, 7 << 20);
        let entries = [
            (
                DiskKey {
                    dev: vda,
                    op: DiskOp::Write as u32,
                },
                stats(&[1_000_000, 2_000_000], 8192),
            ),
            (
                DiskKey {
                    dev: vda,
                    op: DiskOp::Flush as u32,
                },
                stats(&[30_000_000], 0),
            ),
            (
                DiskKey {
                    dev: loop0,
                    op: DiskOp::Read as u32,
                },
                stats(&[100_000], 512),
            ),
            (DiskKey { dev: vda, op: 9 }, stats(&[5], 5)),
        ];
        let readings = disk_readings(entries);
        assert_eq!(readings.len(), 2);
        let mut t = DiskTable::default();
        for (dev, r) in readings {
            t.apply(dev, None, r, DISK_STEP_NS);
        }
        let d = t.for_dev(vda).unwrap();
        assert_eq!(
            d.ops().keys().copied().collect::<Vec<_>>(),
            [DiskOp::Write, DiskOp::Flush]
        );
        assert_eq!(d.ops()[&DiskOp::Write].latency.count, 2);
        assert_eq!(d.ops()[&DiskOp::Flush].latency.max_ns, 30_000_000);
        assert_eq!(
            (d.total().count, d.total().total_ns, d.total().max_ns),
            (3, 33_000_000, 30_000_000)
        );
        assert_eq!(d.bytes(), 8192);
        assert_eq!(d.recent().count, 3);
        assert_eq!(t.recent_op_p99(vda, DiskOp::Flush), Some(30_000_000));
        assert_eq!(t.recent_op_p99(vda, DiskOp::Read), None);
        assert_eq!(t.for_dev(loop0).unwrap().bytes(), 512);
        // A window of writes alone: the flush has left the recent flushes, not the totals.
        let mut writes = d.ops()[&DiskOp::Write].clone();
        let flush = d.ops()[&DiskOp::Flush].clone();
        for i in 2..=2 + DISK_WINDOW as u64 {
            writes.latency.record(4_000_000);
            let r: DiskReading = [
                (DiskOp::Write, writes.clone()),
                (DiskOp::Flush, flush.clone()),
            ]
            .into();
            t.apply(vda, None, r, i * DISK_STEP_NS);
        }
        let d = t.for_dev(vda).unwrap();
        assert_eq!(d.recent_op(DiskOp::Flush).count, 0);
        assert_eq!(t.recent_op_p99(vda, DiskOp::Flush), None);
        assert_eq!(d.recent_op(DiskOp::Write).count, DISK_WINDOW as u64);
        assert_eq!(d.total().count, 3 + 1 + DISK_WINDOW as u64);
    }

    #[test]
    fn a_recreated_kernel_entry_is_noticed() {
        let mut a = MemTotals {
            major_file: 5,
            ..Default::default()
        };
        let b = MemTotals {
            major_file: 1,
            ..Default::default()
        };
        assert!(a.reset_by(&b));
        assert!(!b.reset_by(&a));
        a.merge(&b);
        assert_eq!(a.major_file, 6);
    }

    fn thread(tid: u32, minor: u64, major: u64) -> super::ThreadFaults {
        super::ThreadFaults {
            tid,
            comm: format!("t{tid}"),
            minor,
            major,
        }
    }

    #[test]
    fn kept_threads_are_the_most_faulting_with_their_latest_reading() {
        use super::{KEPT_THREADS, merge_thread_faults};
        let mut kept = Vec::new();
        merge_thread_faults(
            &mut kept,
            (1..=20).map(|t| thread(t, 100 + t as u64, 0)).collect(),
        );
        assert_eq!(kept.len(), KEPT_THREADS);
        assert_eq!(
            kept[0].tid, 20,
            "most minor faults first when none is major"
        );
        // Thread 3 now has major faults: it leads, with its new reading; thread 20 exited and
        // keeps its last one.
        merge_thread_faults(&mut kept, vec![thread(3, 103, 7), thread(19, 500, 0)]);
        let tids: Vec<u32> = kept.iter().map(|t| t.tid).collect();
        assert_eq!(tids[..3], [3, 19, 20]);
        assert_eq!((kept[0].minor, kept[0].major), (103, 7));
        assert_eq!(kept.len(), KEPT_THREADS);
        assert!(
            tids.iter().filter(|&&t| t == 3).count() == 1,
            "one entry per thread"
        );
    }
}
