//! Faults a root agent must survive on a busy host, each checked against what the kernel
//! itself says: a pid taken over by a new process, a storm of pauses that overflows the ring
//! buffer, a fork storm.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

/// Spawns `cmd` as pid `pid`: the next pid the kernel hands out is the one after
/// /proc/sys/kernel/ns_last_pid (as CRIU restores processes). Another process on the host may
/// take it first; then the child is discarded and it is tried again.
fn spawn_with_pid(pid: u32, cmd: &mut Command) -> Child {
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing /proc/sys/kernel/ns_last_pid (needs root)");
        let mut child = cmd.spawn().expect("spawning");
        if child.id() == pid {
            return child;
        }
        let _ = (child.kill(), child.wait());
    }
    panic!("pid {pid} was taken by another process every time");
}

/// Stops `child` with SIGSTOP for `hold`, resumes it, lets it run to its end; returns the
/// bounds of the stop as seen from here.
fn stop_once(mut child: Child, hold: Duration) -> (u32, Duration, Duration) {
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    let (held_min, held_max) = hold_stopped(pid, hold);
    assert!(child.wait().unwrap().success());
    (pid, held_min, held_max)
}

/// Three processes in turn get the same pid: the second at once (before the agent's
/// once-a-second read could notice the first had gone), the third after it had. Each must get
/// its own summary with only its own stop in it: nothing of one charged to another.
#[test]
fn a_reused_pid_is_a_new_process_with_its_own_pauses() {
    require_root();
    let pw = Pausewatch::start(&["--control-period", "0s"]);
    let (pid, min1, max1) = stop_once(
        victim_cmd("pw-first", 1, 0.8).spawn().unwrap(),
        Duration::from_millis(400),
    );
    let (_, min2, max2) = stop_once(
        spawn_with_pid(pid, &mut victim_cmd("pw-second", 1, 0.8)),
        Duration::from_millis(150),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (_, min3, max3) = stop_once(
        spawn_with_pid(pid, &mut victim_cmd("pw-third", 1, 0.8)),
        Duration::from_millis(250),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    let sums: Vec<&Value> = of_type(&lines, "summary")
        .filter(|v| v["pid"] == pid)
        .collect();
    for (name, lo, hi) in [
        ("pw-first", min1, max1),
        ("pw-second", min2, max2),
        ("pw-third", min3, max3),
    ] {
        let s = sums
            .iter()
            .find(|v| v["comm"] == name)
            .unwrap_or_else(|| panic!("no summary of {name} (pid {pid}): {sums:?}"));
        assert_eq!(s["exited"], true, "{s}");
        assert_eq!(s["stops"]["count"], 1, "{name} has another's stop: {s}");
        let d = s["stops"]["max_ns"].as_u64().unwrap();
        assert!(
            d + 2_000_000 >= lo.as_nanos() as u64 && d <= hi.as_nanos() as u64 + 2_000_000,
            "{name}: stop of {d} ns, held {lo:?}..{hi:?}"
        );
        // The kernel aggregate: every thread's stopped time, each thread stopped at most once.
        let stopped = &s["components"]["stopped"];
        let threads = 2;
        assert!(
            stopped["total_ns"].as_u64().unwrap() <= threads * (hi.as_nanos() as u64 + 2_000_000),
            "{name} carries another process's stopped time: {stopped}"
        );
        assert!(stopped["count"].as_u64().unwrap() <= threads, "{stopped}");
    }
    assert_eq!(sums.len(), 3, "one summary per process: {sums:?}");
}

/// Total of a per-cause object (`drops.kernel`, a notice's `new`).
fn sum_of(v: &Value) -> u64 {
    v.as_object()
        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
}

/// The agent is kept off the CPU (SIGSTOP) while two threads bounce a byte thousands of
/// times a second, each bounce a run-queue wait streamed at --min-pause 1us: the ring buffer
/// fills. The loss is counted per cause, noticed live, and charged to the process it
/// happened to; once the agent runs again it catches up and reports new pauses as before.
#[test]
fn a_ring_buffer_storm_is_counted_and_the_agent_recovers() {
    require_root();
    let mut pw = Pausewatch::start(&["--min-pause", "1us", "--control-period", "0s"]);
    let storm = Command::new(workload_bin())
        .args(["pingpong", "4", &test_cpu().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let storm_pid = storm.id();
    std::thread::sleep(Duration::from_millis(500));
    signal(pw.pid(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2));
    signal(pw.pid(), libc::SIGCONT);
    let out = storm.wait_with_output().unwrap();
    assert!(out.status.success());
    let bounced: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("storm: {bounced}");

    // Noticed while running, not only at exit.
    let notice = pw.wait_for(Duration::from_secs(15), |v| {
        v["type"] == "notice" && v["event"] == "kernel_drops"
    });
    assert!(
        notice["new"]["sched"].as_u64().unwrap_or(0) > 0,
        "the storm's lost pause records are not named: {notice}"
    );

    // Recovery: a stop after the storm is reported as usual.
    let (victim, lo, hi) = {
        let child = victim("pw-after-storm", 1, 1.5);
        stop_once(child, Duration::from_millis(200))
    };
    let stop = pw.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "stop" && v["pid"] == victim
    });
    let d = stop["duration_ns"].as_u64().unwrap();
    assert!(
        d + 2_000_000 >= lo.as_nanos() as u64 && d <= hi.as_nanos() as u64 + 2_000_000,
        "after the storm a stop of {lo:?}..{hi:?} was reported as {d} ns"
    );
    let lines = pw.stop();
    let drops = of_type(&lines, "drops").last().expect("the drops line");
    let lost = drops["kernel"]["sched"].as_u64().unwrap();
    let noticed: u64 = of_type(&lines, "notice")
        .filter(|v| v["event"] == "kernel_drops")
        .map(|v| v["new"]["sched"].as_u64().unwrap_or(0))
        .sum();
    // The kernel counts a lost pause record twice, globally and in the process's aggregate,
    // in the same program run: the two must agree.
    let charged: u64 = of_type(&lines, "summary")
        .map(|v| v["dropped_records"].as_u64().unwrap())
        .sum();
    let storm_charged =
        summary_of(&lines, storm_pid as u64).map_or(0, |v| v["dropped_records"].as_u64().unwrap());
    eprintln!(
        "lost {lost} pause records (noticed live {noticed}; charged to processes {charged}, to the storm {storm_charged}); all causes {}",
        sum_of(&drops["kernel"])
    );
    assert!(lost > 0 && noticed > 0 && noticed <= lost, "{drops}");
    assert_eq!(charged, lost, "per-process drops differ from the total");
    assert!(
        storm_charged * 2 > lost,
        "most lost records were the storm's"
    );
    // The agent took every record it could: what it streamed after resuming continues.
    assert!(of_type(&lines, "pause").any(|v| v["pid"] == storm_pid));
}

/// The agent's map `name`, found through its file descriptors.
fn agent_map(agent: u32, name: &str) -> aya::maps::MapData {
    use aya::maps::MapData;
    for e in std::fs::read_dir(format!("/proc/{agent}/fdinfo")).unwrap() {
        let Ok(text) = std::fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .map(|v| v.trim().parse::<u32>().unwrap())
        else {
            continue;
        };
        let data = MapData::from_id(id).expect("opening the agent's map by id");
        if data.info().unwrap().name_as_str() == Some(name) {
            return data;
        }
    }
    panic!("pausewatch has no map {name}");
}

/// Entries in the agent's hash map `name` of `V`.
fn map_entries<V: aya::Pod>(agent: u32, name: &str) -> usize {
    use aya::maps::{HashMap, Map, MapData};
    let map: HashMap<MapData, u32, V> =
        HashMap::try_from(Map::from_map_data(agent_map(agent, name)).unwrap()).unwrap();
    map.keys().count()
}

/// The kernel's per-process aggregates are sized from `--max-processes` (twice as many pause
/// aggregate slots as the agent's table keeps), so a host with more live processes than the
/// default can be given room for them all.
#[test]
fn the_kernel_aggregates_are_sized_by_max_processes() {
    require_root();
    let pw = Pausewatch::start(&["--max-processes", "6000"]);
    for (name, n) in [
        ("PROC_STATS", 12000),
        ("PROC_SLOTS", 12000),
        ("FREE_SLOTS", 12000),
        ("PROC_MEM", 6000),
    ] {
        let info = agent_map(pw.pid(), name).info().unwrap();
        assert_eq!(info.max_entries(), n, "{name}");
    }
    pw.stop();
}

fn processes_now() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count()
}

/// Two fork storms (thousands of short-lived processes, each with three threads that yield)
/// for 20 s: the agent's table stays within --max-processes, its memory stays flat once the
/// table is full, the kernel's per-process map holds only live processes afterwards, and
/// every process's summary is its own.
#[test]
fn a_fork_storm_keeps_memory_and_maps_bounded() {
    require_root();
    let pw = Pausewatch::start(&["--max-processes", "256", "--control-period", "0s"]);
    let storms: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(workload_bin())
                .args(["fork-storm", "20"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let early = rss_kib(pw.pid()).expect("the agent's VmRSS");
    let mut peak = early;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(rss_kib(pw.pid()).expect("the agent's VmRSS"));
    }
    let (mut children, mut threads) = (0, 0);
    for s in storms {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        children += v["children"].as_u64().unwrap();
        threads += v["threads"].as_u64().unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let kernel_entries = map_entries::<u32>(pw.pid(), "PROC_SLOTS");
    let live = processes_now();
    let late = rss_kib(pw.pid()).expect("the agent's VmRSS");
    let lines = pw.stop();
    let drops = of_type(&lines, "drops").last().unwrap();
    eprintln!(
        "{children} processes, {threads} threads; agent RSS {early} KiB after 5 s, peak {peak} KiB, {late} KiB at the end; PROC_SLOTS {kernel_entries} entries with {live} processes alive; drops {drops}"
    );
    assert!(children > 5_000, "the storm was too small to say anything");
    assert!(
        peak <= early + 4 * 1024,
        "agent memory grew from {early} KiB to {peak} KiB with its table full"
    );
    assert!(
        kernel_entries <= live + 16,
        "{kernel_entries} kernel aggregates for {live} live processes: exited ones were not retired"
    );
    assert!(drops["evicted_processes"].as_u64().unwrap() > 0, "{drops}");
    let summaries = of_type(&lines, "summary").count();
    assert!(summaries <= 256 + 1024, "{summaries} summaries");
    // No summary mixes two processes: a storm child stops never, and ran three threads.
    for s in of_type(&lines, "summary").filter(|v| v["comm"] == "pw-forkstorm") {
        assert_eq!(s["stops"]["count"], 0, "{s}");
    }
}

/// A small tmpfs, unmounted and removed at the end.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn new(size: &str) -> Self {
        let p = std::path::PathBuf::from(format!("/var/tmp/pw-full-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        run_cmd(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "none",
            p.to_str().unwrap(),
        ]);
        Self(p)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn max_pause_id(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "pause")
        .filter_map(|v| v["id"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The disk under the recording fills: pausewatch keeps tracing, says so on stderr at once,
/// counts the lines it could not write, never leaves half a line in the file, and once there
/// is room again writes how many lines are missing.
#[test]
fn a_full_disk_costs_counted_lines_and_never_a_torn_one() {
    require_root();
    // 300 KiB of room fill within a second; freeing the filler then leaves room for the
    // end-of-run lines (a summary for each of the loop's thousands of children).
    let fs = SmallFs::new("16m");
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![1u8; (16 << 20) - (300 << 10)]).unwrap();
    let rec = fs.0.join("rec.ndjson");
    // Only the busy loop is watched, so that once it is stopped the lines stop too and the
    // room freed later stays free for the end-of-run lines.
    // Reaped: a failure below must not leave the agent holding the small file system.
    let busy = Reaped(
        Command::new("sh")
            .args(["-c", "while :; do /bin/true; done"])
            .spawn()
            .unwrap(),
    );
    let mut pw = Command::new(pausewatch_bin())
        .args(["--min-pause", "1us", "--control-period", "0s", "--pid"])
        .arg(busy.id().to_string())
        .arg("--json")
        .arg(&rec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (e, mut pipe) = (stderr.clone(), pw.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let read = || std::fs::read_to_string(&rec).unwrap_or_default();
    wait_until("pausewatch attached", Duration::from_secs(60), || {
        read().contains("\"event\":\"attached\"")
    });
    wait_until(
        "the disk filled and pausewatch said so",
        Duration::from_secs(30),
        || stderr.lock().unwrap().contains("cannot write NDJSON"),
    );
    let message = stderr.lock().unwrap().clone();
    assert!(message.contains("No space left on device"), "{message}");
    let before = max_pause_id(&read());
    std::thread::sleep(Duration::from_secs(1));
    // Stopped, not killed: the watched process exiting would end the run.
    signal(busy.id(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&filler).unwrap();
    // The notice goes out with the first line written after the room came back; a stopped
    // loop makes none, so it is let run for a moment every second (a few signal, stop and
    // pause lines) until the notice is there.
    let mut poked = std::time::Instant::now();
    wait_until("the loss was written down", Duration::from_secs(15), || {
        if poked.elapsed() >= Duration::from_secs(1) {
            signal(busy.id(), libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(5));
            signal(busy.id(), libc::SIGSTOP);
            poked = std::time::Instant::now();
        }
        read().contains("\"event\":\"output_failed\"")
    });
    signal(pw.id(), libc::SIGTERM);
    let status = pw.wait().unwrap();
    drop(busy);
    std::thread::sleep(Duration::from_millis(200));
    let stderr = stderr.lock().unwrap().clone();
    assert!(status.success(), "{status}: {stderr}");
    let text = read();
    // Every line whole: a failed write was cut back to the last whole line.
    let lines = parse_ndjson(&text);
    validate_lines(&lines);
    let notice = of_type(&lines, "notice")
        .find(|v| v["event"] == "output_failed")
        .unwrap();
    let lost = notice["lost_lines"].as_u64().unwrap();
    let drops = of_type(&lines, "drops")
        .last()
        .expect("the drops line, written with room again");
    let failed = drops["output_failed_lines"].as_u64().unwrap();
    // The agent went on taking episodes from the kernel while nothing could be written:
    // what reached it (the summaries' `streamed`) is far more than the pause lines written.
    let written = of_type(&lines, "pause").count() as u64;
    let reached: u64 = of_type(&lines, "summary")
        .map(|v| v["streamed"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{lost} lines lost while the disk was full ({failed} in all); {reached} episodes reached the agent, {written} pause lines were written (ids up to {} before the disk filled)",
        before
    );
    assert!(lost > 0 && failed >= lost, "{notice} {drops}");
    assert!(
        reached >= written + lost / 4,
        "tracing stopped while the disk was full: {reached} episodes reached the agent, {written} written, {lost} lines lost"
    );
    assert!(stderr.contains("works again"), "{stderr}");
}

/// A stopped process is killed: its stop ends with the SIGKILL, named, and the process is
/// retired with its summary; the agent keeps its table to the live.
#[test]
fn a_process_killed_while_stopped_ends_its_stop_with_the_kill() {
    require_root();
    let mut pw = Pausewatch::start(&["--control-period", "0s"]);
    let mut child = victim("pw-killed", 1, 5.0);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    signal(pid, libc::SIGSTOP);
    wait_until("it is stopped", Duration::from_secs(5), || {
        proc_state(pid) == 'T'
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGKILL);
    let _ = child.wait();
    let stop = pw.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "stop" && v["pid"] == pid
    });
    assert_eq!(stop["resume_signal"], "SIGKILL", "{stop}");
    assert_eq!(stop["resumed_by"]["pid"], std::process::id(), "{stop}");
    assert!(
        stop["duration_ns"].as_u64().unwrap() >= 290_000_000,
        "{stop}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    let s = summary_of(&lines, pid as u64).expect("the killed process's summary");
    assert_eq!(s["exited"], true, "{s}");
    assert_eq!(s["stops"]["count"], 1, "{s}");
}

/// exec keeps the process: pauses before and after it are one process's (no departure),
/// and the summary carries the name it has after exec.
#[test]
fn exec_keeps_the_process_and_its_pauses() {
    require_root();
    let pw = Pausewatch::start(&["--control-period", "0s"]);
    // A shell that is stopped once, then execs the spinner, which is stopped again.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read go; exec {} spin 2 {} pw-after-exec 1",
            workload_bin().display(),
            test_cpu()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    let stop_for = |ms: u64| {
        hold_stopped(pid, Duration::from_millis(ms));
    };
    stop_for(150);
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    wait_until("it has exec'd", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "pw-after-exec")
    });
    std::thread::sleep(Duration::from_millis(200));
    stop_for(250);
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    let sums: Vec<&Value> = of_type(&lines, "summary")
        .filter(|v| v["pid"] == pid)
        .collect();
    assert_eq!(sums.len(), 1, "exec made a second process: {sums:?}");
    assert_eq!(sums[0]["comm"], "pw-after-exec", "{}", sums[0]);
    assert_eq!(sums[0]["stops"]["count"], 2, "{}", sums[0]);
}

/// More processes pausing at once than the kernel has aggregate slots: the surplus is counted
/// (`sched_aggregate` drops), never more slots are taken than there are, and the slots of the
/// processes that exit come back for the ones that follow.
#[test]
fn more_pausing_processes_than_slots_are_counted_and_slots_come_back() {
    require_root();
    // 128 aggregate slots (twice the table's 64).
    let pw = Pausewatch::start(&["--max-processes", "64"]);
    let w = run_workload(&["many-procs", "200", "4"]);
    assert_eq!(w["children"], 200, "{w}");
    let taken = map_entries::<u32>(pw.pid(), "PROC_SLOTS");
    assert!(taken <= 128, "{taken} slots taken of 128");
    // Two harvests retire the exited children and give their slots back.
    std::thread::sleep(Duration::from_millis(2500));
    let after = run_workload(&["pingpong", "1", &test_cpu().to_string()]);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    let drops = of_type(&lines, "drops").last().unwrap();
    eprintln!("{taken} slots taken during the storm; drops {drops}");
    assert!(
        drops["kernel"]["sched_aggregate"].as_u64().unwrap() > 0,
        "200 sleepers waking every second should not all have fit in 128 slots: {drops}"
    );
    let s = summary_of(&lines, after["pid"].as_u64().unwrap())
        .expect("the process after the storm got a slot and a summary");
    assert!(
        s["episodes"]["count"].as_u64().unwrap() >= after["round_trips"].as_u64().unwrap(),
        "{s} {after}"
    );
}
