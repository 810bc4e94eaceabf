//! Privilege check before touching the kernel, so the error names what is missing.

/// Capability numbers (include/uapi/linux/capability.h, v6.18).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "pausewatch needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its eBPF programs; it has {have}. Run it as root, e.g. `sudo pausewatch`"
)]
pub struct MissingCaps {
    pub have: String,
}

/// Whether an effective capability set can load and attach tracing programs.
pub fn check_effective(capeff: u64) -> Result<(), MissingCaps> {
    let has = |c: u32| capeff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let names: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .iter()
    .filter(|(c, _)| has(*c))
    .map(|(_, n)| *n)
    .collect();
    let have = if names.is_empty() {
        "none of them".to_string()
    } else {
        format!("only {}", names.join(", "))
    };
    Err(MissingCaps { have })
}

/// Checks this process's effective capabilities (from /proc/self/status).
pub fn check() -> anyhow::Result<()> {
    let status = procfs::process::Process::myself()?.status()?;
    check_effective(status.capeff)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_bpf_plus_perfmon_pass() {
        assert!(check_effective(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_effective((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert!(check_effective(u64::MAX).is_ok());
    }

    #[test]
    fn missing_caps_are_named() {
        let e = check_effective(0).unwrap_err();
        assert!(e.to_string().contains("it has none of them"), "{e}");
        let e = check_effective(1 << CAP_BPF).unwrap_err();
        assert!(e.to_string().contains("only CAP_BPF"), "{e}");
    }
}
