//! SystemTap/DTrace USDT probe notes (`.note.stapsdt`), as HotSpot's libjvm.so carries them.
//!
//! Each note (owner "stapsdt", type 3) describes one probe site: its address, the link-time
//! address of `.stapsdt.base` (to undo prelinking), the address of its semaphore (0: none), and
//! three strings: provider, name and the argument specs (e.g. `8@%r12 -4@%eax`).
//! Format: <https://sourceware.org/systemtap/wiki/UserSpaceProbeImplementation>.
use super::elf::{Elf, file_offset};

const NT_STAPSDT: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// Link-time address of the probe's instruction (a nop).
    pub pc: u64,
    /// Link-time address of `.stapsdt.base` when the note was written.
    pub base: u64,
    /// Link-time address of the probe's semaphore, 0 when it has none.
    pub semaphore: u64,
    pub args: String,
}

/// Where to place a uprobe for one probe: file offsets, as the kernel's uprobe API wants them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsdtLocation {
    pub offset: u64,
    /// File offset of the semaphore (the kernel increments it while the uprobe is attached,
    /// which is what enables a probe guarded by one); 0 when the probe has none.
    pub ref_ctr_offset: u64,
}

/// Parses one note descriptor (64-bit layout). None when it is malformed.
pub fn parse_note(desc: &[u8]) -> Option<UsdtProbe> {
    let word = |i: usize| {
        desc.get(i * 8..i * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let (pc, base, semaphore) = (word(0)?, word(1)?, word(2)?);
    let mut strings = desc.get(24..)?.split(|&b| b == 0);
    let mut next = || {
        strings
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .map(str::to_owned)
    };
    let (provider, name, args) = (next()?, next()?, next().unwrap_or_default());
    if provider.is_empty() || name.is_empty() {
        return None;
    }
    Some(UsdtProbe {
        provider,
        name,
        pc,
        base,
        semaphore,
        args,
    })
}

/// Every USDT probe in the file (an empty list for a file built without them).
pub fn probes<'a, R: object::ReadRef<'a>>(elf: &Elf<'a, R>) -> Vec<UsdtProbe> {
    elf.notes()
        .into_iter()
        .filter(|(owner, kind, _)| *owner == b"stapsdt" && *kind == NT_STAPSDT)
        .filter_map(|(_, _, desc)| parse_note(desc))
        .collect()
}

/// File offsets for a probe, undoing prelink (the note's base against the file's
/// `.stapsdt.base` section) the way libbpf and bcc do.
pub fn locate<'a, R: object::ReadRef<'a>>(
    elf: &Elf<'a, R>,
    probe: &UsdtProbe,
) -> Result<UsdtLocation, String> {
    let segments = elf.segments();
    let shift = match elf.section_address(".stapsdt.base") {
        Some(actual) if probe.base != 0 => actual.wrapping_sub(probe.base),
        _ => 0,
    };
    let pc = probe.pc.wrapping_add(shift);
    let offset = file_offset(&segments, pc).ok_or_else(|| {
        format!(
            "probe {}:{} at {pc:#x} lies outside every loadable segment",
            probe.provider, probe.name
        )
    })?;
    let ref_ctr_offset = if probe.semaphore == 0 {
        0
    } else {
        let sem = probe.semaphore.wrapping_add(shift);
        file_offset(&segments, sem).ok_or_else(|| {
            format!(
                "semaphore of {}:{} at {sem:#x} lies outside every loadable segment",
                probe.provider, probe.name
            )
        })?
    };
    Ok(UsdtLocation {
        offset,
        ref_ctr_offset,
    })
}

/// Where one USDT argument lives, from its spec (`8@%r12`, `-4@%eax`, `8@-24(%rbp)`, `4@$5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsdtArg {
    /// In a register, named by its 64-bit name (`%eax` and `%al` are `rax`).
    Register { size: i8, reg: &'static str },
    /// A constant (`1@$1`: the compiler knew the value at this site).
    Const(i64),
    /// In memory: not needed by pausewatch's probes, kept for messages.
    Other(String),
}

const REGISTERS: [(&str, [&str; 4]); 16] = [
    ("rax", ["rax", "eax", "ax", "al"]),
    ("rbx", ["rbx", "ebx", "bx", "bl"]),
    ("rcx", ["rcx", "ecx", "cx", "cl"]),
    ("rdx", ["rdx", "edx", "dx", "dl"]),
    ("rsi", ["rsi", "esi", "si", "sil"]),
    ("rdi", ["rdi", "edi", "di", "dil"]),
    ("rbp", ["rbp", "ebp", "bp", "bpl"]),
    ("rsp", ["rsp", "esp", "sp", "spl"]),
    ("r8", ["r8", "r8d", "r8w", "r8b"]),
    ("r9", ["r9", "r9d", "r9w", "r9b"]),
    ("r10", ["r10", "r10d", "r10w", "r10b"]),
    ("r11", ["r11", "r11d", "r11w", "r11b"]),
    ("r12", ["r12", "r12d", "r12w", "r12b"]),
    ("r13", ["r13", "r13d", "r13w", "r13b"]),
    ("r14", ["r14", "r14d", "r14w", "r14b"]),
    ("r15", ["r15", "r15d", "r15w", "r15b"]),
];

/// Parses a probe's argument specs (x86-64 AT&T syntax).
pub fn parse_args(spec: &str) -> Vec<UsdtArg> {
    spec.split_whitespace()
        .map(|a| {
            let parsed = a.split_once('@').and_then(|(size, loc)| {
                let size: i8 = size.parse().ok()?;
                if let Some(v) = loc.strip_prefix('$') {
                    return v.parse().ok().map(UsdtArg::Const);
                }
                let name = loc.strip_prefix('%')?;
                let reg = REGISTERS
                    .iter()
                    .find(|(_, aliases)| aliases.contains(&name))?
                    .0;
                Some(UsdtArg::Register { size, reg })
            });
            parsed.unwrap_or_else(|| UsdtArg::Other(a.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(pc: u64, base: u64, sem: u64, strings: &[&str]) -> Vec<u8> {
        let mut d = Vec::new();
        for w in [pc, base, sem] {
            d.extend(w.to_le_bytes());
        }
        for s in strings {
            d.extend(s.as_bytes());
            d.push(0);
        }
        d
    }

    #[test]
    fn parses_hotspot_notes() {
        // Values of OpenJDK 17's hotspot:gc__begin as `readelf -n` prints them.
        let p = parse_note(&desc(
            0x783c60,
            0x1066ab7,
            0,
            &["hotspot", "gc__begin", "1@%dil"],
        ))
        .unwrap();
        assert_eq!(
            (p.provider.as_str(), p.name.as_str(), p.args.as_str()),
            ("hotspot", "gc__begin", "1@%dil")
        );
        assert_eq!((p.pc, p.base, p.semaphore), (0x783c60, 0x1066ab7, 0));
        let no_args = parse_note(&desc(1, 2, 3, &["hs_private", "safepoint__end", ""])).unwrap();
        assert_eq!(no_args.args, "");
    }

    #[test]
    fn rejects_malformed_notes() {
        assert_eq!(parse_note(&[0; 10]), None, "too short for three addresses");
        assert_eq!(parse_note(&desc(1, 2, 3, &[])), None, "no strings");
        assert_eq!(
            parse_note(&desc(1, 2, 3, &["", "x"])),
            None,
            "empty provider"
        );
        let mut bad = desc(1, 2, 3, &["p", "n", ""]);
        bad[24] = 0xff;
        assert_eq!(parse_note(&bad), None, "provider not UTF-8");
    }

    #[test]
    fn argument_registers_by_their_64_bit_name() {
        assert_eq!(
            parse_args("8@%r12 8@%rdx -4@%eax"),
            vec![
                UsdtArg::Register {
                    size: 8,
                    reg: "r12"
                },
                UsdtArg::Register {
                    size: 8,
                    reg: "rdx"
                },
                UsdtArg::Register {
                    size: -4,
                    reg: "rax"
                },
            ]
        );
        assert_eq!(
            parse_args("1@%dil"),
            vec![UsdtArg::Register {
                size: 1,
                reg: "rdi"
            }]
        );
        assert_eq!(
            parse_args("-4@%r13d"),
            vec![UsdtArg::Register {
                size: -4,
                reg: "r13"
            }]
        );
        assert_eq!(
            parse_args("8@-24(%rbp) 1@$1 4@$-3"),
            vec![
                UsdtArg::Other("8@-24(%rbp)".into()),
                UsdtArg::Const(1),
                UsdtArg::Const(-3)
            ]
        );
        assert!(parse_args("").is_empty());
    }
}
