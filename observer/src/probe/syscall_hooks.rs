//! Where fsync-family calls and clock changes are seen: syscall tracepoints, or hooks off the
//! syscall path.
//!
//! Attaching any syscall tracepoint sets the kernel's syscall-tracepoint work on every thread
//! of the host, so every syscall of every process takes the tracing entry and exit path
//! (about 45 ns on our VMs, +33% on a getppid loop) only to find its own tracepoint off. The
//! hooks off that path fire only where they are needed: ext4's own `ext4_sync_file_enter/exit`
//! for fsync, fdatasync and msync(MS_SYNC), and `cap_capable` for the CAP_SYS_TIME check every
//! clock change makes. They need tp_btf, x86-64's saved registers (which call it was), and a
//! host where every file system whose fsync can wait is ext4. sync_file_range, sync and syncfs
//! are then not timed (their waits are still named from the kernel stack).
use std::path::PathBuf;

/// When to use the syscall tracepoints (`--syscall-tracepoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHooks {
    /// Only where the hooks off the syscall path cannot see what they would (a file system
    /// other than ext4 whose fsync can wait, no tp_btf, not x86-64).
    Auto,
    /// Always: every fsync-family call (sync_file_range, sync and syncfs too, on any file
    /// system) and the clock setters' exact return values, at the cost to every syscall.
    Always,
    /// Never: the hooks off the syscall path where they work, nothing otherwise.
    Never,
}

/// How fsync-family calls and clock changes are observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// ext4's fsync tracepoints and the CAP_SYS_TIME check.
    OffPath,
    /// The syscall tracepoints, and why not the other hooks (None: asked for).
    Syscalls(Option<String>),
    /// Neither: why the hooks off the syscall path cannot be used.
    Neither(String),
}

/// What the hooks off the syscall path need, as found on this host.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// The scheduler programs are tp_btf (so the kernel allows BPF_PROG_TYPE_TRACING).
    pub tp_btf: bool,
    /// Why the saved registers cannot be read, if they cannot (not x86-64's `pt_regs`).
    pub regs_missing: Option<String>,
    pub cap_capable: bool,
    pub ext4_sync_file: bool,
    /// Mounted file systems whose fsync can wait and that ext4's tracepoints do not see.
    pub blind_spots: Vec<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub fs_type: String,
    pub mount_point: PathBuf,
    pub read_only: bool,
}

/// File systems whose fsync never waits for a device or a server: memory-backed, read-only
/// by nature, or kernel interfaces. (overlayfs passes fsync on to its upper file system,
/// which is mounted, and so checked, itself.)
const NEVER_WAIT: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// The mounts whose fsync ext4's tracepoints would not see: not ext4, not read-only, and
/// not a file system whose fsync never waits.
pub fn blind_spots(mounts: impl IntoIterator<Item = Mount>) -> Vec<Mount> {
    let mut out: Vec<Mount> = mounts
        .into_iter()
        .filter(|m| {
            !m.read_only && m.fs_type != "ext4" && !NEVER_WAIT.contains(&m.fs_type.as_str())
        })
        .collect();
    out.dedup_by(|a, b| a.fs_type == b.fs_type && a.mount_point == b.mount_point);
    out
}

/// The mounts this process sees (pausewatch runs in the host's mount namespace).
pub fn host_mounts() -> anyhow::Result<Vec<Mount>> {
    let infos = procfs::process::Process::myself()?.mountinfo()?;
    Ok(infos
        .into_iter()
        .map(|m| Mount {
            read_only: m.mount_options.contains_key("ro") || m.super_options.contains_key("ro"),
            fs_type: m.fs_type,
            mount_point: m.mount_point,
        })
        .collect())
}

/// File systems mounted after start-up that ext4's tracepoints do not see: the choice is made
/// once, so each is named once, for the operator to restart or ask for the syscall
/// tracepoints.
#[derive(Debug, Default)]
pub struct MountWatch {
    named: Vec<Mount>,
}

impl MountWatch {
    /// How often the agent reads the mount table while the hooks off the syscall path are in
    /// use.
    pub const EVERY_TICKS: u64 = 5;

    /// The blind spots in `mounts` not named before.
    pub fn new_blind_spots(&mut self, mounts: Vec<Mount>) -> Vec<Mount> {
        let new: Vec<Mount> = blind_spots(mounts)
            .into_iter()
            .filter(|m| !self.named.contains(m))
            .collect();
        self.named.extend(new.iter().cloned());
        new
    }
}

/// What an operator is told about a blind spot mounted after start-up.
pub fn late_mount_message(m: &Mount) -> String {
    format!(
        "fsync on {} ({}), mounted after start-up, is not timed: ext4's tracepoints, chosen at \
         start-up, do not see it (restart pausewatch, which will then use the syscall \
         tracepoints, or pass --syscall-tracepoints always); its waits are still named from the \
         kernel stack",
        m.fs_type,
        m.mount_point.display()
    )
}

/// Why the hooks off the syscall path cannot be used here, if they cannot.
pub fn why_not_off_path(host: &Host) -> Option<String> {
    if !host.tp_btf {
        return Some("they need tp_btf programs, which this kernel refused".into());
    }
    if let Some(e) = &host.regs_missing {
        return Some(format!("the saved registers are not x86-64's ({e})"));
    }
    if !host.cap_capable {
        return Some("this kernel has no capability:cap_capable tracepoint (Linux 6.14+)".into());
    }
    if !host.ext4_sync_file {
        return Some("this kernel has no ext4_sync_file tracepoints".into());
    }
    if let Some(m) = host.blind_spots.first() {
        let more = host.blind_spots.len() - 1;
        return Some(format!(
            "fsync on {} ({}){} has no tracepoint pair of its own",
            m.fs_type,
            m.mount_point.display(),
            if more > 0 {
                format!(" and {more} more mount(s)")
            } else {
                String::new()
            }
        ));
    }
    None
}

/// Which hooks to attach.
pub fn choose(mode: SyscallHooks, host: &Host) -> Choice {
    match (mode, why_not_off_path(host)) {
        (SyscallHooks::Always, _) => Choice::Syscalls(None),
        (_, None) => Choice::OffPath,
        (SyscallHooks::Auto, Some(why)) => Choice::Syscalls(Some(why)),
        (SyscallHooks::Never, Some(why)) => Choice::Neither(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(fs: &str, at: &str, ro: bool) -> Mount {
        Mount {
            fs_type: fs.into(),
            mount_point: at.into(),
            read_only: ro,
        }
    }

    fn host(blind: Vec<Mount>) -> Host {
        Host {
            tp_btf: true,
            regs_missing: None,
            cap_capable: true,
            ext4_sync_file: true,
            blind_spots: blind,
        }
    }

    #[test]
    fn only_writable_mounts_whose_fsync_can_wait_outside_ext4_are_blind_spots() {
        let got = blind_spots([
            mount("ext4", "/", false),
            mount("tmpfs", "/run", false),
            mount("overlay", "/var/lib/docker/overlay2/x/merged", false),
            mount("proc", "/proc", false),
            mount("xfs", "/data", false),
            mount("xfs", "/data", false),
            mount("btrfs", "/backup", true),
            mount("fuse.sshfs", "/mnt/remote", false),
            mount("nfs4", "/home", false),
            mount("squashfs", "/snap/core/1", true),
        ]);
        let names: Vec<_> = got.iter().map(|m| m.fs_type.as_str()).collect();
        assert_eq!(names, ["xfs", "fuse.sshfs", "nfs4"]);
    }

    #[test]
    fn the_hooks_off_the_syscall_path_are_chosen_only_when_they_see_everything() {
        assert_eq!(choose(SyscallHooks::Auto, &host(vec![])), Choice::OffPath);
        assert_eq!(choose(SyscallHooks::Never, &host(vec![])), Choice::OffPath);
        assert_eq!(
            choose(SyscallHooks::Always, &host(vec![])),
            Choice::Syscalls(None)
        );
        let xfs = host(vec![
            mount("xfs", "/data", false),
            mount("nfs4", "/home", false),
        ]);
        let Choice::Syscalls(Some(why)) = choose(SyscallHooks::Auto, &xfs) else {
            panic!("{:?}", choose(SyscallHooks::Auto, &xfs))
        };
        assert_eq!(
            why,
            "fsync on xfs (/data) and 1 more mount(s) has no tracepoint pair of its own"
        );
        assert!(matches!(choose(SyscallHooks::Never, &xfs), Choice::Neither(w) if w == why));
        for (h, want) in [
            (
                Host {
                    tp_btf: false,
                    ..host(vec![])
                },
                "tp_btf",
            ),
            (
                Host {
                    regs_missing: Some("no member di".into()),
                    ..host(vec![])
                },
                "x86-64",
            ),
            (
                Host {
                    cap_capable: false,
                    ..host(vec![])
                },
                "cap_capable",
            ),
            (
                Host {
                    ext4_sync_file: false,
                    ..host(vec![])
                },
                "ext4_sync_file",
            ),
        ] {
            let Choice::Syscalls(Some(why)) = choose(SyscallHooks::Auto, &h) else {
                panic!("{h:?}")
            };
            assert!(why.contains(want), "{why}");
        }
    }

    #[test]
    fn a_blind_spot_mounted_later_is_named_once() {
        let mut w = MountWatch::default();
        assert!(
            w.new_blind_spots(vec![mount("ext4", "/", false)])
                .is_empty()
        );
        let xfs = mount("xfs", "/data", false);
        let got = w.new_blind_spots(vec![mount("ext4", "/", false), xfs.clone()]);
        assert_eq!(got, std::slice::from_ref(&xfs));
        assert!(
            w.new_blind_spots(vec![xfs.clone()]).is_empty(),
            "named twice"
        );
        assert!(
            late_mount_message(&xfs).starts_with("fsync on xfs (/data), mounted after start-up")
        );
    }

    #[test]
    fn this_hosts_mounts_are_read() {
        let mounts = host_mounts().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_point == std::path::Path::new("/")),
            "{mounts:?}"
        );
    }
}
