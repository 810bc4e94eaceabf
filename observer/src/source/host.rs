//! Host-wide signals that no tracepoint gives: hypervisor steal time per CPU, and a control
//! sleeper that measures how late it wakes (the jHiccup idea, done by the agent itself), so a
//! frozen or migrating VM shows up even when nothing in the guest kernel ran to record it.
//!
//! One dedicated thread ("pw-control") sleeps on absolute CLOCK_MONOTONIC deadlines
//! (`--control-period`, 10 ms by default) with 1 ns timer slack. At every wake it reads its own run-queue delay from
//! /proc/thread-self/schedstat (the kernel's run_delay, the same clock schedstat users trust)
//! and CLOCK_BOOTTIME − CLOCK_MONOTONIC (which grows only while the machine is suspended). Every
//! `STEAL_EVERY` it samples per-CPU steal from /proc/stat. A late wake is handed to the agent
//! with what the kernel can explain of it; `model::hiccup` splits and judges it.
use std::{
    os::unix::fs::FileExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::mpsc;

use crate::model::hiccup::Wake;

/// How often per-CPU steal is sampled. Reading /proc/stat costs about 0.65 ms of CPU on our
/// 2-vCPU VMs (the kernel sums every interrupt counter to write it), so not more often; a late
/// wake reads it again at once.
const STEAL_EVERY_NS: u64 = 500_000_000;
/// How often steal is checked for the agent (host steal % over time).
const REPORT_EVERY_NS: u64 = 1_000_000_000;
/// Unchanged steal is still reported this often.
const QUIET_REPORT_NS: u64 = 10_000_000_000;

/// Per-CPU steal counters at one moment, in ns since boot (/proc/stat counts USER_HZ ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StealSample {
    pub ts_mono_ns: u64,
    pub per_cpu_ns: Vec<u64>,
}

impl StealSample {
    pub fn total_ns(&self) -> u64 {
        self.per_cpu_ns.iter().sum()
    }

    pub fn read(ts_mono_ns: u64) -> std::io::Result<Self> {
        use procfs::CurrentSI as _;
        let ks = procfs::KernelStats::current().map_err(std::io::Error::other)?;
        let ns_per_tick = 1_000_000_000 / procfs::ticks_per_second().max(1);
        Ok(Self {
            ts_mono_ns,
            per_cpu_ns: ks
                .cpu_time
                .iter()
                .map(|c| c.steal.unwrap_or(0).saturating_mul(ns_per_tick))
                .collect(),
        })
    }

    /// Steal of all CPUs between `earlier` and this sample, as a share of their time (%).
    pub fn pct_since(&self, earlier: &StealSample) -> f64 {
        let interval = self.ts_mono_ns.saturating_sub(earlier.ts_mono_ns);
        if interval == 0 {
            return 0.0;
        }
        let steal = self.total_ns().saturating_sub(earlier.total_ns());
        100.0 * steal as f64 / (interval as f64 * self.per_cpu_ns.len().max(1) as f64)
    }

    /// Steal of `cpu` between `earlier` and this sample.
    pub fn cpu_delta(&self, earlier: &StealSample, cpu: usize) -> u64 {
        match (self.per_cpu_ns.get(cpu), earlier.per_cpu_ns.get(cpu)) {
            (Some(a), Some(b)) => a.saturating_sub(*b),
            _ => 0,
        }
    }
}

/// What the control thread hands the agent.
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// A wake later than the threshold, or a suspend.
    LateWake(Wake),
    /// Per-CPU steal counters (about once a second).
    Steal(StealSample),
}

/// Events dropped because the agent lagged (shown in the `drops` line).
#[derive(Debug, Default)]
pub struct ControlStats {
    pub dropped: AtomicU64,
}

/// The running control thread; dropping it stops the thread.
pub struct ControlSleeper {
    pub rx: mpsc::Receiver<HostEvent>,
    pub stats: Arc<ControlStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlSleeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME are never negative.
fn now(clock: libc::clockid_t) -> u64 {
    super::clock::now(clock) as u64
}

/// Sleeps until an absolute CLOCK_MONOTONIC time (restarted on EINTR).
fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: valid timespec; absolute sleep on CLOCK_MONOTONIC.
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if r != libc::EINTR {
            return;
        }
    }
}

/// This thread's cumulative run-queue delay (second field of schedstat), ns.
fn run_delay(f: &std::fs::File, buf: &mut [u8; 96]) -> Option<u64> {
    let n = f.read_at(buf, 0).ok()?;
    let s = std::str::from_utf8(&buf[..n]).ok()?;
    s.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn current_cpu() -> u32 {
    // SAFETY: no arguments; returns -1 on failure.
    let c = unsafe { libc::sched_getcpu() };
    c.max(0) as u32
}

impl ControlSleeper {
    /// Starts the control thread. `threshold_ns`: wakes at least this late are reported.
    /// `period_ns`: how often it wakes.
    pub fn start(threshold_ns: u64, period_ns: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(256);
        let stats = Arc::new(ControlStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Read here so a kernel without schedstat or /proc/stat fails start-up with a clear
        // error (the thread opens its own: /proc/thread-self is per thread).
        std::fs::read_to_string("/proc/thread-self/schedstat")?;
        StealSample::read(0)?;
        let (stats2, stop2) = (stats.clone(), stop.clone());
        let thread = crate::probe::privileges::spawn_reduced(
            std::thread::Builder::new().name("pw-control".into()),
            caps::CapsHashSet::new(),
            move || control_loop(threshold_ns, period_ns, tx, &stats2, &stop2),
        )?;
        Ok(Self {
            rx,
            stats,
            stop,
            thread: Some(thread),
        })
    }
}

fn control_loop(
    threshold_ns: u64,
    period_ns: u64,
    tx: mpsc::Sender<HostEvent>,
    stats: &ControlStats,
    stop: &AtomicBool,
) {
    // SAFETY: prctl with an integer argument: the smallest timer slack (1 ns) for this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    // /proc/thread-self resolves to the opening thread: this one.
    let Ok(schedstat) = std::fs::File::open("/proc/thread-self/schedstat") else {
        return;
    };
    let mut buf = [0u8; 96];
    let send = |ev: HostEvent| {
        if tx.try_send(ev).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut deadline = now(libc::CLOCK_MONOTONIC);
    let mut delay_before = run_delay(&schedstat, &mut buf).unwrap_or(0);
    let mut suspend_before = now(libc::CLOCK_BOOTTIME).saturating_sub(deadline);
    let mut steal_prev = StealSample::read(deadline).ok();
    let mut steal_last = steal_prev.clone();
    let mut next_report = deadline + REPORT_EVERY_NS;
    let mut cpu_before = current_cpu();
    while !stop.load(Ordering::Relaxed) {
        deadline += period_ns;
        sleep_until(deadline);
        let woke = now(libc::CLOCK_MONOTONIC);
        let suspend = now(libc::CLOCK_BOOTTIME).saturating_sub(woke);
        let delay = run_delay(&schedstat, &mut buf).unwrap_or(delay_before);
        let cpu = current_cpu();
        let lateness = woke.saturating_sub(deadline);
        let suspended = suspend.saturating_sub(suspend_before);
        if lateness >= threshold_ns || suspended >= threshold_ns {
            // Steal over a window that contains the late interval: from the last sample (at
            // most STEAL_EVERY + lateness ago) to now, on the CPUs the sleeper left and woke on.
            let steal_now = StealSample::read(woke).ok();
            let steal_ns = match (&steal_now, &steal_last) {
                (Some(n), Some(l)) => n
                    .cpu_delta(l, cpu as usize)
                    .max(n.cpu_delta(l, cpu_before as usize)),
                _ => 0,
            };
            send(HostEvent::LateWake(Wake {
                woke_mono_ns: woke,
                lateness_ns: lateness,
                runq_ns: delay.saturating_sub(delay_before),
                steal_ns,
                suspended_ns: suspended,
                cpu,
            }));
            if let Some(s) = steal_now {
                steal_last = Some(s);
            }
        } else if steal_last
            .as_ref()
            .is_none_or(|s| woke >= s.ts_mono_ns + STEAL_EVERY_NS)
        {
            steal_last = StealSample::read(woke).ok();
        }
        if woke >= next_report {
            next_report = woke + REPORT_EVERY_NS;
            // Steal that did not move is not news; a line at least every 10 s says so.
            if let (Some(s), Some(p)) = (&steal_last, &steal_prev)
                && (s.per_cpu_ns != p.per_cpu_ns || s.ts_mono_ns >= p.ts_mono_ns + QUIET_REPORT_NS)
            {
                send(HostEvent::Steal(s.clone()));
                steal_prev = Some(s.clone());
            }
        }
        // A wake so late that several periods passed resumes the schedule from now, so one
        // freeze is one late wake, not a burst of them.
        if woke > deadline + period_ns {
            deadline = woke;
        }
        delay_before = delay;
        suspend_before = suspend;
        cpu_before = cpu;
    }
}

/// Waits for the next host event (pending forever once the thread has gone).
pub async fn next(s: &mut Option<ControlSleeper>) -> Option<HostEvent> {
    match s {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}
