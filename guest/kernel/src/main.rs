//! The ftvm guest kernel.
//!
//! Ring 0 holds only the entry trampoline (when the VMM enters at CPL0) and the
//! fatal-exception path; everything else runs at CPL3, natively (DESIGN §3,
//! PLATFORM.md: ring-0 code is emulated at ~1 MIPS on these hosts). There are no
//! interrupts: the kernel learns about events from the event register and idles
//! by reading its `WAIT` register.
//!
//! The kernel never executes RDTSC, RDTSCP, RDPID, RDRAND, RDSEED, CPUID or
//! XGETBV: they cannot be intercepted and would break replay. Time and
//! randomness come from devices.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod cmdline;
mod console;
mod drivers;
mod heap;
mod mesh;
mod net;
mod roles;
mod runtime;

use ftvm_abi::boot::BootInfo;
use ftvm_abi::exit;

/// Rust entry, called at CPL3 by `arch::entry` with the boot-info address.
#[no_mangle]
extern "C" fn kernel_main(boot_info_addr: u64) -> ! {
    arch::install_exception_handlers();
    // SAFETY: the VMM maps and writes the boot-info block at this address
    // before entry (ftvm_abi::layout::BOOT_INFO_ADDR); it is never written again.
    let block =
        unsafe { core::slice::from_raw_parts(boot_info_addr as *const u8, ftvm_abi::boot::BYTES) };
    let info = match BootInfo::decode(block) {
        Ok(info) => info,
        Err(error) => {
            println!("kernel: unusable boot-info block: {error:?}");
            drivers::power::shutdown(exit::BAD_CMDLINE);
        }
    };
    heap::init(info.image_end, info.ram_bytes);
    runtime::init();
    let args = cmdline::Cmdline::new(info.cmdline);
    let code = roles::run(&args, &info);
    drivers::power::shutdown(code);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("kernel panic: {info}");
    drivers::power::shutdown(exit::PANIC);
}
