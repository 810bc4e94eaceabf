//! Deployment files: the systemd unit passes `systemd-analyze verify`, pausewatch works with
//! exactly the capabilities the unit grants (run under that bounding set, it attaches and
//! reports a stop the test induces), and the Kubernetes DaemonSet asks for the same
//! capabilities, the host PID namespace and the host paths pausewatch reads.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pausewatch_tests::*;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy("systemd/pausewatch.service")).unwrap()
}

/// The values of a unit directive (space-separated, every occurrence).
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The unit's capabilities without the CAP_ prefix, e.g. `BPF`.
fn unit_caps() -> BTreeSet<String> {
    let unit = unit_text();
    let bounding: BTreeSet<String> = directive(&unit, "CapabilityBoundingSet")
        .iter()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ names").to_string())
        .collect();
    let ambient: BTreeSet<String> = directive(&unit, "AmbientCapabilities")
        .iter()
        .map(|c| c.strip_prefix("CAP_").unwrap().to_string())
        .collect();
    assert_eq!(bounding, ambient, "ambient and bounding sets differ");
    bounding
}

#[test]
fn the_systemd_unit_verifies_and_grants_less_than_root() {
    let dir = std::env::temp_dir().join(format!("pw-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The unit names the installed path; verify it against the binary under test.
    let unit = unit_text().replace(
        "/usr/local/bin/pausewatch",
        pausewatch_bin().to_str().unwrap(),
    );
    let verify = |text: &str| {
        let path = dir.join("pausewatch.service");
        std::fs::write(&path, text).unwrap();
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("running systemd-analyze (Debian package systemd)")
    };
    let ok = verify(&unit);
    assert!(
        ok.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The check has teeth: a missing binary fails it.
    let bad = verify(&unit.replace(
        pausewatch_bin().to_str().unwrap(),
        "/nonexistent/pausewatch",
    ));
    assert!(
        !bad.status.success(),
        "verify accepted a missing ExecStart binary"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let caps = unit_caps();
    assert!(caps.contains("BPF") && caps.contains("PERFMON"), "{caps:?}");
    // Far from root: what a compromised agent could do with the rest is what it may not do.
    for never in [
        "SYS_MODULE",
        "SYS_RAWIO",
        "NET_ADMIN",
        "SYS_TIME",
        "SETUID",
        "DAC_OVERRIDE",
    ] {
        assert!(
            !caps.contains(never),
            "the unit grants CAP_{never}: {caps:?}"
        );
    }
    assert_eq!(caps.len(), 7, "{caps:?}");
    let exec = directive(&unit_text(), "ExecStart").join(" ");
    assert!(
        exec.contains("--json /var/log/pausewatch/") && exec.contains("--prometheus 127.0.0.1:")
    );
    assert_eq!(directive(&unit_text(), "LogsDirectory"), ["pausewatch"]);
    assert_eq!(directive(&unit_text(), "RuntimeDirectory"), ["pausewatch"]);
}

#[test]
fn pausewatch_works_with_only_the_units_capabilities() {
    require_root();
    let caps = unit_caps();
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut victim = victim("pw-capvictim", 1, 30.0);
    let pid = victim.id();
    let dir = std::env::temp_dir().join(format!("pw-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("out.ndjson");
    // uid 0 with that bounding set: what systemd gives the unit.
    let mut pw = Command::new("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(pausewatch_bin())
        .arg("--json")
        .arg(&out_path)
        .args(["--pid", &pid.to_string(), "--duration", "6s"])
        .arg("--lease-socket")
        .arg(dir.join("lease.sock"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running setpriv (Debian package util-linux)");
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read().iter().any(|v| v["event"] == "attached") {
        assert!(
            Instant::now() < deadline && pw.try_wait().unwrap().is_none(),
            "pausewatch did not attach with capabilities {set}: {}",
            {
                let _ = pw.kill();
                let mut s = String::new();
                use std::io::Read;
                pw.stderr.take().unwrap().read_to_string(&mut s).unwrap();
                s
            }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once running it holds the running set only (it dropped CAP_SYSLOG and CAP_CHOWN after
    // start-up); its bounding set stays the unit's (dropping from it needs CAP_SETPCAP).
    let sets = cap_sets(pw.id());
    for (thread, t) in thread_cap_sets(pw.id()) {
        assert_eq!(t["CapEff"] & !running_set(), 0, "{thread}: {t:x?}");
    }
    assert_eq!(sets["CapEff"], running_set(), "{sets:x?}");
    assert_eq!(sets["CapPrm"], running_set(), "{sets:x?}");
    assert_eq!(
        sets["CapBnd"].count_ones() as usize,
        caps.len(),
        "{sets:x?} vs {caps:?}"
    );

    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    signal(pid, libc::SIGCONT);
    let status = pw.wait().unwrap();
    let _ = (victim.kill(), victim.wait());
    let lines = read();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "pausewatch exited with {status}");
    validate_lines(&lines);
    let stop = of_type(&lines, "stop")
        .find(|v| v["pid"] == pid)
        .expect("the induced stop, traced with the unit's capabilities");
    assert_eq!(stop["signal"], "SIGSTOP");
    let warns: Vec<&Value> = of_type(&lines, "notice")
        .filter(|v| v["level"] == "warn")
        .collect();
    assert!(
        warns.is_empty(),
        "degraded with the unit's capabilities: {warns:#?}"
    );
}

/// The capability sets of a process's main thread, from /proc/PID/status (CapInh, CapPrm,
/// CapEff, CapBnd, CapAmb).
fn cap_sets(pid: u32) -> std::collections::BTreeMap<String, u64> {
    cap_sets_of(&format!("/proc/{pid}/status"))
}

/// Capabilities belong to threads: every thread's sets, by thread name.
fn thread_cap_sets(pid: u32) -> Vec<(String, std::collections::BTreeMap<String, u64>)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let dir = e.unwrap().path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap();
            (
                name.trim().to_string(),
                cap_sets_of(dir.join("status").to_str().unwrap()),
            )
        })
        .collect()
}

fn cap_sets_of(status: &str) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(status)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap")
                .then(|| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        })
        .collect()
}

/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21, uprobes since Linux
/// 6.16), CAP_PERFMON (38), CAP_BPF (39): what the agent keeps once its programs are attached.
fn running_set() -> u64 {
    (1 << 2) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39)
}

/// Started as full root, pausewatch gives up everything but the running set once attached,
/// from every set including the bounding set, and says so; what it needs later (runtime
/// probes attached after start-up, fd paths, kernel stack names) is covered by the privileged
/// suite, which runs it as root and so with these four only.
#[test]
fn root_keeps_only_what_the_running_agent_needs() {
    require_root();
    let mut pw = Pausewatch::start(&["--duration", "20s"]);
    let attached = pw.wait_for(Duration::from_secs(30), |v| v["event"] == "attached");
    assert_eq!(attached["type"], "notice");
    let sets = cap_sets(pw.pid());
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(sets[set], running_set(), "{set}: {sets:x?}");
    }
    assert_eq!((sets["CapInh"], sets["CapAmb"]), (0, 0), "{sets:x?}");
    // The helper threads started before the drop hold nothing (NDJSON goes to a pipe here).
    let threads = thread_cap_sets(pw.pid());
    assert!(threads.len() >= 3, "{threads:x?}");
    for (thread, t) in &threads {
        let allowed = if thread.starts_with("pw-") {
            0
        } else {
            running_set()
        };
        for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            assert_eq!(t[set] & !allowed, 0, "{thread} {set}: {t:x?}");
        }
    }
    let lines = pw.stop();
    let n = of_type(&lines, "notice")
        .find(|v| v["event"] == "privileges")
        .expect("a privileges notice");
    assert_eq!(
        n["kept"],
        serde_json::json!([
            "CAP_BPF",
            "CAP_DAC_READ_SEARCH",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE"
        ]),
        "{n}"
    );
    assert_eq!(n["bounding"], true, "{n}");
    let dropped: Vec<&str> = n["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "CAP_SYSLOG",
        "CAP_CHOWN",
        "CAP_SYS_MODULE",
        "CAP_SETPCAP",
        "CAP_DAC_OVERRIDE",
        "CAP_NET_ADMIN",
    ] {
        assert!(dropped.contains(&c), "{c} not dropped: {n}");
    }
    validate_lines(&lines);
}

#[test]
fn the_daemonset_asks_for_what_pausewatch_needs() {
    let text = std::fs::read_to_string(deploy("kubernetes/pausewatch-daemonset.yaml")).unwrap();
    let d: Value = serde_yaml_ng::from_str(&text).expect("the DaemonSet parses as YAML");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["kind"], "DaemonSet");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"], true,
        "pausewatch observes every process of the node"
    );
    assert_eq!(
        d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"],
        "the selector matches the pods"
    );
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let add: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        add,
        unit_caps(),
        "the DaemonSet's capabilities are the unit's"
    );
    // Host paths pausewatch reads, mounted where it reads them.
    let mounts: BTreeSet<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for p in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/var/log/pausewatch",
        "/run/pausewatch",
    ] {
        assert!(mounts.contains(p), "{p} not mounted: {mounts:?}");
    }
    for m in c["volumeMounts"].as_array().unwrap() {
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("volume {} not defined", m["name"]));
        assert_eq!(vol["hostPath"]["path"], m["mountPath"], "{vol}");
    }
    // Its arguments are ones pausewatch accepts.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--prometheus", "0.0.0.0:9464"])
    );
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(port, 9464);
    let help = Command::new(pausewatch_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(a), "pausewatch does not know {a}");
    }
}
