//! Pure model: no tokio, no aya, no terminal, no clock reads. Time is a field of each input.
pub mod advise;
pub mod clock;
pub mod correlate;
pub mod episode;
pub mod gc;
pub mod hiccup;
pub mod lease;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod net;
pub mod process;
pub mod stats;
pub mod stop;
pub mod timeline;
pub mod units;
pub mod window;
