//! `role=hostile`: a guest that tries to hurt the VMM. It throws garbage at
//! every device register and offset in every access size, names buffers
//! outside RAM, straddling its end and wrapping the address space, touches
//! MMIO addresses where no device lives, then wipes its IDT and executes port
//! IO, which escalates to a triple fault. The VMM must survive all of it and
//! report what the guest did.
use super::RoleError;
use crate::{arch, drivers, println};
use ftvm_abi::boot::BootInfo;
use ftvm_abi::buf;
use ftvm_abi::mmio::{self, clock, console, entropy, events, power, timer, virtio};

const GARBAGE: [u64; 6] =
    [0, u64::MAX, 0xdead_beef_dead_beef, 0xffff_0000_dead_0000, 0x0000_ffff_ffff_ffff, 0x1234_5678];

fn write_sized(addr: u64, size: u64, value: u64) {
    // SAFETY: every address here is an MMIO address (no memory behind it) or
    // deliberately unmapped-by-RAM; the VMM decides what happens.
    unsafe {
        match size {
            1 => core::ptr::write_volatile(addr as *mut u8, value as u8),
            2 => core::ptr::write_volatile(addr as *mut u16, value as u16),
            4 => core::ptr::write_volatile(addr as *mut u32, value as u32),
            _ => core::ptr::write_volatile(addr as *mut u64, value),
        }
    }
}

fn read_sized(addr: u64, size: u64) -> u64 {
    // SAFETY: as in `write_sized`.
    unsafe {
        match size {
            1 => u64::from(core::ptr::read_volatile(addr as *const u8)),
            2 => u64::from(core::ptr::read_volatile(addr as *const u16)),
            4 => u64::from(core::ptr::read_volatile(addr as *const u32)),
            _ => core::ptr::read_volatile(addr as *const u64),
        }
    }
}

/// Registers that would end the run or block forever are left to the
/// dedicated steps below.
fn is_terminal(base: u64, offset: u64) -> bool {
    (base == power::BASE && (offset == power::SHUTDOWN || offset == power::FAULT_REPORT))
        || (base == events::BASE && offset == events::WAIT)
}

pub fn run(info: &BootInfo) -> Result<(), RoleError> {
    let ram_end = info.ram_bytes;
    println!("hostile: garbage to every device register, offset and access size");
    let windows =
        [console::BASE, power::BASE, clock::BASE, timer::BASE, entropy::BASE, events::BASE];
    let mut accesses = 0u64;
    for base in windows {
        // Every byte offset of the register block, plus the far end of the window.
        let offsets = (0..0x40u64).chain([0x7f8, 0xff8, 0xffc, 0xfff]);
        for offset in offsets {
            if is_terminal(base, offset & !7) && offset % 8 == 0 {
                continue;
            }
            for size in [1u64, 2, 4, 8] {
                if offset + size > mmio::WINDOW_BYTES {
                    continue;
                }
                let _ = read_sized(base + offset, size);
                for value in GARBAGE {
                    write_sized(base + offset, size, value);
                }
                accesses += 1 + GARBAGE.len() as u64;
            }
        }
    }
    // The sweep may have armed the timer at a garbage deadline: disarm it.
    drivers::timer::set_deadline_ns(0);
    println!("hostile: {accesses} garbage register accesses survived");

    println!("hostile: buffers outside RAM, straddling its end, wrapping");
    let bad_buffers = [
        (ram_end, 16usize),
        (ram_end - 8, 64),
        (0x0000_ffff_ffff_fff0, buf::MAX_LEN),
        (0xfe00_0000, 32),
        (0, 0),
    ];
    for (addr, len) in bad_buffers {
        let descriptor = buf::pack(addr, len).expect("fits 48 bits");
        drivers::write(console::BASE, console::WRITE, descriptor);
        drivers::write(entropy::BASE, entropy::FILL, descriptor);
    }

    println!("hostile: an event page the VMM must not write");
    for page in [ram_end - 4, ram_end, 0x0000_ffff_ffff_f000, u64::MAX] {
        drivers::write(events::BASE, events::EVENT_PAGE, page);
        drivers::timer::set_deadline_ns(1);
        let _ = drivers::events::wait();
    }
    drivers::write(events::BASE, events::EVENT_PAGE, 0);

    println!("hostile: MMIO where no device lives");
    for addr in
        [mmio::MMIO_END - 8, virtio::NET_BASE, virtio::BLOCK_BASE, 0xc000_0000, ram_end + 0x1000]
    {
        let _ = read_sized(addr, 8);
        write_sized(addr, 8, u64::MAX);
        write_sized(addr, 1, 0xff);
    }

    println!("hostile: wiping the IDT, then port IO: expect a triple fault");
    arch::wipe_idt();
    // SAFETY: faults on purpose (#GP at CPL3, no gate -> double fault -> triple fault).
    unsafe { core::arch::asm!("in al, dx", out("al") _, in("dx") 0x80u16) };
    Err(RoleError::Check(alloc::string::String::from("port IO at CPL3 did not fault")))
}
