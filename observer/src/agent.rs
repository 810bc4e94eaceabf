//! The agent loop: owns the probes, the model and the output; reacts to the ring buffer (epoll),
//! a one-second tick (aggregates, clock), signals, the deadline and, in the live view, keys.
use std::time::Duration;

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
    agent_memory::MemState,
    cli::DeclaredLease,
    export::ndjson::NdjsonWriter,
    model::{
        clock::{ClockChange, ClockStep, JoinedStep, StepJoiner},
        correlate::{Correlator, Incident},
        episode::Episode,
        gc::GcPause,
        hiccup::HostPause,
        lease::Report,
        metrics::Metrics,
        net::{NetTable, Retransmit},
        process::ProcessTable,
        stop::{Signal, Stop, StopJoiner},
        timeline::{HOST_PID, Segment, SegmentKind, Timeline},
        units::fmt_ns,
    },
    probe::{
        Probes,
        cost::{StatsMode, StatsSampler},
        syscall_hooks::{MountWatch, host_mounts, late_mount_message},
    },
    runtimes::{Notice, RuntimeWatcher},
    source::{
        clock::WallClock,
        clock_steps::{ClockSteps, Step},
        harvest::Harvester,
        host::{ControlSleeper, HostEvent, StealSample},
        lease_socket::{self, LeaseSocket, Message},
        ringbuf,
        stacks::Stacks,
    },
    tui,
};

pub enum Output {
    Json(NdjsonWriter<crate::export::spool::Spool>),
    Live(Box<tui::Live>),
    /// `pausewatch advise`: quiet while running, then timeout advice for these processes.
    Advise(Vec<u32>),
    /// `pausewatch run` (and `--pid` without a terminal or `--json`): quiet while running,
    /// then the end report on stderr.
    Report,
}

/// How the run ended, for `main`.
#[derive(Debug, Default)]
pub struct Ended {
    /// `pausewatch run`: the command's exit status.
    pub child_status: Option<std::process::ExitStatus>,
}

pub struct Settings {
    pub duration: Option<Duration>,
    pub max_processes: usize,
    pub pids: Vec<u32>,
    pub min_pause: Duration,
    pub leases: Vec<DeclaredLease>,
    pub lease_socket: Option<LeaseSocketSettings>,
    pub lease_risk_share: f64,
    /// Chance per hour the timeout advice aims under.
    pub advise_target: f64,
    /// The control sleeper's period (zero: off).
    pub control_period: Duration,
    /// Where to serve Prometheus metrics, and how many label pairs get series of their own.
    pub prometheus: Option<std::net::SocketAddr>,
    pub prometheus_max_series: usize,
    /// End when every process in `pids` has exited (an investigation of one process).
    pub end_when_gone: bool,
    /// Seconds between the sampled seconds of BPF run-time statistics (when sampled).
    pub stats_every_s: u64,
}

pub struct LeaseSocketSettings {
    pub path: std::path::PathBuf,
    pub mode: u32,
    pub gid: Option<u32>,
    /// Given on the command line: failing to bind it is an error, not a notice.
    pub explicit: bool,
}

/// Late wakes of the control sleeper shorter than this are not reported, whatever
/// `--min-pause` says (timer latency alone is tens of µs).
const MIN_HOST_PAUSE_NS: u64 = 2_000_000;

/// Pause evidence older than this is forgotten (questions are about recent pauses).
const TIMELINE_HORIZON_NS: u64 = 15 * 60 * 1_000_000_000;

/// Seconds between returns of freed heap memory to the kernel.
const TRIM_EVERY_TICKS: u64 = 30;

/// Hands memory freed after a burst (a queue that filled while the disk was slow, a storm's
/// records) back to the kernel: glibc keeps freed memory in its arenas otherwise, and the
/// agent's RSS would stay at its high-water mark instead of showing what it uses.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the loop knows besides the process table.
pub struct AgentState {
    pub table: ProcessTable,
    pub next_episode_id: u64,
    pub decode_errors: u64,
    pub kernel_drops: [u64; NUM_DROP_CAUSES],
    /// When kernel drops were last noticed live.
    pub drop_watch: crate::model::drops::DropWatch,
    /// Reads the kernel aggregates (None when replaying a recording).
    pub harvester: Option<Harvester>,
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
    /// Pause timeline, leases and incidents.
    pub corr: Correlator,
    /// Most recent incidents, newest last (bounded).
    pub recent_incidents: std::collections::VecDeque<Incident>,
    /// Who stopped each stopped process, for live lease incidents.
    pub stop_senders: crate::source::paused_now::StopSenders,
    /// Lease requests refused (malformed, not permitted, not held), by the agent.
    pub lease_errors: u64,
    /// Start time (clock ticks since boot) of each lease holder, to notice exit and pid reuse.
    pub holder_start: std::collections::HashMap<u32, u64>,
    /// When the run began (the observation time behind timeout advice).
    pub started_mono_ns: u64,
    pub advise_target: f64,
    /// Clocks, the network and the host as a whole.
    pub host: HostState,
    /// Memory and disk: what blocked threads waited on, fsync calls, reclaim, disks.
    pub mem: MemState,
    /// What `--prometheus` serves (None: not serving).
    pub metrics: Option<crate::export::prometheus::Shared>,
}

/// What the agent knows about the host rather than one process.
pub struct HostState {
    /// Joins measured clock steps with the syscalls that made them.
    pub steps: StepJoiner,
    /// Most recent clock steps, newest last (bounded).
    pub recent_steps: std::collections::VecDeque<JoinedStep>,
    /// TCP retransmissions per process and connection.
    pub net: NetTable,
    /// The kernel's HZ (socket RTOs are in jiffies); None when it could not be read.
    pub hz: Option<u64>,
    /// Most recent host pauses (late wakes of the control sleeper), newest last (bounded).
    pub recent_host: std::collections::VecDeque<HostPause>,
    /// Host pauses counted by verdict name.
    pub host_verdicts: std::collections::BTreeMap<&'static str, u64>,
    /// Unexplained lateness at or above this is a host freeze.
    pub freeze_min_ns: u64,
    /// Per-CPU steal when the run began and as last sampled.
    pub steal_first: Option<StealSample>,
    pub steal_last: Option<StealSample>,
    /// Host steal % over the last sampled interval.
    pub steal_pct: f64,
    /// Lines left this second for late wakes that were not host-wide (a saturated CPU makes
    /// the sleeper late every few ms; those are counted, and shown up to this rate).
    pub local_lines_left: u32,
    /// Late-wake lines not written for that reason.
    pub local_lines_suppressed: u64,
}

/// `host_pause` lines per second for late wakes that were not host-wide.
const LOCAL_HOST_PAUSE_LINES_PER_S: u32 = 10;

impl HostState {
    pub fn new(
        max_processes: usize,
        hz: Option<u64>,
        freeze_min_ns: u64,
        steal_first: Option<StealSample>,
    ) -> Self {
        Self {
            steps: StepJoiner::default(),
            recent_steps: Default::default(),
            net: NetTable::new(max_processes),
            hz,
            recent_host: Default::default(),
            host_verdicts: Default::default(),
            freeze_min_ns,
            steal_last: steal_first.clone(),
            steal_first,
            steal_pct: 0.0,
            local_lines_left: LOCAL_HOST_PAUSE_LINES_PER_S,
            local_lines_suppressed: 0,
        }
    }
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
    /// An agent with no kernel behind it (no programs, no map reads): what `report`'s tests
    /// and the decode benchmark (`examples/decode_throughput.rs`) feed records to.
    pub fn offline(max_processes: usize) -> Self {
        Self {
            table: ProcessTable::new(max_processes),
            next_episode_id: 0,
            decode_errors: 0,
            kernel_drops: [0; NUM_DROP_CAUSES],
            drop_watch: Default::default(),
            harvester: None,
            clock: WallClock::sample(),
            recent: Default::default(),
            recent_stops: Default::default(),
            stops: Default::default(),
            recent_gc: Default::default(),
            runtimes: Default::default(),
            mechanism: "tp_btf",
            notices: vec![],
            corr: Correlator::new(
                Timeline::DEFAULT_CAPACITY,
                crate::model::lease::LeaseBook::DEFAULT_MAX,
                0.5,
            ),
            recent_incidents: Default::default(),
            stop_senders: Default::default(),
            lease_errors: 0,
            holder_start: Default::default(),
            started_mono_ns: WallClock::mono_now(),
            advise_target: 1e-6,
            host: HostState::new(max_processes, Some(250), 5_000_000, None),
            mem: MemState::new(None, None),
            metrics: None,
        }
    }

    /// Decodes raw ring-buffer records and takes them in as the live agent does (the decode
    /// benchmark's entry point).
    pub fn take_in<'a>(&mut self, raw: impl IntoIterator<Item = &'a [u8]>, out: &mut Output) {
        let batch: ringbuf::Batch = raw.into_iter().map(observer_common::decode).collect();
        self.on_batch(batch, out);
    }

    /// The metrics, when served (a poisoned lock is taken over: the data is counters).
    fn metrics(&self) -> Option<std::sync::MutexGuard<'_, Metrics>> {
        self.metrics
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn on_batch(&mut self, batch: ringbuf::Batch, out: &mut Output) {
        for rec in batch {
            match rec {
                Ok(Record::Pause(r)) => {
                    self.next_episode_id += 1;
                    let mut ep = Episode::from_record(self.next_episode_id, &r);
                    self.mem.resolve(&mut ep);
                    self.table.note_episode(&ep);
                    self.corr
                        .on_segment(Segment::from_episode(&ep), WallClock::mono_now());
                    if let Output::Json(w) = out {
                        w.pause(&self.clock, &ep);
                    }
                    push_recent(&mut self.recent, ep);
                }
                Ok(Record::Stop(r)) => {
                    self.next_episode_id += 1;
                    let stop = Stop::from_record(self.next_episode_id, &r);
                    // The timeline needs who stopped it, which the record has; the resumer
                    // the joiner waits for is only for the stop line.
                    self.corr
                        .on_segment(Segment::from_stop(&stop), WallClock::mono_now());
                    if let Some(stop) = self.stops.on_stop(stop) {
                        self.emit_stop(stop, out);
                    }
                }
                Ok(Record::Signal(r)) => {
                    let sig = Signal::from_record(&r);
                    self.table.note_signal(&sig);
                    self.stop_senders.on_signal(&sig);
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
                    if let Some(mut m) = self.metrics() {
                        m.on_gc(&g, WallClock::mono_now());
                    }
                    self.corr
                        .on_segment(Segment::from_gc(&g), WallClock::mono_now());
                    if let Output::Json(w) = out {
                        w.gc(&self.clock, &g);
                    }
                    push_recent(&mut self.recent_gc, g);
                }
                Ok(Record::Exec(r)) => self.runtimes.on_exec(WallClock::mono_now(), r.tgid),
                Ok(Record::ClockAdj(r)) => {
                    let Some(c) = ClockChange::from_record(&r, self.clock.sync.nano()) else {
                        self.decode_errors += 1;
                        continue;
                    };
                    if let Output::Json(w) = out {
                        w.clock_adjust(&self.clock, &c);
                    }
                    if let Some(j) = self.host.steps.on_change(&c) {
                        self.emit_step(j, out);
                    }
                }
                Ok(Record::Retransmit(r)) => {
                    let t = Retransmit::from_record(&r, self.host.hz);
                    self.host.net.note(&t);
                    if let Some(pid) = t.pid {
                        self.corr.on_context(Segment {
                            id: 0,
                            pid,
                            start_mono_ns: t.ts_mono_ns,
                            end_mono_ns: t.ts_mono_ns + t.delay_est_ns.unwrap_or(0),
                            kind: SegmentKind::Context { what: t.describe() },
                        });
                    }
                    if let Some(mut m) = self.metrics() {
                        m.on_retransmit(&t, WallClock::mono_now());
                    }
                    if let Output::Json(w) = out {
                        w.retransmit(&self.clock, &t);
                    }
                }
                Ok(Record::Sync(r)) => {
                    let c = self.mem.on_sync(&r);
                    if let Output::Json(w) = out {
                        w.sync_call(&self.clock, &c);
                    }
                }
                Ok(Record::MemStall(r)) => {
                    let s = self.mem.on_stall(&r);
                    if let Output::Json(w) = out {
                        w.mem_stall(&self.clock, &s);
                    }
                }
                Ok(Record::Exit(r)) => {
                    // In ring order: what follows for this pid is a later process's. A read
                    // since the exit may already have given the table the next process (a
                    // later start; an earlier one is a process before this one).
                    let next_already = self
                        .table
                        .get(r.tgid)
                        .is_some_and(|e| r.start_ns != 0 && e.start_ns > r.start_ns);
                    if let Some(h) = self.harvester.as_mut().filter(|_| !next_already) {
                        let table = &mut self.table;
                        let h = h.final_read(r.tgid, r.start_ns, |pid, comm, s| {
                            table.apply_snapshot(pid, comm, s)
                        });
                        self.apply_harvest(h);
                    }
                }
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

    /// The watched process (`--pid`, `run`) is gone: the run ends.
    fn investigation_ended(&mut self, message: String, pids: &[u32], out: &mut Output) {
        self.notice(
            Notice {
                level: "info",
                event: "investigation_ended",
                message,
                pid: pids.first().copied(),
                path: None,
            },
            out,
        );
    }

    /// Leases whose deadline passes now while their holder is stopped or blocked.
    fn live_expiries(&mut self, now: u64) -> Vec<Incident> {
        let senders = &self.stop_senders;
        self.corr.expired_now(now, |h| {
            crate::source::paused_now::paused_now(h.pid, h.scope.tid(), senders)
        })
    }

    fn emit_incidents(&mut self, incidents: Vec<Incident>, out: &mut Output) {
        for i in incidents {
            // A live incident is counted once, by the incident that completes it.
            if i.ongoing.is_none()
                && let Some(mut m) = self.metrics()
            {
                m.on_incident(&i, WallClock::mono_now());
            }
            if let Output::Json(w) = out {
                w.incident(&self.clock, &i);
            }
            push_recent(&mut self.recent_incidents, i);
        }
    }

    /// One lease request: everything about the sender's past pauses is judged first (it is
    /// running again, so its pauses are in the ring buffer), then the request itself.
    fn on_lease_message(
        &mut self,
        msg: Message,
        ring: &mut RingBuf<aya::maps::MapData>,
        out: &mut Output,
    ) {
        let reply = match self.lease_request(msg.peer, msg.request, ring, out) {
            Ok(r) => r,
            Err(e) => {
                self.lease_errors += 1;
                if let Output::Json(w) = out {
                    w.lease_error(&self.clock, msg.peer.pid, &e);
                }
                format!("error {e}")
            }
        };
        // The client may have gone; nothing to do then.
        let _ = msg.reply.send(reply);
        if let Output::Json(w) = out {
            w.flush();
        }
    }

    fn lease_request(
        &mut self,
        peer: lease_socket::Peer,
        request: Result<
            crate::source::lease_protocol::Request,
            crate::source::lease_protocol::ProtocolError,
        >,
        ring: &mut RingBuf<aya::maps::MapData>,
        out: &mut Output,
    ) -> Result<String, String> {
        let req = request.map_err(|e| e.to_string())?;
        let subject = lease_socket::authenticate(peer, &req)?;
        self.drain_all(ring, out);
        let flushed = self.corr.flush_pid(subject.pid);
        self.emit_incidents(flushed, out);
        let now_clock = WallClock::sample();
        let report = Report {
            ts_mono_ns: WallClock::mono_now(),
            verb: req.verb,
            name: req.name.clone(),
            pid: subject.pid,
            comm: subject.comm,
            tid: subject.tid,
            ttl_ns: req.ttl_ns,
            token: req.token,
            expires_wall_ns: req.expires_wall_ns,
            wall_offset_ns: now_clock.offset_ns,
        };
        let (accepted, late) = self.corr.report(&report).map_err(|e| e.to_string())?;
        if let std::collections::hash_map::Entry::Vacant(e) = self.holder_start.entry(report.pid)
            && let Some(t) = start_time(report.pid)
        {
            e.insert(t);
        }
        if let Output::Json(w) = out {
            w.lease(&self.clock, &report, &accepted);
        }
        self.emit_incidents(late.into_iter().collect(), out);
        Ok(format!(
            "ok {} {}{}",
            report.verb.name(),
            report.name,
            accepted.reply(report.ts_mono_ns)
        ))
    }

    /// Leases of processes that exited (or whose pid now names another process) end.
    fn check_holders(&mut self) {
        let now = WallClock::mono_now();
        for pid in self.corr.leases.holder_pids() {
            let known = self.holder_start.get(&pid).copied();
            let current = start_time(pid);
            if current.is_none() || (known.is_some() && known != current) {
                self.corr.leases.process_gone(pid, now);
            }
        }
        // Forget the start times of processes that hold nothing any more (released or gone).
        let held = self.corr.leases.holder_pids();
        self.holder_start
            .retain(|pid, _| held.binary_search(pid).is_ok());
        self.corr
            .timeline
            .forget_before(now.saturating_sub(TIMELINE_HORIZON_NS));
    }

    fn emit_step(&mut self, j: JoinedStep, out: &mut Output) {
        if let Some(mut m) = self.metrics() {
            m.on_clock_step(j.step.step_ns);
        }
        if let Output::Json(w) = out {
            w.clock_step(&self.clock, &j);
        }
        push_recent(&mut self.host.recent_steps, j);
    }

    /// Steps still waiting for their cause when the wait is over (`now` None: all, at exit).
    fn release_steps(&mut self, now_mono_ns: Option<u64>, out: &mut Output) {
        for j in self.host.steps.due(now_mono_ns) {
            self.emit_step(j, out);
        }
    }

    fn on_host_event(&mut self, ev: HostEvent, out: &mut Output) {
        match ev {
            HostEvent::LateWake(w) => {
                self.next_episode_id += 1;
                let h = HostPause::judge(self.next_episode_id, &w, self.host.freeze_min_ns);
                *self.host.host_verdicts.entry(h.verdict.name()).or_default() += 1;
                if let Some(mut m) = self.metrics() {
                    m.on_host_pause(&h);
                }
                if h.verdict.host_wide() {
                    self.corr
                        .on_segment(Segment::from_host_pause(&h), WallClock::mono_now());
                }
                let write = if h.verdict.host_wide() {
                    true
                } else if self.host.local_lines_left > 0 {
                    self.host.local_lines_left -= 1;
                    true
                } else {
                    self.host.local_lines_suppressed += 1;
                    false
                };
                if write && let Output::Json(w) = out {
                    w.host_pause(&self.clock, &h);
                    w.flush();
                }
                push_recent(&mut self.host.recent_host, h);
            }
            HostEvent::Steal(s) => {
                if let Some(prev) = &self.host.steal_last {
                    self.host.steal_pct = s.pct_since(prev);
                    let stolen = s.total_ns().saturating_sub(prev.total_ns());
                    if stolen > 0 {
                        self.corr.on_context(Segment {
                            id: 0,
                            pid: HOST_PID,
                            start_mono_ns: prev.ts_mono_ns,
                            end_mono_ns: s.ts_mono_ns,
                            kind: SegmentKind::Context {
                                what: format!(
                                    "host steal {} over {} ({:.1}% of all CPUs, /proc/stat)",
                                    fmt_ns(stolen),
                                    fmt_ns(s.ts_mono_ns.saturating_sub(prev.ts_mono_ns)),
                                    self.host.steal_pct
                                ),
                            },
                        });
                    }
                    if let Output::Json(w) = out {
                        w.host_steal(&self.clock, "steal", prev, &s);
                    }
                }
                self.host.steal_last = Some(s);
            }
        }
    }

    fn on_clock_step(
        &mut self,
        step: Step,
        ring: &mut RingBuf<aya::maps::MapData>,
        out: &mut Output,
    ) {
        self.clock = step.clock;
        // The stepping syscall's record may already be in the ring buffer.
        self.drain_all(ring, out);
        let s = ClockStep {
            ts_mono_ns: step.ts_mono_ns,
            step_ns: step.step_ns,
            offset_before_ns: step.offset_before_ns,
        };
        if let Some(j) = self.host.steps.on_step(s) {
            self.emit_step(j, out);
        }
        let incidents = self.corr.on_clock_step(step.ts_mono_ns, step.step_ns);
        self.emit_incidents(incidents, out);
        if let Output::Json(w) = out {
            w.flush();
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

    fn on_harvest(&mut self) {
        let Some(harvester) = self.harvester.as_mut() else {
            return;
        };
        let table = &mut self.table;
        let h = harvester.collect(|pid, comm, s| table.apply_snapshot(pid, comm, s));
        self.kernel_drops = h.drops;
        self.apply_harvest(h);
        self.mem.refresh_disks();
    }

    /// Applies the rest of one read of kernel aggregates (the snapshots were applied as they
    /// were read): memory totals, metrics, retirements.
    fn apply_harvest(&mut self, h: crate::source::harvest::Harvest) {
        self.mem.on_harvest(&h, &mut self.table);
        if let Some(mut m) = self.metrics() {
            let now = WallClock::mono_now();
            for pid in &h.procs {
                let Some(e) = self.table.get(*pid) else {
                    continue;
                };
                if m.unchanged(*pid, e.growth_marker()) {
                    continue;
                }
                let stats = std::array::from_fn(|i| e.stat(i));
                m.on_process(
                    *pid,
                    &e.comm,
                    &stats,
                    &e.mem().blocked,
                    || crate::model::metrics::cgroup_of(*pid),
                    now,
                );
            }
            m.prune(|pid| self.table.get(pid).is_some(), now);
        }
        for pid in h.retired {
            self.table.retire(pid);
        }
    }

    /// Summaries of processes whose pid a new process has taken over, written now: the table
    /// no longer holds them.
    fn report_departed(&mut self, out: &mut Output) {
        let gone = self.table.take_departed();
        if let Output::Json(w) = out {
            let now = WallClock::mono_now();
            let observed = now.saturating_sub(self.started_mono_ns);
            for p in &gone {
                w.summary(&self.clock, now, p, None, observed, self.advise_target);
            }
        }
    }

    /// A notice when the kernel lost records since the last one (at most one per 10 s).
    fn notice_drops(&mut self, out: &mut Output) {
        let Some(new) = self
            .drop_watch
            .due(WallClock::mono_now(), &self.kernel_drops)
        else {
            return;
        };
        // The live view shows drops in its header; this is for NDJSON readers.
        if let Output::Json(w) = out {
            let msg = new.message();
            let by: serde_json::Map<String, serde_json::Value> = new
                .by_cause
                .iter()
                .map(|(c, n)| (c.to_string(), json!(n)))
                .collect();
            w.notice(
                &self.clock,
                "warn",
                "kernel_drops",
                &msg,
                json!({ "new": by }),
            );
        }
    }

    /// Host-wide gauges for the metrics endpoint, once a second.
    fn update_gauges(&self, probes: &Probes, out: &Output) {
        let Some(mut m) = self.metrics() else {
            return;
        };
        let (dropped, failed) = match out {
            Output::Json(w) => (w.dropped_lines(), w.failed_lines()),
            _ => (0, 0),
        };
        let me = procfs::process::Process::myself()
            .and_then(|p| p.stat())
            .ok();
        let tick_ns = 1_000_000_000 / procfs::ticks_per_second().max(1);
        let page = procfs::page_size();
        m.host = crate::model::metrics::HostGauges {
            steal_ratio: self.host.steal_pct / 100.0,
            clock_uncertainty_ns: self.clock.err_ns,
            clock_synchronized: !self.clock.unsynced,
            clock_slew_offset_ns: self.clock.sync.pll_offset_ns,
            kernel_drops: self.kernel_drops,
            decode_errors: self.decode_errors,
            output_lines_dropped: dropped,
            output_lines_failed: failed,
            processes: self.table.len(),
            costs: if probes.stats_seen {
                probes.costs()
            } else {
                Vec::new()
            },
            agent_cpu_ns: me.as_ref().map_or(0, |s| (s.utime + s.stime) * tick_ns),
            agent_rss_bytes: me.as_ref().map_or(0, |s| s.rss * page),
            syscall_hooks: probes
                .syscall_hooks
                .as_ref()
                .map_or("none", |(mode, _)| *mode),
            disks: self
                .mem
                .disks
                .iter()
                .flat_map(|d| {
                    d.ops()
                        .iter()
                        .map(|(op, o)| crate::model::metrics::DiskSeries {
                            dev: crate::model::memory::dev_name(d.dev),
                            device: d.name.clone().unwrap_or_default(),
                            op: op.name(),
                            latency: o.latency.clone(),
                            bytes: o.bytes,
                        })
                })
                .collect(),
        };
    }
}

/// The end report, named after what was watched.
fn report_text(st: &AgentState, costs: &[crate::probe::cost::ProgramCost], pids: &[u32]) -> String {
    let mut r = tui::report::from_agent(st, costs);
    r.pic.header.source = if pids.is_empty() {
        "whole host".to_string()
    } else {
        let p: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("pid {} and its children", p.join(", "))
    };
    tui::report::text(&r)
}

/// Whether the process that had `pid` and started at `start` (None: it was already gone)
/// still runs: not exited, not a zombie waiting to be reaped, its pid not reused. One read.
fn still_running(pid: u32, start: Option<u64>) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| Some(s.starttime) == start && s.state != 'Z' && s.state != 'X')
}

/// A process's start time in clock ticks after boot (None: it is gone).
fn start_time(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

/// Opens the lease socket; a default path another pausewatch already serves is a notice.
fn open_lease_socket(
    s: &LeaseSocketSettings,
    notices: &mut Vec<String>,
) -> anyhow::Result<Option<LeaseSocket>> {
    match lease_socket::bind(&s.path, s.mode, s.gid) {
        Ok(sock) => Ok(Some(sock)),
        Err(e @ lease_socket::BindError::InUse { .. }) if !s.explicit => {
            notices.push(format!("no lease socket: {e}"));
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

pub async fn run(
    mut probes: Probes,
    settings: Settings,
    mut out: Output,
    mut child: Option<tokio::process::Child>,
) -> anyhow::Result<Ended> {
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
    let harvester = Harvester::new(&mut probes.ebpf)?;
    let mut notices = probes.notices.clone();
    let disk_map = match probes
        .ebpf
        .take_map("DISK_LATENCY")
        .map(aya::maps::HashMap::try_from)
    {
        Some(Ok(m)) => Some(m),
        _ => {
            notices.push("disk latency is not read: map DISK_LATENCY unavailable".into());
            None
        }
    };
    let stacks = match Stacks::new(&mut probes.ebpf) {
        Ok(s) => {
            if let Some(why) = s.unavailable() {
                notices.push(format!(
                    "kernel stacks of blocked threads are not named: {why}"
                ));
            }
            Some(s)
        }
        Err(e) => {
            notices.push(format!(
                "kernel stacks of blocked threads are not named: {e:#}"
            ));
            None
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let deadline = settings.duration.map(|d| Instant::now() + d);
    // While the hooks off the syscall path are in use: file systems mounted since that they
    // cannot see. Those hooks are chosen only when the mounts at start-up have no such file
    // system, so the watch starts with nothing named and needs no reading of its own now.
    let mut mount_watch = probes
        .syscall_hooks
        .as_ref()
        .filter(|(mode, _)| *mode == "off_syscall_path")
        .map(|_| MountWatch::default());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let stats_sampler = StatsSampler {
        first: 10,
        every: settings.stats_every_s,
    };
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The kernel programs wake the agent only when a quarter of the ring buffer is unread
    // (wakeups cost an IPI each in the traced context); everything else is collected here.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut draw = tokio::time::interval(Duration::from_millis(250));
    draw.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (key_tx, mut keys) = mpsc::channel(16);
    if let Output::Live(_) = &out {
        tui::spawn_input(key_tx);
    }
    let watched: Vec<(u32, Option<u64>)> =
        settings.pids.iter().map(|&p| (p, start_time(p))).collect();
    let mut ended = Ended::default();

    let mut lease_sock = match &settings.lease_socket {
        Some(s) => open_lease_socket(s, &mut notices)?,
        None => None,
    };
    let mut clock_steps = match ClockSteps::new(WallClock::sample()) {
        Ok(c) => Some(c),
        Err(e) => {
            notices.push(format!(
                "clock steps are not watched: timerfd on CLOCK_REALTIME failed: {e}"
            ));
            None
        }
    };
    let host_threshold_ns = (settings.min_pause.as_nanos() as u64).max(MIN_HOST_PAUSE_NS);
    let period_ns = settings.control_period.as_nanos() as u64;
    let started = (period_ns > 0).then(|| ControlSleeper::start(host_threshold_ns, period_ns));
    let mut control = match started {
        None => {
            notices.push(
                "host-wide pauses (VM freezes, suspend) are not detected: --control-period 0s"
                    .into(),
            );
            None
        }
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            notices.push(format!(
                "host-wide pauses (VM freezes, suspend) are not detected: the control sleeper could not start: {e}"
            ));
            None
        }
    };
    let hz = crate::source::kernel_hz::read();
    if hz.is_none() {
        notices.push(
            "the kernel's HZ could not be read from /proc/timer_list: retransmission timeouts are not reported"
                .into(),
        );
    }
    let mut corr = Correlator::new(
        Timeline::DEFAULT_CAPACITY,
        crate::model::lease::LeaseBook::DEFAULT_MAX,
        settings.lease_risk_share,
    );
    for l in &settings.leases {
        corr.leases.declare(
            &l.name,
            l.pid,
            l.ttl.as_nanos() as u64,
            l.renew_every.as_nanos() as u64,
            WallClock::mono_now(),
        );
    }
    let mut st = AgentState {
        table: ProcessTable::new(settings.max_processes),
        next_episode_id: 0,
        decode_errors: 0,
        kernel_drops: [0; NUM_DROP_CAUSES],
        drop_watch: Default::default(),
        harvester: Some(harvester),
        clock: WallClock::sample(),
        recent: Default::default(),
        recent_stops: Default::default(),
        stops: Default::default(),
        recent_gc: Default::default(),
        runtimes: RuntimeWatcher::default(),
        mechanism: probes.sched_mechanism,
        notices: notices.clone(),
        corr,
        recent_incidents: Default::default(),
        stop_senders: Default::default(),
        lease_errors: 0,
        holder_start: Default::default(),
        started_mono_ns: WallClock::mono_now(),
        advise_target: settings.advise_target,
        host: HostState::new(
            settings.max_processes,
            hz,
            host_threshold_ns,
            StealSample::read(WallClock::mono_now()).ok(),
        ),
        mem: MemState::new(stacks, disk_map),
        metrics: None,
    };
    if let Some(addr) = settings.prometheus {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Metrics::new(
            settings.prometheus_max_series,
            !settings.pids.is_empty(),
        )));
        let local = crate::export::prometheus::start(addr, shared.clone()).await?;
        st.metrics = Some(shared);
        st.update_gauges(&probes, &out);
        if let Output::Json(w) = &mut out {
            w.notice(
                &st.clock,
                "info",
                "prometheus",
                &format!("metrics served at http://{local}/metrics"),
                json!({ "addr": local.to_string() }),
            );
        }
    }
    for l in &settings.leases {
        if let Some(t) = start_time(l.pid) {
            st.holder_start.insert(l.pid, t);
        }
    }

    // Start-up is over: programs attached, tracefs, BPF statistics, /proc/kallsyms, the lease
    // socket and /proc/timer_list done. Keep only what the running agent needs.
    let dropped = crate::probe::privileges::drop_after_start();
    if let Err(e) = &dropped {
        let n = format!("capabilities could not be dropped after start-up: {e}");
        notices.push(n.clone());
        st.notices.push(n);
    }
    if let Output::Json(w) = &mut out {
        for n in &notices {
            w.notice(&st.clock, "warn", "degraded", n, json!({}));
        }
        if let Ok(d) = &dropped {
            w.notice(
                &st.clock,
                "info",
                "privileges",
                &format!(
                    "after start-up kept {} and dropped {} other capabilities{}",
                    d.kept.join(", "),
                    d.dropped.len(),
                    if d.bounding {
                        " (also from the bounding set)"
                    } else {
                        ""
                    }
                ),
                json!({ "kept": d.kept, "dropped": d.dropped, "bounding": d.bounding }),
            );
        }
        for n in &probes.infos {
            w.notice(&st.clock, "info", "host_changed", n, json!({}));
        }
        if let Some((mode, why)) = &probes.syscall_hooks {
            w.notice(
                &st.clock,
                "info",
                "syscall_hooks",
                why,
                json!({ "mode": mode }),
            );
        }
        w.clock_sync(&st.clock);
        let pids = &settings.pids;
        w.notice(
            &st.clock,
            "info",
            "attached",
            &format!(
                "scheduler programs attached via {}, run-queue waits from {}",
                probes.sched_mechanism, probes.runq_source
            ),
            json!({ "mechanism": probes.sched_mechanism, "runq_source": probes.runq_source, "switch_in_entries": probes.switch_in_entries, "pids": pids, "min_pause_ns": settings.min_pause.as_nanos() as u64 }),
        );
        if let Some(sock) = &lease_sock {
            w.notice(
                &st.clock,
                "info",
                "lease_socket",
                &format!("lease reports accepted on {}", sock.path.display()),
                json!({ "path": sock.path }),
            );
        }
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
                let got = st.drain_all(ring.get_mut(), &mut out);
                let mut incidents = st.corr.due(WallClock::mono_now());
                incidents.extend(st.live_expiries(WallClock::mono_now()));
                let any = got || !incidents.is_empty() || !st.host.steps.due_is_empty();
                st.release_steps(Some(WallClock::mono_now()), &mut out);
                st.emit_incidents(incidents, &mut out);
                if any && let Output::Json(w) = &mut out {
                    w.flush();
                }
            }
            Some(msg) = async {
                match &mut lease_sock {
                    Some(s) => s.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                st.on_lease_message(msg, ring.get_mut(), &mut out);
            }
            step = async {
                match &mut clock_steps {
                    Some(c) => c.next().await,
                    None => std::future::pending().await,
                }
            } => {
                match step {
                    Ok(step) => st.on_clock_step(step, ring.get_mut(), &mut out),
                    Err(e) => {
                        clock_steps = None;
                        st.notice(
                            Notice {
                                level: "warn",
                                event: "clock_steps",
                                message: format!("clock steps are no longer watched: {e}"),
                                pid: None,
                                path: None,
                            },
                            &mut out,
                        );
                    }
                }
            }
            Some(ev) = crate::source::host::next(&mut control) => {
                st.on_host_event(ev, &mut out);
            }
            _ = tick.tick() => {
                st.host.local_lines_left = LOCAL_HOST_PAUSE_LINES_PER_S;
                let sync_before = st.clock.sync.headline();
                st.clock = WallClock::sample();
                if st.clock.sync.headline() != sync_before && let Output::Json(w) = &mut out {
                    w.clock_sync(&st.clock);
                }
                if let Some(c) = &mut clock_steps {
                    c.resample(st.clock);
                }
                st.on_harvest();
                st.report_departed(&mut out);
                st.notice_drops(&mut out);
                st.update_gauges(&probes, &out);
                if settings.end_when_gone
                    && child.is_none()
                    && !watched.is_empty()
                    && !watched.iter().any(|&(p, t)| still_running(p, t))
                {
                    let pids: Vec<String> = watched.iter().map(|(p, _)| p.to_string()).collect();
                    st.investigation_ended(format!("pid {} exited", pids.join(", ")), &settings.pids, &mut out);
                    break;
                }
                st.release_stops(Some(WallClock::mono_now()), &mut out);
                st.check_holders();
                st.runtimes.prune();
                if let Output::Json(w) = &mut out {
                    w.note_write_recovery(&st.clock);
                    w.flush();
                }
                ticks += 1;
                if probes.stats_mode == StatsMode::Sampled
                    && let Some(on) = stats_sampler.at(ticks)
                    && let Err(e) = probes.set_stats(on)
                {
                    probes.stats_mode = StatsMode::Off;
                    st.notice(
                        Notice {
                            level: "warn",
                            event: "bpf_stats",
                            message: format!("pausewatch's own BPF cost is not sampled: {e:#}"),
                            pid: None,
                            path: None,
                        },
                        &mut out,
                    );
                }
                if ticks.is_multiple_of(TRIM_EVERY_TICKS) {
                    return_freed_memory();
                }
                if let Some(w) = &mut mount_watch
                    && ticks.is_multiple_of(MountWatch::EVERY_TICKS)
                    && let Ok(mounts) = host_mounts()
                {
                    for m in w.new_blind_spots(mounts) {
                        st.notice(
                            Notice {
                                level: "warn",
                                event: "degraded",
                                message: late_mount_message(&m),
                                pid: None,
                                path: Some(m.mount_point.display().to_string()),
                            },
                            &mut out,
                        );
                    }
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
            Some(ev) = keys.recv() => {
                if let Output::Live(live) = &mut out
                    && live.on_event(ev) == tui::KeyOutcome::Quit
                {
                    break;
                }
            }
            status = async {
                match &mut child {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                ended.child_status = status.ok();
                child = None;
                let how = ended.child_status.map_or("status unknown".to_string(), |s| s.to_string());
                st.investigation_ended(format!("the command exited ({how})"), &settings.pids, &mut out);
                break;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break,
        }
    }

    // `run` ended before its command (q, --duration, a signal): the command is ended too,
    // politely first, while the programs still see it.
    if let Some(mut c) = child.take() {
        if let Some(pid) = c.id() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        ended.child_status = match tokio::time::timeout(Duration::from_secs(2), c.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                let _ = c.kill().await;
                c.wait().await.ok()
            }
        };
    }

    // Final drain and harvest while the programs are still attached: nothing written before
    // this point is lost.
    st.drain_all(ring.get_mut(), &mut out);
    st.clock = WallClock::sample();
    st.on_harvest();
    st.report_departed(&mut out);
    let steal_clock = st
        .harvester
        .as_ref()
        .map(|h| h.steal_clock())
        .unwrap_or_default();
    st.release_stops(None, &mut out);
    st.release_steps(None, &mut out);
    let host_events_dropped = control.as_ref().map_or(0, |c| {
        c.stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
    });
    drop(control);
    let incidents = st.corr.flush_all();
    st.emit_incidents(incidents, &mut out);
    let lease_counters = crate::export::ndjson::LeaseCounters {
        errors: st.lease_errors,
        connections: lease_sock.as_ref().map_or(0, |s| {
            s.stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
        }),
        refused_connections: lease_sock.as_ref().map_or(0, |s| {
            s.stats
                .refused_connections
                .load(std::sync::atomic::Ordering::Relaxed)
        }),
    };
    // Stop accepting lease reports (and remove the socket file) before reporting.
    drop(lease_sock);
    let _ = probes.set_stats(false);
    let costs = probes.costs();
    let (stats_mode, stats_on_ns) = (probes.stats_mode, probes.stats_on_ns());
    let stats_enabled = probes.stats_seen;
    drop(ring);
    drop(st.harvester.take());
    // Detach everything and turn BPF statistics off (if we turned them on) before reporting.
    drop(probes);

    match out {
        Output::Json(mut w) => {
            let now = WallClock::mono_now();
            let observed = now.saturating_sub(st.started_mono_ns);
            for p in st.table.sorted() {
                w.summary(
                    &st.clock,
                    now,
                    p,
                    st.host.net.of(p.pid),
                    observed,
                    st.advise_target,
                );
            }
            w.drops(
                &st.clock,
                &crate::export::ndjson::Drops {
                    kernel: &st.kernel_drops,
                    decode_errors: st.decode_errors,
                    evicted_processes: st.table.evicted,
                    runtime_checks_skipped: st.runtimes.checks_skipped,
                    host_events_dropped,
                    unnamed_stacks: st.mem.unnamed_stacks,
                },
            );
            if let Some(why) = st.mem.stacks.as_ref().and_then(|s| s.unavailable()) {
                w.notice(&st.clock, "warn", "stacks_unnamed", why, json!({}));
            }
            w.lease_summary(&st.clock, &st.corr, &lease_counters);
            w.net_summary(&st.clock, &st.host.net);
            w.disk_summary(&st.clock, &st.mem.disks);
            w.clock_sync(&st.clock);
            if let (Some(first), Ok(last)) = (&st.host.steal_first, StealSample::read(now)) {
                w.host_steal(&st.clock, "run", first, &last);
                w.late_wakes(
                    &st.clock,
                    &st.host.host_verdicts,
                    st.host.local_lines_suppressed,
                );
            }
            if steal_clock.iter().any(|c| c.last_ns > 0) {
                let charged = st
                    .table
                    .iter()
                    .map(|p| p.stat(observer_common::STAT_STEAL).total_ns)
                    .sum();
                w.steal_attribution(&st.clock, &steal_clock, charged);
            }
            w.self_cost(
                &st.clock,
                &costs,
                st.mechanism,
                stats_enabled,
                stats_mode.name(),
                stats_on_ns,
            );
            w.flush();
        }
        Output::Live(live) => {
            live.finish();
            print!("{}", report_text(&st, &costs, &settings.pids));
        }
        Output::Report => eprint!("{}", report_text(&st, &costs, &settings.pids)),
        Output::Advise(pids) => {
            let observed = WallClock::mono_now().saturating_sub(st.started_mono_ns);
            for pid in pids {
                match st.table.sorted().into_iter().find(|p| p.pid == pid) {
                    Some(p) => println!(
                        "{}",
                        tui::report::advice(
                            p.pid,
                            &p.comm,
                            &p.pauses(),
                            observed,
                            st.advise_target
                        )
                    ),
                    None => println!(
                        "pid {pid}: no pauses observed in {}: nothing to estimate from",
                        crate::model::units::fmt_ns(observed)
                    ),
                }
            }
        }
    }
    Ok(ended)
}
