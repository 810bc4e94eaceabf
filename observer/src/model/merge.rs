//! `pausewatch merge`: one timeline from the NDJSON of many hosts, ordered by wall time, with
//! each event's uncertainty, never inventing an order the clocks cannot support.
//!
//! Within one host, events are ordered by CLOCK_MONOTONIC (`ts_mono_ns`), which is exact
//! whatever the wall clock did. Across hosts only wall time relates them, and each `wall_ns`
//! is known to ± `wall_err_ns`. The hosts' sequences are merged by wall time; an event whose
//! interval overlaps the interval of an earlier event of another host is marked: their order
//! is unknown.
use std::collections::BTreeMap;

use serde_json::Value;

/// One line of a recording, with what ordering needs.
#[derive(Debug, Clone)]
pub struct Event {
    pub host: String,
    pub ts_mono_ns: u64,
    pub wall_ns: i128,
    pub wall_err_ns: u64,
    pub kind: String,
    pub line: Value,
}

impl Event {
    fn lo(&self) -> i128 {
        self.wall_ns - i128::from(self.wall_err_ns)
    }

    fn hi(&self) -> i128 {
        self.wall_ns + i128::from(self.wall_err_ns)
    }

    /// Reads the fields every line has; an error names what is wrong.
    pub fn from_line(v: Value) -> Result<Self, String> {
        let field = |k: &str| v.get(k).ok_or_else(|| format!("no `{k}` field"));
        let schema = field("schema")?
            .as_u64()
            .ok_or("`schema` is not an integer")?;
        if schema != u64::from(crate::export::ndjson::SCHEMA_VERSION) {
            return Err(format!(
                "schema {schema}, but this pausewatch reads schema {}",
                crate::export::ndjson::SCHEMA_VERSION
            ));
        }
        Ok(Self {
            host: field("host")?
                .as_str()
                .ok_or("`host` is not a string")?
                .to_string(),
            ts_mono_ns: field("ts_mono_ns")?
                .as_u64()
                .ok_or("`ts_mono_ns` is not a non-negative integer")?,
            wall_ns: field("wall_ns")?
                .as_i64()
                .map(i128::from)
                .ok_or("`wall_ns` is not an integer")?,
            wall_err_ns: field("wall_err_ns")?
                .as_u64()
                .ok_or("`wall_err_ns` is not a non-negative integer")?,
            kind: field("type")?
                .as_str()
                .ok_or("`type` is not a string")?
                .to_string(),
            line: v,
        })
    }
}

/// Line types that are events in time (the rest are end-of-run summaries and counters).
pub const EVENT_TYPES: &[&str] = &[
    "pause",
    "stop",
    "gc",
    "signal",
    "lease",
    "incident",
    "clock",
    "retransmit",
    "host_pause",
    "fsync",
    "mem_stall",
    "notice",
];

/// An event in the merged timeline.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Position in the merged timeline, from 1.
    pub seq: usize,
    pub event: Event,
    /// Earlier events of other hosts whose order relative to this one is unknown (the
    /// latest `MAX_LISTED` of them), and how many there are.
    pub order_unknown_with: Vec<usize>,
    pub order_unknown_count: usize,
}

/// Most overlapping events listed per event (unsynchronised clocks overlap everything
/// within seconds).
pub const MAX_LISTED: usize = 32;

/// Merges the events of many hosts. Each host's events keep their monotonic order; hosts are
/// interleaved by wall time (ties: host name).
pub fn merge(events: Vec<Event>) -> Vec<Placed> {
    let mut by_host: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_host.entry(e.host.clone()).or_default().push(e);
    }
    let mut queues: Vec<std::collections::VecDeque<Event>> = by_host
        .into_values()
        .map(|mut v| {
            v.sort_by_key(|e| e.ts_mono_ns);
            v.into()
        })
        .collect();
    let max_err = queues
        .iter()
        .flatten()
        .map(|e| i128::from(e.wall_err_ns))
        .max()
        .unwrap_or(0);
    let mut out: Vec<Placed> = Vec::new();
    loop {
        let next = queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|e| (e.wall_ns, e.host.clone(), i)))
            .min();
        let Some((_, _, i)) = next else { break };
        let event = queues[i].pop_front().expect("front exists");
        let seq = out.len() + 1;
        // Placed events come in (nearly) wall-time order: none more than the largest
        // uncertainty before this one's interval can overlap it.
        let mut overlapping: Vec<usize> = out
            .iter()
            .rev()
            .take_while(|p| p.event.wall_ns + max_err >= event.lo())
            .filter(|p| p.event.host != event.host && p.event.hi() >= event.lo())
            .map(|p| p.seq)
            .collect();
        let order_unknown_count = overlapping.len();
        overlapping.truncate(MAX_LISTED);
        overlapping.reverse();
        out.push(Placed {
            seq,
            event,
            order_unknown_with: overlapping,
            order_unknown_count,
        });
    }
    out
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// One sentence about an event for people.
pub fn describe(e: &Event) -> String {
    let v = &e.line;
    let who = match (v.get("pid").and_then(Value::as_u64), s(v, "comm")) {
        (Some(pid), Some(comm)) => format!("pid {pid} ({comm}) "),
        (Some(pid), None) => format!("pid {pid} "),
        _ => String::new(),
    };
    let text = s(v, "description")
        .or_else(|| s(v, "message"))
        .map(str::to_string)
        .unwrap_or_else(|| match e.kind.as_str() {
            "pause" => format!(
                "paused {} ({})",
                crate::model::units::fmt_ns(v["duration_ns"].as_u64().unwrap_or(0)),
                s(v, "dominant").unwrap_or("?")
            ),
            "lease" => {
                let mut t = format!(
                    "{} {}",
                    s(v, "event").unwrap_or("?"),
                    s(v, "lease").unwrap_or("?")
                );
                if let Some(tok) = v.get("token").and_then(Value::as_u64) {
                    t.push_str(&format!(" token {tok}"));
                }
                t
            }
            "signal" => format!(
                "{} ({})",
                s(v, "signal").unwrap_or("?"),
                s(v, "result").unwrap_or("?")
            ),
            _ => s(v, "event")
                .or_else(|| s(v, "kind"))
                .unwrap_or("")
                .to_string(),
        });
    // Incident messages and descriptions name the process themselves.
    let named = v
        .get("pid")
        .and_then(Value::as_u64)
        .is_some_and(|pid| text.contains(&format!("pid {pid} ")));
    if named { text } else { format!("{who}{text}") }
}

/// A wall time as RFC 3339 UTC with nanoseconds.
pub fn fmt_wall(wall_ns: i128) -> String {
    if wall_ns < 0 {
        return format!("{wall_ns} ns before the epoch");
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The text line of a placed event.
pub fn text_line(p: &Placed) -> String {
    let e = &p.event;
    let mut line = format!(
        "#{:<4} {} ±{:<9} {:<12} {:<10} {}",
        p.seq,
        fmt_wall(e.wall_ns),
        crate::model::units::fmt_ns(e.wall_err_ns),
        e.host,
        e.kind,
        describe(e)
    );
    let with: Vec<String> = p
        .order_unknown_with
        .iter()
        .map(|s| format!("#{s}"))
        .collect();
    match p.order_unknown_count {
        0 => {}
        n if n <= 5 => line.push_str(&format!(
            "  [order unknown relative to {}]",
            with.join(", ")
        )),
        n => line.push_str(&format!(
            "  [order unknown relative to {n} events of other hosts, {} … {}]",
            with.first().map_or("", String::as_str),
            with.last().map_or("", String::as_str)
        )),
    }
    line
}

/// The NDJSON line of a placed event: the original line with a `merge` object.
pub fn json_line(p: &Placed) -> Value {
    let mut v = p.event.line.clone();
    if let Value::Object(m) = &mut v {
        m.insert(
            "merge".into(),
            serde_json::json!({
                "seq": p.seq,
                "wall_lo_ns": p.event.lo(),
                "wall_hi_ns": p.event.hi(),
                "order_unknown_with": p.order_unknown_with,
                "order_unknown_count": p.order_unknown_count,
            }),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(host: &str, mono: u64, wall: i64, err: u64) -> Event {
        Event::from_line(json!({
            "schema": 1, "type": "pause", "host": host, "ts_mono_ns": mono,
            "wall_ns": wall, "wall_err_ns": err, "pid": 1, "comm": "x", "duration_ns": 5,
        }))
        .unwrap()
    }

    #[test]
    fn disjoint_intervals_have_a_known_order() {
        let m = merge(vec![ev("b", 10, 2_000, 10), ev("a", 10, 1_000, 10)]);
        assert_eq!(m[0].event.host, "a");
        assert_eq!(m[1].event.host, "b");
        assert!(m.iter().all(|p| p.order_unknown_with.is_empty()));
    }

    #[test]
    fn overlapping_intervals_of_different_hosts_are_marked() {
        let m = merge(vec![
            ev("a", 10, 1_000, 100),
            ev("b", 10, 1_150, 100),
            ev("b", 20, 5_000, 100),
        ]);
        assert_eq!(m[1].order_unknown_with, vec![1]);
        assert!(m[2].order_unknown_with.is_empty());
    }

    #[test]
    fn one_hosts_events_keep_monotonic_order_even_if_its_wall_clock_stepped_back() {
        // The wall clock was stepped back 1 s between the two events: wall time alone would
        // invert them; the monotonic clock does not.
        let m = merge(vec![
            ev("a", 2_000_000_000, 500_000_000, 1),
            ev("a", 1_000_000_000, 1_000_000_000, 1),
        ]);
        assert_eq!(m[0].event.ts_mono_ns, 1_000_000_000);
        assert!(m[1].order_unknown_with.is_empty(), "same host: order known");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let e = Event::from_line(json!({"schema": 2, "type": "pause"})).unwrap_err();
        assert!(e.contains("schema 2"), "{e}");
        let e = Event::from_line(json!({"schema": 1, "type": "pause", "host": "h"})).unwrap_err();
        assert!(e.contains("ts_mono_ns"), "{e}");
        let e = Event::from_line(json!({"schema": 1, "type": "pause", "host": "h", "ts_mono_ns": 1, "wall_ns": "x", "wall_err_ns": 1})).unwrap_err();
        assert!(e.contains("wall_ns"), "{e}");
    }

    #[test]
    fn text_lines_carry_time_uncertainty_and_order() {
        let m = merge(vec![
            ev("a", 1, 1_700_000_000_000_000_000, 2_000_000),
            ev("b", 1, 1_700_000_000_001_000_000, 2_000_000),
        ]);
        let t = text_line(&m[1]);
        assert!(
            t.starts_with("#2    2023-11-14T22:13:20.001000000Z ±2.0ms"),
            "{t}"
        );
        assert!(t.ends_with("[order unknown relative to #1]"), "{t}");
        assert_eq!(json_line(&m[1])["merge"]["order_unknown_with"], json!([1]));
    }
}
