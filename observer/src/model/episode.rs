//! One streamed pause episode, decoded from the kernel record.
use observer_common::{Component, EpisodeStart, NUM_COMPONENTS, PauseRecord, comm_bytes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// Sequence number assigned by the agent, unique within a run (incidents cite it).
    pub id: u64,
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub cpu: u32,
    pub prev_cpu: u32,
    pub start_mono_ns: u64,
    pub duration_ns: u64,
    pub components_ns: [u64; NUM_COMPONENTS],
    pub start_reason: Option<EpisodeStart>,
    pub preempted_by: Option<(u32, String)>,
    /// Why the blocked component happened (None: no blocked component).
    pub blocked: Option<super::memory::BlockedWhy>,
}

pub fn comm_string(c: &[u8; observer_common::TASK_COMM_LEN]) -> String {
    String::from_utf8_lossy(comm_bytes(c)).into_owned()
}

impl Episode {
    pub fn from_record(id: u64, r: &PauseRecord) -> Self {
        Self {
            id,
            tid: r.tid,
            pid: r.tgid,
            comm: comm_string(&r.comm),
            cpu: r.cpu,
            prev_cpu: r.prev_cpu,
            start_mono_ns: r.start_mono_ns,
            duration_ns: r.duration_ns,
            components_ns: r.components_ns,
            start_reason: EpisodeStart::from_u32(r.start_reason),
            preempted_by: (r.preempted_by_tid != 0)
                .then(|| (r.preempted_by_tid, comm_string(&r.preempted_by_comm))),
            blocked: super::memory::BlockedWhy::from_record(r),
        }
    }

    pub fn component(&self, c: Component) -> u64 {
        self.components_ns[c as usize]
    }

    /// The component that took most of the episode.
    pub fn dominant(&self) -> Component {
        Component::ALL
            .into_iter()
            .max_by_key(|&c| self.component(c))
            .unwrap_or(Component::Runq)
    }

    pub fn end_mono_ns(&self) -> u64 {
        self.start_mono_ns.saturating_add(self.duration_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{RecordKind, TASK_COMM_LEN};

    #[test]
    fn decodes_names_and_preemptor() {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..3].copy_from_slice(b"pg1");
        let mut by = [0u8; TASK_COMM_LEN];
        by.copy_from_slice(b"sixteen-chars-xx");
        let r = PauseRecord {
            kind: RecordKind::Pause as u32,
            cpu: 1,
            tid: 11,
            tgid: 10,
            start_mono_ns: 100,
            duration_ns: 9_000_000,
            components_ns: [1_000_000, 8_000_000, 0],
            prev_cpu: 0,
            start_reason: EpisodeStart::Preempted as u32,
            preempted_by_tid: 77,
            block_reason: 0,
            comm,
            preempted_by_comm: by,
            stack_id: -1,
            block_dev: 0,
            block_addr: 0,
            block_ino: 0,
            block_pgoff: 0,
        };
        let e = Episode::from_record(3, &r);
        assert_eq!(e.comm, "pg1");
        assert_eq!(e.preempted_by, Some((77, "sixteen-chars-xx".to_string())));
        assert_eq!(e.dominant(), Component::Blocked);
        assert_eq!(e.end_mono_ns(), 9_000_100);
        assert_eq!(e.start_reason, Some(EpisodeStart::Preempted));
    }
}
