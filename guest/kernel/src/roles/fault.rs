//! `role=fault kind=ud|pf|gp|de|bp`: raises a CPU exception on purpose, to test
//! the fatal-exception path (stub -> power device -> VMM report).
use super::RoleError;
use crate::cmdline::Cmdline;
use crate::println;

pub fn run(args: &Cmdline) -> Result<(), RoleError> {
    let kind = args.get("kind").unwrap_or("ud");
    println!("fault: raising `{kind}`");
    // SAFETY: each arm faults on purpose; the VMM ends the run at the fault.
    unsafe {
        match kind {
            "ud" => core::arch::asm!("ud2"),
            "pf" => {
                core::ptr::read_volatile(0x10 as *const u64);
            }
            "gp" => core::arch::asm!("mov rax, 0x8000000000000000", "mov rax, [rax]", out("rax") _),
            "de" => {
                core::arch::asm!("xor edx, edx", "xor ecx, ecx", "mov eax, 1", "div ecx", out("eax") _, out("ecx") _, out("edx") _)
            }
            "bp" => core::arch::asm!("int3"),
            _ => {
                return Err(RoleError::BadCmdline(alloc::format!(
                    "kind={kind}: expected ud, pf, gp, de or bp"
                )))
            }
        };
    }
    Err(RoleError::Check(alloc::format!("`{kind}` did not fault")))
}
