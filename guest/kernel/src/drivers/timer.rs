//! One-shot timer: arms a monotonic deadline; its expiry shows up as the
//! TIMER bit in the event mask.
use ftvm_abi::mmio::timer;

/// Arms the timer for `deadline_ns` (monotonic); 0 disarms.
pub fn set_deadline_ns(deadline_ns: u64) {
    super::write(timer::BASE, timer::DEADLINE_NS, deadline_ns);
}
