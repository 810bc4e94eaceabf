//! Minimal live view: a host header and a process table sorted by paused time. The full TUI
//! (detail, timeline, filters) is issue 7; this already owns the terminal correctly: restored
//! on quit, on SIGTERM (the loop ends normally) and on panic (ratatui's hook).
pub mod report;
pub mod view;

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use crate::{agent::AgentState, probe::cost::ProgramCost};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    Continue,
    Quit,
}

pub struct Live {
    terminal: DefaultTerminal,
    frozen: bool,
}

impl Live {
    pub fn start() -> Self {
        Self {
            terminal: ratatui::init(),
            frozen: false,
        }
    }

    /// Reads keys on a plain thread (crossterm's poll is blocking) and sends them to the loop.
    pub fn spawn_input(&self, tx: mpsc::Sender<KeyEvent>) {
        std::thread::spawn(move || {
            loop {
                match event::poll(std::time::Duration::from_millis(200)) {
                    Ok(true) => {
                        if let Ok(Event::Key(k)) = event::read()
                            && tx.blocking_send(k).is_err()
                        {
                            return;
                        }
                    }
                    Ok(false) => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }

    pub fn on_key(&mut self, k: KeyEvent) -> KeyOutcome {
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => KeyOutcome::Quit,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => KeyOutcome::Quit,
            KeyCode::Char('f') => {
                self.frozen = !self.frozen;
                KeyOutcome::Continue
            }
            _ => KeyOutcome::Continue,
        }
    }

    pub fn draw(&mut self, st: &AgentState, costs: &[ProgramCost]) -> anyhow::Result<()> {
        if self.frozen {
            return Ok(());
        }
        self.terminal
            .draw(|f| view::render(f, f.area(), st, costs))?;
        Ok(())
    }

    pub fn finish(self) {
        ratatui::restore();
    }
}
