//! The correlator: joins pause evidence (the timeline), leases and clock steps into incidents.
//!
//! Pause evidence reaches the agent after the pause ended, and the pieces of one pause (a
//! thread's episode, the process-wide stop with its sender) arrive microseconds to milliseconds
//! apart, so a pause that touches a lease is judged `SETTLE_NS` after its evidence arrived, or at
//! once when the holder reports something about its lease (it is running again, so everything
//! about its pause is in): a `lease_expired_during_pause` always comes before the
//! `acted_after_expiry` it led to.
use std::collections::VecDeque;

use super::{
    lease::{Accepted, Holding},
    lease::{DeclaredVerdict, HolderRef, LateAct, LeaseBook, LeaseError, Report, Scope, Verb},
    timeline::{Decomposition, Segment, Timeline},
    units::fmt_ns,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentKind {
    /// The holder was paused across its lease's deadline.
    LeaseExpiredDuringPause,
    /// An act or renew under a lease whose deadline had passed.
    ActedAfterExpiry,
    /// A pause used more than the configured share of what was left of the lease.
    LeaseAtRisk,
    /// A wall-clock step moved what the holder of a wall-clock lease believes its deadline is.
    ClockStepMovedDeadline,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 4] = [
        IncidentKind::LeaseExpiredDuringPause,
        IncidentKind::ActedAfterExpiry,
        IncidentKind::LeaseAtRisk,
        IncidentKind::ClockStepMovedDeadline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IncidentKind::LeaseExpiredDuringPause => "lease_expired_during_pause",
            IncidentKind::ActedAfterExpiry => "acted_after_expiry",
            IncidentKind::LeaseAtRisk => "lease_at_risk",
            IncidentKind::ClockStepMovedDeadline => "clock_step_moved_deadline",
        }
    }
}

/// One incident, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Unique within a run.
    pub id: u64,
    pub kind: IncidentKind,
    /// When it happened: the deadline that passed, the act, the clock step.
    pub ts_mono_ns: u64,
    pub lease: String,
    pub pid: u32,
    pub comm: String,
    pub token: Option<u64>,
    /// Whose pauses counted.
    pub scope: Scope,
    pub deadline_mono_ns: Option<u64>,
    /// The pause, split into its causes.
    pub pause: Option<Decomposition>,
    /// The thread whose pause it was (None: process-wide evidence).
    pub pause_tid: Option<u32>,
    /// Acted after expiry: what it did.
    pub action: Option<Verb>,
    pub newer_holder: Option<HolderRef>,
    /// Clock steps: how far the holder's idea of its deadline is off (positive: it believes it
    /// has more time than it has).
    pub holder_error_ns: Option<i64>,
    /// Declared leases: renewal times are unknown, the verdict rests on the pause's length.
    pub estimate: bool,
    /// A pause at risk: the share of the remaining lease it used.
    pub share_used: Option<f64>,
    /// Raised while the pause is still going on (the deadline passed and the holder was seen
    /// paused right then): what holds it. The whole pause is reported when it ends, in an
    /// incident that `follows` this one.
    pub ongoing: Option<String>,
    /// The live incident this one completes.
    pub follows: Option<u64>,
    pub message: String,
}

impl Incident {
    /// Episode ids the incident rests on.
    pub fn evidence(&self) -> Vec<u64> {
        self.pause
            .as_ref()
            .map(Decomposition::evidence)
            .unwrap_or_default()
    }
}

/// A pause that touched a lease, waiting for the rest of its evidence.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pid: u32,
    tid: Option<u32>,
    start: u64,
    end: u64,
    due: u64,
}

#[derive(Debug)]
pub struct Correlator {
    pub timeline: Timeline,
    pub leases: LeaseBook,
    pending: VecDeque<Pending>,
    next_incident: u64,
    /// `lease_at_risk` when a pause used more than this share of the remaining lease.
    pub at_risk_share: f64,
    /// Incidents raised, by kind (`IncidentKind::ALL` order).
    pub counts: [u64; 4],
    /// Pauses not judged because too many were waiting (a storm of pauses of lease holders).
    pub pending_dropped: u64,
}

fn holder(h: &Holding) -> String {
    match h.token {
        Some(t) => format!(
            "lease '{}' (token {t}) of pid {} ({})",
            h.name, h.pid, h.comm
        ),
        None => format!("lease '{}' of pid {} ({})", h.name, h.pid, h.comm),
    }
}

fn signed(ns: i64) -> String {
    let s = fmt_ns(ns.unsigned_abs());
    if ns < 0 {
        format!("-{s}")
    } else {
        format!("+{s}")
    }
}

impl Correlator {
    pub const SETTLE_NS: u64 = 200_000_000;
    const MAX_PENDING: usize = 4096;

    pub fn new(timeline_capacity: usize, max_leases: usize, at_risk_share: f64) -> Self {
        Self {
            timeline: Timeline::new(timeline_capacity),
            leases: LeaseBook::new(max_leases),
            pending: VecDeque::new(),
            next_incident: 0,
            at_risk_share,
            counts: [0; 4],
            pending_dropped: 0,
        }
    }

    /// Context for later decompositions (a retransmission, host steal): kept on the timeline,
    /// never judged as a pause.
    pub fn on_context(&mut self, seg: Segment) {
        self.timeline.push(seg);
    }

    /// New pause evidence at `now`.
    pub fn on_segment(&mut self, seg: Segment, now: u64) {
        let p = Pending {
            pid: seg.pid,
            tid: match seg.kind {
                super::timeline::SegmentKind::Thread { tid, .. } => Some(tid),
                _ => None,
            },
            start: seg.start_mono_ns,
            end: seg.end_mono_ns,
            due: now.saturating_add(Self::SETTLE_NS),
        };
        let host_wide = seg.host_wide();
        self.timeline.push(seg);
        // A host freeze paused every lease holder.
        let pids = if host_wide {
            self.leases.holder_pids()
        } else {
            vec![p.pid]
        };
        for pid in pids {
            let p = Pending { pid, ..p };
            if self
                .leases
                .concerned_by(p.pid, p.tid, p.start, p.end)
                .is_empty()
            {
                continue;
            }
            if self.pending.len() >= Self::MAX_PENDING {
                self.pending.pop_front();
                self.pending_dropped += 1;
            }
            self.pending.push_back(p);
        }
    }

    /// Judges the waiting pauses that `ready` selects, in arrival order.
    fn judge_where(&mut self, ready: impl Fn(&Pending) -> bool) -> Vec<Incident> {
        let (now, wait): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| ready(p));
        self.pending = wait.into();
        now.into_iter().flat_map(|p| self.judge(p)).collect()
    }

    /// Judges the pauses whose evidence has settled by `now`.
    pub fn due(&mut self, now: u64) -> Vec<Incident> {
        self.judge_where(|p| p.due <= now)
    }

    /// Judges every pause of `pid` now (it is running again and reporting).
    pub fn flush_pid(&mut self, pid: u32) -> Vec<Incident> {
        self.judge_where(|p| p.pid == pid)
    }

    /// Everything still waiting (at exit).
    pub fn flush_all(&mut self) -> Vec<Incident> {
        self.judge_where(|_| true)
    }

    /// A new incident, counted by kind.
    fn incident(&mut self, kind: IncidentKind, ts: u64, h: &Holding, message: String) -> Incident {
        self.counts[kind as usize] += 1;
        self.uncounted_incident(kind, ts, h, message)
    }

    /// A new incident that its kind's count leaves out (a live one, counted when completed).
    fn uncounted_incident(
        &mut self,
        kind: IncidentKind,
        ts: u64,
        h: &Holding,
        message: String,
    ) -> Incident {
        self.next_incident += 1;
        Incident {
            id: self.next_incident,
            kind,
            ts_mono_ns: ts,
            lease: h.name.clone(),
            pid: h.pid,
            comm: h.comm.clone(),
            token: h.token,
            scope: h.scope,
            deadline_mono_ns: None,
            pause: None,
            pause_tid: None,
            action: None,
            newer_holder: None,
            holder_error_ns: None,
            estimate: false,
            share_used: None,
            ongoing: None,
            follows: None,
            message,
        }
    }

    /// Leases whose deadline passed by `now` while their holder is paused right now: raised at
    /// once, not when the pause ends, so an operator sees the lease lost while the holder still
    /// believes it holds it. `paused` says, for a holding, whether the threads whose pauses
    /// count are paused now: (the thread, what holds it). Each deadline is checked once, as it
    /// passes. Live incidents are not counted by kind: the incident that completes them is.
    pub fn expired_now(
        &mut self,
        now: u64,
        mut paused: impl FnMut(&Holding) -> Option<(Option<u32>, String)>,
    ) -> Vec<Incident> {
        let mut out = Vec::new();
        for (key, deadline) in self.leases.take_passed_unchecked(now) {
            let Some(h) = self.leases.get(key).cloned() else {
                continue;
            };
            let Some((tid, why)) = paused(&h) else {
                continue;
            };
            let msg = format!(
                "{} expired {} ago and {} is still paused: {why}; the whole pause is reported when it ends",
                holder(&h),
                fmt_ns(now.saturating_sub(deadline)),
                Self::whose(tid),
            );
            let mut i =
                self.uncounted_incident(IncidentKind::LeaseExpiredDuringPause, deadline, &h, msg);
            i.deadline_mono_ns = Some(deadline);
            i.pause_tid = tid;
            i.ongoing = Some(why);
            self.leases.note_live_incident(key, deadline, i.id);
            out.push(i);
        }
        out
    }

    /// The whole pause around `t` for holding `h` (falls back to the evidence's own interval).
    fn pause(&self, h: &Holding, p: &Pending, t: u64) -> (Option<u32>, Decomposition) {
        let (tid, s, e) = self
            .timeline
            .pause_around(p.pid, h.scope.tid(), t)
            .unwrap_or((p.tid, p.start, p.end));
        (tid, self.timeline.decompose(p.pid, tid, s, e))
    }

    fn whose(tid: Option<u32>) -> String {
        tid.map_or("the process".to_string(), |t| format!("thread {t}"))
    }

    fn judge(&mut self, p: Pending) -> Vec<Incident> {
        let mut out = Vec::new();
        for key in self.leases.concerned_by(p.pid, p.tid, p.start, p.end) {
            let Some(h) = self.leases.get(key).cloned() else {
                continue;
            };
            if h.declared_renew_every_ns.is_some() {
                let (tid, d) = self.pause(&h, &p, p.start + (p.end - p.start) / 2);
                let Some(verdict) = self
                    .leases
                    .take_declared(key, d.start_mono_ns, d.end_mono_ns)
                else {
                    continue;
                };
                let (kind, what) = match verdict {
                    DeclaredVerdict::Expired => (
                        IncidentKind::LeaseExpiredDuringPause,
                        "is at least its TTL: the lease expired during it, whenever it was last renewed",
                    ),
                    DeclaredVerdict::AtRisk => (
                        IncidentKind::LeaseAtRisk,
                        "is at least TTL - renewal period: the lease expired during it if the last renewal was early enough",
                    ),
                };
                let msg = format!(
                    "declared {} (TTL {}): a pause of {} {what}; {}",
                    holder(&h),
                    fmt_ns(h.ttl_ns),
                    Self::whose(tid),
                    d.describe()
                );
                let mut i = self.incident(kind, d.end_mono_ns, &h, msg);
                i.estimate = true;
                i.pause_tid = tid;
                i.pause = Some(d);
                out.push(i);
                continue;
            }
            let expired = self.leases.take_expired_in(key, p.start, p.end);
            for deadline in &expired {
                let (tid, d) = self.pause(&h, &p, *deadline);
                let follows = self.leases.live_incident(key, *deadline);
                let msg = format!(
                    "{} expired during a pause of {}: {}; it resumed {} after the deadline{}",
                    holder(&h),
                    Self::whose(tid),
                    d.describe(),
                    fmt_ns(d.end_mono_ns.saturating_sub(*deadline)),
                    follows.map_or(String::new(), |id| format!(
                        " (reported live as incident {id})"
                    ))
                );
                let mut i =
                    self.incident(IncidentKind::LeaseExpiredDuringPause, *deadline, &h, msg);
                i.follows = follows;
                i.deadline_mono_ns = Some(*deadline);
                i.pause_tid = tid;
                i.pause = Some(d);
                out.push(i);
            }
            if !expired.is_empty() {
                continue;
            }
            let (tid, d) = self.pause(&h, &p, p.start + (p.end - p.start) / 2);
            if let Some(deadline) =
                self.leases
                    .take_at_risk(key, d.start_mono_ns, d.end_mono_ns, self.at_risk_share)
            {
                let left = deadline - d.start_mono_ns;
                let share = d.duration_ns() as f64 / left as f64;
                let msg = format!(
                    "a pause of {} used {:.0}% of the {} left on {}: {}",
                    Self::whose(tid),
                    share * 100.0,
                    fmt_ns(left),
                    holder(&h),
                    d.describe()
                );
                let mut i = self.incident(IncidentKind::LeaseAtRisk, d.end_mono_ns, &h, msg);
                i.deadline_mono_ns = Some(deadline);
                i.share_used = Some(share);
                i.pause_tid = tid;
                i.pause = Some(d);
                out.push(i);
            }
        }
        out
    }

    /// A lease report (after `flush_pid` for its pid). An act or renew past the deadline is
    /// an `acted_after_expiry` incident.
    pub fn report(&mut self, r: &Report) -> Result<(Accepted, Option<Incident>), LeaseError> {
        let (acc, late) = self.leases.report(r)?;
        Ok((acc, late.map(|l| self.late_act(l))))
    }

    fn late_act(&mut self, l: LateAct) -> Incident {
        let newer = match &l.newer_holder {
            Some(n) => match n.token {
                Some(t) => format!("; pid {} ({}) has held it since, token {t}", n.pid, n.comm),
                None => format!("; pid {} ({}) has held it since", n.pid, n.comm),
            },
            None => String::new(),
        };
        let msg = format!(
            "{} reported '{}' {} after the lease expired{newer}",
            holder(&l.holding),
            l.action.name(),
            fmt_ns(l.ts_mono_ns - l.deadline_mono_ns)
        );
        let mut i = self.incident(
            IncidentKind::ActedAfterExpiry,
            l.ts_mono_ns,
            &l.holding,
            msg,
        );
        i.deadline_mono_ns = Some(l.deadline_mono_ns);
        i.action = Some(l.action);
        i.newer_holder = l.newer_holder;
        i
    }

    /// The wall clock stepped by `step_ns` at `now`.
    pub fn on_clock_step(&mut self, now: u64, step_ns: i64) -> Vec<Incident> {
        self.leases
            .on_clock_step(now, step_ns)
            .into_iter()
            .map(|m| {
                let err = m.holder_error_ns;
                let belief = if err >= 0 {
                    format!("{} more than it has", fmt_ns(err.unsigned_abs()))
                } else {
                    format!("{} less than it has", fmt_ns(err.unsigned_abs()))
                };
                let msg = format!(
                    "the wall clock stepped {} while {} ran on a wall-clock deadline: the holder now believes it has {belief}",
                    signed(step_ns),
                    holder(&m.holding)
                );
                let mut i =
                    self.incident(IncidentKind::ClockStepMovedDeadline, now, &m.holding, msg);
                i.deadline_mono_ns = Some(m.deadline_mono_ns);
                i.holder_error_ns = Some(err);
                i
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::timeline::{Cause, SegmentKind};

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn rep(ts: u64, verb: Verb, pid: u32, tid: Option<u32>) -> Report {
        Report {
            ts_mono_ns: ts,
            verb,
            name: "leader".into(),
            pid,
            comm: format!("client{pid}"),
            tid,
            ttl_ns: Some(2 * S),
            token: Some(u64::from(pid) + 32),
            expires_wall_ns: None,
            wall_offset_ns: 0,
        }
    }

    fn thread(id: u64, pid: u32, tid: u32, start: u64, stopped: u64, runq: u64) -> Segment {
        Segment {
            id,
            pid,
            start_mono_ns: start,
            end_mono_ns: start + stopped + runq,
            kind: SegmentKind::Thread {
                tid,
                blocked_ns: 0,
                blocked_why: None,
                stopped_ns: stopped,
                runq_ns: runq,
            },
        }
    }

    fn sigstop(id: u64, pid: u32, start: u64, end: u64) -> Segment {
        Segment {
            id,
            pid,
            start_mono_ns: start,
            end_mono_ns: end,
            kind: SegmentKind::Stop {
                cause: "SIGSTOP from pid 4242 (bash, uid 0)".into(),
            },
        }
    }

    fn corr() -> Correlator {
        Correlator::new(1000, 100, 0.5)
    }

    /// The deadline passes while the holder is stopped: reported at once, then completed (and
    /// counted once) when the pause ends.
    #[test]
    fn expiry_while_still_paused_is_reported_live_then_completed() {
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, Some(11))).unwrap();
        let mut asked = Vec::new();
        let mut paused = |h: &Holding| {
            asked.push(h.pid);
            Some((
                h.scope.tid(),
                "stopped: SIGSTOP from pid 4242 (bash, uid 0)".to_string(),
            ))
        };
        assert!(
            c.expired_now(11 * S, &mut paused).is_empty(),
            "deadline not yet passed"
        );
        let live = c.expired_now(12 * S + 30 * MS, &mut paused);
        assert_eq!(live.len(), 1);
        let l = &live[0];
        assert_eq!(l.kind, IncidentKind::LeaseExpiredDuringPause);
        assert_eq!((l.ts_mono_ns, l.deadline_mono_ns), (12 * S, Some(12 * S)));
        assert_eq!(l.pause_tid, Some(11));
        assert!(l.pause.is_none());
        assert!(l.ongoing.as_deref().unwrap().contains("SIGSTOP"), "{l:?}");
        assert!(l.message.contains("expired 30.0ms ago"), "{}", l.message);
        assert!(
            c.expired_now(13 * S, &mut paused).is_empty(),
            "each deadline once"
        );
        assert_eq!(asked, vec![1]);
        assert_eq!(c.counts[IncidentKind::LeaseExpiredDuringPause as usize], 0);
        // The pause ends: the whole of it, completing the live incident.
        c.on_segment(thread(1, 1, 11, 10_500 * MS, 4 * S, 100 * MS), 14_600 * MS);
        c.on_segment(sigstop(2, 1, 10_500 * MS, 14_500 * MS), 14_600 * MS);
        let done = c.due(15 * S);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].follows, Some(l.id));
        assert!(done[0].pause.is_some() && done[0].ongoing.is_none());
        assert!(
            done[0]
                .message
                .ends_with(&format!("(reported live as incident {})", l.id))
        );
        assert_eq!(c.counts[IncidentKind::LeaseExpiredDuringPause as usize], 1);
    }

    /// A holder running (or not paused) when its deadline passes has simply not renewed: no
    /// incident; nor for released or declared leases, whose deadline is unknown.
    #[test]
    fn no_live_incident_unless_the_holder_is_paused() {
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, Some(11))).unwrap();
        c.report(&rep(10 * S, Verb::Acquire, 2, Some(21))).unwrap();
        c.report(&rep(11 * S, Verb::Release, 2, Some(21))).unwrap();
        c.leases.declare("declared", 3, 2 * S, S, 10 * S);
        let mut asked = Vec::new();
        let live = c.expired_now(20 * S, |h| {
            asked.push(h.pid);
            None
        });
        assert!(live.is_empty());
        assert_eq!(asked, vec![1], "only the held, reported lease is checked");
    }

    /// DDIA figure 9-4: the holder is stopped across its deadline, another client takes over,
    /// the first resumes and acts with its old token.
    #[test]
    fn the_ddia_lease_bug() {
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, Some(11))).unwrap();
        // SIGSTOP at 10.5 s for 4 s, 100 ms run-queue wait after SIGCONT.
        c.on_segment(thread(1, 1, 11, 10_500 * MS, 4 * S, 100 * MS), 14_600 * MS);
        c.on_segment(sigstop(2, 1, 10_500 * MS, 14_500 * MS), 14_600 * MS);
        c.report(&rep(13 * S, Verb::Acquire, 2, Some(21))).unwrap();
        assert!(c.due(14_700 * MS).is_empty(), "still settling");
        // The first client reports act right after resuming: its pause is judged first.
        let first = c.flush_pid(1);
        assert_eq!(first.len(), 1);
        let e = &first[0];
        assert_eq!(e.kind, IncidentKind::LeaseExpiredDuringPause);
        assert_eq!(e.ts_mono_ns, 12 * S);
        assert_eq!(e.pause_tid, Some(11));
        let d = e.pause.as_ref().unwrap();
        assert_eq!((d.start_mono_ns, d.end_mono_ns), (10_500 * MS, 14_600 * MS));
        let top = d.main_cause().unwrap();
        assert_eq!(top.cause, Cause::Stopped);
        assert_eq!(
            top.detail.as_deref(),
            Some("SIGSTOP from pid 4242 (bash, uid 0)")
        );
        assert_eq!(e.evidence(), vec![1, 2]);
        assert!(
            e.message.contains("resumed 2.60s after the deadline"),
            "{}",
            e.message
        );
        let (acc, late) = c.report(&rep(14_700 * MS, Verb::Act, 1, Some(11))).unwrap();
        assert_eq!(acc.expired_ago_ns, Some(2_700 * MS));
        let late = late.unwrap();
        assert_eq!(late.kind, IncidentKind::ActedAfterExpiry);
        let newer = late.newer_holder.unwrap();
        assert_eq!((newer.pid, newer.token), (2, Some(34)));
        assert!(c.due(20 * S).is_empty(), "each incident once");
        assert_eq!(c.counts, [1, 1, 0, 0]);
    }

    /// A recording of the live stale-write demo (its lease, stop, pause and incident lines),
    /// replayed into the model: the same incidents, with the same deadlines and causes.
    /// A VM freeze stops the holder without any tracepoint firing for it: the control
    /// sleeper's unexplained lateness is the evidence, and it concerns every process.
    #[test]
    fn a_host_freeze_across_the_deadline_is_the_cause() {
        use crate::model::hiccup::{HostPause, Wake};
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, Some(11))).unwrap();
        let frozen = HostPause::judge(
            7,
            &Wake {
                woke_mono_ns: 13_500 * MS,
                lateness_ns: 2 * S,
                runq_ns: 0,
                steal_ns: 0,
                suspended_ns: 0,
                cpu: 0,
            },
            5 * MS,
        );
        c.on_segment(Segment::from_host_pause(&frozen), 13_500 * MS);
        // After the thaw the holder waits 100 ms for a CPU like everything else.
        c.on_segment(thread(8, 1, 11, 13_500 * MS, 0, 100 * MS), 13_600 * MS);
        let got = c.flush_pid(1);
        assert_eq!(got.len(), 1, "{got:#?}");
        let e = &got[0];
        assert_eq!(e.kind, IncidentKind::LeaseExpiredDuringPause);
        let d = e.pause.as_ref().unwrap();
        assert_eq!((d.start_mono_ns, d.end_mono_ns), (11_500 * MS, 13_600 * MS));
        let top = d.main_cause().unwrap();
        assert_eq!((top.cause, top.duration_ns), (Cause::HostFreeze, 2 * S));
        assert!(
            top.detail
                .as_deref()
                .unwrap()
                .starts_with("host freeze 2.00s")
        );
        assert_eq!(e.evidence(), vec![7, 8]);
    }

    /// Feeds a recording's lease, stop and clock lines to a correlator, as the agent fed it
    /// the reports, records and clock steps they were written from; returns the incidents it
    /// finds and the incident lines of the recording.
    fn replay_recording(text: &str) -> (Vec<Incident>, Vec<serde_json::Value>) {
        use serde_json::Value;
        let u = |v: &Value| v.as_u64();
        let mut c = corr();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            match v["type"].as_str().unwrap() {
                "lease" => {
                    let verb = Verb::ALL
                        .into_iter()
                        .find(|x| v["event"] == x.name())
                        .unwrap();
                    let pid = u(&v["pid"]).unwrap() as u32;
                    got.extend(c.flush_pid(pid));
                    let r = Report {
                        ts_mono_ns: u(&v["ts_mono_ns"]).unwrap(),
                        verb,
                        name: v["lease"].as_str().unwrap().into(),
                        pid,
                        comm: v["comm"].as_str().unwrap().into(),
                        tid: u(&v["tid"]).map(|t| t as u32),
                        ttl_ns: u(&v["ttl_ns"]),
                        token: u(&v["token"]),
                        expires_wall_ns: v["expires_wall_ns"].as_i64(),
                        // The offset the agent read when the message came: what maps the
                        // wall-clock expiry to the deadline it wrote.
                        wall_offset_ns: match (
                            v["expires_wall_ns"].as_i64(),
                            v["deadline_mono_ns"].as_i64(),
                        ) {
                            (Some(w), Some(d)) => i128::from(w) - i128::from(d),
                            _ => 0,
                        },
                    };
                    got.extend(c.report(&r).unwrap().1);
                }
                "stop" => {
                    let by = &v["stopped_by"];
                    let end = u(&v["end_mono_ns"]).unwrap();
                    let seg = Segment {
                        id: u(&v["id"]).unwrap(),
                        pid: u(&v["pid"]).unwrap() as u32,
                        start_mono_ns: u(&v["start_mono_ns"]).unwrap(),
                        end_mono_ns: end,
                        kind: SegmentKind::Stop {
                            cause: format!(
                                "{} from pid {} ({}, uid {})",
                                v["signal"].as_str().unwrap(),
                                by["pid"],
                                by["comm"].as_str().unwrap(),
                                by["uid"]
                            ),
                        },
                    };
                    c.on_segment(seg, end);
                }
                "clock" if v["event"] == "sync" => {}
                "clock" if v["event"] == "step" => {
                    got.extend(c.on_clock_step(
                        u(&v["ts_mono_ns"]).unwrap(),
                        v["step_ns"].as_i64().unwrap(),
                    ));
                }
                "incident" => want.push(v),
                other => panic!("unexpected line type {other}"),
            }
        }
        got.extend(c.flush_all());
        (got, want)
    }

    /// The incidents found again from a recording are the ones the agent wrote, field by field.
    fn assert_same_incidents(got: &[Incident], want: &[serde_json::Value]) {
        let u = |v: &serde_json::Value| v.as_u64();
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(w["kind"], g.kind.name());
            assert_eq!(u(&w["pid"]), Some(u64::from(g.pid)));
            assert_eq!(u(&w["deadline_mono_ns"]), g.deadline_mono_ns);
            assert_eq!(u(&w["token"]), g.token);
            assert_eq!(w["holder_error_ns"].as_i64(), g.holder_error_ns);
            let cause = g.pause.as_ref().and_then(|d| d.main_cause()).map(|p| {
                format!(
                    "{}: {}",
                    p.cause.name(),
                    p.detail.clone().unwrap_or_default()
                )
            });
            assert_eq!(w["cause"].as_str().map(str::to_string), cause);
            assert_eq!(
                u(&w["newer_holder"]["pid"]),
                g.newer_holder.as_ref().map(|h| u64::from(h.pid))
            );
            if let Some(d) = &g.pause {
                // The decomposition covers the pause exactly.
                assert_eq!(
                    d.parts.iter().map(|p| p.duration_ns).sum::<u64>(),
                    d.end_mono_ns - d.start_mono_ns,
                    "{d:#?}"
                );
                assert_eq!(
                    u(&w["pause"]["duration_ns"]),
                    Some(d.end_mono_ns - d.start_mono_ns)
                );
            }
        }
    }

    /// The demo's stale write (`cargo xtask demo`, scenario stale-write), recorded.
    #[test]
    fn replays_a_recorded_stale_write() {
        let (got, want) = replay_recording(include_str!("../../fixtures/stale-write.ndjson"));
        assert_eq!(
            got.iter().map(|i| i.kind.name()).collect::<Vec<_>>(),
            ["lease_expired_during_pause", "acted_after_expiry"]
        );
        assert_same_incidents(&got, &want);
    }

    /// The demo's clock steps (scenario clock-step: back 5 s, then forward 5 s, under a
    /// wall-clock lease), recorded: one incident per step, with opposite errors.
    #[test]
    fn replays_recorded_clock_steps() {
        let (got, want) = replay_recording(include_str!("../../fixtures/clock-step.ndjson"));
        assert_eq!(
            got.iter().map(|i| i.kind.name()).collect::<Vec<_>>(),
            ["clock_step_moved_deadline", "clock_step_moved_deadline"]
        );
        assert!(got[0].holder_error_ns.unwrap() > 4_900_000_000);
        assert!(got[1].holder_error_ns.unwrap() < -4_900_000_000);
        assert_same_incidents(&got, &want);
    }

    #[test]
    fn no_incident_without_a_pause_across_the_deadline() {
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, Some(11))).unwrap();
        // Ended before the deadline (and used less than half of the time left).
        c.on_segment(thread(1, 1, 11, 10 * S, 500 * MS, 0), 11 * S);
        // Another process's pause across the deadline.
        c.on_segment(sigstop(2, 9, 11 * S, 13 * S), 13 * S);
        // Another thread of the holder (the lease is the reporting thread's).
        c.on_segment(thread(3, 1, 12, 11 * S, 2 * S, 0), 13 * S);
        assert!(c.due(20 * S).is_empty());
        // Released, then paused across the old deadline.
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, None)).unwrap();
        c.report(&rep(11 * S, Verb::Release, 1, None)).unwrap();
        c.on_segment(sigstop(1, 1, 11_500 * MS, 13 * S), 13 * S);
        assert!(c.due(20 * S).is_empty());
        assert_eq!(c.counts, [0; 4]);
    }

    #[test]
    fn at_risk_when_most_of_the_remaining_lease_went() {
        let mut c = corr();
        c.report(&rep(10 * S, Verb::Acquire, 1, None)).unwrap();
        c.on_segment(thread(1, 1, 11, 10_200 * MS, 0, 1_500 * MS), 12 * S);
        let i = c.due(12_500 * MS);
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].kind, IncidentKind::LeaseAtRisk);
        assert!((i[0].share_used.unwrap() - 1.5 / 1.8).abs() < 1e-9);
        assert_eq!(i[0].pause_tid, Some(11));
    }

    #[test]
    fn declared_lease_from_pause_length() {
        let mut c = corr();
        c.leases.declare("db", 1, 2 * S, 500 * MS, 0);
        c.on_segment(sigstop(1, 1, 5 * S, 8 * S), 8 * S);
        let i = c.flush_all();
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].kind, IncidentKind::LeaseExpiredDuringPause);
        assert!(i[0].estimate);
        assert_eq!(i[0].pause_tid, None);
    }

    #[test]
    fn clock_step_under_a_wall_clock_lease() {
        let mut c = corr();
        let mut r = rep(S, Verb::Acquire, 1, None);
        r.ttl_ns = None;
        r.expires_wall_ns = Some(1_000 * S as i64);
        r.wall_offset_ns = 990 * S as i128;
        c.report(&r).unwrap();
        let i = c.on_clock_step(2 * S, -5 * S as i64);
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].holder_error_ns, Some(5 * S as i64));
        assert!(
            i[0].message.contains("stepped -5.00s") && i[0].message.contains("5.00s more"),
            "{}",
            i[0].message
        );
    }
}
