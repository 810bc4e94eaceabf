//! Reading NDJSON recordings back (`pausewatch merge`): line by line, bounded, with one clear
//! error for a file that is not a pausewatch recording and a count of the lines skipped in one
//! that is damaged (truncated by a crash, a partial copy).
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
};

use crate::model::merge::Event;

/// Lines longer than this are not pausewatch's (its longest are a few KiB) and are skipped.
pub const MAX_LINE_BYTES: u64 = 1 << 20;

/// What was read from one file.
#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    /// Lines skipped as malformed, and the first such problem with its line number.
    pub skipped: u64,
    pub first_problem: Option<String>,
}

/// Reads one line of at most `MAX_LINE_BYTES` (the rest of a longer line is consumed and the
/// line reported as too long). None at the end of the input.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE_BYTES + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() as u64 > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let m = r.by_ref().take(1 << 16).read_until(b'\n', &mut sink)?;
            if m == 0 || sink.ends_with(b"\n") {
                break;
            }
        }
        return Ok(Some(false));
    }
    Ok(Some(true))
}

/// Reads a recording; `keep` selects the line types wanted.
pub fn read(path: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Recording> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    read_from(BufReader::new(file), &path.display().to_string(), keep)
}

pub fn read_from(
    mut r: impl BufRead,
    name: &str,
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Recording> {
    let mut rec = Recording::default();
    let mut buf = Vec::new();
    let mut lineno = 0u64;
    let mut valid = 0u64;
    while let Some(whole) =
        next_line(&mut r, &mut buf).map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?
    {
        lineno += 1;
        let problem = if !whole {
            Some(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match serde_json::from_slice::<serde_json::Value>(&buf) {
                Err(e) => Some(format!("not JSON ({e})")),
                Ok(v) => match Event::from_line(v) {
                    Ok(e) => {
                        valid += 1;
                        if keep(&e.kind) {
                            rec.events.push(e);
                        }
                        None
                    }
                    Err(e) if e.starts_with("schema ") => {
                        anyhow::bail!(
                            "{name} line {lineno}: {e}: read it with the pausewatch that wrote it"
                        )
                    }
                    Err(e) => Some(e),
                },
            }
        };
        if let Some(p) = problem {
            rec.skipped += 1;
            rec.first_problem
                .get_or_insert_with(|| format!("line {lineno}: {p}"));
        }
    }
    if valid == 0 {
        anyhow::bail!(
            "{name} is not a pausewatch recording: {}",
            rec.first_problem
                .as_deref()
                .unwrap_or("it is empty (record one with `pausewatch --json FILE`)")
        );
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema":1,"type":"pause","host":"a","ts_mono_ns":5,"wall_ns":10,"wall_err_ns":1,"pid":1}"#;

    #[test]
    fn damaged_lines_are_skipped_and_counted() {
        let text = format!("{GOOD}\n{{\"schema\":1,\"type\":\"pa\n\n{GOOD}\n{{\"truncated");
        let r = read_from(text.as_bytes(), "x", |_| true).unwrap();
        assert_eq!((r.events.len(), r.skipped), (2, 2));
        assert!(r.first_problem.unwrap().starts_with("line 2: not JSON"));
    }

    #[test]
    fn a_file_with_nothing_of_ours_is_an_error() {
        let e = read_from("hello\nworld\n".as_bytes(), "notes.txt", |_| true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("notes.txt is not a pausewatch recording: line 1: not JSON"),
            "{e}"
        );
        let e = read_from("".as_bytes(), "empty", |_| true).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn another_schema_version_is_refused() {
        let text = GOOD.replace("\"schema\":1", "\"schema\":7");
        let e = read_from(text.as_bytes(), "new.ndjson", |_| true).unwrap_err();
        assert!(e.to_string().contains("new.ndjson line 1: schema 7"), "{e}");
    }

    #[test]
    fn huge_lines_are_skipped_without_reading_them_whole() {
        let huge = "x".repeat(MAX_LINE_BYTES as usize * 2);
        let text = format!("{huge}\n{GOOD}\n");
        let r = read_from(text.as_bytes(), "x", |_| true).unwrap();
        assert_eq!((r.events.len(), r.skipped), (1, 1));
        assert!(r.first_problem.unwrap().contains("longer than"));
    }

    #[test]
    fn unwanted_types_are_read_but_not_kept() {
        let text = format!("{GOOD}\n{}\n", GOOD.replace("pause", "summary"));
        let r = read_from(text.as_bytes(), "x", |t| t == "pause").unwrap();
        assert_eq!(r.events.len(), 1);
    }
}
