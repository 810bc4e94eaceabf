//! `cargo xtask setup`: rust-src for nightly, bpf-linker against the nightly's own libLLVM.
//!
//! bpf-linker links LLVM bitcode, so its LLVM must be the one rustc +nightly emits. The nightly
//! toolchain ships that LLVM as lib/libLLVM.so.<ver>-rust-<ver>; bpf-linker's build script wants
//! `$LLVM_PREFIX/lib/libLLVM.so`, so we point LLVM_PREFIX at a directory of symlinks (kept under
//! CARGO_HOME, because the built linker records it as its rpath).
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::run;

/// The bpf-linker release this project is built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has features for.
const SUPPORTED_LLVM: [u32; 3] = [21, 22, 23];

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

pub fn setup() -> anyhow::Result<()> {
    // 1. A nightly toolchain (the machine's; installed only if absent) with rust-src.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: no nightly toolchain: installing it (minimal profile)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for nightly: present");
    } else {
        println!("setup: rust-src for nightly: installing");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 2. The nightly's LLVM.
    let vv = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` reports no LLVM version")?
        .trim()
        .to_string();
    let major: u32 = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .context("unparsable LLVM version")?;
    if !SUPPORTED_LLVM.contains(&major) {
        bail!(
            "nightly uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {SUPPORTED_LLVM:?}: use a matching nightly"
        );
    }
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain lacks its shared LLVM",
                libdir.display()
            )
        })?;
    println!(
        "setup: nightly LLVM {llvm} ({})",
        libdir.join(&lib).display()
    );

    // 3. LLVM_PREFIX: a lib/ of symlinks named as bpf-linker's build script expects.
    let prefix = cargo_home().join("pausewatch-llvm").join(&lib);
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib).with_context(|| format!("creating {}", plib.display()))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }

    // 4. bpf-linker, rebuilt only when absent or built for another LLVM.
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} {lib}");
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if have.is_some() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        println!("setup: {want}: present");
    } else {
        println!("setup: building {want} (a few minutes, once)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix))?;
        std::fs::write(&stamp, &want).context("writing the setup stamp")?;
    }
    let v = output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker is not on PATH: add $CARGO_HOME/bin (usually ~/.cargo/bin) to PATH")?;
    println!("setup: {} ready", v.trim());
    Ok(())
}
