//! pausewatch: wiring only. Parse, check the environment, load the probes, run the loop.
use pausewatch::{agent, cli, export, lease_client, merge_cmd, probe, replay_cmd, source, tui};

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let mut watch = cli.watch;
    let result = match cli.command {
        Some(cli::Command::Lease(l)) => lease_client::run(l),
        Some(cli::Command::Merge(m)) => merge_cmd::run(m),
        Some(cli::Command::Report(r)) => report_cmd(&r),
        Some(cli::Command::Replay(r)) => replay_cmd::run(&r),
        Some(cli::Command::Advise(a)) => {
            watch.pids = vec![a.pid];
            watch.duration = Some(a.duration);
            watch.advise_target = a.target;
            watch.no_lease_socket = true;
            eprintln!(
                "pausewatch: watching pid {} for {}",
                a.pid,
                humantime::format_duration(a.duration)
            );
            run(watch, Mode::Advise)
        }
        Some(cli::Command::Run(r)) => {
            return match run_command(r) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("pausewatch: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        None => run(watch, Mode::Watch),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pausewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Watch,
    Advise,
    /// `run`: the command keeps the terminal; the report goes to stderr at the end.
    Run,
}

fn report_cmd(r: &cli::ReportArgs) -> anyhow::Result<()> {
    let replay = tui::replay::Replay::open(&r.file)?;
    if replay.skipped_lines > 0 {
        eprintln!(
            "pausewatch: {} damaged lines of {} skipped",
            replay.skipped_lines,
            r.file.display()
        );
    }
    print!(
        "{}",
        tui::report::text(&replay.report_input(r.advise_target))
    );
    Ok(())
}

/// `pausewatch run -- CMD`: the command is started held before exec, so that the programs
/// watch it from its first instruction; its exit ends the run and gives pausewatch's status.
fn run_command(r: cli::RunArgs) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let (prog, args) = r
        .cmd
        .split_first()
        .context("no command given: pausewatch run -- CMD ARGS")?;
    // The command starts as a shell that waits on a pipe, then execs the command in its
    // place (same pid). std's spawn returns only after exec, so the wait cannot be in
    // pre_exec; the shell does it after its own exec.
    let (gate_r, gate_w) = std::io::pipe().context("creating a pipe")?;
    let gate_fd = std::os::fd::AsRawFd::as_raw_fd(&gate_r);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"read -r _ <&3 || exit 126; exec 3<&-; exec "$@""#)
        .arg("pausewatch-run")
        .arg(prog)
        .args(args);
    // SAFETY: dup2 is async-signal-safe; fd 3 is the gate's read end (not close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it then.
            let r = if gate_fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(gate_fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut tcmd = tokio::process::Command::from(cmd);
    tcmd.kill_on_drop(true);
    let rt = runtime()?;
    let child = {
        let _guard = rt.enter();
        tcmd.spawn()
            .with_context(|| format!("cannot start {}", prog.to_string_lossy()))?
    };
    drop(gate_r);
    let pid = child.id().context("the command exited at once")?;
    let mut watch = r.watch;
    watch.pids = vec![pid];
    let mut gate = Some(gate_w);
    let ended = run_in(
        &rt,
        watch,
        Mode::Run,
        Some(child),
        Box::new(move || {
            // Release the command: the programs are attached.
            if let Some(mut g) = gate.take() {
                let _ = std::io::Write::write_all(&mut g, b"go\n");
            }
        }),
    )?;
    let code = match ended.child_status {
        Some(s) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (s.code(), s.signal()) {
                (Some(c), _) => c,
                (None, Some(sig)) => 128 + sig,
                _ => 1,
            }
        }
        None => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Resolves each `--pid` to its process (a thread id is accepted and mapped to its process).
fn resolve_pids(pids: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for &pid in pids {
        let status = procfs::process::Process::new(pid as i32).and_then(|p| p.status()).map_err(|_| {
            anyhow::anyhow!("no process with pid {pid}: it does not exist or has already exited (check with `ps -p {pid}`)")
        })?;
        let tgid = status.tgid as u32;
        if !out.contains(&tgid) {
            out.push(tgid);
        }
    }
    Ok(out)
}

/// The agent's single-threaded runtime.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// The main job (and `advise`): no command of ours to watch.
fn run(cli: cli::Watch, mode: Mode) -> anyhow::Result<()> {
    run_in(&runtime()?, cli, mode, None, Box::new(|| {})).map(|_| ())
}

fn run_in(
    rt: &tokio::runtime::Runtime,
    cli: cli::Watch,
    mode: Mode,
    child: Option<tokio::process::Child>,
    attached: Box<dyn FnOnce()>,
) -> anyhow::Result<agent::Ended> {
    let pids = resolve_pids(&cli.pids)?;
    if !cli.btf.exists() {
        bail!(
            "kernel BTF not found at {}: pausewatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (it reads struct offsets from /sys/kernel/btf/vmlinux)",
            cli.btf.display()
        );
    }
    probe::privileges::check()?;
    let min_pause_ns = u64::try_from(cli.min_pause.as_nanos()).unwrap_or(u64::MAX);
    let probes = probe::load(&probe::LoadOptions {
        btf_path: &cli.btf,
        min_pause_ns,
        pids: &pids,
        attach: cli.attach,
        stats: if cli.bpf_stats {
            probe::cost::StatsMode::Continuous
        } else if cli.bpf_stats_every.is_zero() {
            probe::cost::StatsMode::Off
        } else {
            probe::cost::StatsMode::Sampled
        },
        max_processes: cli.max_processes,
        runq_source: cli.runq_source,
        syscall_hooks: if cli.no_syscall_tracepoints {
            probe::syscall_hooks::SyscallHooks::Never
        } else {
            cli.syscall_tracepoints
        },
    })?;

    attached();
    let json = cli.json.is_some() || (mode == Mode::Watch && !std::io::stdout().is_terminal());
    let output = if mode == Mode::Advise {
        agent::Output::Advise(pids.clone())
    } else if json {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let queued = usize::try_from(cli.json_buffer).unwrap_or(usize::MAX);
        let spool = match cli.json.clone().flatten() {
            Some(path) => export::spool::Spool::file(
                &path,
                export::spool::Rotation {
                    max_bytes: cli.json_max_size,
                    keep: cli.json_keep,
                },
                queued,
            )?,
            None => export::spool::Spool::stdout(queued),
        };
        agent::Output::Json(export::ndjson::NdjsonWriter::spooled(spool, host))
    } else if mode == Mode::Run {
        agent::Output::Report
    } else {
        agent::Output::Live(Box::new(tui::Live::start()))
    };
    let settings = agent::Settings {
        duration: cli.duration,
        max_processes: cli.max_processes as usize,
        pids,
        min_pause: cli.min_pause,
        leases: cli.leases.clone(),
        lease_socket: (!cli.no_lease_socket)
            .then(|| -> anyhow::Result<_> {
                Ok(agent::LeaseSocketSettings {
                    explicit: cli.lease_socket.as_os_str() != source::lease_socket::DEFAULT_PATH,
                    path: cli.lease_socket.clone(),
                    mode: cli.lease_socket_mode,
                    gid: cli
                        .lease_socket_group
                        .as_deref()
                        .map(source::lease_socket::resolve_group)
                        .transpose()?,
                })
            })
            .transpose()?,
        lease_risk_share: cli.lease_risk_share,
        advise_target: cli.advise_target,
        control_period: cli.control_period,
        prometheus: cli.prometheus,
        prometheus_max_series: cli.prometheus_max_series as usize,
        end_when_gone: !cli.pids.is_empty() || mode == Mode::Run,
        stats_every_s: cli.bpf_stats_every.as_secs().max(2),
    };
    rt.block_on(agent::run(probes, settings, output, child))
}
