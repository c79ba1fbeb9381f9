//! Loads the guest kernel ELF. Every header and segment is checked before a
//! byte is copied: a fixed-address x86_64 executable whose loadable segments
//! (BSS included) lie inside RAM, above the VMM's own structures, without
//! overlapping, and whose entry point is in an executable segment. The copy
//! itself is linux-loader's.
use std::io::Cursor;

use ftvm_abi::layout::{KERNEL_MIN_ADDR, PAGE_BYTES};
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_DYN, ET_EXEC, PF_X,
    PT_LOAD,
};
use linux_loader::loader::{Elf, KernelLoader};
use thiserror::Error;
use vm_memory::ByteValued;

use crate::memory::GuestRam;

/// What is wrong with a kernel image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoaderError {
    /// Shorter than an ELF header.
    #[error("the kernel image is {len} bytes, too short for an ELF header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// No ELF magic.
    #[error("the kernel image is not an ELF file (bad magic)")]
    NotElf,
    /// Not 64-bit little-endian.
    #[error("the kernel ELF is not 64-bit little-endian")]
    WrongClass,
    /// Built for another machine.
    #[error("the kernel ELF is for machine {machine}, not x86_64 ({EM_X86_64})")]
    WrongMachine {
        /// e_machine.
        machine: u16,
    },
    /// A position-independent (ET_DYN) image.
    #[error(
        "the kernel ELF is position-independent (ET_DYN); link it with --no-pie at a fixed address"
    )]
    PositionIndependent,
    /// Neither executable nor shared object.
    #[error("the kernel ELF has type {elf_type}, expected ET_EXEC (2)")]
    WrongType {
        /// e_type.
        elf_type: u16,
    },
    /// Program headers missing, of the wrong size, or beyond the file.
    #[error("the kernel ELF's program header table is malformed: {problem}")]
    BadProgramHeaders {
        /// What is wrong.
        problem: &'static str,
    },
    /// A segment's file bytes are not inside the file.
    #[error("segment {index}: file bytes {offset:#x}+{file_bytes:#x} run past the end of the {file_len}-byte image (truncated?)")]
    SegmentPastEof {
        /// Program header index.
        index: usize,
        /// p_offset.
        offset: u64,
        /// p_filesz.
        file_bytes: u64,
        /// Image length.
        file_len: usize,
    },
    /// p_filesz > p_memsz.
    #[error("segment {index}: file size {file_bytes:#x} exceeds memory size {mem_bytes:#x}")]
    FileLargerThanMemory {
        /// Program header index.
        index: usize,
        /// p_filesz.
        file_bytes: u64,
        /// p_memsz.
        mem_bytes: u64,
    },
    /// A segment (BSS included) not inside the kernel's part of RAM.
    #[error("segment {index}: [{start:#x}, {end:#x}) is outside the kernel area [{:#x}, {ram_bytes:#x}) of guest RAM", KERNEL_MIN_ADDR)]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// End (exclusive), saturated on overflow.
        end: u64,
        /// RAM size.
        ram_bytes: u64,
    },
    /// Two loadable segments overlap.
    #[error("segments {first} and {second} overlap in memory")]
    Overlap {
        /// Lower index.
        first: usize,
        /// Higher index.
        second: usize,
    },
    /// The section header table lies past the end of the file.
    #[error("the kernel ELF's section header table ends past the end of the {file_len}-byte image (truncated?)")]
    SectionHeadersPastEof {
        /// Image length.
        file_len: usize,
    },
    /// No PT_LOAD segment.
    #[error("the kernel ELF has no loadable segment")]
    NoLoadableSegment,
    /// The entry point is not in an executable segment.
    #[error("the entry point {entry:#x} is not inside an executable loadable segment")]
    BadEntry {
        /// e_entry.
        entry: u64,
    },
    /// linux-loader refused the image after our checks passed.
    #[error("loading the kernel ELF failed: {0}")]
    Load(String),
}

/// Where the kernel landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The entry point.
    pub entry: u64,
    /// First page after the image, BSS included.
    pub image_end: u64,
}

/// The span of one loadable segment.
#[derive(Clone, Copy)]
struct Span {
    index: usize,
    start: u64,
    end: u64,
    executable: bool,
}

/// Checks `image` against a RAM of `ram_bytes` without touching guest memory.
pub fn validate(image: &[u8], ram_bytes: u64) -> Result<LoadedKernel, LoaderError> {
    let header_len = std::mem::size_of::<Elf64_Ehdr>();
    if image.len() < header_len {
        return Err(LoaderError::TooShort { len: image.len() });
    }
    let mut ehdr = Elf64_Ehdr::default();
    ehdr.as_mut_slice().copy_from_slice(&image[..header_len]);
    if &ehdr.e_ident[..4] != ELFMAG {
        return Err(LoaderError::NotElf);
    }
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(LoaderError::WrongClass);
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(LoaderError::WrongMachine { machine: ehdr.e_machine });
    }
    match ehdr.e_type {
        t if t == ET_EXEC => {}
        t if t == ET_DYN => return Err(LoaderError::PositionIndependent),
        elf_type => return Err(LoaderError::WrongType { elf_type }),
    }
    let phdr_len = std::mem::size_of::<Elf64_Phdr>();
    if usize::from(ehdr.e_phentsize) != phdr_len {
        return Err(LoaderError::BadProgramHeaders { problem: "entry size is not 56 bytes" });
    }
    if ehdr.e_phnum == 0 {
        return Err(LoaderError::NoLoadableSegment);
    }
    let table_start = usize::try_from(ehdr.e_phoff).ok();
    let table_end =
        table_start.and_then(|start| start.checked_add(usize::from(ehdr.e_phnum) * phdr_len));
    let (Some(table_start), Some(table_end)) = (table_start, table_end) else {
        return Err(LoaderError::BadProgramHeaders { problem: "offset overflows" });
    };
    if table_end > image.len() || table_start < header_len {
        return Err(LoaderError::BadProgramHeaders { problem: "table lies outside the file" });
    }

    // Not needed for loading, but a table past the end means the file was cut short.
    let section_table_end = u64::from(ehdr.e_shnum)
        .checked_mul(u64::from(ehdr.e_shentsize))
        .and_then(|len| len.checked_add(ehdr.e_shoff));
    if ehdr.e_shnum > 0 && section_table_end.is_none_or(|end| end > image.len() as u64) {
        return Err(LoaderError::SectionHeadersPastEof { file_len: image.len() });
    }

    let mut spans: Vec<Span> = Vec::new();
    for (index, raw) in image[table_start..table_end].chunks_exact(phdr_len).enumerate() {
        let mut phdr = Elf64_Phdr::default();
        phdr.as_mut_slice().copy_from_slice(raw);
        if phdr.p_type != PT_LOAD {
            continue;
        }
        let file_end = phdr.p_offset.checked_add(phdr.p_filesz);
        if file_end.is_none_or(|end| end > image.len() as u64) {
            return Err(LoaderError::SegmentPastEof {
                index,
                offset: phdr.p_offset,
                file_bytes: phdr.p_filesz,
                file_len: image.len(),
            });
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(LoaderError::FileLargerThanMemory {
                index,
                file_bytes: phdr.p_filesz,
                mem_bytes: phdr.p_memsz,
            });
        }
        let start = phdr.p_paddr;
        let end = start.checked_add(phdr.p_memsz);
        if start < KERNEL_MIN_ADDR || end.is_none_or(|end| end > ram_bytes) {
            return Err(LoaderError::SegmentOutsideRam {
                index,
                start,
                end: end.unwrap_or(u64::MAX),
                ram_bytes,
            });
        }
        let span =
            Span { index, start, end: end.expect("checked"), executable: phdr.p_flags & PF_X != 0 };
        if let Some(other) =
            spans.iter().find(|other| span.start < other.end && other.start < span.end)
        {
            return Err(LoaderError::Overlap { first: other.index, second: index });
        }
        spans.push(span);
    }
    if spans.is_empty() {
        return Err(LoaderError::NoLoadableSegment);
    }
    let entry = ehdr.e_entry;
    if !spans.iter().any(|span| span.executable && (span.start..span.end).contains(&entry)) {
        return Err(LoaderError::BadEntry { entry });
    }
    let last_end = spans.iter().map(|span| span.end).max().expect("non-empty");
    let image_end = last_end.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    Ok(LoadedKernel { entry, image_end })
}

/// Validates `image` and copies its segments into `memory` (fresh, zeroed RAM,
/// so BSS needs no clearing).
pub fn load(memory: &GuestRam, image: &[u8]) -> Result<LoadedKernel, LoaderError> {
    let kernel = validate(image, crate::memory::ram_bytes(memory))?;
    Elf::load(memory, None, &mut Cursor::new(image), None)
        .map_err(|error| LoaderError::Load(error.to_string()))?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAM: u64 = 64 << 20;

    fn kernel() -> &'static [u8] {
        crate::kernel::KERNEL_ELF
    }

    /// A minimal valid ELF: one RX segment at 2 MiB with 16 bytes of code.
    fn tiny_elf() -> Vec<u8> {
        let mut image = vec![0u8; 0x1010];
        image[..4].copy_from_slice(ELFMAG);
        image[4] = ELFCLASS64;
        image[5] = ELFDATA2LSB;
        image[6] = 1;
        image[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        image[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        image[24..32].copy_from_slice(&KERNEL_MIN_ADDR.to_le_bytes()); // e_entry
        image[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        image[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        image[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        image[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let phdr = &mut image[64..120];
        phdr[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        phdr[4..8].copy_from_slice(&(PF_X | 4).to_le_bytes());
        phdr[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
        phdr[16..24].copy_from_slice(&KERNEL_MIN_ADDR.to_le_bytes()); // p_vaddr
        phdr[24..32].copy_from_slice(&KERNEL_MIN_ADDR.to_le_bytes()); // p_paddr
        phdr[32..40].copy_from_slice(&16u64.to_le_bytes()); // p_filesz
        phdr[40..48].copy_from_slice(&0x2000u64.to_le_bytes()); // p_memsz (BSS)
        image
    }

    fn set_u64(image: &mut [u8], offset: usize, value: u64) {
        image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn the_embedded_kernel_is_valid() {
        let loaded = validate(kernel(), RAM).unwrap();
        assert!(loaded.entry >= KERNEL_MIN_ADDR);
        assert!(loaded.image_end > loaded.entry && loaded.image_end.is_multiple_of(PAGE_BYTES));
        let memory = crate::memory::create(RAM).unwrap();
        assert_eq!(load(&memory, kernel()).unwrap(), loaded);
    }

    #[test]
    fn image_end_includes_bss() {
        let loaded = validate(&tiny_elf(), RAM).unwrap();
        assert_eq!(loaded.image_end, KERNEL_MIN_ADDR + 0x2000);
    }

    #[test]
    fn truncated_images_are_refused() {
        for len in [0, 10, 63] {
            assert_eq!(validate(&kernel()[..len], RAM), Err(LoaderError::TooShort { len }));
        }
        let image = kernel();
        for len in [100, image.len() / 2, image.len() - 1] {
            let error = validate(&image[..len], RAM).unwrap_err();
            assert!(
                matches!(
                    error,
                    LoaderError::SegmentPastEof { .. }
                        | LoaderError::BadProgramHeaders { .. }
                        | LoaderError::SectionHeadersPastEof { .. }
                ),
                "{len}: {error}"
            );
        }
    }

    #[test]
    fn wrong_machine_type_and_magic() {
        let mut image = tiny_elf();
        image[18] = 0x28; // EM_ARM
        assert_eq!(validate(&image, RAM), Err(LoaderError::WrongMachine { machine: 0x28 }));
        let mut image = tiny_elf();
        image[16] = ET_DYN as u8;
        assert_eq!(validate(&image, RAM), Err(LoaderError::PositionIndependent));
        let mut image = tiny_elf();
        image[0] = b'X';
        assert_eq!(validate(&image, RAM), Err(LoaderError::NotElf));
        let mut image = tiny_elf();
        image[4] = 1; // ELFCLASS32
        assert_eq!(validate(&image, RAM), Err(LoaderError::WrongClass));
    }

    #[test]
    fn segments_must_lie_in_the_kernel_area_of_ram() {
        let mut image = tiny_elf();
        set_u64(&mut image, 64 + 40, RAM); // p_memsz runs past RAM
        assert!(matches!(
            validate(&image, RAM),
            Err(LoaderError::SegmentOutsideRam { index: 0, .. })
        ));
        let mut image = tiny_elf();
        set_u64(&mut image, 64 + 24, 0x1000); // over the page tables
        assert!(matches!(validate(&image, RAM), Err(LoaderError::SegmentOutsideRam { .. })));
        let mut image = tiny_elf();
        set_u64(&mut image, 64 + 24, u64::MAX - 4); // wraps
        assert!(matches!(validate(&image, RAM), Err(LoaderError::SegmentOutsideRam { .. })));
    }

    #[test]
    fn other_header_problems() {
        let mut image = tiny_elf();
        set_u64(&mut image, 64 + 40, 8); // memsz < filesz
        assert!(matches!(validate(&image, RAM), Err(LoaderError::FileLargerThanMemory { .. })));
        let mut image = tiny_elf();
        set_u64(&mut image, 24, 0x10_0000); // entry outside the segment
        assert_eq!(validate(&image, RAM), Err(LoaderError::BadEntry { entry: 0x10_0000 }));
        let mut image = tiny_elf();
        set_u64(&mut image, 32, u64::MAX - 10); // e_phoff
        assert!(matches!(validate(&image, RAM), Err(LoaderError::BadProgramHeaders { .. })));
        let mut image = tiny_elf();
        image[56] = 0; // no program headers
        assert_eq!(validate(&image, RAM), Err(LoaderError::NoLoadableSegment));
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let mut image = tiny_elf();
        image[56] = 2;
        let first: Vec<u8> = image[64..120].to_vec();
        image[120..176].copy_from_slice(&first);
        assert_eq!(validate(&image, RAM), Err(LoaderError::Overlap { first: 0, second: 1 }));
    }

    proptest! {
        /// Garbage in any header byte is an error or a valid result, never a panic,
        /// and never a segment outside the kernel area.
        #[test]
        fn corrupted_headers_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let mut image = kernel().to_vec();
            for (offset, byte) in flips {
                image[offset] ^= byte;
            }
            if let Ok(loaded) = validate(&image, RAM) {
                prop_assert!(loaded.image_end <= RAM);
            }
        }
    }
}
