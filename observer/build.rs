//! Builds the kernel programs (observer-ebpf, for bpfel-unknown-none) and leaves the object in
//! OUT_DIR for `include_bytes!`, so `cargo build -p observer` yields one self-contained binary.
//!
//! `PAUSEWATCH_SKIP_EBPF=1` (for lint-only runs without the BPF toolchain) writes an empty stub
//! instead; a binary built that way refuses to start with a message saying so, so a stub can
//! never pass for a real load.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("pausewatch");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir
        .join("../observer-ebpf")
        .canonicalize()
        .context("observer-ebpf/ missing")?;
    let common_dir = manifest_dir.join("../observer-common");
    println!("cargo:rerun-if-env-changed=PAUSEWATCH_SKIP_EBPF");
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("src").display()
    );
    println!("cargo::rustc-check-cfg=cfg(pausewatch_stub_ebpf)");

    if env::var("PAUSEWATCH_SKIP_EBPF").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!(
            "cargo:warning=PAUSEWATCH_SKIP_EBPF set: building pausewatch WITHOUT its eBPF programs (stub object); it will refuse to run"
        );
        println!("cargo:rustc-cfg=pausewatch_stub_ebpf");
        fs::write(&object, b"").context("writing stub object")?;
        return Ok(());
    }

    // Fail early with the fix, rather than deep inside a nested cargo build.
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "bpf-linker not found on PATH: run `cargo xtask setup` (or set PAUSEWATCH_SKIP_EBPF=1 for a lint-only build)"
        );
    }

    // aya-build runs `cargo build --package observer-ebpf` in the current directory; the crate
    // is outside the host workspace (so host builds never compile it), so build it from there.
    env::set_current_dir(&ebpf_dir).context("entering observer-ebpf/")?;
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (run `cargo xtask setup` if the toolchain is missing)")?;
    if !object.exists() {
        bail!("aya-build produced no {}", object.display());
    }
    Ok(())
}
