//! Durations for people.

/// A duration in the unit that keeps 2–3 significant digits: "850ns", "42µs", "30.0ms",
/// "1.25s", "15.2s", "320s".
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        n if n >= 100_000_000_000 => format!("{:.0}s", n as f64 / 1e9),
        n if n >= 10_000_000_000 => format!("{:.1}s", n as f64 / 1e9),
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}µs", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

/// A duration in at most 6 characters, for table columns: "850ns", "42µs", "1.5ms",
/// "40ms", "900ms", "1.50s", "15.2s", "320s", "5400s".
pub fn fmt_short(ns: u64) -> String {
    match ns {
        n if n >= 10_000_000_000 => fmt_ns(n),
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 10_000_000 => format!("{:.0}ms", n as f64 / 1e6),
        n if n >= 1_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n => fmt_ns(n),
    }
}

#[cfg(test)]
mod tests {
    use super::{fmt_ns, fmt_short};

    #[test]
    fn short_fits_a_column() {
        for (ns, s) in [
            (850, "850ns"),
            (42_000, "42µs"),
            (1_500_000, "1.5ms"),
            (40_000_000, "40ms"),
            (900_000_000, "900ms"),
            (1_500_000_000, "1.50s"),
            (15_200_000_000, "15.2s"),
            (320_000_000_000, "320s"),
        ] {
            assert_eq!(fmt_short(ns), s);
            assert!(s.chars().count() <= 6);
        }
    }

    #[test]
    fn picks_the_unit() {
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(42_000), "42µs");
        assert_eq!(fmt_ns(30_000_000), "30.0ms");
        assert_eq!(fmt_ns(1_250_000_000), "1.25s");
        assert_eq!(fmt_ns(15_200_000_000), "15.2s");
        assert_eq!(fmt_ns(320_000_000_000), "320s");
    }
}
