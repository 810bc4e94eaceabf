//! Command line. Parsing only; checks that need the system (does the pid exist?) are in main.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    model::lease::Verb,
    probe::{AttachMode, RunqSource, btf::VMLINUX_BTF, syscall_hooks::SyscallHooks},
    source::lease_socket::DEFAULT_PATH,
};

/// pausewatch: every pause a process never noticed — run-queue waits, D-state stalls, stops —
/// per process, from eBPF on the running kernel.
#[derive(Debug, Parser)]
#[command(name = "pausewatch", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub watch: Watch,
}

/// Default `--max-processes`: as many as the kernel keeps aggregates for at once (PROC_STATS).
pub const DEFAULT_MAX_PROCESSES: u32 = 4096;

/// What to watch and how to report it (the main job, `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct Watch {
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

    /// NDJSON on stdout (the default whenever stdout is not a terminal), or appended to FILE,
    /// rotated by size (--json-max-size, --json-keep).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub json: Option<Option<PathBuf>>,

    /// Rotate the --json FILE when it would grow past this size (e.g. 100MiB, 1GB).
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub json_max_size: u64,

    /// Rotated files kept besides the current one (FILE.1 is the newest); 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub json_keep: u32,

    /// NDJSON waiting for a slow consumer (a pipe nobody reads, a slow disk) beyond this is
    /// dropped and counted (`drops.output_dropped_lines`) rather than stalling the agent.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub json_buffer: u64,

    /// Tracepoint mechanism for the scheduler programs.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,

    /// Where run-queue waits are measured. `sched-info` (what `auto` picks where it can): when
    /// a thread gets the CPU, from the kernel's own accounting (the figures behind
    /// /proc/<pid>/schedstat), with no program on wakeups; needs tp_btf and CONFIG_SCHED_INFO.
    /// `wakeup`: from sched_wakeup, a program on every wakeup of every thread.
    #[arg(long, value_enum, value_name = "SOURCE", default_value = "auto")]
    pub runq_source: RunqSource,

    /// Kernel BTF to read struct offsets from.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Keep the kernel's BPF run-time statistics on from start to exit (pausewatch's own cost
    /// per program, measured throughout). While on, every BPF program on the host (not only
    /// ours) pays a clock read per run, so by default they are only sampled (--bpf-stats-every).
    #[arg(long)]
    pub bpf_stats: bool,

    /// Turn the BPF run-time statistics on for one second in every DURATION (the first 10 s
    /// after start) and show pausewatch's own cost per program run from those seconds, at a
    /// small fraction of the statistics' overhead. 0 turns sampling off. The kernel setting is
    /// as it was when pausewatch exits.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub bpf_stats_every: Duration,

    /// When to time fsync-family calls and see clock changes from the syscall tracepoints.
    /// Attaching any of them sends every syscall of every process on the host through the
    /// kernel's tracing path, measured at about 45 ns per syscall on a 2-vCPU VM (+33% on a
    /// getppid loop). `auto` uses them only where the hooks off the syscall path (ext4's fsync
    /// tracepoints, the CAP_SYS_TIME check) would miss something: another file system whose
    /// fsync can wait is mounted, or the kernel lacks those hooks. Those hooks do not time
    /// sync_file_range, sync or syncfs (`always` does)
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = SyscallHooks::Auto)]
    pub syscall_tracepoints: SyscallHooks,

    /// The same as `--syscall-tracepoints never`: where the hooks off the syscall path cannot be
    /// used, fsync-family calls are not timed, though their waits are still named from the
    /// kernel stack, and who changes the clock is not known, though steps are still measured.
    #[arg(long, conflicts_with = "syscall_tracepoints")]
    pub no_syscall_tracepoints: bool,

    /// Most processes kept in the agent's table (least-paused exited ones are dropped first,
    /// and counted); the kernel keeps per-process aggregates for twice as many. Each costs
    /// about 3.5 KiB in the agent and twice 3.1 KiB of kernel memory (preallocated).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PROCESSES,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub max_processes: u32,

    /// A lease held by every thread of PID that is not reported over the lease socket
    /// (repeatable). Without renewal messages a pause of at least TTL - RENEW_EVERY puts it at
    /// risk and one of at least TTL expired it. RENEW_EVERY defaults to TTL/3.
    #[arg(long = "lease", value_name = "NAME:PID:TTL[:RENEW_EVERY]", value_parser = parse_declared_lease)]
    pub leases: Vec<DeclaredLease>,

    /// Unix socket where processes report their leases (docs/lease-protocol.md).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub lease_socket: PathBuf,

    /// Do not open the lease socket.
    #[arg(long, conflicts_with = "lease_socket")]
    pub no_lease_socket: bool,

    /// Permissions of the lease socket (octal). Who may connect may report leases for its own
    /// processes, and for those it could send a signal to.
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    pub lease_socket_mode: u32,

    /// Group owning the lease socket (name or gid), so that its members may report.
    #[arg(long, value_name = "GROUP")]
    pub lease_socket_group: Option<String>,

    /// Timeout advice (summary lines, the end report) aims under this chance per hour that a
    /// pause alone exceeds the timeout.
    #[arg(long, value_name = "CHANCE", default_value = "1e-6", value_parser = parse_share)]
    pub advise_target: f64,

    /// A pause that uses more than this share of what is left of a lease is `lease_at_risk`.
    #[arg(long, value_name = "SHARE", default_value = "0.5", value_parser = parse_share)]
    pub lease_risk_share: f64,

    /// How often the control sleeper wakes to look for host-wide pauses (VM freezes,
    /// suspend). Shorter catches shorter freezes and costs more (about 50 µs of CPU per wake
    /// on a VM); 0s turns it off.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_control_period)]
    pub control_period: Duration,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics. ADDR is HOST:PORT, or
    /// PORT alone for 127.0.0.1:PORT. Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub prometheus: Option<std::net::SocketAddr>,

    /// Most (command, cgroup) label pairs with series of their own; the rest share
    /// comm="other". A pair that has not paused for 10 minutes gives its place up.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub prometheus_max_series: u32,
}

/// A size in bytes: a number with an optional unit (B, KB, MB, GB powers of 1000; KiB, MiB,
/// GiB powers of 1024; K, M, G alone are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: give a number with an optional unit, e.g. 100MiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{s:?}: the size must be more than zero")),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not an address to listen on: give HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464) or a port")
    })
}

fn parse_control_period(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() || (d >= Duration::from_millis(1) && d <= Duration::from_secs(1)) {
        Ok(d)
    } else {
        Err(format!(
            "{s:?}: the control period is 0s (off) or between 1ms and 1s"
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a command and investigate it: everything is scoped to its process tree, the
    /// report is printed when it exits, and pausewatch exits with its status.
    Run(RunArgs),
    /// Print the end report of a recording (`--json FILE`).
    Report(ReportArgs),
    /// Play a recording (`--json FILE`) in the live view.
    Replay(ReplayArgs),
    /// Report a lease event to a running pausewatch over its lease socket (for shell scripts;
    /// programs can speak the line protocol directly, see docs/lease-protocol.md).
    Lease(LeaseArgs),
    /// Watch one process for a while, then say how likely a pause alone is to exceed a lease
    /// or failure-detector timeout, and the shortest timeout that keeps that under a target.
    Advise(AdviseArgs),
    /// Merge recordings (`--json FILE`) of several hosts into one timeline ordered by wall
    /// time, with each event's clock uncertainty; events whose order the clocks cannot tell
    /// are marked so.
    Merge(MergeArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub watch: Watch,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<std::ffi::OsString>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A recording made with `--json FILE`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Timeout advice aims under this chance per hour that a pause alone exceeds it.
    #[arg(long, value_name = "CHANCE", default_value = "1e-6", value_parser = parse_share)]
    pub advise_target: f64,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A recording made with `--json FILE`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Playback speed (1: as recorded; the [ and ] keys halve and double it).
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=10000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: the speed is a number from 0.01 to 10000")),
    }
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// NDJSON recordings, one or more per host (rotated files too).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write NDJSON (each line with a `merge` object) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Include end-of-run lines (summaries, drops, costs) too, not only events.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
pub struct AdviseArgs {
    /// The process to watch (with its threads and children).
    #[arg(long, value_parser = parse_pid)]
    pub pid: u32,
    /// The chance per hour that a pause alone exceeds the timeout, at most.
    #[arg(long, value_name = "CHANCE", default_value = "1e-6", value_parser = parse_share)]
    pub target: f64,
    /// How long to watch (more history, better estimates).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerbArg {
    Acquire,
    Renew,
    Release,
    Act,
    Reject,
}

impl From<VerbArg> for Verb {
    fn from(v: VerbArg) -> Self {
        match v {
            VerbArg::Acquire => Verb::Acquire,
            VerbArg::Renew => Verb::Renew,
            VerbArg::Release => Verb::Release,
            VerbArg::Act => Verb::Act,
            VerbArg::Reject => Verb::Reject,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    #[arg(value_enum)]
    pub verb: VerbArg,
    /// The lease's name (letters, digits and . _ - : / @).
    pub name: String,
    /// How long the lease is valid from now (acquire, renew).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub ttl: Option<Duration>,
    /// Fencing token of the lease (acquire), or the token a storage service refused (reject).
    #[arg(long)]
    pub token: Option<u64>,
    /// Expiry on the wall clock, as Unix time in ns (a deadline set by another machine).
    #[arg(long, value_name = "UNIX_NS", allow_negative_numbers = true)]
    pub expires_wall_ns: Option<i64>,
    /// The process holding the lease. Default: the one that ran this command (its parent),
    /// e.g. the shell script. Another process needs the permission kill(2) would.
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,
    /// The thread whose pauses count (default: every thread of the process).
    #[arg(long, value_parser = parse_pid)]
    pub tid: Option<u32>,
    /// The lease socket of the pausewatch to report to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub socket: PathBuf,
}

/// `--lease NAME:PID:TTL[:RENEW_EVERY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredLease {
    pub name: String,
    pub pid: u32,
    pub ttl: Duration,
    pub renew_every: Duration,
}

fn parse_declared_lease(s: &str) -> Result<DeclaredLease, String> {
    let usage =
        || format!("'{s}' is not NAME:PID:TTL[:RENEW_EVERY] (for example leader:4242:10s:3s)");
    let parts: Vec<&str> = s.rsplitn(4, ':').collect();
    let with_renew = parts.len() == 4
        && parts[2].parse::<u32>().is_ok()
        && humantime::parse_duration(parts[0]).is_ok();
    let (name, pid, ttl, renew) = if with_renew {
        (parts[3], parts[2], parts[1], Some(parts[0]))
    } else {
        let p: Vec<&str> = s.rsplitn(3, ':').collect();
        if p.len() != 3 {
            return Err(usage());
        }
        (p[2], p[1], p[0], None)
    };
    if name.is_empty() {
        return Err(usage());
    }
    let pid = parse_pid(pid)?;
    let ttl = parse_positive_duration(ttl)?;
    let renew_every = match renew {
        Some(r) => parse_duration(r)?,
        None => ttl / 3,
    };
    if renew_every >= ttl {
        return Err(format!(
            "'{s}': RENEW_EVERY must be shorter than the TTL, or the lease lapses between renewals"
        ));
    }
    Ok(DeclaredLease {
        name: name.to_string(),
        pid,
        ttl,
        renew_every,
    })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "'{s}' is not a file mode: use octal, such as 660 or 666"
        )),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!(
            "'{s}' is not a share: use a number between 0 and 1, such as 0.5"
        )),
    }
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

    fn parse_cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pausewatch").chain(args.iter().copied()))
    }

    fn parse(args: &[&str]) -> Result<Watch, clap::Error> {
        parse_cli(args).map(|c| c.watch)
    }

    #[test]
    fn run_takes_the_watch_options_and_the_command() {
        let c = parse_cli(&["run", "--duration", "5s", "--", "sleep", "--x", "1"]).unwrap();
        let Some(Command::Run(r)) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.watch.duration, Some(Duration::from_secs(5)));
        assert_eq!(r.cmd, ["sleep", "--x", "1"]);
        assert!(parse_cli(&["run"]).is_err(), "a command is required");
        let c = parse_cli(&["replay", "rec.ndjson", "--speed", "4"]).unwrap();
        assert!(matches!(c.command, Some(Command::Replay(r)) if r.speed == 4.0));
        assert!(parse_cli(&["replay", "rec.ndjson", "--speed", "0"]).is_err());
        assert!(matches!(
            parse_cli(&["report", "rec.ndjson"]).unwrap().command,
            Some(Command::Report(_))
        ));
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert!(c.pids.is_empty());
        assert_eq!(c.min_pause, Duration::from_millis(5));
        assert_eq!(c.control_period, Duration::from_millis(10));
        assert!(parse_control_period("0s").is_ok_and(|d| d.is_zero()));
        assert!(parse_control_period("100us").is_err() && parse_control_period("2s").is_err());
        assert_eq!(c.duration, None);
        assert_eq!(c.attach, AttachMode::Auto);
        assert!(!c.bpf_stats);
        assert_eq!(c.bpf_stats_every, Duration::from_secs(60));
    }

    #[test]
    fn json_destination_and_rotation() {
        assert_eq!(parse(&[]).unwrap().json, None);
        assert_eq!(parse(&["--json"]).unwrap().json, Some(None));
        let c = parse(&["--json", "--pid", "1"]).unwrap();
        assert_eq!((c.json, c.pids), (Some(None), vec![1]));
        let c = parse(&["--json", "/var/log/pw.ndjson", "--json-max-size", "10MB"]).unwrap();
        assert_eq!(c.json, Some(Some(PathBuf::from("/var/log/pw.ndjson"))));
        assert_eq!(c.json_max_size, 10_000_000);
        assert_eq!(parse(&[]).unwrap().json_max_size, 100 << 20);
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("0").is_err() && parse_size("ten").is_err());
        assert!(parse_size("5PB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn prometheus_address() {
        assert_eq!(parse(&[]).unwrap().prometheus, None);
        let c = parse(&["--prometheus", "9464"]).unwrap();
        assert_eq!(c.prometheus, Some("127.0.0.1:9464".parse().unwrap()));
        let c = parse(&["--prometheus", "[::1]:80"]).unwrap();
        assert_eq!(c.prometheus, Some("[::1]:80".parse().unwrap()));
        let e = parse(&["--prometheus", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
        assert!(parse(&["--prometheus-max-series", "0"]).is_err());
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
    fn leases() {
        let c = parse(&["--lease", "leader:42:9s", "--lease", "db:shard:1:43:10s:2s"]).unwrap();
        assert_eq!(
            c.leases,
            vec![
                DeclaredLease {
                    name: "leader".into(),
                    pid: 42,
                    ttl: Duration::from_secs(9),
                    renew_every: Duration::from_secs(3),
                },
                DeclaredLease {
                    name: "db:shard:1".into(),
                    pid: 43,
                    ttl: Duration::from_secs(10),
                    renew_every: Duration::from_secs(2),
                },
            ]
        );
        assert_eq!(c.lease_socket_mode, 0o660);
        let c = parse_cli(&["lease", "acquire", "leader", "--ttl", "2s", "--token", "7"]).unwrap();
        let Some(Command::Lease(l)) = c.command else {
            panic!("not a lease command")
        };
        assert_eq!((l.verb, l.name.as_str()), (VerbArg::Acquire, "leader"));
        assert_eq!((l.ttl, l.token), (Some(Duration::from_secs(2)), Some(7)));
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
            (vec!["--lease", "leader:4242"], "not NAME:PID:TTL"),
            (vec!["--lease", ":4242:10s"], "not NAME:PID:TTL"),
            (vec!["--lease", "leader:x:10s"], "not a process id"),
            (vec!["--lease", "leader:42:0s"], "greater than zero"),
            (vec!["--lease", "leader:42:10s:10s"], "shorter than the TTL"),
            (vec!["--lease-socket-mode", "999"], "not a file mode"),
            (vec!["--lease-risk-share", "1.5"], "not a share"),
            (
                vec!["--pid", "1", "lease", "act", "x"],
                "cannot be used with",
            ),
            (vec!["lease", "grab", "x"], "invalid value"),
            (vec!["advise", "--pid", "1", "--target", "2"], "not a share"),
            (vec!["advise"], "--pid"),
            (
                vec!["lease", "acquire", "x", "--ttl", "soon"],
                "not a duration",
            ),
        ] {
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
