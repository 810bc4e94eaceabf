//! The live view in a real terminal (tmux), investigations (`run`), and recordings read back
//! (`report`, `replay`).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use pausewatch_tests::*;
use serde_json::Value;

/// A tmux session on its own server socket, killed when dropped.
struct Tmux {
    socket: PathBuf,
    name: String,
}

impl Tmux {
    /// Starts `cmd` (a shell command line) in a detached session of `w`x`h`.
    fn start(tag: &str, w: u16, h: u16, cmd: &str) -> Self {
        let socket = std::env::temp_dir().join(format!("pw-tmux-{tag}-{}", std::process::id()));
        let t = Tmux {
            socket,
            name: tag.to_string(),
        };
        let out = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                tag,
                "-x",
                &w.to_string(),
                "-y",
                &h.to_string(),
            ])
            .arg(cmd)
            .output()
            .expect("running tmux (`cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keep the pane after the command exits, to read what it printed last.
        let _ = t
            .cmd()
            .args(["set-option", "-t", tag, "remain-on-exit", "on"])
            .output();
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's whole normal-screen history (a report longer than the pane scrolls).
    fn history(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-S", "-", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(st.success());
    }

    /// Waits until the screen satisfies `ok`, returning it (the last screen in the panic).
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pane_dead(&self) -> bool {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", &self.name, "#{pane_dead}"])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A spinning victim named `name` and pausewatch's live view of it in tmux session `tag`,
/// once the view is up. The pane prints `pausewatch-exit=STATUS` when pausewatch ends.
fn live_view_of(tag: &str, name: &str) -> (std::process::Child, Tmux) {
    require_root();
    let victim = victim(name, 1, 30.0);
    let cmd = format!(
        "{} --pid {} --no-lease-socket; echo pausewatch-exit=$?; sleep 30",
        pausewatch_bin().display(),
        victim.id()
    );
    let tmux = Tmux::start(tag, 100, 30, &cmd);
    tmux.wait_for("the live view", Duration::from_secs(30), |s| {
        s.contains("sched via")
    });
    (victim, tmux)
}

fn report_fixture() -> PathBuf {
    fixtures().join("report")
}

/// `pausewatch report` of the recorded stale-write demo is the golden file (regenerate with
/// PAUSEWATCH_BLESS=1 after a deliberate change).
#[test]
fn the_report_of_a_recording_is_stable() {
    let dir = report_fixture();
    let out = Command::new(pausewatch_bin())
        .args(["report", "stale-write.ndjson"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    assert_golden(&dir.join("stale-write.report.txt"), &got);
    // What it says rests on the recording itself.
    let lines = read_ndjson(&dir.join("stale-write.ndjson"));
    let stop = of_type(&lines, "stop").next().unwrap();
    assert!(got.contains(stop["description"].as_str().unwrap()), "{got}");
    for i in of_type(&lines, "incident") {
        assert!(got.contains(i["message"].as_str().unwrap()), "{got}");
    }
    let victim = stop["pid"].as_u64().unwrap();
    let s = summary_of(&lines, victim).unwrap();
    assert!(
        got.contains(&format!(
            "{victim} client-A         {} pauses",
            s["episodes"]["count"]
        )),
        "{got}"
    );
}

/// Bad recordings: one line that says what is wrong, a failing status, no panic.
#[test]
fn report_and_replay_refuse_what_is_not_a_recording() {
    let dir = std::env::temp_dir().join(format!("pw-report-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.ndjson");
    std::fs::write(&garbage, "hello\nworld\n").unwrap();
    let empty = dir.join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let newer = dir.join("newer.ndjson");
    std::fs::write(
        &newer,
        r#"{"schema":99,"type":"pause","host":"h","ts_mono_ns":1,"wall_ns":1,"wall_err_ns":1}"#,
    )
    .unwrap();
    let missing = dir.join("missing.ndjson");
    let check = |args: &[&str], path: &Path, want: &str| {
        let out = Command::new(pausewatch_bin())
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} {}: succeeded",
            path.display()
        );
        assert!(err.contains(want), "{args:?} {}: {err}", path.display());
        assert!(!err.contains("panicked"), "{err}");
    };
    for cmd in [&["report"][..], &["replay"][..]] {
        check(cmd, &garbage, "not a pausewatch recording");
        check(cmd, &empty, "it is empty");
        check(cmd, &newer, "schema 99");
        check(cmd, &missing, "cannot read");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The live view in a real terminal: a process the test stops shows up with its pause and
/// its cause, the detail names who stopped it, and quitting restores the terminal and
/// prints the report.
#[test]
fn the_live_view_shows_a_stopped_process_in_a_terminal() {
    let (mut victim, tmux) = live_view_of("live", "pw-tui-victim");
    let pid = victim.id();
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    signal(pid, libc::SIGCONT);
    // TOTAL times the STOP share holds the 1.5 s stop (the victim also waits on the run
    // queue, more so on a loaded machine, so the share alone says little).
    let stopped_row = |s: &str| -> Option<String> {
        let row = s.lines().find(|l| l.starts_with(&format!("{pid} ")))?;
        let cols: Vec<&str> = row.split_whitespace().collect();
        let total_s: f64 = cols.get(5)?.strip_suffix('s')?.parse().ok()?;
        let share: f64 = cols.get(8)?.trim_end_matches('%').parse().ok()?;
        let stopped_s = total_s * share / 100.0;
        (stopped_s >= 1.5 * 0.95 && row.contains("pw-tui-victim")).then(|| row.to_string())
    };
    let s = tmux.wait_for("the victim with its stop", Duration::from_secs(10), |s| {
        stopped_row(s).is_some()
    });
    eprintln!("{}", stopped_row(&s).unwrap());
    // Detail of the selected (top) process: the stop and who sent it.
    // Waited for whole: a capture can catch the terminal half-way through drawing a frame
    // (seen in CI: the header drawn, the event line cut after "SIGSTOP from").
    tmux.keys(&["Enter"]);
    let me = std::process::id();
    tmux.wait_for(
        "the detail view naming the sender",
        Duration::from_secs(5),
        |s| {
            s.contains(&format!("pid {pid} (pw-tui-victim)"))
                && s.contains(&format!("SIGSTOP from pid {me}"))
        },
    );
    // The timeline marks the stop.
    tmux.keys(&["t"]);
    let stop_on_lane = |s: &str| {
        s.lines()
            .find(|l| l.starts_with(&format!("{pid} ")))
            .is_some_and(|lane| lane.chars().skip(18).any(|c| c == 's'))
    };
    tmux.wait_for(
        "the timeline with the stop on the victim's lane",
        Duration::from_secs(5),
        |s| s.contains("host ") && s.contains("! incident") && stop_on_lane(s),
    );
    tmux.keys(&["?"]);
    tmux.wait_for("the help", Duration::from_secs(5), |s| {
        s.contains("pausewatch keys")
    });
    tmux.keys(&["Escape", "q"]);
    tmux.wait_for("pausewatch to exit", Duration::from_secs(15), |s| {
        s.contains("pausewatch-exit=")
    });
    let end = tmux.history();
    assert!(end.contains("pausewatch-exit=0"), "{end}");
    assert!(
        end.contains("pausewatch report (pid") && end.contains("stopped 1.5"),
        "the report after the view:\n{end}"
    );
    assert!(!tmux.pane_dead());
    victim.kill().unwrap();
    victim.wait().unwrap();
}

/// `replay` plays a recording in the live view: the stopped client appears with its expired
/// lease, and the timeline shows the incident.
#[test]
fn replay_plays_a_recording_in_a_terminal() {
    let dir = report_fixture();
    let cmd = format!(
        "cd {} && {} replay stale-write.ndjson --speed 50; echo replay-exit=$?; sleep 30",
        dir.display(),
        pausewatch_bin().display()
    );
    let tmux = Tmux::start("replay", 100, 30, &cmd);
    // Each screen waited for whole: a capture can catch a frame half drawn.
    tmux.wait_for(
        "the end of the recording, client-A stopped and the incident",
        Duration::from_secs(20),
        |s| {
            s.contains("(end)")
                && s.contains("INCIDENT")
                && s.lines()
                    .any(|l| l.contains("client-A") && l.contains("100%"))
        },
    );
    tmux.keys(&["t"]);
    tmux.wait_for(
        "the timeline with the incident's findings",
        Duration::from_secs(5),
        |s| {
            s.contains("! incident")
                && s.contains("lease_expired_during_pause")
                && s.contains("acted_after_expiry")
        },
    );
    tmux.keys(&["q"]);
    let end = tmux.wait_for("replay to exit", Duration::from_secs(10), |s| {
        s.contains("replay-exit=")
    });
    assert!(end.contains("replay-exit=0"), "{end}");
}

/// `pausewatch run -- CMD`: watched from its first instruction, its exit status passed on,
/// and its run-queue wait equal to the kernel's run_delay within 5%.
#[test]
fn run_investigates_a_command_and_returns_its_status() {
    require_root();
    let cpu = test_cpu();
    let dir = std::env::temp_dir().join(format!("pw-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.ndjson");
    let mut hogs = start_hogs(2, cpu, 3.0);
    let out = Command::new(pausewatch_bin())
        .args(["run", "--min-pause", "1ms", "--no-lease-socket", "--json"])
        .arg(&json)
        .arg("--")
        .arg(workload_bin())
        .args(["spin", "2", &cpu.to_string(), "pw-run-victim", "2"])
        .output()
        .unwrap();
    for h in &mut hogs {
        h.wait().unwrap();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("the workload's own output");
    let pid = report["pid"].as_u64().unwrap();
    let truth = spin_run_delay(&report);
    let lines = read_ndjson(&json);
    validate_lines(&lines);
    let attached = lines.iter().find(|v| v["event"] == "attached").unwrap();
    assert_eq!(
        attached["pids"],
        serde_json::json!([pid]),
        "scoped to the command"
    );
    let s = summary_of(&lines, pid).unwrap_or_else(|| panic!("no summary for {pid}"));
    let measured = s["components"]["runq"]["total_ns"].as_u64().unwrap();
    assert!(truth > 300_000_000, "no contention ({truth} ns)");
    let err = (measured as f64 - truth as f64).abs() / truth as f64;
    eprintln!(
        "run: pausewatch runq {measured} ns vs run_delay {truth} ns ({:.2}%)",
        err * 100.0
    );
    assert!(
        err <= 0.05,
        "runq {measured} vs run_delay {truth}: {:.2}%",
        err * 100.0
    );
    assert_eq!(s["comm"], "pw-run-victim");
    assert!(
        lines.iter().any(|v| v["event"] == "investigation_ended"
            && v["message"].as_str().unwrap().contains("exited")),
        "no investigation_ended notice"
    );

    // The status of a failing command is pausewatch's; the report goes to stderr.
    let out = Command::new(pausewatch_bin())
        .args([
            "run",
            "--no-lease-socket",
            "--",
            "sh",
            "-c",
            "sleep 0.2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pausewatch report (pid"));
    let out = Command::new(pausewatch_bin())
        .args(["run", "--no-lease-socket", "--", "/nonexistent/command"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM ends the live view like `q`: the terminal leaves the alternate screen and the
/// report is printed.
#[test]
fn sigterm_restores_the_terminal() {
    let (mut victim, tmux) = live_view_of("term", "pw-tui-term");
    let pid = victim.id();
    // Anchored: the shell's command line holds the same words after "sh -c".
    let pattern = format!("^{} --pid {pid} ", pausewatch_bin().display());
    let pw = run_cmd(&["pgrep", "-f", &pattern]);
    let pw: i32 = pw.lines().next().unwrap().trim().parse().unwrap();
    // SAFETY: signalling the pausewatch this test started.
    assert_eq!(unsafe { libc::kill(pw, libc::SIGTERM) }, 0);
    tmux.wait_for("pausewatch to exit", Duration::from_secs(15), |s| {
        s.contains("pausewatch-exit=")
    });
    let end = tmux.history();
    assert!(end.contains("pausewatch-exit=0"), "{end}");
    assert!(
        end.contains("pausewatch report (pid") && !end.contains("sched via"),
        "the alternate screen was left and the report printed:\n{end}"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}
