//! Whole-process stops and the signals sent to observed processes, decoded from the kernel.
use std::collections::VecDeque;

use observer_common::{SignalRecord, StopKind, StopRecord, TaskId};

use super::{episode::comm_string, units::fmt_ns};

/// A task identified in the kernel at one moment (a signal's sender, a stop's resumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    /// None when the kernel could not read it.
    pub uid: Option<u32>,
    pub comm: String,
}

impl Actor {
    /// None when the kernel did not know (tid 0).
    pub fn from_task_id(t: &TaskId) -> Option<Self> {
        (t.tid != 0).then(|| Self {
            pid: t.tgid,
            tid: t.tid,
            uid: (t.uid != u32::MAX).then_some(t.uid),
            comm: comm_string(&t.comm),
        })
    }

    /// "pid 4242 (bash, uid 0)"
    pub fn describe(&self) -> String {
        match self.uid {
            Some(uid) => format!("pid {} ({}, uid {uid})", self.pid, self.comm),
            None => format!("pid {} ({})", self.pid, self.comm),
        }
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
    /// Signal stops: the sender of `signal`; ptrace stops: the tracer.
    pub stopped_by: Option<Actor>,
    /// The signal that ended a signal stop (SIGCONT, SIGKILL) and its sender (`StopJoiner`).
    pub resumed_by: Option<(u32, Actor)>,
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
            resumed_by: None,
        }
    }

    pub fn end_mono_ns(&self) -> u64 {
        self.start_mono_ns.saturating_add(self.duration_ns)
    }

    /// What stopped the process: "SIGSTOP from pid 4242 (bash, uid 0)".
    pub fn cause(&self) -> String {
        match (self.kind, self.signal, &self.stopped_by) {
            (Some(StopKind::Signal), Some(sig), Some(by)) => {
                format!("{} from {}", signal_name(sig), by.describe())
            }
            (Some(StopKind::Signal), Some(sig), None) => {
                format!("{} from an unknown sender", signal_name(sig))
            }
            (Some(StopKind::Signal), None, _) => {
                "job-control stop (its signal came before pausewatch attached)".to_string()
            }
            (Some(StopKind::Ptrace), _, Some(by)) => {
                format!("ptrace stop held by tracer {}", by.describe())
            }
            (Some(StopKind::Ptrace), _, None) => "ptrace stop (tracer unknown)".to_string(),
            (Some(StopKind::Freezer), ..) => "cgroup freezer".to_string(),
            (None, ..) => "unknown stop".to_string(),
        }
    }

    /// What ended the stop: "resumed by SIGCONT from pid 4250 (kill, uid 0)".
    pub fn resumption(&self) -> String {
        match (&self.resumed_by, self.kind) {
            (Some((sig, a)), _) => {
                format!("resumed by {} from {}", signal_name(*sig), a.describe())
            }
            (None, Some(StopKind::Ptrace)) => "released by the tracer".to_string(),
            (None, Some(StopKind::Freezer)) => {
                "thawed (the thawing process is invisible to tracepoints)".to_string()
            }
            (None, _) => "resumed (no SIGCONT or SIGKILL seen)".to_string(),
        }
    }

    /// One line for people: "stopped 15.2s: SIGSTOP from pid 4242 (bash, uid 0); resumed by
    /// SIGCONT from pid 4250 (kill, uid 0)".
    pub fn describe(&self) -> String {
        let (cause, resumed) = (self.cause(), self.resumption());
        let threads = if self.threads > 1 {
            format!(", {} threads", self.threads)
        } else {
            String::new()
        };
        format!(
            "stopped {}: {cause}{threads}; {resumed}",
            fmt_ns(self.duration_ns)
        )
    }
}

/// Joins signal stops with the signal that ended them.
///
/// SIGCONT wakes the stopped threads before its own signal_generate tracepoint fires, and the
/// wakeups often run on other CPUs, so the kernel streams the stop without its resumer. The
/// SIGCONT (or SIGKILL) record arrives within microseconds of the stop's end, before or after
/// it; a stop waits here until it (or `GRACE_NS` of input time) arrives.
#[derive(Debug, Default)]
pub struct StopJoiner {
    pending: VecDeque<Stop>,
    resumes: VecDeque<(u32, u64, u32, Actor)>,
}

impl StopJoiner {
    /// A resume signal and a stop's end farther apart than this are unrelated.
    pub const WINDOW_NS: u64 = 50_000_000;
    /// How long a stop waits for its resume signal.
    pub const GRACE_NS: u64 = 500_000_000;
    /// Bound on what is held (a storm of stops or signals cannot grow memory).
    pub const MAX_HELD: usize = 4096;

    fn matches(stop: &Stop, pid: u32, ts: u64) -> bool {
        stop.pid == pid && stop.end_mono_ns().abs_diff(ts) <= Self::WINDOW_NS
    }

    /// A stop from the kernel: returned at once when nothing can be joined (ptrace, freezer)
    /// or its resume signal is already here; otherwise held.
    pub fn on_stop(&mut self, mut stop: Stop) -> Option<Stop> {
        if stop.kind != Some(StopKind::Signal) {
            return Some(stop);
        }
        if let Some(i) = self
            .resumes
            .iter()
            .position(|&(pid, ts, ..)| Self::matches(&stop, pid, ts))
        {
            let (_, _, sig, actor) = self.resumes.remove(i)?;
            stop.resumed_by = Some((sig, actor));
            return Some(stop);
        }
        if self.pending.len() >= Self::MAX_HELD {
            let oldest = self.pending.pop_front();
            self.pending.push_back(stop);
            return oldest;
        }
        self.pending.push_back(stop);
        None
    }

    /// A signal: a SIGCONT or SIGKILL with a sender releases the held stop it ended.
    pub fn on_signal(&mut self, sig: &Signal) -> Option<Stop> {
        if sig.sig != SIGCONT && sig.sig != SIGKILL {
            return None;
        }
        let actor = sig.sender.clone()?;
        if let Some(i) = self
            .pending
            .iter()
            .position(|s| Self::matches(s, sig.pid, sig.ts_mono_ns))
        {
            let mut stop = self.pending.remove(i)?;
            stop.resumed_by = Some((sig.sig, actor));
            return Some(stop);
        }
        if self.resumes.len() >= Self::MAX_HELD {
            self.resumes.pop_front();
        }
        self.resumes
            .push_back((sig.pid, sig.ts_mono_ns, sig.sig, actor));
        None
    }

    /// Stops whose grace period is over at `now_mono_ns`, released without a resumer.
    pub fn expire(&mut self, now_mono_ns: u64) -> Vec<Stop> {
        self.resumes
            .retain(|&(_, ts, ..)| ts.saturating_add(Self::GRACE_NS) >= now_mono_ns);
        let (old, keep): (Vec<Stop>, Vec<Stop>) = self
            .pending
            .drain(..)
            .partition(|s| s.end_mono_ns().saturating_add(Self::GRACE_NS) < now_mono_ns);
        self.pending = keep.into();
        old
    }

    /// Everything still held (at exit).
    pub fn drain(&mut self) -> Vec<Stop> {
        self.resumes.clear();
        self.pending.drain(..).collect()
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

/// SIGCONT (x86_64).
pub const SIGCONT: u32 = 18;
/// SIGSTOP (x86_64).
pub const SIGSTOP: u32 = 19;
/// SIGKILL (x86_64).
pub const SIGKILL: u32 = 9;

impl Signal {
    /// A job-control stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) that was delivered.
    pub fn delivered_stop(&self) -> bool {
        (19..=22).contains(&self.sig) && self.result == 0
    }

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
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
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
        TaskId {
            tid,
            tgid: tid,
            uid: 0,
            _pad0: 0,
            comm: comm(name),
        }
    }

    fn record(kind: StopKind, sig: u32, by: TaskId) -> StopRecord {
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
            comm: comm("server"),
        }
    }

    fn cont(pid: u32, ts: u64, from: TaskId) -> Signal {
        Signal {
            ts_mono_ns: ts,
            sig: 18,
            pid,
            tid: pid,
            comm: "server".into(),
            group: true,
            result: 1,
            sender: Actor::from_task_id(&from),
        }
    }

    const END: u64 = 1_000 + 15_200_000_000;

    #[test]
    fn describes_a_signal_stop_with_both_actors_whichever_record_comes_first() {
        let stop = Stop::from_record(3, &record(StopKind::Signal, 19, task(4242, "bash")));
        // The stop first, then its SIGCONT.
        let mut j = StopJoiner::default();
        assert_eq!(
            j.on_stop(stop.clone()),
            None,
            "held until its resume signal"
        );
        let s = j
            .on_signal(&cont(77, END + 20_000, task(4250, "kill")))
            .expect("released by the SIGCONT");
        assert_eq!(
            s.describe(),
            "stopped 15.2s: SIGSTOP from pid 4242 (bash, uid 0); resumed by SIGCONT from pid 4250 (kill, uid 0)"
        );
        // The SIGCONT first (it can come before the stop record), then the stop.
        let mut j = StopJoiner::default();
        assert_eq!(
            j.on_signal(&cont(77, END - 20_000, task(4250, "kill"))),
            None
        );
        assert_eq!(
            j.on_stop(stop)
                .and_then(|s| s.resumed_by)
                .map(|(sig, a)| (sig, a.pid)),
            Some((18, 4250))
        );
        assert_eq!(j.drain(), vec![]);
    }

    #[test]
    fn unrelated_signals_do_not_join_and_held_stops_expire() {
        let stop = Stop::from_record(3, &record(StopKind::Signal, 19, task(4242, "bash")));
        let mut j = StopJoiner::default();
        assert_eq!(j.on_stop(stop), None);
        assert_eq!(
            j.on_signal(&cont(78, END, task(1, "x"))),
            None,
            "another process"
        );
        assert_eq!(
            j.on_signal(&cont(77, END + StopJoiner::WINDOW_NS + 1, task(1, "x"))),
            None,
            "too late to be its resumer"
        );
        assert_eq!(
            j.expire(END + StopJoiner::GRACE_NS),
            vec![],
            "still in its grace period"
        );
        let out = j.expire(END + StopJoiner::GRACE_NS + 1);
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .describe()
                .ends_with("resumed (no SIGCONT or SIGKILL seen)"),
            "{}",
            out[0].describe()
        );
    }

    #[test]
    fn ptrace_and_freezer_stops_pass_through_and_say_what_is_known() {
        let mut j = StopJoiner::default();
        let s = j
            .on_stop(Stop::from_record(
                1,
                &record(StopKind::Ptrace, 0, task(900, "gdb")),
            ))
            .expect("not held");
        assert_eq!(
            s.describe(),
            "stopped 15.2s: ptrace stop held by tracer pid 900 (gdb, uid 0); released by the tracer"
        );
        let s = j
            .on_stop(Stop::from_record(
                1,
                &record(StopKind::Freezer, 0, TaskId::default()),
            ))
            .expect("not held");
        assert!(
            s.describe().contains("cgroup freezer") && s.describe().contains("thawed"),
            "{}",
            s.describe()
        );
        let s = Stop::from_record(1, &record(StopKind::Signal, 0, TaskId::default()));
        assert!(s.describe().contains("before pausewatch attached"));
        let unknown_uid = TaskId {
            uid: u32::MAX,
            ..task(5, "sh")
        };
        assert_eq!(
            Actor::from_task_id(&unknown_uid).unwrap().describe(),
            "pid 5 (sh)"
        );
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
