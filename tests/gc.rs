//! Runtime stop-the-world measured by real uprobes, against the runtimes' own accounting: the
//! JVM's -Xlog:gc and -Xlog:safepoint, Go's GODEBUG=gctrace=1, and a stand-in libjvm.so whose
//! probes sit behind USDT semaphores, against its own clock.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

const TOLERANCE_NS: u64 = 1_000_000;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// GcLoop.class, compiled once.
fn java_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("gc-java");
        build_java("GcLoop.java", &dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    })
}

/// The Go workload, built plain or stripped.
fn go_binary(stripped: bool) -> PathBuf {
    let dir = scratch("gc-go");
    let bin = dir.join(if stripped {
        "gcloop-stripped"
    } else {
        "gcloop"
    });
    build_go(&bin, &dir, stripped).unwrap_or_else(|e| panic!("{e}"));
    bin
}

/// Every distinct JDK under /usr/lib/jvm (Debian's alternatives make symlinked duplicates).
fn jdks() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir("/usr/lib/jvm")
        .expect("/usr/lib/jvm: no JDK installed")
        .flatten()
    {
        let Ok(real) = e.path().canonicalize() else {
            continue;
        };
        if real.join("bin/java").exists()
            && real.join("lib/server/libjvm.so").exists()
            && !out.contains(&real)
        {
            out.push(real);
        }
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no JDK with a server libjvm.so under /usr/lib/jvm"
    );
    out
}

/// One -Xlog:gc "Pause" line: the collection's time by the JVM's own timer, and when the line
/// was logged (its `timenanos` decoration, `System.nanoTime()`: CLOCK_MONOTONIC on Linux), right
/// after that timer stopped.
struct JvmPause {
    ns: u64,
    logged_mono_ns: u64,
    line: String,
}

/// -Xlog:gc "Pause" lines, in order.
fn jvm_pauses(log: &str) -> Vec<JvmPause> {
    log.lines()
        .filter(|l| l.contains("[gc") && l.contains(" Pause "))
        .map(|l| {
            let ms = l
                .rsplit(' ')
                .next()
                .and_then(|t| t.strip_suffix("ms"))
                .unwrap_or_else(|| panic!("no time in {l}"));
            let logged = l
                .split('[')
                .filter_map(|d| d.split_once("ns]"))
                .find_map(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("no timenanos decoration in {l}"));
            JvmPause {
                ns: (ms.parse::<f64>().unwrap() * 1e6).round() as u64,
                logged_mono_ns: logged,
                line: l.to_string(),
            }
        })
        .collect()
}

/// -Xlog:safepoint lines: (VM operation, "Total", "Reaching safepoint" in ns), in order.
fn jvm_safepoints(log: &str) -> Vec<(String, u64, u64)> {
    log.lines()
        .filter(|l| l.contains("[safepoint") && l.contains("Safepoint \""))
        .map(|l| {
            let op = l.split('"').nth(1).unwrap().to_string();
            let total = l
                .split("Total: ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .unwrap_or_else(|| panic!("no total in {l}"));
            let reaching = l
                .split("Reaching safepoint: ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .unwrap_or_else(|| panic!("no reaching time in {l}"));
            (op, total.parse().unwrap(), reaching.parse().unwrap())
        })
        .collect()
}

/// pausewatch's gc lines for `pid`, in start order.
fn gc_lines_of(lines: &[Value], pid: u32) -> Vec<Value> {
    let mut v: Vec<Value> = of_type(lines, "gc")
        .filter(|v| v["pid"] == pid)
        .cloned()
        .collect();
    v.sort_by_key(|g| g["start_mono_ns"].as_u64().unwrap());
    v
}

fn ns(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

/// How long the thread that began safepoint `g` waited for a CPU right at its start, by
/// pausewatch's own (streamed) pause lines: a VM thread preempted between pausewatch's begin
/// probe (the entry of `SafepointSynchronize::begin()`) and HotSpot's first clock read a few
/// instructions later. HotSpot's log leaves that wait out of the safepoint; pausewatch has it
/// in. Such a wait is a preemption that starts at the probe and ends before the safepoint is
/// reached (by pausewatch's time to safepoint, which contains it). The VM thread's other
/// waits (for the GC's threads, for Java threads, a full GC sleeping on its workers) come after
/// HotSpot's clock read and are in its figures too.
fn vm_thread_wait_at_begin(lines: &[Value], g: &Value) -> u64 {
    const AT_BEGIN_NS: u64 = 50_000;
    let start = ns(g, "start_mono_ns");
    let reached = start + ns(g, "time_to_safepoint_ns");
    vm_thread_pauses(lines, g)
        .filter(|p| p["start_reason"] == "preempted")
        .filter(|p| {
            let s = ns(p, "start_mono_ns");
            s >= start && s - start <= AT_BEGIN_NS && ns(p, "end_mono_ns") <= reached
        })
        .map(|p| {
            p["components"]["runq_ns"]
                .as_u64()
                .unwrap_or_else(|| panic!("components.runq_ns missing: {p}"))
        })
        .sum()
}

/// How long the thread that ran collection `g` (the VM thread) stood still, by pausewatch's own
/// (streamed) pause lines, inside the safepoint but outside the JVM's collection timer, which
/// the "Pause" line `p` gives: it stopped at `p.logged_mono_ns` (when the line was logged) and
/// ran for `p.ns`. pausewatch's collection runs from HotSpot's gc__begin probe, after the world
/// stopped and before that timer starts, to its gc__end probe, after the timer stopped and the
/// line was written. When the VM thread waits in either gap (for a CPU, or in D writing the
/// log line to a file on a busy disk), the log leaves the wait out and pausewatch may have it
/// in: an upper bound of what may separate the two figures. Pauses count for their part from
/// the time to safepoint to the timer's start, and from shortly before the line was logged.
fn vm_thread_wait_outside_gc_timer(lines: &[Value], g: &Value, p: &JvmPause) -> u64 {
    const BEFORE_LOG_NS: u64 = 50_000;
    let reached = ns(g, "start_mono_ns") + ns(g, "time_to_safepoint_ns");
    let after_from = p.logged_mono_ns.saturating_sub(BEFORE_LOG_NS);
    let timer_start = p.logged_mono_ns.saturating_sub(p.ns).min(after_from);
    let windows = [(reached, timer_start), (after_from, ns(g, "end_mono_ns"))];
    vm_thread_pauses(lines, g)
        .map(|v| {
            let (s, e) = (ns(v, "start_mono_ns"), ns(v, "end_mono_ns"));
            windows
                .iter()
                .map(|&(from, to)| e.min(to).saturating_sub(s.max(from)))
                .sum::<u64>()
        })
        .sum()
}

/// pausewatch's pause lines of the thread that ran safepoint `g`, inside it.
fn vm_thread_pauses<'a>(lines: &'a [Value], g: &'a Value) -> impl Iterator<Item = &'a Value> + 'a {
    let (start, end) = (ns(g, "start_mono_ns"), ns(g, "end_mono_ns"));
    of_type(lines, "pause")
        .filter(move |p| p["pid"] == g["pid"] && p["tid"] == g["tid"])
        .filter(move |p| ns(p, "end_mono_ns") > start && ns(p, "start_mono_ns") < end)
}

/// Every safepoint the JVM logged is one pausewatch gc line with the same VM operation and a
/// duration within 1 ms of the log's "Total" (plus, when it happened, the VM thread's wait
/// for a CPU right at the begin probe, which the log leaves out); every GC "Pause" is the
/// collection inside one, within 1 ms of the log's time (plus any wait of the VM thread outside
/// the JVM's collection timer, `vm_thread_wait_outside_gc_timer`). The pausewatch runs
/// stream pauses from 200 µs, so those waits are seen.
fn check_against_jvm_log(lines: &[Value], pid: u32, log: &str) {
    let gcs = gc_lines_of(lines, pid);
    let safepoints = jvm_safepoints(log);
    let pauses = jvm_pauses(log);
    assert!(
        pauses.len() >= 10,
        "the workload should have collected at least 10 times:\n{log}"
    );
    assert_eq!(
        gcs.len(),
        safepoints.len(),
        "one gc line per safepoint in the JVM's log\nlog:\n{log}\npausewatch:\n{gcs:#?}"
    );
    let (mut worst_total, mut worst_ttsp) = (0, 0);
    for (g, (op, total, reaching)) in gcs.iter().zip(&safepoints) {
        assert_eq!(g["runtime"], "jvm");
        assert_eq!(g["operation"], op.as_str(), "{g}");
        let d = ns(g, "duration_ns");
        let wait = vm_thread_wait_at_begin(lines, g);
        assert!(
            d.abs_diff(total + wait) <= TOLERANCE_NS,
            "safepoint {op}: JVM says {total} ns (+ {wait} ns VM thread wait at begin), pausewatch {d} ns: {g}"
        );
        let ttsp = ns(g, "time_to_safepoint_ns");
        assert!(
            ttsp.abs_diff(reaching + wait) <= TOLERANCE_NS && ttsp <= d,
            "time to safepoint of {op}: JVM says {reaching} ns (+ {wait} ns VM thread wait at begin), pausewatch {ttsp} ns: {g}"
        );
        worst_total = worst_total.max(d.abs_diff(total + wait));
        worst_ttsp = worst_ttsp.max(ttsp.abs_diff(reaching + wait));
    }
    let collections: Vec<&Value> = gcs.iter().filter(|g| g["collection"] == true).collect();
    assert_eq!(
        collections.len(),
        pauses.len(),
        "one collection per GC pause in the JVM's log\n{log}"
    );
    let (mut worst, mut most_outside) = (0, 0);
    for (g, p) in collections.iter().zip(&pauses) {
        let gc_ns = ns(g, "gc_ns");
        let outside = vm_thread_wait_outside_gc_timer(lines, g, p);
        let vm_thread: Vec<&Value> = vm_thread_pauses(lines, g).collect();
        assert!(
            gc_ns + TOLERANCE_NS >= p.ns && gc_ns <= p.ns + outside + TOLERANCE_NS,
            "GC pause: JVM says {} ns (+ up to {outside} ns VM thread waits outside its timer), pausewatch {gc_ns} ns: {g}\n\
             JVM: {}\nthe VM thread's pauses in the safepoint: {vm_thread:#?}",
            p.ns,
            p.line
        );
        assert!(
            gc_ns <= ns(g, "duration_ns"),
            "the collection lies inside its safepoint: {g}"
        );
        most_outside = most_outside.max(outside);
        worst = worst.max(
            gc_ns
                .saturating_sub(p.ns + outside)
                .max(p.ns.saturating_sub(gc_ns)),
        );
    }
    eprintln!(
        "pid {pid}: {} safepoints, {} GC pauses matched; worst differences: safepoint {worst_total} ns, time to safepoint {worst_ttsp} ns, GC {worst} ns (VM thread waits outside the GC timer: up to {most_outside} ns)",
        gcs.len(),
        pauses.len()
    );
}

fn run_java(java: &Path, log: &Path, iterations: u32, sleep_ms: u32) -> std::process::Child {
    Command::new(java)
        .arg(format!(
            "-Xlog:gc,safepoint:file={}:uptime,timenanos,level,tags",
            log.display()
        ))
        .arg("-cp")
        .arg(java_classes())
        .args(["GcLoop", &iterations.to_string(), &sleep_ms.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning java")
}

fn notice_for<'a>(lines: &'a [Value], event: &str, pid: u32) -> Option<&'a Value> {
    of_type(lines, "notice").find(|v| v["event"] == event && v["pid"] == pid)
}

#[test]
fn jvms_started_after_pausewatch_match_their_own_gc_and_safepoint_logs() {
    require_root();
    let classes = java_classes();
    let pw = Pausewatch::start(&["--min-pause", "200us"]);
    let mut runs = Vec::new();
    for (i, jdk) in jdks().iter().enumerate() {
        let log = scratch("gc-java").join(format!("after-{i}.log"));
        let _ = std::fs::remove_file(&log);
        let mut child = run_java(&jdk.join("bin/java"), &log, 12, 500);
        let pid = child.id();
        assert!(
            child.wait().unwrap().success(),
            "java from {} failed",
            jdk.display()
        );
        runs.push((jdk.clone(), pid, log));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let _ = classes;
    for (jdk, pid, log) in runs {
        eprintln!("JDK {}", jdk.display());
        let n = notice_for(&lines, "gc_observed", pid).unwrap_or_else(|| {
            panic!("no gc_observed notice for the JVM {pid} started after pausewatch")
        });
        assert!(
            n["message"]
                .as_str()
                .unwrap()
                .contains(&format!("pid {pid} (java)")),
            "{n}"
        );
        let libjvm = jdk.join("lib/server/libjvm.so");
        assert!(
            of_type(&lines, "notice").any(
                |v| v["event"] == "gc_probes_attached" && v["path"] == libjvm.to_str().unwrap()
            ),
            "probes attached in {}",
            libjvm.display()
        );
        check_against_jvm_log(&lines, pid, &std::fs::read_to_string(&log).unwrap());
        let s = summary_of(&lines, pid.into()).expect("summary of the JVM");
        assert_eq!(s["gc"]["count"], gc_lines_of(&lines, pid).len(), "{s}");
    }
}

#[test]
fn a_running_jvm_is_observed_with_pid_and_nothing_else_is() {
    require_root();
    let log = scratch("gc-java").join("running.log");
    let _ = std::fs::remove_file(&log);
    // Sleeps long enough for pausewatch to start and find it before its first collection.
    let mut java = run_java(Path::new("java"), &log, 12, 4000);
    let pid = java.id();
    let mut other = run_java(
        Path::new("java"),
        &scratch("gc-java").join("other.log"),
        12,
        4000,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut pw = Pausewatch::start(&["--pid", &pid.to_string(), "--min-pause", "200us"]);
    pw.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "gc_observed" && v["pid"] == pid
    });
    assert!(java.wait().unwrap().success());
    let other_pid = other.id();
    let _ = other.wait();
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    check_against_jvm_log(&lines, pid, &std::fs::read_to_string(&log).unwrap());
    assert_eq!(
        gc_lines_of(&lines, other_pid).len(),
        0,
        "a JVM outside --pid is not reported"
    );
}

/// "gc N @Ts P%: A+B+C ms clock, ...": A and C are the two stop-the-world phases (sweep
/// termination and mark termination), in ms.
fn gctrace_stw_ns(trace: &str) -> Vec<(u64, u64)> {
    trace
        .lines()
        .filter(|l| l.starts_with("gc ") && l.contains(" ms clock"))
        .map(|l| {
            let clock = l
                .split(": ")
                .nth(1)
                .and_then(|r| r.split(" ms clock").next())
                .unwrap();
            let phases: Vec<f64> = clock.split('+').map(|p| p.parse().unwrap()).collect();
            assert_eq!(phases.len(), 3, "{l}");
            (
                (phases[0] * 1e6).round() as u64,
                (phases[2] * 1e6).round() as u64,
            )
        })
        .collect()
}

#[test]
fn go_stop_the_world_matches_gctrace() {
    require_root();
    let bin = go_binary(false);
    let pw = Pausewatch::start(&[]);
    let out = Command::new(&bin)
        .args(["15", "500"])
        .env("GODEBUG", "gctrace=1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let out = out.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gcloop failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let trace = String::from_utf8_lossy(&out.stderr);
    let cycles = gctrace_stw_ns(&trace);
    assert!(
        cycles.len() >= 15,
        "the program forces 15 collections:\n{trace}"
    );
    assert!(
        notice_for(&lines, "gc_observed", pid).is_some(),
        "no gc_observed notice for {pid}"
    );
    let gcs = gc_lines_of(&lines, pid);
    assert_eq!(
        gcs.len(),
        2 * cycles.len(),
        "two stop-the-world phases per cycle\n{trace}\n{gcs:#?}"
    );
    let mut worst = 0;
    for (pair, (sweep, mark)) in gcs.chunks(2).zip(&cycles) {
        assert!(
            pair.iter()
                .all(|g| g["runtime"] == "go" && g["collection"] == true),
            "{pair:#?}"
        );
        let ours = ns(&pair[0], "duration_ns") + ns(&pair[1], "duration_ns");
        let theirs = sweep + mark;
        assert!(
            ours.abs_diff(theirs) <= TOLERANCE_NS,
            "cycle STW: gctrace {theirs} ns, pausewatch {ours} ns: {pair:#?}"
        );
        worst = worst.max(ours.abs_diff(theirs));
    }
    eprintln!(
        "{} cycles matched; worst difference {worst} ns",
        cycles.len()
    );
}

#[test]
fn a_stripped_go_binary_is_reported_unobservable() {
    require_root();
    let bin = go_binary(true);
    let pw = Pausewatch::start(&[]);
    let mut child = Command::new(&bin).args(["3", "300"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    let n = notice_for(&lines, "gc_unobservable", pid)
        .unwrap_or_else(|| panic!("no gc_unobservable notice for {pid}"));
    let msg = n["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "GC not observable for pid {pid} (gcloop-stripped)"
        )),
        "{msg}"
    );
    assert!(msg.contains("stripped"), "{msg}");
    assert_eq!(n["level"], "warn");
    assert!(gc_lines_of(&lines, pid).is_empty());
}

/// OpenJDK's HotSpot probes have no semaphores; a JDK built with --enable-dtrace guards them
/// with some, and then they fire only while the kernel holds the semaphore up for an attached
/// uprobe. A running process with such a library is picked up, its semaphores are raised
/// (so its probes fire and every collection is measured as its own clock measured it), and
/// they are lowered again when pausewatch exits.
#[test]
fn probes_behind_usdt_semaphores_are_enabled_while_attached_and_measured() {
    require_root();
    let dir = scratch("gc-usdt");
    let fakejava = build_fake_jvm(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(&fakejava)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = out.next().expect("fakejava ended").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let first = next();
    let pid = child.id();
    assert_eq!(first["pid"], pid);
    assert_eq!(
        first["semaphore"], 0,
        "no probe is enabled before pausewatch"
    );
    let mut pw = Pausewatch::start(&["--pid", &pid.to_string(), "--min-pause", "1ms"]);
    let observed = pw.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "gc_observed" && v["pid"] == pid
    });
    assert!(
        observed["message"].as_str().unwrap().contains("fakejava"),
        "{observed}"
    );
    let mut ours = Vec::new();
    for ms in [40, 15, 70] {
        writeln!(stdin, "gc {ms}").unwrap();
        let r = next();
        assert!(
            r["semaphore"].as_u64().unwrap() > 0,
            "the semaphore was not raised while attached: {r}"
        );
        ours.push((ns(&r, "start_ns"), ns(&r, "duration_ns")));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();
    // The semaphores fall as the exited agent's uprobes are released, which the kernel may
    // finish a moment after the agent is reaped: allowed up to 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        writeln!(stdin, "sem").unwrap();
        let v = next();
        if v["semaphore"] == 0 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        after["semaphore"], 0,
        "the semaphore stayed raised 5 s after pausewatch exited"
    );
    let gcs = gc_lines_of(&lines, pid);
    assert_eq!(gcs.len(), ours.len(), "{gcs:?}");
    for (g, (start, duration)) in gcs.iter().zip(&ours) {
        // Our clock brackets the probes from outside, by a few instructions and a clock read.
        let d = ns(g, "duration_ns");
        assert!(
            d <= *duration && duration - d <= TOLERANCE_NS,
            "{g} against {duration} ns measured around it"
        );
        assert!(
            ns(g, "start_mono_ns").abs_diff(*start) <= TOLERANCE_NS,
            "{g}"
        );
    }
    let s = summary_of(&lines, pid.into()).expect("summary of fakejava");
    assert_eq!(s["gc"]["count"], ours.len(), "{s}");
}
