//! What the live view, the replay and the end report show, independent of where it came from:
//! the running agent (`from_agent`) or a recording (`replay::Replay::picture`). Views render a
//! `Picture`; they never read the agent's state.
use observer_common::Component;

use crate::{
    agent::AgentState,
    model::{
        correlate::Incident,
        episode::Episode,
        lease::Holding,
        stats::Aggregate,
        units::fmt_ns,
        window::{CAUSES, Cumulative, GC, WindowStats, Windows},
    },
};

/// Causes in the table, in column order: the thread components, gc, hypervisor steal charged
/// to the running threads (an estimate), then the network.
pub const CAUSE_NAMES: [&str; COLUMNS] = ["runq", "blocked", "stopped", "gc", "steal", "net"];
/// Number of cause columns.
pub const COLUMNS: usize = CAUSES + 2;
/// Index of the hypervisor steal (`STAT_STEAL`) in `Row::cause_ns`.
pub const STEAL: usize = CAUSES;
/// Index of the network (estimated retransmission delay) in `Row::cause_ns`.
pub const NET: usize = CAUSES + 1;

/// What kind of thing a mark on the timeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A thread's pause, by its largest component.
    Pause(Component),
    Stop,
    Gc,
    Incident,
    ClockStep,
    /// A host-wide pause (VM freeze, suspend).
    HostPause,
    Retransmit,
}

impl Lane {
    /// One character on the timeline.
    pub fn glyph(self) -> char {
        match self {
            Lane::Pause(Component::Runq) => 'r',
            Lane::Pause(Component::Blocked) => 'b',
            Lane::Pause(Component::Stopped) | Lane::Stop => 's',
            Lane::Gc => 'g',
            Lane::Incident => '!',
            Lane::ClockStep => '|',
            Lane::HostPause => '#',
            Lane::Retransmit => 'n',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::Pause(c) => c.name(),
            Lane::Stop => "stop",
            Lane::Gc => "gc",
            Lane::Incident => "incident",
            Lane::ClockStep => "clock",
            Lane::HostPause => "host",
            Lane::Retransmit => "net",
        }
    }

    /// Marks that concern every process rather than one.
    pub fn host_wide(self) -> bool {
        matches!(self, Lane::ClockStep | Lane::HostPause)
    }
}

/// One thing that happened, for the timeline and the latest-episodes list.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub lane: Lane,
    pub text: String,
}

impl Mark {
    pub fn duration_ns(&self) -> u64 {
        self.end_mono_ns.saturating_sub(self.start_mono_ns)
    }
}

/// "12.0ms = blocked 10.0ms (major fault on /data/x) + runq 2.0ms": the parts largest first.
pub fn decomposition_text(
    duration_ns: u64,
    parts: &[(&str, u64)],
    blocked: Option<&str>,
) -> String {
    let mut parts: Vec<_> = parts.iter().filter(|(_, ns)| *ns > 0).collect();
    parts.sort_by_key(|(_, ns)| std::cmp::Reverse(*ns));
    let named: Vec<String> = parts
        .iter()
        .map(|(name, ns)| match (*name, blocked) {
            ("blocked", Some(why)) => format!("blocked {} ({why})", fmt_ns(*ns)),
            _ => format!("{name} {}", fmt_ns(*ns)),
        })
        .collect();
    if named.is_empty() {
        fmt_ns(duration_ns)
    } else {
        format!("{} = {}", fmt_ns(duration_ns), named.join(" + "))
    }
}

impl Mark {
    pub fn of_episode(e: &Episode) -> Self {
        let parts: Vec<(&str, u64)> = Component::ALL
            .iter()
            .map(|&c| (c.name(), e.component(c)))
            .collect();
        let why = e.blocked.as_ref().map(|b| b.describe());
        Self {
            start_mono_ns: e.start_mono_ns,
            end_mono_ns: e.end_mono_ns(),
            pid: Some(e.pid),
            tid: Some(e.tid),
            lane: Lane::Pause(e.dominant()),
            text: format!(
                "thread {} paused {}",
                e.tid,
                decomposition_text(e.duration_ns, &parts, why.as_deref())
            ),
        }
    }

    pub fn of_incident(i: &Incident) -> Self {
        Self {
            start_mono_ns: i.ts_mono_ns,
            end_mono_ns: i.ts_mono_ns,
            pid: Some(i.pid),
            tid: i.pause_tid,
            lane: Lane::Incident,
            text: format!("{}: {}", i.kind.name(), i.message),
        }
    }
}

/// The host header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// "live" or "replay of FILE".
    pub source: String,
    pub mechanism: String,
    pub steal_pct: Option<f64>,
    pub clock_err_ns: Option<u64>,
    pub clock_unsynced: bool,
    pub last_step: Option<String>,
    pub host_freezes: u64,
    pub retransmits: u64,
    /// Everything lost: kernel ring-buffer and aggregate drops, by cause name.
    pub drops: Vec<(&'static str, u64)>,
    pub decode_errors: u64,
    pub output_dropped: u64,
    /// Mean BPF run time per program run (ns), when BPF statistics are on.
    pub bpf_ns_per_run: Option<u64>,
    /// The agent's CPU use (% of one core) over the last refresh.
    pub agent_cpu_pct: Option<f64>,
    /// What is not observed, and why (probes that failed to attach, missing features).
    pub unobserved: Vec<String>,
    /// The most recent incident, for the footer.
    pub last_incident: Option<String>,
}

/// One row of the process table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub pid: u32,
    pub comm: String,
    pub exited: bool,
    /// Since the start: pauses (thread episodes and runtime stop-the-worlds).
    pub pauses: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub p99_ns: Option<u64>,
    /// The last window.
    pub window: Option<WindowStats>,
    /// Since the start, per `CAUSE_NAMES` (net: estimated delay of retransmissions).
    pub cause_ns: [u64; COLUMNS],
    pub retransmits: u64,
    /// Leases held now, and the worst risk among them ("expired", "at risk", "ok").
    pub leases: u32,
    pub lease_risk: Option<&'static str>,
}

impl Row {
    /// Share of cause `i` in the process's paused time (0..=1).
    pub fn share(&self, i: usize) -> Option<f64> {
        let all: u64 = self.cause_ns.iter().sum();
        (all > 0).then(|| self.cause_ns[i] as f64 / all as f64)
    }
}

/// A lease, as the views show it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub name: String,
    pub pid: u32,
    pub comm: String,
    pub token: Option<u64>,
    pub ttl_ns: u64,
    /// Time left (negative: past its deadline); None for declared leases (renewals unknown).
    pub remaining_ns: Option<i64>,
    pub risk: &'static str,
}

/// One thread in the detail view (from the streamed pauses at or above the threshold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadRow {
    pub tid: u32,
    pub pauses: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// One socket with retransmissions.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketRow {
    pub conn: String,
    pub retransmits: u64,
    pub timeouts: u64,
    pub delay_est_ns: u64,
}

/// Distributions of one process by name: ("all", every pause), then each cause.
pub type Hists = Vec<(&'static str, Aggregate)>;

/// Everything about one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    pub pid: u32,
    pub comm: String,
    /// Per cause: its distribution (every pause, aggregated in the kernel, or as recorded).
    pub hists: Hists,
    /// Latest pauses and incidents of the process, newest last.
    pub latest: Vec<Mark>,
    pub threads: Vec<ThreadRow>,
    pub sockets: Vec<SocketRow>,
    pub leases: Vec<LeaseRow>,
    /// The shortest timeout a pause alone exceeds with less than the target chance per hour,
    /// and what the estimate rests on (`advice_line`).
    pub advice: String,
}

/// Timeout advice for the detail view, from every pause of the process (`all`) over
/// `observed_ns`, aiming under `target` chance per hour (as `pausewatch advise` does).
pub fn advice_line(all: &Aggregate, observed_ns: u64, target: f64) -> String {
    use crate::model::advise::TailEstimate;
    let Some(e) = TailEstimate::new(all, observed_ns) else {
        return format!(
            "no pauses in {}: nothing to estimate a timeout from",
            fmt_ns(observed_ns)
        );
    };
    match e.shortest_timeout(all, target) {
        Some(t) => {
            let range = e.range_words(all, target);
            let range = if range.is_empty() {
                range
            } else {
                format!("{range}; ")
            };
            format!(
                "a timeout of {} is exceeded by a pause alone with chance < {target:e}/h ({range}{})",
                fmt_ns(t),
                e.basis()
            )
        }
        None => format!(
            "too little history for a {target:e}/h timeout ({})",
            e.basis()
        ),
    }
}

/// Marks kept for the timeline.
pub const MAX_MARKS: usize = 2048;
/// Latest pauses shown in the detail view.
pub const DETAIL_LATEST: usize = 12;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Picture {
    pub header: Header,
    pub rows: Vec<Row>,
    /// Oldest first.
    pub marks: Vec<Mark>,
    pub leases: Vec<LeaseRow>,
    /// "Now" on the monotonic clock (the playhead in a replay).
    pub now_mono_ns: u64,
    /// Length of the window behind `Row::window` (0: none complete yet).
    pub window_ns: u64,
}

impl Picture {
    pub fn row(&self, pid: u32) -> Option<&Row> {
        self.rows.iter().find(|r| r.pid == pid)
    }

    /// The leases `pid` holds.
    pub fn leases_of(&self, pid: u32) -> Vec<LeaseRow> {
        self.leases
            .iter()
            .filter(|l| l.pid == pid)
            .cloned()
            .collect()
    }
}

/// Threads of `pid` from its marks, most paused first.
pub fn threads_of(marks: &[Mark], pid: u32) -> Vec<ThreadRow> {
    let mut by: std::collections::BTreeMap<u32, ThreadRow> = Default::default();
    for m in marks
        .iter()
        .filter(|m| m.pid == Some(pid) && matches!(m.lane, Lane::Pause(_)))
    {
        let Some(tid) = m.tid else { continue };
        let t = by.entry(tid).or_insert(ThreadRow {
            tid,
            ..Default::default()
        });
        t.pauses += 1;
        t.total_ns += m.duration_ns();
        t.max_ns = t.max_ns.max(m.duration_ns());
    }
    let mut v: Vec<_> = by.into_values().collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.total_ns));
    v
}

/// The risk of a lease given the longest recent pause of its holder.
pub fn lease_risk(remaining_ns: Option<i64>, ttl_ns: u64, worst_pause_ns: u64) -> &'static str {
    match remaining_ns {
        Some(r) if r < 0 => "expired",
        Some(r) if worst_pause_ns as i64 >= r => "at risk",
        None if worst_pause_ns >= ttl_ns => "at risk",
        _ => "ok",
    }
}

fn risk_rank(r: &str) -> u8 {
    match r {
        "expired" => 2,
        "at risk" => 1,
        _ => 0,
    }
}

/// Leases held at `now`, with their risk from each holder's longest pause in `rows`.
pub fn lease_rows(holdings: &[Holding], now: u64, rows: &[Row]) -> Vec<LeaseRow> {
    holdings
        .iter()
        .filter(|h| h.released_mono_ns.is_none())
        .map(|h| {
            let remaining = if h.declared_renew_every_ns.is_some() {
                None
            } else {
                h.deadline().map(|d| d as i64 - now as i64)
            };
            let worst = rows
                .iter()
                .find(|r| r.pid == h.pid)
                .map_or(0, |r| r.window.map_or(r.max_ns, |w| w.max_ns));
            LeaseRow {
                name: h.name.clone(),
                pid: h.pid,
                comm: h.comm.clone(),
                token: h.token,
                ttl_ns: h.ttl_ns,
                remaining_ns: remaining,
                risk: lease_risk(remaining, h.ttl_ns, worst),
            }
        })
        .collect()
}

/// Fills each row's lease count and worst risk.
pub fn attach_leases(rows: &mut [Row], leases: &[LeaseRow]) {
    for r in rows.iter_mut() {
        for l in leases.iter().filter(|l| l.pid == r.pid) {
            r.leases += 1;
            if r.lease_risk
                .is_none_or(|old| risk_rank(l.risk) > risk_rank(old))
            {
                r.lease_risk = Some(l.risk);
            }
        }
    }
}

/// A process's cumulative figures per window cause.
pub fn cumulative(e: &crate::model::process::ProcessEntry) -> Cumulative {
    let mut causes: [Aggregate; CAUSES] = Default::default();
    for c in Component::ALL {
        causes[c as usize] = e.stat(c as usize);
    }
    causes[GC] = e.gc().clone();
    Cumulative {
        pauses: e.pauses(),
        causes,
    }
}

/// What the running agent knows, as a picture. `windows` is the live view's window state.
pub fn from_agent(st: &AgentState, windows: &Windows, header: Header) -> Picture {
    let now = crate::source::clock::WallClock::mono_now();
    let mut rows: Vec<Row> = st
        .table
        .sorted()
        .into_iter()
        .map(|p| {
            let pauses = p.pauses();
            let net = st.host.net.of(p.pid);
            let mut cause_ns = [0u64; COLUMNS];
            for c in Component::ALL {
                cause_ns[c as usize] = p.stat(c as usize).total_ns;
            }
            cause_ns[GC] = p.gc().total_ns;
            cause_ns[STEAL] = p.stat(observer_common::STAT_STEAL).total_ns;
            cause_ns[NET] = net.map_or(0, |n| n.total.delay_est_ns);
            Row {
                pid: p.pid,
                comm: p.comm.clone(),
                exited: p.exited,
                pauses: pauses.count,
                total_ns: pauses.total_ns,
                max_ns: pauses.max_ns,
                p99_ns: pauses.percentile(0.99),
                window: windows.of(p.pid).copied(),
                cause_ns,
                retransmits: net.map_or(0, |n| n.total.retransmits),
                leases: 0,
                lease_risk: None,
            }
        })
        .collect();
    let leases = lease_rows(st.corr.leases.holdings(), now, &rows);
    attach_leases(&mut rows, &leases);
    Picture {
        header,
        rows,
        marks: agent_marks(st),
        leases,
        now_mono_ns: now,
        window_ns: windows.last_len_ns(),
    }
}

/// The agent's recent events as marks, oldest first.
fn agent_marks(st: &AgentState) -> Vec<Mark> {
    let mut marks: Vec<Mark> = st.recent.iter().map(Mark::of_episode).collect();
    marks.extend(st.recent_stops.iter().map(|s| Mark {
        start_mono_ns: s.start_mono_ns,
        end_mono_ns: s.end_mono_ns(),
        pid: Some(s.pid),
        tid: None,
        lane: Lane::Stop,
        text: s.describe(),
    }));
    marks.extend(st.recent_gc.iter().map(|g| Mark {
        start_mono_ns: g.start_mono_ns,
        end_mono_ns: g.end_mono_ns(),
        pid: Some(g.pid),
        tid: Some(g.tid),
        lane: Lane::Gc,
        text: g.describe(),
    }));
    marks.extend(st.recent_incidents.iter().map(Mark::of_incident));
    marks.extend(st.host.recent_steps.iter().map(|j| Mark {
        start_mono_ns: j.step.ts_mono_ns,
        end_mono_ns: j.step.ts_mono_ns,
        pid: None,
        tid: None,
        lane: Lane::ClockStep,
        text: j.describe(),
    }));
    marks.extend(
        st.host
            .recent_host
            .iter()
            .filter(|h| h.verdict.host_wide())
            .map(|h| Mark {
                start_mono_ns: h.start_mono_ns,
                end_mono_ns: h.end_mono_ns(),
                pid: None,
                tid: None,
                lane: Lane::HostPause,
                text: h.describe(),
            }),
    );
    marks.extend(st.host.net.recent.iter().map(|r| Mark {
        start_mono_ns: r.ts_mono_ns,
        end_mono_ns: r.ts_mono_ns + r.delay_est_ns.unwrap_or(0),
        pid: r.pid,
        tid: None,
        lane: Lane::Retransmit,
        text: r.describe(),
    }));
    marks.sort_by_key(|m| m.start_mono_ns);
    let skip = marks.len().saturating_sub(MAX_MARKS);
    marks.drain(..skip);
    marks
}

/// The detail of one process from the running agent.
pub fn agent_detail(st: &AgentState, pic: &Picture, pid: u32) -> Option<Detail> {
    let p = st.table.get(pid)?;
    let mut hists: Vec<(&'static str, Aggregate)> = vec![("all", p.pauses())];
    for c in Component::ALL {
        hists.push((c.name(), p.stat(c as usize)));
    }
    hists.push(("gc", p.gc().clone()));
    hists.push(("steal", p.stat(observer_common::STAT_STEAL)));
    let advice = advice_line(
        &hists[0].1,
        pic.now_mono_ns.saturating_sub(st.started_mono_ns),
        st.advise_target,
    );
    Some(Detail {
        advice,
        pid,
        comm: p.comm.clone(),
        hists,
        latest: latest_of(&pic.marks, pid),
        threads: threads_of(&pic.marks, pid),
        sockets: st.host.net.of(pid).map_or_else(Vec::new, |n| {
            n.busiest()
                .into_iter()
                .map(|(e, c)| SocketRow {
                    conn: e.describe(),
                    retransmits: c.retransmits,
                    timeouts: c.timeouts,
                    delay_est_ns: c.delay_est_ns,
                })
                .collect()
        }),
        leases: pic.leases_of(pid),
    })
}

/// The latest marks of a process (pauses, stops, gc, incidents, retransmits), newest last.
pub fn latest_of(marks: &[Mark], pid: u32) -> Vec<Mark> {
    let mut v: Vec<Mark> = marks
        .iter()
        .rev()
        .filter(|m| m.pid == Some(pid))
        .take(DETAIL_LATEST)
        .cloned()
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposition_names_the_largest_part_first() {
        assert_eq!(
            decomposition_text(
                12_000_000,
                &[("runq", 2_000_000), ("blocked", 10_000_000), ("stopped", 0)],
                Some("major fault on /data/x")
            ),
            "12.0ms = blocked 10.0ms (major fault on /data/x) + runq 2.0ms"
        );
        assert_eq!(decomposition_text(5_000, &[], None), "5µs");
    }

    #[test]
    fn lease_risk_compares_the_worst_pause_with_the_time_left() {
        assert_eq!(lease_risk(Some(-1), 10, 0), "expired");
        assert_eq!(lease_risk(Some(100), 1000, 100), "at risk");
        assert_eq!(lease_risk(Some(100), 1000, 99), "ok");
        assert_eq!(lease_risk(None, 1000, 1000), "at risk");
        assert_eq!(lease_risk(None, 1000, 10), "ok");
    }

    #[test]
    fn threads_sum_their_pauses() {
        let m = |tid, d| Mark {
            start_mono_ns: 0,
            end_mono_ns: d,
            pid: Some(1),
            tid: Some(tid),
            lane: Lane::Pause(Component::Runq),
            text: String::new(),
        };
        let t = threads_of(&[m(2, 5), m(3, 1), m(2, 7)], 1);
        assert_eq!(
            t[0],
            ThreadRow {
                tid: 2,
                pauses: 2,
                total_ns: 12,
                max_ns: 7
            }
        );
        assert_eq!(t[1].tid, 3);
        assert!(threads_of(&[m(2, 5)], 9).is_empty());
    }
}
