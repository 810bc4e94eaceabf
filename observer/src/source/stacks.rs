//! Kernel stacks captured when a thread went into D outside any activity bracket.
use aya::maps::{MapData, StackTraceMap};

use super::kallsyms::{self, KernelSymbols};

pub struct Stacks {
    map: StackTraceMap<MapData>,
    /// /proc/kallsyms, opened at start-up: the kernel shows real addresses to whoever had
    /// CAP_SYSLOG when the file was opened, and the agent drops it after start-up.
    kallsyms: Option<Result<std::fs::File, String>>,
    /// Loaded at the first stack (it is large); Err says why stacks cannot be named.
    symbols: Option<Result<KernelSymbols, String>>,
}

impl Stacks {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let map = StackTraceMap::try_from(ebpf.take_map("STACKS").context("map STACKS missing")?)?;
        Ok(Self {
            map,
            kallsyms: Some(
                std::fs::File::open("/proc/kallsyms")
                    .map_err(|e| format!("/proc/kallsyms unreadable: {e}")),
            ),
            symbols: None,
        })
    }

    /// Where the thread of stack `id` slept ("jbd2 commit", "pipe_write"), and the frames.
    /// The stack is deleted once read so the map only ever holds recent stacks.
    pub fn place(&mut self, id: u32) -> Option<(String, Vec<String>)> {
        let trace = self.map.get(&id, 0).ok()?;
        let _ = self.map.remove(&id);
        let kallsyms = &mut self.kallsyms;
        let syms = self
            .symbols
            .get_or_insert_with(|| {
                let f = kallsyms.take().unwrap_or_else(|| Err("read once".into()))?;
                KernelSymbols::parse(std::io::BufReader::new(f))
            })
            .as_ref()
            .ok()?;
        let frames: Vec<String> = trace
            .frames()
            .iter()
            .map(|f| {
                syms.name(f.ip)
                    .map_or_else(|| format!("{:#x}", f.ip), str::to_string)
            })
            .collect();
        let place = kallsyms::place(frames.iter().map(String::as_str))?;
        Some((place, frames))
    }

    /// Why stacks cannot be named, once known.
    pub fn unavailable(&self) -> Option<&str> {
        self.symbols
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .map(String::as_str)
    }
}
