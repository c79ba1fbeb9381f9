//! The guest-physical memory map.
//!
//! ```text
//! 0x0000_0000  null page (not mapped: a null dereference faults)
//! 0x0000_1000  PML4                         } page tables built by the VMM,
//! 0x0000_2000  PDPT                         } identity map of the low 4 GiB,
//! 0x0000_3000  4 page directories (2 MiB)   } user bit set everywhere
//! 0x0000_7000  page table for the first 2 MiB (4 KiB pages, page 0 absent)
//! 0x0000_8000  GDT, then the TSS
//! 0x0000_9000  boot-info block (see `boot`)
//! 0x0000_a000  IDT (256 gates, filled by the guest at CPL3)
//! 0x0000_b000  double-fault stack (IST1), 4 KiB
//! 0x0000_c000  ring-0 stack (TSS.RSP0), 16 KiB, grows down from 0x1_0000
//! 0x0020_0000  lowest address a kernel ELF segment may use
//! RAM end      at most `MAX_RAM_BYTES`
//! 0xfe00_0000  device windows (see `mmio`), no memory behind them
//! ```

/// Physical address of the top-level page table.
pub const PML4_ADDR: u64 = 0x1000;
/// Physical address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x2000;
/// Physical address of the first of `PD_COUNT` page directories.
pub const PD_ADDR: u64 = 0x3000;
/// Page directories that map the low 4 GiB with 2 MiB pages.
pub const PD_COUNT: u64 = 4;
/// Physical address of the 4 KiB page table that maps the first 2 MiB.
pub const PT_LOW_ADDR: u64 = 0x7000;
/// Physical address of the GDT.
pub const GDT_ADDR: u64 = 0x8000;
/// Physical address of the TSS (after the GDT, in the same page).
pub const TSS_ADDR: u64 = 0x8800;
/// Physical address of the boot-info block.
pub const BOOT_INFO_ADDR: u64 = 0x9000;
/// Physical address of the IDT.
pub const IDT_ADDR: u64 = 0xa000;
/// Number of gates in the IDT.
pub const IDT_ENTRIES: u64 = 256;
/// Top of the double-fault (IST1) stack.
pub const DOUBLE_FAULT_STACK_TOP: u64 = 0xc000;
/// Top of the ring-0 stack the CPU switches to on an exception from CPL3.
pub const RING0_STACK_TOP: u64 = 0x1_0000;
/// Everything below this address belongs to the VMM's structures; kernel ELF
/// segments must start at or above it.
pub const KERNEL_MIN_ADDR: u64 = 0x20_0000;
/// Size of the region the page tables identity-map (RAM and device windows).
pub const IDENTITY_MAP_BYTES: u64 = PD_COUNT << 30;
/// The largest RAM a guest can have: RAM must stay below the device windows.
pub const MAX_RAM_BYTES: u64 = 0xc000_0000;
/// The smallest RAM a guest can have (kernel, heap, stacks).
pub const MIN_RAM_BYTES: u64 = 8 << 20;
/// Page size used for sizes and alignment in the ABI.
pub const PAGE_BYTES: u64 = 4096;

/// GDT selectors. The user selectors are the ones Linux uses for user mode,
/// the pair PLATFORM.md measured `iretq` to CPL3 with.
pub mod selector {
    /// Kernel 64-bit code, DPL 0.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data, DPL 0.
    pub const KERNEL_DATA: u16 = 0x10;
    /// User data, DPL 3 (GDT entry 5, RPL 3).
    pub const USER_DATA: u16 = 0x2b;
    /// User 64-bit code, DPL 3 (GDT entry 6, RPL 3).
    pub const USER_CODE: u16 = 0x33;
    /// 64-bit TSS (GDT entries 7 and 8).
    pub const TSS: u16 = 0x38;
}

/// Number of 8-byte GDT slots the VMM writes (null .. TSS high half).
pub const GDT_ENTRIES: u64 = 9;
