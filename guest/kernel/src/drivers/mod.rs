//! Thin drivers over the ftvm platform devices (ftvm_abi::mmio). Every access
//! is an MMIO exit (~36 us here), so each driver call costs exactly one.

pub mod clock;
pub mod entropy;
pub mod events;
pub mod power;
pub mod timer;
pub mod virtio;

/// Reads the 64-bit register at `base + offset`.
pub fn read(base: u64, offset: u64) -> u64 {
    // SAFETY: device windows are identity-mapped with no memory behind them;
    // the access traps to the VMM, which emulates the register.
    unsafe { core::ptr::read_volatile((base + offset) as *const u64) }
}

/// Writes the 64-bit register at `base + offset`.
pub fn write(base: u64, offset: u64, value: u64) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u64, value) }
}
