//! The host as pausewatch may find it: kernel addresses hidden (kernel.kptr_restrict), tracefs
//! not mounted, or not mountable. Each degrades one thing with a clear notice and leaves the
//! rest working; and where nothing is missing, kernel stacks are named.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

/// A scratch directory on the root file system (a real disk, not tmpfs), removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/var/tmp/pw-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a cold file under `pw` (read(2), no mapping: its waits are outside the fault, fsync
/// and reclaim brackets, so only the kernel stack can say where it slept). Returns all lines
/// and the reader's pid.
fn read_cold_file(pw: Pausewatch, dir: &Path) -> (Vec<Value>, u64) {
    let path = dir.join("cold");
    cold_file(&path, 48);
    let v = run_workload(&["read-file", path.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    (pw.stop(), v["pid"].as_u64().unwrap())
}

/// The reader's pauses blocked outside any bracket.
fn kernel_waits(lines: &[Value], pid: u64) -> Vec<&Value> {
    of_type(lines, "pause")
        .filter(|v| v["pid"] == pid && v["blocked"]["reason"] == "kernel")
        .collect()
}

#[test]
fn kernel_stacks_are_named_unless_the_kernel_hides_its_addresses() {
    require_root();
    let dir = Scratch::new("stacks");
    // Root sees kernel addresses at kptr_restrict 0 and 1. Stacks are taken as the thread gets
    // the CPU back (tp_btf), or as it leaves it (the raw-tracepoint fallback).
    for attach in ["btf", "raw"] {
        let (lines, pid) = {
            let _shown = Sysctl::set("kernel.kptr_restrict", "1");
            let pw = Pausewatch::start(&["--min-pause", "20us", "--attach", attach]);
            read_cold_file(pw, &dir.0)
        };
        named_waits(&lines, pid, attach);
    }

    // kptr_restrict=2 hides addresses even from root: said at start-up, and the waits are
    // still reported, as `kernel` without a place.
    let (lines, pid) = {
        let _hidden = Sysctl::set("kernel.kptr_restrict", "2");
        let mut pw = Pausewatch::start(&["--min-pause", "20us"]);
        let notice = pw.wait_for(Duration::from_secs(5), |v| {
            v["type"] == "notice"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("kptr_restrict"))
        });
        assert_eq!(notice["level"], "warn", "{notice}");
        read_cold_file(pw, &dir.0)
    };
    let waits = kernel_waits(&lines, pid);
    assert!(!waits.is_empty(), "reading a cold file never blocked");
    assert!(
        waits.iter().all(|v| v["blocked"]["kernel_place"].is_null()),
        "a place named without kernel addresses"
    );
    let drops = of_type(&lines, "drops").last().unwrap();
    assert!(drops["unnamed_stacks"].as_u64().unwrap() > 0, "{drops}");
}

/// Every blocked wait of `pid` outside a bracket is named after a kernel function.
fn named_waits(lines: &[Value], pid: u64, attach: &str) {
    let waits = kernel_waits(lines, pid);
    assert!(
        !waits.is_empty(),
        "{attach}: reading a cold file never blocked"
    );
    let places: Vec<&str> = waits
        .iter()
        .filter_map(|v| v["blocked"]["kernel_place"].as_str())
        .collect();
    eprintln!(
        "{attach}: {} waits, places: {:?}",
        waits.len(),
        &places[..places.len().min(8)]
    );
    for w in waits
        .iter()
        .filter(|v| v["blocked"]["kernel_place"].is_null())
    {
        eprintln!("unnamed: {}", w["blocked"]);
    }
    // Every one: the same stack blocks again before the agent reads the first record (the
    // kernel gives both one stack id), which once left all but the first unnamed.
    assert_eq!(
        places.len(),
        waits.len(),
        "{attach}: kernel waits left unnamed"
    );
    assert!(
        places.iter().all(|p| !p.is_empty() && !p.starts_with("0x")),
        "{places:?}"
    );
    assert!(
        !warnings(lines).iter().any(|w| w.contains("kallsyms")),
        "{:?}",
        warnings(lines)
    );
}

/// Detaches every tracefs mount the namespace sees (none may be left: pausewatch looks at
/// both places).
fn unmount_tracefs() -> std::io::Result<()> {
    for p in [c"/sys/kernel/tracing", c"/sys/kernel/debug/tracing"] {
        // SAFETY: a valid path; EINVAL (not a mount point) and ENOENT are fine.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    Ok(())
}

/// Hides /sys/kernel under an empty tmpfs: no tracefs, and nowhere to mount it.
fn hide_sys_kernel() -> std::io::Result<()> {
    unmount_tracefs()?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/sys/kernel".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A stop of a spinner, and the stop line pausewatch writes for it.
fn a_stop_is_reported(pw: &mut Pausewatch) {
    let mut child = victim("pw-env-stop", 1, 3.0);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    hold_stopped(pid, Duration::from_millis(200));
    let stop = pw.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "stop" && v["pid"] == pid
    });
    assert!(
        stop["duration_ns"].as_u64().unwrap() >= 190_000_000,
        "{stop}"
    );
    let _ = (child.kill(), child.wait());
}

/// tracefs unmounted: where the syscall tracepoints are used, pausewatch mounts it where it
/// belongs (in its own mount namespace here, so the host is untouched), says so, and the clock
/// and fsync syscall tracepoints attach.
#[test]
fn without_tracefs_pausewatch_mounts_it_and_says_so() {
    require_root();
    let mut pw = Pausewatch::start_cmd(in_mount_namespace(
        &["--syscall-tracepoints", "always"],
        unmount_tracefs,
    ));
    let lines = pw.lines();
    let changed = of_type(&lines, "notice")
        .find(|v| v["event"] == "host_changed")
        .unwrap_or_else(|| panic!("no host_changed notice: {lines:?}"));
    assert!(
        changed["message"]
            .as_str()
            .unwrap()
            .contains("mounted tracefs at /sys/kernel/tracing"),
        "{changed}"
    );
    let w = warnings(&lines);
    assert!(
        !w.iter().any(|m| m.contains("clock") || m.contains("fsync")),
        "{w:?}"
    );
    a_stop_is_reported(&mut pw);
    pw.stop();
}

/// No tracefs and nowhere to mount it: the hooks off the syscall path (tp_btf) do not need
/// it, so by default nothing is lost; with the syscall tracepoints asked for, what needs it
/// (who changes the clock, fsync calls) is named as unobserved with the reason, and pauses are
/// observed as ever.
#[test]
fn without_a_place_for_tracefs_what_needs_it_is_disabled_and_the_rest_works() {
    require_root();
    let dir = Scratch::new("btf");
    let btf = dir.0.join("vmlinux");
    std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
    let btf = btf.to_str().unwrap();
    let pw = Pausewatch::start_cmd(in_mount_namespace(&["--btf", btf], hide_sys_kernel));
    let lines = pw.lines();
    let w = warnings(&lines);
    assert!(
        !w.iter().any(|m| m.contains("clock") || m.contains("fsync")),
        "{w:?}"
    );
    assert!(
        of_type(&lines, "notice")
            .any(|n| n["event"] == "syscall_hooks" && n["mode"] == "off_syscall_path"),
        "{lines:?}"
    );
    pw.stop();

    let mut pw = Pausewatch::start_cmd(in_mount_namespace(
        &["--btf", btf, "--syscall-tracepoints", "always"],
        hide_sys_kernel,
    ));
    let w = warnings(&pw.lines());
    eprintln!("{w:#?}");
    for what in ["who changes the clock is not observed", "fsync"] {
        assert!(
            w.iter().any(|m| m.contains(what) && m.contains("tracefs")),
            "no warning about {what:?} naming tracefs: {w:?}"
        );
    }
    a_stop_is_reported(&mut pw);
    pw.stop();
}
