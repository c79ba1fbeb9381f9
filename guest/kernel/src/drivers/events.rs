//! The event register: pending-event mask, yield and wait.
use ftvm_abi::mmio::events;

/// Returns (and clears) the pending-event mask without blocking.
pub fn poll() -> u64 {
    super::read(events::BASE, events::YIELD)
}

/// Blocks until an event is pending; returns (and clears) the mask.
pub fn wait() -> u64 {
    super::read(events::BASE, events::WAIT)
}

/// Registers the area the VMM refreshes with the time on every wait.
pub fn register_event_page(addr: u64) {
    super::write(events::BASE, events::EVENT_PAGE, addr);
}
