//! What the programs hand to the agent: the ring buffer of streamed records and drop counters.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use observer_common::{DropCause, NUM_DROP_CAUSES};

/// Streamed records, read by the agent through epoll.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

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

/// Streams one record; counts a drop of `cause` when the ring buffer is full.
#[inline(always)]
pub fn emit<T: 'static>(rec: T, cause: DropCause) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_drop(cause);
        return false;
    };
    entry.write(rec);
    entry.submit(0);
    true
}
