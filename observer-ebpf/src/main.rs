//! pausewatch kernel programs: one object, one module per cause family.
//!
//! Programs are thin: each entry point calls a `try_*` function that returns early on every
//! map miss. No CO-RE relocations exist for Rust eBPF, so kernel struct offsets arrive as
//! globals read from the running kernel's BTF by the loader (see `observer/src/probe/btf.rs`).
#![no_std]
#![no_main]
// BPF atomic add (BPF_ATOMIC | BPF_ADD): core::sync::atomic offers no RMW on this target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod clock;
mod config;
mod counters;
mod disk;
mod episodes;
mod memory;
mod net;
mod output;
mod runtimes;
mod sched;
mod stops;
mod storage;
mod switch_ins;
mod sync;
mod task;
mod words;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panics can be reached (no unwrap/indexing without checks); the verifier would reject
    // an unbounded loop anyway, so this is never executed.
    loop {}
}

/// GPL-compatible licence: needed for bpf_probe_read_kernel and tp_btf programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
