//! Log-linear histogram buckets shared by the kernel (which counts) and the agent (which reads
//! percentiles back). Two buckets per power of two from 1 µs, so a bucket's width is at most
//! half its lower bound: percentiles interpolated inside a bucket are within ±25 % of the truth,
//! where runqlat-style log2 buckets are only within a factor of two.
//!
//! bucket 0: [0, 1024) ns; bucket 1 + 2·(m − 10) + h: [2^m + h·2^(m−1), 2^m + (h+1)·2^(m−1))
//! for m = ⌊log2 v⌋ ≥ 10; the last bucket also holds everything above it (≈ 18 minutes).

/// Number of buckets.
pub const BUCKETS: usize = 62;

/// Smallest power of two with its own buckets (2^10 ns ≈ 1 µs).
const MIN_SHIFT: u32 = 10;

/// Bucket of a value in nanoseconds. Branch-only (no loop): it runs in the kernel.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    if v < (1 << MIN_SHIFT) {
        return 0;
    }
    let msb = 63 - v.leading_zeros();
    let half = ((v >> (msb - 1)) & 1) as usize;
    let idx = 1 + 2 * (msb - MIN_SHIFT) as usize + half;
    if idx >= BUCKETS { BUCKETS - 1 } else { idx }
}

/// Half-open bounds `[lo, hi)` of a bucket, in nanoseconds. The last bucket's `hi` is its
/// nominal upper edge; values above it are clamped into it.
pub const fn bounds(idx: usize) -> (u64, u64) {
    if idx == 0 {
        return (0, 1 << MIN_SHIFT);
    }
    let k = idx - 1;
    let msb = MIN_SHIFT as usize + k / 2;
    let step = 1u64 << (msb - 1);
    let lo = (1u64 << msb) + (k % 2) as u64 * step;
    (lo, lo + step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_inside_its_bucket() {
        let mut v = 1u64;
        while v < (1u64 << 40) {
            for probe in [v - 1, v, v + 1, v + v / 3] {
                let b = bucket(probe);
                let (lo, hi) = bounds(b);
                assert!(
                    lo <= probe && probe < hi,
                    "{probe} not in bucket {b} [{lo},{hi})"
                );
            }
            v = v * 3 / 2 + 1;
        }
    }

    #[test]
    fn buckets_are_contiguous_and_at_most_half_their_lower_bound_wide() {
        for i in 1..BUCKETS {
            assert_eq!(bounds(i - 1).1, bounds(i).0, "gap before bucket {i}");
            let (lo, hi) = bounds(i);
            assert!((hi - lo) * 2 <= lo, "bucket {i} too wide");
        }
    }

    #[test]
    fn huge_values_clamp_into_the_last_bucket() {
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1023), 0);
        assert_eq!(bucket(1024), 1);
        assert_eq!(bucket(1536), 2);
        assert_eq!(bucket(2048), 3);
    }
}
