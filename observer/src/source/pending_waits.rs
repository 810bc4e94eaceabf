//! The pure run-queue waits the kernel holds per thread before adding them to its process's
//! aggregate (`observer_common::SwitchIn`, up to `PENDING_WAITS` each): read through a mapping
//! of `SWITCH_INS` at each harvest and added to what the harvest reads of the aggregates, so
//! that the agent's totals are the kernel's, not a batch behind.
//!
//! Read so that no wait is counted twice: a slot's aggregate is copied first and its threads'
//! entries read again after it, so a flush between the two leaves its waits out of both, never
//! in both. A wait left out that way is counted at the next harvest; meanwhile `Guard` keeps
//! what is reported for the slot from going down, which the process table would take for a new
//! aggregate (and count what it had twice).
use std::{collections::HashMap, os::fd::OwnedFd};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData};
use observer_common::{ComponentStats, SwitchIn, agg_start_tag, hist};

use super::slot_view::{Window, array_fd};

/// `SWITCH_INS`, to be mapped whole for one harvest.
pub struct PendingWaits {
    fd: OwnedFd,
    entries: u32,
}

impl PendingWaits {
    pub fn new(map: &Map) -> anyhow::Result<Self> {
        let fd = array_fd(map, "SWITCH_INS")?;
        let entries = Array::<&MapData, SwitchIn>::try_from(map)?.len();
        let view = Self { fd, entries };
        // Once now, so that a kernel that cannot map it says so at start.
        view.map().context(
            "mapping the kernel's switch-in entries (SWITCH_INS is created mmapable, which Linux \
             supports since 5.5)",
        )?;
        Ok(view)
    }

    /// The whole array, mapped for as long as the result lives: 64 bytes per possible tid (2 MiB
    /// with the default pid_max of 32,768, 8 MiB at most), in the agent's RSS only meanwhile.
    pub fn map(&self) -> std::io::Result<Mapped> {
        Ok(Mapped {
            window: Window::map(&self.fd, 0, self.entries)?,
            entries: self.entries,
        })
    }
}

/// `SWITCH_INS` mapped.
pub struct Mapped {
    window: Window<SwitchIn>,
    entries: u32,
}

impl Mapped {
    /// Entry `i` as one thread left it (its check word matches), or None when it is nobody's
    /// or keeps changing under the read.
    fn whole(&self, i: u32) -> Option<SwitchIn> {
        // A read that races the kernel's write of the entry fails the check: read again.
        (0..3).map(|_| self.window.get(i)).find(SwitchIn::is_whole)
    }

    /// Aggregate slot → the entries holding pending waits for it.
    pub fn by_slot(&self) -> HashMap<u32, Vec<u32>> {
        let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
        for i in 0..self.entries {
            // The cheap test first: most entries hold nothing (or nobody).
            if self.window.get(i).pending == 0 {
                continue;
            }
            if let Some(e) = self.whole(i).filter(|e| e.pending > 0 && e.agg_slot > 0) {
                out.entry(e.agg_slot - 1).or_default().push(i);
            }
        }
        out
    }

    /// The pending waits, now, of `entries` that are still counted for aggregate `slot` of the
    /// process started at `start_ns`.
    pub fn pending_of(&self, slot: u32, start_ns: u64, entries: &[u32]) -> Pending {
        let mut p = Pending::default();
        for &i in entries {
            if let Some(e) = self.whole(i) {
                p.add(&e, slot, start_ns);
            }
        }
        p
    }
}

/// Pending waits of one aggregate's threads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: Vec<(usize, u64)>,
}

impl Pending {
    /// Adds entry `e`'s pending waits if they are counted for aggregate `slot` (started at
    /// `start_ns`).
    pub fn add(&mut self, e: &SwitchIn, slot: u32, start_ns: u64) {
        if e.agg_slot != slot + 1 || e.agg_start != agg_start_tag(start_ns) {
            return;
        }
        let n = (e.pending as usize).min(e.pending_buckets.len());
        self.waits += n as u64;
        self.total_ns += e.pending_ns;
        self.max_ns = self.max_ns.max(u64::from(e.pending_max_ns));
        for &b in &e.pending_buckets[..n] {
            let b = usize::from(b).min(hist::BUCKETS - 1);
            match self.hist.iter_mut().find(|(bucket, _)| *bucket == b) {
                Some((_, count)) => *count += 1,
                None => self.hist.push((b, 1)),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waits == 0
    }

    /// Adds these waits to a run-queue component read from the kernel.
    pub fn add_to(&self, s: &mut ComponentStats) {
        s.total_ns += self.total_ns;
        s.max_ns = s.max_ns.max(self.max_ns);
        for &(b, n) in &self.hist {
            s.hist[b] += n;
        }
    }
}

/// What was last reported of the run-queue component of aggregates that had pending waits, so
/// that a harvest that left some out (a flush between the two reads) reports no less.
#[derive(Default)]
pub struct Guard {
    last: HashMap<u32, (u64, ComponentStats)>,
}

impl Guard {
    /// `s`, the run-queue component now of aggregate `slot` (started at `start_ns`) with its
    /// pending waits added, raised to what was reported before wherever it is below; kept for
    /// the next harvest while the slot has pending waits or was raised.
    pub fn hold(&mut self, slot: u32, start_ns: u64, s: &mut ComponentStats, pending: bool) {
        let mut raised = false;
        if let Some((start, last)) = self.last.get(&slot)
            && *start == start_ns
        {
            raised = raise(s, last);
        }
        if pending || raised {
            self.last.insert(slot, (start_ns, *s));
        } else {
            self.last.remove(&slot);
        }
    }

    /// The slot was freed: what comes in it next is a new aggregate.
    pub fn forget(&mut self, slot: u32) {
        self.last.remove(&slot);
    }
}

/// Raises every counter of `s` to `floor`'s where it is below; whether any was.
fn raise(s: &mut ComponentStats, floor: &ComponentStats) -> bool {
    let mut raised = false;
    let mut up = |v: &mut u64, f: u64| {
        if *v < f {
            *v = f;
            raised = true;
        }
    };
    up(&mut s.total_ns, floor.total_ns);
    up(&mut s.max_ns, floor.max_ns);
    for (v, &f) in s.hist.iter_mut().zip(&floor.hist) {
        up(v, f);
    }
    raised
}

#[cfg(test)]
mod tests {
    use observer_common::{PENDING_WAITS, hist};

    use super::*;

    fn entry(tid: u32, slot: u32, start: u64, waits: &[u64]) -> SwitchIn {
        let mut e = SwitchIn {
            tid,
            agg_slot: slot + 1,
            agg_start: agg_start_tag(start),
            run_delay_ns: 5_000,
            ..Default::default()
        };
        for (i, &w) in waits.iter().enumerate() {
            e.pending_buckets[i] = hist::bucket(w) as u8;
            e.pending_ns += w;
            e.pending_max_ns = e.pending_max_ns.max(w as u32);
        }
        e.pending = waits.len() as u8;
        e.check = SwitchIn::check_of(e.tid, e.run_delay_ns, e.pending_ns, e.pending);
        e
    }

    #[test]
    fn pending_waits_add_to_their_own_aggregate_only() {
        let mut p = Pending::default();
        p.add(&entry(10, 3, 777, &[2_000, 2_040, 900_000]), 3, 777);
        p.add(&entry(11, 3, 777, &[5_000]), 3, 777);
        // Another slot, or the same slot given to a later process: not these.
        p.add(&entry(12, 4, 777, &[1_000_000]), 3, 777);
        p.add(&entry(13, 3, 778, &[1_000_000]), 3, 777);
        assert_eq!(
            (p.waits, p.total_ns, p.max_ns),
            (4, 2_000 + 2_040 + 900_000 + 5_000, 900_000)
        );
        let mut s = ComponentStats::ZERO;
        s.total_ns = 1_000;
        s.max_ns = 1_000_000;
        s.hist[0] = 1;
        p.add_to(&mut s);
        assert_eq!(s.count(), 5);
        assert_eq!(s.total_ns, 1_000 + p.total_ns);
        assert_eq!(s.max_ns, 1_000_000);
        // 2,000 and 2,040 share a bucket.
        assert_eq!(s.hist[hist::bucket(2_000)], 2);
        assert_eq!(s.hist[hist::bucket(900_000)], 1);
    }

    #[test]
    fn a_full_list_is_read_whole_and_a_longer_count_is_cut_to_it() {
        let waits = [3_000u64; PENDING_WAITS];
        let mut e = entry(10, 0, 1, &waits);
        let mut p = Pending::default();
        p.add(&e, 0, 1);
        assert_eq!(p.waits, PENDING_WAITS as u64);
        e.pending = 200;
        let mut q = Pending::default();
        q.add(&e, 0, 1);
        assert_eq!(q.waits, PENDING_WAITS as u64);
    }

    #[test]
    fn what_is_reported_never_goes_down_while_waits_are_pending() {
        let mut g = Guard::default();
        let with = |total: u64, n: u64| {
            let mut s = ComponentStats::ZERO;
            s.total_ns = total;
            s.hist[5] = n;
            s
        };
        // Harvest 1: 10 waits, 4 of them pending.
        let mut s = with(1_000, 10);
        g.hold(7, 42, &mut s, true);
        assert_eq!(s, with(1_000, 10));
        // Harvest 2: the 4 were flushed between the aggregate's read and the entry's: left out.
        let mut s = with(600, 6);
        g.hold(7, 42, &mut s, false);
        assert_eq!(s, with(1_000, 10), "held at what was reported");
        // Harvest 3: read whole again, and more: no longer held.
        let mut s = with(1_200, 12);
        g.hold(7, 42, &mut s, false);
        assert_eq!(s, with(1_200, 12));
        let mut s = with(0, 0);
        g.hold(7, 42, &mut s, false);
        assert_eq!(
            s,
            with(0, 0),
            "nothing kept once nothing was pending or raised"
        );
        // A slot given to another process, or freed, starts afresh.
        let mut s = with(1_000, 10);
        g.hold(8, 42, &mut s, true);
        let mut s = with(10, 1);
        g.hold(8, 43, &mut s, false);
        assert_eq!(s, with(10, 1));
        let mut s = with(1_000, 10);
        g.hold(9, 42, &mut s, true);
        g.forget(9);
        let mut s = with(10, 1);
        g.hold(9, 42, &mut s, false);
        assert_eq!(s, with(10, 1));
    }
}
