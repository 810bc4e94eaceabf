//! `cargo xtask bench sched`: cost of the scheduler programs.
//!
//! - Per program: mean ns per invocation from the kernel's BPF run-time statistics (the
//!   `self_cost` line pausewatch writes at exit).
//! - Workload slowdown: a context-switch-heavy workload timed without and with pausewatch,
//!   alternating in one run (order flipped every round so drift cancels), reported as the ratio
//!   of medians with the spread of per-round ratios. Machines are shared and noisy: compare
//!   ratios from one run, never absolute times across runs.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use pausewatch_tests::{Pausewatch, of_type};

use crate::{build_release, is_root, root_dir};

struct Workload {
    name: &'static str,
    /// `perf`, or `pw-workload` (the tests' workload helper).
    program: &'static str,
    args: &'static [&'static str],
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "perf bench sched pipe (200k round trips)",
        program: "perf",
        args: &["bench", "sched", "pipe", "-l", "200000"],
    },
    Workload {
        name: "perf bench sched messaging (10 groups, 400 loops)",
        program: "perf",
        args: &["bench", "sched", "messaging", "-g", "10", "-l", "400"],
    },
    // The page-fault path: 262,144 minor faults, each through page_fault_user.
    Workload {
        name: "touch 1 GiB of fresh anonymous memory (4 KiB pages)",
        program: "pw-workload",
        args: &["touch-anon", "1024"],
    },
];

fn time_workload(w: &Workload) -> anyhow::Result<Duration> {
    let program = match w.program {
        "pw-workload" => root_dir().join("target/release/pw-workload"),
        p => p.into(),
    };
    let t = Instant::now();
    let out = Command::new(&program)
        .args(w.args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", w.program))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}",
            w.program,
            w.args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of rounds measured alternately without and with pausewatch, and the spread of the
/// per-round slowdown ratios.
pub(crate) struct Alternation {
    pub without: f64,
    pub with: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
}

impl Alternation {
    pub fn slowdown(&self) -> f64 {
        self.with / self.without - 1.0
    }
}

/// Runs `rounds` rounds of `one(false)` (without pausewatch) and `one(true)` (with it), the
/// order flipped every round so drift cancels.
pub(crate) fn alternate(
    name: &str,
    rounds: usize,
    mut one: impl FnMut(bool) -> anyhow::Result<f64>,
) -> anyhow::Result<Alternation> {
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            (one(false)?, one(true)?)
        } else {
            let b = one(true)?;
            (one(false)?, b)
        };
        println!("bench: {name} round {r}: without {a}, with {b}");
        without.push(a);
        with.push(b);
        ratios.push(b / a - 1.0);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    Ok(Alternation {
        without: median(&mut without),
        with: median(&mut with),
        min_ratio: ratios.first().copied().unwrap_or(f64::NAN),
        max_ratio: ratios.last().copied().unwrap_or(f64::NAN),
    })
}

/// The report's title and the command and machine that produced it.
pub(crate) fn report_header(which: &str, rounds: usize) -> String {
    format!(
        "# pausewatch benchmark: {which}\n\nCommand: `cargo xtask bench {which} --rounds {rounds}` on {} CPUs, kernel {}.\n\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}

/// Adds the run counts and run times of a `self_cost` line's programs named as `keep` wants.
pub(crate) fn add_program_costs(
    into: &mut std::collections::BTreeMap<String, (u64, u64)>,
    cost: &serde_json::Value,
    keep: impl Fn(&str) -> bool,
) {
    for p in cost["programs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        if keep(name) {
            let e = into.entry(name.to_string()).or_default();
            e.0 += p["run_count"].as_u64().unwrap_or(0);
            e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
}

/// Writes target/bench/<which>.md and prints it.
pub(crate) fn write_report(which: &str, report: &str) -> anyhow::Result<()> {
    let dir = root_dir().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{which}.md"));
    std::fs::write(&path, report)?;
    println!("\n{report}\nwritten to {}", path.display());
    Ok(())
}

pub(crate) fn ensure_perf() -> anyhow::Result<()> {
    crate::ensure_debian_packages(&[(
        "linux-perf",
        &["perf", "bench", "sched", "pipe", "-l", "10"],
    )])
}

pub fn sched(rounds: usize) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF: run it as root");
    }
    ensure_perf()?;
    let bin = build_release()?;
    crate::build_release_workload()?;
    let mut report = report_header("sched", rounds);
    report += "| workload | median without | median with | slowdown (ratio of medians) | per-round slowdown min … max |\n|---|---|---|---|---|\n";
    let mut prog: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let (mut floor_n, mut floor_t) = (0u64, 0u64);
    for w in &WORKLOADS {
        time_workload(w)?; // warm-up: page cache, CPU frequency
        // Slowdown rounds run pausewatch as deployed: without BPF statistics, which would
        // otherwise add two clock reads to every program run.
        let alt = alternate(w.name, rounds, |on| {
            if !on {
                return Ok(time_workload(w)?.as_secs_f64());
            }
            let pw = Pausewatch::start_bin(&bin, &["--min-pause", "5ms"]);
            let t = time_workload(w)?.as_secs_f64();
            pw.stop();
            Ok(t)
        })?;
        // Cost run: statistics on, with the empty calibration program measuring their floor.
        let pw = Pausewatch::start_bin(&bin, &["--min-pause", "5ms", "--bpf-stats"]);
        time_workload(w)?;
        let lines = pw.stop();
        let cost = of_type(&lines, "self_cost")
            .next()
            .context("pausewatch wrote no self_cost line")?;
        add_program_costs(&mut prog, cost, |_| true);
        if let Some(f) = cost["stats_floor_ns"].as_u64() {
            // Weighted like the programs: by sched_switch runs, which the floor program shares.
            let n = cost["programs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| {
                    p["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("sched_switch"))
                })
                .and_then(|p| p["run_count"].as_u64())
                .unwrap_or(0);
            floor_n += n;
            floor_t += f * n;
        }
        report += &format!(
            "| {} | {:.3} s | {:.3} s | {:+.2}% | {:+.2}% … {:+.2}% |\n",
            w.name,
            alt.without,
            alt.with,
            alt.slowdown() * 100.0,
            alt.min_ratio * 100.0,
            alt.max_ratio * 100.0
        );
    }
    let floor = floor_t.checked_div(floor_n);
    report += &format!(
        "\nPer-program cost, from one run of each workload with `--bpf-stats` (kernel BPF run-time statistics). \
         The statistics time every run with sched_clock() around the program, which costs about one clock read; \
         an empty program attached to sched_switch in the same run measures that floor ({}), and `net` subtracts it.\n\n\
         | program | invocations | mean ns per invocation | net ns |\n|---|---|---|---|\n",
        floor.map_or("not measured".to_string(), |f| format!("{f} ns"))
    );
    for (name, (n, t)) in &prog {
        let mean = t.checked_div(*n);
        report += &format!(
            "| {name} | {n} | {} | {} |\n",
            mean.map_or("-".into(), |m| m.to_string()),
            mean.zip(floor)
                .map_or("-".into(), |(m, f)| m.saturating_sub(f).to_string())
        );
    }
    write_report("sched", &report)?;
    Ok(())
}
