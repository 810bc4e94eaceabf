//! Mapping the kernel's CLOCK_MONOTONIC timestamps to wall-clock time, with its uncertainty.

/// One paired reading of CLOCK_REALTIME and CLOCK_MONOTONIC plus the kernel's error bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns.
    pub offset_ns: i128,
    /// Uncertainty of wall times derived from this reading: the kernel's NTP maxerror plus half
    /// the time the paired reading took.
    pub err_ns: u64,
    /// adjtimex reports the clock as unsynchronised (STA_UNSYNC).
    pub unsynced: bool,
}

/// When adjtimex cannot be read the error is unknown; 16 s is the kernel's own ceiling for
/// maxerror (NTP_PHASE_LIMIT-based, kernel/time/ntp.c v6.18).
const UNKNOWN_ERR_NS: u64 = 16_000_000_000;

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out-pointer; clock_gettime cannot fail for these.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    pub fn sample() -> Self {
        let m1 = now(libc::CLOCK_MONOTONIC);
        let r = now(libc::CLOCK_REALTIME);
        let m2 = now(libc::CLOCK_MONOTONIC);
        // SAFETY: zeroed timex with modes = 0 is a read-only query.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a timex; modes 0 changes nothing and needs no privilege.
        let state = unsafe { libc::adjtimex(&mut tx) };
        let (max_err_ns, unsynced) = if state < 0 {
            (UNKNOWN_ERR_NS, true)
        } else {
            (
                (tx.maxerror.max(0) as u64).saturating_mul(1000),
                tx.status & libc::STA_UNSYNC != 0,
            )
        };
        let half_bracket = ((m2 - m1) / 2).max(0) as u64;
        Self {
            offset_ns: r - (m1 + m2) / 2,
            err_ns: max_err_ns.saturating_add(half_bracket),
            unsynced,
        }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i64 {
        i64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(i64::MAX)
    }

    pub fn mono_now() -> u64 {
        now(libc::CLOCK_MONOTONIC) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_now_to_the_realtime_clock() {
        let c = WallClock::sample();
        let wall = c.wall_ns(WallClock::mono_now());
        let real = now(libc::CLOCK_REALTIME) as i64;
        assert!((real - wall).abs() < 50_000_000, "{real} vs {wall}");
        assert!(c.err_ns > 0);
    }
}
