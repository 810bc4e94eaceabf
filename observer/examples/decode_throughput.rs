//! How many ring-buffer records per second the agent decodes and correlates, NDJSON included:
//! `cargo xtask bench agent` runs this (release) and reports its line.
//!
//!   decode_throughput [RECORDS]
//!
//! A synthetic host's stream, encoded exactly as the kernel programs write it: 90% scheduler
//! pause episodes (2,000 processes of 4 threads; runnable, blocked, preempted and stopped
//! episodes of 1 to 64 ms), 5% signals and 5% JVM safepoints. Each goes through the agent's
//! own path (decode, process table, timeline and correlator, recent lists, NDJSON line into the
//! writer thread, which writes to /dev/null) in batches of the live agent's size. Prints one
//! JSON line: records, seconds, records/s, NDJSON lines dropped, peak RSS.
use std::time::Instant;

use observer_common::{
    Component, EpisodeStart, GcRecord, PauseRecord, RecordKind, SignalRecord, TASK_COMM_LEN, encode,
};
use pausewatch::{
    agent::{AgentState, Output},
    export::{
        ndjson::NdjsonWriter,
        spool::{Rotation, Spool},
    },
    source::ringbuf::MAX_BATCH,
};

fn comm(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut c = [0u8; TASK_COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// A small deterministic generator (xorshift): the same stream every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The next `n` records of the stream.
fn records(rng: &mut Rng, now: &mut u64, names: &[[u8; TASK_COMM_LEN]], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            *now += 20_000 + rng.next() % 100_000;
            let now = *now;
            let p = (rng.next() % 2000) as usize;
            let tgid = 10_000 + p as u32 * 8;
            let tid = tgid + (rng.next() % 4) as u32;
            match rng.next() % 20 {
                0 => {
                    // SAFETY: a plain-old-data record; all zeroes is a valid value.
                    let mut r: SignalRecord = unsafe { std::mem::zeroed() };
                    r.kind = RecordKind::Signal as u32;
                    r.sig = 15;
                    r.group = 1;
                    r.ts_mono_ns = now;
                    r.target_tid = tgid;
                    r.target_tgid = tgid;
                    r.target_comm = names[p];
                    r.sender.tid = 1;
                    r.sender.tgid = 1;
                    r.sender.comm = comm("systemd");
                    encode(&r)
                }
                1 => {
                    // SAFETY: as above.
                    let mut r: GcRecord = unsafe { std::mem::zeroed() };
                    r.kind = RecordKind::Gc as u32;
                    r.runtime = 1;
                    r.tgid = tgid;
                    r.tid = tid;
                    r.start_mono_ns = now;
                    r.duration_ns = 2_000_000 + rng.next() % 30_000_000;
                    r.gc_ns = r.duration_ns * 9 / 10;
                    r.sync_ns = r.duration_ns / 20;
                    r.operation[..13].copy_from_slice(b"G1CollectFull");
                    r.comm = names[p];
                    encode(&r)
                }
                _ => {
                    // SAFETY: as above.
                    let mut r: PauseRecord = unsafe { std::mem::zeroed() };
                    r.kind = RecordKind::Pause as u32;
                    r.cpu = (rng.next() % 2) as u32;
                    r.prev_cpu = r.cpu;
                    r.tid = tid;
                    r.tgid = tgid;
                    r.start_mono_ns = now;
                    r.duration_ns = 1_000_000 << (rng.next() % 7);
                    let (start, first) = match rng.next() % 4 {
                        0 => (EpisodeStart::Wakeup, Component::Runq),
                        1 => (EpisodeStart::Preempted, Component::Runq),
                        2 => (EpisodeStart::Blocked, Component::Blocked),
                        _ => (EpisodeStart::Stopped, Component::Stopped),
                    };
                    r.start_reason = start as u32;
                    r.components_ns[first as usize] = r.duration_ns * 3 / 4;
                    r.components_ns[Component::Runq as usize] += r.duration_ns / 4;
                    if start == EpisodeStart::Preempted {
                        r.preempted_by_tid = 77;
                        r.preempted_by_comm = comm("kworker/0:1");
                    }
                    r.stack_id = -1;
                    r.comm = names[p];
                    encode(&r)
                }
            }
        })
        .collect()
}

fn hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| anyhow::anyhow!("RECORDS must be a count: {e}"))?,
        None => 2_000_000,
    };
    let spool = Spool::file(
        std::path::Path::new("/dev/null"),
        Rotation {
            max_bytes: u64::MAX,
            keep: 0,
        },
        8 << 20,
    )?;
    let mut out = Output::Json(NdjsonWriter::new(spool, "bench".into()));
    let mut agent = AgentState::offline(pausewatch::cli::DEFAULT_MAX_PROCESSES as usize);
    // Records are made a batch at a time (so the stream's own memory stays small and the
    // peak RSS is the agent's) and only taking them in is timed.
    let (mut rng, mut now) = (Rng(0x9e37_79b9_7f4a_7c15), 1_000_000_000u64);
    let names: Vec<[u8; TASK_COMM_LEN]> = (0..2000).map(|i| comm(&format!("svc-{i}"))).collect();
    let mut busy = std::time::Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let batch = records(&mut rng, &mut now, &names, left.min(MAX_BATCH));
        left -= batch.len();
        let t = Instant::now();
        agent.take_in(batch.iter().map(Vec::as_slice), &mut out);
        busy += t.elapsed();
    }
    let t = Instant::now();
    let mut dropped = 0;
    if let Output::Json(w) = &mut out {
        w.flush();
        dropped = w.dropped_lines();
    }
    let secs = (busy + t.elapsed()).as_secs_f64();
    drop(out);
    println!(
        "{}",
        serde_json::json!({
            "records": n,
            "seconds": secs,
            "records_per_s": n as f64 / secs,
            "decode_errors": agent.decode_errors,
            "ndjson_dropped_lines": dropped,
            "processes": agent.table.len(),
            "peak_rss_kib": hwm_kib(),
        })
    );
    Ok(())
}
