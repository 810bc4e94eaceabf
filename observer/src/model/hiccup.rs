//! Host-wide pauses, from the control sleeper's late wakes.
//!
//! A wake `lateness` after its deadline is split into what the kernel explains and what it
//! does not: the sleeper's own run-queue wait (schedstat run_delay over the sleep), then
//! hypervisor steal on its CPU (an estimate: /proc/stat counts in 10 ms ticks over a window
//! that contains the late interval), then the rest. A rest that is large and most of the
//! lateness is a host freeze: the whole VM stopped (paused, live-migrated, or its host
//! overloaded in a way steal accounting did not see), so every process on the host was paused
//! with it. Growth of CLOCK_BOOTTIME − CLOCK_MONOTONIC is a suspend, during which the monotonic
//! clock itself stood still.
use super::units::fmt_ns;

/// One late wake of the control sleeper, with what the kernel measured around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub woke_mono_ns: u64,
    /// How long after its deadline the sleeper ran.
    pub lateness_ns: u64,
    /// Its run-queue delay over the sleep (schedstat run_delay delta).
    pub runq_ns: u64,
    /// Steal on its CPU over a window containing the sleep (estimate).
    pub steal_ns: u64,
    /// Growth of CLOCK_BOOTTIME − CLOCK_MONOTONIC over the sleep.
    pub suspended_ns: u64,
    pub cpu: u32,
}

/// What a late wake was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The sleeper waited for a CPU: local contention, not a host-wide pause.
    Runq,
    /// The hypervisor ran other guests on this vCPU.
    Steal,
    /// Late by less than a freeze, for reasons the kernel does not account (timer and
    /// interrupt latency).
    Timer,
    /// The whole VM stopped: unexplained by run-queue wait or steal.
    HostFreeze,
    /// The machine was suspended (CLOCK_BOOTTIME ran on while CLOCK_MONOTONIC stood still).
    Suspend,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Runq => "runq",
            Verdict::Steal => "steal",
            Verdict::Timer => "timer",
            Verdict::HostFreeze => "host_freeze",
            Verdict::Suspend => "suspend",
        }
    }

    /// Pauses every process on the host (as opposed to the sleeper's own contention).
    pub fn host_wide(self) -> bool {
        matches!(self, Verdict::HostFreeze | Verdict::Suspend)
    }
}

/// A late wake, split and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPause {
    pub id: u64,
    /// CLOCK_MONOTONIC when the pause began (the missed deadline; for a suspend, the wake,
    /// since the monotonic clock did not move during it).
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    pub runq_ns: u64,
    pub steal_ns: u64,
    pub unexplained_ns: u64,
    pub suspended_ns: u64,
    pub cpu: u32,
    pub verdict: Verdict,
}

impl HostPause {
    /// `freeze_min_ns`: the smallest unexplained lateness called a freeze.
    pub fn judge(id: u64, w: &Wake, freeze_min_ns: u64) -> Self {
        let runq = w.runq_ns.min(w.lateness_ns);
        let steal = w.steal_ns.min(w.lateness_ns - runq);
        let unexplained = w.lateness_ns - runq - steal;
        let verdict = if w.suspended_ns >= freeze_min_ns {
            Verdict::Suspend
        } else if unexplained >= freeze_min_ns && unexplained * 2 >= w.lateness_ns {
            Verdict::HostFreeze
        } else if runq >= steal && runq >= unexplained {
            Verdict::Runq
        } else if steal >= unexplained {
            Verdict::Steal
        } else {
            Verdict::Timer
        };
        let (start, duration) = if verdict == Verdict::Suspend {
            (w.woke_mono_ns, w.suspended_ns)
        } else {
            (w.woke_mono_ns - w.lateness_ns, w.lateness_ns)
        };
        Self {
            id,
            start_mono_ns: start,
            duration_ns: duration,
            runq_ns: runq,
            steal_ns: steal,
            unexplained_ns: unexplained,
            suspended_ns: w.suspended_ns,
            cpu: w.cpu,
            verdict,
        }
    }

    pub fn end_mono_ns(&self) -> u64 {
        self.start_mono_ns + self.duration_ns
    }

    /// "host freeze 2.1 s (runq 1 ms, steal 0 ns, unexplained 2.1 s)"
    pub fn describe(&self) -> String {
        match self.verdict {
            Verdict::Suspend => format!("host suspended {}", fmt_ns(self.suspended_ns)),
            v => format!(
                "{} {} (runq {}, steal {}, unexplained {})",
                match v {
                    Verdict::HostFreeze => "host freeze",
                    _ => "control sleeper late",
                },
                fmt_ns(self.duration_ns),
                fmt_ns(self.runq_ns),
                fmt_ns(self.steal_ns),
                fmt_ns(self.unexplained_ns)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn wake(lateness: u64, runq: u64, steal: u64, suspended: u64) -> Wake {
        Wake {
            woke_mono_ns: 10_000 * MS,
            lateness_ns: lateness,
            runq_ns: runq,
            steal_ns: steal,
            suspended_ns: suspended,
            cpu: 1,
        }
    }

    /// What a 2 s VM pause looks like from inside (a freeze cannot be induced on our machines,
    /// so the inputs are constructed): the sleeper wakes 2,003 ms late with 41 µs of run-queue
    /// wait and no steal (a paused vCPU is not runnable on the host, so KVM accounts no steal
    /// for it).
    #[test]
    fn a_vm_pause_is_a_host_freeze() {
        let p = HostPause::judge(1, &wake(2_003 * MS, 41_000, 0, 0), 5 * MS);
        assert_eq!(p.verdict, Verdict::HostFreeze);
        assert!(p.verdict.host_wide());
        assert_eq!(p.start_mono_ns, 10_000 * MS - 2_003 * MS);
        assert_eq!(p.runq_ns + p.steal_ns + p.unexplained_ns, p.duration_ns);
        assert!(
            p.describe().starts_with("host freeze 2"),
            "{}",
            p.describe()
        );
    }

    #[test]
    fn run_queue_wait_is_never_a_freeze() {
        // A CPU hog on the sleeper's CPU: nearly all of the lateness is run-queue wait.
        let p = HostPause::judge(1, &wake(300 * MS, 299 * MS, 0, 0), 5 * MS);
        assert_eq!(p.verdict, Verdict::Runq);
        assert!(!p.verdict.host_wide());
        // schedstat counting more than the lateness (wait after an earlier wake) is capped.
        let p = HostPause::judge(1, &wake(10 * MS, 12 * MS, 0, 0), 5 * MS);
        assert_eq!((p.runq_ns, p.unexplained_ns), (10 * MS, 0));
        // Half explained, half not: the unexplained rest is not most of it, so not a freeze.
        let p = HostPause::judge(1, &wake(40 * MS, 21 * MS, 0, 0), 5 * MS);
        assert_eq!(p.verdict, Verdict::Runq);
    }

    #[test]
    fn steal_timer_and_suspend() {
        let p = HostPause::judge(1, &wake(30 * MS, MS, 20 * MS, 0), 5 * MS);
        assert_eq!(
            (p.verdict, p.steal_ns, p.unexplained_ns),
            (Verdict::Steal, 20 * MS, 9 * MS)
        );
        // Steal is capped at what run-queue wait left unexplained.
        let p = HostPause::judge(1, &wake(30 * MS, 25 * MS, 20 * MS, 0), 5 * MS);
        assert_eq!((p.steal_ns, p.unexplained_ns), (5 * MS, 0));
        let p = HostPause::judge(1, &wake(6 * MS, 0, 0, 0), 10 * MS);
        assert_eq!(p.verdict, Verdict::Timer);
        let p = HostPause::judge(1, &wake(0, 0, 0, 60_000 * MS), 5 * MS);
        assert_eq!((p.verdict, p.duration_ns), (Verdict::Suspend, 60_000 * MS));
        assert_eq!(p.describe(), "host suspended 60.0s");
    }
}
