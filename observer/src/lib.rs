//! pausewatch's agent as a library: the binary (`main.rs`) is wiring over these modules, and
//! the fuzz targets (`fuzz/`) and the corpus regression tests reach the parsers through it.
pub mod agent;
pub mod agent_memory;
pub mod cli;
pub mod export;
pub mod fuzzing;
pub mod lease_client;
pub mod merge_cmd;
pub mod model;
pub mod probe;
pub mod replay_cmd;
pub mod runtimes;
pub mod source;
pub mod tui;
