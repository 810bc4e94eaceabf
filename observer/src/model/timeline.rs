//! The pause timeline: every piece of pause evidence on one monotonic time axis, so that for any
//! interval of any thread pausewatch can say why it was not running, in parts that sum exactly
//! to the interval ("15.2s = stopped 15.0s (SIGSTOP from pid 4242 (bash, uid 0)) + runq 200ms").
//!
//! Evidence arrives after the fact (a stop is streamed when it ends), so questions are asked of
//! what has arrived; the agent lets evidence settle before asking (see `correlate`).
use std::collections::VecDeque;

use observer_common::Component;

use super::{episode::Episode, gc::GcPause, stop::Stop, units::fmt_ns};

/// What one piece of evidence is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// One thread off the CPU involuntarily. The kernel counts the components of an episode,
    /// and an episode is a sleep (blocked or stopped) followed by the run-queue wait after the
    /// wakeup (or a run-queue wait alone, after preemption), so their order is known.
    Thread {
        tid: u32,
        blocked_ns: u64,
        /// What the blocked component was ("major_fault at 0x… in /data/x").
        blocked_why: Option<String>,
        stopped_ns: u64,
        runq_ns: u64,
    },
    /// The whole process stopped (SIGSTOP and friends, ptrace, freezer); `cause` names who.
    Stop { cause: String },
    /// A runtime stop-the-world; `cause` says which and why.
    Gc { cause: String },
    /// The whole host stopped (VM freeze, suspend): every process on it paused. Its `pid` is
    /// `HOST_PID`.
    Host { cause: String },
    /// Not a reason a thread was off the CPU, but what else happened to the process meanwhile:
    /// a retransmission on one of its sockets (over the delay it is estimated to have added),
    /// or hypervisor steal on the host (`HOST_PID`). Listed beside a decomposition.
    Context { what: String },
}

/// The `pid` of host-wide segments, which concern every process.
pub const HOST_PID: u32 = 0;

/// One piece of evidence on the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The episode id (shared sequence of episodes, stops and GC pauses).
    pub id: u64,
    pub pid: u32,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub kind: SegmentKind,
}

impl Segment {
    pub fn from_episode(e: &Episode) -> Self {
        Self {
            id: e.id,
            pid: e.pid,
            start_mono_ns: e.start_mono_ns,
            end_mono_ns: e.end_mono_ns(),
            kind: SegmentKind::Thread {
                tid: e.tid,
                blocked_ns: e.component(Component::Blocked),
                blocked_why: e.blocked.as_ref().map(|b| b.describe()),
                stopped_ns: e.component(Component::Stopped),
                runq_ns: e.component(Component::Runq),
            },
        }
    }

    pub fn from_stop(s: &Stop) -> Self {
        Self {
            id: s.id,
            pid: s.pid,
            start_mono_ns: s.start_mono_ns,
            end_mono_ns: s.end_mono_ns(),
            kind: SegmentKind::Stop { cause: s.cause() },
        }
    }

    pub fn from_gc(g: &GcPause) -> Self {
        Self {
            id: g.id,
            pid: g.pid,
            start_mono_ns: g.start_mono_ns,
            end_mono_ns: g.end_mono_ns(),
            kind: SegmentKind::Gc {
                cause: format!("{} {}", g.runtime_name(), g.cause()),
            },
        }
    }

    pub fn from_host_pause(h: &super::hiccup::HostPause) -> Self {
        Self {
            id: h.id,
            pid: HOST_PID,
            start_mono_ns: h.start_mono_ns,
            end_mono_ns: h.end_mono_ns(),
            kind: SegmentKind::Host {
                cause: h.describe(),
            },
        }
    }

    pub fn host_wide(&self) -> bool {
        matches!(self.kind, SegmentKind::Host { .. })
    }

    /// Context, not a pause.
    pub fn is_context(&self) -> bool {
        matches!(self.kind, SegmentKind::Context { .. })
    }

    fn tid(&self) -> Option<u32> {
        match self.kind {
            SegmentKind::Thread { tid, .. } => Some(tid),
            _ => None,
        }
    }

    /// Process-wide evidence holds every thread.
    pub fn process_wide(&self) -> bool {
        self.tid().is_none()
    }

    /// Counts for `tid` (None: process-wide evidence only). Context never does.
    fn concerns(&self, pid: u32, tid: Option<u32>) -> bool {
        !self.is_context()
            && (self.host_wide() || (self.pid == pid && (self.process_wide() || self.tid() == tid)))
    }

    fn overlaps(&self, t0: u64, t1: u64) -> bool {
        self.start_mono_ns < t1 && self.end_mono_ns > t0
    }

    /// The layers this segment contributes: (start, end, precedence, cause, detail, id).
    /// A host freeze explains time before anything inside the host; then process-wide stops,
    /// then GC, then a thread's own components.
    fn layers(&self) -> Vec<Layer> {
        let (s, e) = (self.start_mono_ns, self.end_mono_ns);
        match &self.kind {
            SegmentKind::Host { cause } => {
                vec![Layer::new(s, e, 0, Cause::HostFreeze, Some(cause), self.id)]
            }
            SegmentKind::Stop { cause } => {
                vec![Layer::new(s, e, 1, Cause::Stopped, Some(cause), self.id)]
            }
            SegmentKind::Gc { cause } => vec![Layer::new(s, e, 2, Cause::Gc, Some(cause), self.id)],
            SegmentKind::Context { .. } => Vec::new(),
            SegmentKind::Thread {
                blocked_ns,
                blocked_why,
                stopped_ns,
                runq_ns: _,
                ..
            } => {
                let blocked_end = s.saturating_add(*blocked_ns).min(e);
                let stopped_end = blocked_end.saturating_add(*stopped_ns).min(e);
                vec![
                    Layer::new(
                        s,
                        blocked_end,
                        3,
                        Cause::Blocked,
                        blocked_why.as_ref(),
                        self.id,
                    ),
                    Layer::new(blocked_end, stopped_end, 3, Cause::Stopped, None, self.id),
                    Layer::new(stopped_end, e, 3, Cause::Runq, None, self.id),
                ]
            }
        }
    }
}

/// Why a thread was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The whole host stopped (VM freeze, suspend).
    HostFreeze,
    Stopped,
    Gc,
    Blocked,
    Runq,
    /// Not paused: running, or waiting voluntarily (sleeping on a socket, a timer, a lock).
    NotPaused,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::HostFreeze => "host_freeze",
            Cause::Stopped => "stopped",
            Cause::Gc => "gc",
            Cause::Blocked => "blocked",
            Cause::Runq => "runq",
            Cause::NotPaused => "not_paused",
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    start: u64,
    end: u64,
    precedence: u8,
    cause: Cause,
    detail: Option<String>,
    id: u64,
}

impl Layer {
    fn new(
        start: u64,
        end: u64,
        precedence: u8,
        cause: Cause,
        d: Option<&String>,
        id: u64,
    ) -> Self {
        Self {
            start,
            end,
            precedence,
            cause,
            detail: d.cloned(),
            id,
        }
    }
}

/// One part of a decomposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub cause: Cause,
    pub duration_ns: u64,
    /// Who or what, where the evidence says ("SIGSTOP from pid 4242 (bash, uid 0)").
    pub detail: Option<String>,
    /// The evidence this part rests on (episode ids).
    pub evidence: Vec<u64>,
}

/// An interval split into its causes; the parts sum exactly to `end − start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decomposition {
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    /// Largest first.
    pub parts: Vec<Part>,
    /// What else happened to the process meanwhile (retransmissions on its sockets, host
    /// steal), oldest first; at most `MAX_CONTEXT`.
    pub context: Vec<String>,
}

/// Context lines kept per decomposition.
pub const MAX_CONTEXT: usize = 8;

impl Decomposition {
    pub fn duration_ns(&self) -> u64 {
        self.end_mono_ns - self.start_mono_ns
    }

    /// The part that explains the most paused time (None: nothing paused).
    pub fn main_cause(&self) -> Option<&Part> {
        self.parts.iter().find(|p| p.cause != Cause::NotPaused)
    }

    /// Every episode id the parts rest on.
    pub fn evidence(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .parts
            .iter()
            .flat_map(|p| p.evidence.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// "15.2s = stopped 15.0s (SIGSTOP from pid 4242 (bash, uid 0)) + runq 200ms"
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| match &p.detail {
                Some(d) => format!("{} {} ({d})", p.cause.name(), fmt_ns(p.duration_ns)),
                None => format!("{} {}", p.cause.name(), fmt_ns(p.duration_ns)),
            })
            .collect();
        let mut s = format!("{} = {}", fmt_ns(self.duration_ns()), parts.join(" + "));
        if !self.context.is_empty() {
            s.push_str("; meanwhile: ");
            s.push_str(&self.context.join("; "));
        }
        s
    }
}

/// Recent evidence of every process, oldest first, bounded in count.
#[derive(Debug)]
pub struct Timeline {
    segments: VecDeque<Segment>,
    capacity: usize,
    /// Segments dropped to stay within `capacity` (questions about older time see less).
    pub forgotten: u64,
}

impl Timeline {
    /// At about 120 bytes a segment, the default 65,536 keep the timeline under 10 MB.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    pub fn new(capacity: usize) -> Self {
        Self {
            segments: VecDeque::new(),
            capacity: capacity.max(1),
            forgotten: 0,
        }
    }

    pub fn push(&mut self, s: Segment) {
        if self.segments.len() >= self.capacity {
            self.segments.pop_front();
            self.forgotten += 1;
        }
        self.segments.push_back(s);
    }

    /// Forgets evidence that ended before `mono_ns`.
    pub fn forget_before(&mut self, mono_ns: u64) {
        let before = self.segments.len();
        self.segments.retain(|s| s.end_mono_ns >= mono_ns);
        self.forgotten += (before - self.segments.len()) as u64;
    }

    /// Segments held (bounded by the capacity).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.segments.len()
    }

    fn concerning(&self, pid: u32, tid: Option<u32>) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(move |s| s.concerns(pid, tid))
    }

    /// Why thread `tid` of `pid` (None: the process as a whole, process-wide evidence only) was
    /// not running in [t0, t1). Time no evidence covers is `not_paused`.
    pub fn decompose(&self, pid: u32, tid: Option<u32>, t0: u64, t1: u64) -> Decomposition {
        let t1 = t1.max(t0);
        let layers: Vec<Layer> = self
            .concerning(pid, tid)
            .filter(|s| s.overlaps(t0, t1))
            .flat_map(Segment::layers)
            .filter(|l| l.start < l.end)
            .map(|mut l| {
                l.start = l.start.clamp(t0, t1);
                l.end = l.end.clamp(t0, t1);
                l
            })
            .collect();
        let mut edges: Vec<u64> = layers.iter().flat_map(|l| [l.start, l.end]).collect();
        edges.extend([t0, t1]);
        edges.sort_unstable();
        edges.dedup();
        let mut parts: Vec<Part> = Vec::new();
        for w in edges.windows(2) {
            let (a, b) = (w[0], w[1]);
            let top = layers
                .iter()
                .filter(|l| l.start <= a && l.end >= b)
                .min_by_key(|l| (l.precedence, l.id));
            let (cause, detail, id) = match top {
                Some(l) => (l.cause, l.detail.clone(), Some(l.id)),
                None => (Cause::NotPaused, None, None),
            };
            match parts
                .iter_mut()
                .find(|p| p.cause == cause && p.detail == detail)
            {
                Some(p) => {
                    p.duration_ns += b - a;
                    if let Some(id) = id
                        && !p.evidence.contains(&id)
                    {
                        p.evidence.push(id);
                    }
                }
                None => parts.push(Part {
                    cause,
                    duration_ns: b - a,
                    detail,
                    evidence: id.into_iter().collect(),
                }),
            }
        }
        parts.retain(|p| p.duration_ns > 0);
        parts.sort_by(|x, y| {
            y.duration_ns
                .cmp(&x.duration_ns)
                .then(x.cause.cmp(&y.cause))
        });
        let mut context: Vec<String> = self
            .segments
            .iter()
            .filter(|s| s.is_context() && (s.pid == pid || s.pid == HOST_PID))
            .filter(|s| {
                s.overlaps(t0, t1)
                    || (s.start_mono_ns == s.end_mono_ns && (t0..t1).contains(&s.start_mono_ns))
            })
            .filter_map(|s| match &s.kind {
                SegmentKind::Context { what } => Some(what.clone()),
                _ => None,
            })
            .collect();
        if context.len() > MAX_CONTEXT {
            let more = context.len() - (MAX_CONTEXT - 1);
            context.truncate(MAX_CONTEXT - 1);
            context.push(format!("{more} more"));
        }
        Decomposition {
            start_mono_ns: t0,
            end_mono_ns: t1,
            parts,
            context,
        }
    }

    /// The pause of thread `tid` of `pid` that contains instant `t`: the longest stretch around
    /// `t` covered without a gap by that thread's episodes and the process-wide evidence.
    /// `tid` None: any one thread (the one paused longest around `t`), or process-wide evidence
    /// alone. Returns the thread it used (None: process-wide) and the interval.
    pub fn pause_around(
        &self,
        pid: u32,
        tid: Option<u32>,
        t: u64,
    ) -> Option<(Option<u32>, u64, u64)> {
        let candidates: Vec<Option<u32>> = match tid {
            Some(tid) => vec![Some(tid)],
            None => {
                let mut c: Vec<Option<u32>> = vec![None];
                c.extend(
                    self.segments
                        .iter()
                        .filter(|s| s.pid == pid && s.start_mono_ns <= t && s.end_mono_ns >= t)
                        .filter_map(|s| s.tid().map(Some)),
                );
                c.sort_unstable();
                c.dedup();
                c
            }
        };
        candidates
            .into_iter()
            .filter_map(|tid| {
                let (s, e) = self.cover_around(pid, tid, t)?;
                Some((tid, s, e))
            })
            .max_by_key(|&(tid, s, e)| (e - s, tid.is_none()))
    }

    fn cover_around(&self, pid: u32, tid: Option<u32>, t: u64) -> Option<(u64, u64)> {
        let segs: Vec<&Segment> = self.concerning(pid, tid).collect();
        let mut cover: Option<(u64, u64)> = None;
        loop {
            let mut grew = false;
            for s in &segs {
                let (a, b) = (s.start_mono_ns, s.end_mono_ns);
                cover = match cover {
                    None if a <= t && b >= t && a < b => {
                        grew = true;
                        Some((a, b))
                    }
                    Some((lo, hi)) if a <= hi && b >= lo && (a < lo || b > hi) => {
                        grew = true;
                        Some((lo.min(a), hi.max(b)))
                    }
                    c => c,
                };
            }
            if !grew {
                return cover;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn thread(id: u64, tid: u32, start: u64, blocked: u64, stopped: u64, runq: u64) -> Segment {
        Segment {
            id,
            pid: 10,
            start_mono_ns: start,
            end_mono_ns: start + blocked + stopped + runq,
            kind: SegmentKind::Thread {
                tid,
                blocked_ns: blocked,
                blocked_why: None,
                stopped_ns: stopped,
                runq_ns: runq,
            },
        }
    }

    fn stop(id: u64, start: u64, end: u64) -> Segment {
        Segment {
            id,
            pid: 10,
            start_mono_ns: start,
            end_mono_ns: end,
            kind: SegmentKind::Stop {
                cause: "SIGSTOP from pid 4242 (bash, uid 0)".into(),
            },
        }
    }

    fn sum(d: &Decomposition) -> u64 {
        d.parts.iter().map(|p| p.duration_ns).sum()
    }

    fn context(pid: u32, start: u64, end: u64, what: &str) -> Segment {
        Segment {
            id: 0,
            pid,
            start_mono_ns: start,
            end_mono_ns: end,
            kind: SegmentKind::Context { what: what.into() },
        }
    }

    /// Retransmissions on the process's sockets and host steal are listed beside the pause;
    /// they are not parts of it and never extend it.
    #[test]
    fn context_is_listed_beside_the_pause_not_in_it() {
        let mut t = Timeline::new(100);
        t.push(thread(1, 11, 1000 * MS, 0, 2000 * MS, 0));
        t.push(stop(2, 1000 * MS, 3000 * MS));
        t.push(context(
            10,
            1500 * MS,
            1900 * MS,
            "timeout retransmission on a -> b",
        ));
        t.push(context(HOST_PID, 2000 * MS, 2500 * MS, "host steal 10.0ms"));
        // Outside the pause, another process's, and one reaching past the pause's end.
        t.push(context(10, 500 * MS, 900 * MS, "too early"));
        t.push(context(99, 1500 * MS, 1600 * MS, "another process"));
        t.push(context(
            10,
            2900 * MS,
            9000 * MS,
            "long retransmission delay",
        ));
        let (tid, s, e) = t.pause_around(10, Some(11), 2000 * MS).unwrap();
        assert_eq!(
            (tid, s, e),
            (Some(11), 1000 * MS, 3000 * MS),
            "context never extends a pause"
        );
        let d = t.decompose(10, Some(11), s, e);
        assert_eq!(sum(&d), e - s);
        assert_eq!(d.parts.len(), 1);
        assert_eq!(
            d.context,
            vec![
                "timeout retransmission on a -> b".to_string(),
                "host steal 10.0ms".into(),
                "long retransmission delay".into()
            ]
        );
        assert!(
            d.describe().ends_with(
                "; meanwhile: timeout retransmission on a -> b; host steal 10.0ms; long retransmission delay"
            ),
            "{}",
            d.describe()
        );
        // Bounded.
        for i in 0..20 {
            t.push(context(10, 1100 * MS + i, 1200 * MS, "x"));
        }
        let d = t.decompose(10, Some(11), s, e);
        assert_eq!(d.context.len(), MAX_CONTEXT);
        assert_eq!(d.context.last().unwrap(), "16 more");
    }

    #[test]
    fn a_sigstop_and_the_runq_wait_after_it() {
        let mut t = Timeline::new(100);
        // The thread stopped at 1000 ms for 15 s and then waited 200 ms for a CPU; the process
        // stop (from the signal's sender) covers the 15 s.
        t.push(thread(1, 11, 1000 * MS, 0, 15_000 * MS, 200 * MS));
        t.push(stop(2, 1000 * MS, 16_000 * MS));
        let (tid, s, e) = t.pause_around(10, Some(11), 9_000 * MS).unwrap();
        assert_eq!((tid, s, e), (Some(11), 1000 * MS, 16_200 * MS));
        let d = t.decompose(10, Some(11), s, e);
        assert_eq!(sum(&d), e - s);
        assert_eq!(
            d.describe(),
            "15.2s = stopped 15.0s (SIGSTOP from pid 4242 (bash, uid 0)) + runq 200.0ms"
        );
        assert_eq!(d.main_cause().unwrap().evidence, vec![2]);
        assert_eq!(d.evidence(), vec![1, 2]);
    }

    #[test]
    fn parts_sum_exactly_to_any_interval() {
        let mut t = Timeline::new(100);
        t.push(thread(1, 11, 100, 30, 0, 7));
        t.push(thread(2, 11, 200, 0, 0, 13));
        t.push(stop(3, 150, 205));
        t.push(Segment {
            id: 4,
            pid: 10,
            start_mono_ns: 190,
            end_mono_ns: 260,
            kind: SegmentKind::Gc {
                cause: "jvm G1CollectFull".into(),
            },
        });
        for (t0, t1) in [(0, 1000), (105, 211), (120, 121), (50, 50), (133, 300)] {
            for tid in [Some(11), Some(12), None] {
                let d = t.decompose(10, tid, t0, t1);
                assert_eq!(sum(&d), t1 - t0, "{t0}..{t1} {tid:?}: {d:?}");
            }
        }
        // 100..130 blocked, 130..137 runq, 150..205 stopped (beats GC and the thread's runq),
        // 205..260 GC, the rest not paused.
        let d = t.decompose(10, Some(11), 100, 300);
        let by = |c: Cause| {
            d.parts
                .iter()
                .filter(|p| p.cause == c)
                .map(|p| p.duration_ns)
                .sum::<u64>()
        };
        assert_eq!(by(Cause::Blocked), 30);
        assert_eq!(by(Cause::Runq), 7);
        assert_eq!(by(Cause::Stopped), 55);
        assert_eq!(by(Cause::Gc), 55);
        assert_eq!(by(Cause::NotPaused), 200 - 147);
    }

    #[test]
    fn another_process_or_thread_is_not_evidence() {
        let mut t = Timeline::new(100);
        t.push(thread(1, 12, 0, 0, 0, 50));
        let mut other = stop(2, 0, 100);
        other.pid = 99;
        t.push(other);
        let d = t.decompose(10, Some(11), 0, 100);
        assert_eq!(d.parts.len(), 1);
        assert_eq!(d.parts[0].cause, Cause::NotPaused);
        assert!(t.pause_around(10, Some(11), 20).is_none());
        // Process scope: the paused thread 12 is the pause.
        assert_eq!(t.pause_around(10, None, 20), Some((Some(12), 0, 50)));
    }

    #[test]
    fn pause_around_joins_touching_evidence() {
        let mut t = Timeline::new(100);
        t.push(thread(1, 11, 0, 40, 0, 10));
        t.push(stop(2, 50, 90));
        t.push(thread(3, 11, 90, 0, 0, 5));
        t.push(thread(4, 11, 200, 0, 0, 5));
        assert_eq!(t.pause_around(10, Some(11), 60), Some((Some(11), 0, 95)));
    }

    #[test]
    fn bounded() {
        let mut t = Timeline::new(3);
        for i in 0..5 {
            t.push(thread(i, 11, i * 10, 0, 0, 5));
        }
        assert_eq!(t.held(), 3);
        assert_eq!(t.forgotten, 2);
        t.forget_before(36);
        assert_eq!(t.held(), 1);
        assert_eq!(t.forgotten, 4);
    }
}
