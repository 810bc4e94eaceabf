//! Periodic reads of the in-kernel aggregates and drop counters, and the freeing of the
//! aggregate slots of processes that are gone (or, when slots run short, quiet).
use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, Queue},
};
use observer_common::{
    Component, CpuSteal, NUM_DROP_CAUSES, ProcMem, ProcStats, STAT_EPISODE, comm_bytes,
};

use super::{
    pending_waits::{Guard, Mapped, Pending, PendingWaits},
    slot_view::SlotView,
};

pub struct Harvester {
    /// Per-process aggregates, one slot each (`ProcStats::tgid` says whose).
    procs: SlotView,
    /// tgid → slot.
    slots: BpfHashMap<MapData, u32, u32>,
    /// Slots the kernel programs may take.
    free: Queue<MapData, u32>,
    mem: BpfHashMap<MapData, u32, ProcMem>,
    drops: PerCpuArray<MapData, u64>,
    cpu_steal: PerCpuArray<MapData, CpuSteal>,
    /// Per process with a slot: its episode count at the last harvest and how many harvests in
    /// a row it has not moved, which picks the slots to free when they run short.
    quiet: HashMap<u32, (u64, u32)>,
    /// Aggregates in use at the last harvest.
    in_use: usize,
    /// The threads' run-queue waits not yet in their aggregates, added to what is read of them.
    pending: PendingWaits,
    guard: Guard,
}

/// Puts every slot of `PROC_STATS` in `FREE_SLOTS`: before the programs attach, so none finds
/// the queue empty.
pub fn fill_free_slots(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let n =
        Array::<_, ProcStats>::try_from(ebpf.map("PROC_STATS").context("map PROC_STATS missing")?)?
            .len();
    let mut free: Queue<_, u32> = Queue::try_from(
        ebpf.map_mut("FREE_SLOTS")
            .context("map FREE_SLOTS missing")?,
    )?;
    for slot in 0..n {
        free.push(slot, 0)
            .with_context(|| format!("filling the free aggregate slots ({slot} of {n})"))?;
    }
    Ok(())
}

/// One read of the kernel's aggregates.
#[derive(Default)]
pub struct Harvest {
    /// Every process whose cumulative stats were read (and handed to the caller as they were
    /// read: a full map's 4,096 copies of 2.7 KiB collected in one vector were 11 MiB).
    pub procs: Vec<u32>,
    /// (tgid, cumulative memory and disk totals).
    pub mem: Vec<(u32, ProcMem)>,
    /// Processes that have exited: read above for the last time, and now deleted in the kernel.
    pub retired: Vec<u32>,
    /// Ring-buffer and aggregate drops per `DropCause`, summed over CPUs.
    pub drops: [u64; NUM_DROP_CAUSES],
}

impl Harvester {
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let procs = SlotView::new(
            ebpf.take_map("PROC_STATS")
                .context("map PROC_STATS missing")?,
        )?;
        let slots = BpfHashMap::try_from(
            ebpf.take_map("PROC_SLOTS")
                .context("map PROC_SLOTS missing")?,
        )?;
        let free = Queue::try_from(
            ebpf.take_map("FREE_SLOTS")
                .context("map FREE_SLOTS missing")?,
        )?;
        let mem = BpfHashMap::try_from(ebpf.take_map("PROC_MEM").context("map PROC_MEM missing")?)?;
        let drops = PerCpuArray::try_from(ebpf.take_map("DROPS").context("map DROPS missing")?)?;
        let cpu_steal = PerCpuArray::try_from(
            ebpf.take_map("CPU_STEAL")
                .context("map CPU_STEAL missing")?,
        )?;
        let pending = PendingWaits::new(ebpf.map("SWITCH_INS").context("map SWITCH_INS missing")?)?;
        Ok(Self {
            procs,
            slots,
            free,
            mem,
            drops,
            cpu_steal,
            quiet: HashMap::new(),
            in_use: 0,
            pending,
            guard: Guard::default(),
        })
    }

    /// The aggregate in `slot` if it is still process `tgid`'s.
    fn read(&self, tgid: u32, slot: u32) -> Option<ProcStats> {
        self.procs.get(slot).filter(|s| s.tgid == tgid)
    }

    /// Process → slot of every aggregate in use: from the slots themselves when the last
    /// harvest found an eighth of them or more in use, else from `PROC_SLOTS` (two system
    /// calls per process, cheaper than mapping every window of the map when few are used).
    fn index(&self) -> HashMap<u32, u32> {
        if self.in_use * 8 >= self.procs.slots() as usize {
            return index_slots(self.procs.tgids().into_iter(), |tgid| {
                self.slots.get(&tgid, 0).ok()
            });
        }
        // Entries can be deleted by the programs (a stale one replaced) while we iterate: a
        // failed lookup of one key is skipped, not fatal.
        self.slots.iter().flatten().collect()
    }

    /// Frees the slot of process `tgid` (read for the last time by the caller): the index entry
    /// goes first, so no program finds the slot through it, then the slot is emptied (a thread
    /// that cached it sees it is no longer its process's) and given back.
    fn release(&mut self, tgid: u32, slot: u32) {
        self.quiet.remove(&tgid);
        if self.slots.get(&tgid, 0).ok() != Some(slot) || self.slots.remove(&tgid).is_err() {
            return;
        }
        self.guard.forget(slot);
        if self.procs.clear(slot) {
            let _ = self.free.push(slot, 0);
        }
    }

    /// The scheduler's steal clock per CPU (index = CPU) at the first and latest context switch
    /// the programs saw; empty when unreadable.
    pub fn steal_clock(&self) -> Vec<CpuSteal> {
        self.cpu_steal
            .get(&0, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Reads the aggregates of process `tgid`, which has exited, one last time and deletes
    /// them; the process is to be retired. A pause aggregate with a later start time is
    /// already the next process's (the pid was reused before the exit record was read: the
    /// kernel counted the exited one's unread rest as a `pid_reuse` drop) and is left alone,
    /// as is then the memory aggregate, whose owner cannot be told.
    pub fn final_read(
        &mut self,
        tgid: u32,
        start_ns: u64,
        mut apply: impl FnMut(u32, &str, &ProcStats),
    ) -> Harvest {
        let mut h = Harvest {
            retired: vec![tgid],
            ..Default::default()
        };
        let slot = self.slots.get(&tgid, 0).ok();
        let stats = slot.and_then(|slot| self.read(tgid, slot));
        if stats.is_some_and(|s| start_ns != 0 && s.start_ns > start_ns) {
            return h;
        }
        if let (Some(stats), Some(slot)) = (stats, slot) {
            // Every thread of an exited process added its pending waits as it exited
            // (`sched_thread_exit`): none is left to read (and mapping the array at every exit
            // of a fork storm would cost far more than the read).
            let settled = settle(&stats, slot, None, &HashMap::new(), &mut self.guard);
            let stats = settled.unwrap_or(stats);
            apply(
                tgid,
                &String::from_utf8_lossy(comm_bytes(&stats.comm)),
                &stats,
            );
            h.procs.push(tgid);
            self.release(tgid, slot);
        }
        if let Ok(m) = self.mem.get(&tgid, 0) {
            h.mem.push((tgid, m));
            let _ = self.mem.remove(&tgid);
        }
        h
    }

    /// Reads every aggregate, handing each process's to `apply` as it is read; the slots of
    /// processes that no longer exist are freed after this final read, and when fewer than an
    /// eighth of the slots are free, those of the processes quiet longest too (their totals are
    /// kept by the caller; a process that pauses again gets a fresh slot, which the process
    /// table folds in as a reset).
    pub fn collect(&mut self, mut apply: impl FnMut(u32, &str, &ProcStats)) -> Harvest {
        let mut h = Harvest::default();
        let index = self.index();
        self.in_use = index.len();
        let mut wanted: Vec<(u32, u32)> = index.iter().map(|(&tgid, &slot)| (slot, tgid)).collect();
        wanted.sort_unstable();
        let mut live: Vec<(u32, u32, u32)> = Vec::with_capacity(index.len());
        let quiet = &mut self.quiet;
        // Unmapped at the end of the harvest. Unmappable (never seen: it was mapped at start),
        // the aggregates are read as the kernel holds them.
        let mapped = self.pending.map().ok();
        let by_slot = mapped.as_ref().map(Mapped::by_slot).unwrap_or_default();
        let guard = &mut self.guard;
        self.procs.read(&wanted, |tgid, slot, stats| {
            let settled = settle(stats, slot, mapped.as_ref(), &by_slot, guard);
            let stats = settled.as_ref().unwrap_or(stats);
            apply(
                tgid,
                &String::from_utf8_lossy(comm_bytes(&stats.comm)),
                stats,
            );
            h.procs.push(tgid);
            // Any episode moves one of these (see ProcStats: pure run-queue waits are counted
            // only in the run-queue component).
            let count = stats.stats[0].count() + stats.stats[STAT_EPISODE].count();
            let q = quiet.entry(tgid).or_insert((count, 0));
            *q = if q.0 == count {
                (count, q.1 + 1)
            } else {
                (count, 0)
            };
            live.push((tgid, slot, q.1));
        });
        h.mem.extend(self.mem.iter().flatten());
        let mut seen: Vec<u32> = h
            .procs
            .iter()
            .copied()
            .chain(h.mem.iter().map(|m| m.0))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for tgid in seen {
            if !exists(tgid) {
                h.retired.push(tgid);
            }
        }
        for tgid in &h.retired {
            if let Some(&slot) = index.get(tgid) {
                self.release(*tgid, slot);
            }
            let _ = self.mem.remove(tgid);
        }
        let retired: std::collections::HashSet<u32> = h.retired.iter().copied().collect();
        live.retain(|(tgid, _, _)| !retired.contains(tgid));
        for (tgid, slot) in slots_to_free(live, self.procs.slots() as usize) {
            self.release(tgid, slot);
        }
        self.quiet.retain(|tgid, _| index.contains_key(tgid));
        for (i, slot) in h.drops.iter_mut().enumerate() {
            if let Ok(values) = self.drops.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        h
    }
}

/// Aggregate `stats` (in `slot`) with the pending waits of its threads added, as
/// `pending_waits` describes; None when that changes nothing.
fn settle(
    stats: &ProcStats,
    slot: u32,
    mapped: Option<&Mapped>,
    by_slot: &HashMap<u32, Vec<u32>>,
    guard: &mut Guard,
) -> Option<ProcStats> {
    // The entries are read again now, after the aggregate was copied.
    let pending = match (mapped, by_slot.get(&slot)) {
        (Some(m), Some(entries)) => m.pending_of(slot, stats.start_ns, entries),
        _ => Pending::default(),
    };
    let runq = &stats.stats[Component::Runq as usize];
    let mut settled = *runq;
    pending.add_to(&mut settled);
    guard.hold(slot, stats.start_ns, &mut settled, !pending.is_empty());
    (settled != *runq).then(|| {
        let mut s = *stats;
        s.stats[Component::Runq as usize] = settled;
        s
    })
}

/// Process → slot from each slot's (slot, tgid), 0 for a free one. A process seen in two
/// slots (for an instant, while a program gives back one it took in a race) gets the one
/// `indexed` names (`PROC_SLOTS`), or none.
fn index_slots(
    slots: impl Iterator<Item = (u32, u32)>,
    indexed: impl Fn(u32) -> Option<u32>,
) -> HashMap<u32, u32> {
    let mut index = HashMap::new();
    let mut twice = Vec::new();
    for (slot, tgid) in slots {
        if tgid != 0 && index.insert(tgid, slot).is_some() {
            twice.push(tgid);
        }
    }
    for tgid in twice {
        match indexed(tgid) {
            Some(slot) => index.insert(tgid, slot),
            None => index.remove(&tgid),
        };
    }
    index
}

/// Whether process `tgid` exists (a zombie still does). Asked of every process with an
/// aggregate at every harvest: a signal 0 is a pid lookup, where a stat of /proc/<tgid> walked
/// the path and was a quarter of the agent's CPU with 5,000 processes (perf record).
fn exists(tgid: u32) -> bool {
    // Not 0: a signal to pid 0 goes to the caller's process group.
    let Ok(pid @ 1..) = i32::try_from(tgid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let signalled = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists, owned by somebody the agent (privileges dropped) may not signal.
    signalled || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Which of the `live` slots (tgid, slot, harvests without a new episode) to free when more
/// than seven eighths of `capacity` are taken: the quietest first, down to three quarters,
/// never one whose process paused since the last harvest.
fn slots_to_free(mut live: Vec<(u32, u32, u32)>, capacity: usize) -> Vec<(u32, u32)> {
    if live.len() * 8 <= capacity * 7 {
        return Vec::new();
    }
    let excess = live.len() - capacity * 3 / 4;
    live.sort_unstable_by_key(|&(tgid, _, quiet)| (std::cmp::Reverse(quiet), tgid));
    live.into_iter()
        .filter(|&(_, _, quiet)| quiet > 0)
        .take(excess)
        .map(|(tgid, slot, _)| (tgid, slot))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{exists, index_slots, slots_to_free};

    #[test]
    fn slots_in_use_are_indexed_by_their_process() {
        let slots = [
            (0, 0),
            (1, 300),
            (2, 0),
            (3, 301),
            (4, 300),
            (5, 302),
            (6, 302),
        ];
        // 300 is in slots 1 and 4, PROC_SLOTS says 4; 302 in 5 and 6, PROC_SLOTS has none.
        let index = index_slots(slots.into_iter(), |tgid| (tgid == 300).then_some(4));
        let mut got: Vec<_> = index.into_iter().collect();
        got.sort_unstable();
        assert_eq!(got, [(300, 4), (301, 3)]);
    }

    #[test]
    fn a_process_exists_until_it_is_reaped() {
        assert!(exists(std::process::id()));
        assert!(!exists(0), "pid 0 would be the caller's process group");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not yet reaped: a zombie still exists, as its /proc entry does.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(exists(pid));
        child.wait().unwrap();
        assert!(!exists(pid) || std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn slots_are_freed_only_when_short_and_quietest_first() {
        let live = |n: u32, quiet: &dyn Fn(u32) -> u32| -> Vec<(u32, u32, u32)> {
            (0..n).map(|i| (1000 + i, i, quiet(i))).collect()
        };
        // 7/8 of 64 taken: nothing to do.
        assert!(slots_to_free(live(56, &|_| 5), 64).is_empty());
        // 60 of 64: down to 48, quietest first.
        let freed = slots_to_free(live(60, &|i| i % 10), 64);
        assert_eq!(freed.len(), 12);
        assert!(freed.iter().all(|&(_, slot)| slot % 10 >= 8), "{freed:?}");
        // Processes that all paused since the last harvest keep their slots.
        assert!(slots_to_free(live(64, &|_| 0), 64).is_empty());
    }
}
