//! The report at the end of an investigation (live view quit, `--duration`, the watched
//! process exiting) and of `pausewatch report FILE`: worst processes with per-cause
//! percentiles, the worst pauses with their decomposition, incidents, host events, timeout
//! advice, what was not observable and why, and what was lost. The same text comes from the
//! running agent (`from_agent`) and from a recording (`replay::Replay::report_input`).
use std::{collections::HashMap, fmt::Write as _};

use observer_common::BlockReason;

use super::picture::{self, Lane, Picture};
use crate::{
    agent::AgentState,
    model::{advise::TailEstimate, stats::Aggregate, units::fmt_ns, window::Windows},
    probe::cost::ProgramCost,
};

/// Processes listed with their causes.
const TOP: usize = 10;
/// Worst pauses listed.
const WORST: usize = 5;

/// Everything the report says, from wherever it came.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    pub pic: Picture,
    /// Distributions of the listed processes: ("all", every pause), then each cause.
    pub hists: HashMap<u32, picture::Hists>,
    pub observed_ns: u64,
    pub advise_target: f64,
    /// Memory and disk: why processes blocked, slow fsyncs, reclaim stalls.
    pub memory: Vec<String>,
    /// TCP retransmissions per process.
    pub net: Vec<String>,
    /// False when the totals rest only on the pauses that were streamed (a recording cut
    /// short before its summary lines).
    pub exact: bool,
}

/// Timeout advice for one process, in words (`pausewatch advise`, the end report).
pub fn advice(pid: u32, comm: &str, a: &Aggregate, observed_ns: u64, target: f64) -> String {
    let Some(e) = TailEstimate::new(a, observed_ns) else {
        return format!(
            "pid {pid} ({comm}): no pauses observed in {}: nothing to estimate from",
            fmt_ns(observed_ns)
        );
    };
    let mut s = format!("pid {pid} ({comm}): {}\n", e.basis());
    for t in [10_000_000u64, 100_000_000, 1_000_000_000, 10_000_000_000] {
        let beyond = if t > e.max_ns { ", extrapolated" } else { "" };
        let chance = match e.chance_per_hour(a, t) {
            None => "unknown (no tail to extrapolate)".to_string(),
            Some(c) if c < 1e-12 => format!("< 1e-12{beyond}"),
            Some(c) => format!("{c:.1e}{beyond}"),
        };
        let _ = writeln!(
            s,
            "  a {} timeout is exceeded by a pause alone: chance per hour {chance}",
            fmt_ns(t)
        );
    }
    match e.shortest_timeout(a, target) {
        Some(t) => {
            let _ = write!(
                s,
                "  shortest timeout with chance per hour <= {target:e}: {}",
                fmt_ns(t)
            );
            let range = e.range_words(a, target);
            if !range.is_empty() {
                let _ = write!(s, " ({range})");
            }
        }
        None => {
            let _ = write!(
                s,
                "  too little history for a timeout with chance per hour <= {target:e}"
            );
        }
    }
    s
}

/// The report's input from the running agent.
pub fn from_agent(st: &AgentState, costs: &[ProgramCost]) -> ReportInput {
    let header = super::agent_header(st, costs, None);
    let pic = picture::from_agent(st, &Windows::new(u64::MAX), header);
    let mut rows: Vec<_> = pic.rows.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.total_ns));
    let hists = rows
        .iter()
        .take(TOP)
        .filter_map(|r| picture::agent_detail(st, &pic, r.pid).map(|d| (r.pid, d.hists)))
        .collect();
    ReportInput {
        hists,
        observed_ns: crate::source::clock::WallClock::mono_now().saturating_sub(st.started_mono_ns),
        advise_target: st.advise_target,
        memory: memory_lines(st),
        net: net_lines(st),
        exact: true,
        pic,
    }
}

/// Why processes were blocked, the slowest fsync-family calls and reclaim stalls.
fn memory_lines(st: &AgentState) -> Vec<String> {
    let mut out = Vec::new();
    let mut procs: Vec<_> = st
        .table
        .sorted()
        .into_iter()
        .map(|p| (p, p.mem()))
        .filter(|(_, m)| m.blocked.iter().any(|b| b.total_ns > 0))
        .collect();
    procs
        .sort_by_key(|(_, m)| std::cmp::Reverse(m.blocked.iter().map(|b| b.total_ns).sum::<u64>()));
    for (p, m) in procs.iter().take(5) {
        let parts: Vec<String> = BlockReason::ALL
            .iter()
            .filter(|&&r| m.blocked[r as usize].total_ns > 0)
            .map(|&r| format!("{} {}", r.name(), fmt_ns(m.blocked[r as usize].total_ns)))
            .collect();
        let faults = if m.major_file + m.major_swap > 0 {
            // The thread that took most of them, when the process has several that faulted.
            let top = p
                .thread_faults
                .first()
                .filter(|t| t.major > 0 && p.thread_faults.len() > 1)
                .map(|t| format!("; thread {} ({}) took {}", t.tid, t.comm, t.major))
                .unwrap_or_default();
            format!(
                " ({} major faults on files, {} swap-ins{top})",
                m.major_file, m.major_swap
            )
        } else {
            String::new()
        };
        out.push(format!(
            "{:>7} {:<16} blocked: {}{faults}",
            p.pid,
            p.comm,
            parts.join(", ")
        ));
    }
    let mut slow: Vec<_> = st.mem.recent_sync.iter().collect();
    slow.sort_by_key(|c| std::cmp::Reverse(c.duration_ns));
    for c in slow.iter().take(5) {
        out.push(format!("{:>7} {:<16} {}", c.pid, c.comm, c.describe()));
    }
    let mut stalls: Vec<_> = st.mem.recent_stalls.iter().collect();
    stalls.sort_by_key(|m| std::cmp::Reverse(m.duration_ns));
    for m in stalls.iter().take(5) {
        out.push(format!("{:>7} {:<16} {}", m.pid, m.comm, m.describe()));
    }
    out.extend(disk_lines(&st.mem.disks));
    out
}

/// Disks the end report lists: the three whose requests took the most time.
pub(crate) const REPORTED_DISKS: usize = 3;

/// One disk in the end report, each operation apart: "disk vda 254:0: 120 requests, p99
/// 3.0ms: write 100 (p99 1.0ms), flush 20 (p99 4.0ms)". `ops`: (name, requests, p99).
pub(crate) fn disk_line(
    name: &str,
    dev: &str,
    requests: u64,
    p99: Option<u64>,
    ops: &[(&str, u64, Option<u64>)],
) -> String {
    let p = |v: Option<u64>| v.map_or("-".into(), fmt_ns);
    let ops: Vec<String> = ops
        .iter()
        .map(|(op, n, p99)| format!("{op} {n} (p99 {})", p(*p99)))
        .collect();
    format!(
        "{:>7} {:<16} {dev}: {requests} requests, p99 {}: {}",
        "disk",
        name,
        p(p99),
        ops.join(", ")
    )
}

/// The disks whose requests took the most time.
fn disk_lines(disks: &crate::model::memory::DiskTable) -> Vec<String> {
    let mut busy: Vec<_> = disks
        .iter()
        .map(|d| (d, d.total()))
        .filter(|(_, t)| t.count > 0)
        .collect();
    busy.sort_by_key(|(_, t)| std::cmp::Reverse(t.total_ns));
    busy.iter()
        .take(REPORTED_DISKS)
        .map(|(d, t)| {
            let ops: Vec<_> = d
                .ops()
                .iter()
                .filter(|(_, o)| o.latency.count > 0)
                .map(|(op, o)| (op.name(), o.latency.count, o.latency.percentile(0.99)))
                .collect();
            disk_line(
                d.name.as_deref().unwrap_or("?"),
                &crate::model::memory::dev_name(d.dev),
                t.count,
                t.percentile(0.99),
                &ops,
            )
        })
        .collect()
}

/// TCP retransmissions of the processes with the most.
fn net_lines(st: &AgentState) -> Vec<String> {
    let mut procs: Vec<_> = st.host.net.procs.iter().collect();
    procs.sort_by_key(|(_, p)| std::cmp::Reverse(p.total.segs));
    procs
        .iter()
        .take(5)
        .map(|(pid, p)| {
            let who = pid.map_or("(owner unknown)".to_string(), |pid| {
                format!("{pid} {}", p.comm)
            });
            format!(
                "{who}: {} TCP retransmissions ({} segments, {} timeouts), est. delay {}{}",
                p.total.retransmits,
                p.total.segs,
                p.total.timeouts,
                fmt_ns(p.total.delay_est_ns),
                p.busiest().first().map_or(String::new(), |(e, _)| format!(
                    ", most on {}",
                    e.describe()
                ))
            )
        })
        .collect()
}

pub fn text(r: &ReportInput) -> String {
    let mut s = String::new();
    let pic = &r.pic;
    let h = &pic.header;
    let mut rows: Vec<_> = pic.rows.iter().collect();
    rows.sort_by_key(|r| (std::cmp::Reverse(r.total_ns), r.pid));
    let pauses: u64 = rows.iter().map(|r| r.pauses).sum();
    let _ = writeln!(
        s,
        "pausewatch report ({}): {} processes paused, {pauses} pauses in {} observed{}",
        h.source,
        rows.len(),
        fmt_ns(r.observed_ns),
        if r.exact {
            ""
        } else {
            " (the recording has no summary: only pauses at or above the threshold are counted)"
        }
    );
    if !rows.is_empty() {
        let _ = writeln!(s, "\nprocesses that paused most:");
    }
    for row in rows.iter().take(TOP) {
        let parts: Vec<String> = picture::CAUSE_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| row.cause_ns[*i] > 0)
            .map(|(i, name)| {
                let label = match i {
                    picture::NET => "net (est.)",
                    picture::STEAL => "steal (est.)",
                    _ => name,
                };
                format!("{label} {}", fmt_ns(row.cause_ns[i]))
            })
            .collect();
        let _ = writeln!(
            s,
            "  {:>7} {:<16} {} pauses, total {}, max {}{}: {}",
            row.pid,
            row.comm,
            row.pauses,
            fmt_ns(row.total_ns),
            fmt_ns(row.max_ns),
            if row.exited { " (exited)" } else { "" },
            parts.join(", ")
        );
        for (name, a) in r.hists.get(&row.pid).into_iter().flatten() {
            if a.count == 0 || *name == "all" {
                continue;
            }
            let p = |q| a.percentile(q).map_or("-".into(), fmt_ns);
            let _ = writeln!(
                s,
                "            {name:<8} {:>7} × p50 {:>7} p90 {:>7} p99 {:>7} max {:>7}",
                a.count,
                p(0.5),
                p(0.9),
                p(0.99),
                fmt_ns(a.max_ns)
            );
        }
    }
    let mut worst: Vec<_> = pic
        .marks
        .iter()
        .filter(|m| matches!(m.lane, Lane::Pause(_) | Lane::Stop | Lane::Gc))
        .collect();
    worst.sort_by_key(|m| (std::cmp::Reverse(m.duration_ns()), m.start_mono_ns));
    if !worst.is_empty() {
        let _ = writeln!(s, "\nworst pauses:");
    }
    for m in worst.iter().take(WORST) {
        let comm = m
            .pid
            .and_then(|p| pic.row(p))
            .map_or(String::new(), |r| r.comm.clone());
        let _ = writeln!(
            s,
            "  {:>7} {:<16} {}",
            m.pid.map_or("-".into(), |p| p.to_string()),
            comm,
            m.text
        );
    }
    let incidents: Vec<_> = pic
        .marks
        .iter()
        .filter(|m| m.lane == Lane::Incident)
        .collect();
    if !incidents.is_empty() {
        let _ = writeln!(s, "\nincidents:");
        for m in incidents {
            let _ = writeln!(s, "  {}", m.text);
        }
    }
    let host: Vec<_> = pic.marks.iter().filter(|m| m.lane.host_wide()).collect();
    if !host.is_empty() || !r.net.is_empty() {
        let _ = writeln!(s, "\nhost and network:");
        for m in host {
            let _ = writeln!(s, "  {}", m.text);
        }
        for l in &r.net {
            let _ = writeln!(s, "  {l}");
        }
    }
    if !r.memory.is_empty() {
        let _ = writeln!(s, "\nmemory and disk:");
        for l in &r.memory {
            let _ = writeln!(s, "  {l}");
        }
    }
    let advised: Vec<_> = rows
        .iter()
        .take(3)
        .filter_map(|row| {
            let all = r.hists.get(&row.pid)?.iter().find(|(n, _)| *n == "all")?;
            (all.1.count > 0)
                .then(|| advice(row.pid, &row.comm, &all.1, r.observed_ns, r.advise_target))
        })
        .collect();
    if !advised.is_empty() {
        let _ = writeln!(s, "\ntimeouts that fit (from the pauses observed):");
        for a in advised {
            let _ = writeln!(s, "{a}");
        }
    }
    if !h.unobserved.is_empty() {
        let _ = writeln!(s, "\nnot observed:");
        for n in &h.unobserved {
            let _ = writeln!(s, "  {n}");
        }
    }
    let lost: Vec<String> = h
        .drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "\ndrops: {}; {} undecodable records{}",
        if lost.is_empty() {
            "none in the kernel".to_string()
        } else {
            format!("kernel {}", lost.join(", "))
        },
        h.decode_errors,
        if h.output_dropped > 0 {
            format!("; {} output lines", h.output_dropped)
        } else {
            String::new()
        }
    );
    if let Some(c) = h.bpf_ns_per_run {
        let _ = writeln!(s, "own cost: {c} ns per program run");
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{model::process::ProcessTable, source::clock::WallClock};
    use observer_common::{ComponentStats, ProcStats, hist};

    pub(crate) fn state() -> AgentState {
        let mut table = ProcessTable::new(100);
        let mut s = ProcStats::ZERO;
        s.stats[0] = ComponentStats {
            total_ns: 30_000_000,
            max_ns: 20_000_000,
            hist: [0; hist::BUCKETS],
        };
        // Three pure run-queue waits: the kernel counts them only there.
        s.stats[0].hist[hist::bucket(10_000_000)] = 3;
        table.apply_snapshot(4242, "postgres", &s);
        AgentState {
            table,
            next_episode_id: 3,
            clock: WallClock {
                offset_ns: 0,
                err_ns: 1_000_000,
                unsynced: false,
                sync: Default::default(),
            },
            started_mono_ns: 0,
            corr: crate::model::correlate::Correlator::new(100, 100, 0.5),
            host: crate::agent::HostState::new(100, Some(250), 5_000_000, None),
            ..AgentState::offline(100)
        }
    }

    fn text_of(st: &AgentState) -> String {
        super::text(&from_agent(st, &[]))
    }

    #[test]
    fn names_host_freezes_and_clock_steps() {
        use crate::model::{
            clock::{ClockStep, JoinedStep},
            hiccup::{HostPause, Wake},
        };
        let mut st = state();
        let w = Wake {
            woke_mono_ns: 5_000_000_000,
            lateness_ns: 2_000_000_000,
            runq_ns: 0,
            steal_ns: 0,
            suspended_ns: 0,
            cpu: 0,
        };
        st.host
            .recent_host
            .push_back(HostPause::judge(9, &w, 5_000_000));
        st.host.recent_steps.push_back(JoinedStep {
            step: ClockStep {
                ts_mono_ns: 1,
                step_ns: -1_500_000_000,
                offset_before_ns: 0,
            },
            by: None,
        });
        let t = text_of(&st);
        assert!(t.contains("host freeze 2.00s"), "{t}");
        assert!(
            t.contains("clock stepped back 1.50s (cause not seen)"),
            "{t}"
        );
    }

    #[test]
    fn names_the_thread_that_took_most_major_faults() {
        use crate::model::memory::{MemTotals, Stall, ThreadFaults};
        let mut st = state();
        let mut m = MemTotals {
            major_swap: 900,
            ..Default::default()
        };
        m.blocked[BlockReason::Swapin as usize] = Stall {
            count: 900,
            total_ns: 2_000_000_000,
            max_ns: 9_000_000,
        };
        let thread = |tid: u32, comm: &str, major: u64| ThreadFaults {
            tid,
            comm: comm.into(),
            minor: 10,
            major,
        };
        st.table.apply_mem(
            4242,
            &m,
            None,
            vec![
                thread(4242, "postgres", 0),
                thread(4250, "pg-walwriter", 850),
            ],
        );
        let t = text_of(&st);
        assert!(
            t.contains("900 swap-ins; thread 4250 (pg-walwriter) took 850)"),
            "{t}"
        );
    }

    #[test]
    fn names_slow_fsyncs_and_reclaim() {
        use crate::model::memory::{MemStall, SyncCall};
        let mut st = state();
        st.mem.recent_sync.push_back(SyncCall {
            pid: 77,
            tid: 77,
            comm: "pg".into(),
            syscall: Some(observer_common::SyncSyscall::Fsync),
            start_mono_ns: 1,
            duration_ns: 450_000_000,
            ret: 0,
            arg: 3,
            dev: 7 << 20,
            ino: 12,
            path: Some("/data/wal".into()),
            device: Some("loop0".into()),
            disk_p99_ns: None,
            disk_write_p99_ns: None,
            disk_flush_p99_ns: None,
        });
        st.mem.recent_stalls.push_back(MemStall {
            pid: 78,
            tid: 79,
            comm: "java".into(),
            reason: BlockReason::MemcgReclaim,
            start_mono_ns: 1,
            duration_ns: 12_000_000,
            result: 32,
        });
        use crate::model::memory::DiskOpTotals;
        use observer_common::DiskOp;
        st.mem.disks.apply(
            7 << 20,
            Some("loop0".into()),
            [
                (
                    DiskOp::Write,
                    DiskOpTotals {
                        latency: Aggregate::of(&[1_000_000, 1_000_000]),
                        bytes: 8192,
                    },
                ),
                (
                    DiskOp::Flush,
                    DiskOpTotals {
                        latency: Aggregate::of(&[4_000_000]),
                        bytes: 0,
                    },
                ),
                (DiskOp::Read, DiskOpTotals::default()),
            ]
            .into(),
            1,
        );
        let t = text_of(&st);
        assert!(t.contains("fsync of /data/wal (loop0) took 450.0ms"), "{t}");
        assert!(
            t.contains("   disk loop0            7:0: 3 requests, p99 4.0ms: write 2 (p99 1.0ms), flush 1 (p99 4.0ms)\n"),
            "{t}"
        );
        assert!(
            t.contains("memcg_reclaim 12.0ms (32 pages reclaimed)"),
            "{t}"
        );
    }

    #[test]
    fn names_the_worst_process_its_cause_and_percentiles() {
        let t = text_of(&state());
        assert!(
            t.contains("4242 postgres") && t.contains("runq 30.0ms"),
            "{t}"
        );
        assert!(t.contains("runq           3 × p50"), "{t}");
        assert!(t.contains("timeouts that fit"), "{t}");
    }

    #[test]
    fn lists_runtime_stop_the_world_per_process() {
        use observer_common::{
            GC_FLAG_COLLECTION, GC_OP_LEN, GcRecord, RecordKind, Runtime, TASK_COMM_LEN,
        };
        let mut st = state();
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..4].copy_from_slice(b"java");
        let rec = GcRecord {
            kind: RecordKind::Gc as u32,
            runtime: Runtime::Jvm as u32,
            tgid: 77,
            tid: 78,
            start_mono_ns: 0,
            duration_ns: 12_000_000,
            gc_ns: 11_000_000,
            sync_ns: 0,
            reason: 0,
            flags: GC_FLAG_COLLECTION,
            operation: [0; GC_OP_LEN],
            comm,
        };
        let g = crate::model::gc::GcPause::from_record(1, &rec);
        st.table.note_gc(&g);
        st.recent_gc.push_back(g);
        let t = text_of(&st);
        assert!(t.contains("77 java") && t.contains("gc 12.0ms"), "{t}");
        assert!(t.contains("worst pauses:"), "{t}");
    }

    #[test]
    fn says_what_was_not_observed() {
        let mut st = state();
        st.notices
            .push("GC not observable for pid 9 (app): stripped binary".into());
        let t = text_of(&st);
        assert!(t.contains("not observed:\n  GC not observable"), "{t}");
    }
}
