//! `role=hostile`: a guest that tries to hurt the VMM. It throws garbage at
//! every device register and offset in every access size, names buffers
//! outside RAM, straddling its end and wrapping the address space, touches
//! MMIO addresses where no device lives, then wipes its IDT and executes port
//! IO, which escalates to a triple fault. The VMM must survive all of it and
//! report what the guest did.
use super::RoleError;
use crate::{arch, drivers, println};
use ftvm_abi::boot::{device, BootInfo};
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

/// A 32-bit virtio-mmio register write.
fn virtio_write(base: u64, offset: u64, value: u32) {
    write_sized(base + offset, 4, u64::from(value));
}

/// Sets up every queue of the device at `base` over a page of garbage
/// descriptors (huge lengths, addresses outside RAM, NEXT loops), marks it
/// live and notifies; then points rings outside RAM; then writes garbage to
/// every register. The VMM must refuse all of it and stay up.
fn attack_virtio(base: u64, ram_end: u64) {
    const STATUS: u64 = 0x70;
    let table = alloc::vec![0u8; 3 * 4096 + 4096];
    let page = (table.as_ptr() as u64 + 4095) & !4095;
    for queue_size in [256u32, 16] {
        for slot in 0..(4096 / 16) {
            let desc = (page + slot * 16) as *mut [u64; 2];
            let addr = match slot % 4 {
                0 => ram_end - 8,
                1 => 0xffff_ffff_0000,
                2 => page,
                _ => 0,
            };
            let len_flags_next = 0xffff_ffffu64 | (1 << 32) | (((slot + 1) % 7) << 48);
            // SAFETY: writes inside `table`, which this function owns.
            unsafe { desc.write_volatile([addr, len_flags_next]) };
        }
        let avail = (page + 4096) as *mut u16;
        // SAFETY: the avail ring lives in the second page of `table`.
        unsafe {
            avail.add(1).write_volatile(200);
            for entry in 0..256 {
                avail.add(2 + entry).write_volatile((entry * 37) as u16);
            }
        }
        virtio_write(base, STATUS, 0);
        virtio_write(base, STATUS, 1 | 2);
        virtio_write(base, 0x24, 1);
        virtio_write(base, 0x20, 1);
        virtio_write(base, STATUS, 1 | 2 | 8);
        for queue in 0..2 {
            virtio_write(base, 0x30, queue);
            virtio_write(base, 0x38, queue_size);
            for (offset, addr) in [(0x80, page), (0x90, page + 4096), (0xa0, page + 8192)] {
                virtio_write(base, offset, addr as u32);
                virtio_write(base, offset + 4, (addr >> 32) as u32);
            }
            virtio_write(base, 0x44, 1);
        }
        virtio_write(base, STATUS, 1 | 2 | 8 | 4);
        for queue in 0..4 {
            virtio_write(base, 0x50, queue);
        }
    }
    // Rings outside RAM: QueueReady must not stick.
    virtio_write(base, 0x30, 0);
    virtio_write(base, 0x80, (ram_end + 4096) as u32);
    virtio_write(base, 0x84, 0x10);
    virtio_write(base, 0x44, 1);
    virtio_write(base, 0x50, 0);
    for offset in (0..0x120).step_by(4) {
        if offset != STATUS {
            virtio_write(base, offset, 0xdead_beef);
        }
        let _ = read_sized(base + offset, 4);
    }
    virtio_write(base, STATUS, 0);
}

/// Packets whose virtio-net header lies about the frame behind it, through
/// the real driver: the VMM must refuse each (and count it), never pass it on.
fn nonsense_net_headers() {
    let Ok(mut nic) = drivers::virtio::net::NetDevice::open() else {
        println!("hostile: the NIC did not come up");
        return;
    };
    // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (little endian).
    let header = |flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16| {
        let mut bytes = [0u8; drivers::virtio::net::HEADER_BYTES];
        bytes[0] = flags;
        bytes[1] = gso;
        for (at, value) in [(2, hdr_len), (4, gso_size), (6, start), (8, offset)] {
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    };
    let frame = alloc::vec![0x5au8; 9000];
    for nonsense in [
        header(1, 1, 66, 0, 34, 16),        // gso_size 0
        header(1, 1, 66, 1, 34, 16),        // gso_size 1: 9000 one-byte segments
        header(1, 1, 0, 1448, 34, 16),      // hdr_len 0
        header(1, 1, 60_000, 1448, 34, 16), // hdr_len past the frame
        header(1, 1, 66, 1448, 65_000, 16), // csum_start past the frame
        header(1, 1, 66, 1448, 34, 65_000), // csum_offset past the frame
        header(1, 0, 0, 0, 8_999, 1),       // checksum straddling the frame's end
        header(0xff, 0x7f, 0xffff, 0xffff, 0xffff, 0xffff),
    ] {
        nic.transmit_raw(nonsense, &frame);
    }
    nic.flush();
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

    if info.devices & device::NET != 0 {
        println!("hostile: virtio-net: nonsense offload headers (gso_size, hdr_len, csum offsets)");
        nonsense_net_headers();
    }
    for (bit, base, name) in [
        (device::NET, virtio::NET_BASE, "virtio-net"),
        (device::BLOCK, virtio::BLOCK_BASE, "virtio-blk"),
    ] {
        if info.devices & bit != 0 {
            println!(
                "hostile: {name}: garbage descriptor tables, rings outside RAM, register garbage"
            );
            attack_virtio(base, ram_end);
        }
    }

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
