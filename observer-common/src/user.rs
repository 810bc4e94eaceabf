//! Userspace side of the ABI: `aya::Pod` impls and a length-checked decoder.

use crate::{
    ClockAdjRecord, ExecRecord, ExitRecord, GcRecord, MemStallRecord, PauseRecord, ProcStats,
    RecordKind, RetransmitRecord, SignalRecord, StopRecord, SyncRecord,
};

// SAFETY: all four are #[repr(C)], made only of integers and byte arrays with explicit padding
// fields, so every bit pattern is a valid value and there are no implicit padding bytes.
unsafe impl aya::Pod for PauseRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for ProcStats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::ThreadState {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::ComponentStats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::BlockStack {}
// SAFETY: as above.
unsafe impl aya::Pod for StopRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for SignalRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for GcRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for ExecRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for ClockAdjRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for RetransmitRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::SockOwner {}
// SAFETY: as above.
unsafe impl aya::Pod for SyncRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for MemStallRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for ExitRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::ProcMem {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::Activity {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::CpuSteal {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::SwitchIn {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DiskKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DiskStats {}

/// A decoded ring-buffer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Pause(PauseRecord),
    Stop(StopRecord),
    Signal(SignalRecord),
    Gc(GcRecord),
    Exec(ExecRecord),
    ClockAdj(ClockAdjRecord),
    Retransmit(RetransmitRecord),
    Sync(SyncRecord),
    MemStall(MemStallRecord),
    Exit(ExitRecord),
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short to hold a kind tag")]
    NoKind { len: usize },
    #[error("record kind {kind} is unknown (agent and kernel programs from different builds?)")]
    UnknownKind { kind: u32 },
    #[error("record kind {kind} has {len} bytes, expected {expected}")]
    WrongSize {
        kind: u32,
        len: usize,
        expected: usize,
    },
}

/// Reads a `T` from exactly `size_of::<T>()` bytes.
fn read_exact<T: aya::Pod>(kind: u32, bytes: &[u8]) -> Result<T, DecodeError> {
    let expected = core::mem::size_of::<T>();
    if bytes.len() != expected {
        return Err(DecodeError::WrongSize {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked above, read_unaligned has no alignment requirement, and
    // T: Pod means any bit pattern is a valid T.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a record as the kernel writes them (the inverse of `decode`; fuzz seeds and
/// tests).
pub fn encode<T: aya::Pod>(r: &T) -> Vec<u8> {
    // SAFETY: T: Pod is #[repr(C)] with no implicit padding; exactly its size is copied.
    unsafe { core::slice::from_raw_parts((r as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
        .to_vec()
}

/// Decodes one ring-buffer record, checking its kind and exact length.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let Some(tag) = bytes.get(..4) else {
        return Err(DecodeError::NoKind { len: bytes.len() });
    };
    let kind = u32::from_ne_bytes([tag[0], tag[1], tag[2], tag[3]]);
    match kind {
        k if k == RecordKind::Pause as u32 => Ok(Record::Pause(read_exact(kind, bytes)?)),
        k if k == RecordKind::Stop as u32 => Ok(Record::Stop(read_exact(kind, bytes)?)),
        k if k == RecordKind::Signal as u32 => Ok(Record::Signal(read_exact(kind, bytes)?)),
        k if k == RecordKind::Gc as u32 => Ok(Record::Gc(read_exact(kind, bytes)?)),
        k if k == RecordKind::Exec as u32 => Ok(Record::Exec(read_exact(kind, bytes)?)),
        k if k == RecordKind::ClockAdj as u32 => Ok(Record::ClockAdj(read_exact(kind, bytes)?)),
        k if k == RecordKind::Retransmit as u32 => Ok(Record::Retransmit(read_exact(kind, bytes)?)),
        k if k == RecordKind::Sync as u32 => Ok(Record::Sync(read_exact(kind, bytes)?)),
        k if k == RecordKind::MemStall as u32 => Ok(Record::MemStall(read_exact(kind, bytes)?)),
        k if k == RecordKind::Exit as u32 => Ok(Record::Exit(read_exact(kind, bytes)?)),
        _ => Err(DecodeError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ComponentStats, EpisodeStart, NUM_COMPONENTS, ProcStats, STAT_EPISODE, TASK_COMM_LEN, hist,
    };

    fn add(s: &mut ComponentStats, v: u64) {
        s.total_ns += v;
        s.max_ns = s.max_ns.max(v);
        s.hist[hist::bucket(v)] += 1;
    }

    /// The kernel's rule (observer-ebpf's `aggregate`): a pure run-queue wait only in the
    /// run-queue component; any other episode per non-zero component, whole, and its
    /// run-queue part again in `mixed_runq`.
    fn record(ps: &mut ProcStats, c: [u64; NUM_COMPONENTS]) {
        if c[1] == 0 && c[2] == 0 {
            add(&mut ps.stats[0], c[0]);
            return;
        }
        for (i, &v) in c.iter().enumerate() {
            if v > 0 {
                add(&mut ps.stats[i], v);
            }
        }
        if c[0] > 0 {
            add(&mut ps.mixed_runq, c[0]);
        }
        add(&mut ps.stats[STAT_EPISODE], c.iter().sum());
    }

    #[test]
    fn switch_ins_cover_the_pid_space_up_to_their_bound() {
        use crate::{SWITCH_INS_MAX, SWITCH_INS_MIN, switch_ins_entries};
        // Default pid_max on small hosts: every tid has its own entry.
        assert_eq!(switch_ins_entries(32_768), 32_768);
        assert_eq!(switch_ins_entries(40_000), 65_536);
        assert_eq!(switch_ins_entries(300), SWITCH_INS_MIN);
        // systemd's 4M: tids share entries modulo the bound.
        assert_eq!(switch_ins_entries(4_194_304), SWITCH_INS_MAX);
        assert_eq!(switch_ins_entries(u32::MAX), SWITCH_INS_MAX);
        for n in [300, 32_768, 40_000, 4_194_304] {
            assert!(switch_ins_entries(n).is_power_of_two());
        }
    }

    #[test]
    fn a_fault_entry_mixed_by_two_writers_fails_its_check() {
        use crate::FaultState;
        // Two threads sharing an entry (tids equal modulo its size), each with its own
        // major-fault baseline.
        let (a, b) = ((9u32, 12u64), (9 + 131_072u32, 4_000u64));
        // One's tid with the other's baseline is not valid under either check word, so a
        // baseline is never taken for another thread's.
        for check in [
            FaultState::check_of(a.0, a.1),
            FaultState::check_of(b.0, b.1),
        ] {
            assert_ne!(FaultState::check_of(a.0, b.1), check);
            assert_ne!(FaultState::check_of(b.0, a.1), check);
        }
        // A zeroed entry, or one cleared at exit (tid 0), is nobody's.
        assert_ne!(FaultState::check_of(0, 0), 0);
    }

    #[test]
    fn a_switch_in_entry_mixed_by_two_writers_fails_its_check() {
        use crate::SwitchIn;
        let (a, b) = ((7u32, 1_000_000u64), (7 + 32_768u32, 2_500_000u64));
        let check = |tid, rd| SwitchIn::check_of(tid, rd, 0, 0);
        assert_eq!(check(a.0, a.1), check(a.0, a.1));
        // One thread's tid with the other's baseline, or either check word: not valid.
        assert_ne!(check(a.0, b.1), check(b.0, b.1));
        assert_ne!(check(b.0, a.1), check(a.0, a.1));
        assert_ne!(check(a.0, b.1), check(a.0, a.1));
        // A zeroed entry is nobody's: tid 0 (the idle tasks) is never looked up, and the
        // check of a zero tid and baseline is not zero.
        assert_ne!(check(0, 0), 0);
        assert!(!SwitchIn::default().is_whole());
        // The pending waits are covered: another sum or count of them, and the entry is not
        // whole (a read that raced the kernel's write of them).
        let mut e = SwitchIn {
            tid: a.0,
            run_delay_ns: a.1,
            pending_ns: 40_000,
            pending: 3,
            ..Default::default()
        };
        e.check = SwitchIn::check_of(e.tid, e.run_delay_ns, e.pending_ns, e.pending);
        assert!(e.is_whole());
        assert!(!SwitchIn { pending: 4, ..e }.is_whole());
        assert!(
            !SwitchIn {
                pending_ns: 41_000,
                ..e
            }
            .is_whole()
        );
        assert!(
            !SwitchIn {
                run_delay_ns: b.1,
                ..e
            }
            .is_whole()
        );
    }

    #[test]
    fn whole_episodes_are_put_back_together_exactly() {
        let episodes: [[u64; NUM_COMPONENTS]; 7] = [
            [5_000, 0, 0],
            [0, 0, 0],
            [70_000_000, 0, 0],
            [2_000, 9_000_000, 0],
            [0, 400_000_000, 0],
            [1_000, 0, 1_500_000_000],
            [80_000_000, 1, 0],
        ];
        let mut ps = ProcStats::ZERO;
        let mut whole = ComponentStats::ZERO;
        for c in episodes {
            record(&mut ps, c);
            add(&mut whole, c.iter().sum());
        }
        assert_eq!(ps.episodes(), whole);
        // Run-queue components keep every run-queue wait, pure (a zero-length one too) or not.
        assert_eq!(ps.stats[0].count(), 6);
        // A read that saw a mixed episode's run-queue part in `mixed_runq` before it reached
        // the run-queue component saturates instead of wrapping.
        ps.mixed_runq.hist[0] += 10;
        assert!(ps.episodes().count() < whole.count());
    }

    fn sample() -> PauseRecord {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..4].copy_from_slice(b"java");
        PauseRecord {
            kind: RecordKind::Pause as u32,
            cpu: 1,
            tid: 4243,
            tgid: 4242,
            start_mono_ns: 1_000_000,
            duration_ns: 7_000_000,
            components_ns: [6_000_000, 1_000_000, 0],
            prev_cpu: 0,
            start_reason: EpisodeStart::Blocked as u32,
            preempted_by_tid: 0,
            block_reason: 0,
            comm,
            preempted_by_comm: [0; TASK_COMM_LEN],
            stack_id: -1,
            block_dev: 0,
            block_addr: 0,
            block_ino: 0,
            block_pgoff: 0,
        }
    }

    #[test]
    fn roundtrip() {
        let r = sample();
        assert_eq!(decode(&raw(&r)), Ok(Record::Pause(r)));
        assert_eq!(r.components_ns.iter().sum::<u64>(), r.duration_ns);
        assert_eq!(NUM_COMPONENTS, 3);
    }

    #[test]
    fn a_block_stack_has_the_frames_the_helper_wrote() {
        let mut s = crate::BlockStack {
            seq: 7,
            len: 3 * 8,
            ips: [0; crate::BLOCK_STACK_DEPTH],
        };
        s.ips[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(s.frames(), &[1, 2, 3]);
        // A length beyond the buffer (never written by the kernel) is cut to it.
        s.len = u32::MAX;
        assert_eq!(s.frames().len(), crate::BLOCK_STACK_DEPTH);
        // Ring ids are positive i32s, above every stack-trace map id.
        let id = crate::STACK_ID_RING | (crate::STACK_ID_RING - 1);
        assert!(id > 0 && id & crate::STACK_ID_RING != 0);
    }

    #[test]
    fn decodes_from_unaligned_buffers() {
        let r = sample();
        let mut buf = vec![0u8; 1];
        buf.extend(raw(&r));
        assert_eq!(decode(&buf[1..]), Ok(Record::Pause(r)));
    }

    #[test]
    fn rejects_short_long_and_unknown() {
        let b = raw(&sample());
        assert_eq!(decode(&b[..3]), Err(DecodeError::NoKind { len: 3 }));
        assert!(matches!(
            decode(&b[..50]),
            Err(DecodeError::WrongSize { len: 50, .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(DecodeError::WrongSize { .. })));
        let mut unknown = b;
        unknown[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind { kind: 99 }));
    }

    #[test]
    fn stop_and_signal_records_decode_by_kind_and_size() {
        let mut stop = StopRecord {
            kind: RecordKind::Stop as u32,
            stop_kind: crate::StopKind::Signal as u32,
            tgid: 7,
            threads: 3,
            start_mono_ns: 10,
            duration_ns: 500_000_000,
            stop_sig: 19,
            _pad0: 0,
            stopped_by: crate::TaskId {
                tid: 1,
                tgid: 1,
                uid: 0,
                _pad0: 0,
                comm: [b'k'; TASK_COMM_LEN],
            },
            comm: [0; TASK_COMM_LEN],
        };
        let b = raw(&stop);
        assert_eq!(decode(&b), Ok(Record::Stop(stop)));
        assert!(matches!(
            decode(&b[..80]),
            Err(DecodeError::WrongSize {
                len: 80,
                expected: 88,
                ..
            })
        ));
        stop.kind = RecordKind::Signal as u32;
        let b = raw(&stop);
        assert!(
            matches!(decode(&b), Err(DecodeError::WrongSize { expected: 80, .. })),
            "a stop-sized record tagged signal is rejected"
        );
    }

    fn raw<T: aya::Pod>(r: &T) -> Vec<u8> {
        encode(r)
    }

    #[test]
    fn gc_and_exec_records_decode_by_kind_and_size() {
        let mut op = [0u8; crate::GC_OP_LEN];
        op[..13].copy_from_slice(b"G1CollectFull");
        let gc = crate::GcRecord {
            kind: RecordKind::Gc as u32,
            runtime: crate::Runtime::Jvm as u32,
            tgid: 9,
            tid: 10,
            start_mono_ns: 1,
            duration_ns: 5_400_000,
            gc_ns: 5_200_000,
            sync_ns: 80_000,
            reason: 0,
            flags: crate::GC_FLAG_COLLECTION | crate::GC_FLAG_FULL,
            operation: op,
            comm: [0; TASK_COMM_LEN],
        };
        assert_eq!(decode(&raw(&gc)), Ok(Record::Gc(gc)));
        assert!(matches!(
            decode(&raw(&gc)[..103]),
            Err(DecodeError::WrongSize { expected: 104, .. })
        ));
        let exec = crate::ExecRecord {
            kind: RecordKind::Exec as u32,
            tgid: 5,
            ts_mono_ns: 2,
            comm: [b'j'; TASK_COMM_LEN],
        };
        assert_eq!(decode(&raw(&exec)), Ok(Record::Exec(exec)));
        let mut mislabelled = raw(&exec);
        mislabelled[..4].copy_from_slice(&(RecordKind::Gc as u32).to_ne_bytes());
        assert!(matches!(
            decode(&mislabelled),
            Err(DecodeError::WrongSize {
                len: 32,
                expected: 104,
                ..
            })
        ));
    }

    #[test]
    fn field_offsets_are_stable() {
        assert_eq!(core::mem::offset_of!(PauseRecord, start_mono_ns), 16);
        assert_eq!(core::mem::offset_of!(PauseRecord, components_ns), 32);
        assert_eq!(core::mem::offset_of!(PauseRecord, comm), 72);
    }
}
