//! TCP retransmissions measured by real eBPF, against the kernel's own TcpRetransSegs counter
//! (`nstat`) of a network namespace that only the test's sender uses. Two namespaces joined by
//! a veth pair; loss is injected with an nftables drop rule for a while; all traffic stays
//! inside them.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use pausewatch_tests::*;
use serde_json::Value;

/// Two namespaces joined by veth, removed (with the veth pair) when dropped.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let (a, b) = (format!("pw{tag}a{id}"), format!("pw{tag}b{id}"));
        let (va, vb) = (format!("pwa{id}"), format!("pwb{id}"));
        let pair = Self {
            a: a.clone(),
            b: b.clone(),
        };
        run_cmd(&["ip", "netns", "add", &a]);
        run_cmd(&["ip", "netns", "add", &b]);
        run_cmd(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        run_cmd(&["ip", "link", "set", &va, "netns", &a]);
        run_cmd(&["ip", "link", "set", &vb, "netns", &b]);
        run_cmd(&["ip", "-n", &a, "addr", "add", "10.231.0.1/24", "dev", &va]);
        run_cmd(&["ip", "-n", &b, "addr", "add", "10.231.0.2/24", "dev", &vb]);
        run_cmd(&[
            "ip",
            "-n",
            &a,
            "addr",
            "add",
            "fd77::1/64",
            "dev",
            &va,
            "nodad",
        ]);
        run_cmd(&[
            "ip",
            "-n",
            &b,
            "addr",
            "add",
            "fd77::2/64",
            "dev",
            &vb,
            "nodad",
        ]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            run_cmd(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run_cmd(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// TcpRetransSegs of namespace `ns`, as nstat reads it (absolute, history untouched).
    fn retrans_segs(&self, ns: &str) -> u64 {
        let out = self
            .exec(ns, &["nstat", "-asz", "TcpRetransSegs"])
            .output()
            .expect("running nstat (iproute2)");
        assert!(out.status.success(), "nstat failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some("TcpRetransSegs")).then(|| f.next()?.parse().ok())?
            })
            .expect("TcpRetransSegs in nstat output")
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn retransmissions_match_the_namespaces_tcp_counter() {
    require_root();
    let net = NetnsPair::new("r");
    for (listen, remote, family) in [
        ("10.231.0.2:7000", "10.231.0.2", "ipv4"),
        ("[fd77::2]:7000", "fd77::2", "ipv6"),
    ] {
        lossy_connection(&net, listen, remote, family);
    }
}

/// One connection from namespace a to b whose packets are dropped for 1.5 s; pausewatch's
/// retransmitted segments for the sender must equal a's TcpRetransSegs delta.
fn lossy_connection(net: &NetnsPair, listen: &str, remote: &str, family: &str) {
    let pw = Pausewatch::start(&["--min-pause", "1s", "--no-lease-socket"]);
    let w = workload_bin();
    let w = w.to_str().unwrap();
    let mut server = net
        .exec(&net.b, &[w, "tcp-serve", listen])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server");
    let mut first = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .expect("server ready line");
    let before = net.retrans_segs(&net.a);
    let sender = net
        .exec(&net.a, &[w, "tcp-send", listen, "4"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the sender");
    std::thread::sleep(Duration::from_millis(800));
    // Everything the sender sends is dropped on arrival for 1.5 s: RTO retransmissions with
    // backoff, then the queue resent in the Loss state once the rule is gone.
    let nft = |cmd: &str| {
        let st = net
            .exec(&net.b, &["nft", cmd])
            .status()
            .expect("running nft (Debian package nftables)");
        assert!(st.success(), "nft {cmd} failed");
    };
    nft(
        "add table inet pwtest; add chain inet pwtest input { type filter hook input priority 0; }; add rule inet pwtest input tcp dport 7000 drop",
    );
    std::thread::sleep(Duration::from_millis(1500));
    nft("delete table inet pwtest");
    let out = sender.wait_with_output().expect("sender");
    assert!(out.status.success(), "sender failed");
    let sent: Value = serde_json::from_slice(&out.stdout).expect("sender's report");
    assert!(server.wait().expect("server").success());
    let after = net.retrans_segs(&net.a);
    std::thread::sleep(Duration::from_millis(300));
    let lines = pw.stop();

    let pid = sent["pid"].as_u64().unwrap();
    let ours: Vec<&Value> = of_type(&lines, "retransmit")
        .filter(|v| v["pid"] == pid)
        .collect();
    // TcpRetransSegs counts what left TCP: sent (err 0) or dropped by the device queue below
    // (NET_XMIT_DROP, err > 0: veth's backlog overflows when the queue is resent at once).
    let segs: u64 = ours
        .iter()
        .filter(|v| v["err"].as_i64().unwrap_or(-1) >= 0)
        .map(|v| v["segs"].as_u64().unwrap())
        .sum();
    assert!(after > before, "the drop caused no retransmissions");
    let (local_addr, local_port) = sent["local"].as_str().unwrap().rsplit_once(':').unwrap();
    // What else was seen of this connection, to tell a lost record from a misattributed one
    // should the totals differ.
    let same_connection = |v: &&Value| {
        v["local"]["addr"] == local_addr.trim_matches(['[', ']'])
            && v["local"]["port"].as_u64().unwrap_or(0).to_string() == local_port
    };
    let elsewhere: Vec<String> = of_type(&lines, "retransmit")
        .filter(same_connection)
        .filter(|v| v["pid"] != pid || v["err"].as_i64().unwrap_or(-1) < 0)
        .map(|v| format!("pid {} err {} segs {}", v["pid"], v["err"], v["segs"]))
        .collect();
    let drops = of_type(&lines, "drops").last().unwrap();
    assert_eq!(
        segs,
        after - before,
        "{family}: pausewatch's retransmitted segments for the sender vs the namespace's TcpRetransSegs; {} records, the connection's records with another pid or an error: {elsewhere:?}; kernel drops {}",
        ours.len(),
        drops["kernel"]
    );
    for v in &ours {
        assert_eq!(v["family"], family);
        assert_eq!(v["local"]["addr"], local_addr.trim_matches(['[', ']']));
        assert_eq!(v["local"]["port"].as_u64().unwrap().to_string(), local_port);
        assert_eq!(v["remote"]["addr"], remote);
        assert_eq!(v["remote"]["port"], 7000);
        assert_eq!(v["comm"], "pw-workload");
    }
    // Nothing answered for 1.5 s: the retransmission timer fired, with exponential backoff.
    let timeouts: Vec<u64> = ours
        .iter()
        .filter(|v| v["mode"] == "timeout" && v["timeouts_in_a_row"].as_u64() > Some(0))
        .map(|v| v["rto_ns"].as_u64().unwrap())
        .collect();
    assert!(timeouts.len() >= 2, "timer retransmissions: {timeouts:?}");
    assert!(timeouts.windows(2).all(|w| w[1] >= w[0]), "{timeouts:?}");
    assert!(
        timeouts[0] >= 200_000_000,
        "Linux's minimum RTO is 200 ms: {timeouts:?}"
    );
    let summary = of_type(&lines, "net_summary").next().expect("net_summary");
    let proc_ = summary["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the sender in net_summary");
    assert_eq!(proc_["totals"]["segs"], segs);
    assert!(proc_["totals"]["delay_est_ns"].as_u64().unwrap() >= timeouts.iter().sum::<u64>());
}
