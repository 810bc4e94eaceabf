//! Stops measured by real eBPF: SIGSTOP/SIGCONT, ptrace and the cgroup v1 and v2 freezers, against the
//! interval the test itself held the process stopped, with the test as the stopper and resumer.
use std::time::{Duration, Instant};

use pausewatch_tests::*;
use serde_json::Value;

/// The one stop line of `pid`; fails if there is not exactly one.
fn the_stop_of(lines: &[Value], pid: u32) -> Value {
    let stops: Vec<&Value> = of_type(lines, "stop").filter(|v| v["pid"] == pid).collect();
    assert_eq!(
        stops.len(),
        1,
        "expected one stop line for {pid}, got {stops:#?}"
    );
    stops[0].clone()
}

/// The stop fits the window the test held the process: at most from just before its stop
/// request to just after its resume request (`held_max`), at least from when /proc first
/// showed it stopped to just before the resume request (`held_min`); 1 ms of slack for the
/// two clocks' reads.
fn check_duration(stop: &Value, held_min: Duration, held_max: Duration) {
    let d = stop["duration_ns"].as_u64().unwrap() as u128;
    let (lo, hi) = (held_min.as_nanos(), held_max.as_nanos());
    eprintln!(
        "stop {:.3} ms; test held it between {:.3} and {:.3} ms",
        d as f64 / 1e6,
        lo as f64 / 1e6,
        hi as f64 / 1e6
    );
    assert!(
        d + 1_000_000 >= lo && d <= hi + 1_000_000,
        "stop of {d} ns outside the {lo}..{hi} ns the test held it: {stop}"
    );
}

fn check_actor(a: &Value, what: &str) {
    assert_eq!(
        a["pid"],
        std::process::id(),
        "{what} should be this test process: {a}"
    );
    assert_eq!(a["uid"], 0, "{what} uid: {a}");
}

#[test]
fn sigstop_then_sigcont_is_one_stop_per_process_naming_both_senders() {
    require_root();
    let pw = Pausewatch::start(&[]);
    let mut stopped = victim("pw-stopme", 3, 5.0);
    let mut bystander = victim("pw-bystander", 1, 5.0);
    let pid = stopped.id();
    std::thread::sleep(Duration::from_millis(300));

    let (held_min, held_max) = hold_stopped(pid, Duration::from_millis(500));

    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let _ = (
        stopped.kill(),
        bystander.kill(),
        stopped.wait(),
        bystander.wait(),
    );

    let stop = the_stop_of(&lines, pid);
    check_duration(&stop, held_min, held_max);
    let d = stop["duration_ns"].as_u64().unwrap();
    assert!(
        d.abs_diff(500_000_000) <= 5_000_000,
        "a 500 ms stop reported as {d} ns: {stop}"
    );
    assert_eq!(stop["kind"], "signal");
    assert_eq!(stop["signal"], "SIGSTOP");
    assert_eq!(
        stop["threads"], 3,
        "all three threads stopped in one process-wide stop: {stop}"
    );
    assert_eq!(stop["comm"], "pw-stopme");
    check_actor(&stop["stopped_by"], "stopped_by");
    check_actor(&stop["resumed_by"], "resumed_by");
    assert_eq!(stop["resume_signal"], "SIGCONT");
    let me = std::process::id();
    let text = stop["description"].as_str().unwrap();
    assert!(
        text.contains(&format!("SIGSTOP from pid {me}"))
            && text.contains(&format!("resumed by SIGCONT from pid {me}")),
        "{text}"
    );

    // Both signals appear with their sender; the bystander was never stopped.
    for sig in ["SIGSTOP", "SIGCONT"] {
        let s = of_type(&lines, "signal")
            .find(|v| v["pid"] == pid && v["signal"] == sig)
            .unwrap_or_else(|| panic!("no {sig} line"));
        check_actor(&s["sender"], sig);
    }
    assert_eq!(
        of_type(&lines, "stop")
            .filter(|v| v["pid"] == bystander.id())
            .count(),
        0,
        "a process never stopped has a stop line"
    );
    let summary = summary_of(&lines, pid as u64).expect("victim summary");
    assert_eq!(summary["stops"]["count"], 1, "{summary}");
    // Thread episodes that were stops are not streamed again as pauses.
    assert!(
        of_type(&lines, "pause")
            .filter(|v| v["pid"] == pid)
            .all(|v| v["components"]["stopped_ns"] == 0)
    );
}

#[test]
fn a_ptrace_stop_is_told_apart_and_names_the_tracer() {
    require_root();
    let pw = Pausewatch::start(&[]);
    let mut traced = victim("pw-traced", 1, 5.0);
    let pid = traced.id() as i32;
    std::thread::sleep(Duration::from_millis(300));

    // SAFETY: ptrace requests on our own child, all from this thread; status is a valid out
    // pointer.
    let (held_min, held_max) = unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0),
            0,
            "PTRACE_SEIZE: {}",
            std::io::Error::last_os_error()
        );
        let t0 = Instant::now();
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0),
            0,
            "PTRACE_INTERRUPT"
        );
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        assert!(
            libc::WIFSTOPPED(status),
            "the tracee did not stop: status {status:#x}"
        );
        let seen_stopped = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        // At least until the detach is asked for: the stop ends inside that call.
        let held_min = seen_stopped.elapsed();
        assert_eq!(
            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0),
            0,
            "PTRACE_DETACH"
        );
        (held_min, t0.elapsed())
    };

    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let _ = (traced.kill(), traced.wait());
    let stop = the_stop_of(&lines, pid as u32);
    assert_eq!(stop["kind"], "ptrace", "{stop}");
    assert_eq!(
        stop["signal"],
        Value::Null,
        "a ptrace stop names no stop signal: {stop}"
    );
    check_duration(&stop, held_min, held_max);
    check_actor(&stop["stopped_by"], "the tracer");
    assert!(
        stop["description"]
            .as_str()
            .unwrap()
            .ends_with("released by the tracer"),
        "{stop}"
    );
}

#[test]
fn a_cgroup_v1_freeze_is_told_apart_from_signal_and_ptrace_stops() {
    require_root();
    let root = std::path::Path::new("/sys/fs/cgroup/freezer");
    assert!(
        root.join("freezer.state").exists() || root.join("tasks").exists(),
        "the cgroup v1 freezer is not mounted at {}",
        root.display()
    );
    let cg = root.join(format!("pausewatch-test-{}", std::process::id()));
    std::fs::create_dir_all(&cg).expect("creating a freezer cgroup");
    let pw = Pausewatch::start(&[]);
    let mut frozen = victim("pw-frozen", 2, 5.0);
    let pid = frozen.id();
    std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        .expect("moving the victim into the freezer cgroup");
    std::thread::sleep(Duration::from_millis(300));

    let t0 = Instant::now();
    std::fs::write(cg.join("freezer.state"), "FROZEN").expect("freezing");
    wait_until("the cgroup is frozen", Duration::from_secs(10), || {
        std::fs::read_to_string(cg.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
    });
    let seen_frozen = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    // At least until the thaw is asked for: the threads are woken inside that write, which
    // took 3 ms longer than the stop's end to return once on a loaded host.
    let held_min = seen_frozen.elapsed();
    std::fs::write(cg.join("freezer.state"), "THAWED").expect("thawing");
    let held_max = t0.elapsed();

    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let _ = (frozen.kill(), frozen.wait());
    let _ = std::fs::remove_dir(&cg);
    let stop = the_stop_of(&lines, pid);
    assert_eq!(stop["kind"], "freezer", "{stop}");
    assert_eq!(stop["threads"], 2, "{stop}");
    check_duration(&stop, held_min, held_max);
    assert_eq!(stop["stopped_by"], Value::Null, "{stop}");
}

/// A child of the cgroup v2 hierarchy: /sys/fs/cgroup when it is v2 (or /sys/fs/cgroup/unified
/// on a hybrid host), else the hierarchy mounted on a scratch directory beside the v1 ones (the
/// v2 freezer is core, `cgroup.freeze` needs no controller). Removed, and unmounted if this
/// mounted it, when dropped.
struct Cgroup2 {
    dir: std::path::PathBuf,
    mounted: Option<std::path::PathBuf>,
}

impl Cgroup2 {
    fn new(tag: &str) -> Self {
        let is_v2 = |p: &str| std::path::Path::new(p).join("cgroup.controllers").exists();
        let (root, mounted) = if is_v2("/sys/fs/cgroup") {
            ("/sys/fs/cgroup".into(), None)
        } else if is_v2("/sys/fs/cgroup/unified") {
            ("/sys/fs/cgroup/unified".into(), None)
        } else {
            let m = std::path::PathBuf::from(format!("/tmp/pw-cgroup2-{}", std::process::id()));
            std::fs::create_dir_all(&m).unwrap();
            run_cmd(&["mount", "-t", "cgroup2", "none", m.to_str().unwrap()]);
            (m.clone(), Some(m))
        };
        let dir = root.join(format!("pw-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self { dir, mounted }
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "frozen 1"))
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(m) = &self.mounted {
            let _ = std::process::Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// The cgroup v2 freezer parks every thread, running or asleep, in an interruptible sleep
/// (`do_freezer_trap`) rather than a stopped state: pausewatch tells it from a voluntary
/// sleep by the thread's JOBCTL_TRAP_FREEZE bit, and it is one `freezer` stop of the process.
#[test]
fn a_cgroup_v2_freeze_is_a_freezer_stop_of_every_thread() {
    require_root();
    let cg = Cgroup2::new("freeze");
    let pw = Pausewatch::start(&[]);
    let mut frozen = victim("pw-frozen2", 2, 5.0);
    let pid = frozen.id();
    std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string())
        .expect("moving the victim into the v2 cgroup");
    std::thread::sleep(Duration::from_millis(300));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();

    let t0 = Instant::now();
    std::fs::write(cg.dir.join("cgroup.freeze"), "1").expect("freezing");
    wait_until("the cgroup is frozen", Duration::from_secs(10), || {
        cg.frozen()
    });
    let seen_frozen = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let held_min = seen_frozen.elapsed();
    std::fs::write(cg.dir.join("cgroup.freeze"), "0").expect("thawing");
    let held_max = t0.elapsed();

    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let _ = (frozen.kill(), frozen.wait());
    drop(cg);
    let stop = the_stop_of(&lines, pid);
    assert_eq!(stop["kind"], "freezer", "{stop}");
    assert_eq!(
        stop["threads"], threads,
        "every thread, asleep or running: {stop}"
    );
    check_duration(&stop, held_min, held_max);
    assert_eq!(stop["stopped_by"], Value::Null, "{stop}");
}
