//! Error paths of the real binary: one clear line on stderr, a non-zero exit, nothing loaded.
use std::{os::unix::process::CommandExt as _, process::Command};

use pausewatch_tests::*;

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().expect("running pausewatch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {} (stderr: {err})",
        out.status
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(
        out.stdout.is_empty(),
        "nothing may be written to stdout on error: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn pw() -> Command {
    let mut c = Command::new(pausewatch_bin());
    c.arg("--json");
    c
}

#[test]
fn a_pid_that_does_not_exist() {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let free = (2..pid_max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    fails_with(
        pw().args(["--pid", &free.to_string()]),
        &format!("no process with pid {free}"),
    );
}

#[test]
fn missing_btf() {
    fails_with(
        pw().args(["--btf", "/nonexistent/vmlinux"]),
        "CONFIG_DEBUG_INFO_BTF",
    );
}

#[test]
fn bad_arguments() {
    fails_with(pw().args(["--duration", "soon"]), "not a duration");
    fails_with(pw().args(["--pid", "12abc"]), "not a process id");
    fails_with(pw().args(["--attach", "kprobe"]), "invalid value");
    fails_with(
        pw().args(["--max-processes", "10"]),
        "10 is not in 64..=1048576",
    );
}

/// Waits measured from the kernel's `sched_info` need tp_btf programs: asked for together with
/// raw tracepoints, pausewatch says so and what to use instead, and loads nothing.
#[test]
fn a_runq_source_that_cannot_be_served() {
    require_root();
    fails_with(
        pw().args(["--attach", "raw", "--runq-source", "sched-info"]),
        "--runq-source sched-info needs tp_btf programs, not --attach raw; use --runq-source wakeup",
    );
    fails_with(pw().args(["--runq-source", "schedstat"]), "invalid value");
}

/// The sizes of the tables indexed by tid (switch-ins, faults) from the environment must be
/// powers of two, and the message names the variable.
#[test]
fn a_tid_table_size_that_is_not_a_power_of_two() {
    require_root();
    for var in ["PAUSEWATCH_SWITCH_INS_ENTRIES", "PAUSEWATCH_FAULTS_ENTRIES"] {
        for bad in ["3", "0", "many", "8388608"] {
            fails_with(
                pw().env(var, bad),
                &format!(
                    "{var}={bad:?} is not a power of two from 1 to 4194304; unset it to size the table from kernel.pid_max"
                ),
            );
        }
    }
}

/// Without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN the message says which capabilities are needed.
#[test]
fn not_root_names_the_capabilities() {
    require_root();
    let mut cmd = pw();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    fails_with(&mut cmd, "needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)");
}

#[test]
fn lease_reports_without_a_running_pausewatch_say_so() {
    fails_with(
        Command::new(pausewatch_bin()).args([
            "lease",
            "act",
            "leader",
            "--socket",
            "/nonexistent/lease.sock",
        ]),
        "cannot reach pausewatch at /nonexistent/lease.sock",
    );
    // Refused before anything is sent, in the agent's words.
    fails_with(
        Command::new(pausewatch_bin()).args(["lease", "act", "bad name!"]),
        "is not valid",
    );
}

#[test]
fn an_explicit_lease_socket_in_use_is_an_error() {
    require_root();
    let dir = std::env::temp_dir().join(format!("pw-cli-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("lease.sock");
    let first = Pausewatch::start(&["--lease-socket", sock.to_str().unwrap()]);
    fails_with(
        pw().args(["--duration", "5s", "--lease-socket", sock.to_str().unwrap()]),
        "is in use by another running pausewatch",
    );
    first.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
