//! Live notice of records the kernel could not stream: when the ring buffer fills (a storm of
//! pauses, or an agent kept off the CPU), the operator hears of it while it happens, not only
//! in the `drops` line at exit. At most one notice per interval, naming the causes that grew.
use observer_common::{DropCause, NUM_DROP_CAUSES};

/// Shortest time between two drop notices.
pub const NOTICE_EVERY_NS: u64 = 10_000_000_000;

#[derive(Debug, Default)]
pub struct DropWatch {
    /// Totals as of the last notice.
    noticed: [u64; NUM_DROP_CAUSES],
    /// When the last notice was given (monotonic ns).
    at_ns: Option<u64>,
}

/// What grew since the last notice: (cause name, new drops), largest first, and their sum.
#[derive(Debug, PartialEq, Eq)]
pub struct NewDrops {
    pub by_cause: Vec<(&'static str, u64)>,
    pub total: u64,
    /// Since when (monotonic ns of the previous notice; None: since the start).
    pub since_ns: Option<u64>,
}

impl DropWatch {
    /// The drops to report now, if the totals grew and the last notice is old enough.
    pub fn due(&mut self, now_ns: u64, totals: &[u64; NUM_DROP_CAUSES]) -> Option<NewDrops> {
        if self
            .at_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < NOTICE_EVERY_NS)
        {
            return None;
        }
        let mut by_cause: Vec<(&'static str, u64)> = DropCause::ALL
            .iter()
            .map(|&c| {
                let i = c as usize;
                (c.name(), totals[i].saturating_sub(self.noticed[i]))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        if by_cause.is_empty() {
            return None;
        }
        by_cause.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let since_ns = self.at_ns.replace(now_ns);
        self.noticed = *totals;
        Some(NewDrops {
            total: by_cause.iter().map(|c| c.1).sum(),
            by_cause,
            since_ns,
        })
    }
}

impl NewDrops {
    /// One line for the operator.
    pub fn message(&self) -> String {
        let causes: Vec<String> = self
            .by_cause
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "the kernel lost {} record(s) ({}){}: its ring buffer or a map was full (a storm of pauses or processes, or this agent kept off the CPU); per-process pause totals are still complete, the details of those records are lost",
            self.total,
            causes.join(", "),
            if self.since_ns.is_some() {
                " since the last notice"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(sched: u64, stop: u64) -> [u64; NUM_DROP_CAUSES] {
        let mut t = [0; NUM_DROP_CAUSES];
        t[DropCause::Sched as usize] = sched;
        t[DropCause::Stop as usize] = stop;
        t
    }

    #[test]
    fn nothing_new_is_never_due() {
        let mut w = DropWatch::default();
        assert_eq!(w.due(1, &totals(0, 0)), None);
    }

    #[test]
    fn growth_is_reported_once_per_interval_with_what_grew() {
        let mut w = DropWatch::default();
        let first = w.due(5, &totals(100, 2)).unwrap();
        assert_eq!(first.by_cause, vec![("sched", 100), ("stop", 2)]);
        assert_eq!((first.total, first.since_ns), (102, None));
        assert!(
            first
                .message()
                .contains("102 record(s) (sched 100, stop 2)")
        );
        // More drops within the interval wait for it to pass...
        assert_eq!(w.due(5 + NOTICE_EVERY_NS - 1, &totals(150, 2)), None);
        // ...and are then reported as the growth since the last notice.
        let next = w.due(5 + NOTICE_EVERY_NS, &totals(150, 2)).unwrap();
        assert_eq!(next.by_cause, vec![("sched", 50)]);
        assert_eq!(next.since_ns, Some(5));
        assert!(next.message().ends_with("lost") && next.message().contains("since the last"));
        // A quiet interval gives no notice.
        assert_eq!(w.due(5 + 3 * NOTICE_EVERY_NS, &totals(150, 2)), None);
    }
}
