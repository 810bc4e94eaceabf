//! What cargo alone can't do: toolchain setup, the privileged test run, benchmarks.
mod bench;
mod bench_agent;
mod bench_gc;
mod bench_latency;
mod bench_peer;
mod fuzz;
mod setup;
mod soak;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install, idempotently, what building the eBPF programs needs: rust-src for the nightly
    /// toolchain and bpf-linker built against that nightly's own libLLVM.
    Setup,
    /// Set up, build pausewatch (release) and run it as root with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test: unit tests, then the privileged suite (root, real eBPF).
    Test,
    /// Set up, build, and run the lease demo (DDIA's stale write, then a clock step) under
    /// pausewatch, as root.
    Demo,
    /// Fuzz the parsers of what pausewatch reads from outside (cargo-fuzz, nightly): lease
    /// lines, ring-buffer records, recordings. New coverage is kept in fuzz/corpus/.
    Fuzz {
        /// One target (lease_line, ring_records, recording); all when omitted.
        target: Option<String>,
        /// Time per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Write the seed corpus (from observer/src/fuzzing.rs) instead of fuzzing.
        #[arg(long)]
        seed: bool,
    },
    /// Soak: pausewatch under every workload and a fork storm for a long run, its RSS and CPU
    /// sampled every 5 s; fails unless memory stayed flat. Writes target/bench/soak.md.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
    },
    /// Benchmarks; writes a Markdown report to target/bench/.
    Bench {
        /// Which benchmark: `all` (every one below, one report: target/bench/report.md with
        /// the budget table first), `workloads` (slowdown against bpftrace, programs' cost),
        /// `programs` (only the programs' cost and bpftrace's, without the wall-clock rounds),
        /// `agent` (idle, 5,000 processes, fork storm), `gc` (runtime probes) or `latency` (from
        /// a pause's end to its NDJSON line; at least 10 rounds).
        #[arg(default_value = "all")]
        which: String,
        /// Rounds of (without, with) pausewatch per workload.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

pub fn root_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with its name on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let desc = format!("{cmd:?}");
    let status = cmd
        .current_dir(root_dir())
        .status()
        .with_context(|| format!("starting {desc}"))?;
    if !status.success() {
        bail!("{desc} failed: {status}");
    }
    Ok(())
}

/// Whether a command line runs and exits 0 (its output discarded).
pub fn works(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Debian packages whose check command fails (idempotent; nothing runs when all
/// are present). `needs` is (package, command line that works once it is installed).
pub fn ensure_debian_packages(needs: &[(&str, &[&str])]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(_, check)| !works(check))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What the privileged tests run besides pausewatch: a JDK (javac, java with hotspot USDT
/// probes) and a Go toolchain for the GC tests, iproute2 and nftables for the network test,
/// Prometheus for the export tests.
pub const TEST_PACKAGES: &[(&str, &[&str])] = &[
    ("openjdk-17-jdk-headless", &["javac", "-version"]),
    ("golang-go", &["go", "version"]),
    // The USDT semaphore test: a stand-in libjvm.so built with gcc and <sys/sdt.h>.
    ("gcc", &["gcc", "--version"]),
    (
        "systemtap-sdt-dev",
        &["test", "-f", "/usr/include/x86_64-linux-gnu/sys/sdt.h"],
    ),
    // The retransmission test: network namespaces and veth (ip), TcpRetransSegs (nstat),
    // injected loss (nft).
    ("iproute2", &["nstat", "-V"]),
    ("nftables", &["nft", "--version"]),
    // The memory tests: an ext4 file system on a loop device (mkfs.ext4, losetup, lsblk).
    ("e2fsprogs", &["mkfs.ext4", "-V"]),
    ("util-linux", &["losetup", "--version"]),
    // The export tests: a real Prometheus server scraping pausewatch, promtool for the rules.
    ("prometheus", &["promtool", "--version"]),
    // The deployment tests: `systemd-analyze verify` on the unit; setpriv (util-linux) runs
    // pausewatch with the unit's capabilities.
    ("systemd", &["systemd-analyze", "--version"]),
    // The live view's terminal test runs pausewatch inside tmux and reads its screen.
    ("tmux", &["tmux", "-V"]),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn build_release() -> anyhow::Result<std::path::PathBuf> {
    run(cargo().args(["build", "--release", "-p", "observer"]))?;
    Ok(root_dir().join("target/release/pausewatch"))
}

/// Builds the tests' workload helper (release) for the benchmarks and the soak; its path.
pub fn build_release_workload() -> anyhow::Result<std::path::PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "pausewatch-tests",
        "--bin",
        "pw-workload",
    ]))?;
    Ok(root_dir().join("target/release/pw-workload"))
}

/// Every benchmark, one report: target/bench/report.md, its budget table first.
fn bench_all(rounds: usize) -> anyhow::Result<()> {
    let bin = bench::prepare()?;
    ensure_debian_packages(TEST_PACKAGES)?;
    let sections = [
        bench::workloads(&bin, rounds)?,
        bench_agent::agent(&bin)?,
        bench_latency::section(&bin, rounds.max(10) * 2)?,
        bench_gc::section(&bin, rounds)?,
    ];
    let budgets: Vec<_> = sections.iter().flat_map(|s| &s.budgets).collect();
    let met = budgets.iter().filter(|b| b.met).count();
    let mut report = bench::report_header("all", rounds);
    report += &format!(
        "## Budgets ({met} of {} met)\n\n{}\n",
        budgets.len(),
        bench::budget_table_of(&budgets)
    );
    for s in &sections {
        report += &s.body;
    }
    bench::write_report("report", &report)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Fuzz { seed: true, .. } => fuzz::write_seeds(),
        Cmd::Fuzz {
            target, seconds, ..
        } => fuzz::fuzz(target.as_deref(), seconds),
        Cmd::Run { args } => {
            setup::setup()?;
            let bin = build_release()?;
            if !is_root() {
                bail!("pausewatch loads eBPF programs: run this as root (sudo -E cargo xtask run)");
            }
            let err = std::os::unix::process::CommandExt::exec(Command::new(&bin).args(&args));
            bail!("executing {}: {err}", bin.display())
        }
        Cmd::Test => {
            setup::setup()?;
            if !is_root() {
                bail!(
                    "the privileged tests load eBPF into the running kernel: run `sudo -E cargo xtask test` as root"
                );
            }
            ensure_debian_packages(TEST_PACKAGES)?;
            // Unit, model, ABI, TUI and CLI-parsing tests (no privileges needed).
            run(cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "pausewatch-tests",
                "--all-features",
            ]))?;
            // The privileged suite, against the debug binary built with real eBPF. Serial:
            // each test pins workloads to one CPU and must not compete with the others.
            run(cargo().args(["build", "-p", "observer", "-p", "pausewatch-demo"]))?;
            let bin = root_dir().join("target/debug/pausewatch");
            run(cargo()
                .args(["test", "-p", "pausewatch-tests", "--", "--test-threads=1"])
                .env("PAUSEWATCH_BIN", bin))
        }
        Cmd::Demo => {
            setup::setup()?;
            if !is_root() {
                bail!(
                    "the demo loads eBPF, stops processes and steps the clock: run `sudo -E cargo xtask demo` as root"
                );
            }
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "observer",
                "-p",
                "pausewatch-demo",
            ]))?;
            let demo = root_dir().join("target/release/pausewatch-demo");
            for scenario in ["stale-write", "clock-step"] {
                println!("\n=== scenario {scenario} ===");
                run(Command::new(&demo).args(["scenario", scenario]))?;
            }
            Ok(())
        }
        Cmd::Soak { minutes } => {
            setup::setup()?;
            soak::soak(minutes)
        }
        Cmd::Bench { which, rounds } => {
            setup::setup()?;
            match which.as_str() {
                "all" => bench_all(rounds),
                "workloads" | "sched" => bench::run(rounds),
                "programs" => bench::run_programs(rounds),
                "agent" => {
                    let bin = bench::prepare()?;
                    bench_agent::agent(&bin)?.write("agent", rounds)
                }
                "gc" => bench_gc::gc(rounds),
                "latency" => bench_latency::latency(rounds.max(10)),
                other => bail!(
                    "unknown benchmark {other:?}: available: all (the default), workloads, programs, agent, gc, latency"
                ),
            }
        }
    }
}
