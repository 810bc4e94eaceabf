//! pausewatch: wiring only. Parse, check the environment, load the probes, run the loop.
mod agent;
mod agent_memory;
mod cli;
mod export;
mod lease_client;
mod merge_cmd;
mod model;
mod probe;
mod runtimes;
mod source;
mod tui;

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Parser as _;

fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    let result = match cli.command.take() {
        Some(cli::Command::Lease(l)) => lease_client::run(l),
        Some(cli::Command::Merge(m)) => merge_cmd::run(m),
        Some(cli::Command::Advise(a)) => {
            cli.pids = vec![a.pid];
            cli.duration = Some(a.duration);
            cli.advise_target = a.target;
            cli.no_lease_socket = true;
            eprintln!(
                "pausewatch: watching pid {} for {}",
                a.pid,
                humantime::format_duration(a.duration)
            );
            run(cli, true)
        }
        None => run(cli, false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pausewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn run(cli: cli::Cli, advise: bool) -> anyhow::Result<()> {
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
        bpf_stats: cli.bpf_stats,
    })?;

    let json = cli.json.is_some() || !std::io::stdout().is_terminal();
    let output = if advise {
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
    } else {
        agent::Output::Live(tui::Live::start())
    };
    let settings = agent::Settings {
        duration: cli.duration,
        max_processes: cli.max_processes,
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
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(agent::run(probes, settings, output))
}
