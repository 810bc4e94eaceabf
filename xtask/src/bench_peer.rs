//! What bpftrace's programs cost, from the same kernel statistics as pausewatch's: one run of
//! each workload under the bpftrace peer with `kernel.bpf_stats_enabled` on. The wall-clock
//! slowdowns move with the machine's neighbours by more than either observer costs; the BPF
//! run time of each, net of the statistics' own clock read, does not.
//!
//! bpftrace attaches classic tracepoints, whose kernel side fills a trace record before the
//! program runs (tp_btf hands the program the arguments): that part of its cost is outside
//! its programs' run time, so these figures understate bpftrace's cost, never pausewatch's.
use std::{collections::BTreeSet, path::Path};

use serde_json::Value;

use crate::bench::{Observer, Timed, Workload, time_workload};

/// One BPF program's counters since it was loaded.
pub(crate) struct ProgCost {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgCost {
    /// Run time net of `floor_ns` per run, ns.
    pub fn net_ns(&self, floor_ns: u64) -> u64 {
        self.run_time_ns.saturating_sub(floor_ns * self.run_count)
    }
}

/// The programs of a pausewatch `self_cost` line, each with the floor measured on its own
/// hook (None where the line has none).
pub(crate) fn self_cost_programs(line: &Value) -> Vec<(ProgCost, Option<u64>)> {
    line["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let cost = ProgCost {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                run_count: p["run_count"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            };
            (cost, p["floor_ns"].as_u64())
        })
        .collect()
}

/// A workload's run under bpftrace and what bpftrace's programs ran meanwhile.
pub(crate) struct PeerRun {
    pub timed: Timed,
    pub programs: Vec<ProgCost>,
}

impl PeerRun {
    /// BPF run time net of `floor_ns` per run, ns.
    pub fn net_ns(&self, floor_ns: u64) -> u64 {
        self.programs.iter().map(|p| p.net_ns(floor_ns)).sum()
    }
}

fn program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect()
}

/// Runs `w` once under the bpftrace peer with the statistics on, and reads the counters of the
/// programs bpftrace loaded.
pub(crate) fn bpftrace_run(w: &Workload) -> anyhow::Result<PeerRun> {
    run_with_stats(w, "bpftrace", Observer::bpftrace)
}

/// Runs `w` once beside `pw-empty-hooks --least-wait` (the empty program and
/// `stats_least_wait` on sched_switch) with the statistics on, and reads both programs'
/// counters.
pub(crate) fn least_wait_run(w: &Workload, bin: &Path) -> anyhow::Result<PeerRun> {
    run_with_stats(w, "pw-empty-hooks --least-wait", || {
        Observer::least_wait(bin)
    })
}

/// Runs `w` once under the observer `start` starts, with the kernel's BPF run-time statistics
/// on, and reads the counters of the programs it loaded (those that were not loaded before it
/// started; the benchmark loads nothing else meanwhile) before it exits.
fn run_with_stats(
    w: &Workload,
    who: &str,
    start: impl FnOnce() -> anyhow::Result<Observer>,
) -> anyhow::Result<PeerRun> {
    let before = program_ids();
    // The kernel's BPF run-time statistics, on for as long as this lives, then put back.
    let _stats = pausewatch_tests::Sysctl::try_set("kernel.bpf_stats_enabled", "1")
        .map_err(anyhow::Error::msg)?;
    let (run, _) = start()?.around(|| {
        let timed = time_workload(w)?;
        let programs = aya::programs::loaded_programs()
            .flatten()
            .filter(|p| !before.contains(&p.id()))
            .map(|p| ProgCost {
                name: p.name_as_str().unwrap_or("?").to_string(),
                run_count: p.run_count(),
                run_time_ns: u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
            })
            .collect::<Vec<_>>();
        anyhow::ensure!(
            !programs.is_empty(),
            "found none of {who}'s programs among the loaded ones"
        );
        Ok(PeerRun { timed, programs })
    })?;
    Ok(run)
}

/// The least-wait run's two programs: (`stats_least_wait`'s, the empty one's beside it), by
/// their names as the kernel keeps them (15 characters).
pub(crate) fn least_wait_programs(run: &PeerRun) -> Option<(&ProgCost, &ProgCost)> {
    // The kernel keeps a program's name to 15 characters.
    let find = |name: &str| {
        let kept = &name[..name.len().min(15)];
        run.programs.iter().find(|p| p.name == kept)
    };
    Some((find("stats_least_wait")?, find("stats_floor_btf")?))
}

/// Net run time of the scheduler programs (sched_switch, sched_wakeup, sched_wakeup_new:
/// pausewatch's `sched_*_btf`/`_raw`, bpftrace's tracepoint names) per sched_switch run, and
/// the number of those runs. The empty calibration programs are not scheduler work.
pub(crate) fn sched_cost_per_switch<'a>(
    programs: impl Iterator<Item = &'a ProgCost>,
    floor_ns: u64,
) -> Option<(u64, u64)> {
    let (mut switches, mut net) = (0u64, 0u64);
    for p in programs {
        if p.name.starts_with("sched_switch") {
            switches += p.run_count;
        } else if !p.name.starts_with("sched_wakeup") {
            continue;
        }
        net += p.net_ns(floor_ns);
    }
    net.checked_div(switches).map(|ns| (ns, switches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(progs: &[(&str, u64, u64)]) -> PeerRun {
        PeerRun {
            timed: Timed {
                value: 1.0,
                cpu_s: 1.0,
            },
            programs: progs
                .iter()
                .map(|&(name, run_count, run_time_ns)| ProgCost {
                    name: name.into(),
                    run_count,
                    run_time_ns,
                })
                .collect(),
        }
    }

    #[test]
    fn net_time_takes_the_floor_off_every_run() {
        let r = run(&[("sched_switch", 10, 3_000), ("page_fault_user", 5, 200)]);
        // 3000 − 10×70, and 200 − 5×70 floored at zero.
        assert_eq!(r.net_ns(70), 2_300);
    }

    #[test]
    fn a_self_cost_line_gives_each_program_its_own_floor() {
        let line = serde_json::json!({"programs": [
            {"name": "sched_switch_btf", "run_count": 10, "run_time_ns": 3_000, "floor_ns": 70},
            {"name": "page_fault_user", "run_count": 4, "run_time_ns": 500, "floor_ns": null},
        ]});
        let p = self_cost_programs(&line);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].0.net_ns(p[0].1.unwrap()), p[1].1), (2_300, None));
        assert_eq!(
            (p[1].0.name.as_str(), p[1].0.run_count),
            ("page_fault_user", 4)
        );
    }

    #[test]
    fn scheduler_cost_is_per_switch_and_counts_the_wakeups() {
        let progs = [
            ("sched_switch", 100, 20_000),
            ("sched_wakeup", 50, 10_000),
            ("sched_wakeup_new", 1, 500),
            ("page_fault_user", 1_000, 90_000),
            ("stats_floor_btf", 100, 7_000),
        ];
        // (20000 − 100×70) + (10000 − 50×70) + (500 − 70) over 100 switches.
        assert_eq!(
            sched_cost_per_switch(run(&progs).programs.iter(), 70),
            Some((199, 100))
        );
        assert_eq!(
            sched_cost_per_switch(run(&[("sched_switch_btf", 10, 1_000)]).programs.iter(), 70),
            Some((30, 10))
        );
        assert_eq!(
            sched_cost_per_switch(run(&[("page_fault_user", 1, 1)]).programs.iter(), 70),
            None
        );
    }
}
