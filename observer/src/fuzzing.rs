//! What the fuzz targets (`fuzz/`, `cargo xtask fuzz`) drive, and what the corpus regression
//! test replays: every input the agent takes from outside, through the same code the agent
//! runs. Each function must return for every input without panicking; the assertions inside
//! are the invariants a fuzzer can check beyond "no crash".
//!
//! - `lease_line`: one lease-protocol request line from a client (source/lease_protocol.rs).
//! - `ring_records`: a stream of ring-buffer records, each decoded, turned into the model's
//!   events and fed through the stop joiner, the correlator (with lease reports interleaved)
//!   and the NDJSON writer, as the agent's loop does. The records the kernel writes are plain
//!   structs, so a fuzzed one stands for any bit pattern a mismatched build could send.
//! - `recording`: a file given to `report`, `replay` or `merge`.
use observer_common::{Record, decode};

use crate::{
    export::ndjson::NdjsonWriter,
    model::{
        clock::{ClockChange, StepJoiner},
        correlate::Correlator,
        episode::Episode,
        gc::GcPause,
        lease::Report,
        merge,
        net::Retransmit,
        stop::{Signal, Stop, StopJoiner},
        timeline::Segment,
    },
    source::{clock::WallClock, lease_protocol, recording},
    tui::{replay::Replay, report},
};

/// One request line: parsing never panics, and what parses is written back (`to_line`, what
/// `pausewatch lease` sends) to the same request.
pub fn lease_line(data: &[u8]) {
    if let Ok(r) = lease_protocol::parse(data) {
        let line = r.to_line();
        assert!(line.len() <= lease_protocol::MAX_LINE + 64, "{line}");
        assert_eq!(
            lease_protocol::parse(line.trim_end().as_bytes()).as_ref(),
            Ok(&r),
            "{line}"
        );
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC in the fuzz targets.
pub const WALL_OFFSET_NS: i128 = 1_700_000_000_000_000_000;

/// A fixed wall clock: the fuzz targets read no clocks, so every run is repeatable.
fn clock() -> WallClock {
    WallClock {
        offset_ns: WALL_OFFSET_NS,
        err_ns: 1_000,
        unsynced: false,
        sync: Default::default(),
    }
}

/// Frames of a `ring_records` input: a tag byte, a little-endian u16 length, then that many
/// bytes. Tag 0 is a ring-buffer record; tag 1 a lease request line after one byte that picks
/// the client (pid 100 + byte % 4); tag 2 a clock step of the body's first 8 bytes (ns,
/// signed); anything else advances "now" by the body's first 4 bytes in µs and runs what is
/// due.
pub fn frames(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&tag, r) = rest.split_first()?;
        let (len, r) = r.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(r.len());
        let (body, r) = r.split_at(len);
        rest = r;
        Some((tag, body))
    })
}

/// Builds a `frames` input (the seed corpus and the tests use it).
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("a frame holds at most 64 KiB");
    let mut v = vec![tag];
    v.extend(len.to_le_bytes());
    v.extend(body);
    v
}

pub const FRAME_RECORD: u8 = 0;
pub const FRAME_LEASE: u8 = 1;
pub const FRAME_STEP: u8 = 2;
pub const FRAME_TICK: u8 = 3;

/// What a `ring_records` run reached: the seeds' tests check that the harness gets deep.
#[derive(Debug, Default)]
pub struct Reached {
    /// Records that decoded.
    pub records: usize,
    /// Lease requests the correlator accepted.
    pub leases: usize,
    pub incidents: Vec<&'static str>,
    /// NDJSON written.
    pub output: Vec<u8>,
}

/// The first client pid of `ring_records`' lease frames.
pub const FIRST_CLIENT: u32 = 100;

/// Runs a stream of frames through the agent's event path.
pub fn ring_records(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let clock = clock();
    let mut out = NdjsonWriter::new(Vec::new(), "fuzz".into());
    let mut corr = Correlator::new(64, 16, 0.5);
    let mut stops = StopJoiner::default();
    let mut steps = StepJoiner::default();
    let mut now: u64 = 1_000_000_000;
    let mut next_id = 0u64;
    let mut incidents = Vec::new();
    for (tag, body) in frames(data).take(4096) {
        match tag {
            FRAME_RECORD => match decode(body).inspect(|_| reached.records += 1) {
                Ok(Record::Pause(r)) => {
                    next_id += 1;
                    let ep = Episode::from_record(next_id, &r);
                    corr.on_segment(Segment::from_episode(&ep), now);
                    out.pause(&clock, &ep);
                }
                Ok(Record::Stop(r)) => {
                    next_id += 1;
                    let s = Stop::from_record(next_id, &r);
                    corr.on_segment(Segment::from_stop(&s), now);
                    if let Some(s) = stops.on_stop(s) {
                        out.stop(&clock, &s);
                    }
                }
                Ok(Record::Signal(r)) => {
                    let sig = Signal::from_record(&r);
                    out.signal(&clock, &sig);
                    if let Some(s) = stops.on_signal(&sig) {
                        out.stop(&clock, &s);
                    }
                }
                Ok(Record::Gc(r)) => {
                    next_id += 1;
                    let g = GcPause::from_record(next_id, &r);
                    corr.on_segment(Segment::from_gc(&g), now);
                    out.gc(&clock, &g);
                }
                Ok(Record::ClockAdj(r)) => {
                    if let Some(c) = ClockChange::from_record(&r, r.kind % 2 == 0) {
                        out.clock_adjust(&clock, &c);
                        if let Some(j) = steps.on_change(&c) {
                            let _ = j.describe();
                        }
                    }
                }
                Ok(Record::Retransmit(r)) => {
                    let t = Retransmit::from_record(&r, Some(250));
                    out.retransmit(&clock, &t);
                }
                Ok(Record::Exec(_) | Record::Sync(_) | Record::MemStall(_) | Record::Exit(_))
                | Err(_) => {}
            },
            FRAME_LEASE => {
                let Some((&who, line)) = body.split_first() else {
                    continue;
                };
                let pid = FIRST_CLIENT + u32::from(who % 4);
                if let Ok(req) = lease_protocol::parse(line) {
                    let report = Report {
                        ts_mono_ns: now,
                        verb: req.verb,
                        name: req.name,
                        pid,
                        comm: "client".into(),
                        tid: req.tid,
                        ttl_ns: req.ttl_ns,
                        token: req.token,
                        expires_wall_ns: req.expires_wall_ns,
                        wall_offset_ns: clock.offset_ns,
                    };
                    match corr.report(&report) {
                        Ok((_, inc)) => {
                            reached.leases += 1;
                            incidents.extend(inc);
                        }
                        Err(e) => {
                            let _ = e.to_string();
                        }
                    }
                }
            }
            FRAME_STEP => {
                let step = body
                    .first_chunk::<8>()
                    .map_or(0, |b| i64::from_le_bytes(*b));
                incidents.extend(corr.on_clock_step(now, step));
            }
            _ => {
                let us = body
                    .first_chunk::<4>()
                    .map_or(1, |b| u64::from(u32::from_le_bytes(*b)));
                now = now.saturating_add(us.saturating_mul(1_000));
                incidents.extend(corr.due(now));
                incidents.extend(corr.expired_now(now, |_| None));
                for s in stops.expire(now) {
                    out.stop(&clock, &s);
                }
                for j in steps.due(Some(now)) {
                    let _ = j.describe();
                }
            }
        }
    }
    incidents.extend(corr.flush_all());
    for inc in &incidents {
        out.incident(&clock, inc);
        reached.incidents.push(inc.kind.name());
    }
    out.flush();
    reached.output = out.into_inner();
    reached
}

/// A file given to `report`, `replay` or `merge`: read, then the report and the merged
/// timeline built from it, as those commands do.
pub fn recording(data: &[u8]) {
    let Ok(rec) = recording::read_from(data, "fuzz", |_| true) else {
        return;
    };
    let placed = merge::merge(rec.events.clone());
    for p in &placed {
        let _ = merge::text_line(p);
        let _ = merge::json_line(p);
    }
    if let Ok(replay) = Replay::from_events("fuzz", rec.events, rec.skipped) {
        let _ = report::text(&replay.report_input(1e-6));
        let (start, end) = (replay.start_mono_ns, replay.end_mono_ns);
        for t in [start, start / 2 + end / 2, end] {
            let (pic, _) = replay.picture(t, None);
            if let Some(pid) = pic.rows.first().map(|r| r.pid) {
                let _ = replay.picture(t, Some(pid));
            }
        }
    }
}

/// Seeds for the corpus (`cargo xtask fuzz --seed` writes them), one scenario each; the tests
/// below check that each reaches what it is about.
pub mod seeds {
    use observer_common::{
        Component, EpisodeStart, GcRecord, PauseRecord, RecordKind, SignalRecord, StopKind,
        StopRecord, TASK_COMM_LEN, decode, encode,
    };

    use super::{
        FIRST_CLIENT, FRAME_LEASE, FRAME_RECORD, FRAME_STEP, FRAME_TICK, WALL_OFFSET_NS, frame,
    };
    use crate::model::stop::{SIGCONT, SIGSTOP};

    /// Lease request lines, valid and not.
    pub fn lease_lines() -> Vec<(&'static str, Vec<u8>)> {
        [
            ("acquire", "acquire leader/db-1 ttl=10s token=33"),
            (
                "every_key",
                "acquire a ttl=1500ms token=1 expires_wall_ns=1700000000000000000 tid=12 pid=11\r",
            ),
            ("renew", "renew leader ttl=10s"),
            ("act", "act leader token=34"),
            ("release", "release leader"),
            ("reject", "reject leader token=33"),
            ("bad_value", "acquire leader ttl=forever"),
            ("duplicate", "renew x ttl=1s ttl=2s"),
            ("unknown_key", "act x colour=blue"),
        ]
        .into_iter()
        .map(|(n, l)| (n, l.as_bytes().to_vec()))
        .collect()
    }

    fn comm(name: &str) -> [u8; TASK_COMM_LEN] {
        let mut c = [0u8; TASK_COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    /// A record of `kind` with every other field zero.
    fn zeroed(kind: RecordKind, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[..4].copy_from_slice(&(kind as u32).to_ne_bytes());
        b
    }

    fn pause(tgid: u32, start_mono_ns: u64, duration_ns: u64) -> Vec<u8> {
        let observer_common::Record::Pause(mut r) =
            decode(&zeroed(RecordKind::Pause, size_of::<PauseRecord>()))
                .expect("a zeroed pause record decodes")
        else {
            unreachable!()
        };
        r.tid = tgid;
        r.tgid = tgid;
        r.start_mono_ns = start_mono_ns;
        r.duration_ns = duration_ns;
        r.components_ns[Component::Stopped as usize] = duration_ns - duration_ns / 10;
        r.components_ns[Component::Runq as usize] = duration_ns / 10;
        r.start_reason = EpisodeStart::Stopped as u32;
        r.comm = comm("client");
        encode(&r)
    }

    fn stop(tgid: u32, start_mono_ns: u64, duration_ns: u64) -> Vec<u8> {
        let observer_common::Record::Stop(mut r) =
            decode(&zeroed(RecordKind::Stop, size_of::<StopRecord>())).expect("decodes")
        else {
            unreachable!()
        };
        r.stop_kind = StopKind::Signal as u32;
        r.tgid = tgid;
        r.threads = 1;
        r.start_mono_ns = start_mono_ns;
        r.duration_ns = duration_ns;
        r.stop_sig = SIGSTOP;
        r.stopped_by.tid = 4242;
        r.stopped_by.tgid = 4242;
        r.stopped_by.comm = comm("bash");
        r.comm = comm("client");
        encode(&r)
    }

    fn signal(sig: u32, target: u32, ts_mono_ns: u64) -> Vec<u8> {
        let observer_common::Record::Signal(mut r) =
            decode(&zeroed(RecordKind::Signal, size_of::<SignalRecord>())).expect("decodes")
        else {
            unreachable!()
        };
        r.sig = sig;
        r.group = 1;
        r.ts_mono_ns = ts_mono_ns;
        r.target_tid = target;
        r.target_tgid = target;
        r.target_comm = comm("client");
        r.sender.tid = 4242;
        r.sender.tgid = 4242;
        r.sender.comm = comm("bash");
        encode(&r)
    }

    fn gc(tgid: u32, start_mono_ns: u64) -> Vec<u8> {
        let observer_common::Record::Gc(mut r) =
            decode(&zeroed(RecordKind::Gc, size_of::<GcRecord>())).expect("decodes")
        else {
            unreachable!()
        };
        r.runtime = 1;
        r.tgid = tgid;
        r.tid = tgid + 1;
        r.start_mono_ns = start_mono_ns;
        r.duration_ns = 40_000_000;
        r.gc_ns = 38_000_000;
        r.sync_ns = 1_000_000;
        r.operation[..13].copy_from_slice(b"G1CollectFull");
        r.comm = comm("java");
        encode(&r)
    }

    fn lease(client: u32, line: &str) -> Vec<u8> {
        let mut body = vec![u8::try_from(client - FIRST_CLIENT).expect("a client of four")];
        body.extend(line.as_bytes());
        frame(FRAME_LEASE, &body)
    }

    fn tick(ms: u32) -> Vec<u8> {
        frame(FRAME_TICK, &(ms * 1_000).to_le_bytes())
    }

    /// `ring_records` starts "now" here.
    pub const START_NS: u64 = 1_000_000_000;

    /// Streams of frames (see `super::frames`).
    pub fn ring_records() -> Vec<(&'static str, Vec<u8>)> {
        let c = FIRST_CLIENT;
        // The DDIA lease bug: the client is stopped across its deadline, resumes and acts.
        let expired = [
            lease(c, "acquire leader ttl=1s token=7"),
            frame(FRAME_RECORD, &signal(SIGSTOP, c, START_NS + 400_000_000)),
            frame(
                FRAME_RECORD,
                &stop(c, START_NS + 500_000_000, 2_000_000_000),
            ),
            frame(FRAME_RECORD, &signal(SIGCONT, c, START_NS + 2_500_000_000)),
            frame(
                FRAME_RECORD,
                &pause(c, START_NS + 500_000_000, 2_100_000_000),
            ),
            tick(3_000),
            lease(c, "act leader token=7"),
            tick(100),
        ]
        .concat();
        // A wall-clock lease when the clock is stepped back under it.
        let stepped = [
            lease(
                c + 1,
                &format!(
                    "acquire wall expires_wall_ns={}",
                    WALL_OFFSET_NS + i128::from(START_NS) + 30_000_000_000
                ),
            ),
            frame(FRAME_STEP, &(-5_000_000_000i64).to_le_bytes()),
            tick(10),
        ]
        .concat();
        // A pause that ends well before the deadline: no incident.
        let in_time = [
            lease(c + 2, "acquire fine ttl=10s"),
            frame(FRAME_RECORD, &pause(c + 2, START_NS + 1_000, 1_000_000)),
            tick(500),
            lease(c + 2, "renew fine ttl=10s"),
            lease(c + 2, "release fine"),
            tick(20_000),
        ]
        .concat();
        let gc_pause = [frame(FRAME_RECORD, &gc(c + 3, START_NS)), tick(100)].concat();
        let mut all_kinds = Vec::new();
        for (kind, size) in [
            (RecordKind::Pause, size_of::<PauseRecord>()),
            (RecordKind::Stop, size_of::<StopRecord>()),
            (RecordKind::Signal, size_of::<SignalRecord>()),
            (RecordKind::Gc, size_of::<GcRecord>()),
            (
                RecordKind::ClockAdj,
                size_of::<observer_common::ClockAdjRecord>(),
            ),
            (
                RecordKind::Retransmit,
                size_of::<observer_common::RetransmitRecord>(),
            ),
            (RecordKind::Sync, size_of::<observer_common::SyncRecord>()),
            (
                RecordKind::MemStall,
                size_of::<observer_common::MemStallRecord>(),
            ),
            (RecordKind::Exec, size_of::<observer_common::ExecRecord>()),
            (RecordKind::Exit, size_of::<observer_common::ExitRecord>()),
        ] {
            all_kinds.extend(frame(FRAME_RECORD, &zeroed(kind, size)));
        }
        all_kinds.extend(tick(1));
        vec![
            ("lease_expired_then_act", expired),
            ("clock_step_under_wall_lease", stepped),
            ("pause_in_time", in_time),
            ("gc", gc_pause),
            ("every_kind_zeroed", all_kinds),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    /// Every file of a target's corpus (the seeds and what the fuzzer kept), run again.
    fn replay_corpus(target: &str, run: impl Fn(&[u8])) -> usize {
        let dir = corpus(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
            assert!(r.is_ok(), "{} fails", path.display());
            n += 1;
        }
        n
    }

    #[test]
    fn the_lease_corpus_replays() {
        assert!(replay_corpus("lease_line", lease_line) >= seeds::lease_lines().len());
    }

    #[test]
    fn the_ring_record_corpus_replays() {
        assert!(
            replay_corpus("ring_records", |d| drop(ring_records(d))) >= seeds::ring_records().len()
        );
    }

    #[test]
    fn the_recording_corpus_replays() {
        assert!(replay_corpus("recording", recording) >= 3);
    }

    /// The seeds are in the corpus. `cargo xtask fuzz --seed` writes them: it runs this test
    /// with PAUSEWATCH_WRITE_FUZZ_SEEDS=1.
    #[test]
    fn the_seeds_are_in_the_corpus() {
        let write = std::env::var_os("PAUSEWATCH_WRITE_FUZZ_SEEDS").is_some();
        for (target, seeds) in [
            ("lease_line", seeds::lease_lines()),
            ("ring_records", seeds::ring_records()),
        ] {
            for (name, data) in seeds {
                let path = corpus(target).join(format!("seed-{name}"));
                if write {
                    std::fs::create_dir_all(corpus(target)).unwrap();
                    std::fs::write(&path, &data).unwrap();
                }
                assert_eq!(
                    std::fs::read(&path).ok().as_deref(),
                    Some(&data[..]),
                    "{} is missing or stale: run `cargo xtask fuzz --seed`",
                    path.display()
                );
            }
        }
    }

    fn reached(name: &str) -> Reached {
        let (_, data) = seeds::ring_records()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        ring_records(&data)
    }

    #[test]
    fn the_lease_bug_seed_reaches_both_incidents() {
        let r = reached("lease_expired_then_act");
        assert_eq!(r.records, 4);
        assert_eq!(r.leases, 2);
        assert_eq!(
            r.incidents,
            ["lease_expired_during_pause", "acted_after_expiry"]
        );
        let text = String::from_utf8(r.output).unwrap();
        assert!(text.contains("SIGSTOP from pid 4242 (bash"), "{text}");
    }

    #[test]
    fn the_clock_step_seed_moves_the_deadline() {
        assert_eq!(
            reached("clock_step_under_wall_lease").incidents,
            ["clock_step_moved_deadline"]
        );
    }

    #[test]
    fn a_pause_in_time_is_no_incident() {
        let r = reached("pause_in_time");
        assert_eq!((r.records, r.leases), (1, 3));
        assert!(r.incidents.is_empty(), "{:?}", r.incidents);
    }

    #[test]
    fn every_record_kind_decodes() {
        let r = reached("every_kind_zeroed");
        assert_eq!(r.records, 10);
        let gc = String::from_utf8(reached("gc").output).unwrap();
        assert!(gc.contains("G1CollectFull"), "{gc}");
    }

    #[test]
    fn frames_stop_at_a_truncated_header() {
        let mut data = frame(FRAME_TICK, &[1, 0, 0, 0]);
        data.extend([FRAME_RECORD, 5]);
        assert_eq!(frames(&data).count(), 1);
        // A length past the end takes what is there.
        let data = [FRAME_LEASE, 200, 0, 1, b'x'];
        assert_eq!(frames(&data).next(), Some((FRAME_LEASE, &[1, b'x'][..])));
    }

    #[test]
    fn a_lease_line_that_parses_round_trips() {
        for (_, l) in seeds::lease_lines() {
            lease_line(&l);
        }
        lease_line(&[0xff; 3000]);
    }
}
