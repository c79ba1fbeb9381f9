//! The guest kernel ELF, built by build.rs from guest/kernel and embedded.

/// The embedded guest kernel image.
pub const KERNEL_ELF: &[u8] = include_bytes!(env!("FTVM_KERNEL_ELF"));
