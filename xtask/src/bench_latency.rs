//! `cargo xtask bench latency`: how long after a pause ends its NDJSON line is readable.
//!
//! A spinning victim pinned to one CPU is preempted by a SCHED_FIFO hog on that CPU for 50 ms,
//! `rounds` times. Each time the victim's run-queue wait ends when the hog exits, and
//! pausewatch (release, as deployed) streams a `pause` line for it. The benchmark reads
//! pausewatch's stdout as it comes and takes the time each such line arrives on
//! CLOCK_MONOTONIC, the clock of the line's own `end_mono_ns`. The difference is the
//! detection latency: kernel record, the agent's collection (it is not woken per record:
//! it collects every 20 ms), decoding, writing, the pipe.
use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{bench::Section, build_release, is_root};

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub fn latency(rounds: usize) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF: run it as root");
    }
    let bin = build_release()?;
    section(&bin, rounds)?.write("latency", rounds)
}

/// Detection latency over `rounds` induced pauses.
pub(crate) fn section(bin: &std::path::Path, rounds: usize) -> anyhow::Result<Section> {
    let workload = crate::build_release_workload()?;
    let cpu = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        "1"
    } else {
        "0"
    };
    let mut pw = Command::new(bin)
        .args(["--json", "--min-pause", "20ms", "--no-lease-socket"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pausewatch")?;
    let (tx, rx) = mpsc::channel::<(u64, Value)>();
    let out = pw.stdout.take().context("pausewatch stdout")?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let at = mono_ns();
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send((at, v)).is_err()
            {
                break;
            }
        }
    });
    let attached = rx
        .iter()
        .find(|(_, v)| v["type"] == "notice" && v["event"] == "attached");
    if attached.is_none() {
        bail!("pausewatch exited before attaching");
    }
    let mut victim = Command::new(&workload)
        .args(["spin", "600", cpu, "pw-latency", "1"])
        .stdout(Stdio::null())
        .spawn()?;
    let victim_pid = victim.id();
    std::thread::sleep(Duration::from_millis(300));
    let mut latencies = Vec::new();
    for r in 0..rounds {
        let status = Command::new(&workload)
            .args(["rt-hog", "0.05", cpu])
            .status()?;
        if !status.success() {
            bail!("rt-hog failed: {status}");
        }
        let deadline = mono_ns() + 2_000_000_000;
        let mut got = None;
        while let Ok((at, v)) = rx.recv_timeout(Duration::from_millis(100)) {
            if v["type"] == "pause"
                && v["pid"] == victim_pid
                && v["duration_ns"].as_u64().unwrap_or(0) >= 40_000_000
            {
                got = v["end_mono_ns"].as_u64().map(|end| at.saturating_sub(end));
                break;
            }
            if mono_ns() > deadline {
                break;
            }
        }
        match got {
            Some(l) => {
                println!("bench: latency round {r}: {:.1} ms", l as f64 / 1e6);
                latencies.push(l);
            }
            None => bail!("round {r}: no pause line for the victim's 50 ms wait within 2 s"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = (victim.kill(), victim.wait());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pw.id() as i32, libc::SIGTERM) };
    pw.wait()?;
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let max = *latencies.last().context("no rounds")?;
    let mut s = Section {
        body: String::new(),
        budgets: Vec::new(),
    };
    s.body += &format!(
        "## Detection latency\n\n\
         A pinned spinning victim preempted for 50 ms by a SCHED_FIFO hog, {rounds} times; from the \
         end of its wait (the line's own `end_mono_ns`) to its NDJSON line read from pausewatch's \
         stdout, on the same clock.\n\n\
         | detection latency (pause end → its NDJSON line read) | value |\n|---|---|\n\
         | rounds | {} |\n| min | {:.1} ms |\n| median | {:.1} ms |\n| p90 | {:.1} ms |\n| max | {:.1} ms |\n\n",
        latencies.len(),
        ms(latencies[0]),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(max),
    );
    s.check(
        "detection latency",
        "≤ 100 ms",
        format!("{:.1} ms (max of {rounds})", ms(max)),
        max <= 100_000_000,
    );
    Ok(s)
}
