//! What the Prometheus endpoint exposes, accumulated as monotonic counters with bounded labels.
//!
//! Per-process kernel aggregates are cumulative and robust to eviction in the process table;
//! this turns them into per-series counters by adding each process's growth since the last
//! harvest to the series of its current command name and cgroup. Series are bounded: the first
//! `max_series` (command, cgroup) pairs that pause get their own series, a pair that has not
//! grown for `IDLE_RETIRE_NS` gives its place up (its series leaves the exposition), and every
//! other pair is added to one `other` series. Counters of a series never go backwards, and the
//! `other` series only ever grows, so `rate()` is right across admissions and retirements.
use std::collections::{BTreeMap, HashMap};

use observer_common::{
    BlockReason, Component, NUM_BLOCK_REASONS, NUM_DROP_CAUSES, NUM_STATS, STAT_EPISODE, STAT_STEAL,
};

use super::{
    correlate::Incident, gc::GcPause, hiccup::HostPause, memory::Stall, net::Retransmit,
    stats::Aggregate,
};
use crate::probe::cost::ProgramCost;

/// A labelled series not grown for this long gives its place to another pair.
pub const IDLE_RETIRE_NS: u64 = 10 * 60 * 1_000_000_000;

/// The label value of the bucket every unadmitted pair is added to.
pub const OTHER: &str = "other";

/// Labels of a per-process series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub comm: String,
    pub cgroup: String,
    /// Only in `--pid` investigations.
    pub pid: Option<u32>,
}

impl SeriesKey {
    fn other() -> Self {
        Self {
            comm: OTHER.into(),
            cgroup: OTHER.into(),
            pid: None,
        }
    }
}

/// Everything counted for one series.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Thread phases by component (`Component` index), and runtime stop-the-worlds.
    pub phases: [Aggregate; 3],
    pub gc: Aggregate,
    /// Whole thread episodes.
    pub episodes: Aggregate,
    /// Hypervisor steal charged to the running threads (an estimate; `STAT_STEAL`).
    pub steal: Aggregate,
    /// Blocked time by `BlockReason`.
    pub blocked_ns: [u64; NUM_BLOCK_REASONS],
    /// Retransmissions by mode name, and the delay they are estimated to have added.
    pub retransmits: BTreeMap<&'static str, u64>,
    pub retransmit_delay_ns: u64,
    pub incidents: BTreeMap<&'static str, u64>,
    /// Last time the series grew.
    last_growth_ns: u64,
}

/// What was last seen of one process, to count only its growth.
#[derive(Debug, Clone, Default)]
struct Seen {
    stats: [Aggregate; NUM_STATS],
    blocked: [Stall; NUM_BLOCK_REASONS],
    cgroup: String,
    comm: String,
}

/// Host-wide values, replaced on every tick.
#[derive(Debug, Clone, Default)]
pub struct HostGauges {
    pub steal_ratio: f64,
    pub clock_uncertainty_ns: u64,
    pub clock_synchronized: bool,
    /// Offset the kernel's clock discipline is still slewing away.
    pub clock_slew_offset_ns: i64,
    pub kernel_drops: [u64; NUM_DROP_CAUSES],
    pub decode_errors: u64,
    pub output_lines_dropped: u64,
    pub output_lines_failed: u64,
    pub processes: usize,
    pub costs: Vec<ProgramCost>,
    pub agent_cpu_ns: u64,
    pub agent_rss_bytes: u64,
    /// How fsync-family calls and clock changes are seen (`Probes::syscall_hooks`' mode, or
    /// "none"); empty before the first tick.
    pub syscall_hooks: &'static str,
    /// Every disk's requests per operation, cumulative (bounded by the kernel's map: 256
    /// disks of four operations).
    pub disks: Vec<DiskSeries>,
}

/// One disk's requests of one operation, cumulative.
#[derive(Debug, Clone, Default)]
pub struct DiskSeries {
    /// "major:minor".
    pub dev: String,
    /// The device's name ("vda"), empty when unknown.
    pub device: String,
    /// `DiskOp::name`.
    pub op: &'static str,
    pub latency: Aggregate,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Metrics {
    max_series: usize,
    per_pid: bool,
    pub series: BTreeMap<SeriesKey, Series>,
    seen: HashMap<u32, Seen>,
    /// Processes whose growth went to the `other` series at least once.
    pub folded_processes: u64,
    pub clock_steps: u64,
    pub clock_step_abs_ns: u64,
    pub host_pauses: BTreeMap<&'static str, u64>,
    pub host_pause_ns: BTreeMap<&'static str, u64>,
    pub host: HostGauges,
}

impl Metrics {
    /// `per_pid`: label series by pid too (`--pid` investigations only).
    pub fn new(max_series: usize, per_pid: bool) -> Self {
        Self {
            max_series: max_series.max(1),
            per_pid,
            series: BTreeMap::new(),
            seen: HashMap::new(),
            folded_processes: 0,
            clock_steps: 0,
            clock_step_abs_ns: 0,
            host_pauses: BTreeMap::new(),
            host_pause_ns: BTreeMap::new(),
            host: HostGauges::default(),
        }
    }

    /// The series a process's growth goes to now, admitting its pair if there is room.
    fn series_for(&mut self, pid: u32, comm: &str, cgroup: &str, now_ns: u64) -> &mut Series {
        let key = SeriesKey {
            comm: comm.to_string(),
            cgroup: cgroup.to_string(),
            pid: self.per_pid.then_some(pid),
        };
        let labelled =
            self.series.len() - usize::from(self.series.contains_key(&SeriesKey::other()));
        let key = if self.series.contains_key(&key) || labelled < self.max_series {
            key
        } else {
            self.folded_processes += 1;
            SeriesKey::other()
        };
        let s = self.series.entry(key).or_default();
        s.last_growth_ns = now_ns;
        s
    }

    /// Whether `pid`'s (episodes + steal samples, blocked ns) are what was last counted
    /// (`ProcessEntry::growth_marker`): then `on_process` would add nothing.
    pub fn unchanged(&self, pid: u32, (samples, blocked_ns): (u64, u64)) -> bool {
        self.seen.get(&pid).is_some_and(|s| {
            s.stats[STAT_EPISODE].count + s.stats[STAT_STEAL].count == samples
                && s.blocked.iter().map(|b| b.total_ns).sum::<u64>() == blocked_ns
        })
    }

    /// Adds what process `pid` paused since it was last seen. `stats` are its cumulative
    /// aggregates (`ProcessEntry::stat`), `blocked` its cumulative blocked time by reason;
    /// `cgroup` is read only for processes not seen before (or renamed by exec).
    pub fn on_process(
        &mut self,
        pid: u32,
        comm: &str,
        stats: &[Aggregate; NUM_STATS],
        blocked: &[Stall; NUM_BLOCK_REASONS],
        cgroup: impl FnOnce() -> String,
        now_ns: u64,
    ) {
        let prev = self.seen.entry(pid).or_default();
        if prev.comm != comm || prev.cgroup.is_empty() {
            prev.cgroup = cgroup();
            prev.comm = comm.to_string();
        }
        let deltas: [Aggregate; NUM_STATS] =
            std::array::from_fn(|i| stats[i].since(&prev.stats[i]));
        let blocked_delta: [u64; NUM_BLOCK_REASONS] =
            std::array::from_fn(|i| blocked[i].total_ns.saturating_sub(prev.blocked[i].total_ns));
        prev.stats = stats.clone();
        prev.blocked = *blocked;
        let cg = prev.cgroup.clone();
        if deltas.iter().all(|d| d.count == 0) && blocked_delta.iter().all(|&b| b == 0) {
            return;
        }
        let s = self.series_for(pid, comm, &cg, now_ns);
        for (i, d) in deltas.iter().enumerate() {
            match i {
                STAT_EPISODE => s.episodes.merge(d),
                STAT_STEAL => s.steal.merge(d),
                _ => s.phases[i].merge(d),
            }
        }
        for (b, d) in s.blocked_ns.iter_mut().zip(blocked_delta) {
            *b += d;
        }
    }

    fn cgroup_of(&self, pid: u32) -> String {
        self.seen
            .get(&pid)
            .map(|s| s.cgroup.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| cgroup_of(pid))
    }

    pub fn on_gc(&mut self, g: &GcPause, now_ns: u64) {
        let cg = self.cgroup_of(g.pid);
        self.series_for(g.pid, &g.comm, &cg, now_ns)
            .gc
            .record(g.duration_ns);
    }

    pub fn on_retransmit(&mut self, t: &Retransmit, now_ns: u64) {
        let pid = t.pid.unwrap_or(0);
        let (comm, cg) = match t.pid {
            Some(p) => (t.comm.as_str(), self.cgroup_of(p)),
            None => ("unknown", "unknown".to_string()),
        };
        let s = self.series_for(pid, comm, &cg, now_ns);
        *s.retransmits.entry(t.mode.name()).or_default() += u64::from(t.segs.max(1));
        s.retransmit_delay_ns += t.delay_est_ns.unwrap_or(0);
    }

    pub fn on_incident(&mut self, i: &Incident, now_ns: u64) {
        let cg = self.cgroup_of(i.pid);
        *self
            .series_for(i.pid, &i.comm, &cg, now_ns)
            .incidents
            .entry(i.kind.name())
            .or_default() += 1;
    }

    pub fn on_clock_step(&mut self, step_ns: i64) {
        self.clock_steps += 1;
        self.clock_step_abs_ns += step_ns.unsigned_abs();
    }

    pub fn on_host_pause(&mut self, h: &HostPause) {
        *self.host_pauses.entry(h.verdict.name()).or_default() += 1;
        *self.host_pause_ns.entry(h.verdict.name()).or_default() += h.duration_ns;
    }

    /// Forgets processes the table no longer holds and retires idle series.
    pub fn prune(&mut self, known: impl Fn(u32) -> bool, now_ns: u64) {
        self.seen.retain(|pid, _| known(*pid));
        let other = SeriesKey::other();
        self.series
            .retain(|k, s| *k == other || now_ns.saturating_sub(s.last_growth_ns) < IDLE_RETIRE_NS);
    }

    /// Names of the causes the `cause` label takes, in exposition order.
    pub fn causes() -> [&'static str; 4] {
        [
            Component::Runq.name(),
            Component::Blocked.name(),
            Component::Stopped.name(),
            "gc",
        ]
    }

    pub fn block_reason_names() -> impl Iterator<Item = &'static str> {
        BlockReason::ALL.iter().map(|r| r.name())
    }
}

/// The cgroup a process is accounted to, for the `cgroup` label: the unified (v2) path, else
/// the first of the memory, cpu, pids or systemd v1 hierarchies that is not the root, else `/`.
pub fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| pick_cgroup(&s))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn pick_cgroup(proc_cgroup: &str) -> String {
    let lines: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctl, path))
        })
        .collect();
    for want in ["", "memory", "cpu,cpuacct", "cpu", "pids", "name=systemd"] {
        if let Some((_, path)) = lines
            .iter()
            .find(|(ctl, p)| *p != "/" && (*ctl == want || ctl.split(',').any(|c| c == want)))
        {
            return path.to_string();
        }
    }
    "/".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(runq: &[u64]) -> [Aggregate; NUM_STATS] {
        let mut s: [Aggregate; NUM_STATS] = Default::default();
        for &v in runq {
            s[0].record(v);
            s[STAT_EPISODE].record(v);
        }
        s
    }

    fn none_blocked() -> [Stall; NUM_BLOCK_REASONS] {
        Default::default()
    }

    #[test]
    fn only_growth_is_counted() {
        let mut m = Metrics::new(10, false);
        m.on_process(
            1,
            "a",
            &stats(&[1_000_000]),
            &none_blocked(),
            || "/x".into(),
            0,
        );
        m.on_process(
            1,
            "a",
            &stats(&[1_000_000]),
            &none_blocked(),
            || "/x".into(),
            1,
        );
        m.on_process(
            1,
            "a",
            &stats(&[1_000_000, 2_000_000]),
            &none_blocked(),
            || "/x".into(),
            2,
        );
        assert!(m.unchanged(1, (2, 0)) && !m.unchanged(1, (3, 0)) && !m.unchanged(2, (0, 0)));
        let s = &m.series[&SeriesKey {
            comm: "a".into(),
            cgroup: "/x".into(),
            pid: None,
        }];
        assert_eq!((s.phases[0].count, s.phases[0].total_ns), (2, 3_000_000));
        assert_eq!(s.episodes.count, 2);
        assert_eq!(s.steal.count, 0);
    }

    #[test]
    fn steal_is_its_own_series_and_counts_as_growth() {
        let mut m = Metrics::new(10, false);
        let mut s = stats(&[4]);
        m.on_process(1, "busy", &s, &none_blocked(), || "/".into(), 0);
        assert!(m.unchanged(1, (1, 0)));
        // A busy thread that never waits: only its steal grows.
        s[STAT_STEAL].record(3_000_000);
        assert!(m.unchanged(1, (1, 0)), "not yet seen");
        m.on_process(1, "busy", &s, &none_blocked(), || "/".into(), 1);
        assert!(m.unchanged(1, (2, 0)), "episodes + steal samples");
        let series = m.series.values().next().unwrap();
        assert_eq!((series.steal.count, series.steal.total_ns), (1, 3_000_000));
        assert_eq!((series.episodes.count, series.phases[0].count), (1, 1));
    }

    #[test]
    fn processes_with_the_same_name_share_a_series() {
        let mut m = Metrics::new(10, false);
        m.on_process(1, "w", &stats(&[5]), &none_blocked(), || "/".into(), 0);
        m.on_process(2, "w", &stats(&[7, 9]), &none_blocked(), || "/".into(), 0);
        assert_eq!(m.series.len(), 1);
        assert_eq!(m.series.values().next().unwrap().phases[0].count, 3);
        let mut p = Metrics::new(10, true);
        p.on_process(1, "w", &stats(&[5]), &none_blocked(), || "/".into(), 0);
        p.on_process(2, "w", &stats(&[7]), &none_blocked(), || "/".into(), 0);
        assert_eq!(p.series.len(), 2, "per-pid labels in investigations");
    }

    #[test]
    fn series_beyond_the_cap_go_to_other_which_only_grows() {
        let mut m = Metrics::new(2, false);
        for pid in 1..=5u32 {
            m.on_process(
                pid,
                &format!("c{pid}"),
                &stats(&[10]),
                &none_blocked(),
                || "/".into(),
                0,
            );
        }
        assert_eq!(m.series.len(), 3);
        let other = &m.series[&SeriesKey::other()];
        assert_eq!(other.phases[0].count, 3);
        assert_eq!(m.folded_processes, 3);
        // c1 and c2 go idle and are retired; c3 then gets a series of its own from zero, while
        // `other` keeps what c3 had before.
        m.prune(|_| true, IDLE_RETIRE_NS + 1);
        assert_eq!(m.series.len(), 1);
        m.on_process(
            3,
            "c3",
            &stats(&[10, 20]),
            &none_blocked(),
            || "/".into(),
            IDLE_RETIRE_NS + 2,
        );
        let c3 = &m.series[&SeriesKey {
            comm: "c3".into(),
            cgroup: "/".into(),
            pid: None,
        }];
        assert_eq!(c3.phases[0].count, 1);
        assert_eq!(m.series[&SeriesKey::other()].phases[0].count, 3);
    }

    #[test]
    fn a_reused_pid_seen_before_is_not_counted_twice() {
        // The process table keeps a pid's totals cumulative across exit and reuse; only growth
        // is added, so the metric never double counts.
        let mut m = Metrics::new(4, false);
        m.on_process(9, "x", &stats(&[100]), &none_blocked(), || "/".into(), 0);
        m.on_process(
            9,
            "y",
            &stats(&[100, 200]),
            &none_blocked(),
            || "/".into(),
            1,
        );
        let total: u64 = m.series.values().map(|s| s.phases[0].count).sum();
        assert_eq!(total, 2);
    }

    #[test]
    fn blocked_time_is_split_by_reason() {
        let mut m = Metrics::new(4, false);
        let mut b = none_blocked();
        b[BlockReason::MajorFault as usize] = Stall {
            count: 1,
            total_ns: 5_000,
            max_ns: 5_000,
        };
        m.on_process(3, "f", &stats(&[]), &b, || "/".into(), 0);
        b[BlockReason::MajorFault as usize].total_ns = 12_000;
        m.on_process(3, "f", &stats(&[]), &b, || "/".into(), 1);
        let s = m.series.values().next().unwrap();
        assert_eq!(s.blocked_ns[BlockReason::MajorFault as usize], 12_000);
    }

    #[test]
    fn cgroup_prefers_v2_then_memory() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/75\n2:cpuacct:/\n0::/\n";
        assert_eq!(pick_cgroup(v1), "/process_api/75");
        let v2 = "0::/kubepods/burstable/pod1/abc\n";
        assert_eq!(pick_cgroup(v2), "/kubepods/burstable/pod1/abc");
        let mixed = "5:cpu,cpuacct:/docker/f00\n0::/\n";
        assert_eq!(pick_cgroup(mixed), "/docker/f00");
        assert_eq!(pick_cgroup("0::/\n"), "/");
        assert_eq!(pick_cgroup("garbage"), "/");
    }
}
