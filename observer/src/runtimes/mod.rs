//! Finding language runtimes in processes and attaching their stop-the-world probes.
//!
//! A uprobe is placed on a file and fires in every process that maps it, now or later, so
//! probes are attached once per file (device, inode): the first JVM of a JDK attaches its
//! libjvm.so, every later JVM of that JDK is covered from its first instruction. New files are
//! found by looking at processes: all of them once at start, then each one that execs (the
//! `sched_process_exec` records), at its executable at once (a Go program is all there at
//! exec) and at its mappings over the next seconds (the java launcher loads libjvm.so a few
//! milliseconds after it starts).
//!
//! Every process found running a runtime is reported once: observed, or "GC not observable for
//! pid N: reason" (a stripped Go binary, a JDK built without USDT probes, a failed attach).
pub mod elf;
pub mod golang;
pub mod stapsdt;
pub mod uprobe;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    fs::File,
    os::{fd::AsFd as _, fd::OwnedFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{Ebpf, programs::UProbe};
use object::ReadCache;
use observer_common::Runtime;

use self::{elf::Elf, stapsdt::UsdtArg};

/// Every uprobe program this module may load (for cost reporting; unloaded ones are skipped).
pub const PROGRAMS: [&str; 25] = [
    "jvm_safepoint_begin",
    "jvm_safepoint_synchronized",
    "jvm_safepoint_end",
    "jvm_gc_begin_rdi",
    "jvm_gc_begin_full",
    "jvm_gc_begin_partial",
    "jvm_gc_end",
    "jvm_vmop_begin_rax",
    "jvm_vmop_begin_rbx",
    "jvm_vmop_begin_rcx",
    "jvm_vmop_begin_rdx",
    "jvm_vmop_begin_rsi",
    "jvm_vmop_begin_rdi",
    "jvm_vmop_begin_rbp",
    "jvm_vmop_begin_r8",
    "jvm_vmop_begin_r9",
    "jvm_vmop_begin_r10",
    "jvm_vmop_begin_r11",
    "jvm_vmop_begin_r12",
    "jvm_vmop_begin_r13",
    "jvm_vmop_begin_r14",
    "jvm_vmop_begin_r15",
    "go_stw_stop",
    "go_stw_stop_reason",
    "go_stw_start",
];

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// Gaps between the looks at a process after it execs, in milliseconds: at once, then 20 ms,
/// 100 ms, 500 ms and 2 s after the exec.
const CHECK_GAPS_MS: [u64; 5] = [0, 20, 80, 400, 1500];
/// Checks of an executable none of whose earlier processes mapped libjvm.so: once, a little
/// later than a launcher would have loaded it.
const KNOWN_PLAIN_DELAY_MS: u64 = 500;
/// Bounds on what the watcher remembers.
const MAX_PENDING: usize = 8192;
const MAX_FILES: usize = 4096;
/// Checks done per call of `run_due`, so a start-up scan of thousands of processes does not
/// hold up the ring buffer.
const CHECKS_PER_CALL: usize = 64;

/// What inspecting one file found.
enum Verdict {
    /// Probes attached (the links stay open, hence attached, for as long as pausewatch runs).
    Attached {
        runtime: Runtime,
        links: Vec<OwnedFd>,
        /// What the operator should know about how (e.g. the Go version, a degraded end point).
        detail: String,
    },
    /// A runtime whose stops cannot be observed, and why.
    Unobservable { runtime: Runtime, reason: String },
    /// Not a runtime pausewatch knows.
    NotRuntime,
}

/// Something the operator should read: written as an NDJSON `notice` and shown in the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: &'static str,
    pub event: &'static str,
    pub message: String,
    pub pid: Option<u32>,
    pub path: Option<String>,
}

/// A check that is due: (due time on CLOCK_MONOTONIC, pid, attempt index, the process's start
/// time in clock ticks as first seen, 0 before the first look). Later looks at a pid whose
/// start time changed are dropped: the process is gone and its pid reused (an exec storm
/// turns pids over within the schedule's seconds, and with `--pid` the reuser is not watched).
type Check = Reverse<(u64, u32, usize, u64)>;

#[derive(Default)]
pub struct RuntimeWatcher {
    files: HashMap<FileId, Verdict>,
    pending: BinaryHeap<Check>,
    /// Processes whose runtime was found and reported (each once per program image).
    reported: HashMap<u32, Runtime>,
    /// Executables whose processes never mapped libjvm.so within the whole schedule.
    plain_executables: HashSet<FileId>,
    /// Checks not scheduled because `pending` was full (a fork/exec storm).
    pub checks_skipped: u64,
    /// Processes with attached stop-the-world probes, by runtime (for the summary).
    pub observed: u64,
    pub unobservable: u64,
}

fn proc_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// When process `pid` started (/proc/<pid>/stat starttime, clock ticks since boot).
fn proc_start(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl RuntimeWatcher {
    /// Schedules one look at every running process (or only at `pids`).
    pub fn scan_existing(&mut self, now_ns: u64, pids: &[u32]) {
        let all: Vec<u32> = if pids.is_empty() {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return;
            };
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        } else {
            pids.to_vec()
        };
        let me = std::process::id();
        for pid in all.into_iter().filter(|&p| p != me) {
            self.schedule(now_ns, pid, CHECK_GAPS_MS.len() - 1, 0);
        }
    }

    /// A process exec'd: look at its new image over the next seconds.
    pub fn on_exec(&mut self, now_ns: u64, pid: u32) {
        self.reported.remove(&pid);
        self.schedule(now_ns, pid, 0, 0);
    }

    fn schedule(&mut self, due_ns: u64, pid: u32, attempt: usize, start: u64) {
        if self.pending.len() >= MAX_PENDING {
            self.checks_skipped += 1;
            return;
        }
        self.pending.push(Reverse((due_ns, pid, attempt, start)));
    }

    /// When the next check is due (CLOCK_MONOTONIC ns).
    pub fn next_due_ns(&self) -> Option<u64> {
        self.pending.peek().map(|Reverse((due, ..))| *due)
    }

    /// Runs the checks due at `now_ns` (at most `CHECKS_PER_CALL`), attaching probes to new
    /// runtime files. Returns what to tell the operator.
    pub fn run_due(&mut self, now_ns: u64, ebpf: &mut Ebpf) -> Vec<Notice> {
        let mut notices = Vec::new();
        for _ in 0..CHECKS_PER_CALL {
            match self.pending.peek() {
                Some(Reverse((due, ..))) if *due <= now_ns => {}
                _ => break,
            }
            let Some(Reverse((_, pid, attempt, start))) = self.pending.pop() else {
                break;
            };
            self.check(now_ns, pid, attempt, start, ebpf, &mut notices);
        }
        notices
    }

    /// Forgets processes that are gone (pid reuse must not inherit a verdict).
    pub fn prune(&mut self) {
        self.reported
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
    }

    fn check(
        &mut self,
        now_ns: u64,
        pid: u32,
        attempt: usize,
        start: u64,
        ebpf: &mut Ebpf,
        notices: &mut Vec<Notice>,
    ) {
        if self.reported.contains_key(&pid) {
            return;
        }
        // Gone, or another process with the same pid.
        let Some(now_start) = proc_start(pid).filter(|&s| start == 0 || s == start) else {
            return;
        };
        let exe_link = PathBuf::from(format!("/proc/{pid}/exe"));
        // Kernel threads have no executable; a process that exited has no /proc entry.
        let Some(exe_id) = file_id(&exe_link) else {
            return;
        };
        if self.needs_verdict(exe_id) {
            let v = inspect_go(&exe_link, ebpf);
            if let Some(n) = attach_notice(&v, &exe_link, pid) {
                notices.push(n);
            }
            self.files.insert(exe_id, v);
        }
        if self.report(pid, exe_id, &exe_link, notices) {
            return;
        }
        if let Some((jvm_id, path)) = find_libjvm(pid) {
            if self.needs_verdict(jvm_id) {
                let v = inspect_jvm(&path, ebpf);
                if let Some(n) = attach_notice(&v, &path, pid) {
                    notices.push(n);
                }
                self.files.insert(jvm_id, v);
            }
            self.report(pid, jvm_id, &path, notices);
            return;
        }
        // Not (yet) a runtime: look again later in the schedule. An executable none of whose
        // earlier processes loaded a JVM gets one more look only.
        let last = CHECK_GAPS_MS.len() - 1;
        if attempt == last {
            if self.plain_executables.len() >= MAX_FILES {
                self.plain_executables.clear();
            }
            self.plain_executables.insert(exe_id);
        } else if !self.plain_executables.contains(&exe_id) {
            self.schedule(
                now_ns + CHECK_GAPS_MS[attempt + 1] * 1_000_000,
                pid,
                attempt + 1,
                now_start,
            );
        } else if attempt == 0 {
            self.schedule(
                now_ns + KNOWN_PLAIN_DELAY_MS * 1_000_000,
                pid,
                last,
                now_start,
            );
        }
    }

    /// True when `id` has no verdict yet (making room for one: the cache is bounded).
    fn needs_verdict(&mut self, id: FileId) -> bool {
        if self.files.contains_key(&id) {
            return false;
        }
        if self.files.len() >= MAX_FILES {
            self.files.retain(|_, v| !matches!(v, Verdict::NotRuntime));
        }
        true
    }

    /// Reports `pid` if the file `id` is a runtime. True when it was one.
    fn report(&mut self, pid: u32, id: FileId, path: &Path, notices: &mut Vec<Notice>) -> bool {
        let (runtime, notice) = match self.files.get(&id) {
            Some(Verdict::Attached { runtime, .. }) => {
                self.observed += 1;
                let how = match runtime {
                    Runtime::Jvm => "JVM safepoints and GC observed through hotspot USDT probes",
                    Runtime::Go => "Go stop-the-world observed through runtime uprobes",
                };
                (
                    *runtime,
                    Notice {
                        level: "info",
                        event: "gc_observed",
                        message: format!("pid {pid} ({}): {how}", proc_comm(pid)),
                        pid: Some(pid),
                        path: Some(display_path(path)),
                    },
                )
            }
            Some(Verdict::Unobservable { runtime, reason }) => {
                self.unobservable += 1;
                (
                    *runtime,
                    Notice {
                        level: "warn",
                        event: "gc_unobservable",
                        message: format!(
                            "GC not observable for pid {pid} ({}): {reason}",
                            proc_comm(pid)
                        ),
                        pid: Some(pid),
                        path: Some(display_path(path)),
                    },
                )
            }
            Some(Verdict::NotRuntime) | None => return false,
        };
        self.reported.insert(pid, runtime);
        notices.push(notice);
        true
    }
}

/// The path as the process sees it (without the /proc/<pid>/root prefix used to reach it).
fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    match s.strip_prefix("/proc/").and_then(|r| r.split_once("/root")) {
        Some((_, rest)) if !rest.is_empty() => rest.to_string(),
        _ => s.into_owned(),
    }
}

/// The notice for a file whose probes were just attached.
fn attach_notice(v: &Verdict, path: &Path, pid: u32) -> Option<Notice> {
    let Verdict::Attached {
        runtime,
        links,
        detail,
    } = v
    else {
        return None;
    };
    let what = match runtime {
        Runtime::Jvm => "hotspot USDT probes",
        Runtime::Go => "Go stop-the-world uprobes",
    };
    let shown = if path.ends_with("exe") {
        std::fs::read_link(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| display_path(path))
    } else {
        display_path(path)
    };
    Some(Notice {
        level: "info",
        event: "gc_probes_attached",
        message: format!(
            "{} {what} attached in {shown} (found in pid {pid}){detail}",
            links.len()
        ),
        pid: Some(pid),
        path: Some(shown),
    })
}

/// The libjvm.so mapped by `pid`, as (file id, a path that reaches it from our mount
/// namespace).
fn find_libjvm(pid: u32) -> Option<(FileId, PathBuf)> {
    let maps = procfs::process::Process::new(pid as i32)
        .ok()?
        .maps()
        .ok()?;
    maps.into_iter().find_map(|m| {
        let procfs::process::MMapPath::Path(p) = &m.pathname else {
            return None;
        };
        if p.file_name()? != "libjvm.so" {
            return None;
        }
        let dev = libc::makedev(m.dev.0 as u32, m.dev.1 as u32);
        // Through the process's root: right inside containers too. If the file was deleted
        // (a JDK upgraded under a running JVM), through the mapping itself.
        let rooted = PathBuf::from(format!("/proc/{pid}/root{}", p.display()));
        let path = if file_id(&rooted) == Some((dev, m.inode)) {
            rooted
        } else {
            PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                m.address.0, m.address.1
            ))
        };
        Some(((dev, m.inode), path))
    })
}

/// Loads `name` (once) and attaches it at `offset` of `path`.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &str,
    path: &Path,
    offset: u64,
    ref_ctr_offset: u64,
) -> Result<OwnedFd, String> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| format!("loading {name}: {e}"))?;
    }
    let fd = prog.fd().map_err(|e| format!("program {name}: {e}"))?;
    uprobe::attach(fd.as_fd(), path, offset, ref_ctr_offset).map_err(|e| {
        if e.raw_os_error() == Some(libc::EACCES) {
            format!(
                "attaching {name} at {offset:#x}: {e}: this kernel creates uprobes only for CAP_SYS_ADMIN (Linux 6.16+, 'perf: Require CAP_SYS_ADMIN for uprobes'); grant it to observe garbage collectors"
            )
        } else {
            format!("attaching {name} at {offset:#x}: {e}")
        }
    })
}

fn open_elf(path: &Path) -> Result<ReadCache<File>, String> {
    File::open(path)
        .map(ReadCache::new)
        .map_err(|e| format!("cannot read {}: {e}", display_path(path)))
}

fn inspect_go(exe: &Path, ebpf: &mut Ebpf) -> Verdict {
    let Ok(cache) = open_elf(exe) else {
        return Verdict::NotRuntime;
    };
    let Ok(elf) = Elf::parse(&cache) else {
        return Verdict::NotRuntime;
    };
    if !golang::is_go(&elf) {
        return Verdict::NotRuntime;
    }
    let unobservable = |reason| Verdict::Unobservable {
        runtime: Runtime::Go,
        reason,
    };
    let probes = match golang::locate(&elf) {
        Ok(p) => p,
        Err(reason) => return unobservable(reason),
    };
    let stop = if golang::passes_reason(probes.version.as_deref()) {
        "go_stw_stop_reason"
    } else {
        "go_stw_stop"
    };
    // The ends first: a stop seen without its end would stay open until the next one.
    let plan = probes
        .end_offsets
        .iter()
        .map(|&off| ("go_stw_start", off))
        .chain([(stop, probes.stop_offset)]);
    let links = plan
        .map(|(prog, off)| attach_program(ebpf, prog, exe, off, 0))
        .collect::<Result<Vec<_>, _>>();
    match links {
        Ok(links) => Verdict::Attached {
            runtime: Runtime::Go,
            links,
            detail: match (&probes.version, probes.end_at_entry) {
                (v, false) => format!("; {}", v.as_deref().unwrap_or("Go version unknown")),
                (v, true) => format!(
                    "; {}; startTheWorldWithSema could not be decoded, so pauses end where the restart begins and omit it",
                    v.as_deref().unwrap_or("Go version unknown")
                ),
            },
        },
        Err(e) => unobservable(format!("attaching uprobes failed: {e}")),
    }
}

fn inspect_jvm(path: &Path, ebpf: &mut Ebpf) -> Verdict {
    let unobservable = |reason| Verdict::Unobservable {
        runtime: Runtime::Jvm,
        reason,
    };
    let (plan, detail) = match open_elf(path).and_then(|cache| jvm_plan(&cache)) {
        Ok(p) => p,
        Err(e) => return unobservable(e),
    };
    let mut links = Vec::new();
    for (prog, loc) in plan {
        match attach_program(ebpf, &prog, path, loc.offset, loc.ref_ctr_offset) {
            Ok(l) => links.push(l),
            Err(e) => return unobservable(format!("attaching USDT probes failed: {e}")),
        }
    }
    Verdict::Attached {
        runtime: Runtime::Jvm,
        links,
        detail,
    }
}

/// Which program goes where in a libjvm.so: (program, location) for every probe site, ends
/// before begins (a begin seen without its end would stay open until the next one). An error
/// says why the file's stop-the-world cannot be observed; the string says what is degraded.
///
/// In `SafepointSynchronize::begin()` (OpenJDK 17 and 25, read from their machine code) HotSpot
/// reads its clock and calls `RuntimeService::record_safepoint_begin`, where the USDT probe
/// hs_private:safepoint__begin sits; then it synchronises the GC's threads, arms the safepoint
/// and waits for every Java thread to stop, reads its clock again and calls
/// `RuntimeService::record_safepoint_synchronized` (no probe). -Xlog:safepoint's "Reaching
/// safepoint" is the time between the two clock reads. So the stop begins at the entry of
/// `begin()` when the symbol table has it (a few instructions before HotSpot's clock read) and
/// at the USDT probe otherwise; the entry of `record_safepoint_synchronized` ends the time to
/// safepoint.
fn jvm_plan<'a, R: object::ReadRef<'a>>(
    data: R,
) -> Result<(Vec<(String, stapsdt::UsdtLocation)>, String), String> {
    let elf = Elf::parse(data).map_err(|e| format!("libjvm.so is {e}"))?;
    let probes = stapsdt::probes(&elf);
    let sites = |provider: &'static str, name: &'static str| {
        probes
            .iter()
            .filter(move |p| p.provider == provider && p.name == name)
    };
    if sites("hs_private", "safepoint__begin").count() == 0
        || sites("hs_private", "safepoint__end").count() == 0
    {
        return Err(if probes.is_empty() {
            "libjvm.so has no USDT probes (a JDK built without DTrace/SystemTap support)".into()
        } else {
            "libjvm.so lacks the hs_private:safepoint__begin/end USDT probes".into()
        });
    }
    let mut plan: Vec<(String, &stapsdt::UsdtProbe)> = Vec::new();
    plan.extend(
        sites("hs_private", "safepoint__end").map(|p| ("jvm_safepoint_end".to_string(), p)),
    );
    plan.extend(sites("hotspot", "gc__end").map(|p| ("jvm_gc_end".to_string(), p)));
    plan.extend(sites("hotspot", "gc__begin").map(|p| {
        let prog = match stapsdt::parse_args(&p.args).first() {
            Some(UsdtArg::Register { reg: "rdi", .. }) => "jvm_gc_begin_rdi",
            Some(UsdtArg::Const(v)) if *v != 0 => "jvm_gc_begin_full",
            _ => "jvm_gc_begin_partial",
        };
        (prog.to_string(), p)
    }));
    plan.extend(sites("hotspot", "vmops__begin").filter_map(|p| {
        match stapsdt::parse_args(&p.args).first() {
            Some(UsdtArg::Register { reg, .. }) if *reg != "rsp" => {
                Some((format!("jvm_vmop_begin_{reg}"), p))
            }
            _ => None,
        }
    }));
    let entry = |symbol: &str| {
        elf.symbol(symbol)
            .and_then(|(addr, _)| elf::file_offset(&elf.segments(), addr))
            .map(|offset| stapsdt::UsdtLocation {
                offset,
                ref_ctr_offset: 0,
            })
    };
    let begin_symbol = entry(SAFEPOINT_BEGIN_SYMBOL);
    let sync_symbol = entry(SAFEPOINT_SYNCHRONIZED_SYMBOL);
    if begin_symbol.is_none() {
        plan.extend(
            sites("hs_private", "safepoint__begin").map(|p| ("jvm_safepoint_begin".to_string(), p)),
        );
    }
    let mut out = plan
        .into_iter()
        .map(|(prog, probe)| Ok((prog, stapsdt::locate(&elf, probe)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut detail = String::new();
    match begin_symbol {
        Some(at) => out.push(("jvm_safepoint_begin".to_string(), at)),
        None => {
            detail += "; no SafepointSynchronize::begin in its symbol table, so safepoints begin at the safepoint__begin probe, a few instructions later"
        }
    }
    match sync_symbol {
        Some(at) => out.push(("jvm_safepoint_synchronized".to_string(), at)),
        None => {
            detail += "; no RuntimeService::record_safepoint_synchronized in its symbol table, so the time to safepoint is not measured"
        }
    }
    Ok((out, detail))
}

/// `SafepointSynchronize::begin()`, where HotSpot arms a safepoint (Itanium C++ mangling).
const SAFEPOINT_BEGIN_SYMBOL: &str = "_ZN20SafepointSynchronize5beginEv";
/// `RuntimeService::record_safepoint_synchronized(long)`, called once every thread has stopped.
const SAFEPOINT_SYNCHRONIZED_SYMBOL: &str = "_ZN14RuntimeService29record_safepoint_synchronizedEl";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shown_as_the_process_sees_them() {
        assert_eq!(
            display_path(Path::new("/proc/42/root/usr/lib/jvm/x/libjvm.so")),
            "/usr/lib/jvm/x/libjvm.so"
        );
        assert_eq!(
            display_path(Path::new("/proc/42/map_files/7f00-7f10")),
            "/proc/42/map_files/7f00-7f10"
        );
        assert_eq!(display_path(Path::new("/usr/bin/go")), "/usr/bin/go");
    }

    #[test]
    fn a_library_without_usdt_probes_is_unobservable_with_the_reason() {
        // This test binary is a real ELF file without .note.stapsdt, like a JDK built without
        // DTrace support.
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = jvm_plan(&data[..]).unwrap_err();
        assert!(
            err.contains("no USDT probes") && err.contains("without DTrace"),
            "{err}"
        );
        assert!(
            jvm_plan(&b"not an ELF file"[..])
                .unwrap_err()
                .starts_with("libjvm.so is not a 64-bit ELF")
        );
    }

    #[test]
    fn every_program_a_plan_can_name_is_registered_for_cost_reporting() {
        let regs = [
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
            "r13", "r14", "r15",
        ];
        for r in regs {
            assert!(
                PROGRAMS.contains(&format!("jvm_vmop_begin_{r}").as_str()),
                "{r}"
            );
        }
        for p in [
            "jvm_gc_begin_rdi",
            "jvm_gc_begin_full",
            "jvm_gc_begin_partial",
            "go_stw_stop_reason",
        ] {
            assert!(PROGRAMS.contains(&p));
        }
    }

    #[test]
    fn a_process_is_told_from_a_later_one_with_its_pid_by_its_start_time() {
        let me = std::process::id();
        let started = proc_start(me).expect("our own start time");
        assert_eq!(proc_start(me), Some(started), "stable for one process");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let theirs = proc_start(child.id()).unwrap();
        let _ = (child.kill(), child.wait());
        assert!(theirs >= started, "a later process starts later");
        // Pids are handed out in increasing order, so the freed one is not taken again at once.
        assert_eq!(proc_start(child.id()), None, "a reaped process has none");
    }

    #[test]
    fn schedule_is_bounded_and_ordered() {
        let mut w = RuntimeWatcher::default();
        w.on_exec(500, 2);
        w.on_exec(100, 1);
        assert_eq!(w.next_due_ns(), Some(100));
        for i in 0..MAX_PENDING {
            w.schedule(1_000 + i as u64, 3, 1, 0);
        }
        assert_eq!(
            w.checks_skipped, 2,
            "the two beyond the bound are counted, not queued"
        );
        assert_eq!(w.pending.len(), MAX_PENDING);
    }
}
