//! The benchmark's calibration hooks (`pw-empty-hooks`): programs that measure what observing
//! a hook costs apart from what pausewatch's programs do there.
//!
//! - `Calibration::Empty`: pausewatch's empty calibration programs on the two hooks its hottest
//!   programs use, sched_switch and page_fault_user, and nothing else. What a workload loses
//!   while they are attached is what entering any program on those hooks costs on this machine,
//!   whatever the program does.
//! - `Calibration::LeastWait`: `stats_least_wait` on sched_switch, then the empty program, the
//!   first being the least a program there does to put every run-queue wait into a histogram (the kernel
//!   program's doc comment says what it leaves out). With the kernel's run-time statistics on,
//!   its mean per run next to the empty program's is what timing each wait costs any observer,
//!   on the workload that ran meanwhile.
use std::path::Path;

use anyhow::Context as _;
use aya::{Btf, Ebpf, EbpfLoader, Endianness, maps::PerCpuArray};
use observer_common::ComponentStats;

use super::{
    OBJECT, STATS_FLOOR, TracepointProgs, attach_btf, attach_one, btf, cost, require_object,
};

/// Which calibration programs `attach` attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Empty programs on sched_switch and page_fault_user (raw_tp on sched_switch alone where
    /// tp_btf is refused).
    Empty,
    /// `stats_least_wait` on sched_switch, then the empty program there (tp_btf only).
    LeastWait,
}

/// The least-work program, attached before the empty one on the same hook.
pub const LEAST_WAIT: TracepointProgs = ("sched_switch", "stats_least_wait", "stats_least_wait");

/// Attaches `which` (tp_btf, as pausewatch attaches its own programs). The programs stay
/// attached while the returned object lives; the names of those attached come with it.
pub fn attach(btf_path: &Path, which: Calibration) -> anyhow::Result<(Ebpf, Vec<String>)> {
    require_object()?;
    let aya_btf = Btf::parse_file(btf_path, Endianness::default())
        .with_context(|| format!("parsing kernel BTF at {}", btf_path.display()))?;
    let offsets = match which {
        Calibration::LeastWait => least_wait_offsets(btf_path)?,
        Calibration::Empty => Vec::new(),
    };
    let mut loader = EbpfLoader::new();
    for (name, v) in &offsets {
        loader.override_global(name, v, true);
    }
    // Only calibration programs run: every other map at its smallest.
    for map in [
        "PROC_STATS",
        "PROC_SLOTS",
        "FREE_SLOTS",
        "PROC_MEM",
        "SWITCH_INS",
        "FAULTS",
        "STACKS",
    ] {
        loader.map_max_entries(map, 1);
    }
    let mut ebpf = loader
        .btf(Some(&aya_btf))
        .allow_unsupported_maps()
        .load(OBJECT)
        .context("loading the eBPF object into the kernel")?;
    let mut attached = Vec::new();
    if which == Calibration::LeastWait {
        // Before its floor, as pausewatch's programs run before theirs (the statistics' floor
        // programs are attached when the statistics are turned on).
        attach_btf(&mut ebpf, &aya_btf, LEAST_WAIT.0, LEAST_WAIT.1)
            .context("the least-wait program needs tp_btf")?;
        attached.push(format!("tp_btf/{} ({})", LEAST_WAIT.0, LEAST_WAIT.1));
    }
    match attach_btf(&mut ebpf, &aya_btf, "sched_switch", STATS_FLOOR.0) {
        Ok(()) => attached.push(format!("tp_btf/sched_switch ({})", STATS_FLOOR.0)),
        Err(e) if which == Calibration::Empty => {
            attach_one(
                &mut ebpf,
                None,
                ("sched_switch", STATS_FLOOR.0, STATS_FLOOR.1),
            )
            .with_context(|| format!("tp_btf refused ({e:#}), and raw_tp too"))?;
            attached.push(format!("raw_tp/sched_switch ({})", STATS_FLOOR.1));
            return Ok((ebpf, attached));
        }
        Err(e) => return Err(e),
    }
    if which == Calibration::Empty {
        let (prog, tp, _) = cost::HOOK_FLOORS
            .iter()
            .copied()
            .find(|f| f.1 == "page_fault_user")
            .context("no empty program on page_fault_user in this build")?;
        attach_btf(&mut ebpf, &aya_btf, tp, prog)?;
        attached.push(format!("tp_btf/{tp} ({prog})"));
    }
    Ok((ebpf, attached))
}

/// The offsets `stats_least_wait` reads, as the loader's globals: the task's `tgid`, its
/// `sched_info.last_queued`, and the chain to the run-queue clock.
fn least_wait_offsets(btf_path: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let kbtf = btf::Btf::from_file(btf_path)?;
    let task = btf::TaskOffsets::from_btf(&kbtf)?;
    let rq = btf::RqClockOffsets::from_btf(&kbtf).context(
        "the least-wait program reads the run-queue clock, which is not reachable through BTF",
    )?;
    let si = btf::SchedInfoOffsets::from_btf(&kbtf).context(
        "the least-wait program reads task->sched_info, which is not in this kernel's BTF (CONFIG_SCHED_INFO off?)",
    )?;
    Ok(vec![
        ("TASK_TGID_OFF", u64::from(task.tgid)),
        ("TASK_CFS_RQ_OFF", u64::from(rq.task_cfs_rq)),
        ("CFS_RQ_RQ_OFF", u64::from(rq.cfs_rq_rq)),
        ("RQ_CLOCK_OFF", u64::from(rq.rq_clock)),
        ("TASK_LAST_QUEUED_OFF", u64::from(si.last_queued)),
    ])
}

/// What `stats_least_wait` has added up so far, all CPUs: (waits, their total ns).
pub fn least_waits(ebpf: &Ebpf) -> anyhow::Result<(u64, u64)> {
    let map: PerCpuArray<_, ComponentStats> =
        PerCpuArray::try_from(ebpf.map("LEAST_WAITS").context("map LEAST_WAITS missing")?)?;
    let per_cpu = map.get(&0, 0).context("reading LEAST_WAITS")?;
    Ok(per_cpu
        .iter()
        .fold((0, 0), |(n, t), s| (n + s.count(), t + s.total_ns)))
}
