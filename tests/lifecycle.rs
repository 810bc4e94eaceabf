//! The agent's lifecycle on a shared host: whichever signal ends it (SIGTERM, SIGINT, SIGHUP),
//! it writes its summaries, restores the BPF statistics setting and leaves no program or map
//! of its own in the kernel (checked against the kernel's own list); and two instances run
//! side by side without disturbing each other.
use std::{collections::BTreeSet, time::Duration};

use pausewatch_tests::*;
use serde_json::Value;

/// The BPF programs and maps a process holds, by kernel id, from its fds' fdinfo.
fn bpf_ids(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut maps) = (BTreeSet::new(), BTreeSet::new());
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(text) = std::fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        for line in text.lines() {
            let id = |key: &str| {
                line.strip_prefix(key)
                    .map(|v| v.trim().parse::<u32>().unwrap())
            };
            if let Some(id) = id("prog_id:") {
                progs.insert(id);
            }
            if let Some(id) = id("map_id:") {
                maps.insert(id);
            }
        }
    }
    (progs, maps)
}

/// Programs and maps loaded in the kernel now, by id.
fn loaded() -> (BTreeSet<u32>, BTreeSet<u32>) {
    let progs = aya::programs::loaded_programs()
        .map(|p| p.expect("reading the kernel's program list").id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .map(|m| m.expect("reading the kernel's map list").id())
        .collect();
    (progs, maps)
}

fn bpf_stats_enabled() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap()
        .trim()
        .to_string()
}

fn stops_of(lines: &[Value], pid: u32) -> usize {
    of_type(lines, "stop").filter(|v| v["pid"] == pid).count()
}

/// Waits until `pw` has reported `n` stops of `pid` (a signal stop is written once its
/// SIGCONT is seen, or 500 ms after it ended).
fn wait_stops(pw: &Pausewatch, pid: u32, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stops_of(&pw.lines(), pid) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} stops reported",
            stops_of(&pw.lines(), pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn induce_stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(150));
    signal(pid, libc::SIGCONT);
}

#[test]
fn every_exit_signal_leaves_nothing_behind_and_instances_are_independent() {
    require_root();
    let stats_before = bpf_stats_enabled();
    let mut victim = victim("pw-lifecycle", 1, 60.0);
    let pid = victim.id();
    // One instance that outlives the others, watching the same process.
    let long = Pausewatch::start(&["--pid", &pid.to_string()]);
    let (long_progs, long_maps) = bpf_ids(long.pid());
    assert!(long_progs.len() >= 3 && !long_maps.is_empty());
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let pw = Pausewatch::start(&["--pid", &pid.to_string(), "--bpf-stats"]);
        let (progs, maps) = bpf_ids(pw.pid());
        assert!(
            progs.is_disjoint(&long_progs) && maps.is_disjoint(&long_maps),
            "each instance loads its own programs and maps"
        );
        // --bpf-stats holds the kernel's statistics on through a BPF_ENABLE_STATS fd; the
        // sysctl is the setting an operator may have chosen, which must be as it was after.
        induce_stop(pid);
        wait_stops(&pw, pid, 1);
        let lines = pw.stop_with(sig);
        // Flushed at exit: its summaries and the cost report.
        assert!(
            summary_of(&lines, pid.into()).is_some(),
            "{name}: no summary of the watched process"
        );
        assert!(
            of_type(&lines, "self_cost").next().is_some(),
            "{name}: no self_cost line"
        );
        let (now_progs, now_maps) = loaded();
        let left: Vec<&u32> = progs.intersection(&now_progs).collect();
        assert!(left.is_empty(), "{name}: programs {left:?} still loaded");
        let left: Vec<&u32> = maps.intersection(&now_maps).collect();
        assert!(left.is_empty(), "{name}: maps {left:?} still loaded");
        assert_eq!(
            bpf_stats_enabled(),
            stats_before,
            "{name}: BPF statistics setting not restored"
        );
        // The other instance is untouched: its programs are loaded and it still sees stops.
        assert!(
            long_progs.is_subset(&now_progs),
            "{name}: the other instance lost programs"
        );
    }
    // It saw every stop, and the one after the others left.
    wait_stops(&long, pid, 3);
    induce_stop(pid);
    wait_stops(&long, pid, 4);
    let lines = long.stop();
    assert_eq!(stops_of(&lines, pid), 4);
    let (now_progs, _) = loaded();
    assert!(long_progs.is_disjoint(&now_progs));
    let _ = (victim.kill(), victim.wait());
}

/// `--bpf-stats`: every hot program is reported with the kernel's run count and time, next to
/// an empty program on its own hook. The run counts are checked against what the kernel
/// counted itself: page_fault_user ran at least once per minor fault the workload's own
/// /proc/self/stat counted (host-wide, others fault too).
#[test]
fn bpf_stats_measure_each_hot_program_against_an_empty_one_on_its_hook() {
    require_root();
    let before = context_switches();
    let pw = Pausewatch::start(&["--bpf-stats", "--no-lease-socket"]);
    let attached = context_switches();
    let touched = run_workload(&["touch-anon", "64"]);
    let minflt = touched["minflt"].as_u64().expect("minflt");
    assert!(minflt >= 16384, "64 MiB of 4 KiB pages: {touched}");
    run_workload(&["pingpong", "1", &test_cpu().to_string()]);
    let stopping = context_switches();
    let lines = pw.stop();
    let after = context_switches();
    let cost = of_type(&lines, "self_cost")
        .next()
        .expect("a self_cost line");
    assert_eq!(cost["stats_enabled"], true);
    assert_eq!(cost["stats_mode"], "continuous");
    let switch_floor = cost["stats_floor_ns"]
        .as_u64()
        .expect("the sched_switch floor");
    let program = |name: &str| -> &Value {
        cost["programs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {cost}"))
    };
    for name in ["sched_switch_btf", "sched_wakeup_btf", "page_fault_user"] {
        let p = program(name);
        let (runs, mean, floor, net) = (
            p["run_count"].as_u64().unwrap(),
            p["mean_ns"].as_u64().unwrap(),
            p["floor_ns"].as_u64().unwrap(),
            p["net_ns"].as_u64().unwrap(),
        );
        assert!(runs > 0 && mean > 0 && floor > 0, "{p}");
        assert_eq!(net, mean.saturating_sub(floor), "{p}");
        // An empty program on the hook costs what the statistics' clock read costs, whichever
        // the hook: within a factor of three of the one on sched_switch.
        assert!(
            floor * 3 >= switch_floor && floor <= switch_floor * 3,
            "{name}: floor {floor} ns against {switch_floor} ns on sched_switch"
        );
    }
    assert!(
        program("page_fault_user")["run_count"].as_u64().unwrap() >= minflt,
        "page_fault_user ran fewer times than the workload faulted ({minflt}): {cost}"
    );
    // sched_switch runs once per context switch, which the kernel counts in /proc/stat's
    // ctxt: at least every switch while it was surely attached with statistics on, at most
    // every switch from before start to after exit.
    let runs = program("sched_switch_btf")["run_count"].as_u64().unwrap();
    assert!(
        runs >= (stopping - attached) * 95 / 100 && runs <= after - before,
        "sched_switch ran {runs} times; the kernel switched {} times while attached, {} in all",
        stopping - attached,
        after - before
    );
    // The empty programs are calibration, not pausewatch's cost: not listed as programs.
    assert!(
        cost["programs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["name"].as_str().unwrap().starts_with("stats_floor")),
        "{cost}"
    );
}

/// Host-wide context switches since boot (/proc/stat `ctxt`).
fn context_switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ctxt in /proc/stat")
}

/// By default the statistics are on one second in every `--bpf-stats-every` (from 10 s after
/// start): the cost is reported from those seconds, sched_switch's count covers only part of
/// the switches the kernel made, and the kernel setting is as it was afterwards.
#[test]
fn bpf_stats_are_sampled_by_default() {
    require_root();
    let setting = bpf_stats_enabled();
    let before = context_switches();
    let started = std::time::Instant::now();
    let pw = Pausewatch::start(&["--bpf-stats-every", "3s", "--no-lease-socket"]);
    // Windows at 10 s and 13 s after start, one second each.
    run_workload(&["pingpong", "15", &test_cpu().to_string()]);
    let lines = pw.stop();
    let (switches, elapsed) = (context_switches() - before, started.elapsed());
    let cost = of_type(&lines, "self_cost")
        .next()
        .expect("a self_cost line");
    assert_eq!(cost["stats_mode"], "sampled", "{cost}");
    assert_eq!(cost["stats_enabled"], true, "{cost}");
    let on = cost["stats_on_s"].as_f64().unwrap();
    assert!(
        (1.5..=5.0).contains(&on),
        "statistics on for {on} s of {elapsed:?}: {cost}"
    );
    let runs = cost["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sched_switch_btf")
        .and_then(|p| p["run_count"].as_u64())
        .unwrap();
    assert!(
        runs > 0 && (runs as f64) < switches as f64 * 0.6,
        "sched_switch counted {runs} runs of {switches} switches while statistics were on {on} s of {elapsed:?}"
    );
    assert!(
        cost["stats_floor_ns"].as_u64().is_some_and(|f| f > 0),
        "{cost}"
    );
    assert_eq!(
        bpf_stats_enabled(),
        setting,
        "BPF statistics setting not restored"
    );
}

/// Names of the BPF programs process `pid` holds (the kernel keeps 15 characters).
fn program_names(pid: u32) -> BTreeSet<String> {
    let ids = bpf_ids(pid).0;
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect()
}

/// Any syscall tracepoint taxes every syscall on the host, so an operator can leave them off:
/// then none of those programs is even loaded, and pausewatch says what that costs in features.
#[test]
fn syscall_tracepoints_can_be_left_off_and_say_what_is_lost() {
    require_root();
    let syscall_programs = [
        "fsync_enter",
        "sync_exit",
        "clock_settime_e",
        "adjtimex_enter",
    ];
    let with = Pausewatch::start(&[]);
    let names = program_names(with.pid());
    with.stop();
    for p in syscall_programs {
        assert!(names.contains(p), "{p} not loaded by default: {names:?}");
    }
    let without = Pausewatch::start(&["--no-syscall-tracepoints"]);
    let names = program_names(without.pid());
    let lines = without.stop();
    for p in syscall_programs {
        assert!(
            !names.contains(p),
            "{p} loaded with --no-syscall-tracepoints"
        );
    }
    assert!(names.contains("sched_switch_bt"), "{names:?}");
    assert!(
        of_type(&lines, "notice").any(|n| n["event"] == "degraded"
            && n["message"]
                .as_str()
                .is_some_and(|m| m.contains("syscall tracepoints off"))),
        "no notice says what is lost"
    );
}
