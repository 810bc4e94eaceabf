//! Kernel stacks of threads that slept in D outside any activity bracket: captured as they
//! got the CPU back into a per-CPU ring (tp_btf), or as they left it into a stack-trace map
//! (the raw-tracepoint fallback).
use aya::maps::{MapData, PerCpuArray, StackTraceMap};
use observer_common::{BLOCK_STACK_RING, BlockStack, STACK_ID_RING};

use super::kallsyms::{self, KernelSymbols};

pub struct Stacks {
    map: StackTraceMap<MapData>,
    ring: PerCpuArray<MapData, BlockStack>,
    symbols: Symbols,
}

/// The kernel's symbols: /proc/kallsyms is opened at start-up (the kernel shows real addresses
/// to whoever had CAP_SYSLOG when the file was opened, and the agent drops it after start-up)
/// and read at the first stack (it is large). Err says why stacks cannot be named.
enum Symbols {
    Opened(Result<std::fs::File, String>),
    Read(Result<KernelSymbols, String>),
}

impl Symbols {
    fn get(&mut self) -> Option<&KernelSymbols> {
        if let Self::Opened(f) = self {
            let f = std::mem::replace(f, Err(String::new()));
            *self = Self::Read(f.and_then(|f| KernelSymbols::parse(std::io::BufReader::new(f))));
        }
        match self {
            Self::Read(r) => r.as_ref().ok(),
            Self::Opened(_) => None,
        }
    }
}

impl Stacks {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let map = StackTraceMap::try_from(ebpf.take_map("STACKS").context("map STACKS missing")?)?;
        let ring = PerCpuArray::try_from(
            ebpf.take_map("BLOCK_STACKS")
                .context("map BLOCK_STACKS missing")?,
        )?;
        let file = std::fs::File::open("/proc/kallsyms")
            .map_err(|e| format!("/proc/kallsyms unreadable: {e}"));
        // Whether the kernel shows addresses is decided at open, so a second open now tells
        // at start-up what reading the first one would.
        let hidden = file.is_ok()
            && std::fs::File::open("/proc/kallsyms")
                .is_ok_and(|f| KernelSymbols::hidden(std::io::BufReader::new(f)));
        Ok(Self {
            map,
            ring,
            symbols: if hidden {
                Symbols::Read(Err(kallsyms::HIDDEN.into()))
            } else {
                Symbols::Opened(file)
            },
        })
    }

    /// Where the thread of stack `id` slept ("jbd2 commit", "pipe_write"), and the frames;
    /// `cpu` is the CPU that wrote the record (whose ring holds a `STACK_ID_RING` capture).
    /// None when the capture was overwritten before it was read (counted by the caller).
    ///
    /// A stack-trace map's stack stays in the map: the kernel gives one id to every capture of
    /// the same stack (a thread that blocks the same way again gets the same id before the
    /// agent has read the first), so deleting it after one read would leave the next records
    /// unnamed. The map never fills: a new stack whose hash collides replaces the old one
    /// (BPF_F_REUSE_STACKID).
    pub fn place(&mut self, id: u32, cpu: u32) -> Option<(String, Vec<String>)> {
        let ips: Vec<u64> = match StackRef::of(id) {
            StackRef::Ring { seq, slot } => {
                let entry = *self.ring.get(&slot, 0).ok()?.get(cpu as usize)?;
                ring_frames(&entry, seq)?.to_vec()
            }
            StackRef::Map(id) => {
                let trace = self.map.get(&id, 0).ok()?;
                trace.frames().iter().map(|f| f.ip).collect()
            }
        };
        let syms = self.symbols.get()?;
        let frames: Vec<String> = ips
            .iter()
            .map(|&ip| {
                syms.name(ip)
                    .map_or_else(|| format!("{ip:#x}"), str::to_string)
            })
            .collect();
        let place = kallsyms::place(frames.iter().map(String::as_str))?;
        Some((place, frames))
    }

    /// Why stacks cannot be named, once known.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.symbols {
            Symbols::Read(Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// Where a pause record's `stack_id` points.
#[derive(Debug, PartialEq, Eq)]
enum StackRef {
    /// Capture `seq` in entry `slot` of the recording CPU's `BLOCK_STACKS` ring.
    Ring { seq: u32, slot: u32 },
    /// A stack in the `STACKS` stack-trace map.
    Map(u32),
}

impl StackRef {
    fn of(id: u32) -> Self {
        if id & STACK_ID_RING as u32 != 0 {
            let seq = id & !(STACK_ID_RING as u32);
            Self::Ring {
                seq,
                slot: seq % BLOCK_STACK_RING,
            }
        } else {
            Self::Map(id)
        }
    }
}

/// The frames of ring entry `entry` if it still holds capture `seq` (a later capture on that
/// CPU overwrites it after `BLOCK_STACK_RING` more).
fn ring_frames(entry: &BlockStack, seq: u32) -> Option<&[u64]> {
    (entry.seq == seq).then(|| entry.frames())
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::BLOCK_STACK_DEPTH;

    #[test]
    fn ring_ids_name_their_slot_and_map_ids_pass_through() {
        let id = STACK_ID_RING as u32 | (BLOCK_STACK_RING * 3 + 5);
        assert_eq!(
            StackRef::of(id),
            StackRef::Ring {
                seq: BLOCK_STACK_RING * 3 + 5,
                slot: 5
            }
        );
        assert_eq!(StackRef::of(17), StackRef::Map(17));
    }

    #[test]
    fn an_overwritten_ring_entry_names_nothing() {
        let mut entry = BlockStack {
            seq: 9,
            len: 16,
            ips: [0; BLOCK_STACK_DEPTH],
        };
        entry.ips[..2].copy_from_slice(&[0xffff_ffff_8100_0000, 0xffff_ffff_8100_1000]);
        assert_eq!(ring_frames(&entry, 9).map(<[u64]>::len), Some(2));
        // Capture 9 + BLOCK_STACK_RING took the entry before the agent read capture 9.
        entry.seq = 9 + BLOCK_STACK_RING;
        assert_eq!(ring_frames(&entry, 9), None);
    }
}
