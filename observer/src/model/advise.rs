//! Timeouts that fit the host: from the pauses observed for a process, the chance that a lease
//! or failure-detector timeout of a given length is exceeded by a pause alone, and the shortest
//! timeout that keeps that chance under a target (DDIA: measure response-time variability
//! instead of fixing timeouts).
//!
//! Up to the longest pause seen, the rate of pauses at least T long is counted from the
//! histogram. Beyond it, nothing was observed, and the tail is extrapolated as a power law
//! (a Pareto tail fitted with the Hill estimator to the longest pauses). Pause tails are heavy;
//! an exponential tail would promise far too much. The chance is per hour of running:
//! 1 − exp(−rate × 1 h).
use observer_common::hist;

use super::{stats::Aggregate, units::fmt_ns};

const HOUR_NS: f64 = 3.6e12;
/// Pauses the tail is fitted to (the longest ones); fewer make the estimate weak.
const TAIL_PAUSES: u64 = 20;
/// The tail exponent is capped: a short history of similar pauses (a CPU hog's time slices)
/// fits a very light tail, which would promise that long pauses never happen. α = 3 is the
/// lightest tail believed.
pub const MAX_ALPHA: f64 = 3.0;
/// The Hill estimate from k tail pauses is about normal with standard error α/√k; the range
/// offered is its 90% interval (± 1.645 standard errors).
const Z90: f64 = 1.645;
/// The heaviest tail the range considers (α below 1: a mean pause length that is infinite).
const MIN_ALPHA: f64 = 0.5;

#[derive(Debug, Clone, PartialEq)]
pub struct TailEstimate {
    /// Pauses observed, of any length.
    pub pauses: u64,
    pub observed_ns: u64,
    pub max_ns: u64,
    /// Tail fit: pauses at least `threshold_ns` long, their rate per ns, and the power.
    pub threshold_ns: u64,
    pub tail_pauses: u64,
    tail_rate_per_ns: f64,
    pub alpha: Option<f64>,
}

/// The geometric middle of a histogram bucket, never above the longest pause seen.
fn bucket_value(i: usize, max_ns: u64) -> f64 {
    let (lo, hi) = hist::bounds(i);
    ((lo.max(1) as f64) * (hi.max(1) as f64))
        .sqrt()
        .min(max_ns as f64)
}

impl TailEstimate {
    /// None without any pause or observation time.
    pub fn new(a: &Aggregate, observed_ns: u64) -> Option<Self> {
        let pauses: u64 = a.hist.iter().sum();
        if pauses == 0 || observed_ns == 0 {
            return None;
        }
        // The threshold: the lower bound of the bucket where the longest TAIL_PAUSES begin.
        let mut above = 0u64;
        let mut first = 0usize;
        for i in (0..hist::BUCKETS).rev() {
            above += a.hist[i];
            first = i;
            if above >= TAIL_PAUSES.min(pauses) {
                break;
            }
        }
        let threshold_ns = hist::bounds(first).0.max(1);
        let tail: Vec<(f64, u64)> = (first..hist::BUCKETS)
            .filter(|&i| a.hist[i] > 0)
            .map(|i| {
                (
                    bucket_value(i, a.max_ns).max(threshold_ns as f64),
                    a.hist[i],
                )
            })
            .collect();
        let log_sum: f64 = tail
            .iter()
            .map(|&(x, c)| c as f64 * (x / threshold_ns as f64).ln())
            .sum();
        // Hill estimator. With fewer than 5 tail pauses, or all of them in one bucket, there
        // is nothing to fit, and no extrapolation is offered.
        let alpha = (tail.len() >= 2 && above >= 5 && log_sum > 0.0)
            .then(|| (above as f64 / log_sum).min(MAX_ALPHA));
        Some(Self {
            pauses,
            observed_ns,
            max_ns: a.max_ns,
            threshold_ns,
            tail_pauses: above,
            tail_rate_per_ns: above as f64 / observed_ns as f64,
            alpha,
        })
    }

    /// Pauses at least `t_ns` long that were seen, per ns of running.
    fn counted(&self, a: &Aggregate, t_ns: u64) -> f64 {
        if t_ns > self.max_ns {
            return 0.0;
        }
        // Every bucket above t's own, plus the part of t's bucket above it.
        let b = hist::bucket(t_ns);
        let (lo, hi) = hist::bounds(b);
        let hi = hi.min(self.max_ns.saturating_add(1)).max(lo + 1);
        let part = a.hist[b] as f64 * (hi.saturating_sub(t_ns)) as f64 / (hi - lo) as f64;
        let beyond: u64 = a.hist[b + 1..].iter().sum();
        (beyond as f64 + part) / self.observed_ns as f64
    }

    /// Pauses at least `t_ns` long, per ns of running: never fewer than were seen, and beyond
    /// the threshold at least what the fitted tail says (None: beyond the longest pause seen
    /// with no tail to extrapolate).
    pub fn rate(&self, a: &Aggregate, t_ns: u64) -> Option<f64> {
        let counted = self.counted(a, t_ns);
        if t_ns < self.threshold_ns {
            return Some(counted);
        }
        match self.alpha {
            Some(alpha) => Some(counted.max(
                self.tail_rate_per_ns * (t_ns as f64 / self.threshold_ns as f64).powf(-alpha),
            )),
            None if t_ns <= self.max_ns => Some(counted),
            None => None,
        }
    }

    /// Chance that at least one pause of `t_ns` or more happens in an hour of running.
    pub fn chance_per_hour(&self, a: &Aggregate, t_ns: u64) -> Option<f64> {
        self.rate(a, t_ns).map(|r| 1.0 - (-r * HOUR_NS).exp())
    }

    /// The shortest timeout whose chance per hour is at most `target` (None: not within what
    /// the history can say). The rate falls as the timeout grows, so bisect on a log scale.
    pub fn shortest_timeout(&self, a: &Aggregate, target: f64) -> Option<u64> {
        let ok = |t: u64| self.chance_per_hour(a, t).is_some_and(|c| c <= target);
        let (mut lo, mut hi) = (1_000u64, 1_000_000_000_000_000u64); // 1 µs .. ~11.6 days
        if ok(lo) {
            return Some(lo);
        }
        if !ok(hi) {
            return None;
        }
        while hi - lo > lo / 1000 + 1 {
            let mid = ((lo as f64) * (hi as f64)).sqrt() as u64;
            let mid = mid.clamp(lo + 1, hi - 1);
            if ok(mid) { hi = mid } else { lo = mid }
        }
        Some(hi)
    }

    /// The 90% interval of the tail's power (heavier tail first), from the number of pauses
    /// it was fitted to. None without a fit.
    pub fn alpha_range(&self) -> Option<(f64, f64)> {
        let a = self.alpha?;
        let se = Z90 / (self.tail_pauses as f64).sqrt();
        Some((
            (a * (1.0 - se)).clamp(MIN_ALPHA, MAX_ALPHA),
            (a * (1.0 + se)).clamp(MIN_ALPHA, MAX_ALPHA),
        ))
    }

    /// The shortest timeout for `target` with the tail's power at either end of its 90%
    /// interval: (with the lighter tail, with the heavier tail). A few tail pauses make the
    /// interval wide, and an extrapolation far beyond the longest pause seen shows it. None in
    /// either place: not within ~11.6 days.
    pub fn shortest_timeout_range(
        &self,
        a: &Aggregate,
        target: f64,
    ) -> Option<(Option<u64>, Option<u64>)> {
        let (heavy, light) = self.alpha_range()?;
        let with = |alpha: f64| {
            Self {
                alpha: Some(alpha),
                ..self.clone()
            }
            .shortest_timeout(a, target)
        };
        Some((with(light), with(heavy)))
    }

    /// The range in words, e.g. "90% range 800ms to 45s", or "90% range 800ms to beyond
    /// 11.6 days: too little history for a firm answer". Empty without a fit.
    pub fn range_words(&self, a: &Aggregate, target: f64) -> String {
        match self.shortest_timeout_range(a, target) {
            None => String::new(),
            Some((lo, hi)) => {
                let end = |t: Option<u64>| t.map_or_else(|| "beyond 11.6 days".into(), fmt_ns);
                let firm = match (lo, hi) {
                    (Some(l), Some(h)) if h <= l.saturating_mul(10) => "",
                    _ => ": too little history for a firm answer",
                };
                format!("90% range {} to {}{firm}", end(lo), end(hi))
            }
        }
    }

    /// How much history the estimate rests on, in words.
    pub fn basis(&self) -> String {
        let weak = if self.tail_pauses < TAIL_PAUSES {
            format!(
                "; only {} pauses in the tail (fewer than {TAIL_PAUSES}): a weak estimate",
                self.tail_pauses
            )
        } else {
            String::new()
        };
        let law = match self.alpha {
            Some(a) if a >= MAX_ALPHA => format!(", power {a:.1} (capped)"),
            Some(a) => format!(", power {a:.2}"),
            None => ", no power-law fit".to_string(),
        };
        format!(
            "{} pauses over {} observed, the longest {}; tail fitted to the {} pauses of at least {}{law}{weak}",
            self.pauses,
            fmt_ns(self.observed_ns),
            fmt_ns(self.max_ns),
            self.tail_pauses,
            fmt_ns(self.threshold_ns),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const HOUR: u64 = 3_600_000_000_000;

    /// Pauses whose length follows a Pareto law with α = 2 from 1 ms: P(X ≥ x) = (x/1ms)^-2.
    fn pareto(n: u64) -> Aggregate {
        let mut a = Aggregate::default();
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            a.record((MS as f64 * u.powf(-0.5)) as u64);
        }
        a
    }

    #[test]
    fn counted_rates_match_the_pauses() {
        let a = pareto(10_000);
        let e = TailEstimate::new(&a, HOUR).unwrap();
        // 10,000 pauses an hour; a quarter of them are at least 2 ms (truth: 2,500).
        let r = e.rate(&a, 2 * MS).unwrap() * HOUR as f64;
        assert!((r - 2_500.0).abs() / 2_500.0 < 0.15, "{r}");
        assert!(e.chance_per_hour(&a, MS).unwrap() > 0.999);
    }

    #[test]
    fn the_tail_is_extrapolated_as_the_law_it_came_from() {
        let a = pareto(10_000);
        let e = TailEstimate::new(&a, HOUR).unwrap();
        let alpha = e.alpha.unwrap();
        assert!((alpha - 2.0).abs() < 0.5, "alpha {alpha}");
        // Truth for 10 s: 10,000 × (10 s / 1 ms)^-2 = 1e-4 per hour.
        let r = e.rate(&a, 10_000 * MS).unwrap() * HOUR as f64;
        assert!(r > 1e-5 && r < 1e-3, "{r}");
        // Rates fall as timeouts grow.
        let mut last = f64::MAX;
        for t in [MS / 2, MS, 10 * MS, 100 * MS, 1_000 * MS, 100_000 * MS] {
            let r = e.rate(&a, t).unwrap();
            assert!(r <= last, "{t}: {r} > {last}");
            last = r;
        }
    }

    #[test]
    fn the_suggested_timeout_meets_the_target() {
        let a = pareto(10_000);
        let e = TailEstimate::new(&a, HOUR).unwrap();
        for target in [1e-2, 1e-6] {
            let t = e.shortest_timeout(&a, target).unwrap();
            let p = e.chance_per_hour(&a, t).unwrap();
            assert!(p <= target * 1.01, "{target}: {t} has {p}");
            let shorter = e.chance_per_hour(&a, t * 9 / 10).unwrap();
            assert!(shorter > target, "{target}: 0.9×{t} still has {shorter}");
        }
        // Truth for 1e-6 per hour: 1 ms × (10,000 / 1e-6)^(1/2) = 100 s.
        let t = e.shortest_timeout(&a, 1e-6).unwrap();
        assert!(t > 20_000 * MS && t < 500_000 * MS, "{}", fmt_ns(t));
        assert!(
            e.basis().contains("10000 pauses over 3600s observed"),
            "{}",
            e.basis()
        );
    }

    /// Many short pauses fit a tail that says little of long ones; a long pause that was seen
    /// still counts as what it is.
    #[test]
    fn never_fewer_than_were_seen() {
        let mut a = Aggregate::default();
        for i in 0..40 {
            a.record(20_000 + i * 3_000);
        }
        a.record(300 * MS);
        let three_s = 3_000 * MS;
        let e = TailEstimate::new(&a, three_s).unwrap();
        // One pause of at least 100 ms every 3 s: 1,200 an hour.
        let per_hour = e.rate(&a, 100 * MS).unwrap() * HOUR as f64;
        assert!(per_hour >= 1_199.0, "{per_hour}");
        assert!(e.shortest_timeout(&a, 1e-6).unwrap() > 300 * MS);
    }

    #[test]
    fn little_history_says_so() {
        let mut a = Aggregate::default();
        a.record(3 * MS);
        a.record(3 * MS);
        let e = TailEstimate::new(&a, HOUR).unwrap();
        assert!(e.basis().contains("a weak estimate"));
        assert_eq!(e.alpha, None, "no spread, no extrapolation");
        assert_eq!(e.shortest_timeout(&a, 1e-6), None);
        assert!(TailEstimate::new(&Aggregate::default(), HOUR).is_none());
    }

    /// A few tail pauses leave the power uncertain: the range says how much, and widens as
    /// the history shrinks; a long history pins the answer down.
    #[test]
    fn the_range_shows_how_much_the_history_can_say() {
        let long = pareto(10_000);
        let e = TailEstimate::new(&long, HOUR).unwrap();
        let (lo, hi) = e.shortest_timeout_range(&long, 1e-6).unwrap();
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        let mid = e.shortest_timeout(&long, 1e-6).unwrap();
        assert!(lo <= mid && mid <= hi, "{lo} {mid} {hi}");
        // 20 tail pauses: α ± 37%; at 1e-6 per hour that is a wide range already.
        assert!(hi > 2 * lo, "{lo} {hi}");

        // Eight pauses in 10 s, a few ms each: extrapolating to 1e-6 per hour is eight orders
        // of magnitude beyond the history.
        let mut few = Aggregate::default();
        for ms in [2, 3, 3, 4, 5, 7, 9, 14] {
            few.record(ms * MS);
        }
        let e = TailEstimate::new(&few, 10_000 * MS).unwrap();
        let words = e.range_words(&few, 1e-6);
        assert!(
            words.contains("too little history for a firm answer"),
            "{words}"
        );
        let (flo, fhi) = e.shortest_timeout_range(&few, 1e-6).unwrap();
        assert!(
            fhi.is_none_or(|h| h > 100 * flo.unwrap()),
            "{flo:?} {fhi:?}"
        );
    }
}
