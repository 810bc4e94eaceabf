//! Exporters: NDJSON (per-process lines in `ndjson`, host lines in `host_lines`, memory and
//! disk lines in `memory_lines`); Prometheus arrives with issue 8.
pub mod host_lines;
pub mod memory_lines;
pub mod ndjson;
