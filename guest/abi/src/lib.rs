//! The contract between the ftvm VMM and its guest, written once.
//!
//! Both the host (`vmm`) and the guest kernel depend on this crate, so every
//! physical address, device window, register offset, event bit, boot-info field
//! and exit code lives here and nowhere else. It is `no_std` and has no
//! dependencies.
//!
//! The platform (DESIGN §3): one x86_64 vCPU, RAM from physical address 0, the
//! guest's work at CPL3, devices that are MMIO only, and no hardware interrupts:
//! asynchronous events are published in the event device's pending mask at
//! landmarks (VM exits the guest causes), and the guest idles by reading
//! [`events::WAIT`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod boot;
pub mod buf;
pub mod exit;
pub mod layout;
pub mod mmio;

/// A small, fast, dependency-free 64-bit hash (FNV-1a) used where host and
/// guest must agree on a digest (e.g. the compute benchmark).
pub fn fnv1a64(seed: u64, data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
