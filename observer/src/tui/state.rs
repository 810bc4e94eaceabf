//! What the operator chose: view, sort, filter, selection, freeze, help. Keys map to changes
//! here (pure, unit-tested); nothing here draws or reads the system.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::picture::{CAUSE_NAMES, Picture, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Table,
    Detail(u32),
    Timeline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Paused time since the start (the default: who lost the most).
    Total,
    PausesPerS,
    P99,
    Max,
    /// Paused time in one cause (`CAUSE_NAMES` index).
    Cause(usize),
    Pid,
    Comm,
}

impl SortKey {
    const CYCLE: [SortKey; 12] = [
        SortKey::Total,
        SortKey::PausesPerS,
        SortKey::P99,
        SortKey::Max,
        SortKey::Cause(0),
        SortKey::Cause(1),
        SortKey::Cause(2),
        SortKey::Cause(3),
        SortKey::Cause(4),
        SortKey::Cause(5),
        SortKey::Pid,
        SortKey::Comm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Total => "total",
            SortKey::PausesPerS => "pauses/s",
            SortKey::P99 => "p99",
            SortKey::Max => "max",
            SortKey::Cause(i) => CAUSE_NAMES[i],
            SortKey::Pid => "pid",
            SortKey::Comm => "comm",
        }
    }

    fn step(self, by: isize) -> SortKey {
        let n = Self::CYCLE.len() as isize;
        let i = Self::CYCLE.iter().position(|&k| k == self).unwrap_or(0) as isize;
        Self::CYCLE[(i + by).rem_euclid(n) as usize]
    }
}

/// What the loop should do after a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyOutcome {
    Continue,
    Quit,
    /// Replay only: move the playhead by this much (negative: back).
    Seek(i64),
    /// Replay only: multiply the playback speed.
    Speed(f64),
}

/// Timeline spans the `+`/`-` keys step through.
pub const SPANS_NS: [u64; 6] = [
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    300_000_000_000,
    900_000_000_000,
    3_600_000_000_000,
];

#[derive(Debug, Clone, PartialEq)]
pub struct UiState {
    pub mode: Mode,
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing: bool,
    /// The selected process (kept across re-sorts).
    pub selected: Option<u32>,
    pub frozen: bool,
    pub help: bool,
    /// Index into `SPANS_NS`.
    pub span: usize,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            mode: Mode::Table,
            sort: SortKey::Total,
            reverse: false,
            filter: String::new(),
            editing: false,
            selected: None,
            frozen: false,
            help: false,
            span: 3,
        }
    }
}

/// How a filter matches: `pid:N` or a number (pid), `cause:NAME` or a cause name (rows with
/// time in that cause), anything else a part of the command name (any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Pid(u32),
    Cause(usize),
    Comm(String),
}

impl Filter {
    pub fn parse(s: &str) -> Filter {
        let s = s.trim();
        if s.is_empty() {
            return Filter::All;
        }
        let pid = s.strip_prefix("pid:").unwrap_or(s);
        if let Ok(p) = pid.parse() {
            return Filter::Pid(p);
        }
        let cause = s.strip_prefix("cause:").unwrap_or(s);
        if let Some(i) = CAUSE_NAMES.iter().position(|&c| c == cause) {
            return Filter::Cause(i);
        }
        Filter::Comm(s.to_lowercase())
    }

    pub fn matches(&self, r: &Row) -> bool {
        match self {
            Filter::All => true,
            Filter::Pid(p) => r.pid == *p,
            Filter::Cause(i) => r.cause_ns[*i] > 0,
            Filter::Comm(s) => r.comm.to_lowercase().contains(s.as_str()),
        }
    }
}

impl UiState {
    pub fn span_ns(&self) -> u64 {
        SPANS_NS[self.span.min(SPANS_NS.len() - 1)]
    }

    /// The table's rows after the filter, in the chosen order.
    pub fn visible<'a>(&self, pic: &'a Picture) -> Vec<&'a Row> {
        let f = Filter::parse(&self.filter);
        let mut rows: Vec<&Row> = pic.rows.iter().filter(|r| f.matches(r)).collect();
        let w = |r: &Row| r.window.unwrap_or_default();
        rows.sort_by(|a, b| {
            let o = match self.sort {
                SortKey::Total => b.total_ns.cmp(&a.total_ns),
                SortKey::PausesPerS => w(b).per_s.total_cmp(&w(a).per_s),
                SortKey::P99 => w(b).p99_ns.cmp(&w(a).p99_ns),
                SortKey::Max => w(b).max_ns.cmp(&w(a).max_ns),
                SortKey::Cause(i) => b.cause_ns[i].cmp(&a.cause_ns[i]),
                SortKey::Pid => a.pid.cmp(&b.pid),
                SortKey::Comm => a.comm.cmp(&b.comm),
            }
            .then(b.total_ns.cmp(&a.total_ns))
            .then(a.pid.cmp(&b.pid));
            if self.reverse { o.reverse() } else { o }
        });
        rows
    }

    /// Index of the selected process among `rows` (the first row when none is selected or
    /// it is no longer shown).
    pub fn selected_index(&self, rows: &[&Row]) -> usize {
        self.selected
            .and_then(|p| rows.iter().position(|r| r.pid == p))
            .unwrap_or(0)
    }

    fn move_selection(&mut self, rows: &[&Row], by: isize) {
        if rows.is_empty() {
            self.selected = None;
            return;
        }
        let i = self.selected_index(rows) as isize;
        let j = (i + by).clamp(0, rows.len() as isize - 1) as usize;
        self.selected = Some(rows[j].pid);
    }

    /// Applies a key. `rows`: the table as currently shown (for selection), `page`: rows per
    /// screen.
    pub fn on_key(&mut self, k: KeyEvent, rows: &[&Row], page: usize) -> KeyOutcome {
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return KeyOutcome::Quit;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if self.filter.len() < 64 => self.filter.push(c),
                _ => {}
            }
            return KeyOutcome::Continue;
        }
        if self.help {
            if matches!(k.code, KeyCode::Char('q')) {
                return KeyOutcome::Quit;
            }
            self.help = false;
            return KeyOutcome::Continue;
        }
        let page = page.max(1) as isize;
        match k.code {
            KeyCode::Char('q') => return KeyOutcome::Quit,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.help = true,
            KeyCode::Esc => match self.mode {
                Mode::Table => self.filter.clear(),
                _ => self.mode = Mode::Table,
            },
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(rows, -1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(rows, 1),
            KeyCode::PageUp => self.move_selection(rows, -page),
            KeyCode::PageDown => self.move_selection(rows, page),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(rows, isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(rows, isize::MAX / 2),
            KeyCode::Enter => {
                if let Some(r) = rows.get(self.selected_index(rows)) {
                    self.selected = Some(r.pid);
                    self.mode = Mode::Detail(r.pid);
                }
            }
            KeyCode::Char('t') => {
                self.mode = if self.mode == Mode::Timeline {
                    Mode::Table
                } else {
                    Mode::Timeline
                }
            }
            KeyCode::Tab => {
                self.mode = match self.mode {
                    Mode::Table => Mode::Timeline,
                    _ => Mode::Table,
                }
            }
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Char('s') => self.sort = self.sort.step(1),
            KeyCode::Char('S') => self.sort = self.sort.step(-1),
            KeyCode::Char('r') | KeyCode::Char('I') => self.reverse = !self.reverse,
            KeyCode::Char('f') | KeyCode::Char(' ') => self.frozen = !self.frozen,
            KeyCode::Char('+') | KeyCode::Char('=') => {
                self.span = self.span.saturating_sub(1);
            }
            KeyCode::Char('-') => self.span = (self.span + 1).min(SPANS_NS.len() - 1),
            KeyCode::Left => return KeyOutcome::Seek(-10_000_000_000),
            KeyCode::Right => return KeyOutcome::Seek(10_000_000_000),
            KeyCode::Char('[') => return KeyOutcome::Speed(0.5),
            KeyCode::Char(']') => return KeyOutcome::Speed(2.0),
            _ => {}
        }
        KeyOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::window::WindowStats;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn pic() -> Picture {
        let row = |pid, comm: &str, total, gc| Row {
            pid,
            comm: comm.into(),
            total_ns: total,
            cause_ns: [total - gc, 0, 0, gc, 0, 0],
            window: Some(WindowStats {
                per_s: pid as f64,
                ..Default::default()
            }),
            ..Default::default()
        };
        Picture {
            rows: vec![
                row(10, "postgres", 500, 0),
                row(20, "java", 900, 800),
                row(30, "Postmaster", 100, 0),
            ],
            ..Default::default()
        }
    }

    fn pids(ui: &UiState, p: &Picture) -> Vec<u32> {
        ui.visible(p).iter().map(|r| r.pid).collect()
    }

    #[test]
    fn sorts_by_total_then_by_the_chosen_key_and_reverses() {
        let p = pic();
        let mut ui = UiState::default();
        assert_eq!(pids(&ui, &p), [20, 10, 30]);
        ui.on_key(key(KeyCode::Char('s')), &[], 10);
        assert_eq!(ui.sort, SortKey::PausesPerS);
        assert_eq!(pids(&ui, &p), [30, 20, 10]);
        ui.on_key(key(KeyCode::Char('r')), &[], 10);
        assert_eq!(pids(&ui, &p), [10, 20, 30]);
        ui.on_key(key(KeyCode::Char('S')), &[], 10);
        ui.on_key(key(KeyCode::Char('S')), &[], 10);
        assert_eq!(ui.sort, SortKey::Comm, "S steps back and wraps");
    }

    #[test]
    fn filters_by_name_pid_and_cause() {
        let p = pic();
        let mut ui = UiState::default();
        for c in "/post".chars() {
            ui.on_key(key(KeyCode::Char(c)), &[], 10);
        }
        assert!(ui.editing);
        // 'q' while typing is text, not quit.
        assert_eq!(
            ui.on_key(key(KeyCode::Char('q')), &[], 10),
            KeyOutcome::Continue
        );
        ui.on_key(key(KeyCode::Backspace), &[], 10);
        ui.on_key(key(KeyCode::Enter), &[], 10);
        assert_eq!(pids(&ui, &p), [10, 30], "any case");
        ui.filter = "20".into();
        assert_eq!(pids(&ui, &p), [20]);
        ui.filter = "cause:gc".into();
        assert_eq!(pids(&ui, &p), [20]);
        ui.filter = "gc".into();
        assert_eq!(pids(&ui, &p), [20]);
        ui.on_key(key(KeyCode::Esc), &[], 10);
        assert_eq!(pids(&ui, &p), [20, 10, 30], "Esc clears the filter");
    }

    #[test]
    fn selection_follows_the_process_and_enter_opens_it() {
        let p = pic();
        let mut ui = UiState::default();
        let rows = ui.visible(&p);
        ui.on_key(key(KeyCode::Down), &rows, 10);
        assert_eq!(ui.selected, Some(10));
        ui.on_key(key(KeyCode::End), &rows, 10);
        assert_eq!(ui.selected, Some(30));
        ui.on_key(key(KeyCode::Char('k')), &rows, 10);
        ui.on_key(key(KeyCode::Enter), &rows, 10);
        assert_eq!(ui.mode, Mode::Detail(10));
        ui.on_key(key(KeyCode::Esc), &rows, 10);
        assert_eq!(ui.mode, Mode::Table);
        // Nothing to select: no panic, nothing selected.
        ui.on_key(key(KeyCode::Down), &[], 10);
        assert_eq!(ui.selected, None);
        ui.on_key(key(KeyCode::Enter), &[], 10);
        assert_eq!(ui.mode, Mode::Table);
    }

    #[test]
    fn help_freeze_timeline_and_quit() {
        let mut ui = UiState::default();
        ui.on_key(key(KeyCode::Char('?')), &[], 10);
        assert!(ui.help);
        ui.on_key(key(KeyCode::Char('x')), &[], 10);
        assert!(!ui.help, "any key closes help");
        ui.on_key(key(KeyCode::Char('f')), &[], 10);
        assert!(ui.frozen);
        ui.on_key(key(KeyCode::Char('t')), &[], 10);
        assert_eq!(ui.mode, Mode::Timeline);
        let before = ui.span_ns();
        ui.on_key(key(KeyCode::Char('-')), &[], 10);
        assert!(ui.span_ns() > before);
        for _ in 0..10 {
            ui.on_key(key(KeyCode::Char('+')), &[], 10);
        }
        assert_eq!(ui.span_ns(), SPANS_NS[0]);
        assert_eq!(
            ui.on_key(key(KeyCode::Char('q')), &[], 10),
            KeyOutcome::Quit
        );
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        ui.editing = true;
        assert_eq!(ui.on_key(ctrl_c, &[], 10), KeyOutcome::Quit);
    }
}
