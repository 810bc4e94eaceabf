//! TCP retransmissions: decoded, classified, and counted per process and per connection.
//!
//! A retransmission delays the data it carries the way a pause delays a thread: a timeout
//! retransmission (RTO) by at least the RTO that expired (counted once per expiry: the segments
//! resent after it share that outage), a fast retransmission by about one round trip (the
//! duplicate ACKs or SACKs that revealed the loss), a tail-loss probe by about two. Those are
//! the `delay_est_ns` figures: estimates, labelled as such.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use observer_common::{CA_STATE_UNKNOWN, RetransmitRecord};

use super::episode::comm_string;

/// How a segment came to be retransmitted, from the congestion state at the time
/// (include/net/tcp.h `enum tcp_ca_state`, v6.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// TCP_CA_Loss: the retransmission timer expired.
    Timeout,
    /// TCP_CA_Recovery: fast retransmit after duplicate ACKs or SACKs.
    Fast,
    /// Open, Disorder or CWR: a tail-loss probe or an RACK-driven early retransmit.
    Probe,
    /// A listener's SYN-ACK, retransmitted because the handshake's ACK did not come.
    Synack,
    Unknown,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Timeout => "timeout",
            Mode::Fast => "fast",
            Mode::Probe => "probe",
            Mode::Synack => "synack",
            Mode::Unknown => "unknown",
        }
    }

    fn from_record(r: &RetransmitRecord) -> Self {
        if r.synack != 0 {
            return Mode::Synack;
        }
        match r.ca_state {
            4 => Mode::Timeout,
            3 => Mode::Fast,
            0..=2 => Mode::Probe,
            CA_STATE_UNKNOWN => Mode::Unknown,
            _ => Mode::Unknown,
        }
    }
}

/// TCP state names (include/net/tcp_states.h).
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        _ => "unknown",
    }
}

/// A connection's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
}

impl Endpoints {
    /// "10.0.0.1:41234 -> 10.0.0.2:7000"
    pub fn describe(&self) -> String {
        let fmt = |(ip, port): (IpAddr, u16)| match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        format!("{} -> {}", fmt(self.local), fmt(self.remote))
    }
}

fn addr(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// One retransmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retransmit {
    pub ts_mono_ns: u64,
    /// Owning process (None: the socket was never seen in process context).
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: String,
    pub conn: Endpoints,
    /// Kernel socket address: the connection key (never exported).
    pub sock: u64,
    pub state: &'static str,
    pub mode: Mode,
    /// Segments retransmitted (TcpRetransSegs counts these, when `err` is 0 or positive).
    pub segs: u32,
    /// 0: sent; positive (NET_XMIT_DROP): handed to the device, whose queue dropped it,
    /// after TCP had counted it; negative errno: the retransmission failed (and the kernel's
    /// counter only counts it if the failure came after the send was attempted).
    pub err: i32,
    /// The RTO at the time (None for SYN-ACKs or when HZ is unknown).
    pub rto_ns: Option<u64>,
    pub srtt_ns: u64,
    /// Consecutive timeouts without progress (icsk_retransmits).
    pub timeouts_in_a_row: u32,
    pub total_retrans: u32,
    pub delay_est_ns: Option<u64>,
}

impl Retransmit {
    /// `hz`: the kernel's tick rate, to convert icsk_rto from jiffies.
    pub fn from_record(r: &RetransmitRecord, hz: Option<u64>) -> Self {
        let mode = Mode::from_record(r);
        let rto_ns = hz
            .filter(|_| r.synack == 0 && r.rto_jiffies > 0)
            .map(|hz| u64::from(r.rto_jiffies) * 1_000_000_000 / hz.max(1));
        let srtt_ns = u64::from(r.srtt_us) * 1000;
        let delay_est_ns = match mode {
            // The timer's own retransmission carries the outage; the rest of the queue, sent
            // again in the Loss state once ACKs return (icsk_retransmits back to 0), shares it.
            Mode::Timeout if r.retransmits > 0 => rto_ns,
            Mode::Timeout => Some(0),
            Mode::Fast if srtt_ns > 0 => Some(srtt_ns),
            Mode::Probe if srtt_ns > 0 => Some(2 * srtt_ns),
            _ => None,
        };
        Self {
            ts_mono_ns: r.ts_mono_ns,
            pid: (r.tgid != 0).then_some(r.tgid),
            tid: (r.tid != 0).then_some(r.tid),
            comm: comm_string(&r.comm),
            conn: Endpoints {
                local: (addr(r.family, &r.saddr), r.sport),
                remote: (addr(r.family, &r.daddr), r.dport),
            },
            sock: r.sock,
            state: state_name(r.state),
            mode,
            segs: u32::from(r.segs.max(1)),
            err: r.err,
            rto_ns,
            srtt_ns,
            timeouts_in_a_row: u32::from(r.retransmits),
            total_retrans: r.total_retrans,
            delay_est_ns,
        }
    }

    /// Whether the retransmission left TCP: sent, or dropped by the queue below it
    /// (`err` > 0). Both are what the kernel's TcpRetransSegs counts, and both delayed the
    /// data the same way.
    pub fn sent(&self) -> bool {
        self.err >= 0
    }

    /// "timeout retransmission on 10.0.0.1:5000 -> 10.0.0.2:80 (ESTABLISHED), RTO 200.0ms"
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} retransmission on {} ({})",
            self.mode.name(),
            self.conn.describe(),
            self.state
        );
        if let Some(rto) = self.rto_ns {
            s.push_str(&format!(", RTO {}", crate::model::units::fmt_ns(rto)));
        }
        if !self.sent() {
            s.push_str(&format!(", failed ({})", self.err));
        } else if self.err > 0 {
            s.push_str(", dropped by the device queue");
        }
        s
    }
}

/// Retransmission counts of one process or connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounts {
    /// Retransmissions that went out.
    pub retransmits: u64,
    /// Segments in them (what the kernel's TcpRetransSegs counts).
    pub segs: u64,
    pub timeouts: u64,
    pub fast: u64,
    pub probes: u64,
    pub synacks: u64,
    /// Retransmissions that failed to go out.
    pub failed: u64,
    pub delay_est_ns: u64,
    pub max_rto_ns: u64,
    pub last_mono_ns: u64,
}

impl NetCounts {
    fn add(&mut self, r: &Retransmit) {
        self.last_mono_ns = self.last_mono_ns.max(r.ts_mono_ns);
        if !r.sent() {
            self.failed += 1;
            return;
        }
        self.retransmits += 1;
        self.segs += u64::from(r.segs);
        match r.mode {
            Mode::Timeout => self.timeouts += 1,
            Mode::Fast => self.fast += 1,
            Mode::Probe => self.probes += 1,
            Mode::Synack => self.synacks += 1,
            Mode::Unknown => {}
        }
        self.delay_est_ns += r.delay_est_ns.unwrap_or(0);
        self.max_rto_ns = self.max_rto_ns.max(r.rto_ns.unwrap_or(0));
    }
}

/// Per-process retransmissions and their busiest connections.
#[derive(Debug, Clone, Default)]
pub struct ProcessNet {
    pub comm: String,
    pub total: NetCounts,
    /// Bounded by `MAX_CONNS_PER_PROCESS`; beyond it new connections only count in `total`.
    pub conns: HashMap<Endpoints, NetCounts>,
    pub conns_not_kept: u64,
}

/// Connections kept per process.
pub const MAX_CONNS_PER_PROCESS: usize = 64;

/// Retransmissions of every process (key None: sockets whose owner was never seen).
#[derive(Debug)]
pub struct NetTable {
    pub procs: HashMap<Option<u32>, ProcessNet>,
    max_procs: usize,
    /// Processes not kept because `max_procs` were.
    pub procs_not_kept: u64,
    pub host: NetCounts,
    /// The latest retransmissions, newest last (bounded by `RECENT`).
    pub recent: std::collections::VecDeque<Retransmit>,
}

/// Retransmissions kept in `NetTable::recent`.
pub const RECENT: usize = 256;

impl NetTable {
    pub fn new(max_procs: usize) -> Self {
        Self {
            procs: HashMap::new(),
            max_procs,
            procs_not_kept: 0,
            host: NetCounts::default(),
            recent: Default::default(),
        }
    }

    pub fn note(&mut self, r: &Retransmit) {
        self.host.add(r);
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(r.clone());
        if !self.procs.contains_key(&r.pid) && self.procs.len() >= self.max_procs {
            self.procs_not_kept += 1;
            return;
        }
        let p = self.procs.entry(r.pid).or_default();
        if p.comm.is_empty() {
            p.comm = r.comm.clone();
        }
        p.total.add(r);
        let room = p.conns.len() < MAX_CONNS_PER_PROCESS;
        match p.conns.get_mut(&r.conn) {
            Some(c) => c.add(r),
            None if room => p.conns.entry(r.conn).or_default().add(r),
            None => p.conns_not_kept += 1,
        }
    }

    pub fn of(&self, pid: u32) -> Option<&ProcessNet> {
        self.procs.get(&Some(pid))
    }
}

impl ProcessNet {
    /// Connections, most retransmissions first.
    pub fn busiest(&self) -> Vec<(&Endpoints, &NetCounts)> {
        let mut v: Vec<_> = self.conns.iter().collect();
        v.sort_by(|a, b| {
            b.1.retransmits
                .cmp(&a.1.retransmits)
                .then(a.0.local.1.cmp(&b.0.local.1))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{RecordKind, TASK_COMM_LEN};

    fn rec(ca_state: u8, segs: u16, err: i32) -> RetransmitRecord {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..6].copy_from_slice(b"sender");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        RetransmitRecord {
            kind: RecordKind::Retransmit as u32,
            tgid: 77,
            tid: 78,
            err,
            ts_mono_ns: 1,
            sock: 0xffff_8888_0000_1000,
            rto_jiffies: 50,
            srtt_us: 200,
            total_retrans: 3,
            family: 2,
            sport: 41_000,
            dport: 7_000,
            segs,
            state: 1,
            ca_state,
            retransmits: 1,
            synack: 0,
            saddr,
            daddr,
            comm,
        }
    }

    #[test]
    fn classifies_and_estimates_the_delay() {
        // HZ 250: 50 jiffies = 200 ms.
        let t = Retransmit::from_record(&rec(4, 1, 0), Some(250));
        assert_eq!(t.mode, Mode::Timeout);
        assert_eq!(t.rto_ns, Some(200_000_000));
        assert_eq!(t.delay_est_ns, Some(200_000_000));
        assert_eq!(t.conn.describe(), "10.0.0.1:41000 -> 10.0.0.2:7000");
        assert_eq!((t.pid, t.state), (Some(77), "established"));
        // The queue resent after the timer's retransmission shares its outage.
        let mut follow = rec(4, 3, 0);
        follow.retransmits = 0;
        let t = Retransmit::from_record(&follow, Some(250));
        assert_eq!((t.mode, t.delay_est_ns), (Mode::Timeout, Some(0)));
        let f = Retransmit::from_record(&rec(3, 2, 0), Some(250));
        assert_eq!((f.mode, f.delay_est_ns), (Mode::Fast, Some(200_000)));
        let p = Retransmit::from_record(&rec(0, 1, 0), None);
        assert_eq!(
            (p.mode, p.delay_est_ns, p.rto_ns),
            (Mode::Probe, Some(400_000), None)
        );
    }

    #[test]
    fn counts_segments_per_process_and_connection_and_failures_apart() {
        let mut t = NetTable::new(2);
        t.note(&Retransmit::from_record(&rec(4, 1, 0), Some(250)));
        t.note(&Retransmit::from_record(&rec(3, 3, 0), Some(250)));
        t.note(&Retransmit::from_record(&rec(4, 1, -105), Some(250)));
        let p = t.of(77).unwrap();
        assert_eq!(
            (p.total.retransmits, p.total.segs, p.total.failed),
            (2, 4, 1)
        );
        assert_eq!((p.total.timeouts, p.total.fast), (1, 1));
        assert_eq!(p.busiest().len(), 1);
        assert_eq!(t.host.segs, 4);
        // Beyond the cap, processes count only host-wide.
        for pid in [1, 2] {
            let mut r = rec(4, 1, 0);
            r.tgid = pid;
            t.note(&Retransmit::from_record(&r, Some(250)));
        }
        assert_eq!((t.procs.len(), t.procs_not_kept, t.host.segs), (2, 1, 6));
    }

    /// A retransmission the device queue dropped (NET_XMIT_DROP, err 1) had left TCP, which
    /// counted it in TcpRetransSegs: it counts as sent, and says what happened to it.
    #[test]
    fn a_retransmission_dropped_below_tcp_counts_as_the_kernel_counts_it() {
        let mut t = NetTable::new(2);
        let dropped = Retransmit::from_record(&rec(4, 2, 1), Some(250));
        assert!(dropped.sent());
        assert!(
            dropped.describe().ends_with("dropped by the device queue"),
            "{}",
            dropped.describe()
        );
        t.note(&dropped);
        let p = t.of(77).unwrap();
        assert_eq!(
            (p.total.retransmits, p.total.segs, p.total.failed),
            (1, 2, 0)
        );
    }

    #[test]
    fn ipv6_and_unknown_owners() {
        let mut r = rec(4, 1, 0);
        r.family = 10;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = Ipv6Addr::LOCALHOST.octets();
        r.tgid = 0;
        r.tid = 0;
        let t = Retransmit::from_record(&r, Some(1000));
        assert_eq!(t.conn.describe(), "[::1]:41000 -> [::1]:7000");
        assert_eq!(t.pid, None);
        assert_eq!(t.rto_ns, Some(50_000_000));
    }
}
