//! Memory and disk pauses measured by real eBPF against the kernel's own accounting:
//! major faults against /proc/<pid>/stat majflt, a throttled fsync against the time the
//! workload measured around the call, memcg reclaim against the cgroup's failcnt.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

/// An ext4 file system (no journal: every write of an fsync is the caller's) on a loop
/// device, unmounted and detached when dropped.
struct LoopFs {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
}

impl LoopFs {
    fn new() -> Self {
        let id = std::process::id();
        let image = PathBuf::from(format!("/var/tmp/pw-loop-{id}.img"));
        let mnt = PathBuf::from(format!("/var/tmp/pw-loop-{id}.mnt"));
        run_cmd(&["truncate", "-s", "64M", image.to_str().unwrap()]);
        let dev = run_cmd(&["losetup", "-f", "--show", image.to_str().unwrap()]);
        let fs = Self { image, dev, mnt };
        run_cmd(&["mkfs.ext4", "-q", "-F", "-O", "^has_journal", &fs.dev]);
        std::fs::create_dir_all(&fs.mnt).unwrap();
        run_cmd(&["mount", &fs.dev, fs.mnt.to_str().unwrap()]);
        fs
    }

    /// "major:minor" of the loop device.
    fn maj_min(&self) -> String {
        run_cmd(&["lsblk", "-dno", "MAJ:MIN", &self.dev])
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A cgroup v1 directory of `controller`, removed when dropped (after its tasks have exited).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(controller: &str, tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/sys/fs/cgroup/{controller}/pw-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}/{file}: {e}", self.0.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A shell line that moves itself into this cgroup and then runs the workload.
    fn exec(&self, workload_args: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && read go && exec {} {workload_args}",
            self.0.display(),
            workload_bin().display()
        ));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs a workload started by `Cgroup::exec`: lets it go, waits, parses its JSON.
fn finish(mut child: std::process::Child) -> Value {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("workload output")
}

#[test]
fn major_faults_match_proc_stat_and_name_the_file() {
    require_root();
    let path = PathBuf::from(format!("/var/tmp/pw-faults-{}", std::process::id()));
    cold_file(&path, 16);
    let pw = Pausewatch::start(&["--min-pause", "200us"]);
    // Ground truth for the workload's whole life, as pausewatch counts it: its own reading of
    // /proc/self/stat misses the faults of its exit path (code paged back in after reclaim),
    // its rusage as a waited-for child does not. Only the workload is waited for in between.
    let children_majflt = || {
        // SAFETY: getrusage writes one rusage.
        unsafe {
            let mut r: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut r), 0);
            r.ru_majflt as u64
        }
    };
    let before = children_majflt();
    let w = run_workload(&["touch-file", path.to_str().unwrap()]);
    let lifetime_majflt = children_majflt() - before;
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    std::fs::remove_file(&path).unwrap();
    let pid = w["pid"].as_u64().unwrap();
    let majflt = w["majflt"].as_u64().unwrap();
    assert!(majflt >= 4096, "the workload did not fault every page: {w}");
    assert!(lifetime_majflt >= majflt, "rusage {lifetime_majflt} < {w}");
    let s = summary_of(&lines, pid).unwrap_or_else(|| panic!("no summary for {pid}"));
    let m = &s["memory"];
    // Counted by pausewatch from the kernel's maj_flt at each next fault and at exit, split by
    // what the fault was on; the child's rusage is the kernel's own total over its life.
    assert_eq!(
        m["major_faults_file"].as_u64().unwrap() + m["major_faults_swapin"].as_u64().unwrap(),
        lifetime_majflt,
        "{m} (the workload itself read {majflt} before exiting)"
    );
    assert!(m["major_faults_file"].as_u64().unwrap() >= 4096, "{m}");
    let stalls = &m["blocked_by_reason"]["major_fault"];
    assert!(
        stalls["count"].as_u64().unwrap() > 0 && stalls["total_ns"].as_u64().unwrap() > 0,
        "{m}"
    );
    // Streamed faults inside the mapping name the file and the offset of their address. (The
    // workload's own executable and libraries fault too, e.g. on a fresh build: those are
    // major faults on other files and count towards majflt above.)
    let (addr, len) = (w["addr"].as_u64().unwrap(), w["len"].as_u64().unwrap());
    let faults: Vec<&Value> = of_type(&lines, "pause")
        .filter(|v| v["pid"] == pid && v["blocked"]["reason"] == "major_fault")
        .filter(|v| (addr..addr + len).contains(&v["blocked"]["address"].as_u64().unwrap()))
        .collect();
    assert!(
        !faults.is_empty(),
        "no major-fault pause inside the mapping streamed for {pid}"
    );
    for f in &faults {
        let b = &f["blocked"];
        assert_eq!(b["file"], path.to_str().unwrap(), "{f}");
        let a = b["address"].as_u64().unwrap();
        assert_eq!(
            b["file_offset"].as_u64().unwrap(),
            (a - addr) & !4095,
            "{f}"
        );
    }
}

#[test]
fn a_throttled_fsync_is_timed_with_its_path_and_device() {
    require_root();
    let fs = LoopFs::new();
    let blkio = Cgroup::new("blkio", "fsync");
    // 1 MiB/s for writes to the loop device from this cgroup: 512 KiB take about half a second.
    blkio.write(
        "blkio.throttle.write_bps_device",
        &format!("{} 1048576", fs.maj_min()),
    );
    let file = fs.mnt.join("wal");
    let pw = Pausewatch::start(&[]);
    let child = blkio
        .exec(&format!("fsync-file {} 524288", file.display()))
        .spawn()
        .unwrap();
    let w = finish(child);
    let pid = w["pid"].as_u64().unwrap();
    let measured = w["fsync_ns"].as_u64().unwrap();
    assert!(
        measured > 200_000_000,
        "the throttle did not slow the fsync: {w}"
    );
    let mut pw = pw;
    let call = pw.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "fsync" && v["pid"] == pid
    });
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    assert_eq!(call["syscall"], "fsync");
    assert_eq!(call["tid"], w["tid"]);
    let d = call["duration_ns"].as_u64().unwrap();
    assert!(
        d.abs_diff(measured) <= 2_000_000,
        "pausewatch {d} ns, measured {measured} ns"
    );
    assert_eq!(call["path"], file.to_str().unwrap(), "{call}");
    let loop_name = Path::new(&fs.dev).file_name().unwrap().to_str().unwrap();
    assert_eq!(call["device"], loop_name, "{call}");
    // The throttle holds writes before the device: the disk itself answered quickly.
    let p99 = call["disk_p99_ns"]
        .as_u64()
        .expect("the loop device's latency is known");
    assert!(p99 * 10 < d, "disk p99 {p99} ns vs fsync {d} ns: {call}");
    assert!(
        call["description"].as_str().unwrap().contains("throttling"),
        "{call}"
    );
    // The thread's D sleeps inside the call are labelled fsync.
    let m = &summary_of(&lines, pid).unwrap()["memory"];
    assert!(
        m["blocked_by_reason"]["fsync"]["total_ns"]
            .as_u64()
            .unwrap()
            > 0,
        "{m}"
    );
    assert_eq!(m["fsync"]["count"], 1, "{m}");
    drop(blkio);
    drop(fs);
}

#[test]
fn memcg_reclaim_is_charged_to_the_thread_that_stalled() {
    require_root();
    let path = PathBuf::from(format!("/var/tmp/pw-reclaim-{}", std::process::id()));
    cold_file(&path, 64);
    let memcg = Cgroup::new("memory", "reclaim");
    // Reading 64 MiB of page cache into 16 MiB: the reader reclaims its own cgroup's pages.
    memcg.write("memory.limit_in_bytes", "16777216");
    let child = memcg
        .exec(&format!("read-file {}", path.display()))
        .spawn()
        .unwrap();
    let sh_pid = child.id().to_string();
    let pw = Pausewatch::start(&["--pid", &sh_pid, "--min-pause", "1us"]);
    let w = finish(child);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = pw.stop();
    std::fs::remove_file(&path).unwrap();
    let failcnt: u64 = memcg.read("memory.failcnt").parse().unwrap();
    assert!(failcnt > 0, "the cgroup never reached its limit");
    let pid = w["pid"].as_u64().unwrap();
    assert_eq!(
        pid.to_string(),
        sh_pid,
        "the workload runs in the shell's process"
    );
    let m = &summary_of(&lines, pid).unwrap()["memory"];
    assert!(
        m["stalls"]["memcg_reclaim"]["count"].as_u64().unwrap() > 0,
        "{m}"
    );
    let stalls: Vec<&Value> = of_type(&lines, "mem_stall")
        .filter(|v| v["kind"] == "memcg_reclaim")
        .collect();
    assert!(!stalls.is_empty(), "no memcg reclaim stall streamed");
    for s in &stalls {
        assert_eq!((&s["pid"], &s["tid"]), (&w["pid"], &w["tid"]), "{s}");
        assert!(s["duration_ns"].as_u64().unwrap() > 0);
    }
    let streamed: u64 = stalls.len() as u64;
    assert_eq!(
        streamed,
        m["stalls"]["memcg_reclaim"]["count"].as_u64().unwrap(),
        "every stall ≥ 1 µs is streamed"
    );
}
