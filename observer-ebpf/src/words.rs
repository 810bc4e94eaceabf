//! Word-at-a-time writes for the hot programs.
//!
//! On the BPF target LLVM turns struct copies, and runs of zero stores it merges, into calls of
//! compiler_builtins' `memset`/`memcpy`/`memmove`: byte-at-a-time loops in a subprogram.
//! Starting an episode once ran 76 iterations of `memset`, most of `sched_wakeup`'s cost (104
//! ns net of the statistics' floor before, about 40 after, in `pw-workload pingpong`,
//! 2026-11-22). `[u8; 16]` names are moved byte by byte too: their alignment is 1 and the
//! target has no unaligned access. Volatile word accesses are neither merged nor split. The
//! agent's unit test `hot_programs_call_no_byte_wise_memory_routine` keeps the hot programs
//! free of those calls.

/// Zeroes `*p`, 8 bytes at a time.
///
/// # Safety
/// `p` must be writable and 8-byte aligned, and `T` a size that is a multiple of 8 for which
/// all-zero bytes are a valid value.
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let w = p.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: within `*p`, aligned (the caller's contract).
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

/// Copies `*src` to `*dst`, 8 bytes at a time.
///
/// # Safety
/// Both must be valid, 8-byte aligned and not overlapping, and `T` a multiple of 8 bytes.
#[inline(always)]
pub unsafe fn copy<T>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: within both, aligned (the caller's contract).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Stores a 16-byte name given as two 8-byte words (`task::comm_words`).
///
/// # Safety
/// `dst` must be writable and 8-byte aligned.
#[inline(always)]
pub unsafe fn put_name(dst: *mut [u8; 16], words: [u64; 2]) {
    let w = dst.cast::<u64>();
    // SAFETY: the caller's contract: two aligned words.
    unsafe {
        core::ptr::write_volatile(w, words[0]);
        core::ptr::write_volatile(w.add(1), words[1]);
    }
}

/// A 16-byte name as two 8-byte words (for `put_name`).
///
/// # Safety
/// `name` must be 8-byte aligned.
#[inline(always)]
pub unsafe fn name(name: *const [u8; 16]) -> [u64; 2] {
    let w = name.cast::<u64>();
    // SAFETY: 16 readable bytes, aligned by the caller's contract.
    unsafe { [core::ptr::read_volatile(w), core::ptr::read_volatile(w.add(1))] }
}
