//! Rendering of the live view from the agent state (no I/O).
use observer_common::{Component, DropCause, STAT_EPISODE};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
};

pub use crate::model::units::fmt_ns;
use crate::{agent::AgentState, probe::cost::ProgramCost};

/// "+1.50s" / "-2.0ms"
fn signed(ns: i64) -> String {
    format!(
        "{}{}",
        if ns < 0 { "-" } else { "+" },
        fmt_ns(ns.unsigned_abs())
    )
}

pub fn render(f: &mut Frame, area: Rect, st: &AgentState, costs: &[ProgramCost]) {
    if area.width < 20 || area.height < 4 {
        f.render_widget(Paragraph::new("pausewatch: window too small"), area);
        return;
    }
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let drops: u64 = st.kernel_drops.iter().sum();
    let cost = crate::probe::cost::mean_net_ns(costs)
        .map_or("n/a".to_string(), |n| format!("{n} ns/event"));
    let freezes = st
        .host
        .host_verdicts
        .get("host_freeze")
        .copied()
        .unwrap_or(0)
        + st.host.host_verdicts.get("suspend").copied().unwrap_or(0);
    let header = vec![
        Line::from(format!(
            "pausewatch  sched via {}  processes {}  episodes {}  steal {:.1}%  host freezes {}  retransmits {}",
            st.mechanism,
            st.table.len(),
            st.next_episode_id,
            st.host.steal_pct,
            freezes,
            st.host.net.host.retransmits,
        )),
        Line::from(format!(
            "clock ±{}{}{}  drops: ring {} aggregate {}  decode errors {}  own cost {}{}",
            fmt_ns(st.clock.err_ns),
            if st.clock.unsynced { " (unsynced)" } else { "" },
            st.host
                .recent_steps
                .back()
                .map_or(String::new(), |j| format!(
                    " last step {}",
                    signed(j.step.step_ns)
                )),
            st.kernel_drops[DropCause::Sched as usize],
            st.kernel_drops[DropCause::SchedAggregate as usize],
            st.decode_errors,
            cost,
            if drops > 0 { "  ! events dropped" } else { "" },
        )),
    ];
    f.render_widget(Paragraph::new(header), head);
    let footer = match (st.recent_incidents.back(), st.notices.first()) {
        (Some(i), _) => format!(
            "q quit  f freeze  | INCIDENT {}: {}",
            i.kind.name(),
            i.message
        ),
        (None, Some(n)) => format!("q quit  f freeze  | ! {n}"),
        (None, None) => "q quit  f freeze".to_string(),
    };
    f.render_widget(Paragraph::new(footer), foot);
    if st.table.is_empty() {
        f.render_widget(Paragraph::new("no pauses observed yet"), body);
        return;
    }

    let mut procs = st.table.sorted();
    procs.sort_by_key(|p| std::cmp::Reverse(p.stat(STAT_EPISODE).total_ns));
    let rows = procs.iter().take(body.height as usize).map(|p| {
        let ep = p.stat(STAT_EPISODE);
        let share = |c: Component| {
            let t = p.stat(c as usize).total_ns;
            if ep.total_ns == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * t as f64 / ep.total_ns as f64)
            }
        };
        Row::new(vec![
            Cell::from(p.pid.to_string()),
            Cell::from(p.comm.clone()),
            Cell::from(ep.count.to_string()),
            Cell::from(fmt_ns(ep.total_ns)),
            Cell::from(fmt_ns(ep.max_ns)),
            Cell::from(ep.percentile(0.99).map_or("-".into(), fmt_ns)),
            Cell::from(share(Component::Runq)),
            Cell::from(share(Component::Blocked)),
            Cell::from(share(Component::Stopped)),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(
            Row::new([
                "PID", "COMM", "PAUSES", "TOTAL", "MAX", "P99", "RUNQ", "BLOCKED", "STOPPED",
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default());
    f.render_widget(table, body);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{model::process::ProcessTable, source::clock::WallClock};
    use observer_common::{ComponentStats, ProcStats, hist};
    use ratatui::{Terminal, backend::TestBackend};

    pub(crate) fn state() -> AgentState {
        let mut table = ProcessTable::new(100);
        let mut s = ProcStats::ZERO;
        s.stats[0] = ComponentStats {
            count: 3,
            total_ns: 30_000_000,
            max_ns: 20_000_000,
            hist: [0; hist::BUCKETS],
        };
        s.stats[0].hist[hist::bucket(10_000_000)] = 3;
        s.stats[STAT_EPISODE] = s.stats[0];
        table.apply_snapshot(4242, "postgres", &s);
        AgentState {
            table,
            next_episode_id: 3,
            decode_errors: 0,
            kernel_drops: [0; observer_common::NUM_DROP_CAUSES],
            clock: WallClock {
                offset_ns: 0,
                err_ns: 1_000_000,
                unsynced: false,
                sync: Default::default(),
            },
            recent: Default::default(),
            recent_stops: Default::default(),
            stops: Default::default(),
            recent_gc: Default::default(),
            runtimes: Default::default(),
            mechanism: "tp_btf",
            mem: crate::agent_memory::MemState::new(None, None),
            metrics: None,
            notices: vec![],
            corr: crate::model::correlate::Correlator::new(100, 100, 0.5),
            recent_incidents: Default::default(),
            lease_errors: 0,
            holder_start: Default::default(),
            started_mono_ns: 0,
            advise_target: 1e-6,
            host: crate::agent::HostState::new(100, Some(250), 5_000_000, None),
        }
    }

    fn screen(w: u16, h: u16, st: &AgentState) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, f.area(), st, &[])).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn shows_the_process_with_its_pause_in_80x24() {
        let s = screen(80, 24, &state());
        assert!(s.contains("4242") && s.contains("postgres"), "{s}");
        assert!(s.contains("30.0ms") && s.contains("100%"), "{s}");
        assert!(s.contains("sched via tp_btf"), "{s}");
    }

    #[test]
    fn empty_and_tiny_areas_do_not_panic() {
        let mut st = state();
        st.table = ProcessTable::new(1);
        let s = screen(80, 24, &st);
        assert!(s.contains("no pauses observed yet"), "{s}");
        let s = screen(10, 2, &state());
        assert!(s.contains("pausewatch"));
        let _ = screen(1, 1, &state());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(5_000_000), "5.0ms");
        assert_eq!(fmt_ns(1_500_000_000), "1.50s");
    }
}
