//! Clock changes measured by real eBPF and the agent's timerfd: steps the test makes with
//! clock_settime and adjtimex ADJ_SETOFFSET (forward, then back by the same amount, so the
//! clock ends where it was), a PLL slew through adjtimex, and a change refused for want of
//! CAP_SYS_TIME, against the sizes the test asked for and the process that asked. Who changes
//! the clock is seen two ways (the CAP_SYS_TIME check, our default, and the syscall
//! tracepoints); the steps and the refusal are checked with both.
use std::time::Duration;

use pausewatch_tests::*;
use serde_json::Value;

fn steps(lines: &[Value]) -> Vec<&Value> {
    of_type(lines, "clock")
        .filter(|v| v["event"] == "step")
        .collect()
}

/// The two ways pausewatch sees who changes the clock.
const HOOKS: [&str; 2] = ["never", "always"];

#[test]
fn steps_are_measured_and_attributed_to_the_stepping_process() {
    require_root();
    for hooks in HOOKS {
        steps_through("settime", "clock_settime", hooks);
    }
}

/// adjtimex ADJ_SETOFFSET (how chronyd and ntpd step) checks CAP_SYS_TIME twice in one call:
/// still one adjust line per call.
#[test]
fn steps_through_adjtimex_are_one_change_each() {
    require_root();
    for hooks in HOOKS {
        steps_through("setoffset", "clock_adjtime", hooks);
    }
}

/// A process without CAP_SYS_TIME that tries to step the clock: an adjust line that says it
/// was refused (EPERM), and no step.
#[test]
fn a_refused_clock_change_is_reported_as_refused() {
    require_root();
    for hooks in HOOKS {
        let mut pw = watching(hooks);
        let made = run_workload_under(
            &["setpriv", "--bounding-set", "-sys_time", "--"],
            &["step-clock", "1500000000", "settime", "may-fail"],
        );
        assert_eq!(made["errno"], libc::EPERM, "{made}");
        let adjust = pw.wait_for(Duration::from_secs(10), |v| {
            v["event"] == "adjust" && v["by"]["pid"] == made["pid"]
        });
        std::thread::sleep(Duration::from_millis(300));
        let lines = pw.stop();
        assert_eq!(adjust["ok"], false, "{hooks}: {adjust}");
        assert_eq!(adjust["ret"], -libc::EPERM, "{hooks}: {adjust}");
        assert_eq!(
            adjust["by"]["syscall"], "clock_settime",
            "{hooks}: {adjust}"
        );
        assert!(steps(&lines).is_empty(), "{hooks}: {:#?}", steps(&lines));
    }
}

/// pausewatch for the clock tests, seeing clock changes with `--syscall-tracepoints hooks`.
fn watching(hooks: &str) -> Pausewatch {
    Pausewatch::start(&[
        "--min-pause",
        "1s",
        "--no-lease-socket",
        "--syscall-tracepoints",
        hooks,
    ])
}

/// Steps the clock forward and back by 1.5 s with `how` (pw-workload step-clock) while
/// pausewatch watches with `--syscall-tracepoints hooks`.
fn steps_through(how: &str, syscall: &str, hooks: &str) {
    let mut pw = watching(hooks);
    let fwd = run_workload(&["step-clock", "1500000000", how]);
    pw.wait_for(Duration::from_secs(10), |v| v["event"] == "step");
    std::thread::sleep(Duration::from_millis(300));
    let back = run_workload(&["step-clock", "-1500000000", how]);
    pw.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "step" && v["step_ns"].as_i64() < Some(0)
    });
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let s = steps(&lines);
    assert_eq!(s.len(), 2, "expected two steps, got {s:#?}");
    for (step, made) in s.iter().zip([&fwd, &back]) {
        let asked = made["requested_ns"].as_i64().unwrap();
        let measured = step["step_ns"].as_i64().unwrap();
        // The tool reads the clock, adds its step and sets it: the step made is the one asked
        // minus the few µs between its read and its set; slew since the agent's last sample is
        // at most 0.5 ms. Within 1 ms.
        assert!(
            (measured - asked).abs() < 1_000_000,
            "{how}, {hooks}: measured {measured} ns for a step of {asked} ns"
        );
        assert_eq!(
            step["direction"],
            if asked > 0 { "forward" } else { "back" }
        );
        let by = &step["by"];
        assert_eq!(by["pid"], made["pid"], "{step}");
        assert_eq!(by["comm"], "pw-workload");
        assert_eq!(by["syscall"], syscall, "{how}, {hooks}: {step}");
        assert_eq!(by["uid"], 0);
        let requested = step["requested_step_ns"].as_i64().unwrap();
        assert!(
            (requested - measured).abs() < 1_000_000,
            "requested {requested} vs measured {measured}"
        );
    }
    // The syscalls themselves, as adjust lines that say they stepped.
    let adjusts: Vec<&Value> = of_type(&lines, "clock")
        .filter(|v| v["event"] == "adjust" && v["by"]["comm"] == "pw-workload")
        .collect();
    assert_eq!(adjusts.len(), 2, "{how}, {hooks}: {adjusts:#?}");
    assert!(
        adjusts
            .iter()
            .all(|v| v["steps"] == true && v["ok"] == true),
        "{how}, {hooks}: {adjusts:#?}"
    );
}

#[test]
fn a_slew_is_reported_as_a_slew_not_a_step() {
    require_root();
    let mut pw = Pausewatch::start(&["--min-pause", "1s", "--no-lease-socket"]);
    // 5 ms through the PLL, held for 2.5 s so the agent's once-a-second sample sees it.
    let made = run_workload(&["slew-clock", "5000", "2.5"]);
    pw.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "adjust" && v["by"]["pid"] == made["pid"] && v["changes"][0]["offset_ns"] == 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    assert!(
        steps(&lines).is_empty(),
        "a slew is not a step: {:#?}",
        steps(&lines)
    );
    let adjusts: Vec<&Value> = of_type(&lines, "clock")
        .filter(|v| v["event"] == "adjust" && v["by"]["pid"] == made["pid"])
        .collect();
    assert_eq!(adjusts.len(), 2, "the slew and the restore: {adjusts:#?}");
    let slew = adjusts[0];
    assert_eq!(slew["steps"], false);
    assert_eq!(slew["ok"], true);
    assert_eq!(
        slew["by"]["syscall"], "clock_adjtime",
        "glibc's adjtimex is clock_adjtime"
    );
    let kinds: Vec<&str> = slew["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["slew", "status"]);
    assert_eq!(slew["changes"][0]["offset_ns"], 5_000_000);
    // The sync state showed the PLL slewing while it was.
    assert!(
        of_type(&lines, "clock").any(|v| v["event"] == "sync"
            && v["slewing"] == true
            && v["pll_offset_ns"]
                .as_i64()
                .is_some_and(|o| o > 0 && o <= 5_000_000)),
        "no sync line saw the slew"
    );
}
