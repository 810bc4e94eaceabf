//! Command line. Parsing only; checks that need the system (does the pid exist?) are in main.
use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::probe::{AttachMode, btf::VMLINUX_BTF};

/// pausewatch: every pause a process never noticed — run-queue waits, D-state stalls, stops —
/// per process, from eBPF on the running kernel.
#[derive(Debug, Parser)]
#[command(name = "pausewatch", version, about, long_about = None)]
pub struct Cli {
    /// Observe only this process (repeatable), its threads, and the processes it creates
    /// afterwards. Without it: every process on the host.
    #[arg(long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,

    /// Stop after this long (e.g. 10s, 2m) and print the summary. Default: until SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// Stream every pause at least this long (all pauses are aggregated in the kernel anyway).
    #[arg(long, value_name = "DURATION", default_value = "5ms", value_parser = parse_duration)]
    pub min_pause: Duration,

    /// NDJSON on stdout (the default whenever stdout is not a terminal).
    #[arg(long)]
    pub json: bool,

    /// Tracepoint mechanism for the scheduler programs.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,

    /// Kernel BTF to read struct offsets from.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Turn on the kernel's BPF run-time statistics while running and report pausewatch's own
    /// cost per program at exit. Off by default: while on, every BPF program on the host (not
    /// only ours) pays two clock reads per run.
    #[arg(long)]
    pub bpf_stats: bool,

    /// Most processes kept in the agent's table (least-paused exited ones are dropped first).
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_processes: usize,
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(format!(
            "'{s}' is not a process id: expected a positive integer such as 4242"
        )),
        Ok(p) if p > i32::MAX as u32 => Err(format!("'{s}' is larger than any Linux pid")),
        Ok(p) => Ok(p),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("'{s}' is not a duration ({e}): use a number with a unit, such as 500ms, 10s or 2m")
    })
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}': the duration must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pausewatch").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert!(c.pids.is_empty());
        assert_eq!(c.min_pause, Duration::from_millis(5));
        assert_eq!(c.duration, None);
        assert_eq!(c.attach, AttachMode::Auto);
        assert!(!c.bpf_stats);
    }

    #[test]
    fn repeatable_pids_and_durations() {
        let c = parse(&[
            "--pid",
            "10",
            "--pid",
            "20",
            "--duration",
            "1m",
            "--min-pause",
            "250us",
        ])
        .unwrap();
        assert_eq!(c.pids, vec![10, 20]);
        assert_eq!(c.duration, Some(Duration::from_secs(60)));
        assert_eq!(c.min_pause, Duration::from_micros(250));
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        for (args, needle) in [
            (vec!["--pid", "0"], "not a process id"),
            (vec!["--pid", "abc"], "not a process id"),
            (vec!["--pid=-5"], "not a process id"),
            (vec!["--pid", "99999999999"], "not a process id"),
            (vec!["--duration", "ten"], "not a duration"),
            (vec!["--duration", "0s"], "greater than zero"),
            (vec!["--min-pause", "5"], "not a duration"),
            (vec!["--attach", "kprobe"], "invalid value"),
        ] {
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
