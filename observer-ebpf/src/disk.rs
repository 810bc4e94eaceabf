//! Block device latency, for context: how long each request took from issue to the driver to
//! completion, as a histogram per disk and operation (read, write, cache flush, discard). A
//! report can then say "the fsync took 450 ms while the disk's p99 was 3 ms": the time went to
//! queueing or throttling above the device.
//!
//!   block_rq_issue(struct request *rq)
//!   block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use observer_common::{DiskKey, DiskOp, DiskStats, DropCause, InFlightSet};

use crate::{
    config, counters, output, sched,
    task::{self, TaskPtr},
};

/// log2 of the in-flight table's sets: 4,096 sets of 4 ways (256 KiB). A request finds a free
/// way in its set unless four others hashed there are in flight too. With 1,000 requests in
/// flight at once (a busy NVMe host's queues), the expected number of sets holding five is
/// 0.024; a direct-mapped table of as many slots, which this replaced, had 30 pairs sharing a
/// slot. The fifth request takes the oldest way, and the request that held it is counted
/// (`DropCause::DiskSample`) instead of timed.
const IN_FLIGHT_BITS: u32 = 12;

/// Issue time of requests in flight, set-associative by request address: no helper call, no
/// lock and no allocation on either program (an LRU hash's insert, lookup and delete cost
/// about 300 ns a request on our VMs, measured). A request that never completes (a device
/// removed under it) keeps its way until three newer requests want the set.
#[map]
static IN_FLIGHT: Array<InFlightSet> = Array::with_max_entries(1 << IN_FLIGHT_BITS, 0);

/// Latency and bytes per disk and operation (`DiskKey`: kernel dev_t of the whole disk,
/// major << 20 | first_minor, and `DiskOp`): 256 disks of four operations.
#[map]
static DISK_LATENCY: HashMap<DiskKey, DiskStats> = HashMap::with_max_entries(1024, 0);

/// Zeroed template for new `DISK_LATENCY` entries (too large for the BPF stack).
#[map]
static DISK_LATENCY_INIT: PerCpuArray<DiskStats> = PerCpuArray::with_max_entries(1, 0);

/// Request `rq` as a number the verifier lets us hash: a tp_btf argument is a trusted pointer,
/// on which it allows no arithmetic but the difference from another pointer (for a privileged
/// program), here the in-flight table's address, which never moves. Distinct requests give
/// distinct keys, never 0.
#[inline(always)]
fn key_of(rq: TaskPtr) -> u64 {
    (rq as u64).wrapping_sub(core::ptr::addr_of!(IN_FLIGHT) as u64) | 1 << 63
}

/// The in-flight set of request key `key`: Fibonacci hashing keeps the product's top bits,
/// which depend on every bit of the address (requests sit a fixed, driver-dependent stride
/// apart).
#[inline(always)]
fn set_of(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - IN_FLIGHT_BITS)) as u32
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq = key_of(ctx.arg(0));
    let Some(set) = IN_FLIGHT.get_ptr_mut(set_of(rq)) else { return 0 };
    // SAFETY: pointer into our own array. A request is issued on one CPU at a time; two
    // requests of one set issued on two CPUs within nanoseconds of each other can take the
    // same free way, and the first's completion then finds it gone.
    let set = unsafe { &mut *set };
    let (way, evicted) = set.way_for(rq);
    if evicted {
        // Four others still hold the set: the oldest's completion will find it gone.
        output::count_drop(DropCause::DiskSample);
    }
    if let Some(w) = set.ways.get_mut(way) {
        w.issued_ns = sched::now();
        w.rq = rq;
    }
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: TaskPtr = ctx.arg(0);
    let key = key_of(rq);
    let Some(set) = IN_FLIGHT.get_ptr_mut(set_of(key)) else { return 0 };
    // SAFETY: pointer into our own array (see block_rq_issue).
    let set = unsafe { &mut *set };
    // A partial completion ends the request's timing; later parts find no way. Requests never
    // issued to the driver (a flush that the flush machinery served with its own flush
    // request) find none either.
    let Some(w) = set.ways.iter_mut().find(|w| w.rq == key) else { return 0 };
    // The issue time before the way is freed: an issue on another CPU may take it then.
    // SAFETY: fields of our own map value; volatile, so that the compiler keeps this order.
    let issued_ns = unsafe {
        let t = core::ptr::read_volatile(&raw const w.issued_ns);
        core::ptr::write_volatile(&raw mut w.rq, 0);
        t
    };
    let latency = sched::now().saturating_sub(issued_ns);
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
    // What the request does, and its size: at its first completion `__data_len` is still
    // the whole request (blk_update_request traces before it counts the bytes done).
    let op = DiskOp::of_cmd_flags(task::read::<true, u32>(rq, o.cmd_flags).unwrap_or(0));
    let bytes = task::read::<true, u32>(rq, o.data_len).unwrap_or(0);
    let k = DiskKey { dev: (major << 20) | (minor & 0xfffff), op: op as u32 };
    let s = match DISK_LATENCY.get_ptr_mut(&k) {
        Some(s) => s,
        None => {
            let Some(init) = DISK_LATENCY_INIT.get_ptr(0) else { return 0 };
            // SAFETY: `init` points to a valid, zeroed DiskStats in the per-CPU array.
            let _ = DISK_LATENCY.insert(&k, unsafe { &*init }, BPF_NOEXIST as u64);
            match DISK_LATENCY.get_ptr_mut(&k) {
                Some(s) => s,
                None => return 0,
            }
        }
    };
    // SAFETY: pointer into our own map value, valid for this invocation.
    let s = unsafe { &mut *s };
    counters::add_stat(&mut s.latency, latency);
    counters::atomic_add(&mut s.bytes, u64::from(bytes));
    0
}
