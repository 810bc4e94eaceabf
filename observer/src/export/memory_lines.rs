//! NDJSON lines about memory and disk pauses: fsync-family calls, reclaim and compaction
//! stalls, why a blocked phase blocked, per-process memory totals, disk latency
//! (docs/ndjson-schema.md).
use std::io::Write;

use observer_common::BlockReason;
use serde_json::{Value, json};

use super::ndjson::NdjsonWriter;
use crate::{
    model::{
        memory::{BlockedWhy, DiskTable, MemStall, SyncCall, dev_name},
        process::ProcessEntry,
    },
    source::clock::WallClock,
};

/// The `blocked` object of a pause line.
pub fn blocked_json(b: &BlockedWhy) -> Value {
    let file = matches!(b.reason, BlockReason::MajorFault | BlockReason::Sync);
    json!({
        "reason": b.reason.name(),
        "label": b.label(),
        "description": b.describe(),
        "address": matches!(b.reason, BlockReason::MajorFault | BlockReason::Swapin).then_some(b.addr),
        "file": if file { b.resolved.clone() } else { None },
        "device": (b.dev != 0).then(|| dev_name(b.dev)),
        "inode": (b.ino != 0).then_some(b.ino),
        "file_offset": (b.reason == BlockReason::MajorFault).then(|| b.file_offset()).flatten(),
        "kernel_place": if b.reason == BlockReason::Stack { b.resolved.clone() } else { None },
    })
}

/// Per-process memory and disk totals for the summary line (None: nothing observed).
pub fn memory_json(p: &ProcessEntry) -> Option<Value> {
    let m = p.mem();
    if m.is_empty() && p.faults.is_none() {
        return None;
    }
    let blocked: serde_json::Map<String, Value> = BlockReason::ALL
        .iter()
        .filter(|&&r| m.blocked[r as usize].count > 0)
        .map(|&r| {
            let s = m.blocked[r as usize];
            (
                r.name().to_string(),
                json!({ "count": s.count, "total_ns": s.total_ns, "max_ns": s.max_ns }),
            )
        })
        .collect();
    let stalls: serde_json::Map<String, Value> = [
        BlockReason::Reclaim,
        BlockReason::MemcgReclaim,
        BlockReason::Compaction,
    ]
    .iter()
    .map(|&r| {
        let s = m.stall(r);
        (
            r.name().to_string(),
            json!({ "count": s.count, "total_ns": s.total_ns, "max_ns": s.max_ns }),
        )
    })
    .collect();
    Some(json!({
        "major_faults_file": m.major_file,
        "major_faults_swapin": m.major_swap,
        "proc_minflt": p.faults.map(|f| f.minor),
        "proc_majflt": p.faults.map(|f| f.major),
        "threads": p.thread_faults.iter().map(|t| json!({
            "tid": t.tid, "comm": t.comm, "minflt": t.minor, "majflt": t.major,
        })).collect::<Vec<_>>(),
        "blocked_by_reason": blocked,
        "stalls": stalls,
        "fsync": {
            "count": m.sync.count,
            "total_ns": m.sync.total_ns,
            "max_ns": m.sync.max_ns,
            "p99_ns": m.sync.percentile(0.99),
        },
    }))
}

impl<W: Write> NdjsonWriter<W> {
    pub fn sync_call(&mut self, clock: &WallClock, c: &SyncCall) {
        let body = json!({
            "pid": c.pid,
            "tid": c.tid,
            "comm": c.comm,
            "syscall": c.name(),
            "start_mono_ns": c.start_mono_ns,
            "duration_ns": c.duration_ns,
            "ret": c.ret,
            "fd": c.fd(),
            "path": c.path,
            "device": c.device,
            "dev": (c.dev != 0).then(|| dev_name(c.dev)),
            "inode": (c.ino != 0).then_some(c.ino),
            "disk_p99_ns": c.disk_p99_ns,
            "description": c.describe(),
        });
        self.line("fsync", c.start_mono_ns, clock, body);
    }

    pub fn mem_stall(&mut self, clock: &WallClock, s: &MemStall) {
        let body = json!({
            "pid": s.pid,
            "tid": s.tid,
            "comm": s.comm,
            "kind": s.reason.name(),
            "start_mono_ns": s.start_mono_ns,
            "duration_ns": s.duration_ns,
            "pages_reclaimed": matches!(s.reason, BlockReason::Reclaim | BlockReason::MemcgReclaim).then_some(s.result),
            "description": s.describe(),
        });
        self.line("mem_stall", s.start_mono_ns, clock, body);
    }

    /// Block request latency per disk over the run.
    pub fn disk_summary(&mut self, clock: &WallClock, disks: &DiskTable) {
        for d in disks.iter() {
            let t = d.total();
            let body = json!({
                "dev": dev_name(d.dev),
                "device": d.name,
                "requests": t.count,
                "total_ns": t.total_ns,
                "max_ns": t.max_ns,
                "p50_ns": t.percentile(0.5),
                "p99_ns": t.percentile(0.99),
            });
            self.line("disk", WallClock::mono_now(), clock, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_phases_name_their_file_or_kernel_place() {
        let mut b = BlockedWhy {
            reason: BlockReason::MajorFault,
            addr: 0x1000,
            dev: 7 << 20,
            ino: 12,
            pgoff: 2,
            stack_id: None,
            resolved: Some("/data/x".into()),
        };
        let v = blocked_json(&b);
        assert_eq!(v["reason"], "major_fault");
        assert_eq!(v["file"], "/data/x");
        assert_eq!(v["device"], "7:0");
        assert_eq!(v["file_offset"], 8192);
        assert_eq!(v["kernel_place"], Value::Null);
        b.reason = BlockReason::Stack;
        b.resolved = Some("jbd2 commit".into());
        let v = blocked_json(&b);
        assert_eq!(
            (v["label"].as_str(), v["file"].as_str()),
            (Some("kernel: jbd2 commit"), None)
        );
        assert_eq!(v["kernel_place"], "jbd2 commit");
    }
}
