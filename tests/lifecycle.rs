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
