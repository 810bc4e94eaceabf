//! What each process did in the last window (the live view's "now" columns): pauses per second,
//! their p99 and max, and their total per cause, as differences of the cumulative kernel
//! aggregates read at the start and the end of the window.
//!
//! Windows are fixed (`period`), like top's refresh: every `period` the figures of the window
//! that just ended replace the previous ones, and a snapshot of every process starts the next.
//! Memory: one snapshot (aggregate per cause) and one small result per process in the table.
use std::collections::HashMap;

use super::stats::Aggregate;

/// Causes tracked per window: the kernel's thread components, then runtime stop-the-world.
pub const CAUSES: usize = observer_common::NUM_COMPONENTS + 1;
/// Index of `gc` among the window's causes.
pub const GC: usize = observer_common::NUM_COMPONENTS;

/// A process's cumulative aggregates at one moment: every pause, and each cause.
#[derive(Debug, Clone, Default)]
pub struct Cumulative {
    pub pauses: Aggregate,
    pub causes: [Aggregate; CAUSES],
}

/// One process's last complete window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub pauses: u64,
    pub per_s: f64,
    /// None: no pause in the window.
    pub p99_ns: Option<u64>,
    /// Exact when the window's largest pause is in the same histogram bucket as the
    /// process's largest ever, else that bucket's upper edge.
    pub max_ns: u64,
    pub cause_ns: [u64; CAUSES],
}

#[derive(Debug)]
pub struct Windows {
    period_ns: u64,
    started_ns: Option<u64>,
    /// Length of the last complete window (the first may be shorter than a period).
    last_len_ns: u64,
    snapshots: HashMap<u32, Cumulative>,
    last: HashMap<u32, WindowStats>,
}

impl Windows {
    pub fn new(period_ns: u64) -> Self {
        Self {
            period_ns: period_ns.max(1),
            started_ns: None,
            last_len_ns: 0,
            snapshots: HashMap::new(),
            last: HashMap::new(),
        }
    }

    /// Length of the window the figures are about (0 before the first one ended).
    pub fn last_len_ns(&self) -> u64 {
        self.last_len_ns
    }

    /// True when a window ends at `now` (call `roll` then).
    pub fn due(&self, now_ns: u64) -> bool {
        self.started_ns
            .is_none_or(|s| now_ns.saturating_sub(s) >= self.period_ns)
    }

    /// Ends the current window at `now` with every process's cumulative figures and starts
    /// the next. A process that was not in the previous snapshot counts from zero (it is new,
    /// or its pauses began in this window); processes no longer listed are forgotten.
    pub fn roll(&mut self, now_ns: u64, procs: impl Iterator<Item = (u32, Cumulative)>) {
        let len = self.started_ns.map_or(0, |s| now_ns.saturating_sub(s));
        let mut next = HashMap::with_capacity(self.snapshots.len());
        let mut last = HashMap::with_capacity(self.snapshots.len());
        let empty = Cumulative::default();
        for (pid, now) in procs {
            if self.started_ns.is_some() {
                let before = self.snapshots.get(&pid).unwrap_or(&empty);
                let d = now.pauses.since(&before.pauses);
                if d.count > 0 {
                    last.insert(
                        pid,
                        WindowStats {
                            pauses: d.count,
                            per_s: if len == 0 {
                                0.0
                            } else {
                                d.count as f64 * 1e9 / len as f64
                            },
                            p99_ns: d.percentile(0.99),
                            max_ns: d.max_ns,
                            cause_ns: std::array::from_fn(|i| {
                                now.causes[i]
                                    .total_ns
                                    .saturating_sub(before.causes[i].total_ns)
                            }),
                        },
                    );
                }
            }
            next.insert(pid, now);
        }
        self.snapshots = next;
        self.last = last;
        self.last_len_ns = len;
        self.started_ns = Some(now_ns);
    }

    /// The last complete window of a process (None: it did not pause in it).
    pub fn of(&self, pid: u32) -> Option<&WindowStats> {
        self.last.get(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cum(values: &[u64], gc: &[u64]) -> Cumulative {
        let mut c = Cumulative::default();
        for &v in values {
            c.pauses.record(v);
            c.causes[0].record(v);
        }
        for &v in gc {
            c.pauses.record(v);
            c.causes[GC].record(v);
        }
        c
    }

    #[test]
    fn a_window_holds_what_was_added_in_it() {
        let mut w = Windows::new(10_000_000_000);
        assert!(w.due(0));
        w.roll(0, [(1, cum(&[500_000_000], &[]))].into_iter());
        assert_eq!(w.of(1), None, "the first roll only starts a window");
        assert!(!w.due(9_999_999_999) && w.due(10_000_000_000));
        w.roll(
            10_000_000_000,
            [
                (1, cum(&[500_000_000, 2_000_000, 3_000_000], &[7_000_000])),
                (2, cum(&[1_000_000], &[])),
                (3, cum(&[], &[])),
            ]
            .into_iter(),
        );
        let a = w.of(1).unwrap();
        assert_eq!(a.pauses, 3);
        assert!((a.per_s - 0.3).abs() < 1e-9, "{}", a.per_s);
        assert_eq!(a.cause_ns[0], 5_000_000);
        assert_eq!(a.cause_ns[GC], 7_000_000);
        // The 500 ms pause was before the window: the max is the upper edge of 7 ms's bucket.
        let (_, edge) = observer_common::hist::bounds(observer_common::hist::bucket(7_000_000));
        assert_eq!(a.max_ns, edge);
        assert!(a.p99_ns.unwrap() <= a.max_ns);
        // A process first seen in this window counts from zero.
        assert_eq!(w.of(2).unwrap().pauses, 1);
        assert_eq!(w.of(3), None, "no pause, no figures");
        assert_eq!(w.last_len_ns(), 10_000_000_000);
        // Gone from the table: forgotten.
        w.roll(20_000_000_000, std::iter::empty());
        assert_eq!(w.of(1), None);
    }
}
