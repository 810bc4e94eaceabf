//! `pausewatch replay FILE`: a recording in the live view, played from its start at the
//! chosen speed. `f`/space pauses, ←/→ seek 10 s, [ and ] halve and double the speed; at the
//! end the picture holds (with the recording's exact summaries) until `q`.
use std::{io::IsTerminal as _, time::Duration};

use anyhow::bail;
use crossterm::event;

use crate::{
    cli::ReplayArgs,
    model::units::fmt_ns,
    tui::{KeyOutcome, Screen, replay::Replay, state::Mode},
};

/// How often the playhead moves.
const FRAME: Duration = Duration::from_millis(250);

pub fn run(a: &ReplayArgs) -> anyhow::Result<()> {
    let replay = Replay::open(&a.file)?;
    if !std::io::stdout().is_terminal() {
        bail!(
            "replay needs a terminal; for text use `pausewatch report {}`",
            a.file.display()
        );
    }
    let mut screen = Screen::start();
    let mut speed = a.speed;
    let mut t = replay.start_mono_ns;
    let mut last = std::time::Instant::now();
    let mut dirty = true;
    loop {
        if event::poll(FRAME)? {
            match screen.on_event(event::read()?) {
                KeyOutcome::Quit => break,
                KeyOutcome::Seek(d) => {
                    t = t
                        .saturating_add_signed(d)
                        .clamp(replay.start_mono_ns, replay.end_mono_ns);
                    dirty = true;
                }
                KeyOutcome::Speed(m) => {
                    speed = (speed * m).clamp(0.01, 10000.0);
                    dirty = true;
                }
                KeyOutcome::Continue => dirty = true,
            }
        }
        let elapsed = last.elapsed();
        last = std::time::Instant::now();
        if !screen.ui.frozen && t < replay.end_mono_ns {
            t = (t + (elapsed.as_nanos() as f64 * speed) as u64).min(replay.end_mono_ns);
            dirty = true;
        }
        if dirty {
            let pid = match screen.ui.mode {
                Mode::Detail(p) => Some(p),
                _ => None,
            };
            let (mut pic, detail) = replay.picture(t, pid);
            pic.header.source = format!(
                "replay {} +{} of {} x{speed}{}",
                a.file.display(),
                fmt_ns(t - replay.start_mono_ns),
                fmt_ns(replay.end_mono_ns - replay.start_mono_ns),
                if t >= replay.end_mono_ns {
                    " (end)"
                } else {
                    ""
                }
            );
            screen.set(pic, detail)?;
            dirty = false;
        }
    }
    drop(screen);
    Ok(())
}
