//! `cargo xtask fuzz`: runs the cargo-fuzz targets in fuzz/ (libFuzzer, nightly), each for a
//! time budget, adding what raises coverage to fuzz/corpus/TARGET (which the unit tests replay).
//! A crash fails the command with the input saved under fuzz/artifacts/TARGET.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{root_dir, run, works};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 3] = ["lease_line", "ring_records", "recording"];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo +nightly fuzz run TARGET` in fuzz/. The fuzz build needs no eBPF object (nothing is
/// loaded), and the nested BPF build would inherit the sanitizer flags: the build script
/// writes a stub instead.
fn fuzz_run(dir: &std::path::Path, target: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", target])
        .env("PAUSEWATCH_SKIP_EBPF", "1")
        .current_dir(dir);
    cmd
}

/// Writes the seed corpus from `observer/src/fuzzing.rs::seeds` (the unit test that checks the
/// seeds are present writes them when asked).
pub fn write_seeds() -> anyhow::Result<()> {
    run(Command::new("cargo")
        .args([
            "test",
            "-p",
            "observer",
            "--lib",
            "fuzzing::tests::the_seeds_are_in_the_corpus",
        ])
        .env("PAUSEWATCH_WRITE_FUZZ_SEEDS", "1"))
}

pub fn fuzz(target: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target '{t}': the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    if !works(&["cargo", "fuzz", "--version"]) {
        println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    let dir = root_dir().join("fuzz");
    for t in targets {
        let corpus = dir.join("corpus").join(t);
        let before = count(&corpus)?;
        println!("fuzz: {t} for {seconds} s from {before} corpus inputs");
        let status = fuzz_run(&dir, t)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // Recordings can be any size; small inputs fuzz faster and keep the corpus small.
            .arg("-max_len=8192")
            .arg("-print_final_stats=1")
            .status()
            .context("starting cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {t} failed ({status}): a crash leaves its input in fuzz/artifacts/{t}/; reproduce it with `cd fuzz && PAUSEWATCH_SKIP_EBPF=1 cargo +nightly fuzz run {t} artifacts/{t}/<file>`"
            );
        }
        let found = count(&corpus)?;
        minimize(&dir, t)?;
        println!(
            "fuzz: {t}: corpus {before} -> {found} inputs, {} after minimizing",
            count(&corpus)?
        );
    }
    Ok(())
}

/// Keeps the seeds and the inputs of fixed crashes (`crash-*`) and, of the rest, a small set
/// of inputs that together cover what the whole corpus covers beyond them (libFuzzer's
/// `-set_cover_merge=1`), so the committed corpus stays small.
fn minimize(dir: &std::path::Path, t: &str) -> anyhow::Result<()> {
    let corpus = dir.join("corpus").join(t);
    let min = dir.join("corpus").join(format!("{t}.min"));
    let _ = std::fs::remove_dir_all(&min);
    std::fs::create_dir_all(&min).with_context(|| format!("creating {}", min.display()))?;
    for e in std::fs::read_dir(&corpus)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("seed-") || name.starts_with("crash-") {
            std::fs::copy(e.path(), min.join(e.file_name()))?;
        }
    }
    let status = fuzz_run(dir, t)
        .arg(&min)
        .arg(&corpus)
        .args(["--", "-set_cover_merge=1"])
        .status()
        .context("starting cargo fuzz")?;
    if !status.success() {
        bail!("minimizing the corpus of {t} failed ({status})");
    }
    std::fs::remove_dir_all(&corpus)?;
    std::fs::rename(&min, &corpus)?;
    Ok(())
}

fn count(dir: &std::path::Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .count())
}
