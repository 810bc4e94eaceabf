//! What the programs hand to the agent: the ring buffer of streamed records and drop counters.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use observer_common::{DropCause, NUM_DROP_CAUSES};

/// Streamed records, read by the agent through epoll. 4 MiB holds about 29,000 pause
/// records: a 30-minute soak on a saturated 2-CPU host (fork storm and every workload) lost
/// 9,308 of 138,000 to bursts with 1 MiB, while the agent itself waited for a CPU.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Records that could not be streamed, per `DropCause`.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_DROP_CAUSES as u32, 0);

#[inline(always)]
pub fn count_drop(cause: DropCause) {
    if let Some(c) = DROPS.get_ptr_mut(cause as u32) {
        // SAFETY: per-CPU slot; no other CPU writes it and preemption is off in BPF programs.
        unsafe { *c += 1 };
    }
}

/// Unread bytes at which a record wakes the agent at once. Below it records are submitted
/// without a wakeup and the agent collects them on its 20 ms poll: a wakeup is an irq_work, a
/// self-IPI that costs 10-15 µs on a VM (BPF run-time statistics showed a JVM safepoint's
/// record costing 17 µs with wakeups, a few hundred ns without). The rest of the ring (15/16)
/// leaves room for a burst to keep coming while the agent wakes.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// Streams one rare record and wakes the agent at once (clock changes: the agent is waiting to
/// name who stepped the clock).
#[inline(always)]
pub fn emit_now<T: 'static>(rec: T, cause: DropCause) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_drop(cause);
        return false;
    };
    entry.write(rec);
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    true
}

/// Room for one record, to be filled in place and passed to `submit`; None (and a drop of
/// `cause` counted) when the ring buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>(cause: DropCause) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_drop(cause);
    }
    entry
}

/// Streams one record; counts a drop of `cause` when the ring buffer is full.
#[inline(always)]
pub fn emit<T: 'static>(rec: T, cause: DropCause) -> bool {
    let Some(mut entry) = reserve::<T>(cause) else { return false };
    entry.write(rec);
    submit(entry);
    true
}

/// Submits a reserved record, waking the agent only when enough is waiting (`WAKEUP_BYTES`).
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(flags as u64);
}
