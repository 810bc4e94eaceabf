//! Rendering of a `Picture` (no I/O): host header, process table, process detail, timeline,
//! help overlay. Colours only when `Theme::color` (NO_COLOR turns them off); selection and
//! headings use reverse video and bold, which are not colours.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Table, TableState},
};

use crate::model::stats::Aggregate;
pub use crate::model::units::{fmt_ns, fmt_short};

use super::{
    picture::{COLUMNS, Detail, Lane, Mark, Picture, Row},
    state::{Mode, UiState},
};

/// Colours on or off (NO_COLOR, https://no-color.org: any non-empty value turns them off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Self {
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn lane(self, l: Lane) -> Style {
        self.fg(match l {
            Lane::Pause(observer_common::Component::Runq) => Color::Yellow,
            Lane::Pause(observer_common::Component::Blocked) => Color::Magenta,
            Lane::Pause(observer_common::Component::Stopped) | Lane::Stop => Color::Red,
            Lane::Gc => Color::Cyan,
            Lane::Incident => Color::LightRed,
            Lane::ClockStep | Lane::HostPause => Color::LightBlue,
            Lane::Retransmit => Color::Green,
        })
    }
}

/// Smallest area anything but a notice is drawn in.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 8;
/// Header lines.
const HEADER: u16 = 3;

/// "+1.50s" / "-2.0ms"
pub fn signed(ns: i64) -> String {
    format!(
        "{}{}",
        if ns < 0 { "-" } else { "+" },
        fmt_ns(ns.unsigned_abs())
    )
}

/// Rows the table can show in an area of this height (for paging).
pub fn table_page(area: Rect) -> usize {
    area.height.saturating_sub(HEADER + 2) as usize
}

pub fn render(
    f: &mut Frame,
    area: Rect,
    pic: &Picture,
    ui: &UiState,
    detail: Option<&Detail>,
    theme: Theme,
) {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(
            Paragraph::new(format!(
                "pausewatch: window too small ({}x{}, needs {MIN_WIDTH}x{MIN_HEIGHT})",
                area.width, area.height
            )),
            area,
        );
        return;
    }
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(HEADER),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header_lines(pic, ui, theme)), head);
    f.render_widget(Paragraph::new(footer_line(pic, ui, theme)), foot);
    match ui.mode {
        Mode::Table => table(f, body, pic, ui, theme),
        Mode::Detail(pid) => match detail {
            Some(d) => detail_view(f, body, pic, d, theme),
            None => f.render_widget(
                Paragraph::new(format!(
                    "pid {pid}: nothing known (no pauses recorded, or it left the table). Esc: back"
                )),
                body,
            ),
        },
        Mode::Timeline => timeline(f, body, pic, ui, theme),
    }
    if ui.help {
        help(f, area, &pic.header.unobserved);
    }
}

fn header_lines(pic: &Picture, ui: &UiState, theme: Theme) -> Vec<Line<'static>> {
    let h = &pic.header;
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut first = vec![
        Span::styled("pausewatch", bold),
        Span::raw(format!(
            " {}  sched via {}  processes {}  pauses {}  window {}",
            h.source,
            h.mechanism,
            pic.rows.len(),
            pic.rows.iter().map(|r| r.pauses).sum::<u64>(),
            if pic.window_ns == 0 {
                "-".to_string()
            } else {
                fmt_ns(pic.window_ns)
            }
        )),
    ];
    if ui.frozen {
        first.push(Span::styled(
            "  FROZEN",
            theme.fg(Color::LightRed).add_modifier(Modifier::BOLD),
        ));
    }
    let clock = match h.clock_err_ns {
        Some(e) => format!(
            "clock ±{}{}",
            fmt_ns(e),
            if h.clock_unsynced { " unsynced" } else { "" }
        ),
        None => "clock ?".to_string(),
    };
    let second = Line::from(format!(
        "steal {}  {clock}  last step {}  host freezes {}  retransmits {}",
        h.steal_pct.map_or("?".to_string(), |s| format!("{s:.1}%")),
        h.last_step.as_deref().unwrap_or("none"),
        h.host_freezes,
        h.retransmits,
    ));
    let lost: u64 =
        h.drops.iter().map(|(_, n)| n).sum::<u64>() + h.decode_errors + h.output_dropped;
    let mut third = vec![Span::raw(format!(
        "cost {} bpf, {} cpu  ",
        h.bpf_ns_per_run
            .map_or("n/a".to_string(), |n| format!("{n} ns/run")),
        h.agent_cpu_pct
            .map_or("?".to_string(), |c| format!("{c:.1}%")),
    ))];
    if lost == 0 {
        third.push(Span::raw("drops 0"));
    } else {
        let parts: Vec<String> = h
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .chain((h.decode_errors > 0).then(|| format!("undecodable {}", h.decode_errors)))
            .chain((h.output_dropped > 0).then(|| format!("output {}", h.output_dropped)))
            .collect();
        third.push(Span::styled(
            format!("DROPS {}", parts.join(" ")),
            theme.fg(Color::LightRed).add_modifier(Modifier::BOLD),
        ));
    }
    if !h.unobserved.is_empty() {
        third.push(Span::styled(
            format!("  {} not observed (?)", h.unobserved.len()),
            theme.fg(Color::Yellow),
        ));
    }
    vec![Line::from(first), second, Line::from(third)]
}

fn footer_line(pic: &Picture, ui: &UiState, theme: Theme) -> Line<'static> {
    if ui.editing {
        return Line::from(format!("filter (name, pid, cause:NAME): {}_", ui.filter));
    }
    let keys = match ui.mode {
        Mode::Table => format!(
            "q quit ? help Enter detail t timeline / filter s sort:{}{} f freeze",
            ui.sort.name(),
            if ui.reverse { " (rev)" } else { "" }
        ),
        Mode::Detail(_) => "q quit ? help Esc back t timeline f freeze".to_string(),
        Mode::Timeline => format!(
            "q quit ? help Esc back +/- span ({}) f freeze",
            fmt_ns(ui.span_ns())
        ),
    };
    let mut spans = vec![Span::raw(keys)];
    if !ui.filter.is_empty() {
        spans.push(Span::raw(format!("  [/{}]", ui.filter)));
    }
    if let Some(i) = &pic.header.last_incident {
        spans.push(Span::styled(
            format!("  INCIDENT {i}"),
            theme.fg(Color::LightRed).add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

/// Table titles and colours of the cause columns (`CAUSE_NAMES` order).
const CAUSE_TITLES: [&str; COLUMNS] = ["RUNQ", "BLKD", "STOP", "GC", "STL", "NET"];
const CAUSE_COLOURS: [Color; COLUMNS] = [
    Color::Yellow,
    Color::Magenta,
    Color::Red,
    Color::Cyan,
    Color::LightBlue,
    Color::Green,
];
/// Terminal width from which every cause column is shown.
const WIDE_TABLE: u16 = 90;

fn share(r: &Row, i: usize) -> String {
    match r.share(i) {
        Some(s) if r.cause_ns[i] > 0 => format!("{:.0}%", 100.0 * s),
        _ => "-".to_string(),
    }
}

fn table(f: &mut Frame, area: Rect, pic: &Picture, ui: &UiState, theme: Theme) {
    let rows = ui.visible(pic);
    if rows.is_empty() {
        let msg = if pic.rows.is_empty() {
            "no pauses observed yet".to_string()
        } else {
            format!(
                "no process matches the filter {:?} (Esc clears it)",
                ui.filter
            )
        };
        f.render_widget(Paragraph::new(msg), area);
        return;
    }
    // Every cause column fits from 90 columns up; narrower, the causes no visible process has
    // give their room to COMM.
    let causes: Vec<usize> = (0..COLUMNS)
        .filter(|&i| area.width >= WIDE_TABLE || rows.iter().any(|r| r.cause_ns[i] > 0))
        .collect();
    let body: Vec<TRow> = rows
        .iter()
        .map(|r| {
            let w = r.window.unwrap_or_default();
            let risk = match r.lease_risk {
                Some("expired") => "EXPIRED",
                Some("at risk") => "AT RISK",
                _ => "ok",
            };
            let lease = match r.leases {
                0 => "-".to_string(),
                1 => risk.to_string(),
                n => format!("{n} {risk}"),
            };
            let lease_style = match r.lease_risk {
                Some("expired") | Some("at risk") if r.leases > 0 => {
                    theme.fg(Color::LightRed).add_modifier(Modifier::BOLD)
                }
                _ => Style::default(),
            };
            let comm = if r.exited {
                format!("{}†", r.comm)
            } else {
                r.comm.clone()
            };
            let mut cells = vec![
                Cell::from(r.pid.to_string()),
                Cell::from(comm),
                Cell::from(if r.window.is_some() {
                    format!("{:.1}", w.per_s)
                } else {
                    "-".into()
                }),
                Cell::from(w.p99_ns.map_or("-".into(), fmt_short)),
                Cell::from(if r.window.is_some() {
                    fmt_short(w.max_ns)
                } else {
                    "-".into()
                }),
                Cell::from(fmt_short(r.total_ns)),
            ];
            cells.extend(
                causes
                    .iter()
                    .map(|&i| Cell::from(share(r, i)).style(theme.fg(CAUSE_COLOURS[i]))),
            );
            cells.push(Cell::from(lease).style(lease_style));
            TRow::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(7),
        Constraint::Max(15),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    widths.extend(causes.iter().map(|_| Constraint::Length(4)));
    widths.push(Constraint::Min(7));
    let mut titles = vec!["PID", "COMM", "PSE/S", "P99", "MAX", "TOTAL"];
    titles.extend(causes.iter().map(|&i| CAUSE_TITLES[i]));
    titles.push("LEASES");
    let head =
        TRow::new(titles).style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let table = Table::new(body, widths)
        .header(head)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(ui.selected_index(&rows)));
    f.render_stateful_widget(table, area, &mut state);
}

/// "▁▂█▅" over the buckets from the first to the last non-empty one.
pub fn bars(a: &Aggregate, width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let Some(first) = a.hist.iter().position(|&n| n > 0) else {
        return String::new();
    };
    let last = a.hist.iter().rposition(|&n| n > 0).unwrap_or(first);
    let slice = &a.hist[first..=last.min(first + width.saturating_sub(1))];
    let top = slice.iter().copied().max().unwrap_or(1).max(1);
    slice
        .iter()
        .map(|&n| {
            if n == 0 {
                ' '
            } else {
                LEVELS[((n * 7) / top).min(7) as usize]
            }
        })
        .collect()
}

fn detail_view(f: &mut Frame, area: Rect, pic: &Picture, d: &Detail, theme: Theme) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled(
        format!("pid {} ({}): where its paused time went", d.pid, d.comm),
        bold,
    )];
    let bar_width = (area.width as usize).saturating_sub(52).min(40);
    for (name, a) in d.hists.iter().filter(|(_, a)| a.count > 0) {
        let p = |q| a.percentile(q).map_or("-".into(), fmt_ns);
        let (lo, _) =
            observer_common::hist::bounds(a.hist.iter().position(|&n| n > 0).unwrap_or(0));
        lines.push(Line::from(vec![
            Span::raw(format!(
                "{name:<8}{:>7} p50 {:>6} p99 {:>6} max {:>6} ",
                a.count,
                p(0.5),
                p(0.99),
                fmt_ns(a.max_ns)
            )),
            Span::styled(
                format!("{}{}", fmt_ns(lo), bars(a, bar_width)),
                theme.fg(Color::Cyan),
            ),
        ]));
    }
    if !d.advice.is_empty() {
        lines.push(Line::from(format!("timeout: {}", d.advice)));
    }
    if !d.leases.is_empty() {
        lines.push(Line::styled("leases", bold));
        for l in &d.leases {
            lines.push(Line::from(format!(
                "  {} token {} ttl {} {} {}",
                l.name,
                l.token.map_or("-".into(), |t| t.to_string()),
                fmt_ns(l.ttl_ns),
                l.remaining_ns
                    .map_or("renewals unknown".into(), |r| format!("left {}", signed(r))),
                l.risk
            )));
        }
    }
    if !d.latest.is_empty() {
        lines.push(Line::styled("latest pauses and events", bold));
        for m in &d.latest {
            lines.push(Line::from(vec![
                Span::raw(format!(
                    "  {:>8} ",
                    signed(m.start_mono_ns as i64 - pic.now_mono_ns as i64)
                )),
                Span::styled(format!("{:<8}", m.lane.name()), theme.lane(m.lane)),
                Span::raw(m.text.clone()),
            ]));
        }
    }
    if !d.threads.is_empty() {
        lines.push(Line::styled("threads (streamed pauses)", bold));
        for t in d.threads.iter().take(8) {
            lines.push(Line::from(format!(
                "  tid {:<8} {} pauses, total {}, max {}",
                t.tid,
                t.pauses,
                fmt_ns(t.total_ns),
                fmt_ns(t.max_ns)
            )));
        }
    }
    if !d.sockets.is_empty() {
        lines.push(Line::styled("sockets with retransmissions", bold));
        for s in d.sockets.iter().take(8) {
            lines.push(Line::from(format!(
                "  {} {} retransmits ({} timeouts), est. delay {}",
                s.conn,
                s.retransmits,
                s.timeouts,
                fmt_ns(s.delay_est_ns)
            )));
        }
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// The column of a time on a track of `width` columns spanning (now - span, now].
fn column(t: u64, now: u64, span: u64, width: usize) -> Option<usize> {
    let start = now.saturating_sub(span);
    if t > now || width == 0 {
        return None;
    }
    let t = t.max(start);
    Some((((t - start) as u128 * (width as u128 - 1)) / span.max(1) as u128) as usize)
}

/// One lane: each mark drawn over the columns it covers. Where marks share a column, an
/// incident wins, then the longest mark (a 5 ms run-queue wait must not hide a 2 s stop).
pub fn track(marks: &[&Mark], now: u64, span: u64, width: usize) -> Vec<Option<Lane>> {
    let mut cells: Vec<Option<(Lane, u64)>> = vec![None; width];
    let start = now.saturating_sub(span);
    for m in marks {
        if m.end_mono_ns < start || m.start_mono_ns > now {
            continue;
        }
        let (Some(a), Some(b)) = (
            column(m.start_mono_ns, now, span, width),
            column(m.end_mono_ns.min(now), now, span, width),
        ) else {
            continue;
        };
        let rank = |l: Lane, d: u64| (l == Lane::Incident, d);
        for c in &mut cells[a..=b.max(a)] {
            if c.is_none_or(|(l, d)| rank(m.lane, m.duration_ns()) > rank(l, d)) {
                *c = Some((m.lane, m.duration_ns()));
            }
        }
    }
    cells.into_iter().map(|c| c.map(|(l, _)| l)).collect()
}

fn timeline(f: &mut Frame, area: Rect, pic: &Picture, ui: &UiState, theme: Theme) {
    let span = ui.span_ns();
    let now = pic.now_mono_ns;
    let label_w = 18usize;
    let width = (area.width as usize).saturating_sub(label_w);
    let in_span = |m: &&Mark| m.end_mono_ns + span >= now;
    let visible = ui.visible(pic);
    let lanes_room = (area.height as usize).saturating_sub(4) / 2;
    let mut lanes: Vec<(String, Vec<&Mark>)> = vec![(
        "host".to_string(),
        pic.marks
            .iter()
            .filter(in_span)
            .filter(|m| m.lane.host_wide())
            .collect(),
    )];
    for r in &visible {
        if lanes.len() > lanes_room.max(1) {
            break;
        }
        let ms: Vec<&Mark> = pic
            .marks
            .iter()
            .filter(in_span)
            .filter(|m| m.pid == Some(r.pid))
            .collect();
        if !ms.is_empty() {
            lanes.push((format!("{} {}", r.pid, r.comm), ms));
        }
    }
    let mut lines = vec![Line::from(format!(
        "{:<label_w$}-{}{:>pad$}",
        "",
        fmt_ns(span),
        "now",
        pad = width.saturating_sub(fmt_ns(span).len() + 1)
    ))];
    for (label, ms) in &lanes {
        let mut spans = vec![Span::raw(format!(
            "{:<label_w$}",
            label.chars().take(label_w - 1).collect::<String>()
        ))];
        for c in track(ms, now, span, width) {
            spans.push(match c {
                Some(l) => Span::styled(l.glyph().to_string(), theme.lane(l)),
                None => Span::raw("·"),
            });
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::from(
        "r runq  b blocked  s stopped  g gc  n retransmit  ! incident  | clock step  # host freeze",
    ));
    let shown: Vec<u32> = visible.iter().map(|r| r.pid).collect();
    let room = (area.height as usize).saturating_sub(lines.len());
    let mut recent: Vec<&Mark> = pic
        .marks
        .iter()
        .filter(in_span)
        .filter(|m| m.pid.is_none_or(|p| shown.contains(&p)))
        .collect();
    recent.sort_by_key(|m| std::cmp::Reverse((m.lane == Lane::Incident, m.start_mono_ns)));
    for m in recent.into_iter().take(room) {
        lines.push(Line::from(vec![
            Span::raw(format!(
                "{:>8} ",
                signed(m.start_mono_ns as i64 - now as i64)
            )),
            Span::styled(format!("{:<8} ", m.lane.name()), theme.lane(m.lane)),
            Span::raw(match m.pid {
                Some(p) => format!("pid {p}: {}", m.text),
                None => m.text.clone(),
            }),
        ]));
    }
    f.render_widget(Paragraph::new(lines), area);
}

const HELP: &[&str] = &[
    "pausewatch keys",
    "",
    "  ↑/k ↓/j PgUp PgDn g/G  move",
    "  Enter       detail of the selected process",
    "  t / Tab     timeline of pauses, incidents, clock steps",
    "  Esc         back; in the table: clear the filter",
    "  /           filter: name, pid, or cause (runq, blocked,",
    "              stopped, gc, steal, net)",
    "  s / S       next / previous sort column; r reverse",
    "  f / space   freeze the picture",
    "  + / -       timeline span shorter / longer",
    "  ← → [ ]     replay: seek 10s, slower / faster",
    "  q / Ctrl-C  quit (prints the report)",
    "",
    "Columns: PSE/S, P99, MAX are the last window; TOTAL and the",
    "cause shares are since the start. STL is hypervisor steal",
    "charged to the threads that ran (an estimate); NET is the",
    "estimated delay of TCP retransmissions. † marks an exited",
    "process.",
];

fn help(f: &mut Frame, area: Rect, unobserved: &[String]) {
    let mut lines: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    if !unobserved.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::from("Not observed:"));
        lines.extend(unobserved.iter().map(|n| Line::from(format!("  {n}"))));
    }
    let w = (HELP.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use observer_common::Component;
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        model::window::WindowStats,
        tui::{
            picture::{Header, LeaseRow, SocketRow, ThreadRow},
            state::SortKey,
        },
    };

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn mark(at_s: u64, dur: u64, pid: Option<u32>, lane: Lane, text: &str) -> Mark {
        Mark {
            start_mono_ns: at_s * S,
            end_mono_ns: at_s * S + dur,
            pid,
            tid: pid.map(|p| p + 1),
            lane,
            text: text.into(),
        }
    }

    /// A picture of a host where a lease holder was stopped past its deadline.
    pub(crate) fn picture() -> Picture {
        let row = |pid, comm: &str, total, causes: [u64; 6], window: Option<WindowStats>| Row {
            pid,
            comm: comm.into(),
            exited: pid == 900,
            pauses: 12,
            total_ns: total,
            max_ns: total / 2,
            p99_ns: Some(total / 2),
            window,
            cause_ns: causes,
            retransmits: if causes[5] > 0 { 3 } else { 0 },
            leases: 0,
            lease_risk: None,
        };
        let win = |per_s, p99| {
            Some(WindowStats {
                pauses: 10,
                per_s,
                p99_ns: Some(p99),
                max_ns: p99 * 2,
                cause_ns: [0; 4],
            })
        };
        let mut rows = vec![
            row(
                868,
                "client-A",
                4 * S,
                [10 * MS, 0, 4 * S - 10 * MS, 0, 0, 0],
                win(0.3, 2 * MS),
            ),
            row(
                1200,
                "java",
                900 * MS,
                [50 * MS, 0, 0, 850 * MS, 20 * MS, 0],
                win(12.5, 40 * MS),
            ),
            row(
                77,
                "postgres",
                450 * MS,
                [20 * MS, 400 * MS, 0, 0, 0, 30 * MS],
                None,
            ),
            row(900, "cron", 6 * MS, [6 * MS, 0, 0, 0, 0, 0], None),
        ];
        let leases = vec![LeaseRow {
            name: "leader".into(),
            pid: 868,
            comm: "client-A".into(),
            token: Some(1),
            ttl_ns: 2 * S,
            remaining_ns: Some(-2 * S as i64),
            risk: "expired",
        }];
        crate::tui::picture::attach_leases(&mut rows, &leases);
        Picture {
            header: Header {
                source: "live".into(),
                mechanism: "tp_btf".into(),
                steal_pct: Some(1.5),
                clock_err_ns: Some(2 * MS),
                clock_unsynced: false,
                last_step: Some("-5.00s".into()),
                host_freezes: 1,
                retransmits: 3,
                drops: vec![("sched", 0), ("gc", 2)],
                decode_errors: 0,
                output_dropped: 0,
                bpf_ns_per_run: Some(143),
                agent_cpu_pct: Some(0.8),
                unobserved: vec!["GC not observable for pid 9 (app): stripped".into()],
                last_incident: Some("lease_expired_during_pause: lease 'leader' of pid 868".into()),
            },
            rows,
            marks: vec![
                mark(
                    100,
                    4 * S,
                    Some(868),
                    Lane::Stop,
                    "stopped 4.00s: SIGSTOP from pid 861 (scenario, uid 0)",
                ),
                mark(
                    102,
                    0,
                    Some(868),
                    Lane::Incident,
                    "lease_expired_during_pause: lease 'leader' (token 1)",
                ),
                mark(150, 40 * MS, Some(1200), Lane::Gc, "G1 Young pause 40.0ms"),
                mark(170, 2 * S, None, Lane::HostPause, "host freeze 2.00s"),
                mark(
                    200,
                    0,
                    None,
                    Lane::ClockStep,
                    "clock stepped back 5.00s (cause not seen)",
                ),
                mark(
                    230,
                    400 * MS,
                    Some(77),
                    Lane::Pause(Component::Blocked),
                    "thread 78 paused 400.0ms = blocked 400.0ms (fsync of /data/wal)",
                ),
                mark(
                    235,
                    200 * MS,
                    Some(77),
                    Lane::Retransmit,
                    "timeout retransmission on 10.0.0.1:5432 -> 10.0.0.2:40000 (ESTABLISHED)",
                ),
            ],
            leases,
            now_mono_ns: 240 * S,
            window_ns: 10 * S,
        }
    }

    pub(crate) fn detail() -> Detail {
        let mut all = Aggregate::default();
        let mut runq = Aggregate::default();
        for v in [1, 2, 2, 3, 5, 8, 13, 400] {
            all.record(v * MS);
            runq.record(v * MS / 2);
        }
        let p = picture();
        let all_for_advice = all.clone();
        Detail {
            pid: 77,
            comm: "postgres".into(),
            hists: vec![("all", all), ("runq", runq), ("gc", Aggregate::default())],
            latest: crate::tui::picture::latest_of(&p.marks, 77),
            threads: vec![ThreadRow {
                tid: 78,
                pauses: 1,
                total_ns: 400 * MS,
                max_ns: 400 * MS,
            }],
            sockets: vec![SocketRow {
                conn: "10.0.0.1:5432 -> 10.0.0.2:40000".into(),
                retransmits: 3,
                timeouts: 1,
                delay_est_ns: 30 * MS,
            }],
            leases: vec![],
            advice: crate::tui::picture::advice_line(&all_for_advice, 60 * S, 1e-6),
        }
    }

    pub(crate) fn screen(
        w: u16,
        h: u16,
        pic: &Picture,
        ui: &UiState,
        d: Option<&Detail>,
    ) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, f.area(), pic, ui, d, Theme { color: false }))
            .unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                let line: String = (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect();
                line.trim_end().to_string() + "\n"
            })
            .collect()
    }

    #[test]
    fn table_in_80x24() {
        insta::assert_snapshot!(screen(80, 24, &picture(), &UiState::default(), None));
    }

    #[test]
    fn table_sorted_by_gc_and_filtered() {
        let ui = UiState {
            sort: SortKey::Cause(3),
            filter: "cause:runq".into(),
            selected: Some(1200),
            ..Default::default()
        };
        insta::assert_snapshot!(screen(100, 12, &picture(), &ui, None));
    }

    /// Narrower than 90 columns, causes no visible process has are hidden and COMM gets their
    /// room; "java" has runq, gc and steal only.
    #[test]
    fn narrow_table_hides_empty_causes() {
        let ui = UiState {
            filter: "java".into(),
            ..Default::default()
        };
        let text = screen(80, 8, &picture(), &ui, None);
        let head = text.lines().find(|l| l.starts_with("PID")).unwrap();
        let cols: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "PID", "COMM", "PSE/S", "P99", "MAX", "TOTAL", "RUNQ", "GC", "STL", "LEASES"
            ],
            "{text}"
        );
        let wide = screen(100, 8, &picture(), &ui, None);
        assert!(wide.contains("STOP GC   STL  NET"), "{wide}");
    }

    #[test]
    fn detail_in_80x24() {
        let ui = UiState {
            mode: Mode::Detail(77),
            ..Default::default()
        };
        insta::assert_snapshot!(screen(80, 24, &picture(), &ui, Some(&detail())));
    }

    #[test]
    fn timeline_in_80x24() {
        let ui = UiState {
            mode: Mode::Timeline,
            ..Default::default()
        };
        insta::assert_snapshot!(screen(80, 24, &picture(), &ui, None));
    }

    #[test]
    fn help_over_the_table() {
        let ui = UiState {
            help: true,
            ..Default::default()
        };
        insta::assert_snapshot!(screen(80, 24, &picture(), &ui, None));
    }

    #[test]
    fn empty_small_and_zero_areas() {
        let ui = UiState::default();
        let empty = Picture::default();
        let s = screen(80, 24, &empty, &ui, None);
        assert!(s.contains("no pauses observed yet"), "{s}");
        let s = screen(30, 5, &picture(), &ui, None);
        assert!(s.contains("too small"), "{s}");
        for (w, h) in [(0, 0), (1, 1), (0, 24), (80, 0)] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| render(f, f.area(), &picture(), &ui, None, Theme::from_env()))
                .unwrap();
        }
        // Every mode at the smallest size drawn.
        for mode in [
            Mode::Table,
            Mode::Detail(77),
            Mode::Detail(5),
            Mode::Timeline,
        ] {
            let ui = UiState {
                mode,
                help: true,
                ..Default::default()
            };
            let _ = screen(MIN_WIDTH, MIN_HEIGHT, &picture(), &ui, Some(&detail()));
        }
        let ui = UiState {
            filter: "nothing-matches".into(),
            ..Default::default()
        };
        let s = screen(80, 24, &picture(), &ui, None);
        assert!(s.contains("no process matches"), "{s}");
    }

    #[test]
    fn no_color_means_no_colours() {
        let draw = |theme| {
            let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
            let ui = UiState {
                mode: Mode::Timeline,
                ..Default::default()
            };
            t.draw(|f| render(f, f.area(), &picture(), &ui, None, theme))
                .unwrap();
            t.backend().buffer().clone()
        };
        let plain = draw(Theme { color: false });
        assert!(
            plain
                .content()
                .iter()
                .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
            "a colour was drawn with colours off"
        );
        let coloured = draw(Theme { color: true });
        assert!(coloured.content().iter().any(|c| c.fg != Color::Reset));
    }

    #[test]
    fn tracks_place_marks_on_the_time_axis() {
        let p = picture();
        let marks: Vec<&Mark> = p.marks.iter().filter(|m| m.pid == Some(868)).collect();
        // 240 s span, 241 columns: one per second.
        let t = track(&marks, 240 * S, 240 * S, 241);
        assert_eq!(t[100], Some(Lane::Stop));
        assert_eq!(t[104], Some(Lane::Stop));
        assert_eq!(t[102], Some(Lane::Incident), "incidents win");
        // A short pause in the column of a long stop does not hide it, in either order.
        let blip = mark(
            104,
            5 * MS,
            Some(868),
            Lane::Pause(Component::Runq),
            "runq 5ms",
        );
        let mut with_blip = marks.clone();
        with_blip.push(&blip);
        assert_eq!(
            track(&with_blip, 240 * S, 240 * S, 241)[104],
            Some(Lane::Stop)
        );
        let blip_first = [&blip, marks[0]];
        assert_eq!(
            track(&blip_first, 240 * S, 240 * S, 241)[104],
            Some(Lane::Stop)
        );
        assert_eq!(t[105], None);
        assert!(
            track(&marks, 240 * S, 10 * S, 20)
                .iter()
                .all(Option::is_none)
        );
        assert!(track(&marks, 240 * S, 240 * S, 0).is_empty());
    }

    #[test]
    fn bars_follow_the_histogram() {
        let mut a = Aggregate::default();
        for _ in 0..8 {
            a.record(1_000_000);
        }
        a.record(4_000_000);
        let b = bars(&a, 40);
        assert!(b.starts_with('█') && b.ends_with('▁'), "{b}");
        assert_eq!(bars(&Aggregate::default(), 40), "");
    }
}
