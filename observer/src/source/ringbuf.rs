//! Draining the kernel ring buffer. The agent loop owns it inside an `AsyncFd` (epoll wakes
//! it; no poll-and-sleep) and drains it once more synchronously at exit, so nothing the kernel
//! wrote before detach is lost.
use aya::maps::{MapData, RingBuf};
use observer_common::{DecodeError, Record, decode};

/// A batch of decoded records (or decode errors) drained in one wakeup.
pub type Batch = Vec<Result<Record, DecodeError>>;

/// Most records taken per wakeup, so a storm cannot starve signals, ticks and drawing.
pub const MAX_BATCH: usize = 4096;

/// Drains up to `MAX_BATCH` records; returns them and whether the ring may hold more.
pub fn drain(ring: &mut RingBuf<MapData>) -> (Batch, bool) {
    let mut batch = Batch::new();
    while let Some(item) = ring.next() {
        batch.push(decode(&item));
        if batch.len() >= MAX_BATCH {
            return (batch, true);
        }
    }
    (batch, false)
}
