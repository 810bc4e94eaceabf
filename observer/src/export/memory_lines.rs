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
            "disk_write_p99_ns": c.disk_write_p99_ns,
            "disk_flush_p99_ns": c.disk_flush_p99_ns,
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

    /// Block request latency per disk over the run: every request, and each operation's
    /// (read, write, flush, discard) that had any.
    pub fn disk_summary(&mut self, clock: &WallClock, disks: &DiskTable) {
        for d in disks.iter() {
            let t = d.total();
            let ops: serde_json::Map<String, serde_json::Value> = d
                .ops()
                .iter()
                .filter(|(_, o)| o.latency.count > 0)
                .map(|(op, o)| {
                    let l = &o.latency;
                    (
                        op.name().to_string(),
                        json!({
                            "requests": l.count,
                            "bytes": o.bytes,
                            "total_ns": l.total_ns,
                            "max_ns": l.max_ns,
                            "p50_ns": l.percentile(0.5),
                            "p99_ns": l.percentile(0.99),
                        }),
                    )
                })
                .collect();
            let body = json!({
                "dev": dev_name(d.dev),
                "device": d.name,
                "requests": t.count,
                "bytes": d.bytes(),
                "total_ns": t.total_ns,
                "max_ns": t.max_ns,
                "p50_ns": t.percentile(0.5),
                "p99_ns": t.percentile(0.99),
                "ops": ops,
            });
            self.line("disk", WallClock::mono_now(), clock, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        memory::{DiskOpTotals, DiskReading},
        stats::Aggregate,
    };
    use observer_common::DiskOp;

    /// A disk line gives every request together and each operation that had any, with bytes.
    #[test]
    fn a_disk_line_breaks_requests_down_by_operation() {
        let reading: DiskReading = [
            (
                DiskOp::Write,
                DiskOpTotals {
                    latency: Aggregate::of(&[1_000_000, 3_000_000]),
                    bytes: 8192,
                },
            ),
            (
                DiskOp::Flush,
                DiskOpTotals {
                    latency: Aggregate::of(&[20_000_000]),
                    bytes: 0,
                },
            ),
            (DiskOp::Read, DiskOpTotals::default()),
        ]
        .into();
        let mut disks = DiskTable::default();
        disks.apply(7 << 20, Some("loop0".into()), reading, 1);
        let mut w = NdjsonWriter::new(Vec::new(), "h1".into());
        let clock = WallClock {
            offset_ns: 0,
            err_ns: 0,
            unsynced: false,
            sync: Default::default(),
        };
        w.disk_summary(&clock, &disks);
        let text = String::from_utf8(w.into_inner()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["type"], "disk");
        assert_eq!(v["dev"], "7:0");
        assert_eq!(v["device"], "loop0");
        assert_eq!(
            (v["requests"].as_u64(), v["bytes"].as_u64()),
            (Some(3), Some(8192))
        );
        assert_eq!(v["total_ns"], 24_000_000);
        assert_eq!(v["max_ns"], 20_000_000);
        let ops = v["ops"].as_object().unwrap();
        assert_eq!(ops.keys().collect::<Vec<_>>(), ["flush", "write"], "{v}");
        assert_eq!(ops["write"]["requests"], 2);
        assert_eq!(ops["write"]["bytes"], 8192);
        assert_eq!(ops["write"]["max_ns"], 3_000_000);
        assert_eq!(ops["flush"]["requests"], 1);
        assert_eq!(ops["flush"]["bytes"], 0);
        assert_eq!(ops["flush"]["total_ns"], 20_000_000);
    }

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
