//! Benchmark baselines for `cargo xtask bench` (`probe::calibration`), held until SIGINT or
//! SIGTERM after printing `attached: …`:
//!
//! - no argument: pausewatch's empty calibration programs on sched_switch and page_fault_user,
//!   and nothing else. A workload's slowdown under them is what entering a program on those
//!   hooks costs on this machine: the least that any observer of every context switch and page
//!   fault pays, and the part of pausewatch's slowdown that no change to its programs can
//!   remove.
//! - `--least-wait`: `stats_least_wait` on sched_switch and the empty program after it, the
//!   least a program does to time every run-queue wait. At exit it prints one JSON line with
//!   the waits it counted and their total (`{"least_waits":N,"least_wait_total_ns":T}`), which
//!   the tests hold against the kernel's own run-queue accounting.
use std::{io::Write as _, path::Path, process::ExitCode};

use pausewatch::probe::calibration::{self, Calibration};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pw-empty-hooks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let which = match std::env::args().nth(1).as_deref() {
        None => Calibration::Empty,
        Some("--least-wait") => Calibration::LeastWait,
        Some(other) => anyhow::bail!(
            "unknown argument {other:?}: run with no argument (empty programs) or with --least-wait"
        ),
    };
    // Blocked before anything is attached, so that a signal sent from then on is waited for,
    // not fatal with the programs half attached.
    // SAFETY: sigset_t is plain data; the libc calls get valid pointers to it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // The capabilities pausewatch needs, with the same one-line error.
    pausewatch::probe::privileges::check()?;
    let (ebpf, attached) = calibration::attach(Path::new("/sys/kernel/btf/vmlinux"), which)?;
    println!("attached: {}", attached.join(", "));
    std::io::stdout().flush()?;
    let mut sig = 0;
    // SAFETY: valid pointers; the signals waited for are blocked above.
    unsafe { libc::sigwait(&set, &mut sig) };
    if which == Calibration::LeastWait {
        let (waits, total_ns) = calibration::least_waits(&ebpf)?;
        println!(
            "{}",
            serde_json::json!({"least_waits": waits, "least_wait_total_ns": total_ns})
        );
    }
    Ok(())
}
