//! The agent loop: owns the probes, the model and the output; reacts to the ring buffer (epoll),
//! a one-second tick (aggregates, clock), signals, the deadline and, in the live view, keys.
use std::{
    io::{BufWriter, Stdout},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use observer_common::{NUM_DROP_CAUSES, Record};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    export::ndjson::NdjsonWriter,
    model::{
        episode::Episode,
        gc::GcPause,
        process::ProcessTable,
        stop::{Signal, Stop, StopJoiner},
    },
    probe::Probes,
    runtimes::{Notice, RuntimeWatcher},
    source::{clock::WallClock, harvest::Harvester, ringbuf},
    tui,
};

pub enum Output {
    Json(NdjsonWriter<BufWriter<Stdout>>),
    Live(tui::Live),
}

pub struct Settings {
    pub duration: Option<Duration>,
    pub max_processes: usize,
    pub pids: Vec<u32>,
    pub min_pause: Duration,
}

/// What the loop knows besides the process table.
pub struct AgentState {
    pub table: ProcessTable,
    pub next_episode_id: u64,
    pub decode_errors: u64,
    pub kernel_drops: [u64; NUM_DROP_CAUSES],
    pub clock: WallClock,
    /// Most recent streamed episodes, newest last (bounded).
    pub recent: std::collections::VecDeque<Episode>,
    /// Most recent whole-process stops, newest last (bounded).
    pub recent_stops: std::collections::VecDeque<Stop>,
    /// Signal stops waiting for the SIGCONT/SIGKILL that ended them.
    pub stops: StopJoiner,
    /// Most recent runtime stop-the-worlds, newest last (bounded).
    pub recent_gc: std::collections::VecDeque<GcPause>,
    /// Finds JVMs and Go programs and attaches their stop-the-world probes.
    pub runtimes: RuntimeWatcher,
    pub mechanism: &'static str,
    /// Degraded-mode notices from loading (shown in the live view's footer).
    pub notices: Vec<String>,
}

const RECENT_EPISODES: usize = 256;
/// Notices kept for the live view.
const MAX_NOTICES: usize = 64;

/// Appends to a bounded most-recent list, dropping the oldest beyond `RECENT_EPISODES`.
fn push_recent<T>(list: &mut std::collections::VecDeque<T>, item: T) {
    if list.len() >= RECENT_EPISODES {
        list.pop_front();
    }
    list.push_back(item);
}

impl AgentState {
    fn on_batch(&mut self, batch: ringbuf::Batch, out: &mut Output) {
        for rec in batch {
            match rec {
                Ok(Record::Pause(r)) => {
                    self.next_episode_id += 1;
                    let ep = Episode::from_record(self.next_episode_id, &r);
                    self.table.note_episode(&ep);
                    if let Output::Json(w) = out {
                        w.pause(&self.clock, &ep);
                    }
                    push_recent(&mut self.recent, ep);
                }
                Ok(Record::Stop(r)) => {
                    self.next_episode_id += 1;
                    if let Some(stop) = self
                        .stops
                        .on_stop(Stop::from_record(self.next_episode_id, &r))
                    {
                        self.emit_stop(stop, out);
                    }
                }
                Ok(Record::Signal(r)) => {
                    let sig = Signal::from_record(&r);
                    self.table.note_signal(&sig);
                    if let Output::Json(w) = out {
                        w.signal(&self.clock, &sig);
                    }
                    if let Some(stop) = self.stops.on_signal(&sig) {
                        self.emit_stop(stop, out);
                    }
                }
                Ok(Record::Gc(r)) => {
                    self.next_episode_id += 1;
                    let g = GcPause::from_record(self.next_episode_id, &r);
                    self.table.note_gc(&g);
                    if let Output::Json(w) = out {
                        w.gc(&self.clock, &g);
                    }
                    push_recent(&mut self.recent_gc, g);
                }
                Ok(Record::Exec(r)) => self.runtimes.on_exec(WallClock::mono_now(), r.tgid),
                Err(_) => self.decode_errors += 1,
            }
        }
    }

    /// Reads everything the ring buffer holds. True when there was anything.
    fn drain_all(&mut self, ring: &mut RingBuf<aya::maps::MapData>, out: &mut Output) -> bool {
        let mut got = false;
        loop {
            let (batch, more) = ringbuf::drain(ring);
            got |= !batch.is_empty();
            self.on_batch(batch, out);
            if !more {
                return got;
            }
        }
    }

    /// Runs the runtime checks that are due and reports what they found.
    fn on_runtime_checks(&mut self, ebpf: &mut aya::Ebpf, out: &mut Output) {
        for n in self.runtimes.run_due(WallClock::mono_now(), ebpf) {
            self.notice(n, out);
        }
    }

    fn notice(&mut self, n: Notice, out: &mut Output) {
        if let Output::Json(w) = out {
            w.notice(
                &self.clock,
                n.level,
                n.event,
                &n.message,
                json!({ "pid": n.pid, "path": n.path }),
            );
        }
        if n.level != "info" {
            if self.notices.len() >= MAX_NOTICES {
                self.notices.remove(0);
            }
            self.notices.push(n.message);
        }
    }

    fn emit_stop(&mut self, stop: Stop, out: &mut Output) {
        self.table.note_stop(&stop);
        if let Output::Json(w) = out {
            w.stop(&self.clock, &stop);
        }
        push_recent(&mut self.recent_stops, stop);
    }

    /// Releases stops whose resume signal did not come (`now` = None: all of them, at exit).
    fn release_stops(&mut self, now_mono_ns: Option<u64>, out: &mut Output) {
        let stops = match now_mono_ns {
            Some(now) => self.stops.expire(now),
            None => self.stops.drain(),
        };
        for s in stops {
            self.emit_stop(s, out);
        }
    }

    fn on_harvest(&mut self, harvester: &mut Harvester) {
        let h = harvester.collect();
        for (pid, comm, stats) in &h.procs {
            self.table.apply_snapshot(*pid, comm, stats);
        }
        for pid in h.retired {
            self.table.retire(pid);
        }
        self.kernel_drops = h.drops;
    }
}

pub async fn run(mut probes: Probes, settings: Settings, mut out: Output) -> anyhow::Result<()> {
    let ring = RingBuf::try_from(
        probes
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing")?,
    )?;
    // SAFETY: the RingBuf owns its map fd and lives inside the AsyncFd, so the fd stays open
    // (and is not reused) for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| {
            anyhow::anyhow!(
                "registering the ring buffer with epoll: {}",
                e.into_parts().1
            )
        })?;
    let mut harvester = Harvester::new(&mut probes.ebpf)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let deadline = settings.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The kernel programs wake the agent only when a quarter of the ring buffer is unread
    // (wakeups cost an IPI each in the traced context); everything else is collected here.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut draw = tokio::time::interval(Duration::from_millis(250));
    draw.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (key_tx, mut keys) = mpsc::channel(16);
    if let Output::Live(live) = &mut out {
        live.spawn_input(key_tx);
    }

    let mut st = AgentState {
        table: ProcessTable::new(settings.max_processes),
        next_episode_id: 0,
        decode_errors: 0,
        kernel_drops: [0; NUM_DROP_CAUSES],
        clock: WallClock::sample(),
        recent: Default::default(),
        recent_stops: Default::default(),
        stops: Default::default(),
        recent_gc: Default::default(),
        runtimes: RuntimeWatcher::default(),
        mechanism: probes.sched_mechanism,
        notices: probes.notices.clone(),
    };

    if let Output::Json(w) = &mut out {
        for n in &probes.notices {
            w.notice(&st.clock, "warn", "degraded", n, json!({}));
        }
        let pids = &settings.pids;
        w.notice(
            &st.clock,
            "info",
            "attached",
            &format!("scheduler programs attached via {}", probes.sched_mechanism),
            json!({ "mechanism": probes.sched_mechanism, "pids": pids, "min_pause_ns": settings.min_pause.as_nanos() as u64 }),
        );
        w.flush();
    }

    st.runtimes
        .scan_existing(WallClock::mono_now(), &settings.pids);

    loop {
        let runtime_check = st.runtimes.next_due_ns().map(|due| {
            Instant::now() + Duration::from_nanos(due.saturating_sub(WallClock::mono_now()))
        });
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let (batch, more) = ringbuf::drain(guard.get_inner_mut());
                if !more {
                    guard.clear_ready();
                }
                drop(guard);
                st.on_batch(batch, &mut out);
                if let Output::Json(w) = &mut out {
                    w.flush();
                }
            }
            _ = poll.tick() => {
                if st.drain_all(ring.get_mut(), &mut out) && let Output::Json(w) = &mut out {
                    w.flush();
                }
            }
            _ = tick.tick() => {
                st.clock = WallClock::sample();
                st.on_harvest(&mut harvester);
                st.release_stops(Some(WallClock::mono_now()), &mut out);
                st.runtimes.prune();
                if let Output::Json(w) = &mut out {
                    w.flush();
                }
            }
            _ = async { tokio::time::sleep_until(runtime_check.unwrap_or_else(Instant::now)).await }, if runtime_check.is_some() => {
                st.on_runtime_checks(&mut probes.ebpf, &mut out);
                if let Output::Json(w) = &mut out {
                    w.flush();
                }
            }
            _ = draw.tick(), if matches!(out, Output::Live(_)) => {
                if let Output::Live(live) = &mut out {
                    live.draw(&st, &probes.costs())?;
                }
            }
            Some(key) = keys.recv() => {
                if let Output::Live(live) = &mut out
                    && live.on_key(key) == tui::KeyOutcome::Quit
                {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break,
        }
    }

    // Final drain and harvest while the programs are still attached: nothing written before
    // this point is lost.
    st.drain_all(ring.get_mut(), &mut out);
    st.clock = WallClock::sample();
    st.on_harvest(&mut harvester);
    st.release_stops(None, &mut out);
    let costs = probes.costs();
    let stats_enabled = probes.stats_fd.is_some();
    drop(ring);
    drop(harvester);
    // Detach everything and turn BPF statistics off (if we turned them on) before reporting.
    drop(probes);

    match out {
        Output::Json(mut w) => {
            let now = WallClock::mono_now();
            for p in st.table.sorted() {
                w.summary(&st.clock, now, p);
            }
            w.drops(
                &st.clock,
                &crate::export::ndjson::Drops {
                    kernel: &st.kernel_drops,
                    decode_errors: st.decode_errors,
                    evicted_processes: st.table.evicted,
                    runtime_checks_skipped: st.runtimes.checks_skipped,
                },
            );
            w.self_cost(&st.clock, &costs, st.mechanism, stats_enabled);
            w.flush();
        }
        Output::Live(live) => {
            live.finish();
            print!("{}", tui::report::text(&st, &costs));
        }
    }
    Ok(())
}
