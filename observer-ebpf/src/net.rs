//! TCP retransmissions, per process and per connection.
//!
//! tcp_retransmit_skb and tcp_retransmit_synack fire in softirq or timer context, where the
//! current task is whoever happened to be running. The socket's owner is therefore remembered
//! in process context, keyed by the socket's address: at connect (inet_sock_set_state to
//! SYN_SENT), listen (to LISTEN) and every send (tcp_sendmsg_locked, so accepted sockets and
//! sockets passed between processes are owned by whoever sends on them), and forgotten when
//! the socket closes (inet_sock_set_state to CLOSE, tcp_destroy_sock).
//!
//! Socket fields are read with bpf_probe_read_kernel at offsets from the running kernel's BTF:
//! the tp_btf argument is a `struct sock *`, and the fields live in the larger
//! `inet_connection_sock` and `tcp_sock` around it, which direct loads may not reach.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{CA_STATE_UNKNOWN, DropCause, RecordKind, RetransmitRecord, SockOwner};

use crate::{config, output, sched};

/// Socket owners by kernel socket address. LRU: a socket freed without a CLOSE transition we
/// saw ages out instead of filling the map.
#[map]
static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const AF_INET6: u16 = 10;

#[inline(always)]
fn rd<T: Copy + Default>(base: u64, off: usize) -> T {
    // SAFETY: bpf_probe_read_kernel copies through the fault-tolerant path; a bad address
    // yields an error (read as the default), never a fault.
    unsafe { bpf_probe_read_kernel((base as usize + off) as *const T) }.unwrap_or_default()
}

/// Remembers the current task as the socket's owner (when it is traced).
#[inline(always)]
fn own(sk: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if sk == 0 || !sched::is_traced(tgid) {
        return;
    }
    // SAFETY: read-only lookup; a concurrent update can only make us rewrite the same owner.
    if let Some(o) = unsafe { SOCK_OWNERS.get(&sk) }
        && o.tgid == tgid
    {
        return;
    }
    let owner = SockOwner { tgid, tid, comm: crate::task::current_comm() };
    if SOCK_OWNERS.insert(&sk, &owner, 0).is_err() {
        output::count_drop(DropCause::SockOwner);
    }
}

#[inline(always)]
fn disown(sk: u64) {
    let _ = SOCK_OWNERS.remove(&sk);
}

#[inline(always)]
fn on_state(sk: u64, newstate: u32) {
    match newstate {
        TCP_SYN_SENT | TCP_LISTEN => own(sk),
        TCP_CLOSE => disown(sk),
        _ => {}
    }
}

// inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    on_state(ctx.arg::<u64>(0), ctx.arg::<u64>(2) as u32);
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    on_state(ctx.arg::<u64>(0), ctx.arg::<u64>(2) as u32);
    0
}

// tcp_sendmsg_locked(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
//                    int size_goal)
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_btf(ctx: BtfTracePointContext) -> i32 {
    own(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_raw(ctx: RawTracePointContext) -> i32 {
    own(ctx.arg::<u64>(0));
    0
}

// tcp_destroy_sock(struct sock *sk)
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    disown(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    disown(ctx.arg::<u64>(0));
    0
}

/// Fills a record from a `sock_common` at `common` (a socket, or a request socket for
/// SYN-ACKs) and the owner of `owner_sk`.
#[inline(always)]
fn record(
    off: &config::SockOffsets,
    owner_sk: u64,
    common: u64,
    err: i32,
    synack: bool,
) -> Option<RetransmitRecord> {
    // SAFETY: read-only lookup, copied out at once.
    let owner = unsafe { SOCK_OWNERS.get(&owner_sk) }.copied();
    match owner {
        Some(o) if !sched::is_traced(o.tgid) => return None,
        None if config::filter_pids() => return None,
        _ => {}
    }
    let o = owner.unwrap_or_default();
    let family: u16 = rd(common, off.family);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 && off.v6_daddr != 0 {
        saddr = rd(common, off.v6_rcv_saddr);
        daddr = rd(common, off.v6_daddr);
    } else {
        let s: [u8; 4] = rd(common, off.rcv_saddr);
        let d: [u8; 4] = rd(common, off.daddr);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    Some(RetransmitRecord {
        kind: RecordKind::Retransmit as u32,
        tgid: o.tgid,
        tid: o.tid,
        err,
        ts_mono_ns: sched::now(),
        sock: owner_sk,
        rto_jiffies: 0,
        srtt_us: 0,
        total_retrans: 0,
        family,
        sport: rd(common, off.num),
        dport: u16::from_be(rd(common, off.dport)),
        segs: 1,
        state: rd(common, off.state),
        ca_state: CA_STATE_UNKNOWN,
        retransmits: 0,
        synack: synack as u8,
        saddr,
        daddr,
        comm: o.comm,
    })
}

/// `rto_jiffies` carries icsk_rto in jiffies; the agent converts it with the kernel's HZ.
#[inline(always)]
fn on_retransmit(sk: u64, skb: u64, err: i32) {
    let off = config::sock_offsets();
    let Some(mut rec) = record(&off, sk, sk, err, false) else { return };
    rec.rto_jiffies = rd(sk, off.rto);
    rec.srtt_us = rd::<u32>(sk, off.srtt) >> 3;
    rec.total_retrans = rd(sk, off.total_retrans);
    rec.retransmits = rd(sk, off.retransmits);
    rec.ca_state = (rd::<u8>(sk, off.ca_state_byte) >> off.ca_state_shift) & 0x1f;
    // TCP_SKB_CB(skb)->tcp_gso_segs: `struct tcp_skb_cb` begins with seq and end_seq.
    let segs: u16 = rd(skb, off.skb_cb + 8);
    rec.segs = segs.max(1);
    output::emit(rec, DropCause::Retransmit);
}

// tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err])
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let err = if config::retransmit_has_err() { ctx.arg::<u64>(2) as i32 } else { 0 };
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1), err);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw(ctx: RawTracePointContext) -> i32 {
    let err = if config::retransmit_has_err() { ctx.arg::<u64>(2) as i32 } else { 0 };
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1), err);
    0
}

// tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req): `req` begins
// with its own sock_common (the connection's addresses); `sk` is the listener.
#[inline(always)]
fn on_synack(sk: u64, req: u64) {
    if let Some(rec) = record(&config::sock_offsets(), sk, req, 0, true) {
        output::emit(rec, DropCause::Retransmit);
    }
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_btf(ctx: BtfTracePointContext) -> i32 {
    on_synack(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_raw(ctx: RawTracePointContext) -> i32 {
    on_synack(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}
