//! Whole-process stops and the signals sent to observed processes, decoded from the kernel.
use observer_common::{SignalRecord, StopKind, StopRecord, TaskId};

use super::{episode::comm_string, units::fmt_ns};

/// A task identified in the kernel at one moment (a signal's sender, a stop's resumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
}

impl Actor {
    /// None when the kernel did not know (tid 0).
    pub fn from_task_id(t: &TaskId) -> Option<Self> {
        (t.tid != 0).then(|| Self { pid: t.tgid, tid: t.tid, uid: t.uid, comm: comm_string(&t.comm) })
    }

    /// "pid 4242 (bash, uid 0)"
    pub fn describe(&self) -> String {
        format!("pid {} ({}, uid {})", self.pid, self.comm, self.uid)
    }
}

/// One whole-process stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Shares the episode id sequence, so incidents can cite it.
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub kind: Option<StopKind>,
    pub threads: u32,
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    /// The stop signal and its sender, for job-control stops.
    pub signal: Option<u32>,
    pub stopped_by: Option<Actor>,
    pub resumed_by: Option<Actor>,
}

impl Stop {
    pub fn from_record(id: u64, r: &StopRecord) -> Self {
        Self {
            id,
            pid: r.tgid,
            comm: comm_string(&r.comm),
            kind: StopKind::from_u32(r.stop_kind),
            threads: r.threads,
            start_mono_ns: r.start_mono_ns,
            duration_ns: r.duration_ns,
            signal: (r.stop_sig != 0).then_some(r.stop_sig),
            stopped_by: Actor::from_task_id(&r.stopped_by),
            resumed_by: Actor::from_task_id(&r.resumed_by),
        }
    }

    pub fn end_mono_ns(&self) -> u64 {
        self.start_mono_ns.saturating_add(self.duration_ns)
    }

    /// One line for people: "stopped 15.2 s: SIGSTOP from pid 4242 (bash, uid 0); resumed by
    /// pid 4250 (kill, uid 0)".
    pub fn describe(&self) -> String {
        let cause = match (self.kind, self.signal, &self.stopped_by) {
            (Some(StopKind::Signal), Some(sig), Some(by)) => format!("{} from {}", signal_name(sig), by.describe()),
            (Some(StopKind::Signal), Some(sig), None) => format!("{} from an unknown sender", signal_name(sig)),
            (Some(StopKind::Signal), None, _) => "job-control stop (signal not seen: it came before pausewatch attached)".to_string(),
            (Some(StopKind::Ptrace), ..) => "ptrace stop (a debugger or profiler)".to_string(),
            (Some(StopKind::Freezer), ..) => "cgroup freezer".to_string(),
            (None, ..) => "unknown stop".to_string(),
        };
        let resumed = self.resumed_by.as_ref().map_or_else(|| "resumed (waker not seen)".to_string(), |a| format!("resumed by {}", a.describe()));
        let threads = if self.threads > 1 { format!(", {} threads", self.threads) } else { String::new() };
        format!("stopped {}: {cause}{threads}; {resumed}", fmt_ns(self.duration_ns))
    }
}

/// A signal generated for an observed process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub ts_mono_ns: u64,
    pub sig: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: bool,
    pub result: u32,
    pub sender: Option<Actor>,
}

impl Signal {
    pub fn from_record(r: &SignalRecord) -> Self {
        Self {
            ts_mono_ns: r.ts_mono_ns,
            sig: r.sig,
            pid: r.target_tgid,
            tid: r.target_tid,
            comm: comm_string(&r.target_comm),
            group: r.group != 0,
            result: r.result,
            sender: Actor::from_task_id(&r.sender),
        }
    }

    /// `TRACE_SIGNAL_*` (include/trace/events/signal.h, v6.18) as a stable name.
    pub fn result_name(&self) -> &'static str {
        match self.result {
            0 => "delivered",
            1 => "ignored",
            2 => "already_pending",
            3 => "overflow_fail",
            4 => "lose_info",
            _ => "unknown",
        }
    }
}

/// Linux x86_64 signal names (arch/x86/include/uapi/asm/signal.h); real-time signals as
/// SIGRTMIN+n.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL", "SIGUSR1",
        "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP",
        "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(sig as usize) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ if (32..=64).contains(&sig) => format!("SIGRTMIN+{}", sig - 32),
        _ => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{RecordKind, TASK_COMM_LEN};

    fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut c = [0; TASK_COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn task(tid: u32, name: &str) -> TaskId {
        TaskId { tid, tgid: tid, uid: 0, _pad0: 0, comm: comm(name) }
    }

    fn record(kind: StopKind, sig: u32, by: TaskId, resumed: TaskId) -> StopRecord {
        StopRecord {
            kind: RecordKind::Stop as u32,
            stop_kind: kind as u32,
            tgid: 77,
            threads: 1,
            start_mono_ns: 1_000,
            duration_ns: 15_200_000_000,
            stop_sig: sig,
            _pad0: 0,
            stopped_by: by,
            resumed_by: resumed,
            comm: comm("server"),
        }
    }

    #[test]
    fn describes_a_signal_stop_with_both_actors() {
        let s = Stop::from_record(3, &record(StopKind::Signal, 19, task(4242, "bash"), task(4250, "kill")));
        let text = s.describe();
        assert_eq!(text, "stopped 15.2s: SIGSTOP from pid 4242 (bash, uid 0); resumed by pid 4250 (kill, uid 0)");
        assert_eq!(s.end_mono_ns(), 1_000 + 15_200_000_000);
    }

    #[test]
    fn unknown_actors_and_other_kinds_are_said_plainly() {
        let s = Stop::from_record(1, &record(StopKind::Ptrace, 0, TaskId::default(), TaskId::default()));
        assert_eq!(s.stopped_by, None);
        assert!(s.describe().contains("ptrace stop") && s.describe().contains("waker not seen"));
        let s = Stop::from_record(1, &record(StopKind::Signal, 0, TaskId::default(), task(1, "init")));
        assert!(s.describe().contains("before pausewatch attached"));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(19), "SIGSTOP");
        assert_eq!(signal_name(18), "SIGCONT");
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(99), "signal 99");
    }
}
