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

/// What the agent needs once it runs: attach uprobes to runtimes that start later (CAP_BPF,
/// CAP_PERFMON, and CAP_SYS_ADMIN: since Linux 6.16 and its stable backports the kernel
/// creates uprobes only for CAP_SYS_ADMIN, "perf: Require CAP_SYS_ADMIN for uprobes"), read
/// other users' /proc/<pid>/{maps,fd,root,wchan} (CAP_SYS_PTRACE) and the runtime files they
/// map (CAP_DAC_READ_SEARCH). Everything else it needed (CAP_SYSLOG to open /proc/kallsyms,
/// CAP_CHOWN for the lease socket, root's read access to /proc/timer_list) is done by then.
pub const RUNNING_CAPS: [caps::Capability; 5] = [
    caps::Capability::CAP_BPF,
    caps::Capability::CAP_PERFMON,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_SYS_PTRACE,
    caps::Capability::CAP_DAC_READ_SEARCH,
];

/// What `drop_after_start` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Effective capabilities kept, and those given up (names, sorted).
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
    /// The bounding set was narrowed too (it needs CAP_SETPCAP, which root has and a
    /// service with a narrow capability set does not need: its bounding set is narrow already).
    pub bounding: bool,
}

/// The capabilities to keep from `have`: those of the running set it has.
fn keep_from(have: &caps::CapsHashSet) -> caps::CapsHashSet {
    RUNNING_CAPS
        .into_iter()
        .filter(|c| have.contains(c))
        .collect()
}

fn names(set: &caps::CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// Gives up, once programs are attached and the start-up files are open, every capability the
/// running agent does not need (see `reduce_this_thread`). Capabilities belong to threads:
/// call it on the thread that goes on running the agent, before it starts others (which then
/// inherit the reduced sets); helper threads started earlier reduce their own.
pub fn drop_after_start() -> Result<Dropped, String> {
    let have = caps::read(None, caps::CapSet::Effective)
        .map_err(|e| format!("reading capabilities: {e}"))?;
    let keep = keep_from(&have);
    let bounding = reduce_this_thread(&keep)?;
    Ok(Dropped {
        kept: names(&keep),
        dropped: names(&have.difference(&keep).copied().collect()),
        bounding,
    })
}

/// Reduces the calling thread's capabilities to `keep`: the bounding set (when it may: that
/// needs CAP_SETPCAP), then the ambient and inheritable sets (emptied), the effective and the
/// permitted set. One-way: nothing dropped can be regained, also not by a later exec. True
/// when the bounding set was narrowed too.
pub fn reduce_this_thread(keep: &caps::CapsHashSet) -> Result<bool, String> {
    use caps::CapSet;
    let err = |what: &str, e: caps::errors::CapsError| format!("{what}: {e}");
    let bounding =
        caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false);
    if bounding {
        let bset =
            caps::read(None, CapSet::Bounding).map_err(|e| err("reading the bounding set", e))?;
        for c in bset.difference(keep) {
            caps::drop(None, CapSet::Bounding, *c)
                .map_err(|e| err(&format!("dropping {c} from the bounding set"), e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing the ambient set", e))?;
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())
        .map_err(|e| err("clearing the inheritable set", e))?;
    // Effective first: it must stay within the permitted set.
    for (set, name) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        let now = caps::read(None, set).map_err(|e| err("reading capabilities", e))?;
        let target: caps::CapsHashSet = now.intersection(keep).copied().collect();
        caps::set(None, set, &target).map_err(|e| err(&format!("setting the {name} set"), e))?;
    }
    Ok(bounding)
}

/// Spawns a helper thread (control sleeper, terminal input, NDJSON writer) that holds only
/// `keep`, and returns once it has given up the rest. Capabilities belong to threads and a new
/// thread starts with its spawner's, so a thread that dropped its own only when first scheduled
/// held them until then: on a loaded host, past the `attached` notice (a CI run caught a
/// just-spawned thread with every capability). Best effort: a failed drop leaves it as it was,
/// and the process-wide test (`tests/deploy.rs`) checks every thread.
pub fn spawn_reduced<T: Send + 'static>(
    builder: std::thread::Builder,
    keep: caps::CapsHashSet,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let (reduced, wait) = std::sync::mpsc::sync_channel(1);
    let thread = builder.spawn(move || {
        let _ = reduce_this_thread(&keep);
        let _ = reduced.send(());
        f()
    })?;
    // Fails only when the thread is gone already.
    let _ = wait.recv();
    Ok(thread)
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
    fn the_running_set_is_kept_of_what_there_is() {
        use caps::Capability::*;
        let root: caps::CapsHashSet = caps::all();
        assert_eq!(keep_from(&root), RUNNING_CAPS.into_iter().collect());
        let unit: caps::CapsHashSet = [
            CAP_BPF,
            CAP_PERFMON,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
            CAP_SYSLOG,
            CAP_CHOWN,
        ]
        .into();
        assert_eq!(
            keep_from(&unit),
            [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH].into()
        );
    }

    #[test]
    fn missing_caps_are_named() {
        let e = check_effective(0).unwrap_err();
        assert!(e.to_string().contains("it has none of them"), "{e}");
        let e = check_effective(1 << CAP_BPF).unwrap_err();
        assert!(e.to_string().contains("only CAP_BPF"), "{e}");
    }
}
