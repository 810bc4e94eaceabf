//! Block device latency, for context: how long each request took from issue to the driver to
//! completion, as a histogram per disk. A report can then say "the fsync took 450 ms while
//! the disk's p99 was 3 ms": the time went to queueing or throttling above the device.
//!
//!   block_rq_issue(struct request *rq)
//!   block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use observer_common::{ComponentStats, DropCause};

use crate::{
    config, counters, output, sched,
    task::{self, TaskPtr},
};

/// A request in flight: its address and issue time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    rq: u64,
    issued_ns: u64,
}

/// log2 of the in-flight table's slots: 16,384 (256 KiB), far more than the requests a host
/// has in flight at once (each device's queue depth), so two live requests share a slot
/// rarely, and each time is counted (`DropCause::DiskSample`).
const IN_FLIGHT_BITS: u32 = 14;

/// Issue time of requests in flight, direct-mapped by request address: one slot per hash, no
/// helper call, no lock and no allocation on either program (an LRU hash's insert, lookup and
/// delete cost about 300 ns a request on our VMs, measured). A request that never completes
/// (a device removed under it) leaves its slot to the next request that hashes there.
#[map]
static IN_FLIGHT: Array<InFlight> = Array::with_max_entries(1 << IN_FLIGHT_BITS, 0);

/// Latency per disk (kernel dev_t of the whole disk: major << 20 | first_minor).
#[map]
static DISK_LATENCY: HashMap<u32, ComponentStats> = HashMap::with_max_entries(256, 0);

/// Zeroed template for new `DISK_LATENCY` entries (too large for the BPF stack).
#[map]
static DISK_LATENCY_INIT: PerCpuArray<ComponentStats> = PerCpuArray::with_max_entries(1, 0);

/// Request `rq` as a number the verifier lets us hash: a tp_btf argument is a trusted pointer,
/// on which it allows no arithmetic but the difference from another pointer (for a privileged
/// program), here the in-flight table's address, which never moves. Distinct requests give
/// distinct keys, never 0.
#[inline(always)]
fn key_of(rq: TaskPtr) -> u64 {
    (rq as u64).wrapping_sub(core::ptr::addr_of!(IN_FLIGHT) as u64) | 1 << 63
}

/// The in-flight slot of request key `key`: Fibonacci hashing keeps the product's top bits,
/// which depend on every bit of the address (requests sit a fixed, driver-dependent stride
/// apart).
#[inline(always)]
fn slot_of(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - IN_FLIGHT_BITS)) as u32
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq = key_of(ctx.arg(0));
    let Some(slot) = IN_FLIGHT.get_ptr_mut(slot_of(rq)) else { return 0 };
    // SAFETY: pointer into our own array. A request is issued on one CPU at a time; a
    // completion racing a colliding issue on another CPU can take the newer issue time or
    // free the newer request's slot, which needs two requests hashed to one slot within
    // nanoseconds of each other.
    unsafe {
        let held = (*slot).rq;
        if held != 0 && held != rq {
            // Another request still holds the slot: its completion will find it gone.
            output::count_drop(DropCause::DiskSample);
        }
        (*slot).issued_ns = sched::now();
        (*slot).rq = rq;
    }
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: TaskPtr = ctx.arg(0);
    let key = key_of(rq);
    let Some(slot) = IN_FLIGHT.get_ptr_mut(slot_of(key)) else { return 0 };
    // SAFETY: pointer into our own array (see block_rq_issue).
    let start = unsafe {
        if (*slot).rq != key {
            return 0;
        }
        // A partial completion ends the request's timing; later parts find the slot free.
        (*slot).rq = 0;
        (*slot).issued_ns
    };
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
