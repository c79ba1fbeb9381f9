//! The one door through which the outside world reaches the guest.
//!
//! Every value the VMM hands the guest that does not follow from guest state
//! alone — the clock, randomness, whether a timer deadline has passed, when a
//! wait ends — comes through [`Inputs`]. The live implementation ([`live`]) is
//! the only code in the VMM that reads the host clock, sleeps on host timers or
//! draws host randomness; record and replay implementations plug in here, and
//! devices never know which one they talk to (DESIGN §4).

pub mod live;

use thiserror::Error;

/// Where in the guest's execution an input is consumed: the landmark count
/// (guest-caused exits so far, this one included) and the guest RIP there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExecPoint {
    /// Guest-caused exits so far, counting the current one.
    pub landmark: u64,
    /// Guest instruction pointer at the exit.
    pub rip: u64,
}

/// An asynchronous event: it arrives from the host at a time the guest does
/// not choose, and is applied at a landmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEvent {
    /// The armed timer deadline has passed.
    TimerExpired,
}

/// What could produce an asynchronous event right now (guest-armed state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Armed {
    /// The timer deadline in guest monotonic ns, if armed.
    pub timer_deadline_ns: Option<u64>,
}

/// Why an input could not be produced.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    /// The guest waits, but nothing is armed that could ever wake it.
    #[error("the guest waits for an event but no timer is armed and no device can wake it")]
    NothingToWaitFor,
}

/// The source of every non-deterministic value.
pub trait Inputs {
    /// Guest monotonic time in ns since boot.
    fn monotonic_ns(&mut self, at: ExecPoint) -> u64;
    /// Wall-clock ns since the Unix epoch.
    fn wall_ns(&mut self, at: ExecPoint) -> u64;
    /// Fills `buf` with random bytes.
    fn entropy(&mut self, at: ExecPoint, buf: &mut [u8]);
    /// The asynchronous events that have arrived by this landmark, at once.
    fn poll_events(&mut self, at: ExecPoint, armed: Armed) -> Vec<AsyncEvent>;
    /// Blocks until at least one asynchronous event arrives.
    fn wait_events(&mut self, at: ExecPoint, armed: Armed) -> Result<Vec<AsyncEvent>, InputError>;
}
