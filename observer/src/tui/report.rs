//! Plain-text report printed when the live view ends.
use std::fmt::Write as _;

use observer_common::{Component, STAT_EPISODE};

use super::view::fmt_ns;
use crate::{agent::AgentState, probe::cost::ProgramCost};

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
}
