//! Leases end to end with real eBPF: the DDIA stale-write scenario (a lease holder SIGSTOPped
//! past its TTL, a takeover, a write with the old fencing token), wall-clock leases under real
//! clock steps, and the lease socket's handling of bad and unauthorised requests. Ground truth
//! is what the scenario itself did: when it sent SIGSTOP and SIGCONT, the step it made.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

/// pausewatch-demo, built next to the pausewatch under test.
fn demo_bin() -> PathBuf {
    let p = pausewatch_bin().with_file_name("pausewatch-demo");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build -p pausewatch-demo` (`cargo xtask test` does)",
        p.display()
    );
    p
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pw-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a demo scenario; returns its result line and pausewatch's NDJSON lines.
fn scenario(name: &str, extra: &[&str]) -> (Value, Vec<Value>) {
    require_root();
    let dir = temp_dir(name);
    let out = Command::new(demo_bin())
        .args(["scenario", name, "--pausewatch"])
        .arg(pausewatch_bin())
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .output()
        .expect("running pausewatch-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line ({}):\n{stdout}\n{stderr}", out.status));
    let result: Value = serde_json::from_str(result).unwrap();
    let lines = read_ndjson(&dir.join("pausewatch.ndjson"));
    assert!(
        out.status.success(),
        "scenario {name} failed ({}):\n{stdout}\n{stderr}\n(its recording is kept in {})",
        out.status,
        dir.display()
    );
    // Kept only when the scenario failed, for its recording.
    let _ = std::fs::remove_dir_all(&dir);
    (result, lines)
}

fn position(lines: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    lines
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} line in:\n{}", dump(lines)))
}

fn dump(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|v| {
            ["incident", "lease", "stop", "clock"].contains(&v["type"].as_str().unwrap_or(""))
        })
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const MS: i64 = 1_000_000;

#[test]
fn ddia_stale_write_is_caught_in_order() {
    let (r, lines) = scenario("stale-write", &["--ttl", "2s", "--stop-for", "4s"]);
    let (a, b) = (
        r["client_a"].as_u64().unwrap(),
        r["client_b"].as_u64().unwrap(),
    );
    let (stop, cont) = (
        r["sigstop_mono_ns"].as_i64().unwrap(),
        r["sigcont_mono_ns"].as_i64().unwrap(),
    );
    assert_eq!(r["client_a_exit"], 3, "A's stale write must be refused");

    let cause = format!(
        "stopped: SIGSTOP from pid {} (scenario, uid 0)",
        r["scenario_pid"]
    );
    // 0. Caught live: as the deadline passed, while A was still stopped (before the SIGCONT
    // that resumed it reached pausewatch), with who stopped it.
    let live = position(&lines, "live lease_expired_during_pause", |v| {
        v["type"] == "incident"
            && v["kind"] == "lease_expired_during_pause"
            && v["pid"] == a
            && v["ongoing"] == true
    });
    let sigcont = position(&lines, "SIGCONT", |v| {
        v["type"] == "signal" && v["signal"] == "SIGCONT" && v["pid"] == a
    });
    assert!(
        live < sigcont,
        "reported while A was stopped: {}",
        lines[live]
    );
    let l = &lines[live];
    assert_eq!(l["cause"], cause, "{l}");
    assert!(l["pause"].is_null(), "{l}");

    // 1. The lease expired while A was stopped, and pausewatch says by whom: the whole pause,
    // completing the live incident.
    let expired = position(&lines, "lease_expired_during_pause", |v| {
        v["type"] == "incident"
            && v["kind"] == "lease_expired_during_pause"
            && v["pid"] == a
            && v["ongoing"] == false
    });
    let e = &lines[expired];
    assert_eq!(e["follows"], l["id"], "{e}");
    assert_eq!(e["deadline_mono_ns"], l["deadline_mono_ns"], "{e}");
    assert_eq!(e["cause"], cause, "{e}");
    assert_eq!(e["scope"], "thread");
    // The deadline is the one A's last report set (its renew before the check), and it fell
    // inside the interval the scenario held A stopped.
    let last_deadline = lines[..expired]
        .iter()
        .rev()
        .find(|v| v["type"] == "lease" && v["pid"] == a && v["deadline_mono_ns"].is_u64())
        .map(|v| v["deadline_mono_ns"].as_i64().unwrap())
        .expect("A's lease reports");
    assert_eq!(e["deadline_mono_ns"].as_i64().unwrap(), last_deadline);
    assert!(stop < last_deadline && last_deadline < cont, "{e}");
    // The stopped part is the time the scenario held A stopped (kill to kill, within 20 ms).
    let parts = e["pause"]["parts"].as_array().unwrap();
    let stopped: i64 = parts
        .iter()
        .filter(|p| p["cause"] == "stopped")
        .map(|p| p["duration_ns"].as_i64().unwrap())
        .sum();
    assert!(
        (stopped - (cont - stop)).abs() < 20 * MS,
        "stopped {stopped} vs {} held: {e}",
        cont - stop
    );
    let total: i64 = parts
        .iter()
        .map(|p| p["duration_ns"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total,
        e["pause"]["duration_ns"].as_i64().unwrap(),
        "parts sum to the pause"
    );
    let evidence: Vec<u64> = e["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        lines.iter().any(|v| v["type"] == "stop"
            && v["pid"] == a
            && evidence.contains(&v["id"].as_u64().unwrap())),
        "the evidence names the stop line: {e}"
    );

    // 2. A acted after expiry, and pausewatch names B and its newer token.
    let acted = position(&lines, "acted_after_expiry", |v| {
        v["type"] == "incident" && v["kind"] == "acted_after_expiry" && v["pid"] == a
    });
    assert!(
        expired < acted,
        "the expiry is reported before the act it led to"
    );
    let i = &lines[acted];
    assert_eq!(i["action"], "act");
    assert_eq!(i["newer_holder"]["pid"], b, "{i}");
    assert_eq!(i["newer_holder"]["token"], 2, "{i}");
    assert_eq!(i["token"], 1);

    // 3. The storage refused A's token, and pausewatch traces the token to A.
    let reject = position(&lines, "reject", |v| {
        v["type"] == "lease" && v["event"] == "reject"
    });
    assert!(acted < reject);
    assert_eq!(lines[reject]["pid"], r["storage"]);
    assert_eq!(lines[reject]["token"], 1);
    assert_eq!(lines[reject]["token_holder"]["pid"], a);

    // B did nothing wrong.
    assert!(
        !lines
            .iter()
            .any(|v| v["type"] == "incident" && v["pid"] == b),
        "no incident for B:\n{}",
        dump(&lines)
    );
    let summary = of_type(&lines, "lease_summary")
        .next()
        .expect("lease_summary");
    // Counted once: the live incident is completed, not repeated.
    assert_eq!(summary["incidents"]["lease_expired_during_pause"], 1);
    assert_eq!(summary["incidents"]["acted_after_expiry"], 1);
}

#[test]
fn clock_steps_under_a_wall_clock_lease() {
    let (r, lines) = scenario("clock-step", &[]);
    let a = r["client_a"].as_u64().unwrap();
    let made: Vec<i64> = r["steps_ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    let clock: Vec<&Value> = of_type(&lines, "clock")
        .filter(|v| v["event"] == "step")
        .collect();
    assert_eq!(clock.len(), 2, "{}", dump(&lines));
    let incidents: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "incident" && v["kind"] == "clock_step_moved_deadline")
        .collect();
    assert_eq!(incidents.len(), 2, "{}", dump(&lines));
    for ((c, i), step) in clock.iter().zip(&incidents).zip(&made) {
        // The measured step is the step the scenario made (to within 5 ms: the time between
        // reading the clock and setting it, plus slew since the agent's last sample).
        let measured = c["step_ns"].as_i64().unwrap();
        assert!(
            (measured - step).abs() < 5 * MS,
            "measured {measured} vs made {step}"
        );
        assert_eq!(i["pid"], a);
        assert_eq!(i["holder_error_ns"].as_i64().unwrap(), -measured);
        // The scenario itself stepped the clock, and pausewatch says so.
        assert_eq!(c["by"]["syscall"], "clock_settime", "{c}");
        assert_eq!(c["by"]["pid"], r["scenario_pid"], "{c}");
    }
    assert!(
        incidents[0]["message"]
            .as_str()
            .unwrap()
            .contains("5.00s more than it has")
    );
}

/// Sends lines on one connection, returning one reply per line.
fn converse(sock: &Path, lines: &[&[u8]]) -> Vec<String> {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    lines
        .iter()
        .map(|l| {
            w.write_all(l).unwrap();
            w.write_all(b"\n").unwrap();
            let mut reply = String::new();
            r.read_line(&mut reply).unwrap();
            reply.trim_end().to_string()
        })
        .collect()
}

#[test]
fn the_lease_socket_refuses_bad_and_unauthorised_requests() {
    require_root();
    let dir = temp_dir("socket");
    let sock = dir.join("lease.sock");
    let sock_s = sock.to_str().unwrap();
    let pw = Pausewatch::start(&["--lease-socket", sock_s, "--lease-socket-mode", "666"]);
    let huge = vec![b'x'; 5000];
    let replies = converse(
        &sock,
        &[
            b"hello",
            &huge,
            b"act nothing-held",
            b"acquire leader ttl=0s",
            b"acquire leader ttl=5s tid=1",
            b"acquire leader ttl=5s pid=999999999",
            b"acquire leader ttl=5s token=7",
            b"act leader token=7",
        ],
    );
    let want = [
        "error unknown verb 'hello'",
        "error request longer than 1024 bytes",
        "error pid ",
        "error ttl=0s: must be greater than zero",
        "error tid 1 is not a thread of process",
        "error no process with pid 999999999",
        "ok acquire leader deadline_in_ns=",
        "ok act leader deadline_in_ns=",
    ];
    for (got, want) in replies.iter().zip(want) {
        assert!(got.starts_with(want), "got '{got}', want '{want}…'");
    }
    // A process of another uid may not report for one it could not signal (pid 1, root).
    let out = Command::new(pausewatch_bin())
        .args([
            "lease", "acquire", "x", "--ttl", "5s", "--pid", "1", "--socket", sock_s,
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("may not report for pid 1"),
        "{err}"
    );
    // The shell form reports for its caller (this test) and says what pausewatch answered.
    let bin = pausewatch_bin();
    let said = run_cmd(&[
        bin.to_str().unwrap(),
        "lease",
        "renew",
        "leader",
        "--ttl",
        "5s",
        "--socket",
        sock_s,
    ]);
    assert!(said.starts_with("ok renew leader"), "{said}");
    let lines = pw.stop();
    let acquire = lines
        .iter()
        .find(|v| v["type"] == "lease" && v["event"] == "acquire")
        .expect("the accepted acquire");
    assert_eq!(
        acquire["pid"],
        std::process::id(),
        "identity comes from the socket"
    );
    let summary = of_type(&lines, "lease_summary").next().unwrap();
    assert_eq!(summary["lease_errors"], 7, "{summary}");
    assert!(!sock.exists(), "the socket is removed at exit");
    std::fs::remove_dir(&dir).unwrap();
}

/// Timeout advice rests on the pauses the kernel saw: two stops the test held, both longer than
/// any timeout the advice may then suggest.
#[test]
fn timeout_advice_rests_on_the_observed_pauses() {
    require_root();
    let mut victim = victim("advised", 1, 12.0);
    let pid = victim.id();
    // A CPU hog beside it gives it run-queue waits: a tail to fit.
    let mut hogs = start_hogs(1, test_cpu(), 12.0);
    let pw = Pausewatch::start(&["--pid", &pid.to_string(), "--no-lease-socket"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        signal(pid, libc::SIGSTOP);
        let t = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        signal(pid, libc::SIGCONT);
        held.push(t.elapsed().as_nanos() as i64);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let lines = pw.stop();
    for c in hogs.iter_mut().chain(std::iter::once(&mut victim)) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let s = summary_of(&lines, u64::from(pid)).expect("summary of the victim");
    let advice = &s["timeout_advice"];
    let pauses = s["episodes"]["count"].as_u64().unwrap() + s["gc"]["count"].as_u64().unwrap();
    assert_eq!(advice["pauses"], pauses, "{advice}");
    let longest = s["episodes"]["max_ns"].as_i64().unwrap();
    let held_max = *held.iter().max().unwrap();
    assert!(
        (longest - held_max).abs() < 20 * MS,
        "longest {longest} vs held {held_max}"
    );
    assert!(
        advice["shortest_timeout_ns"].as_i64().unwrap() > longest,
        "a timeout shorter than a pause seen twice in seconds cannot meet 1e-6 per hour: {advice}"
    );
    assert!(
        advice["chance_per_hour"]["100ms"].as_f64().unwrap() > 0.99,
        "{advice}"
    );
    assert!(
        advice["basis"].as_str().unwrap().contains("observed"),
        "{advice}"
    );
}

#[test]
fn the_advise_command_prints_its_estimate() {
    require_root();
    let mut victim = victim("advised2", 1, 8.0);
    let pid = victim.id().to_string();
    let out = Command::new(pausewatch_bin())
        .args([
            "advise",
            "--pid",
            &pid,
            "--duration",
            "2s",
            "--target",
            "1e-3",
        ])
        .output()
        .unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with(&format!("pid {pid} (")), "{text}");
    assert!(
        text.contains("chance per hour <= 1e-3") || text.contains("nothing to estimate from"),
        "{text}"
    );
}
