//! Periodic reads of the in-kernel aggregates and drop counters.
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use observer_common::{CpuSteal, NUM_DROP_CAUSES, ProcMem, ProcStats, comm_bytes};

pub struct Harvester {
    procs: BpfHashMap<MapData, u32, ProcStats>,
    mem: BpfHashMap<MapData, u32, ProcMem>,
    drops: PerCpuArray<MapData, u64>,
    cpu_steal: PerCpuArray<MapData, CpuSteal>,
}

/// One read of the kernel's aggregates.
#[derive(Default)]
pub struct Harvest {
    /// Every process whose cumulative stats were read (and handed to the caller as they were
    /// read: a full map's 4,096 copies of 2.7 KiB collected in one vector were 11 MiB).
    pub procs: Vec<u32>,
    /// (tgid, cumulative memory and disk totals).
    pub mem: Vec<(u32, ProcMem)>,
    /// Processes that have exited: read above for the last time, and now deleted in the kernel.
    pub retired: Vec<u32>,
    /// Ring-buffer and aggregate drops per `DropCause`, summed over CPUs.
    pub drops: [u64; NUM_DROP_CAUSES],
}

impl Harvester {
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let procs = BpfHashMap::try_from(
            ebpf.take_map("PROC_STATS")
                .context("map PROC_STATS missing")?,
        )?;
        let mem = BpfHashMap::try_from(ebpf.take_map("PROC_MEM").context("map PROC_MEM missing")?)?;
        let drops = PerCpuArray::try_from(ebpf.take_map("DROPS").context("map DROPS missing")?)?;
        let cpu_steal = PerCpuArray::try_from(
            ebpf.take_map("CPU_STEAL")
                .context("map CPU_STEAL missing")?,
        )?;
        Ok(Self {
            procs,
            mem,
            drops,
            cpu_steal,
        })
    }

    /// The scheduler's steal clock per CPU (index = CPU) at the first and latest context switch
    /// the programs saw; empty when unreadable.
    pub fn steal_clock(&self) -> Vec<CpuSteal> {
        self.cpu_steal
            .get(&0, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Reads the aggregates of process `tgid`, which has exited, one last time and deletes
    /// them; the process is to be retired. A pause aggregate with a later start time is
    /// already the next process's (the pid was reused before the exit record was read: the
    /// kernel counted the exited one's unread rest as a `pid_reuse` drop) and is left alone,
    /// as is then the memory aggregate, whose owner cannot be told.
    pub fn final_read(
        &mut self,
        tgid: u32,
        start_ns: u64,
        mut apply: impl FnMut(u32, &str, &ProcStats),
    ) -> Harvest {
        let mut h = Harvest {
            retired: vec![tgid],
            ..Default::default()
        };
        let stats = self.procs.get(&tgid, 0).ok();
        if stats.is_some_and(|s| start_ns != 0 && s.start_ns > start_ns) {
            return h;
        }
        if let Some(stats) = stats {
            apply(
                tgid,
                &String::from_utf8_lossy(comm_bytes(&stats.comm)),
                &stats,
            );
            h.procs.push(tgid);
            let _ = self.procs.remove(&tgid);
        }
        if let Ok(m) = self.mem.get(&tgid, 0) {
            h.mem.push((tgid, m));
            let _ = self.mem.remove(&tgid);
        }
        h
    }

    /// Reads every aggregate, handing each process's to `apply` as it is read; entries of
    /// processes that no longer exist are deleted after this final read, which frees their
    /// LRU slot for live processes.
    pub fn collect(&mut self, mut apply: impl FnMut(u32, &str, &ProcStats)) -> Harvest {
        let mut h = Harvest::default();
        // Entries can be deleted by LRU eviction while we iterate: a failed lookup of one key
        // is skipped, not fatal.
        for (tgid, stats) in self.procs.iter().flatten() {
            apply(
                tgid,
                &String::from_utf8_lossy(comm_bytes(&stats.comm)),
                &stats,
            );
            h.procs.push(tgid);
        }
        h.mem.extend(self.mem.iter().flatten());
        let mut seen: Vec<u32> = h
            .procs
            .iter()
            .copied()
            .chain(h.mem.iter().map(|m| m.0))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for tgid in seen {
            if !std::path::Path::new(&format!("/proc/{tgid}")).exists() {
                h.retired.push(tgid);
            }
        }
        for tgid in &h.retired {
            let _ = self.procs.remove(tgid);
            let _ = self.mem.remove(tgid);
        }
        for (i, slot) in h.drops.iter_mut().enumerate() {
            if let Ok(values) = self.drops.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        h
    }
}
