//! `--prometheus ADDR`: the metrics of `model::metrics` in the OpenMetrics text format
//! (prometheus-client's encoder), served over HTTP/1.1 (hyper) at `/metrics`.
//!
//! Every family is described on every scrape, even before it has a sample, so dashboards and
//! rules can be checked against a live endpoint. Metric names are in `FAMILIES`.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use observer_common::{DropCause, hist};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder},
    metrics::MetricType,
    registry::Registry,
};

use crate::model::{
    metrics::{Metrics, Series, SeriesKey},
    stats::Aggregate,
};

/// Shared between the agent loop (which updates) and the HTTP server (which encodes).
pub type Shared = Arc<Mutex<Metrics>>;

/// Every metric family pausewatch exports: (name as exposed without `_total`/`_bucket`
/// suffixes, type). Dashboards and rules may use only these (a test checks).
pub const FAMILIES: &[(&str, MetricType)] = &[
    ("pausewatch_pause_seconds", MetricType::Histogram),
    ("pausewatch_episode_seconds", MetricType::Histogram),
    ("pausewatch_process_steal_seconds", MetricType::Histogram),
    ("pausewatch_blocked_seconds", MetricType::Counter),
    ("pausewatch_retransmits", MetricType::Counter),
    ("pausewatch_retransmit_delay_seconds", MetricType::Counter),
    ("pausewatch_lease_incidents", MetricType::Counter),
    ("pausewatch_host_pauses", MetricType::Counter),
    ("pausewatch_host_pause_seconds", MetricType::Counter),
    ("pausewatch_steal_ratio", MetricType::Gauge),
    ("pausewatch_clock_uncertainty_seconds", MetricType::Gauge),
    ("pausewatch_clock_synchronized", MetricType::Gauge),
    ("pausewatch_clock_slew_offset_seconds", MetricType::Gauge),
    ("pausewatch_clock_steps", MetricType::Counter),
    ("pausewatch_clock_step_seconds", MetricType::Counter),
    ("pausewatch_dropped_events", MetricType::Counter),
    ("pausewatch_dropped_lines", MetricType::Counter),
    ("pausewatch_processes", MetricType::Gauge),
    ("pausewatch_folded_processes", MetricType::Counter),
    ("pausewatch_bpf_run_seconds", MetricType::Counter),
    ("pausewatch_bpf_runs", MetricType::Counter),
    ("pausewatch_disk_request_seconds", MetricType::Histogram),
    ("pausewatch_disk_bytes", MetricType::Counter),
    ("pausewatch_agent_cpu_seconds", MetricType::Counter),
    ("pausewatch_agent_resident_bytes", MetricType::Gauge),
    ("pausewatch_syscall_hooks", MetricType::Gauge),
];

/// Histogram bucket edges: every fourth power of two from 1.024 µs to 17.2 s. They are edges
/// of the kernel's own buckets, so the counts are exact.
const EDGE_SHIFTS: std::ops::RangeInclusive<u32> = 10..=34;

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// (upper edge in seconds, count in the bucket) at `EDGE_SHIFTS`, then +Inf; the encoder makes
/// them cumulative.
pub fn buckets(a: &Aggregate) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut below = 0u64;
    for shift in EDGE_SHIFTS.step_by(2) {
        let edge = 1u64 << shift;
        let n: u64 = (0..hist::BUCKETS - 1)
            .filter(|&i| hist::bounds(i).1 <= edge)
            .map(|i| a.hist[i])
            .sum();
        out.push((ns_to_s(edge), n - below));
        below = n;
    }
    out.push((f64::INFINITY, a.count.saturating_sub(below)));
    out
}

type Labels = Vec<(&'static str, String)>;

fn key_labels(k: &SeriesKey) -> Labels {
    let mut l = vec![("comm", k.comm.clone()), ("cgroup", k.cgroup.clone())];
    if let Some(pid) = k.pid {
        l.push(("pid", pid.to_string()));
    }
    l
}

fn with(base: &[(&'static str, String)], extra: &[(&'static str, &str)]) -> Labels {
    let mut l = base.to_vec();
    l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    l
}

fn histogram(
    e: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    a: &Aggregate,
) -> std::fmt::Result {
    e.encode_family(labels)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            ns_to_s(a.total_ns),
            a.count,
            &buckets(a),
            None,
        )
}

fn counter(e: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: f64) -> std::fmt::Result {
    e.encode_family(labels)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&v, None)
}

/// One counter per entry of a count map, labelled `label` = its key on top of `base`.
fn counts(
    e: &mut MetricEncoder,
    base: &[(&'static str, String)],
    label: &'static str,
    map: &BTreeMap<&'static str, u64>,
    value: impl Fn(u64) -> f64,
) -> std::fmt::Result {
    for (key, &n) in map {
        counter(e, &with(base, &[(label, key)]), value(n))?;
    }
    Ok(())
}

fn gauge(e: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: f64) -> std::fmt::Result {
    e.encode_family(labels)?.encode_gauge(&v)
}

const NO_LABELS: [(&str, &str); 0] = [];

/// Encodes one family; `body` writes its samples.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    body: impl FnOnce(&mut MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    let ty = FAMILIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or(MetricType::Unknown);
    let mut e = enc.encode_descriptor(name, help, None, ty)?;
    body(&mut e)
}

/// A histogram family with one sample set per series that has any (`pick` chooses which of
/// the series' aggregates).
fn series_histogram(
    enc: &mut DescriptorEncoder,
    series: &[(&Series, Labels)],
    name: &str,
    help: &str,
    pick: impl Fn(&Series) -> &Aggregate,
) -> std::fmt::Result {
    family(enc, name, help, |e| {
        for (s, l) in series {
            let a = pick(s);
            if a.count > 0 {
                histogram(e, l, a)?;
            }
        }
        Ok(())
    })
}

/// Writes every family of `m`.
pub fn encode(m: &Metrics, mut enc: DescriptorEncoder) -> std::fmt::Result {
    let series: Vec<(&Series, Labels)> = m.series.iter().map(|(k, s)| (s, key_labels(k))).collect();
    family(
        &mut enc,
        "pausewatch_pause_seconds",
        "Time threads were not running, per phase, by cause (runq, blocked, stopped: each thread phase; gc: runtime stop-the-world of the whole process)",
        |e| {
            for (s, l) in &series {
                for (i, cause) in Metrics::causes().iter().enumerate() {
                    let a = if i < s.phases.len() {
                        &s.phases[i]
                    } else {
                        &s.gc
                    };
                    if a.count > 0 {
                        histogram(e, &with(l, &[("cause", cause)]), a)?;
                    }
                }
            }
            Ok(())
        },
    )?;
    series_histogram(
        &mut enc,
        &series,
        "pausewatch_episode_seconds",
        "Whole thread pause episodes (every phase from leaving the CPU to running again)",
        |s| &s.episodes,
    )?;
    series_histogram(
        &mut enc,
        &series,
        "pausewatch_process_steal_seconds",
        "Hypervisor steal charged to the process's running threads (an estimate: a CPU's steal between two context switches, charged to the thread that held it; one sample per such run)",
        |s| &s.steal,
    )?;
    family(
        &mut enc,
        "pausewatch_blocked_seconds",
        "Time threads spent in uninterruptible sleep, by what they waited on",
        |e| {
            for (s, l) in &series {
                for (reason, &ns) in Metrics::block_reason_names().zip(s.blocked_ns.iter()) {
                    if ns > 0 {
                        counter(e, &with(l, &[("reason", reason)]), ns_to_s(ns))?;
                    }
                }
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_retransmits",
        "TCP segments retransmitted on the process's sockets, by mode (timeout, fast, probe, synack)",
        |e| {
            for (s, l) in &series {
                counts(e, l, "mode", &s.retransmits, |n| n as f64)?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_retransmit_delay_seconds",
        "Estimated delay retransmissions added to the process's data (an RTO retransmit delays it by at least the RTO)",
        |e| {
            for (s, l) in &series {
                if !s.retransmits.is_empty() {
                    counter(e, l, ns_to_s(s.retransmit_delay_ns))?;
                }
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_lease_incidents",
        "Lease incidents by kind (lease_expired_during_pause, acted_after_expiry, lease_at_risk, clock_step_moved_deadline)",
        |e| {
            for (s, l) in &series {
                counts(e, l, "kind", &s.incidents, |n| n as f64)?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_host_pauses",
        "Late wakes of pausewatch's control sleeper, by verdict (host_freeze, suspend, steal, runq, ...)",
        |e| counts(e, &[], "verdict", &m.host_pauses, |n| n as f64),
    )?;
    family(
        &mut enc,
        "pausewatch_host_pause_seconds",
        "Total lateness of the control sleeper, by verdict",
        |e| counts(e, &[], "verdict", &m.host_pause_ns, ns_to_s),
    )?;
    let h = &m.host;
    family(
        &mut enc,
        "pausewatch_steal_ratio",
        "Share of CPU time stolen by the hypervisor over the last sampled interval (0-1)",
        |e| gauge(e, &NO_LABELS, h.steal_ratio),
    )?;
    family(
        &mut enc,
        "pausewatch_clock_uncertainty_seconds",
        "Uncertainty of the wall clock (the kernel's NTP maxerror plus reading time)",
        |e| gauge(e, &NO_LABELS, ns_to_s(h.clock_uncertainty_ns)),
    )?;
    family(
        &mut enc,
        "pausewatch_clock_synchronized",
        "1 when the kernel reports the clock synchronised, else 0",
        |e| gauge(e, &NO_LABELS, f64::from(u8::from(h.clock_synchronized))),
    )?;
    family(
        &mut enc,
        "pausewatch_clock_slew_offset_seconds",
        "Offset the kernel's clock discipline is still slewing away",
        |e| gauge(e, &NO_LABELS, h.clock_slew_offset_ns as f64 / 1e9),
    )?;
    family(
        &mut enc,
        "pausewatch_clock_steps",
        "Steps of the wall clock (CLOCK_REALTIME jumping against CLOCK_MONOTONIC)",
        |e| counter(e, &NO_LABELS, m.clock_steps as f64),
    )?;
    family(
        &mut enc,
        "pausewatch_clock_step_seconds",
        "Sum of the sizes of the wall clock's steps, either direction",
        |e| counter(e, &NO_LABELS, ns_to_s(m.clock_step_abs_ns)),
    )?;
    family(
        &mut enc,
        "pausewatch_dropped_events",
        "Kernel events and aggregates lost (ring buffer full, map full), by cause; decode errors as cause=\"decode\"",
        |e| {
            for (c, &n) in DropCause::ALL.iter().zip(h.kernel_drops.iter()) {
                counter(e, &[("cause", c.name())], n as f64)?;
            }
            counter(e, &[("cause", "decode")], h.decode_errors as f64)
        },
    )?;
    family(
        &mut enc,
        "pausewatch_dropped_lines",
        "NDJSON lines not written: the consumer was too slow (reason=slow_consumer) or the write failed (reason=write_failed)",
        |e| {
            counter(
                e,
                &[("reason", "slow_consumer")],
                h.output_lines_dropped as f64,
            )?;
            counter(
                e,
                &[("reason", "write_failed")],
                h.output_lines_failed as f64,
            )
        },
    )?;
    family(
        &mut enc,
        "pausewatch_processes",
        "Processes in the agent's table",
        |e| gauge(e, &NO_LABELS, h.processes as f64),
    )?;
    family(
        &mut enc,
        "pausewatch_folded_processes",
        "Processes whose pauses were added to the comm=\"other\" series (the series cap was reached)",
        |e| counter(e, &NO_LABELS, m.folded_processes as f64),
    )?;
    family(
        &mut enc,
        "pausewatch_bpf_run_seconds",
        "Run time of each of pausewatch's BPF programs (they grow only while BPF statistics are on: one second a minute by default, throughout with --bpf-stats)",
        |e| {
            for c in &h.costs {
                counter(e, &[("program", c.name)], ns_to_s(c.run_time_ns))?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_bpf_runs",
        "Runs of each of pausewatch's BPF programs (they grow only while BPF statistics are on: one second a minute by default, throughout with --bpf-stats)",
        |e| {
            for c in &h.costs {
                counter(e, &[("program", c.name)], c.run_count as f64)?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_agent_cpu_seconds",
        "CPU time of the pausewatch agent (user and system)",
        |e| counter(e, &NO_LABELS, ns_to_s(h.agent_cpu_ns)),
    )?;
    family(
        &mut enc,
        "pausewatch_agent_resident_bytes",
        "Resident memory of the pausewatch agent",
        |e| gauge(e, &NO_LABELS, h.agent_rss_bytes as f64),
    )?;
    let disk_labels = |d: &crate::model::metrics::DiskSeries| -> Labels {
        vec![
            ("dev", d.dev.clone()),
            ("device", d.device.clone()),
            ("op", d.op.to_string()),
        ]
    };
    family(
        &mut enc,
        "pausewatch_disk_request_seconds",
        "Block requests from issue to the driver to completion, per disk and operation (read, write, flush: the cache flushes the device executed, discard)",
        |e| {
            for d in h.disks.iter().filter(|d| d.latency.count > 0) {
                histogram(e, &disk_labels(d), &d.latency)?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_disk_bytes",
        "Bytes the disk's requests carried, per disk and operation",
        |e| {
            for d in h.disks.iter().filter(|d| d.latency.count > 0) {
                counter(e, &disk_labels(d), d.bytes as f64)?;
            }
            Ok(())
        },
    )?;
    family(
        &mut enc,
        "pausewatch_syscall_hooks",
        "1 for how fsync-family calls and clock changes are seen: mode=\"off_syscall_path\" (ext4's fsync tracepoints and the CAP_SYS_TIME check, no cost to other syscalls), \"syscall_tracepoints\" (every syscall on the host takes the tracing path) or \"none\"",
        |e| {
            if h.syscall_hooks.is_empty() {
                return Ok(());
            }
            gauge(e, &[("mode", h.syscall_hooks)], 1.0)
        },
    )?;
    Ok(())
}

#[derive(Debug)]
struct MetricsCollector(Shared);

impl Collector for MetricsCollector {
    fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        encode(&m, enc)
    }
}

/// The whole exposition, as served.
pub fn render(shared: &Shared) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MetricsCollector(shared.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Scrapes served at once (Prometheus uses one connection per target).
const MAX_CONNECTIONS: usize = 16;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn serve(
    req: Request<hyper::body::Incoming>,
    shared: Shared,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render(&shared)),
        (&hyper::Method::GET, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "pausewatch: metrics at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: pausewatch serves GET /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

/// Binds `addr` (an error names the address) and serves it on the current runtime.
pub async fn start(addr: SocketAddr, shared: Shared) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {addr}: {e} (pick another --prometheus address)")
    })?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            // A flood of connections is refused (closed at once) beyond the cap, not served
            // at the agent's expense.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| serve(req, shared.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_at_powers_of_two() {
        let mut a = Aggregate::default();
        for v in [
            500,
            3_000,
            1_000_000,
            1_048_576,
            5_000_000_000,
            40_000_000_000,
        ] {
            a.record(v);
        }
        let b = buckets(&a);
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 6);
        let at = |edge_ns: u64| {
            b.iter()
                .find(|(e, _)| (*e - ns_to_s(edge_ns)).abs() < 1e-15)
                .unwrap()
                .1
        };
        assert_eq!(at(1 << 10), 1);
        assert_eq!(at(1 << 12), 1);
        // 1 ms is below 2^20 ns; 2^20 ns itself is in the next bucket.
        assert_eq!(at(1 << 20), 1);
        assert_eq!(at(1 << 22), 1);
        assert_eq!(at(1 << 32), 0, "5 s is above 2^32 ns");
        assert_eq!(at(1 << 34), 1);
        assert_eq!(
            b.last().unwrap(),
            &(f64::INFINITY, 1),
            "40 s is above the last edge"
        );
    }

    #[test]
    fn every_family_is_described_even_without_samples() {
        let shared: Shared = Arc::new(Mutex::new(Metrics::new(8, false)));
        let text = render(&shared);
        for (name, ty) in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {name} {}", ty.as_str())),
                "{name} missing in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_syscall_hooks_mode_is_a_labelled_gauge() {
        let mut m = Metrics::new(8, false);
        m.host.syscall_hooks = "off_syscall_path";
        let text = render(&Arc::new(Mutex::new(m)));
        assert!(
            text.contains(r#"pausewatch_syscall_hooks{mode="off_syscall_path"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn disks_are_histograms_per_device_and_operation() {
        let mut m = Metrics::new(8, false);
        let mut latency = Aggregate::default();
        latency.record(3_000_000);
        latency.record(5_000);
        m.host.disks = vec![
            crate::model::metrics::DiskSeries {
                dev: "7:0".into(),
                device: "loop0".into(),
                op: "flush",
                latency,
                bytes: 0,
            },
            crate::model::metrics::DiskSeries {
                dev: "254:0".into(),
                device: "vda".into(),
                op: "read",
                latency: Aggregate::default(),
                bytes: 0,
            },
        ];
        let text = render(&Arc::new(Mutex::new(m)));
        for sample in [
            r#"pausewatch_disk_request_seconds_count{dev="7:0",device="loop0",op="flush"} 2"#,
            r#"pausewatch_disk_request_seconds_bucket{le="0.000016384",dev="7:0",device="loop0",op="flush"} 1"#,
            r#"pausewatch_disk_request_seconds_bucket{le="0.004194304",dev="7:0",device="loop0",op="flush"} 2"#,
            r#"pausewatch_disk_bytes_total{dev="7:0",device="loop0",op="flush"} 0.0"#,
        ] {
            assert!(text.contains(sample), "{sample} missing in\n{text}");
        }
        assert!(
            !text.contains(r#"op="read""#),
            "an operation without requests: {text}"
        );
    }

    #[test]
    fn samples_carry_their_labels_and_escape_values() {
        let mut m = Metrics::new(8, true);
        let mut stats: [Aggregate; observer_common::NUM_STATS] = Default::default();
        stats[0].record(2_000_000);
        stats[observer_common::STAT_EPISODE].record(2_000_000);
        stats[observer_common::STAT_STEAL].record(30_000_000);
        m.on_process(
            42,
            "we\"ird",
            &stats,
            &Default::default(),
            || "/a".into(),
            0,
        );
        let text = render(&Arc::new(Mutex::new(m)));
        assert!(
            text.contains(r#"pausewatch_pause_seconds_bucket{le="+Inf",comm="we\"ird",cgroup="/a",pid="42",cause="runq"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pausewatch_pause_seconds_bucket{le="0.004194304",comm="we\"ird",cgroup="/a",pid="42",cause="runq"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pausewatch_pause_seconds_count{comm="we\"ird",cgroup="/a",pid="42",cause="runq"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"pausewatch_pause_seconds_sum{comm="we\"ird",cgroup="/a",pid="42",cause="runq"} 0.002"#), "{text}");
        assert!(
            text.contains(
                r#"pausewatch_episode_seconds_count{comm="we\"ird",cgroup="/a",pid="42"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pausewatch_process_steal_seconds_sum{comm="we\"ird",cgroup="/a",pid="42"} 0.03"#
            ),
            "{text}"
        );
        assert!(
            !text.contains(r#"pausewatch_pause_seconds_count{comm="we\"ird",cgroup="/a",pid="42",cause="steal"}"#),
            "steal is not a pause phase: {text}"
        );
    }
}
