//! Exporters: NDJSON today; Prometheus arrives with issue 8.
pub mod ndjson;
