//! Sources: everything that reads the kernel or the system and turns it into owned messages.
pub mod clock;
pub mod harvest;
pub mod lease_protocol;
pub mod ringbuf;
