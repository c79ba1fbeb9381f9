//! Power device: orderly shutdown with an exit code.
use ftvm_abi::mmio::power;

/// Powers the VM off with `code`; the VMM never resumes the guest.
pub fn shutdown(code: u32) -> ! {
    super::write(power::BASE, power::SHUTDOWN, u64::from(code));
    // Unreachable on a correct VMM; spin rather than run off into the weeds.
    #[allow(clippy::empty_loop)]
    loop {}
}
