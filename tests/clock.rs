//! Clock changes measured by real eBPF and the agent's timerfd: steps the test makes with
//! clock_settime (forward, then back by the same amount, so the clock ends where it was), and a
//! PLL slew through adjtimex, against the sizes the test asked for and the process that asked.
use std::time::Duration;

use pausewatch_tests::*;
use serde_json::Value;

fn steps(lines: &[Value]) -> Vec<&Value> {
    of_type(lines, "clock")
        .filter(|v| v["event"] == "step")
        .collect()
}

#[test]
fn steps_are_measured_and_attributed_to_the_stepping_process() {
    require_root();
    let mut pw = Pausewatch::start(&["--min-pause", "1s", "--no-lease-socket"]);
    let fwd = run_workload(&["step-clock", "1500000000"]);
    pw.wait_for(Duration::from_secs(10), |v| v["event"] == "step");
    std::thread::sleep(Duration::from_millis(300));
    let back = run_workload(&["step-clock", "-1500000000"]);
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
            "measured {measured} ns for a step of {asked} ns"
        );
        assert_eq!(
            step["direction"],
            if asked > 0 { "forward" } else { "back" }
        );
        let by = &step["by"];
        assert_eq!(by["pid"], made["pid"], "{step}");
        assert_eq!(by["comm"], "pw-workload");
        assert_eq!(by["syscall"], "clock_settime");
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
    assert_eq!(adjusts.len(), 2, "{adjusts:#?}");
    assert!(
        adjusts
            .iter()
            .all(|v| v["steps"] == true && v["ok"] == true)
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
