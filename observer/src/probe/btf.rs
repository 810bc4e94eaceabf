//! Kernel struct field offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE field relocations, so the offsets the programs need are read here at
//! startup and passed as globals. aya-obj parses BTF but keeps type and member access private,
//! and the one dedicated crate (btf-rs) is LGPL, so this is a small length-checked reader of
//! just what we need: named struct → member → bit offset, through anonymous unions/structs.
//! Format: include/uapi/linux/btf.h, v6.18 (Documentation/bpf/btf.rst).
use std::path::Path;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source}; pausewatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not BTF ({what})")]
    Malformed { path: String, what: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {strukt}.{member} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;

/// One parsed type: its kind, name, `size_or_type` and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    name_off: u32,
    size_or_type: u32,
    extra: usize,
}

pub struct Btf {
    data: Vec<u8>,
    str_start: usize,
    str_len: usize,
    /// Index = type id − 1.
    types: Vec<TypeEntry>,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(p, data)
    }

    fn parse(path: String, data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = |what: &str| BtfError::Malformed {
            path: path.clone(),
            what: what.to_string(),
        };
        let u32_at = |d: &[u8], at: usize| -> Option<u32> {
            d.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("file too short"))?;
        if magic != BTF_MAGIC {
            return Err(bad("bad magic; only little-endian BTF is supported"));
        }
        let hdr_len = u32_at(&data, 4).ok_or_else(|| bad("truncated header"))? as usize;
        let field = |i: usize| {
            u32_at(&data, 8 + 4 * i)
                .map(|v| v as usize)
                .ok_or_else(|| bad("truncated header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let type_start = hdr_len
            .checked_add(type_off)
            .ok_or_else(|| bad("type section offset"))?;
        let type_end = type_start
            .checked_add(type_len)
            .ok_or_else(|| bad("type section length"))?;
        let str_start = hdr_len
            .checked_add(str_off)
            .ok_or_else(|| bad("string section offset"))?;
        if type_end > data.len()
            || str_start
                .checked_add(str_len)
                .is_none_or(|e| e > data.len())
        {
            return Err(bad("section past end of file"));
        }
        let mut types = Vec::new();
        let mut at = type_start;
        while at < type_end {
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(&data, at),
                u32_at(&data, at + 4),
                u32_at(&data, at + 8),
            ) else {
                return Err(bad("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let trailing = match kind {
                1 | 14 | 17 => 4,                      // INT, VAR, DECL_TAG
                3 => 12,                               // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen as usize, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen as usize,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                _ => return Err(bad(&format!("unknown type kind {kind}"))),
            };
            types.push(TypeEntry {
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                name_off,
                size_or_type,
                extra,
            });
            at = extra + trailing;
        }
        if at != type_end {
            return Err(bad("type section does not end on a type boundary"));
        }
        Ok(Self {
            data,
            str_start,
            str_len,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.str_start + off as usize;
        let end = self.str_start + self.str_len;
        let Some(s) = self.data.get(start..end) else {
            return b"";
        };
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn ty(&self, id: u32) -> Option<&TypeEntry> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    fn u32_at(&self, at: usize) -> u32 {
        // In range: parse() checked that each type's trailing data lies inside the section.
        self.data
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`, looking inside anonymous unions and structs.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let bits = self.member_bit_offset(strukt, member)?;
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.into(),
                member: member.into(),
            });
        }
        Ok(bits / 8)
    }

    /// Number of arguments a tracepoint passes to BPF programs: the parameters of the
    /// `btf_trace_NAME` function-pointer typedef, minus its leading `void *` context.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Option<u32> {
        let name = format!("btf_trace_{tracepoint}");
        let td = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == name.as_bytes())?;
        let ptr = self.ty(td.size_or_type)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.ty(self.resolve(ptr.size_or_type))?;
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }

    /// Bit offset of `member` in `struct strukt` (bitfields included).
    pub fn member_bit_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let sid = self
            .types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == strukt.as_bytes()
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let bits = self
            .find_member(sid as u32 + 1, member.as_bytes(), 0, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })?;
        Ok(bits)
    }

    fn find_member(&self, id: u32, member: &[u8], base_bits: u32, depth: u32) -> Option<u32> {
        let t = self.ty(id)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        // First the direct members, then the anonymous ones, so a same-named member of a
        // nested anonymous aggregate never shadows a direct one.
        let members = (0..t.vlen as usize).map(|i| {
            let at = t.extra + 12 * i;
            let off = self.u32_at(at + 8);
            let bit_off = if t.kind_flag { off & 0x00ff_ffff } else { off };
            (self.u32_at(at), self.u32_at(at + 4), base_bits + bit_off)
        });
        if let Some((_, _, bits)) = members.clone().find(|&(n, _, _)| self.name(n) == member) {
            return Some(bits);
        }
        members
            .filter(|&(n, _, _)| self.name(n).is_empty())
            .find_map(|(_, ty, bits)| self.find_member(self.resolve(ty), member, bits, depth + 1))
    }
}

/// The `task_struct` offsets the scheduler programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub comm: u32,
    pub group_leader: u32,
    pub on_cpu: u32,
    pub start_time: u32,
}

impl TaskOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            pid: btf.member_offset("task_struct", "pid")?,
            tgid: btf.member_offset("task_struct", "tgid")?,
            comm: btf.member_offset("task_struct", "comm")?,
            group_leader: btf.member_offset("task_struct", "group_leader")?,
            on_cpu: btf.member_offset("task_struct", "on_cpu")?,
            start_time: btf.member_offset("task_struct", "start_time")?,
        })
    }
}

/// The chain `task->se.cfs_rq->rq->clock`: the run queue clock the scheduler updated just
/// before `sched_switch`/`sched_wakeup` fire (update_rq_clock in __schedule, ttwu_queue and
/// wake_up_new_task, kernel/sched/core.c v6.18). Reading it costs three loads instead of a
/// clock read, and it is the clock `/proc/<pid>/schedstat` run_delay is measured with.
/// `cfs_rq->rq` exists only with CONFIG_FAIR_GROUP_SCHED; without it the programs read
/// `bpf_ktime_get_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RqClockOffsets {
    /// `task_struct.se` + `sched_entity.cfs_rq`.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// `rq.prev_steal_time_rq`, present with CONFIG_PARAVIRT_TIME_ACCOUNTING: the hypervisor
    /// steal the scheduler has taken out of the task clock. 0: absent.
    pub rq_steal: u32,
}

impl RqClockOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            task_cfs_rq: btf.member_offset("task_struct", "se")?
                + btf.member_offset("sched_entity", "cfs_rq")?,
            cfs_rq_rq: btf.member_offset("cfs_rq", "rq")?,
            rq_clock: btf.member_offset("rq", "clock")?,
            rq_steal: btf.member_offset("rq", "prev_steal_time_rq").unwrap_or(0),
        })
    }
}

/// The kernel's run-queue accounting of a task (`task_struct.sched_info`, CONFIG_SCHED_INFO):
/// what sched_switch reads to measure a thread's wait when it gets the CPU, with no program on
/// sched_wakeup. Offsets relative to the `task_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedInfoOffsets {
    pub last_queued: u32,
    pub run_delay: u32,
    pub pcount: u32,
}

impl SchedInfoOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let base = btf.member_offset("task_struct", "sched_info")?;
        Ok(Self {
            last_queued: base + btf.member_offset("sched_info", "last_queued")?,
            run_delay: base + btf.member_offset("sched_info", "run_delay")?,
            pcount: base + btf.member_offset("sched_info", "pcount")?,
        })
    }
}

/// Socket fields the TCP retransmit programs read, all relative to the `struct sock *` (which
/// begins `inet_connection_sock` and `tcp_sock`), plus `sk_buff.cb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOffsets {
    pub family: u32,
    pub state: u32,
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    /// 0 without CONFIG_IPV6.
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    pub rto: u32,
    pub retransmits: u32,
    /// `icsk_ca_state` (a 5-bit bitfield): byte and shift.
    pub ca_state_byte: u32,
    pub ca_state_shift: u32,
    pub srtt: u32,
    pub total_retrans: u32,
    pub skb_cb: u32,
}

impl NetOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let sc = |m: &str| btf.member_offset("sock_common", m);
        let ca = btf.member_bit_offset("inet_connection_sock", "icsk_ca_state")?;
        Ok(Self {
            family: sc("skc_family")?,
            state: sc("skc_state")?,
            daddr: sc("skc_daddr")?,
            rcv_saddr: sc("skc_rcv_saddr")?,
            dport: sc("skc_dport")?,
            num: sc("skc_num")?,
            v6_daddr: sc("skc_v6_daddr").unwrap_or(0),
            v6_rcv_saddr: sc("skc_v6_rcv_saddr").unwrap_or(0),
            rto: btf.member_offset("inet_connection_sock", "icsk_rto")?,
            retransmits: btf.member_offset("inet_connection_sock", "icsk_retransmits")?,
            ca_state_byte: ca / 8,
            ca_state_shift: ca % 8,
            srtt: btf.member_offset("tcp_sock", "srtt_us")?,
            total_retrans: btf.member_offset("tcp_sock", "total_retrans")?,
            skb_cb: btf.member_offset("sk_buff", "cb")?,
        })
    }
}

/// Where the tracer of a ptraced task and a task's uid are (`task->parent`,
/// `task->cred->uid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityOffsets {
    pub task_parent: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    /// `task->jobctl`, whose JOBCTL_TRAP_FREEZE bit marks the cgroup v2 freezer's trap.
    pub task_jobctl: u32,
}

impl IdentityOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            task_parent: btf.member_offset("task_struct", "parent")?,
            task_cred: btf.member_offset("task_struct", "cred")?,
            cred_uid: btf.member_offset("cred", "uid")?,
            task_jobctl: btf.member_offset("task_struct", "jobctl")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { int x; struct { int y; int z; }; }; char c[16]; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0y\0z\0c\0".to_vec();
        let s = |name: &str| {
            strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut ty = |name_off: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            for v in [name_off, (kind << 24) | vlen, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(s("int"), 1, 0, 4, &[32]); // 1: int
        ty(0, 4, 2, 8, &[s("y"), 1, 0, s("z"), 1, 32]); // 2: anon struct {y, z}
        ty(0, 5, 2, 8, &[s("x"), 1, 0, 0, 2, 0]); // 3: anon union {x; struct}
        ty(0, 3, 0, 0, &[1, 1, 16]); // 4: char[16] (elem type int, good enough)
        ty(
            s("outer"),
            4,
            3,
            32,
            &[s("a"), 1, 0, 0, 3, 64, s("c"), 4, 128],
        ); // 5: outer
        let mut d = Vec::new();
        d.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        d.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend(t);
        d.extend(strings);
        d
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse("sample".into(), sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 12);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 16);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_truncated_and_garbage_input() {
        let good = sample();
        for cut in [0, 1, 5, 20, 30, good.len() - 1] {
            assert!(
                Btf::parse("t".into(), good[..cut].to_vec()).is_err(),
                "cut at {cut} accepted"
            );
        }
        assert!(Btf::parse("t".into(), b"not btf at all, really not".to_vec()).is_err());
    }

    /// The running kernel's socket layout is as in include/net/sock.h.
    #[test]
    fn reads_the_running_kernels_socket_layout_when_present() {
        let Ok(btf) = Btf::from_file(Path::new(VMLINUX_BTF)) else {
            return;
        };
        let n = NetOffsets::from_btf(&btf).unwrap();
        // sock_common packs the addresses first, then the ports (include/net/sock.h).
        assert!(n.rcv_saddr == n.daddr + 4 && n.num == n.dport + 2, "{n:?}");
        assert!(n.ca_state_shift < 8 && n.rto > n.family);
        assert_eq!(btf.tracepoint_args("sched_switch"), Some(4));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
    }

    /// The running kernel's offsets are plausible and ordered as in include/linux/sched.h.
    #[test]
    fn reads_the_running_kernels_task_struct_when_present() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return; // Unit tests also run on build hosts without BTF; privileged tests cover it.
        }
        let btf = Btf::from_file(path).unwrap();
        let off = TaskOffsets::from_btf(&btf).unwrap();
        assert_eq!(
            off.tgid,
            off.pid + 4,
            "pid and tgid are adjacent pid_t fields"
        );
        assert!(off.comm > off.tgid && off.group_leader > off.tgid);
        let id = IdentityOffsets::from_btf(&btf).unwrap();
        assert!(
            id.task_parent > 0 && id.task_cred > 0 && id.task_jobctl > 0,
            "{id:?}"
        );
        let rq = RqClockOffsets::from_btf(&btf).unwrap();
        assert!(rq.task_cfs_rq > 0 && rq.rq_clock > 0, "{rq:?}");
        // Our machines are built with CONFIG_PARAVIRT_TIME_ACCOUNTING (design notes).
        assert!(rq.rq_steal > 0, "{rq:?}");
        // struct sched_info: pcount, run_delay, max_run_delay, min_run_delay, last_arrival,
        // last_queued (include/linux/sched.h, v6.18), all 8 bytes.
        let si = SchedInfoOffsets::from_btf(&btf).unwrap();
        assert!(
            si.run_delay == si.pcount + 8 && si.last_queued > si.run_delay,
            "{si:?}"
        );
    }
}

/// Which memory and disk programs a set of offsets serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemGroup {
    /// Page faults and the reason of D sleeps inside them.
    Faults,
    /// The file (inode, device) behind an fsync-family call's fd.
    SyncFiles,
    /// The disk of a block request.
    Disk,
    /// The syscall number and first arguments in the saved user registers (x86-64's
    /// `struct pt_regs`), which the hooks off the syscall path read.
    SyscallRegs,
}

/// Offsets the memory and disk programs read: (loader global, struct, member, group).
pub const MEM_OFFSETS: [(&str, &str, &str, MemGroup); 21] = [
    (
        "TASK_MAJ_FLT_OFF",
        "task_struct",
        "maj_flt",
        MemGroup::Faults,
    ),
    ("PT_REGS_IP_OFF", "pt_regs", "ip", MemGroup::Faults),
    (
        "MAPPING_HOST_OFF",
        "address_space",
        "host",
        MemGroup::Faults,
    ),
    ("INODE_INO_OFF", "inode", "i_ino", MemGroup::SyncFiles),
    ("INODE_SB_OFF", "inode", "i_sb", MemGroup::SyncFiles),
    ("SB_DEV_OFF", "super_block", "s_dev", MemGroup::SyncFiles),
    (
        "TASK_FILES_OFF",
        "task_struct",
        "files",
        MemGroup::SyncFiles,
    ),
    ("FILES_FDT_OFF", "files_struct", "fdt", MemGroup::SyncFiles),
    ("FDT_MAX_FDS_OFF", "fdtable", "max_fds", MemGroup::SyncFiles),
    ("FDT_FD_OFF", "fdtable", "fd", MemGroup::SyncFiles),
    ("FILE_INODE_OFF", "file", "f_inode", MemGroup::SyncFiles),
    ("RQ_Q_OFF", "request", "q", MemGroup::Disk),
    ("Q_DISK_OFF", "request_queue", "disk", MemGroup::Disk),
    ("DISK_MAJOR_OFF", "gendisk", "major", MemGroup::Disk),
    (
        "DISK_FIRST_MINOR_OFF",
        "gendisk",
        "first_minor",
        MemGroup::Disk,
    ),
    ("RQ_CMD_FLAGS_OFF", "request", "cmd_flags", MemGroup::Disk),
    ("RQ_DATA_LEN_OFF", "request", "__data_len", MemGroup::Disk),
    (
        "PT_REGS_ORIG_AX_OFF",
        "pt_regs",
        "orig_ax",
        MemGroup::SyscallRegs,
    ),
    ("PT_REGS_DI_OFF", "pt_regs", "di", MemGroup::SyscallRegs),
    ("PT_REGS_SI_OFF", "pt_regs", "si", MemGroup::SyscallRegs),
    ("PT_REGS_DX_OFF", "pt_regs", "dx", MemGroup::SyscallRegs),
];

/// Resolved memory and disk offsets: the loader globals' values (0 where missing) and the
/// groups that could not be resolved, with the first error of each.
pub struct MemOffsets {
    pub values: Vec<(&'static str, u64)>,
    pub missing: Vec<(MemGroup, BtfError)>,
}

impl MemOffsets {
    pub fn from_btf(btf: &Btf) -> Self {
        let mut values = Vec::with_capacity(MEM_OFFSETS.len());
        let mut missing: Vec<(MemGroup, BtfError)> = Vec::new();
        for (global, strukt, member, group) in MEM_OFFSETS {
            match btf.member_offset(strukt, member) {
                Ok(off) => values.push((global, u64::from(off))),
                Err(e) => {
                    values.push((global, 0));
                    if !missing.iter().any(|(g, _)| *g == group) {
                        missing.push((group, e));
                    }
                }
            }
        }
        Self { values, missing }
    }

    /// Why `group` cannot work, if it cannot. Fault file identities need the inode offsets
    /// too, which are listed under `SyncFiles`.
    pub fn missing(&self, group: MemGroup) -> Option<&BtfError> {
        self.missing
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, e)| e)
    }
}
