//! The live view (ratatui + crossterm): host header, process table, process detail, timeline
//! and help. The agent loop owns the model and calls `draw` at a fixed rate; this module only
//! turns the model into a `Picture` and renders it, so it never blocks on sources.
//!
//! The terminal is restored on quit, when the loop ends for a signal (SIGTERM, SIGINT,
//! SIGHUP), when the agent returns an error (`Drop`), and on panic (ratatui's hook).
pub mod picture;
pub mod replay;
pub mod report;
pub mod state;
pub mod view;

use crossterm::event::{self, Event};
use ratatui::{DefaultTerminal, layout::Rect};
use tokio::sync::mpsc;

pub use state::KeyOutcome;

use crate::{
    agent::AgentState,
    model::window::Windows,
    probe::cost::ProgramCost,
    tui::{
        picture::{Detail, Header, Picture},
        state::{Mode, UiState},
        view::Theme,
    },
};

/// Length of the live view's window (pauses/s, p99 and max "now").
pub const WINDOW_NS: u64 = 10_000_000_000;

/// Forwards key presses and resizes from the terminal, read on a plain thread (crossterm's
/// poll blocks), to the loop.
pub fn spawn_input(tx: mpsc::Sender<Event>) {
    let input = crate::probe::privileges::spawn_reduced(
        std::thread::Builder::new(),
        caps::CapsHashSet::new(),
        move || loop {
            match event::poll(std::time::Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(e @ (Event::Key(_) | Event::Resize(..))) => {
                        if tx.blocking_send(e).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {
                    if tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        },
    );
    // As `std::thread::spawn` would have: a host that cannot start a thread cannot run the view.
    input.expect("starting the terminal input thread");
}

/// A terminal in the alternate screen with the operator's choices; restored when dropped.
pub struct Screen {
    terminal: DefaultTerminal,
    pub ui: UiState,
    pub theme: Theme,
    /// What was drawn last (a frozen view keeps it).
    pub pic: Picture,
    pub detail: Option<Detail>,
    area: Rect,
}

impl Screen {
    pub fn start() -> Self {
        let terminal = ratatui::init();
        let area = terminal
            .size()
            .map(|s| Rect::new(0, 0, s.width, s.height))
            .unwrap_or_default();
        Self {
            terminal,
            ui: UiState::default(),
            theme: Theme::from_env(),
            pic: Picture::default(),
            detail: None,
            area,
        }
    }

    /// Shows `pic` (unless frozen) and redraws.
    pub fn show(&mut self, pic: Picture, detail: Option<Detail>) -> anyhow::Result<()> {
        if !self.ui.frozen {
            self.pic = pic;
            self.detail = detail;
        }
        self.redraw()
    }

    /// Shows `pic` even when frozen (a replay's seek while paused).
    pub fn set(&mut self, pic: Picture, detail: Option<Detail>) -> anyhow::Result<()> {
        self.pic = pic;
        self.detail = detail;
        self.redraw()
    }

    pub fn redraw(&mut self) -> anyhow::Result<()> {
        let (pic, ui, detail, theme) = (&self.pic, &self.ui, self.detail.as_ref(), self.theme);
        let frame = self
            .terminal
            .draw(|f| view::render(f, f.area(), pic, ui, detail, theme))?;
        self.area = frame.area;
        Ok(())
    }

    /// Applies a terminal event; redraws at once so keys feel immediate.
    pub fn on_event(&mut self, e: Event) -> KeyOutcome {
        let out = match e {
            Event::Key(k) if k.kind != event::KeyEventKind::Release => {
                let rows = self.ui.visible(&self.pic);
                self.ui.on_key(k, &rows, view::table_page(self.area))
            }
            _ => KeyOutcome::Continue,
        };
        if out != KeyOutcome::Quit {
            let _ = self.redraw();
        }
        out
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The live view of the running agent.
pub struct Live {
    pub screen: Screen,
    windows: Windows,
    /// (monotonic ns, the agent's CPU ns) at the previous picture.
    cpu_last: Option<(u64, u64)>,
    /// When the picture was last built, and for which view.
    built: Option<(u64, Mode)>,
}

/// The picture is rebuilt this often (the kernel aggregates are read once a second), and at
/// once when the operator changes view.
const REBUILD_NS: u64 = 1_000_000_000;

/// The agent's own user+system CPU time, in ns.
fn own_cpu_ns() -> Option<u64> {
    let s = procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .ok()?;
    Some((s.utime + s.stime) * (1_000_000_000 / procfs::ticks_per_second().max(1)))
}

impl Live {
    pub fn start() -> Self {
        Self {
            screen: Screen::start(),
            windows: Windows::new(WINDOW_NS),
            cpu_last: None,
            built: None,
        }
    }

    pub fn draw(&mut self, st: &AgentState, costs: &[ProgramCost]) -> anyhow::Result<()> {
        let now = crate::source::clock::WallClock::mono_now();
        if self.windows.due(now) && !st.table.is_empty() {
            let procs = st
                .table
                .sorted()
                .into_iter()
                .map(|p| (p.pid, picture::cumulative(p)));
            self.windows.roll(now, procs);
        }
        let mode = self.screen.ui.mode;
        let fresh = self
            .built
            .is_some_and(|(at, m)| m == mode && now.saturating_sub(at) < REBUILD_NS);
        if self.screen.ui.frozen || fresh {
            return self.screen.redraw();
        }
        self.built = Some((now, mode));
        let cpu_pct = own_cpu_ns().and_then(|cpu| {
            let prev = self.cpu_last.replace((now, cpu));
            prev.filter(|(t, _)| now > *t)
                .map(|(t, c)| 100.0 * cpu.saturating_sub(c) as f64 / (now - t) as f64)
        });
        let header = agent_header(st, costs, cpu_pct);
        let pic = picture::from_agent(st, &self.windows, header);
        let detail = match self.screen.ui.mode {
            Mode::Detail(pid) => picture::agent_detail(st, &pic, pid),
            _ => None,
        };
        self.screen.show(pic, detail)
    }

    pub fn on_event(&mut self, e: Event) -> KeyOutcome {
        self.screen.on_event(e)
    }

    /// Leaves the alternate screen (the report is printed after this).
    pub fn finish(self) {
        drop(self);
    }
}

/// The host header from the running agent.
pub fn agent_header(st: &AgentState, costs: &[ProgramCost], cpu_pct: Option<f64>) -> Header {
    let freezes = ["host_freeze", "suspend"]
        .iter()
        .map(|k| st.host.host_verdicts.get(k).copied().unwrap_or(0))
        .sum();
    Header {
        source: "live".into(),
        mechanism: st.mechanism.to_string(),
        steal_pct: st.host.steal_last.as_ref().map(|_| st.host.steal_pct),
        clock_err_ns: Some(st.clock.err_ns),
        clock_unsynced: st.clock.unsynced,
        last_step: st
            .host
            .recent_steps
            .back()
            .map(|j| view::signed(j.step.step_ns)),
        host_freezes: freezes,
        retransmits: st.host.net.host.retransmits,
        drops: observer_common::DropCause::ALL
            .iter()
            .map(|c| (c.name(), st.kernel_drops[*c as usize]))
            .collect(),
        decode_errors: st.decode_errors,
        output_dropped: 0,
        bpf_ns_per_run: crate::probe::cost::mean_net_ns(costs),
        agent_cpu_pct: cpu_pct,
        unobserved: st.notices.clone(),
        last_incident: st
            .recent_incidents
            .back()
            .map(|i| format!("{}: {}", i.kind.name(), i.message)),
    }
}
