//! Host-wide signals: per-CPU steal against /proc/stat, and the control sleeper's late wakes
//! split into what the kernel explains (its run-queue wait, against its own schedstat) and what
//! it does not. A real run-queue wait imposed on the sleeper must never be called a host freeze.
use std::time::Duration;

use pausewatch_tests::*;
use serde_json::Value;

/// Per-CPU steal from /proc/stat in ns (USER_HZ ticks converted).
fn proc_stat_steal() -> Vec<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::fs::read_to_string("/proc/stat")
        .expect("/proc/stat")
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let ticks: u64 = l.split_whitespace().nth(8).unwrap().parse().unwrap();
            ticks * (1_000_000_000 / hz)
        })
        .collect()
}

fn ns_list(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn host_steal_equals_the_proc_stat_delta() {
    require_root();
    let before = proc_stat_steal();
    let pw = Pausewatch::start(&["--min-pause", "1s", "--no-lease-socket"]);
    std::thread::sleep(Duration::from_secs(3));
    let lines = pw.stop();
    let after = proc_stat_steal();
    let run = of_type(&lines, "host")
        .find(|v| v["event"] == "run")
        .expect("the run's steal line");
    let (from, to) = (
        ns_list(&run["per_cpu_steal_total_from_ns"]),
        ns_list(&run["per_cpu_steal_total_ns"]),
    );
    assert_eq!(from.len(), before.len());
    for cpu in 0..before.len() {
        // pausewatch's window lies inside the test's: its counters lie between the test's.
        assert!(
            before[cpu] <= from[cpu] && from[cpu] <= to[cpu] && to[cpu] <= after[cpu],
            "cpu {cpu}: test {} .. {}, pausewatch {} .. {}",
            before[cpu],
            after[cpu],
            from[cpu],
            to[cpu]
        );
        if before[cpu] == after[cpu] {
            assert_eq!(
                from[cpu], before[cpu],
                "cpu {cpu} had no steal; same counter"
            );
        }
    }
    let delta: u64 = to.iter().zip(&from).map(|(t, f)| t - f).sum();
    assert_eq!(run["steal_ns"].as_u64().unwrap(), delta);
    // The interval lines chain: each starts where the previous ended.
    let intervals: Vec<&Value> = of_type(&lines, "host")
        .filter(|v| v["event"] == "steal")
        .collect();
    for w in intervals.windows(2) {
        assert_eq!(
            w[1]["per_cpu_steal_total_from_ns"],
            w[0]["per_cpu_steal_total_ns"]
        );
    }
}

/// Hypervisor steal is charged to the threads that held the CPU when it was stolen. Ground
/// truth: /proc/stat's per-CPU steal, which counts the same paravirtual steal clock the
/// scheduler folds into `rq->prev_steal_time_rq` (truncated to USER_HZ ticks). With a hog
/// pinned to every CPU from before pausewatch starts until after it stops, the hogs hold the
/// CPUs nearly all the time it watches, so most steal is theirs. (With the hogs started after
/// pausewatch and ended before it, the CPUs were idle or ran pausewatch at either end, and
/// steal is bursty on these VMs: a CI run at 9a944c9 saw half of its 20 ms of steal there.)
#[test]
fn steal_is_charged_to_the_threads_that_held_the_cpu() {
    require_root();
    // SAFETY: sysconf has no preconditions.
    let tick = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let cpus = proc_stat_steal().len();
    let hogs: Vec<_> = (0..cpus).flat_map(|cpu| start_hogs(1, cpu, 10.0)).collect();
    let hog_pids: Vec<u64> = hogs.iter().map(|h| u64::from(h.id())).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = proc_stat_steal();
    let pw = Pausewatch::start(&["--min-pause", "1s", "--no-lease-socket"]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    let lines = pw.stop();
    let after = proc_stat_steal();
    for mut h in hogs {
        assert!(h.wait().expect("hog").success());
    }
    let a = of_type(&lines, "host")
        .find(|v| v["event"] == "steal_attribution")
        .expect("the steal_attribution line (our kernels have CONFIG_PARAVIRT_TIME_ACCOUNTING and a moving steal clock)");
    let clock = ns_list(&a["per_cpu_sched_steal_ns"]);
    let seen = ns_list(&a["per_cpu_seen_ns"]);
    assert_eq!(clock.len(), before.len(), "{a}");
    for cpu in 0..before.len() {
        // The same clock: the scheduler's reading lies between the test's two /proc/stat
        // readings, give or take the tick /proc/stat truncates to.
        assert!(
            before[cpu] <= clock[cpu] + tick && clock[cpu] < after[cpu] + tick,
            "cpu {cpu}: /proc/stat {} .. {} ns, scheduler's steal clock {} ns",
            before[cpu],
            after[cpu],
            clock[cpu]
        );
        // What pausewatch saw accrue lies within what /proc/stat counted around it.
        assert!(
            seen[cpu] < after[cpu] - before[cpu] + tick,
            "cpu {cpu}: seen {} ns, /proc/stat delta {} ns",
            seen[cpu],
            after[cpu] - before[cpu]
        );
    }
    let seen_ns = a["seen_ns"].as_u64().unwrap();
    let charged = a["charged_ns"].as_u64().unwrap();
    assert_eq!(seen_ns, seen.iter().sum::<u64>());
    assert!(charged <= seen_ns, "{a}");
    assert_eq!(a["unattributed_ns"].as_u64().unwrap(), seen_ns - charged);
    let steal_of = |v: &Value| v["steal_est"]["total_ns"].as_u64().unwrap();
    let summed: u64 = of_type(&lines, "summary").map(steal_of).sum();
    assert_eq!(
        summed, charged,
        "the processes' steal adds up to what was charged"
    );
    let hogs_ns: u64 = hog_pids
        .iter()
        .filter_map(|&pid| summary_of(&lines, pid))
        .map(steal_of)
        .sum();
    eprintln!(
        "steal: /proc/stat {:?} -> {:?}; seen {seen:?} ns; charged {charged} ns, to the hogs {hogs_ns} ns",
        before, after
    );
    if seen_ns >= 2_000_000 {
        assert!(
            hogs_ns * 2 >= seen_ns,
            "the hogs held the CPUs but got {hogs_ns} of {seen_ns} ns of steal"
        );
    }
}

/// Threads of `pid` named `name`.
fn thread_named(pid: u32, name: &str) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
        .unwrap_or_else(|| panic!("no thread {name} in {pid}"))
}

/// CLOCK_MONOTONIC now, the clock of the agent's `*_mono_ns` fields.
fn mono_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn run_delay(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .expect("schedstat")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_run_queue_wait_of_the_control_sleeper_is_never_a_host_freeze() {
    require_root();
    let pw = Pausewatch::start(&["--no-lease-socket"]);
    let tid = thread_named(pw.pid(), "pw-control");
    let cpu = test_cpu();
    // Pin the sleeper where a real-time hog will run: it then waits on the run queue.
    // SAFETY: zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning pw-control: {}",
            std::io::Error::last_os_error()
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let delay_before = run_delay(pw.pid(), tid);
    let window_start = mono_ns();
    // A late wake's run-queue part is counted from the sleeper's previous wake, one control
    // period (10 ms) before it was due: the hog starts later than that after the window opens.
    std::thread::sleep(Duration::from_millis(50));
    run_workload_quiet(&["rt-hog", "0.4", &cpu.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let window_end = mono_ns();
    let delay = run_delay(pw.pid(), tid) - delay_before;
    let lines = pw.stop();
    let late: Vec<&Value> = of_type(&lines, "host_pause").collect();
    // The late wakes whose whole interval, from the previous wake, lies inside the window the
    // kernel's run_delay was read over (a fresh CI run at 0f8f18e summed one from after it).
    let in_window = |v: &Value| {
        let start = v["start_mono_ns"].as_u64().unwrap();
        start >= window_start + 20_000_000
            && start + v["duration_ns"].as_u64().unwrap() <= window_end
    };
    // Outside the window the sleeper is not held by the hog, and a late wake there is whatever
    // the VM did: a fresh CI run at 3290193 saw it 8.1 ms late, unexplained by run-queue wait
    // or steal, 210 ms before the window (right after the sleeper was pinned), and pausewatch
    // rightly called that a host freeze. Only the window's wakes are this test's.
    for v in late.iter().filter(|v| !in_window(v)) {
        eprintln!("late wake outside the window: {}", v["description"]);
    }
    assert!(
        late.iter()
            .filter(|v| in_window(v))
            .all(|v| v["verdict"] != "host_freeze" && v["host_wide"] == false),
        "run-queue wait called a host-wide pause: {late:#?}"
    );
    let worst = late
        .iter()
        .max_by_key(|v| v["duration_ns"].as_u64().unwrap())
        .expect("the hog made the sleeper late");
    assert_eq!(worst["verdict"], "runq", "{worst}");
    assert!(
        in_window(worst),
        "the hog's wake is outside the window read: {worst}"
    );
    let runq: u64 = late
        .iter()
        .filter(|v| in_window(v))
        .map(|v| v["parts"]["runq_ns"].as_u64().unwrap())
        .sum();
    // What pausewatch calls run-queue wait is the sleeper's own schedstat run_delay: never more
    // than the kernel counted over the window, and most of the worst wake.
    assert!(
        runq <= delay,
        "reported runq {runq} ns > schedstat delta {delay} ns"
    );
    let worst_ns = worst["duration_ns"].as_u64().unwrap();
    assert!(
        worst_ns >= 100_000_000,
        "a 400 ms FIFO hog delayed the sleeper only {worst_ns} ns"
    );
    assert!(
        worst["parts"]["runq_ns"].as_u64().unwrap() * 10 >= worst_ns * 9,
        "{worst}"
    );
}

/// Runs pw-workload for its effect (no report).
fn run_workload_quiet(args: &[&str]) {
    let st = std::process::Command::new(workload_bin())
        .args(args)
        .status()
        .expect("running pw-workload");
    assert!(st.success(), "pw-workload {args:?} failed");
}
