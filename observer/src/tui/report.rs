//! Plain-text report printed when the live view ends.
use std::fmt::Write as _;

use observer_common::{BlockReason, Component, STAT_EPISODE};

use super::view::fmt_ns;
use crate::{
    agent::AgentState,
    model::{advise::TailEstimate, process::ProcessEntry},
    probe::cost::ProgramCost,
};

/// Timeout advice for one process, in words (`pausewatch advise`, the end report).
pub fn advice(p: &ProcessEntry, observed_ns: u64, target: f64) -> String {
    let a = p.pauses();
    let Some(e) = TailEstimate::new(&a, observed_ns) else {
        return format!(
            "pid {} ({}): no pauses observed in {}: nothing to estimate from",
            p.pid,
            p.comm,
            fmt_ns(observed_ns)
        );
    };
    let mut s = format!("pid {} ({}): {}\n", p.pid, p.comm, e.basis());
    for t in [10_000_000u64, 100_000_000, 1_000_000_000, 10_000_000_000] {
        let beyond = if t > e.max_ns { ", extrapolated" } else { "" };
        let chance = match e.chance_per_hour(&a, t) {
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
    match e.shortest_timeout(&a, target) {
        Some(t) => {
            let _ = write!(
                s,
                "  shortest timeout with chance per hour <= {target:e}: {}",
                fmt_ns(t)
            );
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

pub fn text(st: &AgentState, costs: &[ProgramCost]) -> String {
    let mut s = String::new();
    let mut procs = st.table.sorted();
    procs.sort_by_key(|p| std::cmp::Reverse(p.stat(STAT_EPISODE).total_ns));
    let _ = writeln!(
        s,
        "pausewatch: {} processes observed, {} pauses streamed",
        procs.len(),
        st.next_episode_id
    );
    for p in procs.iter().take(10) {
        let ep = p.stat(STAT_EPISODE);
        let parts: Vec<String> = Component::ALL
            .iter()
            .filter_map(|&c| {
                let t = p.stat(c as usize).total_ns;
                (t > 0).then(|| format!("{} {}", c.name(), fmt_ns(t)))
            })
            .collect();
        let _ = writeln!(
            s,
            "  {:>7} {:<16} {} pauses, total {} (max {}): {}",
            p.pid,
            p.comm,
            ep.count,
            fmt_ns(ep.total_ns),
            fmt_ns(ep.max_ns),
            parts.join(", ")
        );
    }
    let mut gcs: Vec<_> = st
        .table
        .sorted()
        .into_iter()
        .filter(|p| p.gc.count > 0)
        .collect();
    gcs.sort_by_key(|p| std::cmp::Reverse(p.gc.total_ns));
    for p in gcs.iter().take(10) {
        let _ = writeln!(
            s,
            "  {:>7} {:<16} {} stop-the-world pauses ({} collections), total {} (max {})",
            p.pid,
            p.comm,
            p.gc.count,
            p.gc_collections,
            fmt_ns(p.gc.total_ns),
            fmt_ns(p.gc.max_ns)
        );
    }
    memory_section(&mut s, st);
    host_section(&mut s, st);
    if !st.recent_incidents.is_empty() {
        let _ = writeln!(s, "incidents ({} most recent):", st.recent_incidents.len());
        for i in &st.recent_incidents {
            let _ = writeln!(s, "  #{} {}: {}", i.id, i.kind.name(), i.message);
        }
    }
    let observed = crate::source::clock::WallClock::mono_now().saturating_sub(st.started_mono_ns);
    for p in procs.iter().take(3).filter(|p| p.pauses().count > 0) {
        let _ = writeln!(s, "{}", advice(p, observed, st.advise_target));
    }
    let drops: u64 = st.kernel_drops.iter().sum();
    let _ = writeln!(s, "drops: {drops} kernel, {} undecodable", st.decode_errors);
    if let Some(c) = crate::probe::cost::mean_net_ns(costs) {
        let _ = writeln!(s, "own cost: {c} ns per program run");
    }
    s
}

/// Why processes were blocked, the slowest fsync-family calls and reclaim stalls.
fn memory_section(s: &mut String, st: &AgentState) {
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
            format!(
                " ({} major faults on files, {} swap-ins)",
                m.major_file, m.major_swap
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  {:>7} {:<16} blocked: {}{faults}",
            p.pid,
            p.comm,
            parts.join(", ")
        );
    }
    let mut slow: Vec<_> = st.mem.recent_sync.iter().collect();
    slow.sort_by_key(|c| std::cmp::Reverse(c.duration_ns));
    for c in slow.iter().take(5) {
        let _ = writeln!(s, "  {:>7} {:<16} {}", c.pid, c.comm, c.describe());
    }
    let mut stalls: Vec<_> = st.mem.recent_stalls.iter().collect();
    stalls.sort_by_key(|m| std::cmp::Reverse(m.duration_ns));
    for m in stalls.iter().take(5) {
        let _ = writeln!(s, "  {:>7} {:<16} {}", m.pid, m.comm, m.describe());
    }
}

/// Clock steps, host-wide pauses and TCP retransmissions, where there were any.
fn host_section(s: &mut String, st: &AgentState) {
    let h = &st.host;
    for j in &h.recent_steps {
        let _ = writeln!(s, "{}", j.describe());
    }
    let wide: Vec<_> = h
        .recent_host
        .iter()
        .filter(|p| p.verdict.host_wide())
        .collect();
    if !wide.is_empty() {
        let _ = writeln!(s, "host-wide pauses (every process paused):");
        for p in wide {
            let _ = writeln!(s, "  #{} {}", p.id, p.describe());
        }
    }
    let mut procs: Vec<_> = h.net.procs.iter().collect();
    procs.sort_by_key(|(_, p)| std::cmp::Reverse(p.total.segs));
    for (pid, p) in procs.iter().take(5) {
        let who = pid.map_or("(owner unknown)".to_string(), |pid| {
            format!("{pid} {}", p.comm)
        });
        let _ = writeln!(
            s,
            "  {who}: {} TCP retransmissions ({} segments, {} timeouts), est. delay {}{}",
            p.total.retransmits,
            p.total.segs,
            p.total.timeouts,
            fmt_ns(p.total.delay_est_ns),
            p.busiest().first().map_or(String::new(), |(e, _)| format!(
                ", most on {}",
                e.describe()
            ))
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_host_freezes_and_clock_steps() {
        use crate::model::{
            clock::{ClockStep, JoinedStep},
            hiccup::{HostPause, Wake},
        };
        let mut st = super::super::view::tests::state();
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
        let t = super::text(&st, &[]);
        assert!(t.contains("#9 host freeze 2.00s"), "{t}");
        assert!(
            t.contains("clock stepped back 1.50s (cause not seen)"),
            "{t}"
        );
    }

    #[test]
    fn names_slow_fsyncs_and_reclaim() {
        use observer_common::BlockReason;

        use crate::model::memory::{MemStall, SyncCall};
        let mut st = super::super::view::tests::state();
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
        let t = super::text(&st, &[]);
        assert!(t.contains("fsync of /data/wal (loop0) took 450.0ms"), "{t}");
        assert!(
            t.contains("memcg_reclaim 12.0ms (32 pages reclaimed)"),
            "{t}"
        );
    }

    #[test]
    fn names_the_worst_process_and_its_cause() {
        let st = super::super::view::tests::state();
        let t = super::text(&st, &[]);
        assert!(
            t.contains("4242 postgres") && t.contains("runq 30.0ms"),
            "{t}"
        );
    }

    #[test]
    fn lists_runtime_stop_the_world_per_process() {
        use observer_common::{
            GC_FLAG_COLLECTION, GC_OP_LEN, GcRecord, RecordKind, Runtime, TASK_COMM_LEN,
        };
        let mut st = super::super::view::tests::state();
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
        st.table
            .note_gc(&crate::model::gc::GcPause::from_record(1, &rec));
        let t = super::text(&st, &[]);
        assert!(
            t.contains("77 java")
                && t.contains("1 stop-the-world pauses (1 collections), total 12.0ms"),
            "{t}"
        );
    }
}
