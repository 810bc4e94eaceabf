//! Harness for the privileged tests: runs the real `pausewatch` binary (real eBPF, the running
//! kernel) and collects its NDJSON. These tests never skip: without root, or with a binary
//! that cannot load its programs, they fail with the reason.
pub mod taskstats;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The pausewatch binary under test: $PAUSEWATCH_BIN, else target/debug/pausewatch.
pub fn pausewatch_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PAUSEWATCH_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pausewatch");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build -p observer`, or run `cargo xtask test`)",
        p.display()
    );
    p
}

/// The workload helper built with these tests: cargo puts it in the profile directory, one
/// level above the test executables in deps/.
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("pw-workload");
    assert!(
        p.exists(),
        "{} missing: it is built by `cargo test -p pausewatch-tests`",
        p.display()
    );
    p
}

/// The GC workloads' sources (Java and Go), shared by the tests and `cargo xtask bench gc`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs a build command, returning its output as the error when it fails.
fn build(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {what}: {e} (`cargo xtask test` installs it)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Compiles `fixtures/<source>` with javac into `out_dir` (Debian's openjdk-17-jdk-headless).
pub fn build_java(source: &str, out_dir: &Path) -> Result<(), String> {
    build(
        "javac",
        Command::new("javac")
            .arg("-d")
            .arg(out_dir)
            .arg(fixtures().join(source)),
    )
}

/// Builds the stand-in libjvm.so of `fixtures/usdt` (HotSpot's probes behind USDT
/// semaphores) and `fakejava`, which loads it, into `out_dir` with gcc and <sys/sdt.h>
/// (Debian's systemtap-sdt-dev); returns the path of `fakejava`.
pub fn build_fake_jvm(out_dir: &Path) -> Result<PathBuf, String> {
    let src = fixtures().join("usdt");
    build(
        "gcc (libjvm.so)",
        Command::new("gcc")
            .args(["-O1", "-shared", "-fPIC", "-o"])
            .arg(out_dir.join("libjvm.so"))
            .arg(src.join("fakejvm.c")),
    )?;
    let exe = out_dir.join("fakejava");
    build(
        "gcc (fakejava)",
        Command::new("gcc")
            .args(["-O1", "-o"])
            .arg(&exe)
            .arg(src.join("fakejava.c"))
            .arg(format!("-L{}", out_dir.display()))
            .arg("-ljvm")
            .arg(format!("-Wl,-rpath,{}", out_dir.display())),
    )?;
    Ok(exe)
}

/// Builds `fixtures/gcloop` with go into `out` (Debian's golang-go), with its build cache in
/// `cache_dir`; `stripped` drops the symbol table and DWARF (`-ldflags=-s -w`).
pub fn build_go(out: &Path, cache_dir: &Path, stripped: bool) -> Result<(), String> {
    let mut cmd = Command::new("go");
    // go builds the module of its working directory.
    cmd.current_dir(fixtures().join("gcloop"))
        .env("GOCACHE", cache_dir.join("cache"))
        .env("GOPATH", cache_dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .args(["build", "-o"])
        .arg(out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    build("go build", &mut cmd)
}

/// Fails (never skips) when not root: these tests exist to load real eBPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged tests must run as root (they load eBPF): run `sudo cargo xtask test`"
    );
}

/// Both CPUs the tests pin to must exist; pausewatch itself is left unpinned.
pub fn test_cpu() -> usize {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if n > 1 { 1 } else { 0 }
}

/// A running pausewatch whose stdout lines are collected as JSON.
pub struct Pausewatch {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Pausewatch {
    /// Starts `pausewatch --json ARGS` and waits until it reports its programs attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_bin(&pausewatch_bin(), args)
    }

    /// As `start`, with a given binary (the benchmark runs the release build).
    pub fn start_bin(bin: &std::path::Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("--json").args(args);
        Self::start_cmd(cmd)
    }

    /// As `start`, with a prepared command (the pausewatch binary and its arguments, and
    /// whatever else the test sets up: a mount namespace, capabilities), including `--json`.
    pub fn start_cmd(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pausewatch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                l.lock().unwrap().push(v);
            }
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut pw = Self {
            child,
            lines,
            stderr,
        };
        pw.wait_for(Duration::from_secs(60), |v| {
            v["type"] == "notice" && v["event"] == "attached"
        });
        pw
    }

    /// Waits until a line matching `pred` arrives; panics with stderr if pausewatch exits first.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "pausewatch exited ({status}) before the expected line; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a line; stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM, wait for exit 0, and return every line it wrote.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGTERM)
    }

    /// As `stop`, ending it with `sig` (SIGTERM, SIGINT or SIGHUP).
    pub fn stop_with(mut self, sig: i32) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let status = self.child.wait().expect("waiting for pausewatch");
        std::thread::sleep(Duration::from_millis(300)); // let the reader threads finish
        assert!(
            status.success(),
            "pausewatch exited with {status}; stderr:\n{}",
            self.stderr.lock().unwrap()
        );
        let lines = self.lines.lock().unwrap().clone();
        validate_lines(&lines);
        lines
    }
}

/// A test that fails before `stop` leaves no agent running: one left behind attaches its
/// probes to what later tests start (it raised a USDT semaphore in a later test once).
impl Drop for Pausewatch {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// NDJSON text as values; a line that is not JSON fails the test, naming it.
pub fn parse_ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// An NDJSON file (a recording) as values.
pub fn read_ndjson(path: &Path) -> Vec<Value> {
    parse_ndjson(
        &std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
}

/// Compares `got` with the golden file at `path`; `PAUSEWATCH_BLESS=1` rewrites it instead.
pub fn assert_golden(path: &Path, got: &str) {
    if std::env::var_os("PAUSEWATCH_BLESS").is_some() {
        std::fs::write(path, got).unwrap();
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    assert!(
        got == want,
        "{} differs (PAUSEWATCH_BLESS=1 rewrites it):\n--- want\n{want}\n--- got\n{got}",
        path.display()
    );
}

/// Lines of one type.
pub fn of_type<'a>(lines: &'a [Value], ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines.iter().filter(move |v| v["type"] == ty)
}

/// pausewatch (`--json` and `args`) to be started in a private mount namespace of its own, in
/// which `setup` then changes what it sees (unmounts, mounts), leaving the host untouched. The
/// hook runs between fork and exec: only async-signal-safe calls.
pub fn in_mount_namespace(
    args: &[&str],
    mut setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(pausewatch_bin());
    cmd.arg("--json").args(args);
    // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec, and
    // whatever `setup` makes, under the same rule.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            setup()
        });
    }
    cmd
}

/// A loop device backed by an image file of `size` (truncate's syntax, e.g. "64M") under
/// /var/tmp, detached and its image removed when dropped (after whatever holds it has
/// unmounted it).
pub struct LoopDevice {
    image: PathBuf,
    /// /dev/loopN.
    pub dev: String,
}

impl LoopDevice {
    pub fn new(tag: &str, size: &str) -> Self {
        let image = PathBuf::from(format!("/var/tmp/pw-{tag}-{}.img", std::process::id()));
        let img = image.to_str().unwrap();
        run_cmd(&["truncate", "-s", size, img]);
        let dev = run_cmd(&["losetup", "-f", "--show", img]);
        Self { image, dev }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The messages of the `warn` notices.
pub fn warnings(lines: &[Value]) -> Vec<String> {
    of_type(lines, "notice")
        .filter(|v| v["level"] == "warn")
        .map(|v| v["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The kernel's run-queue wait of a `pw-workload spin` victim: the sum of its threads'
/// schedstat `run_delay`, as each read it last thing before exiting.
pub fn spin_run_delay(report: &Value) -> u64 {
    report["threads"]
        .as_array()
        .expect("the workload's threads")
        .iter()
        .map(|t| t["run_delay_ns"].as_u64().unwrap())
        .sum()
}

/// The summary line of a process.
pub fn summary_of(lines: &[Value], pid: u64) -> Option<&Value> {
    of_type(lines, "summary").find(|v| v["pid"] == pid)
}

/// Runs a command to success (failing the test with its stderr otherwise) and returns its
/// trimmed stdout.
pub fn run_cmd(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a workload to completion and parses the JSON it prints.
pub fn run_workload(args: &[&str]) -> Value {
    run_workload_under(&[], args)
}

/// The same, started through `wrapper` (a command that execs the rest of its arguments, e.g.
/// `setpriv --bounding-set -sys_time --`); empty: directly.
pub fn run_workload_under(wrapper: &[&str], args: &[&str]) -> Value {
    let mut cmd = match wrapper {
        [] => Command::new(workload_bin()),
        [prog, rest @ ..] => {
            let mut c = Command::new(prog);
            c.args(rest).arg(workload_bin());
            c
        }
    };
    let out = cmd.args(args).output().expect("running pw-workload");
    assert!(
        out.status.success(),
        "pw-workload {args:?} (through {wrapper:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pw-workload output")
}

/// Starts CPU hogs pinned to `cpu` for `secs` (they exit by themselves).
pub fn start_hogs(n: usize, cpu: usize, secs: f64) -> Vec<Child> {
    (0..n)
        .map(|i| {
            Command::new(workload_bin())
                .args([
                    "spin",
                    &secs.to_string(),
                    &cpu.to_string(),
                    &format!("pw-hog{i}"),
                    "1",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawning hog")
        })
        .collect()
}

/// A spinning victim with `threads` threads (it exits by itself after `secs`).
pub fn victim(name: &str, threads: usize, secs: f64) -> Child {
    victim_cmd(name, threads, secs)
        .spawn()
        .expect("spawning the victim")
}

/// The command `victim` runs, for a test that spawns it its own way.
pub fn victim_cmd(name: &str, threads: usize, secs: f64) -> Command {
    let mut c = Command::new(workload_bin());
    c.args([
        "spin",
        &secs.to_string(),
        &test_cpu().to_string(),
        name,
        &threads.to_string(),
    ])
    .stdout(Stdio::null());
    c
}

/// Stops `pid` with SIGSTOP, waits until the kernel shows it stopped, holds it `hold`, and
/// resumes it with SIGCONT. Returns the bounds of the stop as the test saw it: from seeing it
/// stopped to SIGCONT (at least), and from SIGSTOP to SIGCONT (at most).
pub fn hold_stopped(pid: u32, hold: Duration) -> (Duration, Duration) {
    let t0 = Instant::now();
    signal(pid, libc::SIGSTOP);
    wait_until("it is stopped", Duration::from_secs(5), || {
        proc_state(pid) == 'T'
    });
    let seen = Instant::now();
    std::thread::sleep(hold);
    // At least until the resume is asked for: the stop ends inside that call (the threads are
    // woken there), and the call can take milliseconds to return on a loaded host.
    let held_min = seen.elapsed();
    signal(pid, libc::SIGCONT);
    (held_min, t0.elapsed())
}

/// Resident set size of `pid` in KiB (VmRSS of /proc/<pid>/status); None once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A KiB field of /proc/<pid>/status (`VmRSS`, `VmHWM`); None once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A file of `mib` MiB of non-zero data, written to disk and dropped from the page cache:
/// reading or mapping it waits for the disk.
pub fn cold_file(path: &Path, mib: usize) {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let mut f = std::fs::File::create(path).expect("create");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..mib {
        f.write_all(&chunk).expect("write");
    }
    f.sync_all().expect("fsync");
    // SAFETY: valid fd; the pages are clean after the fsync, so DONTNEED drops them.
    assert_eq!(
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
}

/// Polls `cond` every millisecond until it holds; fails naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `sig` to a child of the test, failing with the reason if it cannot.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET (no client crate needed for loopback test servers): (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The process state letter from /proc/<pid>/stat (after the parenthesised comm).
pub fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/<pid>/stat");
    s.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .expect("state field")
}

/// The JSON Schema of the NDJSON lines (docs/ndjson.schema.json), compiled once.
fn line_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ndjson.schema.json");
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("reading the schema"))
                .expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    })
}

/// Why a line does not match docs/ndjson.schema.json (empty: it does).
pub fn schema_errors(v: &Value) -> Vec<String> {
    line_schema()
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Fails unless every line is valid against docs/ndjson.schema.json. Every privileged test's
/// output goes through this, so the schema file is checked against real output of every kind.
pub fn validate_lines(lines: &[Value]) {
    for v in lines {
        let errors = schema_errors(v);
        assert!(
            errors.is_empty(),
            "line does not match docs/ndjson.schema.json: {errors:?}\n{v}"
        );
    }
}

/// A sysctl set for the test and restored when it ends, also on failure.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `name` (dotted, e.g. `kernel.kptr_restrict`) to `value` until dropped; panics
    /// when it cannot (a test's set-up).
    pub fn set(name: &str, value: &str) -> Self {
        Self::try_set(name, value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `set`, with the reason it could not as the error.
    pub fn try_set(name: &str, value: &str) -> Result<Self, String> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .trim()
            .to_string();
        std::fs::write(&path, value).map_err(|e| format!("setting {name}={value}: {e}"))?;
        Ok(Self { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// A child process killed and reaped when dropped, so a test that fails early leaves nothing
/// running (an agent left behind attaches to what later tests start, and holds their files).
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
