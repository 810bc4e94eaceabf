//! TCP retransmissions, per process and per connection.
//!
//! tcp_retransmit_skb and tcp_retransmit_synack fire in softirq or timer context, where the
//! current task is whoever happened to be running. The socket's owner is therefore remembered
//! in process context, in the socket's own storage (tp_btf; a hash keyed by the socket's
//! address for the raw_tp fallback): at connect (inet_sock_set_state to
//! SYN_SENT), listen (to LISTEN) and every send (tcp_sendmsg_locked, so accepted sockets and
//! sockets passed between processes are owned by whoever sends on them), and forgotten when
//! the socket closes (inet_sock_set_state to CLOSE, tcp_destroy_sock).
//!
//! Socket fields are read with bpf_probe_read_kernel at offsets from the running kernel's BTF:
//! the tp_btf argument is a `struct sock *`, and the fields live in the larger
//! `inet_connection_sock` and `tcp_sock` around it, which direct loads may not reach.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{CA_STATE_UNKNOWN, DropCause, RecordKind, RetransmitRecord, SockOwner};

use crate::{
    config, output, sched,
    storage::SkStorageDef,
    task::{self, TaskPtr},
};

/// Socket owners, kept in the socket itself (tp_btf): a pointer walk instead of a hash lookup
/// on every send, and freed with the socket, so nothing is left behind.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SK_OWNERS")]
static SK_OWNERS: SkStorageDef<SockOwner> = SkStorageDef::new();

/// Socket owners by kernel socket address, for the raw_tp fallback (socket storage needs a
/// BTF-typed socket pointer). LRU: a socket freed without a CLOSE transition we saw ages out
/// instead of filling the map.
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

/// The recorded owner of socket `sk`.
#[inline(always)]
fn owner_of<const D: bool>(sk: u64) -> Option<SockOwner> {
    if D {
        // SAFETY: pointer into the socket's own storage, valid for this run.
        SK_OWNERS.get::<false>(sk as TaskPtr).map(|o| unsafe { *o })
    } else {
        // SAFETY: read-only lookup, copied out at once.
        unsafe { SOCK_OWNERS.get(&sk) }.copied()
    }
}

/// Remembers the current task as the socket's owner (when it is traced).
#[inline(always)]
fn own<const D: bool>(sk: u64) {
    let (tid, tgid) = task::current_ids();
    if sk == 0 || !sched::is_traced(tgid) {
        return;
    }
    if D {
        let Some(o) = SK_OWNERS.get::<true>(sk as TaskPtr) else {
            output::count_drop(DropCause::SockOwner);
            return;
        };
        // SAFETY: the socket's own storage; its updates run under the socket lock (sends,
        // state changes), and a retransmission reading it meanwhile sees an old or new owner.
        unsafe {
            if (*o).tgid != tgid {
                (*o).tgid = tgid;
                (*o).tid = tid;
                crate::task::current_comm_into(&raw mut (*o).comm);
            }
        }
        return;
    }
    if owner_of::<false>(sk).is_some_and(|o| o.tgid == tgid) {
        return;
    }
    let owner = SockOwner { tgid, tid, comm: crate::task::current_comm() };
    if SOCK_OWNERS.insert(&sk, &owner, 0).is_err() {
        output::count_drop(DropCause::SockOwner);
    }
}

#[inline(always)]
fn disown<const D: bool>(sk: u64) {
    if D {
        SK_OWNERS.delete(sk as TaskPtr);
    } else {
        let _ = SOCK_OWNERS.remove(&sk);
    }
}

#[inline(always)]
fn on_state<const D: bool>(sk: u64, newstate: u32) {
    match newstate {
        TCP_SYN_SENT | TCP_LISTEN => own::<D>(sk),
        TCP_CLOSE => disown::<D>(sk),
        _ => {}
    }
}

// inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    on_state::<true>(ctx.arg::<u64>(0), ctx.arg::<u64>(2) as u32);
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    on_state::<false>(ctx.arg::<u64>(0), ctx.arg::<u64>(2) as u32);
    0
}

// tcp_sendmsg_locked(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
//                    int size_goal)
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_btf(ctx: BtfTracePointContext) -> i32 {
    own::<true>(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_raw(ctx: RawTracePointContext) -> i32 {
    own::<false>(ctx.arg::<u64>(0));
    0
}

// tcp_destroy_sock(struct sock *sk)
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    disown::<true>(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    disown::<false>(ctx.arg::<u64>(0));
    0
}

/// Fills a record from a `sock_common` at `common` (a socket, or a request socket for
/// SYN-ACKs) and the owner of `owner_sk`.
#[inline(always)]
fn record<const D: bool>(off: &config::SockOffsets, owner_sk: u64, common: u64, err: i32, synack: bool) -> Option<RetransmitRecord> {
    let owner = owner_of::<D>(owner_sk);
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
fn on_retransmit<const D: bool>(sk: u64, skb: u64, err: i32) {
    let off = config::sock_offsets();
    let Some(mut rec) = record::<D>(&off, sk, sk, err, false) else { return };
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
    on_retransmit::<true>(ctx.arg::<u64>(0), ctx.arg::<u64>(1), err);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw(ctx: RawTracePointContext) -> i32 {
    let err = if config::retransmit_has_err() { ctx.arg::<u64>(2) as i32 } else { 0 };
    on_retransmit::<false>(ctx.arg::<u64>(0), ctx.arg::<u64>(1), err);
    0
}

// tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req): `req` begins
// with its own sock_common (the connection's addresses); `sk` is the listener.
#[inline(always)]
fn on_synack<const D: bool>(sk: u64, req: u64) {
    if let Some(rec) = record::<D>(&config::sock_offsets(), sk, req, 0, true) {
        output::emit(rec, DropCause::Retransmit);
    }
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_btf(ctx: BtfTracePointContext) -> i32 {
    on_synack::<true>(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_raw(ctx: RawTracePointContext) -> i32 {
    on_synack::<false>(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}
