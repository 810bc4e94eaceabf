//! Count/total/max and a log-linear histogram for one component, with percentiles.
use observer_common::{ComponentStats, hist};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: [u64; hist::BUCKETS],
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            max_ns: 0,
            hist: [0; hist::BUCKETS],
        }
    }
}

impl From<&ComponentStats> for Aggregate {
    fn from(s: &ComponentStats) -> Self {
        Self {
            count: s.count(),
            total_ns: s.total_ns,
            max_ns: s.max_ns,
            hist: s.hist,
        }
    }
}

impl Aggregate {
    /// An aggregate of `values` (tests).
    #[cfg(test)]
    pub fn of(values: &[u64]) -> Self {
        let mut a = Self::default();
        values.iter().for_each(|&v| a.record(v));
        a
    }

    /// Adds another aggregate (e.g. a previous incarnation of an evicted kernel entry).
    pub fn merge(&mut self, o: &Aggregate) {
        self.count += o.count;
        self.total_ns += o.total_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }

    /// What was added between `earlier` and this later snapshot of the same cumulative
    /// aggregate. Its max is the exact max when that is within the interval's highest bucket,
    /// else that bucket's upper edge (the maximum of an interval is not kept).
    pub fn since(&self, earlier: &Aggregate) -> Aggregate {
        let mut d = Aggregate {
            count: self.count.saturating_sub(earlier.count),
            total_ns: self.total_ns.saturating_sub(earlier.total_ns),
            max_ns: 0,
            hist: [0; hist::BUCKETS],
        };
        for (i, slot) in d.hist.iter_mut().enumerate() {
            *slot = self.hist[i].saturating_sub(earlier.hist[i]);
        }
        if let Some(top) = d.hist.iter().rposition(|&n| n > 0) {
            let (lo, hi) = hist::bounds(top);
            d.max_ns = if (lo..hi).contains(&self.max_ns) {
                self.max_ns
            } else {
                hi.min(self.max_ns)
            };
        }
        d
    }

    /// Records one value (aggregates built in userspace: process stops, fixtures).
    pub fn record(&mut self, v: u64) {
        self.count += 1;
        self.total_ns += v;
        self.max_ns = self.max_ns.max(v);
        self.hist[hist::bucket(v)] += 1;
    }

    /// The q-quantile (0 < q ≤ 1), interpolated linearly inside its bucket and never above
    /// the exact maximum. None when empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let n: u64 = self.hist.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.hist.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let (lo, hi) = hist::bounds(i);
                let frac = (rank - seen) as f64 / c as f64;
                let v = lo as f64 + frac * (hi - lo) as f64;
                return Some((v as u64).min(self.max_ns));
            }
            seen += c;
        }
        Some(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_the_difference_of_two_snapshots() {
        let mut a = Aggregate::default();
        for v in [1_000_000, 2_000_000, 500_000_000] {
            a.record(v);
        }
        let earlier = a.clone();
        a.record(3_000_000);
        let d = a.since(&earlier);
        assert_eq!((d.count, d.total_ns), (1, 3_000_000));
        // The old maximum (500 ms) is outside the interval: the bucket's edge bounds it.
        assert!(
            d.max_ns >= 3_000_000 && d.max_ns < 4_000_000,
            "{}",
            d.max_ns
        );
        assert!(d.percentile(0.99).unwrap() <= d.max_ns);
        assert_eq!(a.since(&a).percentile(0.5), None);
    }

    #[test]
    fn empty_has_no_percentiles() {
        assert_eq!(Aggregate::default().percentile(0.5), None);
    }

    #[test]
    fn single_value_is_every_percentile_up_to_max() {
        let mut a = Aggregate::default();
        a.record(5_000_000);
        for q in [0.01, 0.5, 0.99, 1.0] {
            let p = a.percentile(q).unwrap();
            assert!(p <= 5_000_000 && p * 4 >= 5_000_000 * 3, "q={q}: {p}");
        }
    }

    #[test]
    fn percentiles_are_within_a_quarter_of_the_truth() {
        // 1..=10_000 µs uniformly: the true p50 is 5 ms, p99 is 9.9 ms.
        let mut a = Aggregate::default();
        for us in 1..=10_000u64 {
            a.record(us * 1000);
        }
        for (q, truth) in [
            (0.5, 5_000_000f64),
            (0.99, 9_900_000f64),
            (0.1, 1_000_000f64),
        ] {
            let p = a.percentile(q).unwrap() as f64;
            assert!((p - truth).abs() / truth < 0.25, "q={q}: {p} vs {truth}");
        }
        assert_eq!(a.percentile(1.0), Some(10_000_000));
        assert_eq!(a.total_ns, (1..=10_000u64).sum::<u64>() * 1000);
    }

    #[test]
    fn merge_adds_counts_and_keeps_max() {
        let mut a = Aggregate::default();
        a.record(10);
        let mut b = Aggregate::default();
        b.record(7_000);
        b.record(3_000);
        a.merge(&b);
        assert_eq!((a.count, a.total_ns, a.max_ns), (3, 10_010, 7_000));
        assert_eq!(a.hist.iter().sum::<u64>(), 3);
    }
}
