//! Plain-text report printed when the live view ends.
use std::fmt::Write as _;

use observer_common::{Component, STAT_EPISODE};

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

#[cfg(test)]
mod tests {
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
