//! Runtime stop-the-world pauses (JVM safepoints, Go STW), decoded from the kernel.
use observer_common::{GC_FLAG_COLLECTION, GC_FLAG_FULL, GC_FLAG_REASON, GcRecord, Runtime};

use super::{episode::comm_string, units::fmt_ns};

/// A NUL-padded byte string from the kernel.
fn padded_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
use crate::runtimes::golang;

/// One process-wide stop-the-world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPause {
    /// Shares the episode id sequence, so incidents can cite it.
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub runtime: Option<Runtime>,
    /// The runtime thread that stopped the world.
    pub tid: u32,
    pub start_mono_ns: u64,
    /// The whole stop: every thread of the process was held for this long.
    pub duration_ns: u64,
    /// JVM: the collection inside (matches -Xlog:gc "Pause"); Go: the whole STW.
    pub gc_ns: u64,
    /// JVM: time to safepoint, until every Java thread had stopped (None: not measured).
    pub sync_ns: Option<u64>,
    /// The stop included a garbage collection (JVM: gc__begin seen; Go: a GC phase reason).
    pub collection: bool,
    pub full: bool,
    /// JVM: the VM operation ("G1CollectFull", "G1CollectForAllocation", "Deoptimize", ...).
    pub operation: Option<String>,
    /// Go 1.21+: the stwReason value.
    pub reason: Option<u32>,
}

impl GcPause {
    pub fn from_record(id: u64, r: &GcRecord) -> Self {
        let runtime = Runtime::from_u32(r.runtime);
        let reason = (r.flags & GC_FLAG_REASON != 0).then_some(r.reason);
        let collection = match runtime {
            // Before Go 1.21 the reason is not passed; nearly every STW of a Go program is one
            // of the two GC phases, so it counts as a collection.
            Some(Runtime::Go) => reason.is_none_or(golang::reason_is_gc),
            _ => r.flags & GC_FLAG_COLLECTION != 0,
        };
        let operation = padded_string(&r.operation);
        Self {
            id,
            pid: r.tgid,
            comm: comm_string(&r.comm),
            runtime,
            tid: r.tid,
            start_mono_ns: r.start_mono_ns,
            duration_ns: r.duration_ns,
            gc_ns: r.gc_ns,
            sync_ns: (r.sync_ns != 0).then_some(r.sync_ns),
            collection,
            full: r.flags & GC_FLAG_FULL != 0,
            operation: (!operation.is_empty()).then_some(operation),
            reason,
        }
    }

    pub fn end_mono_ns(&self) -> u64 {
        self.start_mono_ns.saturating_add(self.duration_ns)
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.map_or("unknown", Runtime::name)
    }

    /// What the runtime says the stop was for.
    pub fn cause(&self) -> String {
        match (self.runtime, &self.operation, self.reason) {
            (Some(Runtime::Jvm), Some(op), _) => op.clone(),
            (Some(Runtime::Go), _, Some(r)) => golang::reason_name(r).to_string(),
            (Some(Runtime::Go), _, None) => "stop-the-world".to_string(),
            _ => "safepoint".to_string(),
        }
    }

    /// One line for people: "JVM safepoint 5.4ms (G1CollectFull: full GC 5.2ms)",
    /// "Go stop-the-world 310µs (GC sweep termination)".
    pub fn describe(&self) -> String {
        match self.runtime {
            Some(Runtime::Jvm) => {
                let inner = if self.collection {
                    format!(
                        ": {} {}",
                        if self.full { "full GC" } else { "GC" },
                        fmt_ns(self.gc_ns)
                    )
                } else {
                    String::new()
                };
                format!(
                    "JVM safepoint {} ({}{inner})",
                    fmt_ns(self.duration_ns),
                    self.cause()
                )
            }
            Some(Runtime::Go) => format!(
                "Go stop-the-world {} ({})",
                fmt_ns(self.duration_ns),
                self.cause()
            ),
            None => format!("runtime stop-the-world {}", fmt_ns(self.duration_ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{GC_OP_LEN, RecordKind, TASK_COMM_LEN};

    use super::*;

    fn record(runtime: Runtime, flags: u32, reason: u32, op: &str) -> GcRecord {
        let mut operation = [0u8; GC_OP_LEN];
        operation[..op.len()].copy_from_slice(op.as_bytes());
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..4].copy_from_slice(b"java");
        GcRecord {
            kind: RecordKind::Gc as u32,
            runtime: runtime as u32,
            tgid: 42,
            tid: 43,
            start_mono_ns: 1_000,
            duration_ns: 5_406_365,
            gc_ns: 5_239_000,
            sync_ns: 0,
            reason,
            flags,
            operation,
            comm,
        }
    }

    #[test]
    fn jvm_safepoint_with_full_gc() {
        let g = GcPause::from_record(
            7,
            &record(
                Runtime::Jvm,
                GC_FLAG_COLLECTION | GC_FLAG_FULL,
                0,
                "G1CollectFull",
            ),
        );
        assert!(g.collection && g.full);
        assert_eq!(g.operation.as_deref(), Some("G1CollectFull"));
        assert_eq!(g.end_mono_ns(), 5_407_365);
        assert_eq!(
            g.describe(),
            "JVM safepoint 5.4ms (G1CollectFull: full GC 5.2ms)"
        );
    }

    #[test]
    fn jvm_safepoint_without_gc() {
        let g = GcPause::from_record(1, &record(Runtime::Jvm, 0, 0, "ICBufferFull"));
        assert!(!g.collection);
        assert_eq!(g.describe(), "JVM safepoint 5.4ms (ICBufferFull)");
        let unnamed = GcPause::from_record(1, &record(Runtime::Jvm, 0, 0, ""));
        assert_eq!(unnamed.operation, None);
        assert_eq!(unnamed.cause(), "safepoint");
    }

    #[test]
    fn go_reasons() {
        let old = GcPause::from_record(1, &record(Runtime::Go, 0, 0, ""));
        assert!(old.collection, "pre-1.21 stops count as collections");
        assert_eq!(old.describe(), "Go stop-the-world 5.4ms (stop-the-world)");
        let sweep = GcPause::from_record(1, &record(Runtime::Go, GC_FLAG_REASON, 2, ""));
        assert!(sweep.collection);
        assert_eq!(sweep.cause(), "GC sweep termination");
        let memstats = GcPause::from_record(1, &record(Runtime::Go, GC_FLAG_REASON, 7, ""));
        assert!(
            !memstats.collection,
            "ReadMemStats stops the world without collecting"
        );
    }
}
