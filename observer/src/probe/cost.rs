//! pausewatch's own cost, from the kernel's BPF run-time statistics.
//!
//! While the statistics are on, every BPF program on the host (not only ours) pays two clock
//! reads per run, about 70 ns on our VMs: more than half of what `sched_switch` costs. So by
//! default pausewatch turns them on for one second a minute (`StatsSampler`), which measures
//! the mean cost per run at a sixtieth of the overhead; `--bpf-stats` keeps them on throughout.
//! The kernel's counters grow only while the statistics are on, so means from them are means
//! over the sampled seconds.

/// When the kernel's BPF run-time statistics are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsMode {
    Off,
    /// On for one second every so many (`StatsSampler`).
    Sampled,
    /// On from start to exit (`--bpf-stats`).
    Continuous,
}

impl StatsMode {
    pub fn name(self) -> &'static str {
        match self {
            StatsMode::Off => "off",
            StatsMode::Sampled => "sampled",
            StatsMode::Continuous => "continuous",
        }
    }
}

/// Which of the agent's once-a-second ticks turn the statistics on and off: on at tick
/// `first`, then every `every` ticks, each time off again one tick later.
#[derive(Debug, Clone, Copy)]
pub struct StatsSampler {
    pub first: u64,
    pub every: u64,
}

impl StatsSampler {
    /// Some(true): turn them on at this tick; Some(false): off; None: leave them.
    pub fn at(&self, tick: u64) -> Option<bool> {
        let every = self.every.max(2);
        let since = tick.checked_sub(self.first)?;
        match since % every {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        }
    }
}

/// Run-time statistics of one program since it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn mean_ns(&self) -> Option<u64> {
        self.run_time_ns.checked_div(self.run_count)
    }
}

/// The empty calibration program (tp_btf and raw_tp builds), attached to sched_switch next to
/// the scheduler programs when statistics are on.
pub const STATS_FLOOR: (&str, &str) = ("stats_floor_btf", "stats_floor_raw");

/// Empty programs on the other hot hooks (tp_btf only): (empty program, its tracepoint, the
/// program it calibrates). An empty program on a program's own hook is its floor.
pub const HOOK_FLOORS: [(&str, &str, &str); 2] = [
    ("stats_floor_wakeup", "sched_wakeup", "sched_wakeup_btf"),
    ("stats_floor_fault", "page_fault_user", "page_fault_user"),
];

pub fn is_stats_floor(name: &str) -> bool {
    name == STATS_FLOOR.0 || name == STATS_FLOOR.1 || HOOK_FLOORS.iter().any(|f| f.0 == name)
}

/// The floor for `program`: the empty program on its own hook when there is one, else the
/// one on sched_switch (the statistics' overhead does not depend on the hook: they time the
/// program's body).
pub fn floor_for(costs: &[ProgramCost], program: &str) -> Option<u64> {
    HOOK_FLOORS
        .iter()
        .find(|f| f.2 == program)
        .and_then(|f| costs.iter().find(|c| c.name == f.0))
        .and_then(ProgramCost::mean_ns)
        .or_else(|| stats_floor_ns(costs))
}

/// Mean run time of the calibration program: the statistics' own overhead per run (they time
/// each run with sched_clock() around it).
pub fn stats_floor_ns(costs: &[ProgramCost]) -> Option<u64> {
    costs
        .iter()
        .find(|c| is_stats_floor(c.name))
        .and_then(ProgramCost::mean_ns)
}

/// Mean cost per run over pausewatch's real programs, net of the statistics' overhead when it
/// was measured.
pub fn mean_net_ns(costs: &[ProgramCost]) -> Option<u64> {
    let (n, t) =
        costs
            .iter()
            .filter(|c| !is_stats_floor(c.name))
            .fold((0u64, 0u64), |(n, t), c| {
                let floor = floor_for(costs, c.name).unwrap_or(0);
                (
                    n + c.run_count,
                    t + c.run_time_ns.saturating_sub(floor * c.run_count),
                )
            });
    t.checked_div(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &'static str, run_count: u64, run_time_ns: u64) -> ProgramCost {
        ProgramCost {
            name,
            run_count,
            run_time_ns,
        }
    }

    #[test]
    fn net_cost_subtracts_the_measured_floor_and_ignores_the_floor_program() {
        let costs = [
            c("sched_switch_btf", 100, 16_000),
            c("sched_wakeup_btf", 100, 20_000),
            c(STATS_FLOOR.0, 100, 8_000),
        ];
        assert_eq!(stats_floor_ns(&costs), Some(80));
        assert_eq!(mean_net_ns(&costs), Some(180 - 80));
    }

    #[test]
    fn the_sampler_turns_statistics_on_for_one_tick_in_every() {
        let s = StatsSampler {
            first: 10,
            every: 60,
        };
        let on: Vec<u64> = (0..200).filter(|&t| s.at(t) == Some(true)).collect();
        let off: Vec<u64> = (0..200).filter(|&t| s.at(t) == Some(false)).collect();
        assert_eq!(on, [10, 70, 130, 190]);
        assert_eq!(off, [11, 71, 131, 191]);
        // Every tick at most: on one tick, off the next.
        let tight = StatsSampler { first: 0, every: 1 };
        assert_eq!(tight.at(4), Some(true));
        assert_eq!(tight.at(5), Some(false));
    }

    #[test]
    fn a_program_with_an_empty_program_on_its_own_hook_is_measured_against_that() {
        let costs = [
            c("sched_switch_btf", 100, 16_000),
            c("sched_wakeup_btf", 100, 20_000),
            c("page_fault_user", 100, 10_000),
            c(STATS_FLOOR.0, 100, 8_000),
            c("stats_floor_wakeup", 100, 9_000),
        ];
        assert_eq!(floor_for(&costs, "sched_wakeup_btf"), Some(90));
        // No empty program ran on page_fault_user: sched_switch's floor stands in.
        assert_eq!(floor_for(&costs, "page_fault_user"), Some(80));
        assert_eq!(floor_for(&costs, "sched_switch_btf"), Some(80));
        // (80 + 110 + 20) / 3
        assert_eq!(mean_net_ns(&costs), Some(70));
    }

    #[test]
    fn without_floor_or_runs_it_is_the_plain_mean_or_nothing() {
        assert_eq!(mean_net_ns(&[c("sched_switch_btf", 4, 400)]), Some(100));
        assert_eq!(mean_net_ns(&[c("sched_switch_btf", 0, 0)]), None);
        assert_eq!(mean_net_ns(&[]), None);
        assert_eq!(stats_floor_ns(&[c(STATS_FLOOR.1, 0, 0)]), None);
    }
}
