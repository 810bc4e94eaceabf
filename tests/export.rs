//! Export to observability stacks: a real Prometheus server scrapes pausewatch and answers a
//! PromQL query with the stops the test induced; the dashboards and alerting rules query only
//! metrics pausewatch exports (checked against a live endpoint, and by `promtool`); `--json
//! FILE` rotates by size with nothing lost between the files.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pausewatch_tests::*;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Prometheus server on loopback scraping `target` every second, with its own storage.
struct PromServer {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl PromServer {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pausewatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect(
                "starting prometheus (Debian package `prometheus`; `cargo xtask test` installs it)",
            );
        let s = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(&s.addr, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query that returns one sample (None: no sample yet).
    fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .expect("querying prometheus");
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("prometheus answer");
        assert_eq!(v["status"], "success", "{body}");
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql} gave several series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls a query until `ok` accepts its value; returns the value.
    fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let got = self.query(promql);
            if let Some(v) = got.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: last answer {got:?}; targets: {:?}; log: {}",
                http_get(&self.addr, "/api/v1/targets").map(|r| r.1),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_stops_the_test_induced() {
    require_root();
    let mut victim = victim("pw-promstop", 1, 60.0);
    let pid = victim.id();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let pw = Pausewatch::start(&["--pid", &pid.to_string(), "--prometheus", &metrics_addr]);
    let prom = PromServer::start(&metrics_addr);
    prom.wait_for(r#"up{job="pausewatch"}"#, |v| v == 1.0);

    // Three stops the test holds for 300 ms each: the ground truth.
    let (mut held_min, mut held_max) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        let t0 = Instant::now();
        signal(pid, libc::SIGSTOP);
        while proc_state(pid) != 'T' {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        // At least until SIGCONT is sent: the stop ends inside that call.
        held_min += seen.elapsed();
        signal(pid, libc::SIGCONT);
        held_max += t0.elapsed();
        std::thread::sleep(Duration::from_millis(200));
    }

    let series = format!(r#"{{cause="stopped",pid="{pid}",comm="pw-promstop"}}"#);
    let count = prom.wait_for(&format!("pausewatch_pause_seconds_count{series}"), |v| {
        v >= 3.0
    });
    let sum = prom
        .query(&format!("pausewatch_pause_seconds_sum{series}"))
        .unwrap();
    let le1 = prom
        .query(&format!(
            r#"pausewatch_pause_seconds_bucket{{cause="stopped",pid="{pid}",le="0.268435456"}}"#
        ))
        .unwrap();
    let le2 = prom
        .query(&format!(
            r#"pausewatch_pause_seconds_bucket{{cause="stopped",pid="{pid}",le="1.073741824"}}"#
        ))
        .unwrap();
    let up = prom
        .query(r#"pausewatch_processes{job="pausewatch"}"#)
        .unwrap();
    // How this host sees fsync and clock changes, for a fleet to find the hosts that pay the
    // syscall tracepoints' tax (on ours: none do).
    let hooks = prom.query(r#"pausewatch_syscall_hooks{mode="off_syscall_path"}"#);
    let lines = pw.stop();
    assert_eq!(hooks, Some(1.0), "syscall hooks mode not exported");
    let _ = (victim.kill(), victim.wait());

    eprintln!(
        "prometheus: {count} stops, {sum:.4} s; the test held {:.4}..{:.4} s",
        held_min.as_secs_f64(),
        held_max.as_secs_f64()
    );
    assert_eq!(count, 3.0, "three stops induced");
    assert!(
        sum + 0.003 >= held_min.as_secs_f64() && sum <= held_max.as_secs_f64() + 0.003,
        "stopped for {sum} s, the test held it {held_min:?}..{held_max:?}"
    );
    assert_eq!(
        (le1, le2),
        (0.0, 3.0),
        "300 ms stops fall between 268 ms and 1.07 s"
    );
    assert!(up >= 1.0);
    let notice = of_type(&lines, "notice")
        .find(|v| v["event"] == "prometheus")
        .expect("a notice naming the metrics address");
    assert_eq!(notice["addr"], metrics_addr.as_str());
}

/// Sample names a family exposes, from its `# TYPE` line.
fn sample_names(name: &str, ty: &str) -> Vec<String> {
    match ty {
        "counter" => vec![format!("{name}_total")],
        "histogram" => ["bucket", "sum", "count"]
            .iter()
            .map(|s| format!("{name}_{s}"))
            .collect(),
        _ => vec![name.to_string()],
    }
}

/// Every `pausewatch_*` metric name in a query or file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pausewatch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every (datasource type, expr) of a dashboard's panels, targets and annotations.
fn queries(v: &Value, ds: Option<&str>, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let ds = m.get("datasource").and_then(|d| d["type"].as_str()).or(ds);
            if let (Some(e), Some(d)) = (m.get("expr").and_then(Value::as_str), ds) {
                out.push((d.to_string(), e.to_string()));
            }
            for x in m.values() {
                queries(x, ds, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, ds, out)),
        _ => {}
    }
}

#[test]
fn dashboards_and_alert_rules_query_only_exported_metrics() {
    require_root();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let pw = Pausewatch::start(&["--prometheus", &metrics_addr]);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = http_get(&metrics_addr, "/metrics").expect("scraping pausewatch");
    let (missing_status, _) = http_get(&metrics_addr, "/nothing").unwrap();
    pw.stop();
    assert_eq!((status, missing_status), (200, 404));
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let (name, ty) = l.split_once(' ').unwrap();
            sample_names(name, ty)
        })
        .collect();
    assert!(
        exported.contains("pausewatch_pause_seconds_bucket"),
        "{text}"
    );
    // Host-wide, something paused within a second and a half.
    assert!(
        text.lines()
            .any(|l| l.starts_with("pausewatch_pause_seconds_count{") && !l.ends_with(" 0")),
        "{text}"
    );

    let mut dashboards = 0;
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        dashboards += 1;
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            d["title"].is_string() && d["panels"].is_array(),
            "{}",
            path.display()
        );
        let mut qs = Vec::new();
        queries(&d, None, &mut qs);
        let prom: Vec<_> = qs.iter().filter(|(t, _)| t == "prometheus").collect();
        let loki: Vec<_> = qs.iter().filter(|(t, _)| t == "loki").collect();
        assert!(prom.len() >= 10, "{}: {prom:?}", path.display());
        assert!(
            loki.iter()
                .any(|(_, e)| e.contains(r#"job="pausewatch""#) && e.contains("| json")),
            "{}: a logs panel over the NDJSON in Loki",
            path.display()
        );
        for (_, expr) in prom {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{}: {n} is not exported ({expr})",
                    path.display()
                );
            }
        }
    }
    assert!(dashboards >= 1, "no dashboard in dashboards/");

    let rules = repo().join("deploy/prometheus/pausewatch-rules.yml");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("running promtool (Debian package `prometheus`)");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let names = metric_names(&std::fs::read_to_string(&rules).unwrap());
    assert!(names.len() >= 6, "{names:?}");
    for n in names {
        assert!(exported.contains(&n), "rules: {n} is not exported");
    }
}

#[test]
fn json_file_rotates_by_size_without_losing_lines() {
    require_root();
    let dir = std::env::temp_dir().join(format!("pw-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw.ndjson");
    // Signals of a busy shell loop give a steady stream of lines.
    let mut busy = Command::new("sh")
        .args(["-c", "while :; do /bin/true; done"])
        .spawn()
        .unwrap();
    let out = Command::new(pausewatch_bin())
        .arg("--json")
        .arg(&file)
        .args([
            "--json-max-size",
            "16KiB",
            "--json-keep",
            "3",
            "--duration",
            "4s",
            "--min-pause",
            "1ms",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = (busy.kill(), busy.wait());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "--json FILE writes nothing to stdout"
    );
    let mut files = vec![file.clone()];
    files.extend((1..=3).map(|n| dir.join(format!("pw.ndjson.{n}"))));
    assert!(
        !dir.join("pw.ndjson.4").exists(),
        "only 3 rotated files are kept"
    );
    let mut all = Vec::new();
    for f in files.iter().rev() {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.len() <= 16 * 1024,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "{} ends mid-line", f.display());
        for l in text.lines() {
            all.push(serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")));
        }
    }
    validate_lines(&all);
    // The run's last lines are in the current file; nothing was dropped or failed.
    let drops = all
        .iter()
        .rev()
        .find(|v| v["type"] == "drops")
        .expect("a drops line");
    assert_eq!(drops["output_dropped_lines"], 0);
    assert_eq!(drops["output_failed_lines"], 0);
    let ts: Vec<u64> = all
        .iter()
        .filter_map(|v| v["ts_mono_ns"].as_u64())
        .collect();
    assert!(
        ts.len() == all.len() && ts.len() > 20,
        "{} lines",
        all.len()
    );
    assert_eq!(
        all.last().unwrap()["type"],
        "self_cost",
        "the run's last line is in FILE"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn merge_fixtures() -> Vec<PathBuf> {
    ["node-a", "node-b", "storage-1"]
        .iter()
        .map(|h| repo().join(format!("tests/fixtures/merge/{h}.ndjson")))
        .collect()
}

/// Compares with a merge golden file.
fn golden(name: &str, got: &str) {
    assert_golden(&repo().join("tests/fixtures/merge").join(name), got);
}

fn merge(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(pausewatch_bin())
        .arg("merge")
        .args(args)
        .output()
        .unwrap()
}

/// The fixtures are a real stale-write run of pausewatch-demo, its processes split over three
/// hosts with their own boot clocks, clock offsets and uncertainties: node-a's leader is
/// paused across its lease's expiry, node-b takes over, node-a writes with its old token and
/// the storage on storage-1 refuses it, within node-a's clock uncertainty of that write.
#[test]
fn merge_orders_three_hosts_and_says_where_order_is_unknown() {
    let files = merge_fixtures();
    for f in &files {
        validate_lines(&read_ndjson(f));
    }
    let args: Vec<&std::ffi::OsStr> = files.iter().map(|f| f.as_os_str()).collect();
    let text = merge(&args);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).unwrap();
    golden("expected.txt", &text);
    let mut json_args = args.clone();
    json_args.insert(0, "--json".as_ref());
    let json = merge(&json_args);
    assert!(json.status.success());
    let json = String::from_utf8(json.stdout).unwrap();
    golden("expected.ndjson", &json);

    // What the golden files say, spelled out: the DDIA sequence in order, and the refusal's
    // order against node-a's stale act unknown.
    let lines = parse_ndjson(&json);
    let seq = |pred: &dyn Fn(&Value) -> bool| {
        lines.iter().find(|v| pred(v)).unwrap()["merge"]["seq"]
            .as_u64()
            .unwrap()
    };
    let expired = seq(&|v| v["kind"] == "lease_expired_during_pause");
    let takeover = seq(&|v| v["host"] == "node-b" && v["event"] == "acquire");
    let stale = seq(&|v| v["host"] == "node-a" && v["event"] == "act" && v["token"] == 1);
    let refused = lines.iter().find(|v| v["event"] == "reject").unwrap();
    assert!(
        expired < takeover && takeover < stale,
        "{expired} {takeover} {stale}"
    );
    assert!(
        refused["merge"]["order_unknown_with"]
            .as_array()
            .unwrap()
            .contains(&stale.into()),
        "the refusal's order against the stale act is unknown: {refused}"
    );
    // Each host's own events keep their monotonic order.
    for host in ["node-a", "node-b", "storage-1"] {
        let mono: Vec<u64> = lines
            .iter()
            .filter(|v| v["host"] == host)
            .map(|v| v["ts_mono_ns"].as_u64().unwrap())
            .collect();
        assert!(mono.windows(2).all(|w| w[0] <= w[1]), "{host}: {mono:?}");
    }
}

#[test]
fn merge_skips_damaged_lines_and_refuses_what_is_not_a_recording() {
    let dir = std::env::temp_dir().join(format!("pw-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A recording cut off mid-line (a crash, a partial copy).
    let mut text = std::fs::read_to_string(&merge_fixtures()[0]).unwrap();
    let cut = text.len() - 40;
    text.truncate(cut);
    let damaged = dir.join("damaged.ndjson");
    std::fs::write(&damaged, &text).unwrap();
    let out = merge(&[damaged.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped 1 damaged line(s) (first: line 9: not JSON"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1 + 8);

    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "not a recording\n").unwrap();
    let missing = dir.join("missing.ndjson");
    let newer = dir.join("newer.ndjson");
    std::fs::write(
        &newer,
        std::fs::read_to_string(&merge_fixtures()[1])
            .unwrap()
            .replace("\"schema\":1", "\"schema\":2"),
    )
    .unwrap();
    for (file, want) in [
        (&notes, "is not a pausewatch recording: line 1: not JSON"),
        (&missing, "cannot read"),
        (
            &newer,
            "line 1: schema 2, but this pausewatch reads schema 1",
        ),
    ] {
        let out = merge(&[merge_fixtures()[0].as_os_str(), file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", file.display());
        assert!(out.stdout.is_empty(), "nothing written on error");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(want) && stderr.contains(file.to_str().unwrap()),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_schema_rejects_lines_that_break_it() {
    let good: Value = serde_json::from_str(
        std::fs::read_to_string(&merge_fixtures()[0])
            .unwrap()
            .lines()
            .find(|l| l.contains(r#""type":"stop""#))
            .unwrap(),
    )
    .unwrap();
    assert!(schema_errors(&good).is_empty(), "{good}");
    let broken = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = good.clone();
        f(v.as_object_mut().unwrap());
        schema_errors(&v)
    };
    assert!(
        !broken(&|m| {
            m.remove("wall_ns");
        })
        .is_empty(),
        "wall_ns is required"
    );
    assert!(
        !broken(&|m| {
            m.insert("type".into(), "pauses".into());
        })
        .is_empty()
    );
    assert!(
        !broken(&|m| {
            m.insert("duration_ns".into(), "4s".into());
        })
        .is_empty()
    );
    assert!(
        !broken(&|m| {
            m.insert("schema".into(), 2.into());
        })
        .is_empty()
    );
    assert!(
        !broken(&|m| {
            m.insert("kind".into(), "sigstop".into());
        })
        .is_empty()
    );
    assert!(
        broken(&|m| {
            m.insert("new_field".into(), 1.into());
        })
        .is_empty(),
        "new fields are allowed"
    );
}

/// A consumer that stops reading (a stuck log shipper) costs counted lines, not a stalled
/// agent: pausewatch keeps receiving every episode from the kernel while its output waits.
#[test]
fn a_stalled_consumer_costs_counted_lines_not_kernel_events() {
    require_root();
    let mut busy = Reaped(
        Command::new("sh")
            .args(["-c", "while :; do /bin/true; done"])
            .spawn()
            .unwrap(),
    );
    let mut pw = Command::new(pausewatch_bin())
        .args([
            "--json",
            "--json-buffer",
            "64KiB",
            "--min-pause",
            "1us",
            "--duration",
            "7s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads for 4 s: the pipe (64 KiB) and the queue (64 KiB) fill within moments.
    std::thread::sleep(Duration::from_secs(4));
    let mut text = String::new();
    use std::io::Read;
    pw.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let status = pw.wait().unwrap();
    let _ = (busy.kill(), busy.wait());
    let mut stderr = String::new();
    pw.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let lines = parse_ndjson(&text);
    validate_lines(&lines);
    let drops = of_type(&lines, "drops").next().expect("the drops line");
    let dropped = drops["output_dropped_lines"].as_u64().unwrap();
    assert!(dropped > 0, "nothing dropped while nobody read: {drops}");
    // The agent went on taking episodes from the kernel: ids are given as records arrive, so
    // the last pause line's id counts what the agent received, far more than reached the
    // reader; and the ring buffer lost few or none.
    let streamed = of_type(&lines, "pause")
        .map(|v| v["id"].as_u64().unwrap())
        .max()
        .unwrap();
    let pause_lines = of_type(&lines, "pause").count() as u64;
    let kernel_lost = drops["kernel"]["sched"].as_u64().unwrap();
    eprintln!(
        "{dropped} lines dropped; {streamed} episodes reached the agent, {pause_lines} pause lines read, {kernel_lost} lost in the kernel"
    );
    assert!(
        streamed > pause_lines,
        "{streamed} received vs {pause_lines} read"
    );
    assert!(
        kernel_lost * 10 < streamed,
        "the kernel lost {kernel_lost} of {streamed} episodes: the agent stalled"
    );
}
