//! A recording (`--json FILE`) read back: `pausewatch report FILE` prints the end report
//! from it, `pausewatch replay FILE` plays it in the live view with a moving playhead.
//!
//! While playing, processes are counted from the pauses the recording streamed (those at or
//! above `--min-pause`). At the end of the recording, its `summary` lines take over: they
//! hold every pause the kernel aggregated, with histograms.
use std::{collections::BTreeMap, path::Path};

use anyhow::bail;
use observer_common::{Component, hist};
use serde_json::Value;

use super::{
    picture::{
        self, CAUSE_NAMES, COLUMNS, Detail, Header, Hists, Lane, LeaseRow, Mark, NET, Picture, Row,
        STEAL, SocketRow,
    },
    report::ReportInput,
};
use crate::model::{
    merge::Event,
    stats::Aggregate,
    units::fmt_ns,
    window::{CAUSES, GC, WindowStats},
};

/// Events kept from one recording (the oldest beyond are dropped and counted).
pub const MAX_ITEMS: usize = 1_000_000;
/// The replay's window (as the live view's).
const WINDOW_NS: u64 = super::WINDOW_NS;
/// The detail view's timeout advice aims under this chance per hour (`--advise-target`'s
/// default; `pausewatch report --advise-target` changes the report's).
const ADVISE_TARGET: f64 = 1e-6;

/// One event of the recording, with what the views need.
#[derive(Debug, Clone)]
struct Item {
    mark: Mark,
    comm: String,
    /// Contribution to the process's causes (`CAUSE_NAMES` order); `counts`: whether it is
    /// a pause of its own (thread episodes and stop-the-worlds; process stops are another
    /// view of thread episodes and are not counted again).
    parts: [u64; COLUMNS],
    counts: bool,
    /// Clock steps: the step.
    step_ns: Option<i64>,
    /// Retransmissions: the connection ("10.0.0.1:5000 -> 10.0.0.2:80") and whether it was
    /// a timeout.
    socket: Option<(String, bool)>,
}

/// "10.0.0.1:5000" / "[::1]:80" from a retransmit line's endpoint.
fn endpoint(v: &Value) -> String {
    let addr = s(v, "addr");
    let port = u(v, "port").unwrap_or(0);
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// What one line adds to the timeline: lane, (start, end), cause parts, whether it is a pause
/// of its own, text.
type Contribution = (Lane, (u64, u64), [u64; COLUMNS], bool, String);

/// A process as its `summary` line gave it.
#[derive(Debug, Clone)]
struct Summary {
    row: Row,
    hists: Hists,
}

/// A lease event: (name, pid) → (token, ttl, deadline) or released.
#[derive(Debug, Clone)]
struct LeaseEvent {
    ts_mono_ns: u64,
    name: String,
    pid: u32,
    comm: String,
    token: Option<u64>,
    ttl_ns: Option<u64>,
    deadline_mono_ns: Option<u64>,
    release: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Replay {
    items: Vec<Item>,
    summaries: Vec<Summary>,
    leases: Vec<LeaseEvent>,
    /// (ts, step ns) of clock steps.
    header_base: Header,
    steal: Vec<(u64, f64)>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub skipped_lines: u64,
    pub dropped_items: u64,
    memory: Vec<String>,
    /// (total time of its requests, its end-report line) of each `disk` line.
    disks: Vec<(u64, String)>,
    net: Vec<String>,
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// An aggregate from a summary's stat object (histogram when the recording has one).
fn aggregate(v: &Value) -> Aggregate {
    let mut a = Aggregate {
        count: u(v, "count").unwrap_or(0),
        total_ns: u(v, "total_ns").unwrap_or(0),
        max_ns: u(v, "max_ns").unwrap_or(0),
        ..Default::default()
    };
    for pair in v
        .get("hist")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(lo), Some(n)) = (
            pair.get(0).and_then(Value::as_u64),
            pair.get(1).and_then(Value::as_u64),
        ) {
            a.hist[hist::bucket(lo)] += n;
        }
    }
    a
}

impl Replay {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let rec = crate::source::recording::read(path, |_| true)?;
        Self::from_events(&path.display().to_string(), rec.events, rec.skipped)
    }

    pub fn from_events(name: &str, mut events: Vec<Event>, skipped: u64) -> anyhow::Result<Self> {
        let hosts: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e.host.as_str()).collect();
        if hosts.len() > 1 {
            bail!(
                "{name} holds recordings of {} hosts ({}): give one host's recording, or use `pausewatch merge` for several",
                hosts.len(),
                hosts.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if events.is_empty() {
            bail!("{name} has no pausewatch lines: nothing to report");
        }
        events.sort_by_key(|e| e.ts_mono_ns);
        let mut r = Replay {
            skipped_lines: skipped,
            start_mono_ns: events.first().map_or(0, |e| e.ts_mono_ns),
            end_mono_ns: events.last().map_or(0, |e| e.ts_mono_ns),
            ..Default::default()
        };
        r.header_base.source = format!("recording {name}");
        r.header_base.mechanism = "?".into();
        for e in &events {
            r.take(e);
        }
        if r.items.len() > MAX_ITEMS {
            let extra = r.items.len() - MAX_ITEMS;
            r.items.drain(..extra);
            r.dropped_items = extra as u64;
        }
        r.items.sort_by_key(|i| i.mark.start_mono_ns);
        if let Some(last) = r.items.last() {
            r.end_mono_ns = r.end_mono_ns.max(last.mark.end_mono_ns);
        }
        Ok(r)
    }

    fn take(&mut self, e: &Event) {
        let v = &e.line;
        let pid = u(v, "pid").map(|p| p as u32);
        let tid = u(v, "tid").map(|t| t as u32);
        self.header_base.clock_err_ns = Some(e.wall_err_ns);
        let text = || crate::model::merge::describe(e);
        let span = |start: Option<u64>, dur: Option<u64>| {
            let st = start.unwrap_or(e.ts_mono_ns);
            (st, st + dur.unwrap_or(0))
        };
        let mut out: Option<Contribution> = None;
        match e.kind.as_str() {
            "pause" => {
                let c = &v["components"];
                let mut parts = [0u64; COLUMNS];
                let mut named = Vec::new();
                for comp in Component::ALL {
                    let ns = u(c, &format!("{}_ns", comp.name())).unwrap_or(0);
                    parts[comp as usize] = ns;
                    named.push((comp.name(), ns));
                }
                let dominant = Component::ALL
                    .into_iter()
                    .max_by_key(|&c| parts[c as usize])
                    .unwrap_or(Component::Runq);
                let why = v
                    .get("blocked")
                    .and_then(|b| b.get("description"))
                    .and_then(Value::as_str);
                let dur = u(v, "duration_ns").unwrap_or(0);
                let t = format!(
                    "thread {} paused {}",
                    tid.unwrap_or(0),
                    picture::decomposition_text(dur, &named, why)
                );
                out = Some((
                    Lane::Pause(dominant),
                    span(u(v, "start_mono_ns"), Some(dur)),
                    parts,
                    true,
                    t,
                ));
            }
            "stop" => {
                out = Some((
                    Lane::Stop,
                    span(u(v, "start_mono_ns"), u(v, "duration_ns")),
                    [0; COLUMNS],
                    false,
                    s(v, "description").to_string(),
                ))
            }
            "gc" => {
                let mut parts = [0u64; COLUMNS];
                parts[GC] = u(v, "duration_ns").unwrap_or(0);
                out = Some((
                    Lane::Gc,
                    span(u(v, "start_mono_ns"), u(v, "duration_ns")),
                    parts,
                    true,
                    s(v, "description").to_string(),
                ));
            }
            "incident" => {
                out = Some((
                    Lane::Incident,
                    span(None, None),
                    [0; COLUMNS],
                    false,
                    format!("{}: {}", s(v, "kind"), s(v, "message")),
                ))
            }
            "retransmit" => {
                let mut parts = [0u64; COLUMNS];
                parts[NET] = u(v, "delay_est_ns").unwrap_or(0);
                out = Some((
                    Lane::Retransmit,
                    span(None, Some(parts[NET])),
                    parts,
                    false,
                    text(),
                ));
            }
            "host_pause" if v["host_wide"].as_bool() == Some(true) => {
                out = Some((
                    Lane::HostPause,
                    span(u(v, "start_mono_ns"), u(v, "duration_ns")),
                    [0; COLUMNS],
                    false,
                    s(v, "description").to_string(),
                ));
            }
            "clock" if s(v, "event") == "step" => {
                out = Some((
                    Lane::ClockStep,
                    span(None, None),
                    [0; COLUMNS],
                    false,
                    s(v, "description").to_string(),
                ));
            }
            "clock" if s(v, "event") == "sync" => {
                self.header_base.clock_unsynced = v["synced"].as_bool() == Some(false);
            }
            "host" if s(v, "event") == "steal" => {
                if let Some(p) = v["steal_pct"].as_f64() {
                    self.steal.push((e.ts_mono_ns, p));
                }
            }
            "notice" => {
                if s(v, "event") == "attached" {
                    self.header_base.mechanism = s(v, "mechanism").to_string();
                }
                if s(v, "level") == "warn" {
                    self.header_base
                        .unobserved
                        .push(s(v, "message").to_string());
                }
            }
            "lease" if pid.is_some() && s(v, "event") != "reject" => {
                let ev = s(v, "event");
                self.leases.push(LeaseEvent {
                    ts_mono_ns: e.ts_mono_ns,
                    name: s(v, "lease").to_string(),
                    pid: pid.unwrap_or(0),
                    comm: s(v, "comm").to_string(),
                    token: u(v, "token"),
                    ttl_ns: u(v, "ttl_ns"),
                    deadline_mono_ns: u(v, "deadline_mono_ns"),
                    release: ev == "release",
                });
            }
            "fsync" | "mem_stall" => {
                self.memory.push(format!(
                    "{:>7} {:<16} {}",
                    pid.unwrap_or(0),
                    s(v, "comm"),
                    s(v, "description")
                ));
            }
            "disk" => {
                let ops: Vec<(&str, u64, Option<u64>)> = v["ops"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(op, o)| (op.as_str(), u(o, "requests").unwrap_or(0), u(o, "p99_ns")))
                    .collect();
                let line = super::report::disk_line(
                    v.get("device").and_then(Value::as_str).unwrap_or("?"),
                    s(v, "dev"),
                    u(v, "requests").unwrap_or(0),
                    u(v, "p99_ns"),
                    &ops,
                );
                self.disks.push((u(v, "total_ns").unwrap_or(0), line));
            }
            "summary" => self.take_summary(v),
            "drops" => {
                let h = &mut self.header_base;
                h.drops = observer_common::DropCause::ALL
                    .iter()
                    .map(|c| (c.name(), u(&v["kernel"], c.name()).unwrap_or(0)))
                    .collect();
                h.decode_errors = u(v, "decode_errors").unwrap_or(0);
                h.output_dropped = u(v, "output_dropped_lines").unwrap_or(0);
            }
            "self_cost" => {
                let runs: u64 = v["programs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| u(p, "run_count"))
                    .sum();
                let ns: u64 = v["programs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| u(p, "run_time_ns"))
                    .sum();
                if let Some(mean) = ns.checked_div(runs) {
                    self.header_base.bpf_ns_per_run = Some(mean);
                }
            }
            _ => {}
        }
        if let Some((lane, (start, end), parts, counts, text)) = out {
            self.items.push(Item {
                mark: Mark {
                    start_mono_ns: start,
                    end_mono_ns: end,
                    pid,
                    tid,
                    lane,
                    text,
                },
                comm: s(v, "comm").to_string(),
                parts,
                counts,
                step_ns: v.get("step_ns").and_then(Value::as_i64),
                socket: (e.kind == "retransmit").then(|| {
                    (
                        format!("{} -> {}", endpoint(&v["local"]), endpoint(&v["remote"])),
                        s(v, "mode") == "timeout",
                    )
                }),
            });
        }
    }

    fn take_summary(&mut self, v: &Value) {
        let episodes = aggregate(&v["episodes"]);
        let gc = aggregate(&v["gc"]);
        let mut all = episodes.clone();
        all.merge(&gc);
        let mut hists = vec![("all", all.clone())];
        let mut cause_ns = [0u64; COLUMNS];
        for c in Component::ALL {
            let a = aggregate(&v["components"][c.name()]);
            cause_ns[c as usize] = a.total_ns;
            hists.push((c.name(), a));
        }
        cause_ns[GC] = gc.total_ns;
        hists.push(("gc", gc));
        // Absent from recordings made before steal was charged to processes: zero.
        let steal = aggregate(&v["steal_est"]);
        cause_ns[STEAL] = steal.total_ns;
        hists.push(("steal", steal));
        cause_ns[NET] = u(&v["net"], "delay_est_ns").unwrap_or(0);
        if let Some(m) = v.get("memory").filter(|m| !m.is_null()) {
            let blocked: Vec<String> = m["blocked_by_reason"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, b)| u(b, "total_ns").map(|t| format!("{k} {}", fmt_ns(t))))
                .collect();
            if !blocked.is_empty() {
                self.memory.insert(
                    0,
                    format!(
                        "{:>7} {:<16} blocked: {}",
                        u(v, "pid").unwrap_or(0),
                        s(v, "comm"),
                        blocked.join(", ")
                    ),
                );
            }
        }
        if let Some(n) = v.get("net").filter(|n| !n.is_null()) {
            self.net.push(format!(
                "{} {}: {} TCP retransmissions ({} segments, {} timeouts), est. delay {}",
                u(v, "pid").unwrap_or(0),
                s(v, "comm"),
                u(n, "retransmits").unwrap_or(0),
                u(n, "segs").unwrap_or(0),
                u(n, "timeouts").unwrap_or(0),
                fmt_ns(u(n, "delay_est_ns").unwrap_or(0))
            ));
        }
        self.summaries.push(Summary {
            row: Row {
                pid: u(v, "pid").unwrap_or(0) as u32,
                comm: s(v, "comm").to_string(),
                exited: v["exited"].as_bool().unwrap_or(false),
                pauses: all.count,
                total_ns: all.total_ns,
                max_ns: all.max_ns,
                p99_ns: all.percentile(0.99),
                window: None,
                cause_ns,
                retransmits: u(&v["net"], "retransmits").unwrap_or(0),
                leases: 0,
                lease_risk: None,
            },
            hists,
        });
    }

    /// Whether the picture at `t` comes from the summaries (the recording's end).
    fn at_end(&self, t: u64) -> bool {
        t >= self.end_mono_ns && !self.summaries.is_empty()
    }

    /// Rows, per-process histograms and marks as of the playhead `t`.
    fn rows_at(&self, t: u64) -> (Vec<Row>, BTreeMap<u32, Hists>) {
        let mut rows: BTreeMap<u32, Row> = BTreeMap::new();
        let mut hists: BTreeMap<u32, [Aggregate; COLUMNS]> = BTreeMap::new();
        let mut window: BTreeMap<u32, Aggregate> = BTreeMap::new();
        let win_start = t.saturating_sub(WINDOW_NS);
        for it in self.items.iter().take_while(|i| i.mark.start_mono_ns <= t) {
            let Some(pid) = it.mark.pid else { continue };
            if it.mark.end_mono_ns > t && it.counts {
                continue; // not over yet at the playhead
            }
            let r = rows.entry(pid).or_insert_with(|| Row {
                pid,
                comm: it.comm.clone(),
                ..Default::default()
            });
            for (i, p) in it.parts.iter().enumerate() {
                r.cause_ns[i] += p;
            }
            if it.mark.lane == Lane::Retransmit {
                r.retransmits += 1;
            }
            if !it.counts {
                continue;
            }
            let d = it.mark.duration_ns();
            r.pauses += 1;
            r.total_ns += d;
            r.max_ns = r.max_ns.max(d);
            let hs = hists.entry(pid).or_default();
            hs[0].record(d);
            for (i, p) in it.parts.iter().enumerate().take(CAUSES) {
                if *p > 0 {
                    hs[i + 1].record(*p);
                }
            }
            if it.mark.end_mono_ns > win_start {
                window.entry(pid).or_default().record(d);
            }
        }
        let mut out_h = BTreeMap::new();
        let rows = rows
            .into_values()
            .map(|mut r| {
                if let Some(hs) = hists.get(&r.pid) {
                    r.p99_ns = hs[0].percentile(0.99);
                    let mut v = vec![("all", hs[0].clone())];
                    for (i, name) in CAUSE_NAMES.iter().enumerate().take(CAUSES) {
                        v.push((*name, hs[i + 1].clone()));
                    }
                    out_h.insert(r.pid, v);
                }
                r.window = window.get(&r.pid).map(|w| WindowStats {
                    pauses: w.count,
                    per_s: w.count as f64 * 1e9 / WINDOW_NS as f64,
                    p99_ns: w.percentile(0.99),
                    max_ns: w.max_ns,
                    cause_ns: [0; CAUSES],
                });
                r
            })
            .collect();
        (rows, out_h)
    }

    fn lease_rows(&self, t: u64, rows: &[Row]) -> Vec<LeaseRow> {
        let mut held: BTreeMap<(String, u32), &LeaseEvent> = BTreeMap::new();
        for l in self.leases.iter().take_while(|l| l.ts_mono_ns <= t) {
            let key = (l.name.clone(), l.pid);
            if l.release {
                held.remove(&key);
            } else if let Some(old) = held.get_mut(&key) {
                if l.deadline_mono_ns.is_some() {
                    *old = l;
                }
            } else {
                held.insert(key, l);
            }
        }
        held.into_values()
            .map(|l| {
                let remaining = l.deadline_mono_ns.map(|d| d as i64 - t as i64);
                let ttl = l.ttl_ns.unwrap_or(0);
                let worst = rows
                    .iter()
                    .find(|r| r.pid == l.pid)
                    .map_or(0, |r| r.window.map_or(0, |w| w.max_ns));
                LeaseRow {
                    name: l.name.clone(),
                    pid: l.pid,
                    comm: l.comm.clone(),
                    token: l.token,
                    ttl_ns: ttl,
                    remaining_ns: remaining,
                    risk: picture::lease_risk(remaining, ttl, worst),
                }
            })
            .collect()
    }

    /// The picture at playhead `t`, and per-process histograms.
    fn at(&self, t: u64) -> (Picture, BTreeMap<u32, Hists>) {
        let (streamed, streamed_hists) = self.rows_at(t);
        let (mut rows, mut hists) = if self.at_end(t) {
            // The recording's exact summaries, with the last window from the streamed pauses.
            let windows: BTreeMap<u32, WindowStats> = streamed
                .iter()
                .filter_map(|r| Some((r.pid, r.window?)))
                .collect();
            let rows = self
                .summaries
                .iter()
                .map(|s| Row {
                    window: windows.get(&s.row.pid).copied(),
                    ..s.row.clone()
                })
                .collect();
            let hists = self
                .summaries
                .iter()
                .map(|s| (s.row.pid, s.hists.clone()))
                .collect();
            (rows, hists)
        } else {
            (streamed, streamed_hists)
        };
        rows.retain(|r| r.pauses > 0 || r.retransmits > 0);
        hists.retain(|pid, _| rows.iter().any(|r| r.pid == *pid));
        let leases = self.lease_rows(t, &rows);
        picture::attach_leases(&mut rows, &leases);
        let upto = self.items.partition_point(|i| i.mark.start_mono_ns <= t);
        let past = &self.items[..upto];
        let marks: Vec<Mark> = past[upto.saturating_sub(picture::MAX_MARKS)..]
            .iter()
            .map(|i| i.mark.clone())
            .collect();
        let mut header = self.header_base.clone();
        header.steal_pct = self
            .steal
            .iter()
            .take_while(|(ts, _)| *ts <= t)
            .last()
            .map(|(_, p)| *p);
        header.retransmits = past
            .iter()
            .filter(|i| i.mark.lane == Lane::Retransmit)
            .count() as u64;
        header.host_freezes = past
            .iter()
            .filter(|i| i.mark.lane == Lane::HostPause)
            .count() as u64;
        header.last_step = past
            .iter()
            .rev()
            .find(|i| i.mark.lane == Lane::ClockStep)
            .and_then(|i| i.step_ns)
            .map(super::view::signed);
        header.last_incident = past
            .iter()
            .rev()
            .find(|i| i.mark.lane == Lane::Incident)
            .map(|i| i.mark.text.clone());
        let pic = Picture {
            header,
            rows,
            marks,
            leases,
            now_mono_ns: t,
            window_ns: WINDOW_NS,
        };
        (pic, hists)
    }

    /// The picture at `t` and the detail of `pid` (when asked).
    pub fn picture(&self, t: u64, pid: Option<u32>) -> (Picture, Option<Detail>) {
        let (pic, mut hists) = self.at(t);
        let detail = pid.and_then(|pid| {
            let row = pic.row(pid)?;
            let upto = self.items.partition_point(|i| i.mark.start_mono_ns <= t);
            let mut by_conn = BTreeMap::<&str, SocketRow>::new();
            for it in self.items[..upto]
                .iter()
                .filter(|i| i.mark.pid == Some(pid))
            {
                let Some((conn, timeout)) = &it.socket else {
                    continue;
                };
                let e = by_conn.entry(conn).or_insert(SocketRow {
                    conn: conn.clone(),
                    retransmits: 0,
                    timeouts: 0,
                    delay_est_ns: 0,
                });
                e.retransmits += 1;
                e.timeouts += u64::from(*timeout);
                e.delay_est_ns += it.mark.duration_ns();
            }
            let mut sockets: Vec<SocketRow> = by_conn.into_values().collect();
            sockets.sort_by_key(|s| std::cmp::Reverse(s.retransmits));
            let hists = hists.remove(&pid).unwrap_or_default();
            let advice = hists.first().map_or_else(String::new, |(_, all)| {
                picture::advice_line(
                    all,
                    pic.now_mono_ns
                        .min(self.end_mono_ns)
                        .saturating_sub(self.start_mono_ns),
                    ADVISE_TARGET,
                )
            });
            Some(Detail {
                advice,
                pid,
                comm: row.comm.clone(),
                hists,
                latest: picture::latest_of(&pic.marks, pid),
                threads: picture::threads_of(&pic.marks, pid),
                sockets,
                leases: pic.leases_of(pid),
            })
        });
        (pic, detail)
    }

    /// What the end report says about this recording.
    pub fn report_input(&self, advise_target: f64) -> ReportInput {
        let t = self.end_mono_ns;
        let (pic, hists) = self.at(t);
        let mut memory = self.memory.clone();
        memory.truncate(15);
        let mut disks = self.disks.clone();
        disks.sort_by_key(|(total_ns, _)| std::cmp::Reverse(*total_ns));
        memory.extend(
            disks
                .into_iter()
                .take(super::report::REPORTED_DISKS)
                .map(|(_, l)| l),
        );
        ReportInput {
            hists: hists.into_iter().collect(),
            observed_ns: self.end_mono_ns - self.start_mono_ns,
            advise_target,
            memory,
            net: self.net.clone(),
            exact: !self.summaries.is_empty(),
            pic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: Value) -> Event {
        Event::from_line(v).unwrap()
    }

    fn line(kind: &str, ts: u64, body: Value) -> Event {
        let mut v = serde_json::json!({
            "schema": crate::export::ndjson::SCHEMA_VERSION, "type": kind, "host": "h",
            "ts_mono_ns": ts, "wall_ns": 0, "wall_err_ns": 1000
        });
        for (k, x) in body.as_object().unwrap() {
            v[k] = x.clone();
        }
        event(v)
    }

    fn pause(ts: u64, pid: u32, runq: u64, blocked: u64) -> Event {
        line(
            "pause",
            ts,
            serde_json::json!({"pid": pid, "tid": pid + 1, "comm": "app", "start_mono_ns": ts,
                "duration_ns": runq + blocked,
                "components": {"runq_ns": runq, "blocked_ns": blocked, "stopped_ns": 0}}),
        )
    }

    #[test]
    fn the_playhead_counts_what_had_ended_and_the_end_uses_the_summary() {
        let summary = line(
            "summary",
            100_000_000_000,
            serde_json::json!({"pid": 7, "comm": "app", "exited": false,
                "episodes": {"count": 40, "total_ns": 400_000_000, "max_ns": 30_000_000,
                    "hist": [[8_388_608, 40]]},
                "components": {"runq": {"count": 40, "total_ns": 380_000_000, "max_ns": 30_000_000},
                    "blocked": {"count": 1, "total_ns": 20_000_000, "max_ns": 20_000_000},
                    "stopped": {"count": 0, "total_ns": 0, "max_ns": 0}},
                "gc": {"count": 0, "total_ns": 0, "max_ns": 0}, "net": null, "memory": null}),
        );
        let r = Replay::from_events(
            "rec",
            vec![
                pause(1_000_000_000, 7, 10_000_000, 0),
                pause(2_000_000_000, 7, 5_000_000, 20_000_000),
                summary,
            ],
            0,
        )
        .unwrap();
        let (p, _) = r.picture(1_500_000_000, None);
        assert_eq!(p.rows.len(), 1);
        assert_eq!((p.rows[0].pauses, p.rows[0].total_ns), (1, 10_000_000));
        let (p, d) = r.picture(2_100_000_000, Some(7));
        assert_eq!(p.rows[0].cause_ns[..2], [15_000_000, 20_000_000]);
        assert_eq!(p.rows[0].window.unwrap().pauses, 2);
        let d = d.unwrap();
        assert_eq!(d.latest.len(), 2);
        assert!(
            d.latest[1]
                .text
                .contains("25.0ms = blocked 20.0ms + runq 5.0ms"),
            "{:?}",
            d.latest
        );
        // At the end, the summary's exact totals and histogram.
        let (p, d) = r.picture(r.end_mono_ns, Some(7));
        assert_eq!((p.rows[0].pauses, p.rows[0].total_ns), (40, 400_000_000));
        let all = &d.unwrap().hists[0].1;
        assert_eq!(all.hist.iter().sum::<u64>(), 40);
        assert!(all.percentile(0.5).unwrap() >= 8_388_608);
    }

    /// The end report of a recording lists its busiest disks as the live one does.
    #[test]
    fn a_recordings_report_lists_its_busiest_disks() {
        let disk = |device: &str, dev: &str, total_ns: u64| {
            line(
                "disk",
                5,
                serde_json::json!({"dev": dev, "device": device, "requests": 3, "bytes": 8192,
                    "total_ns": total_ns, "max_ns": 4_000_000, "p50_ns": 1_000_000,
                    "p99_ns": 4_000_000,
                    "ops": {"flush": {"requests": 1, "bytes": 0, "total_ns": 4_000_000,
                                      "max_ns": 4_000_000, "p50_ns": 4_000_000, "p99_ns": 4_000_000},
                            "write": {"requests": 2, "bytes": 8192, "total_ns": 2_000_000,
                                      "max_ns": 1_000_000, "p50_ns": 1_000_000, "p99_ns": 1_000_000}}}),
            )
        };
        let mut events = vec![pause(1, 7, 1, 0)];
        events.extend((0..5).map(|i| disk(&format!("loop{i}"), &format!("7:{i}"), i * 1_000_000)));
        let r = Replay::from_events("rec", events, 0).unwrap();
        let memory = r.report_input(0.999).memory;
        assert_eq!(
            memory,
            ["loop4", "loop3", "loop2"].map(|d| format!(
                "   disk {d:<16} 7:{}: 3 requests, p99 4.0ms: flush 1 (p99 4.0ms), write 2 (p99 1.0ms)",
                &d[4..]
            ))
        );
    }

    #[test]
    fn sockets_come_from_the_retransmit_lines_endpoints() {
        let rtx = |ts, mode: &str, delay: u64| {
            line(
                "retransmit",
                ts,
                serde_json::json!({"pid": 7, "comm": "app", "mode": mode,
                    "local": {"addr": "10.0.0.1", "port": 5000},
                    "remote": {"addr": "::1", "port": 80}, "delay_est_ns": delay}),
            )
        };
        let r = Replay::from_events("rec", vec![rtx(10, "timeout", 200), rtx(20, "fast", 30)], 0)
            .unwrap();
        let (_, d) = r.picture(100, Some(7));
        let s = &d.unwrap().sockets;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].conn, "10.0.0.1:5000 -> [::1]:80");
        assert_eq!(
            (s[0].retransmits, s[0].timeouts, s[0].delay_est_ns),
            (2, 1, 230)
        );
    }

    #[test]
    fn one_host_only_and_not_empty() {
        let mut other = pause(1, 7, 1, 0);
        other.host = "other".into();
        let e = Replay::from_events("rec", vec![pause(1, 7, 1, 0), other], 0).unwrap_err();
        assert!(e.to_string().contains("2 hosts (h, other)"), "{e}");
        let e = Replay::from_events("rec", vec![], 3).unwrap_err();
        assert!(e.to_string().contains("no pausewatch lines"), "{e}");
    }

    #[test]
    fn leases_are_held_until_released() {
        let lease = |ts, ev: &str, deadline: Option<u64>| {
            line(
                "lease",
                ts,
                serde_json::json!({"event": ev, "lease": "leader", "pid": 7, "comm": "app",
                    "token": 3, "ttl_ns": 2_000_000_000u64, "deadline_mono_ns": deadline}),
            )
        };
        let r = Replay::from_events(
            "rec",
            vec![
                pause(500, 7, 1_000, 0),
                lease(1_000, "acquire", Some(2_000_001_000)),
                lease(5_000_000_000, "release", None),
            ],
            0,
        )
        .unwrap();
        let (p, _) = r.picture(1_000_001_000, None);
        assert_eq!(p.leases.len(), 1);
        assert_eq!(p.leases[0].remaining_ns, Some(1_000_000_000));
        assert_eq!(p.rows[0].leases, 1);
        let (p, _) = r.picture(3_000_000_000, None);
        assert_eq!(p.leases[0].risk, "expired");
        let (p, _) = r.picture(5_000_000_000, None);
        assert!(p.leases.is_empty());
    }
}
