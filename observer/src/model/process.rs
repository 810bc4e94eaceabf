//! Per-process view of the in-kernel aggregates, robust to LRU eviction and process exit.
//!
//! The kernel keeps cumulative counters per tgid in an LRU map. The agent reads them every
//! second. An entry can disappear (evicted, or deleted by the agent once the process exited)
//! and be recreated from zero; the table notices the reset and keeps the earlier incarnation in
//! `base`, so totals never go backwards and nothing already counted is lost.
//!
//! A pid can be reused by a new process. The kernel aggregate carries its process's start
//! time, and an entry of an exited process that receives new events belongs to a new one: in
//! both cases the earlier process's entry is set aside whole (`take_departed`) and the new one
//! starts from zero, so nothing of one is charged to the other.
use std::collections::HashMap;

use observer_common::{NUM_STATS, ProcStats, STAT_EPISODE, STAT_STEAL};

use super::{
    episode::Episode,
    gc::GcPause,
    memory::{FaultCounts, MemTotals, ThreadFaults, merge_thread_faults},
    stats::Aggregate,
    stop::{Signal, Stop},
};

#[derive(Debug, Clone, Default)]
pub struct ProcessEntry {
    pub pid: u32,
    pub comm: String,
    /// Earlier incarnations of the kernel entry; allocated only once there was one (most
    /// processes never have their entry recreated), which keeps an entry near 3.5 KiB.
    base: Option<Box<[Aggregate; NUM_STATS]>>,
    base_dropped: u64,
    current: [Aggregate; NUM_STATS],
    current_dropped: u64,
    /// The process is gone; its kernel entry was read one last time and deleted.
    pub exited: bool,
    /// Start time of the process the kernel aggregate belongs to (monotonic ns; 0: not yet
    /// known).
    pub start_ns: u64,
    /// Episodes at or above the threshold that reached the agent.
    pub streamed: u64,
    /// Whole-process stops (one per stop, however many threads), by duration; allocated on
    /// the first.
    stops: Option<Box<Aggregate>>,
    /// Signals generated for the process while observed.
    pub signals: u64,
    /// Runtime stop-the-world pauses (JVM safepoints, Go STW), by duration; allocated on the
    /// first.
    gc: Option<Box<Aggregate>>,
    /// Those of them that collected garbage.
    pub gc_collections: u64,
    /// Memory and disk totals from the kernel (`PROC_MEM`), with the same reset handling as
    /// the pause aggregates.
    mem_base: Option<Box<MemTotals>>,
    mem_current: MemTotals,
    /// The kernel's own minor/major fault counters, as last read from /proc/<pid>/stat.
    pub faults: Option<FaultCounts>,
    /// The same per thread, for the threads that faulted most (`merge_thread_faults`).
    pub thread_faults: Vec<ThreadFaults>,
}

/// What a process that never stopped or ran a runtime shows for those.
static EMPTY: std::sync::LazyLock<Aggregate> = std::sync::LazyLock::new(Aggregate::default);

impl ProcessEntry {
    /// Cumulative aggregate `i` (a `Component` index or `STAT_EPISODE`).
    pub fn stat(&self, i: usize) -> Aggregate {
        let mut a = self.current[i].clone();
        if let Some(b) = &self.base {
            a.merge(&b[i]);
        }
        a
    }

    /// Total paused time of aggregate `i` (what `stat(i).total_ns` says, without copying
    /// histograms: the table's bound compares every entry by it).
    pub fn total_ns(&self, i: usize) -> u64 {
        self.current[i].total_ns + self.base.as_ref().map_or(0, |b| b[i].total_ns)
    }

    /// Whole-process stops (one per stop, however many threads), by duration.
    pub fn stops(&self) -> &Aggregate {
        self.stops.as_deref().unwrap_or(&EMPTY)
    }

    /// Runtime stop-the-world pauses (JVM safepoints, Go STW), by duration.
    pub fn gc(&self) -> &Aggregate {
        self.gc.as_deref().unwrap_or(&EMPTY)
    }

    /// Every pause of the process: thread episodes (of every thread, stops included) and
    /// runtime stop-the-worlds (which thread episodes do not see: the threads wait
    /// voluntarily at the safepoint).
    pub fn pauses(&self) -> Aggregate {
        let mut a = self.stat(STAT_EPISODE);
        a.merge(self.gc());
        a
    }

    /// (episodes + steal samples, blocked ns) so far: grows whenever the process's pause or
    /// steal totals do (steal samples grow without episodes: a busy thread that never waits),
    /// read without copying them (the metrics skip processes whose totals did not grow).
    pub fn growth_marker(&self) -> (u64, u64) {
        let samples = [STAT_EPISODE, STAT_STEAL]
            .iter()
            .map(|&i| self.current[i].count + self.base.as_ref().map_or(0, |b| b[i].count))
            .sum();
        let blocked = self
            .mem_base
            .iter()
            .flat_map(|b| b.blocked.iter())
            .chain(self.mem_current.blocked.iter())
            .map(|b| b.total_ns)
            .sum();
        (samples, blocked)
    }

    /// Episodes at or above the threshold that the kernel could not stream.
    pub fn dropped_records(&self) -> u64 {
        self.base_dropped + self.current_dropped
    }

    /// Cumulative memory and disk totals.
    pub fn mem(&self) -> MemTotals {
        let mut m = self.mem_current.clone();
        if let Some(b) = &self.mem_base {
            m.merge(b);
        }
        m
    }

    fn fold_current_into_base(&mut self) {
        let base = self
            .base
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| Aggregate::default())));
        for (b, c) in base.iter_mut().zip(self.current.iter_mut()) {
            b.merge(c);
            *c = Aggregate::default();
        }
        self.base_dropped += std::mem::take(&mut self.current_dropped);
    }

    fn fold_mem_into_base(&mut self) {
        let old = std::mem::take(&mut self.mem_current);
        self.mem_base.get_or_insert_default().merge(&old);
    }
}

#[derive(Debug)]
pub struct ProcessTable {
    /// Boxed: a map stores its values in its bucket array, which holds up to twice as many
    /// slots as entries and, while it grows, exists twice. Inline 3.5 KiB entries made a full
    /// table of 4,096 cost 43 MiB at its peak (heaptrack, fork storm); boxed, the slots are
    /// 16 bytes and only live entries cost their size.
    entries: HashMap<u32, Box<ProcessEntry>>,
    max_entries: usize,
    /// Processes dropped from the table to stay within `max_entries`.
    pub evicted: u64,
    /// Entries of processes whose pid a new process took over, until the agent reports them.
    departed: Vec<ProcessEntry>,
    /// Pids seen taken over by a new process.
    pub reused_pids: u64,
}

/// Most departed entries kept for the agent between two reads; beyond it they count as
/// evicted (a fork storm through a small pid space).
const MAX_DEPARTED: usize = 1024;

impl ProcessTable {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            evicted: 0,
            departed: Vec::new(),
            reused_pids: 0,
        }
    }

    /// Sets the entry of `pid` aside as departed (its process is gone, a new one has the pid)
    /// and leaves a fresh one in its place.
    fn replace(&mut self, pid: u32) {
        if let Some(old) = self.entries.remove(&pid) {
            self.reused_pids += 1;
            if self.departed.len() < MAX_DEPARTED {
                self.departed.push(ProcessEntry {
                    exited: true,
                    ..*old
                });
            } else {
                self.evicted += 1;
            }
        }
    }

    /// Entries of processes whose pid has since been reused, oldest first, to be reported
    /// now (they are no longer in the table).
    pub fn take_departed(&mut self) -> Vec<ProcessEntry> {
        std::mem::take(&mut self.departed)
    }

    fn entry(&mut self, pid: u32) -> &mut ProcessEntry {
        self.entries.entry(pid).or_insert_with(|| {
            Box::new(ProcessEntry {
                pid,
                ..Default::default()
            })
        })
    }

    /// Applies one cumulative kernel snapshot for `pid`.
    pub fn apply_snapshot(&mut self, pid: u32, comm: &str, s: &ProcStats) {
        if let Some(e) = self.entries.get(&pid) {
            let known = e.start_ns != 0 && s.start_ns != 0;
            // An exited entry gets a snapshot again only when the kernel recreated it: for a
            // new process, unless the start time says it is a late event of the same one.
            if (known && e.start_ns != s.start_ns) || (e.exited && !known) {
                self.replace(pid);
            }
        }
        let e = self.entry(pid);
        if s.start_ns != 0 {
            e.start_ns = s.start_ns;
        }
        let mut fresh: [Aggregate; NUM_STATS] =
            std::array::from_fn(|i| Aggregate::from(&s.stats[i]));
        // The kernel keeps only the episodes that are not pure run-queue waits there.
        fresh[STAT_EPISODE] = Aggregate::from(&s.episodes());
        // Counts only grow while the kernel entry lives: any shrinking means it was recreated
        // since the last read (LRU eviction). A busy process may have only steal samples.
        // An exited process's entry was deleted in the kernel at retirement: one that comes
        // back (a late event of the same process) starts from zero.
        if e.exited
            || [STAT_EPISODE, STAT_STEAL]
                .iter()
                .any(|&i| fresh[i].count < e.current[i].count)
        {
            e.fold_current_into_base();
        }
        e.current = fresh;
        e.current_dropped = s.dropped_records;
        e.exited = false;
        if e.comm.is_empty() || !comm.is_empty() {
            e.comm = comm.to_string();
        }
        self.enforce_bound();
    }

    /// Applies one cumulative `PROC_MEM` snapshot for `pid`, and its /proc fault counters.
    pub fn apply_mem(
        &mut self,
        pid: u32,
        m: &MemTotals,
        faults: Option<FaultCounts>,
        threads: Vec<ThreadFaults>,
    ) {
        if self.entries.get(&pid).is_some_and(|e| e.exited) {
            self.replace(pid);
        }
        let e = self.entry(pid);
        if e.mem_current.reset_by(m) {
            e.fold_mem_into_base();
        }
        e.mem_current = m.clone();
        if faults.is_some() {
            e.faults = faults;
        }
        if !threads.is_empty() {
            merge_thread_faults(&mut e.thread_faults, threads);
        }
        self.enforce_bound();
    }

    /// The process exited and its kernel entry (already applied) was deleted. The last
    /// snapshot stays as it is: a kernel entry recreated later is folded in when it comes.
    pub fn retire(&mut self, pid: u32) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.exited = true;
        }
    }

    /// Applies `update` to the entry of `pid` (created if new, named `comm` if still unnamed)
    /// and keeps the table within its bound.
    fn note(&mut self, pid: u32, comm: &str, update: impl FnOnce(&mut ProcessEntry)) {
        // Events stream in as they happen, long before the process could exit and be retired
        // (a second later at least): an event for a retired pid is from a new process.
        if self.entries.get(&pid).is_some_and(|e| e.exited) {
            self.replace(pid);
        }
        let e = self.entry(pid);
        update(e);
        if e.comm.is_empty() {
            e.comm = comm.to_string();
        }
        self.enforce_bound();
    }

    pub fn note_episode(&mut self, ep: &Episode) {
        self.note(ep.pid, &ep.comm, |e| e.streamed += 1);
    }

    pub fn note_stop(&mut self, stop: &Stop) {
        self.note(stop.pid, &stop.comm, |e| {
            e.stops.get_or_insert_default().record(stop.duration_ns)
        });
    }

    pub fn note_gc(&mut self, g: &GcPause) {
        self.note(g.pid, &g.comm, |e| {
            e.gc.get_or_insert_default().record(g.duration_ns);
            e.gc_collections += u64::from(g.collection);
        });
    }

    pub fn note_signal(&mut self, sig: &Signal) {
        self.note(sig.pid, &sig.comm, |e| e.signals += 1);
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessEntry> {
        self.entries.get(&pid).map(|e| &**e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &ProcessEntry> {
        self.entries.values().map(|e| &**e)
    }

    /// Entries sorted by pid.
    pub fn sorted(&self) -> Vec<&ProcessEntry> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_by_key(|e| e.pid);
        v
    }

    /// Keeps the table bounded on hosts with many short-lived processes: first drops exited
    /// processes with the least paused time, then, if needed, the least paused live ones.
    ///
    /// Finding the least paused entry is a pass over the whole table. On a host with more
    /// live processes than the bound, every harvest adds back hundreds that were let go
    /// (their kernel aggregates live on), and a pass per entry added was half the agent's CPU
    /// samples (`perf record`, 5,000 live processes against the default 4,096). So one pass
    /// lets go of the least paused down to `EVICTION_SLACK` below the bound, and the next is
    /// due only after as many additions.
    fn enforce_bound(&mut self) {
        if self.entries.len() <= self.max_entries {
            return;
        }
        let keep = self.max_entries - self.max_entries / EVICTION_SLACK;
        let excess = self.entries.len() - keep;
        // (still running, paused so far, pid): exited ones first, ties broken by pid.
        let mut order: Vec<(bool, u64, u32)> = self
            .entries
            .values()
            .map(|e| (!e.exited, e.total_ns(STAT_EPISODE), e.pid))
            .collect();
        order.select_nth_unstable(excess - 1);
        for &(_, _, pid) in &order[..excess] {
            self.entries.remove(&pid);
        }
        self.evicted += excess as u64;
    }
}

/// A full table lets go of 1/16 of its bound at once (none below 16 entries).
const EVICTION_SLACK: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::hist;

    fn snap(episodes: u64, total: u64) -> ProcStats {
        // Pure run-queue waits, which the kernel counts only in the run-queue component.
        let mut s = ProcStats::ZERO;
        s.stats[0].total_ns = total;
        s.stats[0].hist[hist::bucket(total / episodes.max(1))] = episodes;
        s
    }

    #[test]
    fn cumulative_snapshots_replace_each_other() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "a", &snap(2, 100));
        t.apply_snapshot(1, "a", &snap(5, 400));
        assert_eq!(t.get(1).unwrap().stat(STAT_EPISODE).total_ns, 400);
    }

    #[test]
    fn an_evicted_kernel_entry_is_not_lost() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "a", &snap(5, 400));
        t.apply_snapshot(1, "a", &snap(1, 30)); // recreated from zero
        let s = t.get(1).unwrap().stat(STAT_EPISODE);
        assert_eq!((s.count, s.total_ns), (6, 430));
        assert_eq!(s.hist.iter().sum::<u64>(), 6);
    }

    #[test]
    fn a_recreated_entry_with_only_steal_is_noticed() {
        let mut t = ProcessTable::new(10);
        let mut a = snap(3, 300);
        a.stats[STAT_STEAL].hist[hist::bucket(10)] = 4;
        a.stats[STAT_STEAL].total_ns = 40;
        t.apply_snapshot(1, "busy", &a);
        // Evicted and recreated: same episode count, fewer steal samples.
        let mut b = snap(3, 300);
        b.stats[STAT_STEAL].hist[hist::bucket(7)] = 1;
        b.stats[STAT_STEAL].total_ns = 7;
        t.apply_snapshot(1, "busy", &b);
        let p = t.get(1).unwrap();
        assert_eq!(
            (p.stat(STAT_STEAL).count, p.stat(STAT_STEAL).total_ns),
            (5, 47)
        );
        assert_eq!(p.growth_marker(), (6 + 5, 0));
    }

    #[test]
    fn memory_totals_survive_recreation_and_exit() {
        let mut t = ProcessTable::new(10);
        let m = |n| MemTotals {
            major_file: n,
            ..Default::default()
        };
        t.apply_mem(
            1,
            &m(5),
            Some(FaultCounts { minor: 9, major: 5 }),
            Vec::new(),
        );
        t.apply_snapshot(1, "a", &snap(0, 0));
        t.apply_mem(1, &m(7), None, Vec::new());
        assert_eq!(t.get(1).unwrap().mem().major_file, 7);
        assert_eq!(
            t.get(1).unwrap().faults,
            Some(FaultCounts { minor: 9, major: 5 })
        );
        t.apply_mem(1, &m(2), None, Vec::new());
        assert_eq!(
            t.get(1).unwrap().mem().major_file,
            9,
            "recreated entry adds to the old one"
        );
        t.retire(1);
        t.apply_mem(1, &m(1), None, Vec::new());
        assert_eq!(
            t.get(1).unwrap().mem().major_file,
            1,
            "after retirement a new aggregate is a new process"
        );
        assert_eq!(t.take_departed()[0].mem().major_file, 9);
    }

    fn started(episodes: u64, total: u64, start_ns: u64) -> ProcStats {
        ProcStats {
            start_ns,
            ..snap(episodes, total)
        }
    }

    /// The table's worst case at the default bound stays within the agent's memory budget
    /// (64 MiB in all, docs/design.md), with room for the rest of the agent.
    ///
    /// Counts what the map really allocates: its bucket array at the capacity it grew to (a
    /// slot per bucket, live or not, plus a control byte), twice while it grows, and each
    /// boxed entry.
    #[test]
    fn a_full_table_fits_the_memory_budget() {
        let mut t = ProcessTable::new(crate::cli::DEFAULT_MAX_PROCESSES as usize);
        // Full to the bound (past it, a pass lets 1/16 go): the most it ever holds.
        for pid in 1..=crate::cli::DEFAULT_MAX_PROCESSES {
            t.apply_snapshot(pid, "p", &started(1, pid as u64, 1));
        }
        assert_eq!(t.len(), crate::cli::DEFAULT_MAX_PROCESSES as usize);
        let slot = std::mem::size_of::<(u32, Box<ProcessEntry>)>() + 1;
        // hashbrown keeps at most 7/8 of its buckets full; `capacity` is that 7/8.
        let buckets = (t.entries.capacity() * 8 / 7).next_power_of_two();
        let full = 2 * buckets * slot + t.len() * std::mem::size_of::<ProcessEntry>();
        eprintln!(
            "{} bytes per entry, {buckets} buckets, {} MiB full",
            std::mem::size_of::<ProcessEntry>(),
            full >> 20
        );
        assert!(full <= 16 << 20, "{full} bytes");
    }

    #[test]
    fn a_late_snapshot_of_a_retired_process_adds_to_it() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "a", &started(5, 400, 77));
        t.retire(1);
        assert!(t.get(1).unwrap().exited);
        assert_eq!(t.get(1).unwrap().stat(STAT_EPISODE).total_ns, 400);
        t.apply_snapshot(1, "a", &started(1, 100, 77));
        assert_eq!(t.get(1).unwrap().stat(STAT_EPISODE).total_ns, 500);
        assert!(t.take_departed().is_empty());
        assert_eq!(t.reused_pids, 0);
    }

    #[test]
    fn a_reused_pid_starts_a_new_entry_and_the_old_one_departs_whole() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "first", &started(5, 400, 77));
        t.retire(1);
        t.apply_snapshot(1, "second", &started(2, 30, 99));
        let e = t.get(1).unwrap();
        assert_eq!((e.comm.as_str(), e.start_ns), ("second", 99));
        assert_eq!(e.stat(STAT_EPISODE).total_ns, 30);
        assert!(!e.exited);
        let gone = t.take_departed();
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].comm.as_str(), gone[0].start_ns), ("first", 77));
        assert_eq!(gone[0].stat(STAT_EPISODE).total_ns, 400);
        assert!(gone[0].exited);
        assert!(t.take_departed().is_empty(), "reported once");
        assert_eq!(t.reused_pids, 1);
    }

    #[test]
    fn reuse_before_retirement_is_told_by_the_start_time() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "first", &started(5, 400, 77));
        // The kernel replaced the entry: smaller counts, another start time.
        t.apply_snapshot(1, "second", &started(1, 10, 99));
        assert_eq!(t.get(1).unwrap().stat(STAT_EPISODE).total_ns, 10);
        assert_eq!(t.take_departed()[0].stat(STAT_EPISODE).total_ns, 400);
    }

    #[test]
    fn a_streamed_event_for_a_retired_pid_belongs_to_a_new_process() {
        let mut t = ProcessTable::new(10);
        t.apply_snapshot(1, "first", &started(5, 400, 77));
        t.retire(1);
        t.note_signal(&Signal {
            ts_mono_ns: 1,
            sig: 15,
            pid: 1,
            tid: 1,
            comm: "second".into(),
            group: true,
            result: 0,
            sender: None,
        });
        let e = t.get(1).unwrap();
        assert_eq!((e.comm.as_str(), e.signals, e.start_ns), ("second", 1, 0));
        assert_eq!(e.stat(STAT_EPISODE).count, 0);
        assert_eq!(t.take_departed()[0].comm, "first");
        // Its first snapshot then only names its start.
        t.apply_snapshot(1, "second", &started(1, 10, 99));
        assert!(t.take_departed().is_empty());
        assert_eq!(t.get(1).unwrap().signals, 1);
    }

    #[test]
    fn bounded_evicting_exited_least_paused_first() {
        let mut t = ProcessTable::new(2);
        t.apply_snapshot(1, "big", &snap(1, 1_000));
        t.apply_snapshot(2, "small-exited", &snap(1, 500));
        t.retire(2);
        t.apply_snapshot(3, "tiny-live", &snap(1, 10));
        assert_eq!(t.len(), 2);
        assert!(
            t.get(2).is_none(),
            "exited process goes first even if it paused more"
        );
        assert_eq!(t.evicted, 1);
        t.apply_snapshot(4, "x", &snap(1, 50));
        assert!(t.get(3).is_none(), "then the least paused live one");
        assert_eq!(t.evicted, 2);
    }

    #[test]
    fn a_full_table_lets_the_least_paused_go_in_batches() {
        let mut t = ProcessTable::new(64);
        // 200 processes, paused for a pseudo-random time each; 7 of them exited.
        let paused = |pid: u32| u64::from(pid.wrapping_mul(2_654_435_761) % 100_000) + 1;
        for pid in 1..=200 {
            t.apply_snapshot(pid, "p", &snap(1, paused(pid)));
            if pid % 29 == 0 {
                t.retire(pid);
            }
            assert!(t.len() <= 64, "over the bound at pid {pid}: {}", t.len());
        }
        assert_eq!(
            t.evicted as usize + t.len(),
            200,
            "every process kept or counted"
        );
        assert!(t.len() >= 60, "a pass lets 64 / 16 go at most: {}", t.len());
        // Which ones: 64 paused 1,000..1,063 ns, then four that paused far more.
        let mut t = ProcessTable::new(64);
        for pid in 1..=64 {
            t.apply_snapshot(pid, "p", &snap(1, 999 + u64::from(pid)));
        }
        for pid in 101..=104 {
            t.apply_snapshot(pid, "p", &snap(1, 1_000_000));
        }
        // The first over the bound made 65: one pass let the five least paused go (down to
        // 60), and the next three fitted.
        assert_eq!((t.len(), t.evicted), (63, 5));
        assert!((1..=5).all(|p| t.get(p).is_none()));
        assert!((6..=64).chain(101..=104).all(|p| t.get(p).is_some()));
        // An exited process is let go before any running one that paused less.
        let mut u = ProcessTable::new(16);
        for pid in 1..=16 {
            u.apply_snapshot(pid, "p", &snap(1, 1_000 + u64::from(pid)));
        }
        u.retire(16);
        u.apply_snapshot(17, "p", &snap(1, 1));
        assert!(u.get(16).is_none(), "the exited one goes first");
        assert_eq!(u.len(), 15, "16 - 16/16");
        assert!(u.get(17).is_none(), "then the least paused running one");
    }
}
