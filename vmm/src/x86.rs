//! The x86_64 state the guest starts in: identity-mapped page tables with the
//! user bit set, a GDT with kernel and user segments and a 64-bit TSS, long
//! mode control registers, and the entry registers. All addresses come from
//! ftvm_abi::layout. The tables are built as bytes first (pure functions,
//! testable), then written to guest RAM.
use ftvm_abi::layout::{
    selector, BOOT_INFO_ADDR, DOUBLE_FAULT_STACK_TOP, GDT_ADDR, GDT_ENTRIES, IDT_ADDR, IDT_ENTRIES,
    PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR, PT_LOW_ADDR, RING0_STACK_TOP, TSS_ADDR,
};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestRam;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;
const ENTRIES_PER_TABLE: u64 = 512;
const TWO_MIB: u64 = 2 << 20;
const PAGE: u64 = 4096;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const TSS_BYTES: u64 = 104;
const TSS_RSP0_OFFSET: u64 = 4;
const TSS_IST1_OFFSET: u64 = 36;
const TSS_IOMAP_OFFSET: u64 = 102;

/// The privilege level the VMM enters the guest at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EntryMode {
    /// Enter directly at CPL3: no ring-0 instruction runs at boot.
    #[default]
    Cpl3,
    /// Enter at CPL0; the guest's entry drops to CPL3 with `iretq`.
    Cpl0,
}

impl From<EntryMode> for logchannel::EntryLevel {
    fn from(mode: EntryMode) -> Self {
        match mode {
            EntryMode::Cpl3 => logchannel::EntryLevel::Cpl3,
            EntryMode::Cpl0 => logchannel::EntryLevel::Cpl0,
        }
    }
}

impl From<logchannel::EntryLevel> for EntryMode {
    fn from(level: logchannel::EntryLevel) -> Self {
        match level {
            logchannel::EntryLevel::Cpl3 => EntryMode::Cpl3,
            logchannel::EntryLevel::Cpl0 => EntryMode::Cpl0,
        }
    }
}

/// Every page-table page as `(guest address, 4 KiB contents)`: the low 4 GiB
/// identity-mapped, 2 MiB pages except the first 2 MiB (4 KiB pages, page 0
/// absent so a null dereference faults), user bit everywhere.
pub fn page_tables() -> Vec<(u64, Vec<u64>)> {
    let mut pml4 = vec![0u64; ENTRIES_PER_TABLE as usize];
    pml4[0] = PDPT_ADDR | TABLE_FLAGS;
    let mut pdpt = vec![0u64; ENTRIES_PER_TABLE as usize];
    let mut tables = Vec::new();
    for directory in 0..PD_COUNT {
        let pd_addr = PD_ADDR + directory * PAGE;
        pdpt[directory as usize] = pd_addr | TABLE_FLAGS;
        let pd = (0..ENTRIES_PER_TABLE)
            .map(|entry| {
                let phys = (directory * ENTRIES_PER_TABLE + entry) * TWO_MIB;
                if phys == 0 {
                    PT_LOW_ADDR | TABLE_FLAGS
                } else {
                    phys | TABLE_FLAGS | HUGE
                }
            })
            .collect();
        tables.push((pd_addr, pd));
    }
    let low = (0..ENTRIES_PER_TABLE)
        .map(|entry| if entry == 0 { 0 } else { (entry * PAGE) | TABLE_FLAGS })
        .collect();
    tables.push((PT_LOW_ADDR, low));
    tables.push((PML4_ADDR, pml4));
    tables.push((PDPT_ADDR, pdpt));
    tables
}

/// The GDT: null, kernel code/data, user data/code (DPL 3), and the TSS.
pub fn gdt() -> [u64; GDT_ENTRIES as usize] {
    const KERNEL_CODE: u64 = 0x00af_9b00_0000_ffff;
    const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
    const USER_DATA: u64 = 0x00cf_f300_0000_ffff;
    const USER_CODE: u64 = 0x00af_fb00_0000_ffff;
    let limit = TSS_BYTES - 1;
    let tss_low = (limit & 0xffff)
        | ((TSS_ADDR & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((TSS_ADDR >> 24) & 0xff) << 56);
    let tss_high = TSS_ADDR >> 32;
    let mut gdt = [0u64; GDT_ENTRIES as usize];
    gdt[usize::from(selector::KERNEL_CODE >> 3)] = KERNEL_CODE;
    gdt[usize::from(selector::KERNEL_DATA >> 3)] = KERNEL_DATA;
    gdt[usize::from(selector::USER_DATA >> 3)] = USER_DATA;
    gdt[usize::from(selector::USER_CODE >> 3)] = USER_CODE;
    gdt[usize::from(selector::TSS >> 3)] = tss_low;
    gdt[usize::from(selector::TSS >> 3) + 1] = tss_high;
    gdt
}

/// The TSS: ring-0 stack for exceptions from CPL3, IST1 for double faults,
/// and no I/O permission bitmap.
pub fn tss() -> [u8; TSS_BYTES as usize] {
    let mut tss = [0u8; TSS_BYTES as usize];
    let put = |tss: &mut [u8], offset: u64, bytes: &[u8]| {
        tss[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut tss, TSS_RSP0_OFFSET, &RING0_STACK_TOP.to_le_bytes());
    put(&mut tss, TSS_IST1_OFFSET, &DOUBLE_FAULT_STACK_TOP.to_le_bytes());
    put(&mut tss, TSS_IOMAP_OFFSET, &(TSS_BYTES as u16).to_le_bytes());
    tss
}

/// Writes page tables, GDT and TSS into guest RAM (the IDT page stays zero:
/// the guest fills it).
pub fn write_tables(memory: &GuestRam) -> Result<(), vm_memory::GuestMemoryError> {
    for (addr, entries) in page_tables() {
        let bytes: Vec<u8> = entries.iter().flat_map(|entry| entry.to_le_bytes()).collect();
        memory.write_slice(&bytes, GuestAddress(addr))?;
    }
    let gdt_bytes: Vec<u8> = gdt().iter().flat_map(|entry| entry.to_le_bytes()).collect();
    memory.write_slice(&gdt_bytes, GuestAddress(GDT_ADDR))?;
    memory.write_slice(&tss(), GuestAddress(TSS_ADDR))
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    let dpl = (selector & 3) as u8;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long mode system registers for entry in `mode`, starting from KVM's defaults.
pub fn sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let (code, data) = match mode {
        EntryMode::Cpl3 => (selector::USER_CODE, selector::USER_DATA),
        EntryMode::Cpl0 => (selector::KERNEL_CODE, selector::KERNEL_DATA),
    };
    sregs.cs = segment(code, true);
    let data = segment(data, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: (TSS_BYTES - 1) as u32,
        selector: selector::TSS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = (IDT_ENTRIES * 16 - 1) as u16;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// Entry registers: RIP at the kernel entry, RDI the boot-info address,
/// interrupts off. At CPL0 the ring-0 stack is usable for the `iretq` frame;
/// at CPL3 the guest sets its own stack first thing.
pub fn regs(entry: u64, mode: EntryMode) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: BOOT_INFO_ADDR,
        rsp: match mode {
            EntryMode::Cpl3 => 0,
            EntryMode::Cpl0 => RING0_STACK_TOP,
        },
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does (4-level, 2 MiB and 4 KiB pages).
    fn translate(tables: &[(u64, Vec<u64>)], virt: u64) -> Option<(u64, bool)> {
        let table = |addr: u64| &tables.iter().find(|(a, _)| *a == addr).expect("table exists").1;
        let index = |level: u32| ((virt >> (12 + 9 * level)) & 0x1ff) as usize;
        let pml4e = table(PML4_ADDR)[index(3)];
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = table(pml4e & !0xfff)[index(2)];
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = table(pdpte & !0xfff)[index(1)];
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & HUGE != 0 {
            return Some(((pde & !0x1f_ffff & !HUGE) + (virt & 0x1f_ffff), pde & USER != 0));
        }
        let pte = table(pde & !0xfff)[index(0)];
        (pte & PRESENT != 0).then(|| ((pte & !0xfff) + (virt & 0xfff), pte & USER != 0))
    }

    #[test]
    fn identity_map_with_user_bit_and_null_guard() {
        let tables = page_tables();
        assert_eq!(translate(&tables, 0), None, "page 0 must fault");
        for virt in [0x1000, 0x20_0000, 0x20_0123, 0x7ff_ffff, 0xfe00_0008, 0xffff_fff8] {
            assert_eq!(translate(&tables, virt), Some((virt, true)), "{virt:#x}");
        }
        assert_eq!(translate(&tables, 1 << 32), None);
    }

    #[test]
    fn gdt_selectors_have_the_right_privilege() {
        let gdt = gdt();
        let dpl = |sel: u16| (gdt[usize::from(sel >> 3)] >> 45) & 3;
        assert_eq!(dpl(selector::KERNEL_CODE), 0);
        assert_eq!(dpl(selector::USER_CODE), 3);
        assert_eq!(dpl(selector::USER_DATA), 3);
        let long_mode = |sel: u16| (gdt[usize::from(sel >> 3)] >> 53) & 1;
        assert_eq!(long_mode(selector::USER_CODE), 1);
        let tss = gdt[usize::from(selector::TSS >> 3)];
        assert_eq!((tss >> 16) & 0xff_ffff, TSS_ADDR & 0xff_ffff);
    }
}
