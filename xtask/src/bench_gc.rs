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
//!
//! Rounds alternate without/with (order flipped every round so drift cancels). Machines are
//! shared and noisy: compare the ratios of one run, never absolute times across runs.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use pausewatch_tests::{build_go, build_java, of_type};
use serde_json::Value;

use crate::{
    TEST_PACKAGES,
    bench::{Observer, Section, add_program_costs, alternate},
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
    for w in &workloads {
        measure(w)?; // warm-up: page cache, JIT-independent start-up costs
        let alt = alternate(w.name, rounds, |with_pw| {
            Ok(if with_pw {
                measure_with(bin, w, &[])?.0
            } else {
                measure(w)?.1
            })
        })?;
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
    Ok(Section {
        body: report + "\n",
        budgets: Vec::new(),
    })
}
