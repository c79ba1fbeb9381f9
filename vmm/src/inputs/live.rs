//! Live inputs: the host clock, host sleeps and host randomness. This is the
//! only module in the VMM that reads them (tests/tests/hygiene.rs checks);
//! measurement code (benchmarks, run statistics) reads time through
//! [`HostClock`], defined here, and never hands it to the guest.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Armed, AsyncEvent, At, InputError, Inputs, RunEnd};

/// The host's monotonic clock, for measurement.
#[derive(Clone, Copy, Debug)]
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        HostClock { origin: Instant::now() }
    }

    /// Nanoseconds since `start`.
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Inputs taken from the host as they happen.
pub struct LiveInputs {
    boot: HostClock,
}

impl LiveInputs {
    /// Guest monotonic time starts at zero now.
    pub fn new() -> Self {
        LiveInputs { boot: HostClock::start() }
    }

    /// Host ns since this guest booted (its monotonic clock).
    pub fn now_ns(&self) -> u64 {
        self.boot.elapsed_ns()
    }

    fn expired(&self, armed: Armed) -> Vec<AsyncEvent> {
        match armed.timer_deadline_ns {
            Some(deadline) if self.now_ns() >= deadline => vec![AsyncEvent::TimerExpired],
            _ => Vec::new(),
        }
    }
}

impl Default for LiveInputs {
    fn default() -> Self {
        Self::new()
    }
}

impl Inputs for LiveInputs {
    fn monotonic_ns(&mut self, _at: &At) -> Result<u64, InputError> {
        Ok(self.now_ns())
    }

    fn wall_ns(&mut self, _at: &At) -> Result<u64, InputError> {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    fn entropy(&mut self, _at: &At, buf: &mut [u8]) -> Result<(), InputError> {
        // The kernel's random source does not fail once initialised; if it
        // ever did, handing the guest predictable bytes would be worse.
        getrandom::fill(buf).expect("the host random source failed");
        Ok(())
    }

    fn poll_events(&mut self, _at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        Ok(self.expired(armed))
    }

    fn wait_events(&mut self, _at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let deadline = armed.timer_deadline_ns.ok_or(InputError::NothingToWaitFor)?;
        loop {
            let events = self.expired(armed);
            if !events.is_empty() {
                return Ok(events);
            }
            let remaining_ns = deadline.saturating_sub(self.now_ns());
            std::thread::sleep(Duration::from_nanos(remaining_ns));
        }
    }

    fn end_of_run(&mut self, _end: &RunEnd) -> Result<(), InputError> {
        Ok(())
    }
}
