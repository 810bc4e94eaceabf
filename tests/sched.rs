//! Scheduler pauses measured by real eBPF on the running kernel, against the kernel's own
//! accounting (/proc/<pid>/task/<tid>/schedstat run_delay).
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use pausewatch_tests::*;
use serde_json::Value;

/// Where the test's pausewatch measures run-queue waits: `--attach` and `--runq-source`.
#[derive(Clone, Copy)]
enum Source {
    /// tp_btf, at switch-in from the kernel's `sched_info` (the default).
    SchedInfo,
    /// tp_btf, from sched_wakeup.
    Wakeup,
    /// Raw tracepoints (from sched_wakeup: the only way there).
    Raw,
    /// The defaults on a kernel that refuses the tp_btf scheduler programs
    /// (`PAUSEWATCH_REFUSE_TP_BTF=1` makes ours do so after attaching them): raw tracepoints,
    /// with the object loaded again.
    Refused,
}

impl Source {
    fn args(self) -> [&'static str; 4] {
        match self {
            Source::SchedInfo => ["--attach", "btf", "--runq-source", "auto"],
            Source::Wakeup => ["--attach", "btf", "--runq-source", "wakeup"],
            Source::Raw => ["--attach", "raw", "--runq-source", "auto"],
            Source::Refused => ["--attach", "auto", "--runq-source", "auto"],
        }
    }

    /// The `attached` notice's mechanism and runq_source.
    fn attached(self) -> (&'static str, &'static str) {
        match self {
            Source::SchedInfo => ("tp_btf", "sched_info"),
            Source::Wakeup => ("tp_btf", "sched_wakeup"),
            Source::Raw | Source::Refused => ("raw_tp", "sched_wakeup"),
        }
    }
}

/// A two-thread victim pinned with two hogs to one CPU waits for it about 3/4 of the time; the
/// run-queue wait pausewatch attributes to it must equal the kernel's run_delay within 5%.
fn runq_matches_schedstat(source: Source, sleep_us: u64) {
    runq_matches_schedstat_with(source, sleep_us, None);
}

/// As `runq_matches_schedstat`, with `PAUSEWATCH_SWITCH_INS_ENTRIES` set to `switch_ins`.
fn runq_matches_schedstat_with(source: Source, sleep_us: u64, switch_ins: Option<u32>) {
    require_root();
    let cpu = test_cpu();
    let mut args = source.args().to_vec();
    args.extend(["--min-pause", "1ms"]);
    let mut cmd = Command::new(pausewatch_bin());
    cmd.arg("--json").args(&args);
    if let Some(n) = switch_ins {
        cmd.env("PAUSEWATCH_SWITCH_INS_ENTRIES", n.to_string());
    }
    if let Source::Refused = source {
        cmd.env("PAUSEWATCH_REFUSE_TP_BTF", "1");
    }
    let pw = Pausewatch::start_cmd(cmd);
    let mut hogs = start_hogs(2, cpu, 3.5);
    let report = run_workload(&[
        "spin",
        "2",
        &cpu.to_string(),
        "pw-victim",
        "2",
        &sleep_us.to_string(),
    ]);
    for h in &mut hogs {
        h.wait().unwrap();
    }
    let lines = pw.stop();
    let attach = check_attached(&lines, source);
    let attached = lines.iter().find(|v| v["event"] == "attached").unwrap();
    let entries = attached["switch_in_entries"].as_u64().unwrap();
    match (switch_ins, source) {
        (Some(n), _) => assert_eq!(entries, u64::from(n), "{attached}"),
        // Sized from kernel.pid_max: a power of two covering it, up to 131,072.
        (None, Source::SchedInfo) => {
            let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(
                entries.is_power_of_two() && (entries >= pid_max || entries == 131_072),
                "{attached}"
            );
        }
        (None, _) => assert_eq!(entries, 0, "{attached}"),
    }
    let summary = runq_matches(&lines, &report, 300_000_000, attach);
    let pid = report["pid"].as_u64().unwrap();
    let threads = report["threads"].as_array().unwrap();
    assert_eq!(summary["comm"], "pw-victim");
    let ep = &summary["episodes"];
    assert!(
        ep["count"].as_u64().unwrap() > 0
            && ep["p99_ns"].as_u64().unwrap() <= ep["max_ns"].as_u64().unwrap()
    );

    // Streamed episodes carry the right process, thread and thread name, and add up.
    let pauses: Vec<&Value> = of_type(&lines, "pause")
        .filter(|v| v["pid"] == pid)
        .collect();
    assert!(!pauses.is_empty(), "no pause lines for the victim");
    for p in &pauses {
        let t = threads
            .iter()
            .find(|t| t["tid"] == p["tid"])
            .unwrap_or_else(|| panic!("pause with a tid not of the victim: {p}"));
        // A thread's name changes over its life: a new task's first wait is before exec (the
        // parent's name) or before its prctl(PR_SET_NAME) (the creator's name); after exec it
        // is the binary's name until renamed.
        // An episode that ends between fork and exec (the child preempted there, on a
        // loaded machine) carries the forking thread's name: this test's thread.
        let creator: String = std::thread::current()
            .name()
            .unwrap_or("")
            .chars()
            .take(15)
            .collect();
        // A spawned thread starts with the main thread's name ("pw-victim") and renames
        // itself first thing; pinned beside the hogs, it can be preempted before that.
        if p["start_reason"] != "new_task" {
            assert!(
                p["comm"] == t["comm"]
                    || p["comm"] == "pw-workload"
                    || p["comm"] == "pw-victim"
                    || p["comm"] == creator,
                "thread name read in BPF differs: {p}"
            );
        }
        let c = &p["components"];
        let sum = c["runq_ns"].as_u64().unwrap()
            + c["blocked_ns"].as_u64().unwrap()
            + c["stopped_ns"].as_u64().unwrap();
        assert_eq!(
            sum,
            p["duration_ns"].as_u64().unwrap(),
            "components do not sum to the episode: {p}"
        );
        assert!(
            p["duration_ns"].as_u64().unwrap() >= 1_000_000,
            "below --min-pause: {p}"
        );
    }
    for t in threads {
        assert!(
            pauses
                .iter()
                .any(|p| p["tid"] == t["tid"] && p["comm"] == t["comm"]),
            "no episode streamed for thread {t} under its name"
        );
    }
    // A pinned preempted thread waited behind something on its CPU: that is named.
    let reason = if sleep_us == 0 { "preempted" } else { "wakeup" };
    assert!(
        pauses.iter().any(|p| p["start_reason"] == reason),
        "no {reason} episode streamed"
    );
    if sleep_us == 0 {
        // Named, and named right: mostly the hogs, or the victim's other thread under its own
        // tid; anything else that ran on the CPU now and then (kworkers, ksoftirqd, the agent's
        // own threads) under the name its tid has in /proc, where it still lives.
        let named: Vec<&Value> = pauses
            .iter()
            .map(|p| &p["preempted_by"])
            .filter(|b| b["comm"].is_string())
            .collect();
        let hog = |b: &&Value| b["comm"].as_str().unwrap().starts_with("pw-hog");
        let sibling = |b: &&Value| {
            threads.iter().any(|t| {
                t["tid"] == b["tid"] && (t["comm"] == b["comm"] || b["comm"] == "pw-victim")
            })
        };
        assert!(
            named.iter().any(hog),
            "no hog named as a preemptor: {named:?}"
        );
        let known = named.iter().filter(|b| hog(b) || sibling(b)).count();
        assert!(
            known * 2 >= named.len(),
            "of {} preemptors named, only {known} are the hogs or the victim's own threads: {named:?}",
            named.len()
        );
        for b in &named {
            // A victim's thread named as a preemptor carries its own name.
            if threads.iter().any(|t| t["tid"] == b["tid"]) {
                assert!(
                    sibling(b),
                    "preemptor {b} is a thread of the victim under another name"
                );
            } else if !hog(b) {
                // (/proc adds a kworker's current work queue to its name.)
                let comm = std::fs::read_to_string(format!("/proc/{}/comm", b["tid"]));
                if let Ok(comm) = comm {
                    assert!(
                        comm.starts_with(b["comm"].as_str().unwrap()),
                        "preemptor {b} is named {comm:?} in /proc"
                    );
                }
            }
        }
    }
}

/// The victim of `report` waited more than `min_wait` ns by the kernel's account (else the test
/// made no contention), and pausewatch's run-queue total for it is within 5% of that; returns
/// the victim's summary line.
fn runq_matches<'a>(lines: &'a [Value], report: &Value, min_wait: u64, label: &str) -> &'a Value {
    let pid = report["pid"].as_u64().unwrap();
    let truth = spin_run_delay(report);
    let summary = summary_of(lines, pid).unwrap_or_else(|| panic!("no summary for victim {pid}"));
    let measured = summary["components"]["runq"]["total_ns"].as_u64().unwrap();
    assert!(
        truth > min_wait,
        "the victim barely waited ({truth} ns): the test did not create contention"
    );
    let err = (measured as f64 - truth as f64).abs() / truth as f64;
    eprintln!(
        "{label}: pausewatch runq {measured} ns vs schedstat run_delay {truth} ns ({:.2}% apart)",
        err * 100.0
    );
    assert!(
        err <= 0.05,
        "{label}: pausewatch runq {measured} ns vs schedstat run_delay {truth} ns: {:.2}% apart",
        err * 100.0
    );
    summary
}

/// The mechanism and wait source the `attached` notice reports are the ones asked for; returns
/// a label for messages.
fn check_attached(lines: &[Value], source: Source) -> &'static str {
    let attached = lines
        .iter()
        .find(|v| v["event"] == "attached")
        .expect("no attached notice");
    let (mechanism, runq_source) = source.attached();
    assert_eq!(attached["mechanism"], mechanism, "{attached}");
    assert_eq!(attached["runq_source"], runq_source, "{attached}");
    if let Source::Refused = source {
        let fell_back = lines.iter().any(|v| {
            v["type"] == "notice"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("tp_btf unavailable"))
        });
        assert!(fell_back, "no notice of the fallback to raw tracepoints");
    }
    match source {
        Source::SchedInfo => "tp_btf, waits from sched_info",
        Source::Wakeup => "tp_btf, waits from sched_wakeup",
        Source::Raw => "raw_tp",
        Source::Refused => "raw_tp after tp_btf was refused",
    }
}

#[test]
fn runq_matches_schedstat_tp_btf() {
    runq_matches_schedstat(Source::SchedInfo, 0);
}

#[test]
fn runq_matches_schedstat_tp_btf_from_wakeups() {
    runq_matches_schedstat(Source::Wakeup, 0);
}

#[test]
fn runq_matches_schedstat_raw_tracepoints() {
    runq_matches_schedstat(Source::Raw, 0);
}

/// Every thread on the host in one switch-in entry (`SwitchIn`): each switch-in finds another
/// thread's entry and its episode state in task storage. Pinned, the victim's waits are all on
/// one run queue, which is what a thread whose entry was taken is still measured by, so its
/// total must still equal the kernel's run_delay, preempted and woken alike, and its streamed
/// episodes must still add up and name their preemptors.
#[test]
fn runq_matches_schedstat_with_every_thread_in_one_switch_in_entry() {
    runq_matches_schedstat_with(Source::SchedInfo, 0, Some(1));
}

#[test]
fn runq_after_wakeups_matches_schedstat_with_every_thread_in_one_switch_in_entry() {
    runq_matches_schedstat_with(Source::SchedInfo, 200, Some(1));
}

/// The victim sleeps voluntarily for 200 µs after every 500 µs of work, so most of its waits
/// follow a wakeup (including wakeups of a thread still on its CPU), not a preemption.
#[test]
fn runq_after_wakeups_matches_schedstat_tp_btf() {
    runq_matches_schedstat(Source::SchedInfo, 200);
}

#[test]
fn runq_after_wakeups_matches_schedstat_tp_btf_from_wakeups() {
    runq_matches_schedstat(Source::Wakeup, 200);
}

#[test]
fn runq_after_wakeups_matches_schedstat_raw_tracepoints() {
    runq_matches_schedstat(Source::Raw, 200);
}

/// The fallback a kernel that refuses tp_btf takes: the first object's programs detached, the
/// object loaded again with the maps sized for raw tracepoints, and the waits still right.
#[test]
fn runq_matches_schedstat_after_tp_btf_is_refused() {
    runq_matches_schedstat(Source::Refused, 0);
}

/// Nothing pinned: four sleeping-and-spinning victim threads and two hogs per CPU, so the
/// scheduler places woken threads on either CPU and the load balancer moves queued ones between
/// run queues (a wait split across two run queues, which the kernel accounts in two pieces).
/// The victim's total wait must still equal the kernel's run_delay within 5%, measured either
/// way, and every streamed episode must name the CPU it ended on and a CPU it came from.
fn runq_with_migrations_matches_schedstat(source: Source) {
    require_root();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = source.args().to_vec();
    args.extend(["--min-pause", "1ms"]);
    let pw = Pausewatch::start(&args);
    let mut hogs: Vec<_> = (0..cpus.min(2))
        .flat_map(|c| start_hogs(2, c, 3.5))
        .collect();
    let report = run_workload(&["spin", "2", "any", "pw-victim", "4", "200"]);
    for h in &mut hogs {
        h.wait().unwrap();
    }
    let lines = pw.stop();
    let label = check_attached(&lines, source);
    runq_matches(&lines, &report, 100_000_000, &format!("{label}, unpinned"));
    let pid = report["pid"].as_u64().unwrap();
    for p in of_type(&lines, "pause").filter(|v| v["pid"] == pid) {
        assert!(
            p["cpu"].as_u64().unwrap() < cpus as u64
                && p["prev_cpu"].as_u64().unwrap() < cpus as u64,
            "{p}"
        );
    }
}

#[test]
fn runq_with_migrations_matches_schedstat_tp_btf() {
    runq_with_migrations_matches_schedstat(Source::SchedInfo);
}

#[test]
fn runq_with_migrations_matches_schedstat_tp_btf_from_wakeups() {
    runq_with_migrations_matches_schedstat(Source::Wakeup);
}

/// `--pid` observes that process and a child it forks after pausewatch started, and nothing
/// else, even a process competing for the same CPU.
#[test]
fn pid_filter_follows_children_and_excludes_others() {
    require_root();
    let cpu = test_cpu().to_string();
    let mut parent = Command::new(workload_bin())
        .args(["fork-on-stdin", "1.5", &cpu])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut other = Command::new(workload_bin())
        .args(["spin", "2.5", &cpu, "pw-other", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let parent_pid = parent.id();
    let pw = Pausewatch::start(&["--pid", &parent_pid.to_string(), "--min-pause", "1ms"]);
    parent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child_pid = serde_json::from_str::<Value>(&line).unwrap()["child"]
        .as_u64()
        .unwrap();
    assert!(parent.wait().unwrap().success());
    other.wait().unwrap();
    let lines = pw.stop();

    for (pid, name) in [
        (parent_pid as u64, "parent"),
        (child_pid, "child forked after start"),
    ] {
        let s = summary_of(&lines, pid).unwrap_or_else(|| panic!("{name} {pid} not observed"));
        assert!(
            s["components"]["runq"]["count"].as_u64().unwrap() > 0,
            "{name}: {s}"
        );
        assert!(
            of_type(&lines, "pause").any(|p| p["pid"] == pid),
            "{name}: no pause streamed"
        );
    }
    let other_pid = other.id() as u64;
    let foreign: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            (v["type"] == "pause" || v["type"] == "summary")
                && v["pid"] != parent_pid
                && v["pid"] != child_pid
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "lines for processes outside --pid (other = {other_pid}): {foreign:?}"
    );
}

/// A thread's latest short waits stay in the kernel's per-thread entry until a dozen gather
/// (`observer_common::SwitchIn`); the agent reads them there, so a process whose thread waited
/// a few times and then went to sleep has them all in its summary while it still lives. Both
/// sides time the same arrivals with the same run-queue clock reading: the count is the
/// kernel's `pcount` growth and the total its `run_delay` growth (/proc/<pid>/schedstat), read
/// while the thread sleeps before and after.
#[test]
fn waits_not_yet_added_to_the_aggregate_are_in_the_summary() {
    require_root();
    let mut child = Command::new(workload_bin())
        .args(["sleep-on-stdin", &test_cpu().to_string(), "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the sleeper");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&out.next().unwrap().unwrap()).unwrap() };
    let pid = next()["pid"].as_u64().unwrap() as u32;
    let schedstat = || -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
        let f: Vec<u64> = s.split_whitespace().map(|v| v.parse().unwrap()).collect();
        (f[1], f[2])
    };
    let pw = Pausewatch::start(&["--pid", &pid.to_string()]);
    let before = schedstat();
    writeln!(stdin, "go").unwrap();
    assert_eq!(next()["slept"], 5);
    // Asleep in its read of stdin again: nothing more arrives until the next line.
    wait_until(
        "the sleeper to block on stdin",
        std::time::Duration::from_secs(5),
        || proc_state(pid) == 'S',
    );
    let after = schedstat();
    // A harvest while it sleeps, then the summary of the living process.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let lines = pw.stop();
    writeln!(stdin, "exit").unwrap();
    assert!(child.wait().unwrap().success());
    let (waits, waited) = (after.1 - before.1, after.0 - before.0);
    // The wakeup by "go" and the five after each sleep: fewer than the entry holds.
    assert!(
        (6..observer_common::PENDING_WAITS as u64).contains(&waits),
        "the sleeper got a CPU {waits} times, not 6: the test's premise is off"
    );
    let summary = summary_of(&lines, pid as u64).unwrap_or_else(|| panic!("no summary for {pid}"));
    let runq = &summary["components"]["runq"];
    assert_eq!(
        runq["count"].as_u64(),
        Some(waits),
        "run-queue waits in the summary against the kernel's pcount growth {waits}: {summary}"
    );
    let total = runq["total_ns"].as_u64().unwrap();
    assert!(
        total.abs_diff(waited) * 100 <= waited,
        "run-queue total {total} ns against the kernel's run_delay growth {waited} ns: {summary}"
    );
}
