//! `pausewatch merge FILE...`: reads the recordings, merges them (`model::merge`) and writes
//! the timeline as text or NDJSON. Damaged lines are skipped and counted on stderr.
use std::io::Write as _;

use crate::{
    cli::MergeArgs,
    model::merge::{EVENT_TYPES, json_line, merge, text_line},
    source::recording,
};

pub fn run(a: MergeArgs) -> anyhow::Result<()> {
    let mut events = Vec::new();
    for f in &a.files {
        let rec = recording::read(f, |t| a.all || EVENT_TYPES.contains(&t))?;
        if rec.skipped > 0 {
            eprintln!(
                "pausewatch: {}: skipped {} damaged line(s) (first: {})",
                f.display(),
                rec.skipped,
                rec.first_problem.as_deref().unwrap_or("?")
            );
        }
        events.extend(rec.events);
    }
    let hosts: std::collections::BTreeSet<&str> = events.iter().map(|e| e.host.as_str()).collect();
    if !a.json {
        let list: Vec<&str> = hosts.iter().copied().collect();
        println!(
            "{} events from {} host(s) ({}), ordered by wall time; times are ± their clock's uncertainty",
            events.len(),
            list.len(),
            list.join(", ")
        );
    }
    let placed = merge(events);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for p in &placed {
        let r = if a.json {
            serde_json::to_writer(&mut out, &json_line(p))
                .map_err(std::io::Error::other)
                .and_then(|()| out.write_all(b"\n"))
        } else {
            writeln!(out, "{}", text_line(p))
        };
        if let Err(e) = r {
            // A reader that went away (`| head`) is not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(anyhow::anyhow!("writing the merged timeline: {e}"));
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing the merged timeline: {e}"))
        }
        _ => Ok(()),
    }
}
