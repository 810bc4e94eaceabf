//! Kernel stacks for people: symbols from /proc/kallsyms, and where a blocked thread slept.
/// Why stacks cannot be named when the kernel hides its addresses.
pub const HIDDEN: &str = "/proc/kallsyms shows no addresses (kernel.kptr_restrict=2, or pausewatch lacked CAP_SYSLOG when it started): a thread blocked outside faults, fsync and reclaim is reported as `kernel` without its place; set kernel.kptr_restrict to 0 or 1 and start pausewatch as root to name it";

/// Kernel text symbols sorted by address.
pub struct KernelSymbols {
    addrs: Vec<u64>,
    names: Vec<Box<str>>,
}

impl KernelSymbols {
    /// Reads /proc/kallsyms' text. Err with a one-line reason when it is unreadable or
    /// restricted (without CAP_SYSLOG at open, or with kernel.kptr_restrict, addresses read as
    /// zero).
    pub fn parse(r: impl std::io::BufRead) -> Result<Self, String> {
        let mut syms: Vec<(u64, Box<str>)> = Vec::new();
        for line in r.lines() {
            let line = line.map_err(|e| format!("/proc/kallsyms unreadable: {e}"))?;
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr != 0 {
                syms.push((addr, name.into()));
            }
        }
        if syms.is_empty() {
            return Err(HIDDEN.into());
        }
        syms.sort_unstable_by_key(|s| s.0);
        let (addrs, names) = syms.into_iter().unzip();
        Ok(Self { addrs, names })
    }

    /// Whether the first lines of /proc/kallsyms show only zero addresses: the kernel hides
    /// them (kernel.kptr_restrict=2, or the file was opened without CAP_SYSLOG).
    pub fn hidden(r: impl std::io::BufRead) -> bool {
        let mut lines = r.lines().map_while(Result::ok).take(16).peekable();
        lines.peek().is_some()
            && lines.all(|l| {
                l.split_ascii_whitespace()
                    .next()
                    .is_some_and(|a| a.bytes().all(|b| b == b'0'))
            })
    }

    /// The function containing `ip`.
    pub fn name(&self, ip: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= ip).checked_sub(1)?;
        Some(&self.names[i])
    }
}

/// Functions that only say "this thread waits": skipped when looking for what it waited on.
const GENERIC: [&str; 40] = [
    "__schedule",
    "schedule",
    "schedule_timeout",
    "schedule_preempt_disabled",
    "schedule_hrtimeout_range",
    "schedule_hrtimeout_range_clock",
    "io_schedule",
    "io_schedule_timeout",
    "bit_wait_io",
    "bit_wait",
    "__wait_on_bit",
    "__wait_on_bit_lock",
    "out_of_line_wait_on_bit",
    "out_of_line_wait_on_bit_lock",
    "__wait_on_buffer",
    "folio_wait_bit_common",
    "folio_wait_bit",
    "__folio_lock",
    "__folio_lock_killable",
    "__folio_lock_or_retry",
    "wait_for_completion",
    "wait_for_completion_io",
    "wait_for_completion_timeout",
    "wait_for_completion_io_timeout",
    "wait_for_completion_killable",
    "__wait_for_common",
    "wait_for_common",
    "wait_for_common_io",
    "do_wait_for_common",
    "__mutex_lock",
    "__mutex_lock_slowpath",
    "mutex_lock",
    "rwsem_down_read_slowpath",
    "rwsem_down_write_slowpath",
    "down_read",
    "down_write",
    "msleep",
    "usleep_range_state",
    "wait_woken",
    "__cond_resched",
];

/// Frames of the tracing machinery itself (the stack is taken inside the sched_switch
/// program): never where the thread slept.
const TRACING_PREFIXES: [&str; 5] = [
    "bpf_prog_",
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "bpf_get_stackid",
];

fn is_generic(f: &str) -> bool {
    GENERIC.contains(&f) || TRACING_PREFIXES.iter().any(|p| f.starts_with(p))
}

/// Functions that name the wait outright, innermost first wins.
const KNOWN: [(&str, &str); 16] = [
    ("jbd2_log_wait_commit", "jbd2 commit"),
    (
        "jbd2_journal_commit_transaction",
        "jbd2 commit (journal thread)",
    ),
    ("blk_mq_get_tag", "block queue full"),
    ("rq_qos_wait", "write-back throttling"),
    ("wbt_wait", "write-back throttling"),
    ("balance_dirty_pages", "dirty page throttling"),
    ("folio_wait_writeback", "waiting for write-back"),
    ("__filemap_fdatawait_range", "waiting for write-back"),
    ("filemap_fault", "page fault on a file"),
    ("do_swap_page", "swapin"),
    ("swap_read_folio", "swapin"),
    ("shrink_node", "reclaim"),
    ("compact_zone", "compaction"),
    ("submit_bio_wait", "synchronous block I/O"),
    ("blkdev_issue_flush", "disk cache flush"),
    ("__blkdev_direct_IO_simple", "direct I/O"),
];

/// Where a thread slept, from its kernel stack (innermost frame first): the innermost
/// function that names the wait, else the innermost one that is not a generic wait.
pub fn place<'a>(frames: impl IntoIterator<Item = &'a str> + Clone) -> Option<String> {
    for f in frames.clone() {
        let base = f.split('.').next().unwrap_or(f);
        if let Some((_, label)) = KNOWN.iter().find(|(k, _)| *k == base) {
            return Some((*label).to_string());
        }
    }
    frames
        .into_iter()
        .map(|f| f.split('.').next().unwrap_or(f))
        .find(|f| !is_generic(f))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81001000 T __schedule
ffffffff81002000 t schedule
ffffffff81003000 T jbd2_log_wait_commit
ffffffff81004000 D some_data
ffffffff81005000 T ext4_sync_file
";

    #[test]
    fn symbols_cover_their_functions() {
        let k = KernelSymbols::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(k.name(0xffffffff81001010), Some("__schedule"));
        assert_eq!(k.name(0xffffffff81003fff), Some("jbd2_log_wait_commit"));
        // Data symbols are not functions: the text before them covers the address.
        assert_eq!(k.name(0xffffffff81004010), Some("jbd2_log_wait_commit"));
        assert_eq!(k.name(0x1000), None);
    }

    #[test]
    fn restricted_kallsyms_is_an_error() {
        let e = KernelSymbols::parse("0000000000000000 T _stext\n".as_bytes())
            .err()
            .unwrap();
        assert!(e.contains("kptr_restrict"), "{e}");
    }

    #[test]
    fn hidden_addresses_are_told_from_the_first_lines() {
        let hidden = "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n";
        assert!(KernelSymbols::hidden(hidden.as_bytes()));
        let shown = "0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n";
        assert!(!KernelSymbols::hidden(shown.as_bytes()));
        assert!(
            !KernelSymbols::hidden("".as_bytes()),
            "empty is unreadable, not hidden"
        );
    }

    #[test]
    fn known_waits_are_named_else_the_first_specific_frame() {
        let jbd2 = [
            "__schedule",
            "schedule",
            "jbd2_log_wait_commit",
            "ext4_sync_file",
        ];
        assert_eq!(place(jbd2.iter().copied()).as_deref(), Some("jbd2 commit"));
        let lock = [
            "__schedule",
            "schedule",
            "schedule_preempt_disabled",
            "__mutex_lock.constprop.0",
            "pipe_write",
        ];
        assert_eq!(place(lock.iter().copied()).as_deref(), Some("pipe_write"));
        let traced = [
            "bpf_prog_0f6a8fa4c2725283_sched_switch_btf",
            "bpf_trace_run4",
            "__schedule",
            "schedule",
            "pipe_read",
        ];
        assert_eq!(place(traced.iter().copied()).as_deref(), Some("pipe_read"));
        let generic: [&str; 2] = ["__schedule", "schedule"];
        assert_eq!(place(generic.iter().copied()), None);
    }
}
