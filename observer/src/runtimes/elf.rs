//! The parts of an ELF file the runtime probes need: loadable segments (to turn a virtual
//! address into the file offset a uprobe is placed at), sections by name, symbols and notes.
use object::{
    Endianness, Object as _, ObjectSection as _, ObjectSymbol as _, ReadRef,
    elf::PT_LOAD,
    read::elf::{ElfFile64, ProgramHeader as _, SectionHeader as _},
};

/// One PT_LOAD segment: file bytes [offset, offset+filesz) are mapped at [vaddr, vaddr+filesz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

/// Turns a link-time virtual address into a file offset, through the segment that maps it
/// (libbpf's usdt.c does the same). None when no segment holds the address in file bytes.
pub fn file_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// A parsed 64-bit ELF file (the only kind pausewatch's kernels run). `R` is a byte slice or
/// an `object::ReadCache` over an open file, which reads only the parts that are looked at (a
/// 200 MB executable is not read to learn it is not a Go program).
pub struct Elf<'a, R: ReadRef<'a> = &'a [u8]> {
    pub file: ElfFile64<'a, Endianness, R>,
}

impl<'a, R: ReadRef<'a>> Elf<'a, R> {
    pub fn parse(data: R) -> Result<Self, String> {
        let file = ElfFile64::<Endianness, R>::parse(data)
            .map_err(|e| format!("not a 64-bit ELF file ({e})"))?;
        Ok(Self { file })
    }

    pub fn segments(&self) -> Vec<Segment> {
        let e = self.file.endian();
        self.file
            .elf_program_headers()
            .iter()
            .filter(|p| p.p_type(e) == PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr(e),
                offset: p.p_offset(e),
                filesz: p.p_filesz(e),
            })
            .collect()
    }

    pub fn section_address(&self, name: &str) -> Option<u64> {
        self.file.section_by_name(name).map(|s| s.address())
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.file.section_by_name(name).is_some()
    }

    pub fn section_data(&self, name: &str) -> Option<&'a [u8]> {
        self.file.section_by_name(name).and_then(|s| s.data().ok())
    }

    /// Address of a symbol in the symbol table (not the dynamic one: Go exports nothing).
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        self.symbol(name).map(|(addr, _)| addr)
    }

    /// (address, size) of a symbol in the symbol table.
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.file
            .symbols()
            .find(|s| s.name_bytes().ok() == Some(name.as_bytes()))
            .map(|s| (s.address(), s.size()))
    }

    /// The file bytes mapped at [addr, addr+size), from the section that holds them.
    pub fn bytes_at(&self, addr: u64, size: u64) -> Option<&'a [u8]> {
        self.file
            .sections()
            .find_map(|s| s.data_range(addr, size).ok().flatten())
    }

    pub fn has_symbol_table(&self) -> bool {
        self.file.symbols().next().is_some()
    }

    /// Every note in every SHT_NOTE section, as (owner name, type, descriptor).
    pub fn notes(&self) -> Vec<(&'a [u8], u32, &'a [u8])> {
        let e = self.file.endian();
        let data = self.file.data();
        let mut out = Vec::new();
        for header in self.file.elf_section_table().iter() {
            let Ok(Some(mut notes)) = header.notes(e, data) else {
                continue;
            };
            while let Ok(Some(note)) = notes.next() {
                out.push((note.name(), note.n_type(e), note.desc()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offsets_go_through_the_segment_that_maps_the_address() {
        // libjvm.so-like layout: text mapped at its file offset, data shifted by a page.
        let segs = [
            Segment {
                vaddr: 0,
                offset: 0,
                filesz: 0x10_0000,
            },
            Segment {
                vaddr: 0x20_1000,
                offset: 0x20_0000,
                filesz: 0x1000,
            },
        ];
        assert_eq!(file_offset(&segs, 0x783), Some(0x783));
        assert_eq!(file_offset(&segs, 0x20_1010), Some(0x20_0010));
        assert_eq!(
            file_offset(&segs, 0x10_0000),
            None,
            "one past the end of the text segment"
        );
        assert_eq!(
            file_offset(&segs, 0x20_2000),
            None,
            "beyond the data segment's file bytes (.bss)"
        );
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert!(Elf::parse(&b"#!/bin/sh\necho hi\n"[..]).is_err());
        assert!(Elf::parse(&[][..]).is_err());
    }

    #[test]
    fn reads_this_test_binary() {
        // The test executable itself is a real ELF file with segments and a symbol table.
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = Elf::parse(&data[..]).unwrap();
        assert!(!elf.segments().is_empty());
        assert!(elf.has_symbol_table());
        let main = elf
            .symbol_address("main")
            .expect("a Rust test binary has `main`");
        assert!(file_offset(&elf.segments(), main).is_some());
    }
}
