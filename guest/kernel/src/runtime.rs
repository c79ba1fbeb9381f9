//! The event runtime: accumulates the pending-event mask, yields in long loops,
//! sleeps on the one-shot timer, and idles on the event register's `WAIT`.
//!
//! Promise to the VMM (DESIGN §4): code that computes for long calls
//! `yield_now()` at least every ~1 ms, so events land promptly and the replay
//! has landmarks to count.
use core::sync::atomic::{AtomicU64, Ordering};

use crate::drivers::{clock, events, timer};
use ftvm_abi::mmio::events::TIMER;

/// Events seen but not yet consumed by whoever waits for them.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The area the VMM refreshes with the monotonic time on every `WAIT`.
#[repr(C, align(8))]
struct EventPage {
    monotonic_ns: u64,
}
static mut EVENT_PAGE: EventPage = EventPage { monotonic_ns: 0 };

/// Registers the event page with the VMM.
pub fn init() {
    // Only the address is taken; the VMM writes the page during exits.
    let addr = core::ptr::addr_of!(EVENT_PAGE) as u64;
    events::register_event_page(addr);
}

/// The monotonic time the VMM stored at the last `wait()` return.
pub fn time_at_last_wait_ns() -> u64 {
    // SAFETY: the VMM writes this page only while the vCPU is stopped in an
    // exit; a volatile read sees its latest value.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(EVENT_PAGE.monotonic_ns)) }
}

/// A cheap landmark for long loops: collects pending events, never blocks.
pub fn yield_now() {
    PENDING.fetch_or(events::poll(), Ordering::Relaxed);
}

/// Blocks until some event is pending; returns everything pending so far.
pub fn wait() -> u64 {
    PENDING.fetch_or(events::wait(), Ordering::Relaxed) | PENDING.load(Ordering::Relaxed)
}

/// Consumes the bits of `mask` that are pending; returns which were.
pub fn take(mask: u64) -> u64 {
    PENDING.fetch_and(!mask, Ordering::Relaxed) & mask
}

/// Sleeps until the monotonic clock reaches `deadline_ns`.
pub fn sleep_until_ns(deadline_ns: u64) {
    // A deadline of 0 means "disarm" to the device; 1 is already past anyway.
    timer::set_deadline_ns(deadline_ns.max(1));
    loop {
        wait();
        if take(TIMER) != 0 {
            if time_at_last_wait_ns() >= deadline_ns {
                return;
            }
            // A stale expiry from an earlier deadline: re-arm ours.
            timer::set_deadline_ns(deadline_ns.max(1));
        }
    }
}

/// Sleeps for `duration_ns`.
pub fn sleep_ns(duration_ns: u64) {
    sleep_until_ns(clock::monotonic_ns().saturating_add(duration_ns));
}
