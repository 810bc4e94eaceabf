//! Exporters: NDJSON (per-process lines in `ndjson`, host lines in `host_lines`, memory and
//! disk lines in `memory_lines`); Prometheus (`prometheus`).
pub mod host_lines;
pub mod memory_lines;
pub mod ndjson;
pub mod prometheus;
pub mod spool;
