//! Aggregates updated from several CPUs at once: atomic counters, histograms, maxima.
use observer_common::{ComponentStats, StallStats, hist};

/// Adds `v` to a counter that other CPUs update too.
#[inline(always)]
pub fn atomic_add(p: &mut u64, v: u64) {
    // SAFETY: `p` is a valid, 8-byte-aligned u64 inside a map value; the BPF atomic add is the
    // kernel's __sync_fetch_and_add, safe against other CPUs updating the same counter.
    // (core::sync::atomic has no RMW on the BPF target; the intrinsic lowers to BPF_ATOMIC add.
    // No fetching form: LLVM emits BPF_FETCH only for ALU32 CPUs and aya-build links for the
    // generic one, hence the NOEXIST-insert / delete claims in stops.rs for "first" and "last".)
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v) };
}

/// Total, max and histogram bucket of one value (the count is the histogram's sum: one locked
/// add fewer on every context switch that ends a wait). `max` is a racy read-compare-write,
/// which can lose a concurrent larger value but never produce an invalid one.
#[inline(always)]
pub fn add_stat(s: &mut ComponentStats, v: u64) {
    atomic_add(&mut s.total_ns, v);
    if v > s.max_ns {
        s.max_ns = v;
    }
    let b = hist::bucket(v);
    if let Some(slot) = s.hist.get_mut(b) {
        atomic_add(slot, 1);
    }
}

/// Count, total and max of one stall.
#[inline(always)]
pub fn add_stall(s: &mut StallStats, v: u64) {
    atomic_add(&mut s.count, 1);
    atomic_add(&mut s.total_ns, v);
    if v > s.max_ns {
        s.max_ns = v;
    }
}
