//! x86_64 specifics: the entry trampoline, the IDT and the ring-0 fault stubs.
//!
//! The VMM builds page tables, GDT and TSS (ftvm_abi::layout) and sets IDTR to
//! `IDT_ADDR`; the kernel fills the IDT gates itself, at CPL3 (every page is
//! user-accessible), so ring 0 runs no setup code at all.

use core::arch::global_asm;
use ftvm_abi::layout::{selector, IDT_ADDR};
use ftvm_abi::mmio::power;

const STACK_BYTES: usize = 256 * 1024;

/// The CPL3 kernel stack.
#[repr(C, align(4096))]
struct Stack([u8; STACK_BYTES]);
#[no_mangle]
static mut KERNEL_STACK: Stack = Stack([0; STACK_BYTES]);

// Entry: the VMM enters here either at CPL3 directly (CS = USER_CODE) or at
// CPL0 (CS = KERNEL_CODE, RSP = ring-0 stack). At CPL0 we drop to CPL3 with
// one `iretq`: five emulated instructions. RDI holds the boot-info address
// throughout.
global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    mov ax, cs",
    "    test ax, 3",
    "    jnz 2f",
    "    push {user_data}",
    "    push 0",
    "    push 2",
    "    push {user_code}",
    "    lea rax, [rip + 2f]",
    "    push rax",
    "    iretq",
    "2:",
    "    lea rsp, [rip + {stack} + {stack_bytes}]",
    "    xor ebp, ebp",
    "    call {main}",
    "3:  jmp 3b",
    user_data = const selector::USER_DATA as u64,
    user_code = const selector::USER_CODE as u64,
    stack = sym KERNEL_STACK,
    stack_bytes = const STACK_BYTES,
    main = sym crate::kernel_main,
);

// Fault stubs: 32 of them, 16 bytes apart, each pushing a zero error code when
// the CPU does not push one, then its vector, then jumping to the common
// path. The common path runs at CPL0 (emulated): it writes vector, error code
// and RIP to the power device and asks it to report and power off, so the
// message is produced by the VMM, not by slow ring-0 formatting.
global_asm!(
    ".section .text, \"ax\"",
    ".balign 16",
    ".global ftvm_fault_stubs",
    "ftvm_fault_stubs:",
    ".set vector, 0",
    ".rept 32",
    "    .balign 16",
    "    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)",
    "    .else",
    "    push 0",
    "    .endif",
    "    push vector",
    "    jmp ftvm_fault_common",
    "    .set vector, vector + 1",
    ".endr",
    "ftvm_fault_common:",
    "    mov rax, {power_base}",
    "    mov rbx, [rsp]",
    "    mov [rax + {vector_reg}], rbx",
    "    mov rbx, [rsp + 8]",
    "    mov [rax + {error_reg}], rbx",
    "    mov rbx, [rsp + 16]",
    "    mov [rax + {rip_reg}], rbx",
    "    mov [rax + {report_reg}], rbx",
    "4:  jmp 4b",
    power_base = const power::BASE,
    vector_reg = const power::FAULT_VECTOR,
    error_reg = const power::FAULT_ERROR,
    rip_reg = const power::FAULT_RIP,
    report_reg = const power::FAULT_REPORT,
);

extern "C" {
    static ftvm_fault_stubs: u8;
}

const STUB_STRIDE: u64 = 16;
const EXCEPTION_VECTORS: u64 = 32;
const DOUBLE_FAULT_VECTOR: u64 = 8;
/// Present, DPL 0, 64-bit interrupt gate.
const GATE_TYPE_INTERRUPT: u64 = 0x8e;

fn gate(handler: u64, ist: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (u64::from(selector::KERNEL_CODE) << 16)
        | (ist << 32)
        | (GATE_TYPE_INTERRUPT << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Fills the first 32 IDT gates with the fault stubs (double fault on IST1).
pub fn install_exception_handlers() {
    let stubs = core::ptr::addr_of!(ftvm_fault_stubs) as u64;
    for vector in 0..EXCEPTION_VECTORS {
        let ist = u64::from(vector == DOUBLE_FAULT_VECTOR);
        let entry = gate(stubs + vector * STUB_STRIDE, ist);
        let slot = (IDT_ADDR + vector * 16) as *mut [u64; 2];
        // SAFETY: the IDT page at IDT_ADDR is reserved for the kernel by the
        // ABI memory map, identity-mapped and user-writable.
        unsafe { slot.write_volatile(entry) };
    }
}

/// Clears every IDT gate, so the next exception escalates to a triple fault.
/// Only the `hostile` role uses this, to test the VMM's triple-fault path.
pub fn wipe_idt() {
    for vector in 0..ftvm_abi::layout::IDT_ENTRIES {
        let slot = (IDT_ADDR + vector * 16) as *mut [u64; 2];
        // SAFETY: as in `install_exception_handlers`.
        unsafe { slot.write_volatile([0, 0]) };
    }
}
