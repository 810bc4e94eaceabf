//! Leases: who holds what until when, from declarations (`--lease`) and from what processes
//! report over the lease socket (acquire, renew, release, act, reject).
//!
//! Deadlines are kept on the monotonic clock. A lease reported with a wall-clock expiry (set by
//! another machine's clock) is converted once, at acquire or renew, with the host's offset at
//! that moment; a later step of the wall clock does not move that deadline, it moves what the
//! holder *believes* the deadline is, and that difference is the `clock_step_moved_deadline`
//! incident.
use std::collections::VecDeque;

use thiserror::Error;

use super::units::fmt_ns;

/// Which threads' pauses count against a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The thread that reported the lease (it sent its tid).
    Thread(u32),
    /// Every thread of the process: any one thread's pause, and process-wide stops and GC.
    Process,
}

impl Scope {
    pub fn tid(self) -> Option<u32> {
        match self {
            Scope::Thread(t) => Some(t),
            Scope::Process => None,
        }
    }
}

/// What a process says it did with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// It was granted the lease.
    Acquire,
    /// It extended it.
    Renew,
    /// It gave it up.
    Release,
    /// It is about to act under it (write, send, commit).
    Act,
    /// It (a storage service) rejected a request carrying this lease's fencing token.
    Reject,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Acquire,
        Verb::Renew,
        Verb::Release,
        Verb::Act,
        Verb::Reject,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Acquire => "acquire",
            Verb::Renew => "renew",
            Verb::Release => "release",
            Verb::Act => "act",
            Verb::Reject => "reject",
        }
    }
}

/// One authenticated lease message: `pid` comes from the socket peer's credentials (or a
/// `pid=` the peer was allowed to report for), never unchecked from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ts_mono_ns: u64,
    pub verb: Verb,
    pub name: String,
    pub pid: u32,
    pub comm: String,
    pub tid: Option<u32>,
    pub ttl_ns: Option<u64>,
    pub token: Option<u64>,
    /// Wall-clock expiry (Unix ns), for deadlines set by another machine's clock.
    pub expires_wall_ns: Option<i64>,
    /// The host's CLOCK_REALTIME − CLOCK_MONOTONIC when the message arrived.
    pub wall_offset_ns: i128,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("acquire needs ttl= or expires_wall_ns= (how long the lease is valid)")]
    NoTtl,
    #[error("expires_wall_ns is {} in the past on this host's clock: the lease had already expired", fmt_ns(*.0))]
    ExpiredOnArrival(u64),
    #[error("pid {pid} holds no lease '{name}' (report acquire first)")]
    NotHeld { pid: u32, name: String },
    #[error("reject needs token= (the fencing token that was refused)")]
    RejectWithoutToken,
    #[error("too many leases held ({0}): release some")]
    Full(usize),
}

/// One process's hold on one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// Unique within a run.
    pub key: u64,
    pub name: String,
    pub pid: u32,
    pub comm: String,
    pub scope: Scope,
    pub token: Option<u64>,
    pub ttl_ns: u64,
    pub acquired_mono_ns: u64,
    /// Declared with `--lease`: renewal times unknown, only the renewal period.
    pub declared_renew_every_ns: Option<u64>,
    /// (granted at, deadline), oldest first; bounded.
    grants: VecDeque<(u64, u64)>,
    /// The expiry the holder was given on the wall clock, if it was.
    pub wall_deadline_ns: Option<i64>,
    pub released_mono_ns: Option<u64>,
    /// Deadlines already reported as passed during a pause, or acted past.
    expired_reported: Vec<u64>,
    acted_reported: Vec<u64>,
    risk_reported: Vec<u64>,
    /// Deadlines already checked as they passed (was the holder paused right then?), and the
    /// live incidents raised for them.
    live_checked: Vec<u64>,
    live_incidents: Vec<(u64, u64)>,
    /// Declared leases: the end of the last pause reported.
    declared_reported_until: u64,
}

const MAX_GRANTS: usize = 64;
const MAX_REPORTED: usize = 16;

fn remember(list: &mut Vec<u64>, v: u64) {
    if list.len() >= MAX_REPORTED {
        list.remove(0);
    }
    list.push(v);
}

impl Holding {
    /// The deadline in effect at `t` (None: before the first grant, or a declared lease).
    pub fn deadline_at(&self, t: u64) -> Option<u64> {
        self.grants
            .iter()
            .rev()
            .find(|&&(at, _)| at <= t)
            .map(|&(_, d)| d)
    }

    /// The current deadline.
    pub fn deadline(&self) -> Option<u64> {
        self.grants.back().map(|&(_, d)| d)
    }

    fn grant(&mut self, at: u64, deadline: u64) {
        if self.grants.len() >= MAX_GRANTS {
            self.grants.pop_front();
        }
        self.grants.push_back((at, deadline));
    }

    /// Deadlines that passed inside (start, end]: each one that was still the deadline when it
    /// came (no renewal had moved it) and while the lease was held.
    fn deadlines_passed_in(&self, start: u64, end: u64) -> Vec<u64> {
        let released = self.released_mono_ns.unwrap_or(u64::MAX);
        self.grants
            .iter()
            .map(|&(_, d)| d)
            .filter(|&d| d > start && d <= end && d <= released)
            .filter(|&d| self.deadline_at(d.saturating_sub(1)) == Some(d))
            .collect()
    }

    fn held_at(&self, t: u64) -> bool {
        self.acquired_mono_ns <= t && self.released_mono_ns.is_none_or(|r| r > t)
    }

    fn counts(&self, tid: Option<u32>) -> bool {
        match (self.scope, tid) {
            (_, None) | (Scope::Process, _) => true,
            (Scope::Thread(a), Some(b)) => a == b,
        }
    }
}

/// Another holder of the same lease, named in `acted_after_expiry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRef {
    pub pid: u32,
    pub comm: String,
    pub token: Option<u64>,
    pub acquired_mono_ns: u64,
}

impl HolderRef {
    fn of(h: &Holding) -> Self {
        Self {
            pid: h.pid,
            comm: h.comm.clone(),
            token: h.token,
            acquired_mono_ns: h.acquired_mono_ns,
        }
    }
}

/// What the book did with a report, for the `lease` line and the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub holding_key: Option<u64>,
    pub deadline_mono_ns: Option<u64>,
    /// Acts and renews: the lease had expired this long ago.
    pub expired_ago_ns: Option<u64>,
    /// Rejects: who held the refused token.
    pub token_holder: Option<HolderRef>,
    pub scope: Option<Scope>,
}

impl Accepted {
    /// The reply line's tail: "deadline_in_ns=…", "expired_ns_ago=…".
    pub fn reply(&self, now: u64) -> String {
        match (self.expired_ago_ns, self.deadline_mono_ns) {
            (Some(ago), _) => format!(" expired_ns_ago={ago}"),
            (None, Some(d)) if d >= now => format!(" deadline_in_ns={}", d - now),
            _ => String::new(),
        }
    }
}

/// A lease past its deadline when its holder acted (or renewed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateAct {
    pub holding: Holding,
    pub action: Verb,
    pub ts_mono_ns: u64,
    pub deadline_mono_ns: u64,
    pub newer_holder: Option<HolderRef>,
}

/// A clock step moved what a wall-clock lease's holder believes its deadline is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedDeadline {
    pub holding: Holding,
    pub deadline_mono_ns: u64,
    /// Positive: the holder now believes it has this much more time than it has.
    pub holder_error_ns: i64,
}

/// Every lease held on the host, bounded.
#[derive(Debug)]
pub struct LeaseBook {
    holdings: Vec<Holding>,
    next_key: u64,
    max_held: usize,
}

impl LeaseBook {
    pub const DEFAULT_MAX: usize = 4096;

    pub fn new(max_held: usize) -> Self {
        Self {
            holdings: Vec::new(),
            next_key: 0,
            max_held: max_held.max(1),
        }
    }

    pub fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    pub fn get(&self, key: u64) -> Option<&Holding> {
        self.holdings.iter().find(|h| h.key == key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Holding> {
        self.holdings.iter_mut().find(|h| h.key == key)
    }

    /// The lease `name` that `pid` holds now (not released).
    fn held(&mut self, pid: u32, name: &str) -> Option<&mut Holding> {
        self.holdings
            .iter_mut()
            .rev()
            .find(|h| h.pid == pid && h.name == name && h.released_mono_ns.is_none())
    }

    fn insert(&mut self, h: Holding) -> Result<u64, LeaseError> {
        if self.holdings.len() >= self.max_held {
            // Forget the oldest released lease; refuse if every one is still held.
            let Some(i) = self
                .holdings
                .iter()
                .position(|h| h.released_mono_ns.is_some())
            else {
                return Err(LeaseError::Full(self.max_held));
            };
            self.holdings.remove(i);
        }
        let key = h.key;
        self.holdings.push(h);
        Ok(key)
    }

    fn new_holding(&mut self, name: &str, pid: u32, comm: &str, scope: Scope, at: u64) -> Holding {
        self.next_key += 1;
        Holding {
            key: self.next_key,
            name: name.to_string(),
            pid,
            comm: comm.to_string(),
            scope,
            token: None,
            ttl_ns: 0,
            acquired_mono_ns: at,
            declared_renew_every_ns: None,
            grants: VecDeque::new(),
            wall_deadline_ns: None,
            released_mono_ns: None,
            expired_reported: Vec::new(),
            acted_reported: Vec::new(),
            risk_reported: Vec::new(),
            live_checked: Vec::new(),
            live_incidents: Vec::new(),
            declared_reported_until: 0,
        }
    }

    /// `--lease NAME:PID:TTL[:RENEW_EVERY]`: held by every thread of `pid`, renewal times unknown.
    pub fn declare(&mut self, name: &str, pid: u32, ttl_ns: u64, renew_every_ns: u64, now: u64) {
        let mut h = self.new_holding(name, pid, "", Scope::Process, now);
        h.ttl_ns = ttl_ns;
        h.declared_renew_every_ns = Some(renew_every_ns.min(ttl_ns));
        // Declarations come first, while the book is empty: they cannot hit the bound.
        let _ = self.insert(h);
    }

    /// The deadline a report sets, on the monotonic clock.
    fn deadline_of(r: &Report, ttl_ns: Option<u64>) -> Result<(u64, u64), LeaseError> {
        match (r.expires_wall_ns, ttl_ns) {
            (Some(wall), _) => {
                let mono = i128::from(wall) - r.wall_offset_ns;
                let now = i128::from(r.ts_mono_ns);
                if mono <= now {
                    return Err(LeaseError::ExpiredOnArrival(
                        u64::try_from(now - mono).unwrap_or(u64::MAX),
                    ));
                }
                let d = u64::try_from(mono).unwrap_or(u64::MAX);
                Ok((d, d - r.ts_mono_ns))
            }
            (None, Some(ttl)) => Ok((r.ts_mono_ns.saturating_add(ttl), ttl)),
            (None, None) => Err(LeaseError::NoTtl),
        }
    }

    fn scope_of(r: &Report) -> Scope {
        r.tid.map_or(Scope::Process, Scope::Thread)
    }

    /// The newest holding of `name` by someone else acquired at or after `since`.
    fn newer_holder(&self, name: &str, key: u64, since: u64) -> Option<HolderRef> {
        self.holdings
            .iter()
            .filter(|h| h.name == name && h.key != key && h.acquired_mono_ns >= since)
            .max_by_key(|h| h.acquired_mono_ns)
            .map(HolderRef::of)
    }

    /// Applies one report. Returns what it did and, for an act or renew past the deadline, the
    /// late act (an `acted_after_expiry` incident, once per deadline).
    pub fn report(&mut self, r: &Report) -> Result<(Accepted, Option<LateAct>), LeaseError> {
        let now = r.ts_mono_ns;
        match r.verb {
            Verb::Acquire => {
                let (deadline, ttl) = Self::deadline_of(r, r.ttl_ns)?;
                let scope = Self::scope_of(r);
                // Re-acquiring (a new token, or after a release) starts a new holding, so the
                // old one's history stays as it was.
                if let Some(h) = self.held(r.pid, &r.name) {
                    h.released_mono_ns = Some(now);
                }
                let mut h = self.new_holding(&r.name, r.pid, &r.comm, scope, now);
                h.token = r.token;
                h.ttl_ns = ttl;
                h.wall_deadline_ns = r.expires_wall_ns;
                h.grant(now, deadline);
                let key = self.insert(h)?;
                Ok((
                    Accepted {
                        holding_key: Some(key),
                        deadline_mono_ns: Some(deadline),
                        expired_ago_ns: None,
                        token_holder: None,
                        scope: Some(scope),
                    },
                    None,
                ))
            }
            Verb::Renew | Verb::Act | Verb::Release => {
                let not_held = || LeaseError::NotHeld {
                    pid: r.pid,
                    name: r.name.clone(),
                };
                let h = self.held(r.pid, &r.name).ok_or_else(not_held)?;
                let (key, scope) = (h.key, h.scope);
                let current = h.deadline();
                let overdue = current.filter(|&d| d < now);
                if r.verb == Verb::Release {
                    h.released_mono_ns = Some(now);
                    return Ok((
                        Accepted {
                            holding_key: Some(key),
                            deadline_mono_ns: current,
                            expired_ago_ns: None,
                            token_holder: None,
                            scope: Some(scope),
                        },
                        None,
                    ));
                }
                let mut late = None;
                if let Some(d) = overdue
                    && !h.acted_reported.contains(&d)
                {
                    remember(&mut h.acted_reported, d);
                    late = Some((h.clone(), d));
                }
                let mut deadline = current;
                if r.verb == Verb::Renew {
                    let ttl = r.ttl_ns.or((h.ttl_ns > 0).then_some(h.ttl_ns));
                    let (d, ttl) = Self::deadline_of(r, ttl)?;
                    let h = self.get_mut(key).ok_or_else(not_held)?;
                    h.ttl_ns = ttl;
                    if r.token.is_some() {
                        h.token = r.token;
                    }
                    if r.expires_wall_ns.is_some() {
                        h.wall_deadline_ns = r.expires_wall_ns;
                    }
                    h.grant(now, d);
                    deadline = Some(d);
                }
                let late = late.map(|(holding, d)| LateAct {
                    newer_holder: self.newer_holder(&r.name, key, d),
                    holding,
                    action: r.verb,
                    ts_mono_ns: now,
                    deadline_mono_ns: d,
                });
                Ok((
                    Accepted {
                        holding_key: Some(key),
                        deadline_mono_ns: deadline,
                        expired_ago_ns: overdue.map(|d| now - d),
                        token_holder: None,
                        scope: Some(scope),
                    },
                    late,
                ))
            }
            Verb::Reject => {
                let token = r.token.ok_or(LeaseError::RejectWithoutToken)?;
                let holder = self
                    .holdings
                    .iter()
                    .rev()
                    .find(|h| h.name == r.name && h.token == Some(token));
                Ok((
                    Accepted {
                        holding_key: holder.map(|h| h.key),
                        deadline_mono_ns: holder.and_then(|h| h.deadline_at(now)),
                        expired_ago_ns: None,
                        token_holder: holder.map(HolderRef::of),
                        scope: None,
                    },
                    None,
                ))
            }
        }
    }

    /// Holdings of `pid` that a pause of `tid` (None: process-wide) in [start, end] may concern.
    pub fn concerned_by(&self, pid: u32, tid: Option<u32>, start: u64, end: u64) -> Vec<u64> {
        self.holdings
            .iter()
            .filter(|h| h.pid == pid && h.counts(tid))
            .filter(|h| h.acquired_mono_ns < end && h.released_mono_ns.is_none_or(|r| r > start))
            .map(|h| h.key)
            .collect()
    }

    /// Deadlines of holding `key` that passed inside the pause (start, end] and were not yet
    /// reported; marks them reported.
    pub fn take_expired_in(&mut self, key: u64, start: u64, end: u64) -> Vec<u64> {
        let Some(h) = self.get_mut(key) else {
            return Vec::new();
        };
        let ds: Vec<u64> = h
            .deadlines_passed_in(start, end)
            .into_iter()
            .filter(|d| !h.expired_reported.contains(d))
            .collect();
        for &d in &ds {
            remember(&mut h.expired_reported, d);
        }
        ds
    }

    /// A pause [start, end] that used more than `share` of the time the lease had left when it
    /// began, without outliving it: the deadline at risk, once per deadline.
    pub fn take_at_risk(&mut self, key: u64, start: u64, end: u64, share: f64) -> Option<u64> {
        let h = self.get_mut(key)?;
        if !h.held_at(start) {
            return None;
        }
        let d = h.deadline_at(start)?;
        let left = d.checked_sub(start)?;
        let used = end - start;
        if d <= end || (used as f64) <= share * left as f64 || h.risk_reported.contains(&d) {
            return None;
        }
        remember(&mut h.risk_reported, d);
        Some(d)
    }

    /// Declared leases: a pause [start, end] at least TTL long expired the lease whatever the
    /// last renewal; at least TTL − RENEW_EVERY long it may have. Once per pause.
    pub fn take_declared(&mut self, key: u64, start: u64, end: u64) -> Option<DeclaredVerdict> {
        let h = self.get_mut(key)?;
        let renew = h.declared_renew_every_ns?;
        if end <= h.declared_reported_until {
            return None;
        }
        let len = end - start;
        let verdict = if len >= h.ttl_ns {
            DeclaredVerdict::Expired
        } else if len >= h.ttl_ns - renew {
            DeclaredVerdict::AtRisk
        } else {
            return None;
        };
        h.declared_reported_until = end;
        Some(verdict)
    }

    /// Reported leases whose current deadline passed by `now` while still held, each returned
    /// once: (holding key, deadline). Declared leases have no known deadline.
    pub fn take_passed_unchecked(&mut self, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for h in self
            .holdings
            .iter_mut()
            .filter(|h| h.released_mono_ns.is_none() && h.declared_renew_every_ns.is_none())
        {
            let Some(d) = h.deadline() else { continue };
            if d <= now && !h.live_checked.contains(&d) {
                remember(&mut h.live_checked, d);
                out.push((h.key, d));
            }
        }
        out
    }

    /// Remembers that incident `id` reported the deadline `deadline` of `key` live.
    pub fn note_live_incident(&mut self, key: u64, deadline: u64, id: u64) {
        if let Some(h) = self.get_mut(key) {
            if h.live_incidents.len() >= MAX_REPORTED {
                h.live_incidents.remove(0);
            }
            h.live_incidents.push((deadline, id));
        }
    }

    /// The live incident that reported `deadline` of `key`, if one did.
    pub fn live_incident(&self, key: u64, deadline: u64) -> Option<u64> {
        self.get(key)?
            .live_incidents
            .iter()
            .find(|&&(d, _)| d == deadline)
            .map(|&(_, id)| id)
    }

    /// The wall clock stepped by `step_ns` at `now`: every wall-clock lease still valid now has
    /// a holder whose idea of its deadline moved by −step.
    pub fn on_clock_step(&self, now: u64, step_ns: i64) -> Vec<MovedDeadline> {
        self.holdings
            .iter()
            .filter(|h| h.wall_deadline_ns.is_some() && h.held_at(now))
            .filter_map(|h| {
                let d = h.deadline()?;
                (d > now).then(|| MovedDeadline {
                    holding: h.clone(),
                    deadline_mono_ns: d,
                    holder_error_ns: step_ns.saturating_neg(),
                })
            })
            .collect()
    }

    /// The process is gone (exited, or its pid now names another process): its leases end.
    pub fn process_gone(&mut self, pid: u32, now: u64) {
        for h in self
            .holdings
            .iter_mut()
            .filter(|h| h.pid == pid && h.released_mono_ns.is_none())
        {
            h.released_mono_ns = Some(now);
        }
    }

    /// Pids holding leases now.
    pub fn holder_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .holdings
            .iter()
            .filter(|h| h.released_mono_ns.is_none())
            .map(|h| h.pid)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredVerdict {
    Expired,
    AtRisk,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rep(ts: u64, verb: Verb, pid: u32) -> Report {
        Report {
            ts_mono_ns: ts,
            verb,
            name: "leader".into(),
            pid,
            comm: format!("c{pid}"),
            tid: None,
            ttl_ns: None,
            token: None,
            expires_wall_ns: None,
            wall_offset_ns: 0,
        }
    }

    fn acquire(b: &mut LeaseBook, ts: u64, pid: u32, ttl: u64, token: u64) -> u64 {
        let mut r = rep(ts, Verb::Acquire, pid);
        r.ttl_ns = Some(ttl);
        r.token = Some(token);
        b.report(&r).unwrap().0.holding_key.unwrap()
    }

    #[test]
    fn renewals_move_the_deadline_and_history_is_kept() {
        let mut b = LeaseBook::new(10);
        let k = acquire(&mut b, 10 * S, 1, 2 * S, 1);
        let mut r = rep(11 * S, Verb::Renew, 1);
        r.ttl_ns = None; // the acquire's TTL is reused
        let (a, late) = b.report(&r).unwrap();
        assert!(late.is_none());
        assert_eq!(a.deadline_mono_ns, Some(13 * S));
        let h = b.get(k).unwrap();
        assert_eq!(h.deadline_at(10 * S + 1), Some(12 * S));
        assert_eq!(h.deadline_at(12 * S), Some(13 * S));
        // The 12 s deadline never passed (renewed at 11 s); the 13 s one passes in this pause.
        assert_eq!(b.take_expired_in(k, 11 * S, 20 * S), vec![13 * S]);
        assert!(b.take_expired_in(k, 11 * S, 20 * S).is_empty(), "once");
    }

    #[test]
    fn no_expiry_for_a_pause_that_ended_before_the_deadline_or_after_release() {
        let mut b = LeaseBook::new(10);
        let k = acquire(&mut b, 0, 1, 5 * S, 1);
        assert!(b.take_expired_in(k, S, 4 * S).is_empty());
        b.report(&rep(2 * S, Verb::Release, 1)).unwrap();
        assert!(b.take_expired_in(k, S, 10 * S).is_empty());
        assert!(b.concerned_by(1, None, 3 * S, 10 * S).is_empty());
        assert!(b.concerned_by(2, None, 0, 10 * S).is_empty(), "another pid");
    }

    #[test]
    fn act_after_expiry_names_the_newer_holder_once() {
        let mut b = LeaseBook::new(10);
        acquire(&mut b, 0, 1, 2 * S, 33);
        acquire(&mut b, 3 * S, 2, 2 * S, 34);
        let (a, late) = b.report(&rep(4 * S, Verb::Act, 1)).unwrap();
        assert_eq!(a.expired_ago_ns, Some(2 * S));
        let late = late.unwrap();
        assert_eq!(late.deadline_mono_ns, 2 * S);
        let newer = late.newer_holder.unwrap();
        assert_eq!((newer.pid, newer.token), (2, Some(34)));
        assert!(b.report(&rep(5 * S, Verb::Act, 1)).unwrap().1.is_none());
        // The new holder acting in time is fine.
        let (a, late) = b.report(&rep(4 * S, Verb::Act, 2)).unwrap();
        assert!(late.is_none() && a.expired_ago_ns.is_none());
    }

    #[test]
    fn renew_after_expiry_is_late_then_extends() {
        let mut b = LeaseBook::new(10);
        acquire(&mut b, 0, 1, 2 * S, 1);
        let mut r = rep(3 * S, Verb::Renew, 1);
        r.ttl_ns = Some(2 * S);
        let (a, late) = b.report(&r).unwrap();
        assert_eq!(late.unwrap().action, Verb::Renew);
        assert_eq!(a.deadline_mono_ns, Some(5 * S));
    }

    #[test]
    fn errors() {
        let mut b = LeaseBook::new(1);
        assert_eq!(b.report(&rep(0, Verb::Acquire, 1)), Err(LeaseError::NoTtl));
        assert!(matches!(
            b.report(&rep(0, Verb::Act, 1)),
            Err(LeaseError::NotHeld { pid: 1, .. })
        ));
        assert_eq!(
            b.report(&rep(0, Verb::Reject, 1)),
            Err(LeaseError::RejectWithoutToken)
        );
        let mut r = rep(10 * S, Verb::Acquire, 1);
        r.expires_wall_ns = Some(7 * S as i64);
        assert_eq!(b.report(&r), Err(LeaseError::ExpiredOnArrival(3 * S)));
        acquire(&mut b, 0, 1, S, 1);
        let mut r = rep(0, Verb::Acquire, 2);
        r.ttl_ns = Some(S);
        assert_eq!(b.report(&r), Err(LeaseError::Full(1)));
    }

    #[test]
    fn a_stale_token_is_traced_to_its_holder() {
        let mut b = LeaseBook::new(10);
        acquire(&mut b, 0, 1, 2 * S, 33);
        acquire(&mut b, 3 * S, 2, 2 * S, 34);
        let mut r = rep(4 * S, Verb::Reject, 3);
        r.token = Some(33);
        let a = b.report(&r).unwrap().0;
        assert_eq!(a.token_holder.unwrap().pid, 1);
    }

    #[test]
    fn thread_scope_ignores_other_threads() {
        let mut b = LeaseBook::new(10);
        let mut r = rep(0, Verb::Acquire, 1);
        r.ttl_ns = Some(S);
        r.tid = Some(7);
        b.report(&r).unwrap();
        assert!(b.concerned_by(1, Some(8), 0, 2 * S).is_empty());
        assert_eq!(b.concerned_by(1, Some(7), 0, 2 * S).len(), 1);
        assert_eq!(b.concerned_by(1, None, 0, 2 * S).len(), 1, "process-wide");
    }

    #[test]
    fn at_risk_share() {
        let mut b = LeaseBook::new(10);
        let k = acquire(&mut b, 0, 1, 10 * S, 1);
        // At 2 s, 8 s were left: a 3 s pause used 37.5 %, a 5 s one 62.5 %.
        assert_eq!(b.take_at_risk(k, 2 * S, 5 * S, 0.5), None);
        assert_eq!(b.take_at_risk(k, 2 * S, 7 * S, 0.5), Some(10 * S));
        assert_eq!(b.take_at_risk(k, 2 * S, 7 * S, 0.5), None, "once");
        assert_eq!(
            b.take_at_risk(k, 2 * S, 11 * S, 0.1),
            None,
            "that one expired"
        );
    }

    #[test]
    fn declared_leases_judge_by_length() {
        let mut b = LeaseBook::new(10);
        b.declare("db", 5, 10 * S, 3 * S, 0);
        let k = b.holdings()[0].key;
        assert_eq!(b.take_declared(k, 0, 6 * S), None);
        assert_eq!(
            b.take_declared(k, 10 * S, 17 * S),
            Some(DeclaredVerdict::AtRisk)
        );
        assert_eq!(b.take_declared(k, 10 * S, 17 * S), None, "once");
        assert_eq!(
            b.take_declared(k, 20 * S, 30 * S),
            Some(DeclaredVerdict::Expired)
        );
    }

    #[test]
    fn clock_steps_move_wall_clock_leases_only() {
        let mut b = LeaseBook::new(10);
        let mut r = rep(S, Verb::Acquire, 1);
        r.expires_wall_ns = Some(100 * S as i64);
        r.wall_offset_ns = 90 * S as i128;
        let (a, _) = b.report(&r).unwrap();
        assert_eq!(a.deadline_mono_ns, Some(10 * S));
        acquire(&mut b, S, 2, 60 * S, 1);
        let moved = b.on_clock_step(2 * S, -5 * S as i64);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].holding.pid, 1);
        assert_eq!(moved[0].holder_error_ns, 5 * S as i64);
        assert!(b.on_clock_step(11 * S, 1).is_empty(), "expired by then");
    }

    #[test]
    fn a_gone_process_releases() {
        let mut b = LeaseBook::new(10);
        acquire(&mut b, 0, 1, S, 1);
        assert_eq!(b.holder_pids(), vec![1]);
        b.process_gone(1, 5);
        assert!(b.holder_pids().is_empty());
    }
}
