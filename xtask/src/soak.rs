//! `cargo xtask soak [--minutes N]`: pausewatch (release, as deployed: host-wide, NDJSON to a
//! file) under every workload in turn while a fork storm runs throughout, for 30 minutes by
//! default. The agent's RSS and CPU are sampled every 5 s; the run fails when memory did not
//! stay flat (the last fifth of the run above the second fifth, after warm-up, by more than
//! 4 MiB). Not part of CI: it takes half an hour. Writes target/bench/soak.md.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use pausewatch_tests::{build_java, of_type};
use serde_json::Value;

use crate::{TEST_PACKAGES, bench::write_report, build_release, ensure_debian_packages, root_dir};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Largest growth of the mean RSS from the second fifth of the run to the last that still
/// counts as flat.
const FLAT_KIB: u64 = 4 * 1024;

/// One reading of the agent's own accounting.
#[derive(Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    /// CPU time (user + system) in clock ticks, cumulative.
    cpu_ticks: u64,
}

fn sample(pid: u32, t0: Instant) -> Option<Sample> {
    let rss_kib = pausewatch_tests::rss_kib(pid)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5), counted after the comm.
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Sample {
        at_s: t0.elapsed().as_secs_f64(),
        rss_kib,
        cpu_ticks,
    })
}

/// Workloads run one after another, round after round, each for a few seconds.
struct Cycle {
    workload: PathBuf,
    classes: Option<PathBuf>,
    scratch: PathBuf,
    port: u16,
    ran: std::collections::BTreeMap<&'static str, u64>,
}

impl Cycle {
    fn run(&mut self, name: &'static str, cmd: &mut Command) -> anyhow::Result<()> {
        let status = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("starting {name}"))?;
        if !status.success() {
            bail!("soak workload {name} failed: {status}");
        }
        *self.ran.entry(name).or_default() += 1;
        Ok(())
    }

    fn workload(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.workload);
        c.args(args);
        c
    }

    fn round(&mut self) -> anyhow::Result<()> {
        self.run(
            "perf bench sched messaging",
            Command::new("perf").args(["bench", "sched", "messaging", "-g", "10", "-l", "400"]),
        )?;
        self.run(
            "pingpong (context switches)",
            &mut self.workload(&["pingpong", "5", "1"]),
        )?;
        self.run(
            "touch 512 MiB (page faults)",
            &mut self.workload(&["touch-anon", "512"]),
        )?;
        let file = self.scratch.join("fsync.dat");
        let file = file.to_string_lossy().into_owned();
        self.run(
            "write and fsync 32 MiB",
            &mut self.workload(&["fsync-file", &file, "33554432"]),
        )?;
        let addr = format!("127.0.0.1:{}", self.port);
        let mut server = self
            .workload(&["tcp-serve", &addr])
            .stdout(Stdio::piped())
            .spawn()?;
        // The server prints a line once it listens, and one at the end: keep reading.
        let mut out = std::io::BufReader::new(server.stdout.take().context("server stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        self.run(
            "loopback TCP",
            &mut self.workload(&["tcp-send", &addr, "3"]),
        )?;
        std::io::Read::read_to_string(&mut out, &mut line)?;
        server.wait()?;
        if let Some(classes) = self.classes.clone() {
            self.run(
                "JVM System.gc() loop",
                Command::new("java")
                    .args(["-Xms128m", "-Xmx128m", "-cp"])
                    .arg(&classes)
                    .args(["GcBench", "gc", "100", "0"]),
            )?;
        }
        // A process stopped and resumed: stop and signal records.
        let mut spinner = self
            .workload(&["spin", "1", "1", "pw-soak-stop", "1"])
            .stdout(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(spinner.id() as i32, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(spinner.id() as i32, libc::SIGCONT) };
        spinner.wait()?;
        *self.ran.entry("SIGSTOP / SIGCONT").or_default() += 1;
        Ok(())
    }
}

/// A fork storm for the whole run, restarted every minute (it prints its count at the end).
fn fork_storm(workload: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let workload = workload.to_path_buf();
    std::thread::spawn(move || {
        let mut children = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok(storm) = Command::new(&workload)
                .args(["fork-storm", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            // Cut short when the run ends (SIGINT: it still prints its count).
            let pid = storm.id();
            let watch = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(61) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if stop.load(Ordering::Relaxed) {
                        // SAFETY: signalling our own child (it may have exited: harmless).
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                })
            };
            if let Ok(out) = storm.wait_with_output() {
                children += serde_json::from_slice::<Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v["children"].as_u64())
                    .unwrap_or(0);
            }
            let _ = watch.join();
        }
        children
    })
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

pub fn soak(minutes: f64) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the soak loads eBPF: run it as root");
    }
    ensure_debian_packages(TEST_PACKAGES)?;
    crate::bench::ensure_perf()?;
    let bin = build_release()?;
    let dir = root_dir().join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let classes = dir.join("java");
    let classes = build_java("GcBench.java", &classes).ok().map(|()| classes);
    let workload = crate::build_release_workload()?;
    let ndjson = dir.join("pausewatch.ndjson");
    let mut agent: Child = Command::new(&bin)
        .arg("--json")
        .arg(&ndjson)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting pausewatch")?;
    let attached = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&ndjson)
        .unwrap_or_default()
        .contains("\"event\":\"attached\"")
    {
        if Instant::now() > attached || agent.try_wait()?.is_some() {
            bail!("pausewatch did not attach");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = agent.id();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let storm = fork_storm(&workload, stop.clone());
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let Some(s) = sample(pid, t0) {
                        v.push(s);
                    }
                    next += SAMPLE_EVERY;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            v
        })
    };
    let mut cycle = Cycle {
        workload: workload.clone(),
        classes,
        scratch: dir.clone(),
        port: pausewatch_tests::free_port(),
        ran: Default::default(),
    };
    let mut rounds = 0;
    let result = (|| {
        while Instant::now() < deadline {
            cycle.round()?;
            rounds += 1;
            println!(
                "soak: round {rounds} done at {:.0} s of {:.0}",
                t0.elapsed().as_secs_f64(),
                minutes * 60.0
            );
        }
        anyhow::Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let forked = storm.join().expect("fork storm");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = agent.wait()?;
    result?;
    if !status.success() {
        bail!("pausewatch exited with {status}");
    }
    let lines: Vec<Value> = std::fs::read_to_string(&ndjson)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let drops = of_type(&lines, "drops").last().cloned().unwrap_or_default();
    report(minutes, &samples, forked, rounds, &cycle.ran, &drops)
}

fn report(
    minutes: f64,
    samples: &[Sample],
    forked: u64,
    rounds: u64,
    ran: &std::collections::BTreeMap<&'static str, u64>,
    drops: &Value,
) -> anyhow::Result<()> {
    if samples.len() < 10 {
        bail!("only {} samples: the run was too short", samples.len());
    }
    let tick = procfs_ticks();
    let n = samples.len();
    let fifth = |k: usize| &samples[k * n / 5..(k + 1) * n / 5];
    let rss = |s: &[Sample]| mean(&s.iter().map(|s| s.rss_kib).collect::<Vec<_>>());
    let (second, last) = (rss(fifth(1)), rss(fifth(4)));
    // The agent's CPU % of one core between consecutive samples.
    let cpu_pct = |s: &[Sample]| -> Vec<f64> {
        s.windows(2)
            .map(|w| {
                (w[1].cpu_ticks - w[0].cpu_ticks) as f64 / tick / (w[1].at_s - w[0].at_s) * 100.0
            })
            .collect()
    };
    let cpu = cpu_pct(samples);
    let mut sorted = cpu.clone();
    sorted.sort_by(f64::total_cmp);
    let cpu_mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
    let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
    let flat = last <= second + FLAT_KIB as f64;
    let mut r = format!(
        "# pausewatch soak\n\nCommand: `cargo xtask soak --minutes {minutes}` on {} CPUs, kernel {}. \
         pausewatch (release, host-wide, default settings, NDJSON to a file) ran for {:.1} min \
         while a fork storm ran throughout (at least {forked} processes of three threads each) and these \
         workloads ran in turn, {rounds} rounds: {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        samples[n - 1].at_s / 60.0,
        ran.iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    r += &format!(
        "| | value |\n|---|---|\n\
         | RSS, mean over the second fifth of the run | {:.1} MiB |\n\
         | RSS, mean over the last fifth | {:.1} MiB |\n\
         | RSS, max | {:.1} MiB |\n\
         | memory flat (last fifth ≤ second fifth + {} MiB) | {} |\n\
         | agent CPU, mean of 5 s samples | {cpu_mean:.2}% of one core |\n\
         | agent CPU, p95 / max | {p95:.2}% / {:.2}% |\n\
         | kernel drops (all causes) | {} |\n\
         | output lines dropped / failed | {} / {} |\n\n",
        second / 1024.0,
        last / 1024.0,
        samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        FLAT_KIB / 1024,
        if flat { "yes" } else { "**no**" },
        sorted.last().copied().unwrap_or(0.0),
        drops["kernel"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>()),
        drops["output_dropped_lines"],
        drops["output_failed_lines"],
    );
    r += "RSS and CPU by minute (mean of the samples in it):\n\n| minute | RSS MiB | CPU % |\n|---|---|---|\n";
    let per_minute = (60.0 / SAMPLE_EVERY.as_secs_f64()) as usize;
    for (m, chunk) in samples.chunks(per_minute).enumerate() {
        let cpu_of = cpu_pct(chunk);
        r += &format!(
            "| {} | {:.1} | {:.2} |\n",
            m + 1,
            rss(chunk) / 1024.0,
            cpu_of.iter().sum::<f64>() / cpu_of.len().max(1) as f64
        );
    }
    write_report("soak", &r)?;
    if !flat {
        bail!(
            "memory did not stay flat: {:.1} MiB in the second fifth, {:.1} MiB in the last",
            second / 1024.0,
            last / 1024.0
        );
    }
    Ok(())
}

fn procfs_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}
