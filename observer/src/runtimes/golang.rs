//! Go executables: recognising one, its version, and where its stop-the-world functions are.
use super::elf::{Elf, file_offset};

pub const STOP_SYMBOL: &str = "runtime.stopTheWorldWithSema";
pub const START_SYMBOL: &str = "runtime.startTheWorldWithSema";
/// The clock read that startTheWorldWithSema makes once every P has been handed back out
/// ("Capture start-the-world time", runtime/proc.go): the end of the pause in gctrace's terms.
const NANOTIME_SYMBOLS: [&str; 2] = ["runtime.nanotime1.abi0", "runtime.nanotime1"];

/// Whether an ELF file is a Go program: the linker writes `.go.buildinfo` (Go 1.13+) and a
/// `.note.go.buildid` note, both kept by `strip` and `-ldflags=-s`.
pub fn is_go<'a, R: object::ReadRef<'a>>(elf: &Elf<'a, R>) -> bool {
    elf.has_section(".go.buildinfo") || elf.has_section(".note.go.buildid")
}

/// The toolchain version from `.go.buildinfo` ("go1.21.3"), for Go 1.18+ binaries, which
/// store it inline; older ones point at it through the data segment and read as None.
pub fn version(buildinfo: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !buildinfo.starts_with(MAGIC) || buildinfo.get(15)? & 2 == 0 {
        return None;
    }
    let rest = buildinfo.get(32..)?;
    // Unsigned LEB128 length, then the bytes.
    let (mut len, mut shift, mut used) = (0usize, 0u32, 0usize);
    for &b in rest.iter().take(5) {
        used += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let s = rest.get(used..used.checked_add(len)?)?;
            return std::str::from_utf8(s).ok().map(str::to_owned);
        }
        shift += 7;
    }
    None
}

/// (major, minor) of "go1.21.3" or "go1.22rc1".
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.strip_prefix("go")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Since Go 1.21 stopTheWorldWithSema takes a stwReason (runtime/proc.go).
pub fn passes_reason(version: Option<&str>) -> bool {
    version.and_then(major_minor).is_some_and(|v| v >= (1, 21))
}

/// runtime.stwReason (runtime/proc.go, Go 1.21+), by value.
pub fn reason_name(reason: u32) -> &'static str {
    match reason {
        1 => "GC mark termination",
        2 => "GC sweep termination",
        3 => "write heap dump",
        4 => "goroutine profile",
        5 => "goroutine profile cleanup",
        6 => "all goroutines stack trace",
        7 => "read mem stats",
        8 => "AllThreadsSyscall",
        9 => "GOMAXPROCS",
        10 => "start trace",
        11 => "stop trace",
        _ => "unknown",
    }
}

/// Whether a stwReason is a collection phase.
pub fn reason_is_gc(reason: u32) -> bool {
    matches!(reason, 1 | 2)
}

/// Where the stop-the-world probes go in a Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoProbes {
    pub version: Option<String>,
    /// Entry of stopTheWorldWithSema: the pause begins.
    pub stop_offset: u64,
    /// Where the pause ends, inside startTheWorldWithSema: its calls to nanotime (taken once
    /// the world runs again) and its returns (on paths that skip the clock read). Whichever
    /// fires first ends the pause. Probes on RET instructions never touch the stack, unlike
    /// uretprobes, which Go's moving stacks break. When the function cannot be decoded: its
    /// entry, which ends the pause before the processors are restarted.
    pub end_offsets: Vec<u64>,
    /// `end_offsets` is the function entry (the decode failed).
    pub end_at_entry: bool,
}

/// Addresses in `code` (which starts at `addr`) of every call to one of `targets` and every
/// return, by decoding the function's instructions in order (Go puts no data in its text).
pub fn restart_points(code: &[u8], addr: u64, targets: &[u64]) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut out = Vec::new();
    let mut dec = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.is_invalid() {
            return Vec::new();
        }
        let is_clock_call =
            ins.mnemonic() == Mnemonic::Call && targets.contains(&ins.near_branch_target());
        if is_clock_call || ins.mnemonic() == Mnemonic::Ret {
            out.push(ins.ip());
        }
    }
    out
}

/// Finds the stop-the-world functions, or says why they cannot be probed.
pub fn locate<'a, R: object::ReadRef<'a>>(elf: &Elf<'a, R>) -> Result<GoProbes, String> {
    let version = elf.section_data(".go.buildinfo").and_then(version);
    if !elf.has_symbol_table() {
        return Err("Go binary is stripped (no symbol table), so runtime.stopTheWorldWithSema cannot be found".into());
    }
    let segments = elf.segments();
    let offset = |addr: u64| {
        file_offset(&segments, addr)
            .ok_or_else(|| format!("address {addr:#x} lies outside every loadable segment"))
    };
    let symbol = |sym: &str| {
        elf.symbol(sym)
            .ok_or_else(|| format!("Go binary has no symbol {sym}"))
    };
    let stop_offset = offset(symbol(STOP_SYMBOL)?.0)?;
    let (start, size) = symbol(START_SYMBOL)?;
    let clock: Vec<u64> = NANOTIME_SYMBOLS
        .iter()
        .filter_map(|s| elf.symbol_address(s))
        .collect();
    let points = elf
        .bytes_at(start, size)
        .map(|code| restart_points(code, start, &clock))
        .unwrap_or_default();
    let (end_offsets, end_at_entry) = if points.is_empty() {
        (vec![offset(start)?], true)
    } else {
        (
            points.into_iter().map(offset).collect::<Result<_, _>>()?,
            false,
        )
    };
    Ok(GoProbes {
        version,
        stop_offset,
        end_offsets,
        end_at_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buildinfo(version: &str) -> Vec<u8> {
        let mut b = b"\xff Go buildinf:".to_vec();
        b.push(8); // pointer size
        b.push(2); // flags: inline strings
        b.resize(32, 0);
        b.push(version.len() as u8);
        b.extend(version.as_bytes());
        b.push(0); // modinfo length
        b
    }

    #[test]
    fn version_from_buildinfo() {
        assert_eq!(version(&buildinfo("go1.19.8")).as_deref(), Some("go1.19.8"));
        let mut old = buildinfo("go1.17");
        old[15] = 0;
        assert_eq!(
            version(&old),
            None,
            "pre-1.18 layout (pointers) is not read"
        );
        assert_eq!(version(b"not buildinfo at all, no magic"), None);
        let mut truncated = buildinfo("go1.22.1");
        truncated.truncate(36);
        assert_eq!(version(&truncated), None);
    }

    #[test]
    fn reason_argument_since_go_1_21() {
        assert_eq!(major_minor("go1.21.3"), Some((1, 21)));
        assert_eq!(major_minor("go1.22rc1"), Some((1, 22)));
        assert_eq!(major_minor("devel +abc"), None);
        assert!(!passes_reason(Some("go1.19.8")));
        assert!(passes_reason(Some("go1.21.0")));
        assert!(passes_reason(Some("go1.23.4")));
        assert!(!passes_reason(None));
        assert_eq!(reason_name(2), "GC sweep termination");
        assert!(reason_is_gc(1) && !reason_is_gc(7));
        assert_eq!(reason_name(200), "unknown");
    }

    #[test]
    fn restart_points_are_clock_calls_and_returns_at_instruction_boundaries() {
        // push rbp; call +0 (to 0x1006, not the clock); call rel32 to 0x2000; nop; ret;
        // mov eax, 0xc3 (a 0xc3 byte inside an instruction is not a return).
        let code = [
            0x55, // 0x1000 push rbp
            0xe8, 0x00, 0x00, 0x00, 0x00, // 0x1001 call 0x1006
            0xe8, 0xf5, 0x0f, 0x00, 0x00, // 0x1006 call 0x2000
            0x90, // 0x100b nop
            0xc3, // 0x100c ret
            0xb8, 0xc3, 0x00, 0x00, 0x00, // 0x100d mov eax, 0xc3
            0xc3, // 0x1012 ret
        ];
        assert_eq!(
            restart_points(&code, 0x1000, &[0x2000]),
            vec![0x1006, 0x100c, 0x1012]
        );
        assert_eq!(restart_points(&code, 0x1000, &[]), vec![0x100c, 0x1012]);
        assert!(
            restart_points(&[0x0f, 0xff], 0x1000, &[]).is_empty(),
            "undecodable code gives no points"
        );
    }

    #[test]
    fn a_rust_binary_is_not_go() {
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = Elf::parse(&data[..]).unwrap();
        assert!(!is_go(&elf));
        assert!(
            locate(&elf)
                .unwrap_err()
                .contains("no symbol runtime.stopTheWorldWithSema")
        );
    }
}
