//! The scenarios, each run under a pausewatch this process starts:
//!
//! - `stale-write` (DDIA figures 9-4 and 9-5): client A holds the lease, checks it is valid and
//!   starts its work; this process SIGSTOPs A past the lease's TTL; the lock service gives the
//!   lease to client B (a newer fencing token), B writes; A is resumed with SIGCONT and writes
//!   with its old token, which the storage service refuses. pausewatch should report
//!   `lease_expired_during_pause` (stopped: SIGSTOP from this process), then
//!   `acted_after_expiry` (naming B and its token), then the storage's `reject`.
//! - `clock-step`: A holds a lease whose deadline is on the lock service's wall clock; this
//!   process steps the wall clock back 5 s, then forward again. pausewatch should report
//!   `clock_step_moved_deadline` for each step, with the error it introduced.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// stale-write or clock-step.
    #[arg(value_parser = ["stale-write", "clock-step"])]
    name: String,
    /// The pausewatch binary (default: the one next to this program).
    #[arg(long)]
    pausewatch: Option<PathBuf>,
    /// Where the lease socket and pausewatch's NDJSON go (default: a new directory in /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// stale-write: the lease TTL.
    #[arg(long, value_parser = crate::duration, default_value = "2s")]
    ttl: Duration,
    /// stale-write: how long client A is held stopped.
    #[arg(long, value_parser = crate::duration, default_value = "4s")]
    stop_for: Duration,
}

/// A child whose stdout lines are echoed (prefixed) and collected.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("  [{prefix}] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `needle`, returning it.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(_) => bail!("{} did not print '{needle}' within {timeout:?}", self.name),
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code().unwrap_or(
                    128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
                ));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: i32) -> anyhow::Result<()> {
        // SAFETY: signalling our own child, which has not been reaped.
        if unsafe { libc::kill(self.pid() as i32, sig) } != 0 {
            bail!(
                "kill({}, {sig}): {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn listening(&mut self) -> anyhow::Result<String> {
        let l = self.wait_line("listening ", Duration::from_secs(10))?;
        Ok(l.trim_start_matches("listening ").to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn me() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding this program")
}

fn demo(args: &[&str]) -> anyhow::Result<Command> {
    let mut c = Command::new(me()?);
    c.args(args);
    Ok(c)
}

/// Starts pausewatch (NDJSON to `dir/pausewatch.ndjson`, lease socket in `dir`) and waits
/// until its probes are attached and its socket accepts.
fn start_pausewatch(bin: &Path, dir: &Path) -> anyhow::Result<(Child, PathBuf, PathBuf)> {
    let ndjson = dir.join("pausewatch.ndjson");
    let sock = dir.join("lease.sock");
    let out =
        std::fs::File::create(&ndjson).with_context(|| format!("creating {}", ndjson.display()))?;
    let me = std::process::id().to_string();
    let mut child = Command::new(bin)
        .args([
            "--json",
            "--min-pause",
            "10ms",
            "--pid",
            &me,
            "--lease-socket",
        ])
        .arg(&sock)
        .stdout(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = child.try_wait()? {
            bail!("pausewatch exited before it was ready ({s}); is this running as root?");
        }
        let text = std::fs::read_to_string(&ndjson).unwrap_or_default();
        if text.contains("\"event\":\"lease_socket\"") && sock.exists() {
            return Ok((child, ndjson, sock));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("pausewatch was not ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_pausewatch(mut pw: Child) -> anyhow::Result<()> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pw.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while pw.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = pw.kill();
            bail!("pausewatch did not exit within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Steps CLOCK_REALTIME by `delta_ns` (needs CAP_SYS_TIME).
fn step_clock(delta_ns: i64) -> anyhow::Result<()> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let t = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128 + delta_ns as i128;
    let new = libc::timespec {
        tv_sec: (t.div_euclid(1_000_000_000)) as libc::time_t,
        tv_nsec: (t.rem_euclid(1_000_000_000)) as libc::c_long,
    };
    // SAFETY: valid clock id and pointer to a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &new) } != 0 {
        bail!(
            "clock_settime: {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let bin = match &a.pausewatch {
        Some(p) => p.clone(),
        None => me()?.with_file_name("pausewatch"),
    };
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("pausewatch-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("starting pausewatch ({})", bin.display());
    let (pw, ndjson, sock) = start_pausewatch(&bin, &dir)?;
    let sock_s = sock.to_string_lossy().to_string();
    let outcome = match a.name.as_str() {
        "stale-write" => stale_write(&a, &sock_s),
        _ => clock_step(&sock_s),
    };
    stop_pausewatch(pw)?;
    let mut result = outcome?;
    let text = std::fs::read_to_string(&ndjson)
        .with_context(|| format!("reading {}", ndjson.display()))?;
    println!("\npausewatch reported:");
    let mut kinds = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("incident") => {
                kinds.push(v["kind"].as_str().unwrap_or("").to_string());
                println!(
                    "  INCIDENT {}: {}",
                    v["kind"].as_str().unwrap_or(""),
                    v["message"].as_str().unwrap_or("")
                );
            }
            Some("lease") if v["event"] == "reject" => println!(
                "  storage pid {} refused token {} of lease '{}' (held by pid {})",
                v["pid"],
                v["token"],
                v["lease"].as_str().unwrap_or(""),
                v["token_holder"]["pid"]
            ),
            Some("clock") if v["event"] == "step" => {
                println!("  clock stepped {} ns", v["step_ns"])
            }
            _ => {}
        }
    }
    result["ndjson"] = json!(ndjson);
    result["scenario_pid"] = json!(std::process::id());
    println!("result {result}");
    let wanted: &[&str] = match a.name.as_str() {
        "stale-write" => &["lease_expired_during_pause", "acted_after_expiry"],
        _ => &["clock_step_moved_deadline"],
    };
    let caught = wanted.iter().all(|w| kinds.iter().any(|k| k == w));
    println!(
        "{}",
        if caught {
            "pausewatch caught it."
        } else {
            "pausewatch did NOT report every expected incident."
        }
    );
    Ok(if caught { 0 } else { 2 })
}

fn services(sock: &str, ttl: Duration) -> anyhow::Result<(Proc, Proc, String, String)> {
    let ttl_s = format!("{}ms", ttl.as_millis());
    let mut lock = Proc::spawn("lock", &mut demo(&["lock-service", "--ttl", &ttl_s])?)?;
    let mut storage = Proc::spawn("storage", &mut demo(&["storage", "--socket", sock])?)?;
    let (la, sa) = (lock.listening()?, storage.listening()?);
    Ok((lock, storage, la, sa))
}

fn client(id: &str, lock: &str, storage: &str, sock: &str, extra: &[&str]) -> anyhow::Result<Proc> {
    let mut args = vec![
        "client",
        "--id",
        id,
        "--lock",
        lock,
        "--storage",
        storage,
        "--socket",
        sock,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&format!("client {id}"), &mut demo(&args)?)
}

fn stale_write(a: &Args, sock: &str) -> anyhow::Result<Value> {
    let (_lock, storage, la, sa) = services(sock, a.ttl)?;
    let mut ca = client("A", &la, &sa, sock, &["--work", "1s", "--writes", "3"])?;
    ca.wait_line("A: lease valid, working", Duration::from_secs(30))?;
    ca.signal(libc::SIGSTOP)?;
    let (stopped_at, stop_mono) = (Instant::now(), mono_ns());
    println!(
        "SIGSTOP -> client A (pid {}) from pid {}",
        ca.pid(),
        std::process::id()
    );
    let mut cb = client("B", &la, &sa, sock, &["--work", "200ms", "--writes", "2"])?;
    cb.wait_line("B: wrote", Duration::from_secs(30))?;
    std::thread::sleep(a.stop_for.saturating_sub(stopped_at.elapsed()));
    ca.signal(libc::SIGCONT)?;
    let cont_mono = mono_ns();
    println!("SIGCONT -> client A after {:?}", stopped_at.elapsed());
    let a_exit = ca.wait_exit(Duration::from_secs(30))?;
    let b_exit = cb.wait_exit(Duration::from_secs(30))?;
    // The storage's report of the refusal goes out before its reply to A; give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    Ok(json!({
        "scenario": "stale-write",
        "client_a": ca.pid(),
        "client_b": cb.pid(),
        "storage": storage.pid(),
        "client_a_exit": a_exit,
        "client_b_exit": b_exit,
        "sigstop_mono_ns": stop_mono,
        "sigcont_mono_ns": cont_mono,
        "ttl_ns": a.ttl.as_nanos() as u64,
    }))
}

fn clock_step(sock: &str) -> anyhow::Result<Value> {
    let (_lock, _storage, la, sa) = services(sock, Duration::from_secs(30))?;
    let mut ca = client(
        "A",
        &la,
        &sa,
        sock,
        &["--wall-clock", "--work", "300ms", "--writes", "8"],
    )?;
    ca.wait_line("A: acquired", Duration::from_secs(30))?;
    const STEP: i64 = -5_000_000_000;
    step_clock(STEP)?;
    let back_mono = mono_ns();
    println!("stepped the wall clock back 5 s");
    std::thread::sleep(Duration::from_secs(1));
    step_clock(-STEP)?;
    let forward_mono = mono_ns();
    println!("stepped it forward 5 s again");
    let a_exit = ca.wait_exit(Duration::from_secs(30))?;
    Ok(json!({
        "scenario": "clock-step",
        "client_a": ca.pid(),
        "client_a_exit": a_exit,
        "steps_ns": [STEP, -STEP],
        "steps_mono_ns": [back_mono, forward_mono],
    }))
}
