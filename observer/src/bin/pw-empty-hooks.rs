//! Benchmark baseline for `cargo xtask bench`: attaches pausewatch's empty calibration programs
//! to sched_switch and page_fault_user (`probe::attach_empty_hooks`), and nothing else, prints
//! `attached: …` and holds them until SIGINT or SIGTERM. A workload's slowdown under it is what
//! entering a program on those hooks costs on this machine: the least that any observer of
//! every context switch and page fault pays, and the part of pausewatch's slowdown that no
//! change to its programs can remove.
use std::{io::Write as _, path::Path, process::ExitCode};

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
    let (_ebpf, attached) =
        pausewatch::probe::attach_empty_hooks(Path::new("/sys/kernel/btf/vmlinux"))?;
    println!("attached: {}", attached.join(", "));
    std::io::stdout().flush()?;
    let mut sig = 0;
    // SAFETY: valid pointers; the signals waited for are blocked above.
    unsafe { libc::sigwait(&set, &mut sig) };
    Ok(())
}
