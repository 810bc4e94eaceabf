//! Block device latency, for context: how long each request took from issue to the driver to
//! completion, as a histogram per disk. A report can then say "the fsync took 450 ms while
//! the disk's p99 was 3 ms": the time went to queueing or throttling above the device.
//!
//!   block_rq_issue(struct request *rq)
//!   block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use observer_common::ComponentStats;

use crate::{
    config, counters, sched,
    task::{self, TaskPtr},
};

/// Issue time of requests in flight, by request address. LRU: a request that never completes
/// (a device removed under it) cannot pin an entry.
#[map]
static ISSUED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Latency per disk (kernel dev_t of the whole disk: major << 20 | first_minor).
#[map]
static DISK_LATENCY: HashMap<u32, ComponentStats> = HashMap::with_max_entries(256, 0);

/// Zeroed template for new `DISK_LATENCY` entries (too large for the BPF stack).
#[map]
static DISK_LATENCY_INIT: PerCpuArray<ComponentStats> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let _ = ISSUED.insert(&rq, &sched::now(), 0);
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: TaskPtr = ctx.arg(0);
    let key = rq as u64;
    // SAFETY: copy of our own map value.
    let Some(start) = (unsafe { ISSUED.get(&key) }).copied() else { return 0 };
    // A partial completion ends the request's timing; later parts find no entry.
    let _ = ISSUED.remove(&key);
    let latency = sched::now().saturating_sub(start);
    let o = config::disk_offsets();
    let Some(disk) = task::read::<true, TaskPtr>(rq, o.rq_q)
        .filter(|q| !q.is_null())
        .and_then(|q| task::read::<true, TaskPtr>(q, o.q_disk))
        .filter(|d| !d.is_null())
    else {
        return 0;
    };
    let major = task::read::<true, i32>(disk, o.major).unwrap_or(0) as u32;
    let minor = task::read::<true, i32>(disk, o.first_minor).unwrap_or(0) as u32;
    let dev = (major << 20) | (minor & 0xfffff);
    let s = match DISK_LATENCY.get_ptr_mut(&dev) {
        Some(s) => s,
        None => {
            let Some(init) = DISK_LATENCY_INIT.get_ptr(0) else { return 0 };
            // SAFETY: `init` points to a valid, zeroed ComponentStats in the per-CPU array.
            let _ = DISK_LATENCY.insert(&dev, unsafe { &*init }, BPF_NOEXIST as u64);
            match DISK_LATENCY.get_ptr_mut(&dev) {
                Some(s) => s,
                None => return 0,
            }
        }
    };
    // SAFETY: pointer into our own map value, valid for this invocation.
    counters::add_stat(unsafe { &mut *s }, latency);
    0
}
