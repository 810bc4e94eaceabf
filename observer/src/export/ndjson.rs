//! NDJSON lines (docs/ndjson-schema.md). One object per line, every line with `schema`, `type`,
//! `host`, `ts_mono_ns`, `wall_ns` and `wall_err_ns`.
use std::io::Write;

use observer_common::{Component, DropCause, NUM_DROP_CAUSES, STAT_EPISODE, STAT_STEAL};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    model::{
        advise::TailEstimate,
        correlate::{Correlator, Incident, IncidentKind},
        episode::Episode,
        gc::GcPause,
        lease::{Accepted, HolderRef, Report, Scope},
        net::ProcessNet,
        process::ProcessEntry,
        stats::Aggregate,
        stop::{Actor, Signal, Stop, signal_name},
        timeline::Decomposition,
    },
    probe::cost::{ProgramCost, floor_for, is_stats_floor, stats_floor_ns},
    source::clock::WallClock,
};

/// Version of the line format; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// A `pause` line. Its fields are in alphabetical order, the order serde_json gives every other
/// line (its `Value` maps are sorted), so the bytes are what a `Value` would give: a unit test
/// holds them to that. Building the `Value` cost an allocation and a sorted insert per key:
/// about 60% of the agent's decode path under a profile, the bulk of its CPU when a saturated
/// host streams thousands of pauses a second.
#[derive(Serialize)]
struct PauseLine<'a> {
    blocked: Option<Value>,
    comm: &'a str,
    components: PauseComponents,
    cpu: u32,
    dominant: &'static str,
    duration_ns: u64,
    end_mono_ns: u64,
    host: &'a str,
    id: u64,
    pid: u32,
    preempted_by: Option<Preemptor<'a>>,
    prev_cpu: u32,
    schema: u32,
    start_mono_ns: u64,
    start_reason: Option<&'static str>,
    tid: u32,
    ts_mono_ns: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    wall_err_ns: u64,
    wall_ns: i64,
}

/// `pause.components`, one field per `Component` (`{name}_ns`), alphabetical.
#[derive(Serialize)]
struct PauseComponents {
    blocked_ns: u64,
    runq_ns: u64,
    stopped_ns: u64,
}
const _: () = assert!(
    observer_common::NUM_COMPONENTS == 3,
    "PauseComponents names each component"
);

#[derive(Serialize)]
struct Preemptor<'a> {
    comm: &'a str,
    tid: u32,
}

/// Writes one line, counting it in `failed` when the sink refuses it.
fn write_line(out: &mut impl Write, failed: &mut u64, line: &impl Serialize) {
    if serde_json::to_writer(&mut *out, line).is_err() || out.write_all(b"\n").is_err() {
        *failed += 1;
    }
}

#[derive(Serialize)]
struct StatJson {
    count: u64,
    total_ns: u64,
    max_ns: u64,
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    /// The non-empty histogram buckets as [lower bound ns, count] (`pausewatch report` and
    /// `replay` read percentiles and timeout advice back from these).
    hist: Vec<[u64; 2]>,
}

pub(super) fn actor_json(a: &Actor) -> Value {
    json!({ "pid": a.pid, "tid": a.tid, "uid": a.uid, "comm": a.comm })
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Thread(_) => "thread",
        Scope::Process => "process",
    }
}

fn holder_json(h: &HolderRef) -> Value {
    json!({ "pid": h.pid, "comm": h.comm, "token": h.token, "acquired_mono_ns": h.acquired_mono_ns })
}

fn decomposition_json(d: &Decomposition) -> Value {
    let parts: Vec<Value> = d
        .parts
        .iter()
        .map(|p| {
            json!({
                "cause": p.cause.name(),
                "duration_ns": p.duration_ns,
                "detail": p.detail,
                "evidence": p.evidence,
            })
        })
        .collect();
    json!({
        "start_mono_ns": d.start_mono_ns,
        "end_mono_ns": d.end_mono_ns,
        "duration_ns": d.duration_ns(),
        "parts": parts,
        "context": d.context,
        "description": d.describe(),
    })
}

fn stat_json(a: &Aggregate) -> StatJson {
    StatJson {
        count: a.count,
        total_ns: a.total_ns,
        max_ns: a.max_ns,
        p50_ns: a.percentile(0.5),
        p99_ns: a.percentile(0.99),
        hist: a
            .hist
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| [observer_common::hist::bounds(i).0, *n])
            .collect(),
    }
}

/// Everything lost on the way, for the `drops` line.
pub struct Drops<'a> {
    pub kernel: &'a [u64; NUM_DROP_CAUSES],
    pub decode_errors: u64,
    pub evicted_processes: u64,
    pub runtime_checks_skipped: u64,
    /// Late wakes and steal samples of the control sleeper the agent was too busy to take.
    pub host_events_dropped: u64,
    /// Blocked phases whose kernel stack could not be named.
    pub unnamed_stacks: u64,
}

/// Lease socket counters, for the `lease_summary` line.
pub struct LeaseCounters {
    pub errors: u64,
    pub connections: u64,
    pub refused_connections: u64,
}

/// Writes lines to any sink, counting lines it could not write (a full disk, a closed pipe)
/// instead of stopping the agent.
pub struct NdjsonWriter<W: Write> {
    out: W,
    host: String,
    failed_lines: u64,
    /// The spool's counters when `out` is one (lines dropped for a slow consumer, lines its
    /// thread could not write).
    spool: Option<std::sync::Arc<super::spool::SpoolStats>>,
}

impl<W: Write> NdjsonWriter<W> {
    pub fn new(out: W, host: String) -> Self {
        Self {
            out,
            host,
            failed_lines: 0,
            spool: None,
        }
    }

    /// Lines lost because the sink refused them (disk full, closed pipe).
    pub fn failed_lines(&self) -> u64 {
        self.failed_lines
            + self.spool.as_ref().map_or(0, |s| {
                s.failed_lines.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// Lines dropped because the consumer did not keep up.
    /// A notice in the recording, once writing works again, of the lines a spell of failed
    /// writes (a full disk) lost.
    pub fn note_write_recovery(&mut self, clock: &WallClock) {
        let Some((lost, why)) = self.spool.as_ref().and_then(|s| s.take_recovery()) else {
            return;
        };
        self.notice(
            clock,
            "warn",
            "output_failed",
            &format!(
                "{lost} lines could not be written ({why}) and are missing before this one; tracing went on"
            ),
            json!({ "lost_lines": lost }),
        );
    }

    pub fn dropped_lines(&self) -> u64 {
        self.spool.as_ref().map_or(0, |s| {
            s.dropped_lines.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    pub(super) fn line(&mut self, kind: &str, ts_mono_ns: u64, clock: &WallClock, body: Value) {
        let mut obj = json!({
            "schema": SCHEMA_VERSION,
            "type": kind,
            "host": self.host,
            "ts_mono_ns": ts_mono_ns,
            "wall_ns": clock.wall_ns(ts_mono_ns),
            "wall_err_ns": clock.err_ns,
        });
        if let (Some(o), Value::Object(b)) = (obj.as_object_mut(), body) {
            o.extend(b);
        }
        write_line(&mut self.out, &mut self.failed_lines, &obj);
    }

    /// The sink, with everything written (tests and fuzzing read it back).
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.failed_lines += 1;
        }
    }

    pub fn notice(
        &mut self,
        clock: &WallClock,
        level: &str,
        event: &str,
        message: &str,
        extra: Value,
    ) {
        let mut body = json!({ "level": level, "event": event, "message": message });
        if let (Some(o), Value::Object(e)) = (body.as_object_mut(), extra) {
            o.extend(e);
        }
        self.line("notice", WallClock::mono_now(), clock, body);
    }

    /// A `pause` line: the one a busy host writes thousands of a second, so it is serialised
    /// from a typed struct rather than built as a `Value` (whose maps cost an allocation per
    /// key; see `PauseLine`).
    pub fn pause(&mut self, clock: &WallClock, ep: &Episode) {
        let c = |c: Component| ep.component(c);
        let line = PauseLine {
            blocked: ep.blocked.as_ref().map(super::memory_lines::blocked_json),
            comm: &ep.comm,
            components: PauseComponents {
                blocked_ns: c(Component::Blocked),
                runq_ns: c(Component::Runq),
                stopped_ns: c(Component::Stopped),
            },
            cpu: ep.cpu,
            dominant: ep.dominant().name(),
            duration_ns: ep.duration_ns,
            end_mono_ns: ep.end_mono_ns(),
            host: &self.host,
            id: ep.id,
            pid: ep.pid,
            preempted_by: ep
                .preempted_by
                .as_ref()
                .map(|(tid, comm)| Preemptor { comm, tid: *tid }),
            prev_cpu: ep.prev_cpu,
            schema: SCHEMA_VERSION,
            start_mono_ns: ep.start_mono_ns,
            start_reason: ep.start_reason.map(|r| r.name()),
            tid: ep.tid,
            ts_mono_ns: ep.start_mono_ns,
            kind: "pause",
            wall_err_ns: clock.err_ns,
            wall_ns: clock.wall_ns(ep.start_mono_ns),
        };
        write_line(&mut self.out, &mut self.failed_lines, &line);
    }

    pub fn stop(&mut self, clock: &WallClock, stop: &Stop) {
        let body = json!({
            "id": stop.id,
            "pid": stop.pid,
            "comm": stop.comm,
            "kind": stop.kind.map(|k| k.name()),
            "threads": stop.threads,
            "start_mono_ns": stop.start_mono_ns,
            "end_mono_ns": stop.end_mono_ns(),
            "duration_ns": stop.duration_ns,
            "signal": stop.signal.map(signal_name),
            "stopped_by": stop.stopped_by.as_ref().map(actor_json),
            "resumed_by": stop.resumed_by.as_ref().map(|(_, a)| actor_json(a)),
            "resume_signal": stop.resumed_by.as_ref().map(|(sig, _)| signal_name(*sig)),
            "description": stop.describe(),
        });
        self.line("stop", stop.start_mono_ns, clock, body);
    }

    pub fn gc(&mut self, clock: &WallClock, g: &GcPause) {
        let body = json!({
            "id": g.id,
            "pid": g.pid,
            "tid": g.tid,
            "comm": g.comm,
            "runtime": g.runtime_name(),
            "start_mono_ns": g.start_mono_ns,
            "end_mono_ns": g.end_mono_ns(),
            "duration_ns": g.duration_ns,
            "gc_ns": g.gc_ns,
            "time_to_safepoint_ns": g.sync_ns,
            "collection": g.collection,
            "full": g.full,
            "cause": g.cause(),
            "operation": g.operation,
            "reason": g.reason,
            "description": g.describe(),
        });
        self.line("gc", g.start_mono_ns, clock, body);
    }

    pub fn signal(&mut self, clock: &WallClock, sig: &Signal) {
        let body = json!({
            "pid": sig.pid,
            "tid": sig.tid,
            "comm": sig.comm,
            "signal": signal_name(sig.sig),
            "signo": sig.sig,
            "group": sig.group,
            "result": sig.result_name(),
            "sender": sig.sender.as_ref().map(actor_json),
        });
        self.line("signal", sig.ts_mono_ns, clock, body);
    }

    /// A lease report the agent accepted.
    pub fn lease(&mut self, clock: &WallClock, r: &Report, a: &Accepted) {
        let body = json!({
            "event": r.verb.name(),
            "lease": r.name,
            "pid": r.pid,
            "tid": r.tid,
            "comm": r.comm,
            "token": r.token,
            "ttl_ns": r.ttl_ns,
            "expires_wall_ns": r.expires_wall_ns,
            "scope": a.scope.map(scope_name),
            "deadline_mono_ns": a.deadline_mono_ns,
            "deadline_wall_ns": a.deadline_mono_ns.map(|d| clock.wall_ns(d)),
            "expired_ns_ago": a.expired_ago_ns,
            "token_holder": a.token_holder.as_ref().map(holder_json),
        });
        self.line("lease", r.ts_mono_ns, clock, body);
    }

    /// A lease report the agent refused (malformed, not permitted, not held).
    pub fn lease_error(&mut self, clock: &WallClock, peer_pid: u32, error: &str) {
        let body = json!({ "event": "error", "peer_pid": peer_pid, "error": error });
        self.line("lease", WallClock::mono_now(), clock, body);
    }

    pub fn incident(&mut self, clock: &WallClock, i: &Incident) {
        let body = json!({
            "id": i.id,
            "kind": i.kind.name(),
            "lease": i.lease,
            "pid": i.pid,
            "comm": i.comm,
            "token": i.token,
            "scope": scope_name(i.scope),
            "scope_tid": i.scope.tid(),
            "deadline_mono_ns": i.deadline_mono_ns,
            "deadline_wall_ns": i.deadline_mono_ns.map(|d| clock.wall_ns(d)),
            "pause": i.pause.as_ref().map(decomposition_json),
            "pause_tid": i.pause_tid,
            "cause": i.ongoing.clone().or_else(|| {
                i.pause.as_ref().and_then(|d| d.main_cause()).map(|p| match &p.detail {
                    Some(d) => format!("{}: {d}", p.cause.name()),
                    None => p.cause.name().to_string(),
                })
            }),
            "resumed_mono_ns": i.pause.as_ref().map(|d| d.end_mono_ns),
            "action": i.action.map(|a| a.name()),
            "newer_holder": i.newer_holder.as_ref().map(holder_json),
            "holder_error_ns": i.holder_error_ns,
            "share_used": i.share_used,
            "estimate": i.estimate,
            "ongoing": i.ongoing.is_some(),
            "follows": i.follows,
            "evidence": i.evidence(),
            "message": i.message,
        });
        self.line("incident", i.ts_mono_ns, clock, body);
    }

    /// At exit: the leases pausewatch knew of and the incidents it raised.
    pub fn lease_summary(&mut self, clock: &WallClock, c: &Correlator, l: &LeaseCounters) {
        let leases: Vec<Value> = c
            .leases
            .holdings()
            .iter()
            .rev()
            .take(256)
            .map(|h| {
                json!({
                    "lease": h.name,
                    "pid": h.pid,
                    "comm": h.comm,
                    "token": h.token,
                    "scope": scope_name(h.scope),
                    "scope_tid": h.scope.tid(),
                    "declared": h.declared_renew_every_ns.is_some(),
                    "ttl_ns": h.ttl_ns,
                    "deadline_mono_ns": h.deadline(),
                    "released_mono_ns": h.released_mono_ns,
                })
            })
            .collect();
        let incidents: serde_json::Map<String, Value> = IncidentKind::ALL
            .iter()
            .map(|&k| (k.name().to_string(), json!(c.counts[k as usize])))
            .collect();
        let body = json!({
            "leases": leases,
            "incidents": incidents,
            "lease_errors": l.errors,
            "connections": l.connections,
            "refused_connections": l.refused_connections,
            "pauses_not_judged": c.pending_dropped,
            "timeline_forgotten": c.timeline.forgotten,
        });
        self.line("lease_summary", WallClock::mono_now(), clock, body);
    }

    /// A step of the wall clock; `wall_ns` is on the clock after the step.
    pub fn summary(
        &mut self,
        clock: &WallClock,
        ts_mono_ns: u64,
        p: &ProcessEntry,
        net: Option<&ProcessNet>,
        observed_ns: u64,
        target: f64,
    ) {
        let pauses = p.pauses();
        let advice = TailEstimate::new(&pauses, observed_ns).map(|e| {
            let chance: serde_json::Map<String, Value> = [
                ("100ms", 100_000_000u64),
                ("1s", 1_000_000_000),
                ("10s", 10_000_000_000),
            ]
            .iter()
            .map(|(k, t)| (k.to_string(), json!(e.chance_per_hour(&pauses, *t))))
            .collect();
            json!({
                "target_chance_per_hour": target,
                "shortest_timeout_ns": e.shortest_timeout(&pauses, target),
                "shortest_timeout_range_ns": e.shortest_timeout_range(&pauses, target),
                "chance_per_hour": chance,
                "observed_ns": observed_ns,
                "pauses": e.pauses,
                "tail_pauses": e.tail_pauses,
                "tail_threshold_ns": e.threshold_ns,
                "tail_alpha": e.alpha,
                "basis": e.basis(),
            })
        });
        let components: serde_json::Map<String, Value> = Component::ALL
            .iter()
            .map(|&c| (c.name().to_string(), json!(stat_json(&p.stat(c as usize)))))
            .collect();
        let body = json!({
            "pid": p.pid,
            "comm": p.comm,
            "exited": p.exited,
            "episodes": stat_json(&p.stat(STAT_EPISODE)),
            "components": components,
            "streamed": p.streamed,
            "dropped_records": p.dropped_records(),
            "stops": stat_json(p.stops()),
            "signals_received": p.signals,
            "gc": stat_json(p.gc()),
            "gc_collections": p.gc_collections,
            "steal_est": stat_json(&p.stat(STAT_STEAL)),
            "timeout_advice": advice,
            "memory": super::memory_lines::memory_json(p),
            "net": net.map(|n| json!({
                "retransmits": n.total.retransmits,
                "segs": n.total.segs,
                "timeouts": n.total.timeouts,
                "delay_est_ns": n.total.delay_est_ns,
            })),
        });
        self.line("summary", ts_mono_ns, clock, body);
    }

    pub fn drops(&mut self, clock: &WallClock, d: &Drops) {
        let ring: serde_json::Map<String, Value> = DropCause::ALL
            .iter()
            .map(|c| (c.name().to_string(), json!(d.kernel[*c as usize])))
            .collect();
        let failed = self.failed_lines();
        let dropped = self.dropped_lines();
        let body = json!({
            "kernel": ring,
            "decode_errors": d.decode_errors,
            "evicted_processes": d.evicted_processes,
            "output_failed_lines": failed,
            "output_dropped_lines": dropped,
            "runtime_checks_skipped": d.runtime_checks_skipped,
            "host_events_dropped": d.host_events_dropped,
            "unnamed_stacks": d.unnamed_stacks,
        });
        self.line("drops", WallClock::mono_now(), clock, body);
    }

    pub fn self_cost(
        &mut self,
        clock: &WallClock,
        costs: &[ProgramCost],
        mechanism: &str,
        stats_enabled: bool,
        stats_mode: &str,
        stats_on_ns: u64,
    ) {
        let floor = stats_floor_ns(costs);
        let programs: Vec<Value> = costs
            .iter()
            .filter(|c| !is_stats_floor(c.name))
            .map(|c| {
                let mean = c.mean_ns();
                let floor = floor_for(costs, c.name);
                json!({
                    "name": c.name,
                    "run_count": c.run_count,
                    "run_time_ns": c.run_time_ns,
                    "mean_ns": mean,
                    "floor_ns": floor,
                    "net_ns": mean.zip(floor).map(|(m, f)| m.saturating_sub(f)),
                })
            })
            .collect();
        let body = json!({
            "mechanism": mechanism,
            "stats_enabled": stats_enabled,
            "stats_mode": stats_mode,
            "stats_on_s": stats_on_ns as f64 / 1e9,
            "stats_floor_ns": floor,
            "programs": programs,
        });
        self.line("self_cost", WallClock::mono_now(), clock, body);
    }
}

impl NdjsonWriter<super::spool::Spool> {
    pub fn spooled(out: super::spool::Spool, host: String) -> Self {
        let stats = out.stats.clone();
        Self {
            spool: Some(stats),
            ..Self::new(out, host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{EpisodeStart, NUM_COMPONENTS};

    fn clock() -> WallClock {
        WallClock {
            offset_ns: 1_700_000_000_000_000_000,
            err_ns: 5_000,
            unsynced: false,
            sync: Default::default(),
        }
    }

    #[test]
    fn pause_lines_carry_schema_type_and_units() {
        let mut w = NdjsonWriter::new(Vec::new(), "h1".into());
        let ep = Episode {
            id: 7,
            tid: 11,
            pid: 10,
            comm: "pg".into(),
            cpu: 1,
            prev_cpu: 0,
            start_mono_ns: 1_000,
            duration_ns: 6_000_000,
            components_ns: [6_000_000, 0, 0],
            start_reason: Some(EpisodeStart::Preempted),
            preempted_by: Some((99, "hog".into())),
            blocked: None,
        };
        assert_eq!(NUM_COMPONENTS, 3);
        w.pause(&clock(), &ep);
        let text = String::from_utf8(w.out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["type"], "pause");
        assert_eq!(v["host"], "h1");
        assert_eq!(v["wall_ns"], 1_700_000_000_000_001_000i64);
        assert_eq!(v["wall_err_ns"], 5_000);
        assert_eq!(v["components"]["runq_ns"], 6_000_000);
        assert_eq!(v["preempted_by"]["comm"], "hog");
        assert_eq!(v["start_reason"], "preempted");
        assert_eq!(v["dominant"], "runq");
    }

    /// The typed pause line writes the bytes a `Value` would (sorted keys, same numbers), with
    /// and without a preemptor and a blocked reason, and names every component.
    #[test]
    fn a_typed_pause_line_is_byte_for_byte_the_sorted_value() {
        let blocked = crate::model::memory::BlockedWhy {
            reason: observer_common::BlockReason::Sync,
            addr: 3,
            dev: 8,
            ino: 42,
            pgoff: 0,
            stack_id: None,
            resolved: Some("/data/wal".into()),
        };
        let episodes = [
            (
                Some((99, "hog".to_string())),
                None,
                Some(EpisodeStart::Preempted),
            ),
            (None, Some(blocked), Some(EpisodeStart::Blocked)),
            (None, None, None),
        ];
        for (preempted_by, blocked, start_reason) in episodes {
            let ep = Episode {
                id: 7,
                tid: 11,
                pid: 10,
                comm: "a \"quoted\" name".into(),
                cpu: 1,
                prev_cpu: 0,
                start_mono_ns: 1_000,
                duration_ns: 9_000_000,
                components_ns: [6_000_000, 2_000_000, 1_000_000],
                start_reason,
                preempted_by,
                blocked,
            };
            let mut w = NdjsonWriter::new(Vec::new(), "h1".into());
            w.pause(&clock(), &ep);
            let text = String::from_utf8(w.out).unwrap();
            let v: Value = serde_json::from_str(text.trim_end()).unwrap();
            assert_eq!(text.trim_end(), serde_json::to_string(&v).unwrap());
            for c in Component::ALL {
                assert_eq!(
                    v["components"][format!("{}_ns", c.name())],
                    ep.component(c),
                    "{c:?}"
                );
            }
            assert_eq!(v["ts_mono_ns"], 1_000);
            assert_eq!(v["end_mono_ns"], 9_001_000);
            assert_eq!(
                v["blocked"]["reason"],
                if ep.blocked.is_some() {
                    json!("fsync")
                } else {
                    Value::Null
                }
            );
            // The typed line repeats the header every other line gets from `line`: it carries
            // every one of its fields, with the same host and clock values.
            let mut w = NdjsonWriter::new(Vec::new(), "h1".into());
            w.line("x", 1_000, &clock(), json!({}));
            let header: Value = serde_json::from_slice(w.out.trim_ascii_end()).unwrap();
            for (k, hv) in header.as_object().unwrap() {
                if k != "type" {
                    assert_eq!(&v[k], hv, "header field {k}");
                }
            }
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    #[test]
    fn a_failing_sink_is_counted_not_fatal() {
        let mut w = NdjsonWriter::new(Broken, "h".into());
        w.notice(&clock(), "info", "attached", "x", json!({}));
        w.flush();
        assert_eq!(w.failed_lines(), 2);
    }
}
