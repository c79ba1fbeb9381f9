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
use vm_memory::{ByteValued, GuestMemoryMmap};

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
    #[error("the kernel ELF is position-independent (ET_DYN); link it with --no-pie at a fixed address")]
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
    let ehdr = Elf64_Ehdr::from_slice(&image[..header_len]).expect("length checked");
    if &ehdr.e_ident[..4] != ELFMAG {
        return Err(LoaderError::NotElf);
    }
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(LoaderError::WrongClass);
    }
    if ehdr.e_machine != EM_X86_64 as u16 {
        return Err(LoaderError::WrongMachine { machine: ehdr.e_machine });
    }
    match ehdr.e_type {
        t if t == ET_EXEC as u16 => {}
        t if t == ET_DYN as u16 => return Err(LoaderError::PositionIndependent),
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
    let table_end = table_start.and_then(|start| start.checked_add(usize::from(ehdr.e_phnum) * phdr_len));
    let (Some(table_start), Some(table_end)) = (table_start, table_end) else {
        return Err(LoaderError::BadProgramHeaders { problem: "offset overflows" });
    };
    if table_end > image.len() || table_start < header_len {
        return Err(LoaderError::BadProgramHeaders { problem: "table lies outside the file" });
    }

    let mut spans: Vec<Span> = Vec::new();
    for (index, raw) in image[table_start..table_end].chunks_exact(phdr_len).enumerate() {
        let phdr = Elf64_Phdr::from_slice(raw).expect("chunk has the header's size");
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
        let span = Span { index, start, end: end.expect("checked"), executable: phdr.p_flags & PF_X != 0 };
        if let Some(other) = spans.iter().find(|other| span.start < other.end && other.start < span.end) {
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
pub fn load(memory: &GuestMemoryMmap, image: &[u8]) -> Result<LoadedKernel, LoaderError> {
    let kernel = validate(image, crate::memory::ram_bytes(memory))?;
    Elf::load(memory, None, &mut Cursor::new(image), None)
        .map_err(|error| LoaderError::Load(error.to_string()))?;
    Ok(kernel)
}
