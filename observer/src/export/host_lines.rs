//! NDJSON lines about the host rather than one process: clock changes, steps and sync state,
//! TCP retransmissions, host-wide pauses and steal (docs/ndjson-schema.md).
use std::io::Write;

use serde_json::{Value, json};

use super::ndjson::{NdjsonWriter, actor_json};
use crate::{
    model::{
        clock::{Change, ClockChange, JoinedStep},
        hiccup::HostPause,
        net::{NetCounts, NetTable, Retransmit},
    },
    source::{clock::WallClock, host::StealSample},
};

fn change_json(c: &Change) -> Value {
    let mut v = json!({ "kind": c.name() });
    let extra = match *c {
        Change::Set { wall_ns } => json!({ "wall_ns": i64::try_from(wall_ns).ok() }),
        Change::StepBy { offset_ns }
        | Change::Slew { offset_ns }
        | Change::SlewOnce { offset_ns } => {
            json!({ "offset_ns": offset_ns })
        }
        Change::Frequency { ppm } => json!({ "ppm": ppm }),
        Change::Status { status } => json!({ "status": status }),
        Change::MaxError { ns } | Change::EstError { ns } => json!({ "ns": ns }),
        Change::TimeConstant | Change::Tai | Change::Tick => json!({}),
    };
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn errno_name(ret: i64) -> Option<String> {
    (ret < 0).then(|| {
        let e = std::io::Error::from_raw_os_error(i32::try_from(-ret).unwrap_or(0));
        e.to_string()
    })
}

fn change_by_json(c: &ClockChange) -> Value {
    let mut by = actor_json(&c.by);
    if let Some(o) = by.as_object_mut() {
        o.insert("syscall".into(), json!(c.syscall.name()));
    }
    by
}

fn counts_json(c: &NetCounts) -> Value {
    json!({
        "retransmits": c.retransmits,
        "segs": c.segs,
        "timeouts": c.timeouts,
        "fast": c.fast,
        "probes": c.probes,
        "synacks": c.synacks,
        "failed": c.failed,
        "delay_est_ns": c.delay_est_ns,
        "max_rto_ns": c.max_rto_ns,
    })
}

impl<W: Write> NdjsonWriter<W> {
    /// A clock-changing syscall (`event: "adjust"`).
    pub fn clock_adjust(&mut self, clock: &WallClock, c: &ClockChange) {
        let changes: Vec<Value> = c.changes.iter().map(change_json).collect();
        let body = json!({
            "event": "adjust",
            "by": change_by_json(c),
            "clockid": c.clockid,
            "ok": c.ok(),
            "ret": c.ret,
            "error": errno_name(c.ret),
            "modes": c.modes,
            "changes": changes,
            "steps": c.stepped(),
            "unreadable": c.unreadable,
        });
        self.line("clock", c.ts_mono_ns, clock, body);
    }

    /// A measured step of the wall clock (`event: "step"`) and who made it.
    pub fn clock_step(&mut self, clock: &WallClock, j: &JoinedStep) {
        let body = json!({
            "event": "step",
            "step_ns": j.step.step_ns,
            "direction": if j.step.step_ns < 0 { "back" } else { "forward" },
            "offset_ns": i64::try_from(clock.offset_ns).unwrap_or(i64::MAX),
            "offset_before_ns": i64::try_from(j.step.offset_before_ns).unwrap_or(i64::MAX),
            "requested_step_ns": j.requested_step_ns(),
            "by": j.by.as_ref().map(change_by_json),
            "description": j.describe(),
            "unsynced": clock.unsynced,
        });
        self.line("clock", j.step.ts_mono_ns, clock, body);
    }

    /// The kernel's clock discipline (`event: "sync"`): at start, at exit and on changes.
    pub fn clock_sync(&mut self, clock: &WallClock) {
        let s = &clock.sync;
        let body = json!({
            "event": "sync",
            "synced": s.synced(),
            "state": s.state,
            "status": s.status,
            "leap": s.leap(),
            "slewing": s.slewing(),
            "pll_offset_ns": s.pll_offset_ns,
            "adjtime_left_ns": s.adjtime_left_ns,
            "freq_ppm": s.freq_ppm(),
            "maxerror_ns": s.maxerror_ns,
            "esterror_ns": s.esterror_ns,
            "tai_s": s.tai_s,
            "offset_ns": i64::try_from(clock.offset_ns).unwrap_or(i64::MAX),
        });
        self.line("clock", WallClock::mono_now(), clock, body);
    }

    pub fn retransmit(&mut self, clock: &WallClock, r: &Retransmit) {
        let ep =
            |(ip, port): (std::net::IpAddr, u16)| json!({ "addr": ip.to_string(), "port": port });
        let body = json!({
            "pid": r.pid,
            "tid": r.tid,
            "comm": r.comm,
            "family": if r.conn.local.0.is_ipv4() { "ipv4" } else { "ipv6" },
            "local": ep(r.conn.local),
            "remote": ep(r.conn.remote),
            "state": r.state,
            "mode": r.mode.name(),
            "segs": r.segs,
            "err": r.err,
            "rto_ns": r.rto_ns,
            "srtt_ns": r.srtt_ns,
            "timeouts_in_a_row": r.timeouts_in_a_row,
            "total_retrans": r.total_retrans,
            "delay_est_ns": r.delay_est_ns,
            "description": r.describe(),
        });
        self.line("retransmit", r.ts_mono_ns, clock, body);
    }

    pub fn host_pause(&mut self, clock: &WallClock, h: &HostPause) {
        let body = json!({
            "id": h.id,
            "start_mono_ns": h.start_mono_ns,
            "duration_ns": h.duration_ns,
            "verdict": h.verdict.name(),
            "host_wide": h.verdict.host_wide(),
            "parts": {
                "runq_ns": h.runq_ns,
                "steal_est_ns": h.steal_ns,
                "unexplained_ns": h.unexplained_ns,
            },
            "suspended_ns": h.suspended_ns,
            "cpu": h.cpu,
            "description": h.describe(),
        });
        self.line("host_pause", h.end_mono_ns(), clock, body);
    }

    /// Host steal over an interval (`event`: "steal" for the control thread's samples, "run"
    /// for the whole run at exit), with the cumulative counters it is the difference of.
    pub fn host_steal(
        &mut self,
        clock: &WallClock,
        event: &str,
        from: &StealSample,
        to: &StealSample,
    ) {
        let interval = to.ts_mono_ns.saturating_sub(from.ts_mono_ns);
        let per_cpu: Vec<u64> = (0..to.per_cpu_ns.len())
            .map(|c| to.cpu_delta(from, c))
            .collect();
        let steal: u64 = per_cpu.iter().sum();
        let body = json!({
            "event": event,
            "interval_ns": interval,
            "steal_ns": steal,
            "steal_pct": to.pct_since(from),
            "per_cpu_steal_ns": per_cpu,
            "per_cpu_steal_total_from_ns": from.per_cpu_ns,
            "per_cpu_steal_total_ns": to.per_cpu_ns,
        });
        self.line("host", to.ts_mono_ns, clock, body);
    }

    /// How the hypervisor steal the scheduler saw was attributed (`event: "steal_attribution"`,
    /// at exit): per CPU, the scheduler's steal clock (`rq->prev_steal_time_rq`, ns since
    /// boot) at the last context switch and the steal seen since the first; then how much of
    /// it was charged to traced processes, the rest having accrued under idle, untraced
    /// processes or pausewatch itself.
    pub fn steal_attribution(
        &mut self,
        clock: &WallClock,
        per_cpu: &[observer_common::CpuSteal],
        charged_ns: u64,
    ) {
        let seen: u64 = per_cpu
            .iter()
            .map(|c| c.last_ns.saturating_sub(c.first_ns))
            .sum();
        let body = json!({
            "event": "steal_attribution",
            "per_cpu_sched_steal_ns": per_cpu.iter().map(|c| c.last_ns).collect::<Vec<_>>(),
            "per_cpu_seen_ns": per_cpu
                .iter()
                .map(|c| c.last_ns.saturating_sub(c.first_ns))
                .collect::<Vec<_>>(),
            "seen_ns": seen,
            "charged_ns": charged_ns,
            "unattributed_ns": seen.saturating_sub(charged_ns),
        });
        self.line("host", WallClock::mono_now(), clock, body);
    }

    /// Late wakes of the control sleeper over the run, by verdict (`event: "late_wakes"`).
    pub fn late_wakes(
        &mut self,
        clock: &WallClock,
        by_verdict: &std::collections::BTreeMap<&'static str, u64>,
        lines_suppressed: u64,
    ) {
        let body = json!({
            "event": "late_wakes",
            "by_verdict": by_verdict,
            "lines_suppressed": lines_suppressed,
        });
        self.line("host", WallClock::mono_now(), clock, body);
    }

    /// Retransmissions per process at exit (`net_summary`).
    pub fn net_summary(&mut self, clock: &WallClock, t: &NetTable) {
        let mut procs: Vec<_> = t.procs.iter().collect();
        procs.sort_by(|a, b| b.1.total.segs.cmp(&a.1.total.segs).then(a.0.cmp(b.0)));
        let procs: Vec<Value> = procs
            .into_iter()
            .map(|(pid, p)| {
                let conns: Vec<Value> = p
                    .busiest()
                    .into_iter()
                    .map(|(e, c)| {
                        let mut v = counts_json(c);
                        if let Some(o) = v.as_object_mut() {
                            o.insert("connection".into(), json!(e.describe()));
                        }
                        v
                    })
                    .collect();
                json!({
                    "pid": pid,
                    "comm": p.comm,
                    "totals": counts_json(&p.total),
                    "connections": conns,
                    "connections_not_kept": p.conns_not_kept,
                })
            })
            .collect();
        let body = json!({
            "host_totals": counts_json(&t.host),
            "processes": procs,
            "processes_not_kept": t.procs_not_kept,
        });
        self.line("net_summary", WallClock::mono_now(), clock, body);
    }
}
