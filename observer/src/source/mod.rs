//! Sources: everything that reads the kernel or the system and turns it into owned messages.
pub mod clock;
pub mod clock_steps;
pub mod files;
pub mod harvest;
pub mod host;
pub mod kallsyms;
pub mod kernel_hz;
pub mod lease_protocol;
pub mod lease_socket;
pub mod paused_now;
pub mod pending_waits;
pub mod recording;
pub mod ringbuf;
pub mod slot_view;
pub mod stacks;
