//! Exit codes the guest writes to [`crate::mmio::power::SHUTDOWN`].

/// The guest finished its work successfully.
pub const OK: u32 = 0;
/// The guest's role failed a check (it printed why).
pub const FAILURE: u32 = 1;
/// The guest's command line was unusable (it printed why).
pub const BAD_CMDLINE: u32 = 2;
/// The guest kernel panicked (it printed the message).
pub const PANIC: u32 = 101;
