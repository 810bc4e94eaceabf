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
    /// The kernel's NTP state at the reading (all zeros when adjtimex failed).
    pub sync: SyncState,
}

/// The kernel's clock discipline, from read-only adjtimex calls (kernel/time/ntp.c, v6.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncState {
    /// adjtimex's return value: TIME_OK 0, TIME_INS 1, TIME_DEL 2, TIME_OOP 3, TIME_WAIT 4,
    /// TIME_ERROR 5 (the clock is not synchronised).
    pub state: i32,
    /// `timex.status` (STA_* bits).
    pub status: i32,
    /// Offset the PLL/FLL is still slewing away (ADJ_OFFSET), ns.
    pub pll_offset_ns: i64,
    /// What an old-style adjtime(3) slew still has to go, ns.
    pub adjtime_left_ns: i64,
    /// Frequency correction, ppm with a 16-bit fraction.
    pub freq_scaled_ppm: i64,
    pub maxerror_ns: u64,
    pub esterror_ns: u64,
    /// TAI − UTC, s.
    pub tai_s: i32,
}

const STA_INS: i32 = 0x0010;
const STA_DEL: i32 = 0x0020;
const STA_UNSYNC: i32 = 0x0040;
const STA_NANO: i32 = 0x2000;
const TIME_ERROR: i32 = 5;
/// adjtimex modes that only read the remaining adjtime(3) slew.
const ADJ_OFFSET_SS_READ: u32 = 0xa001;

impl SyncState {
    pub fn synced(&self) -> bool {
        self.status & STA_UNSYNC == 0 && self.state != TIME_ERROR
    }

    pub fn freq_ppm(&self) -> f64 {
        self.freq_scaled_ppm as f64 / 65536.0
    }

    /// A leap second the kernel will insert or delete at the next midnight UTC.
    pub fn leap(&self) -> &'static str {
        if self.status & STA_INS != 0 {
            "insert"
        } else if self.status & STA_DEL != 0 {
            "delete"
        } else {
            "none"
        }
    }

    pub fn slewing(&self) -> bool {
        self.pll_offset_ns != 0 || self.adjtime_left_ns != 0
    }

    pub fn nano(&self) -> bool {
        self.status & STA_NANO != 0
    }

    /// What an operator watches change: sync, leap flags, slewing or not.
    pub fn headline(&self) -> (bool, &'static str, bool) {
        (self.synced(), self.leap(), self.slewing())
    }

    fn read() -> Option<Self> {
        // SAFETY: zeroed timex with modes = 0 is a read-only query.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a timex; modes 0 changes nothing and needs no privilege.
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        let unit = if tx.status & STA_NANO != 0 { 1 } else { 1000 };
        // SAFETY: as above; ADJ_OFFSET_SS_READ only reads the remaining adjtime(3) offset.
        let mut ss: libc::timex = unsafe { std::mem::zeroed() };
        ss.modes = ADJ_OFFSET_SS_READ;
        // SAFETY: valid pointer; a read-only mode that needs no privilege.
        let left_us = if unsafe { libc::adjtimex(&mut ss) } >= 0 {
            ss.offset
        } else {
            0
        };
        Some(Self {
            state,
            status: tx.status,
            pll_offset_ns: tx.offset.saturating_mul(unit),
            adjtime_left_ns: left_us.saturating_mul(1000),
            freq_scaled_ppm: tx.freq,
            maxerror_ns: (tx.maxerror.max(0) as u64).saturating_mul(1000),
            esterror_ns: (tx.esterror.max(0) as u64).saturating_mul(1000),
            tai_s: tx.tai,
        })
    }
}

/// When adjtimex cannot be read the error is unknown; 16 s is the kernel's own ceiling for
/// maxerror (NTP_PHASE_LIMIT-based, kernel/time/ntp.c v6.18).
const UNKNOWN_ERR_NS: u64 = 16_000_000_000;

/// A clock's current reading in ns.
pub(crate) fn now(clock: libc::clockid_t) -> i128 {
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
        let sync = SyncState::read();
        let (max_err_ns, unsynced) = match &sync {
            None => (UNKNOWN_ERR_NS, true),
            Some(s) => (s.maxerror_ns, !s.synced()),
        };
        let half_bracket = ((m2 - m1) / 2).max(0) as u64;
        Self {
            offset_ns: r - (m1 + m2) / 2,
            err_ns: max_err_ns.saturating_add(half_bracket),
            unsynced,
            sync: sync.unwrap_or_default(),
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
