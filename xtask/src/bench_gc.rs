//! `cargo xtask bench gc`: what pausewatch's runtime probes cost the runtimes they watch.
//!
//! - Added cost per stop-the-world: a JVM calling System.gc() in a loop (one safepoint and one
//!   full collection each, five probe hits) and a Go program calling runtime.GC() in a loop
//!   (two stop-the-world phases per cycle, six probe hits), timed by the runtime itself, without
//!   and with pausewatch. The difference of medians is the added cost per GC; it includes the
//!   scheduler programs, which GC's thread hand-offs also run.
//! - A JVM's throughput on an allocation-heavy loop (young collections as they come), without
//!   and with pausewatch: the ratio of medians and the spread of per-round ratios.
//! - BPF run time of the uprobe programs, from one run with `--bpf-stats`.
//! - The probes' own cost per hit: a stand-in libjvm.so (tests/fixtures/usdt) firing its four
//!   semaphore-guarded probes back to back, without and with pausewatch. Times the number of
//!   probe hits in the allocation loop (counted by the kernel's statistics), it bounds what the
//!   probes cost that JVM, to a precision its run-to-run spread cannot give (issue 4's ≤ 1%).
//!
//! Rounds alternate without/with (order flipped every round so drift cancels). Machines are
//! shared and noisy: compare the ratios of one run, never absolute times across runs.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use pausewatch_tests::{build_fake_jvm, build_go, build_java, of_type};
use serde_json::Value;

use crate::{
    TEST_PACKAGES,
    bench::{Alternation, Observer, Section, add_program_costs, alternate},
    build_release, ensure_debian_packages, is_root, root_dir,
};

fn build_workloads(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (classes, go) = (dir.join("java"), dir.join("gcloop"));
    build_java("GcBench.java", &classes).map_err(anyhow::Error::msg)?;
    build_go(&go, dir, false).map_err(anyhow::Error::msg)?;
    Ok((classes, go))
}

struct Workload {
    name: &'static str,
    unit: &'static str,
    cmd: Box<dyn Fn() -> Command>,
}

/// Runs the workload and parses the first number it prints.
fn measure(w: &Workload) -> anyhow::Result<(u32, f64)> {
    let child = (w.cmd)()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", w.name))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{} failed: {}", w.name, out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("{} printed {text:?}", w.name))?;
    Ok((pid, v))
}

/// The workload under pausewatch, which must have observed it (else the number means nothing).
fn measure_with(bin: &Path, w: &Workload, args: &[&str]) -> anyhow::Result<(f64, Vec<Value>)> {
    let ((pid, v), cost) = Observer::pausewatch(bin, args)?.around(|| measure(w))?;
    if !of_type(&cost.lines, "notice").any(|n| n["event"] == "gc_observed" && n["pid"] == pid) {
        bail!(
            "pausewatch did not observe the {} workload (pid {pid}): no gc_observed notice",
            w.name
        );
    }
    Ok((v, cost.lines))
}

/// After a warm-up run (page cache, JIT-independent start-up costs), `rounds` runs of `w`
/// without and with pausewatch in alternating order.
fn alternated(bin: &Path, w: &Workload, rounds: usize) -> anyhow::Result<Alternation> {
    measure(w)?;
    alternate(w.name, rounds, |with_pw| {
        Ok(if with_pw {
            measure_with(bin, w, &crate::bench::STEADY_STATE)?.0
        } else {
            measure(w)?.1
        })
    })
}

pub fn gc(rounds: usize) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF: run it as root");
    }
    ensure_debian_packages(TEST_PACKAGES)?;
    let bin = build_release()?;
    section(&bin, rounds)?.write("gc", rounds)
}

/// What the runtime probes cost the runtimes they watch.
pub(crate) fn section(bin: &Path, rounds: usize) -> anyhow::Result<Section> {
    let dir = root_dir().join("target/bench/gc");
    std::fs::create_dir_all(&dir)?;
    let (classes, go) = build_workloads(&dir)?;
    let java = |args: &'static [&'static str]| {
        let classes = classes.clone();
        Box::new(move || {
            let mut c = Command::new("java");
            // A fixed heap: without it, heap resizing makes run times vary several-fold.
            c.args(["-Xms256m", "-Xmx256m", "-cp"])
                .arg(&classes)
                .arg("GcBench")
                .args(args);
            c
        }) as Box<dyn Fn() -> Command>
    };
    let workloads = [
        Workload {
            name: "JVM System.gc() loop (500 calls)",
            unit: "µs per System.gc()",
            cmd: java(&["gc", "500", "1000"]),
        },
        Workload {
            name: "Go runtime.GC() loop (3000 calls)",
            unit: "µs per runtime.GC()",
            cmd: Box::new(move || {
                let mut c = Command::new(&go);
                c.args(["bench", "3000", "500"]);
                c
            }),
        },
        Workload {
            name: "JVM allocation loop (60M allocations, G1, 256 MB heap)",
            unit: "s",
            cmd: java(&["alloc", "60000000", "1000"]),
        },
    ];

    let mut report = "## Runtime probes: JVM and Go\n\n\
        Each GC loop timed by the runtime itself without and with pausewatch, alternating; the \
        added cost per stop-the-world includes the scheduler programs its thread hand-offs run.\n\n"
        .to_string();
    report += "| workload | median without | median with | added | slowdown (ratio of medians) | per-round min … max |\n|---|---|---|---|---|---|\n";
    let mut alloc_median_ns = 0.0;
    for w in &workloads {
        let alt = alternated(bin, w, rounds)?;
        if w.unit == "s" {
            alloc_median_ns = alt.without;
        }
        let scale = if w.unit == "s" { 1e-9 } else { 1e-3 };
        report += &format!(
            "| {} | {:.1} {u} | {:.1} {u} | {:+.1} {u} | {:+.2}% | {:+.2}% … {:+.2}% |\n",
            w.name,
            alt.without * scale,
            alt.with * scale,
            (alt.with - alt.without) * scale,
            alt.slowdown.median * 100.0,
            alt.slowdown.min * 100.0,
            alt.slowdown.max * 100.0,
            u = w.unit.split(' ').next().unwrap_or(""),
        );
    }

    // BPF run time of the runtime programs: one run of each GC loop with statistics on.
    report += "\nBPF run time of the uprobe programs (one run of the two GC loops with `--bpf-stats`; includes the \
               statistics' own clock read, about 70 ns on our VMs). The uprobe trap and single-step around each \
               program are not in these figures; they are in the added cost per GC above.\n\n\
               | program | invocations | mean ns per invocation |\n|---|---|---|\n";
    let mut progs: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for w in &workloads[..2] {
        let (_, lines) = measure_with(bin, w, &["--bpf-stats"])?;
        let cost = of_type(&lines, "self_cost")
            .next()
            .context("no self_cost line")?;
        add_program_costs(&mut progs, cost, |name| {
            name.starts_with("jvm_") || name.starts_with("go_")
        });
    }
    for (name, (n, t)) in &progs {
        report += &format!(
            "| {name} | {n} | {} |\n",
            t.checked_div(*n).map_or("-".into(), |m| m.to_string())
        );
    }
    let mut s = Section::default();
    probe_cost(
        bin,
        rounds,
        &dir,
        &workloads[2],
        alloc_median_ns,
        &mut report,
        &mut s,
    )?;
    s.body = report + "\n";
    Ok(s)
}

/// Iterations of the stand-in's four probes per round.
const PROBE_ITERATIONS: u32 = 20_000;

/// The cost of one probe hit, from the stand-in libjvm.so, and what it adds up to in the JVM
/// allocation loop `alloc` (median run time `alloc_ns` without pausewatch).
fn probe_cost(
    bin: &Path,
    rounds: usize,
    dir: &Path,
    alloc: &Workload,
    alloc_ns: f64,
    report: &mut String,
    s: &mut Section,
) -> anyhow::Result<()> {
    let fake_dir = dir.join("usdt");
    std::fs::create_dir_all(&fake_dir)?;
    let fake = build_fake_jvm(&fake_dir).map_err(anyhow::Error::msg)?;
    let probes = Workload {
        name: "stand-in libjvm.so: its 4 semaphore-guarded USDT probes back to back",
        unit: "ns",
        cmd: Box::new(move || {
            let mut c = Command::new(&fake);
            c.args(["bench", &PROBE_ITERATIONS.to_string()]);
            c
        }),
    };
    let alt = alternated(bin, &probes, rounds)?;
    let hits = f64::from(PROBE_ITERATIONS) * 4.0;
    let per_hit_ns = (alt.with - alt.without) / hits;
    // The allocation loop's probe hits, counted by the kernel's statistics.
    let (_, lines) = measure_with(bin, alloc, &["--bpf-stats"])?;
    let mut progs: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    add_program_costs(
        &mut progs,
        of_type(&lines, "self_cost")
            .next()
            .context("no self_cost line")?,
        |name| name.starts_with("jvm_"),
    );
    let alloc_hits: u64 = progs.values().map(|p| p.0).sum();
    let share = alloc_hits as f64 * per_hit_ns / alloc_ns;
    *report += &format!(
        "\nThe probes' own cost: {PROBE_ITERATIONS} × 4 hits of the stand-in libjvm.so's semaphore-guarded \
         probes (tests/fixtures/usdt) took {:.2} ms without pausewatch (semaphores down: the probes are \
         skipped) and {:.2} ms with it (medians of {rounds} rounds): **{:.0} ns per probe hit**, the \
         uprobe trap, the BPF program and the record it streams. The allocation loop hit the JVM's probes \
         {alloc_hits} times in one run (the kernel's statistics), so they cost it {:.3} ms of its {:.2} s: \
         **{:.4}%**.\n",
        alt.without / 1e6,
        alt.with / 1e6,
        per_hit_ns,
        alloc_hits as f64 * per_hit_ns / 1e6,
        alloc_ns / 1e9,
        share * 100.0,
    );
    s.check(
        "JVM throughput, allocation loop: probe hits × measured cost per hit",
        "≤ 1%",
        format!(
            "{:.4}% ({alloc_hits} hits × {per_hit_ns:.0} ns)",
            share * 100.0
        ),
        share <= 0.01,
    );
    Ok(())
}
