//! The one door through which the outside world reaches the guest.
//!
//! Every value the VMM hands the guest that does not follow from guest state
//! alone — the clock, randomness, whether a timer deadline has passed, when a
//! wait ends — comes through [`Inputs`]. Three implementations: [`live`]
//! (the only code in the VMM that reads the host clock, sleeps on host timers
//! or draws host randomness), [`record`] (live, and every input is also
//! written to a log) and [`replay`] (every input comes from a log; nothing is
//! read from the host). Devices never know which one they talk to (DESIGN §4).

#[cfg(test)]
pub mod fake;
pub mod live;
pub mod record;
pub mod replay;

use std::collections::BTreeMap;
use std::fmt;

use kvm_bindings::kvm_regs;
pub use logchannel::{AsyncEvent, ExecPoint, RunEnd};
use thiserror::Error;

use crate::outcome::RunOutcome;

/// Where the guest is when it consumes an input: the execution point and the
/// registers there (hashed only when an entry is written or checked).
#[derive(Clone, Copy, Debug, Default)]
pub struct At {
    /// Landmark count and RIP.
    pub point: ExecPoint,
    /// General registers at the exit.
    pub regs: kvm_regs,
}

impl At {
    /// Hash of the registers, as carried by every log entry.
    pub fn regs_hash(&self) -> u64 {
        crate::vcpu::regs_hash(&self.regs)
    }
}

/// What could produce an asynchronous event right now (guest-armed state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Armed {
    /// The timer deadline in guest monotonic ns, if armed.
    pub timer_deadline_ns: Option<u64>,
    /// How many received frames the guest's NIC can take now.
    pub net_rx_capacity: usize,
    /// The receive offloads its driver accepted (virtio-net `GUEST_CSUM`,
    /// `GUEST_TSO4` feature bits): what the TAP may hand over.
    pub net_guest_offloads: u64,
}

/// Where a replay found the guest somewhere other than the log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Sequence number of the log entry that disagrees.
    pub seq: u64,
    /// What the log holds there.
    pub expected: String,
    /// What the guest did.
    pub actual: String,
    /// The guest's registers at the point of divergence.
    pub actual_regs: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay diverged at log entry {}:\n  log:   {}\n  guest: {}\n  guest registers: {}",
            self.seq, self.expected, self.actual, self.actual_regs
        )
    }
}

/// What the run does at a landmark, decided by the inputs before its exit is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtLandmark {
    /// Handle the exit.
    Run,
    /// The run ends here, before the exit is handled (stopped by the host, halted by the
    /// arbiter, or the recording being replayed was stopped here).
    End(RunOutcome),
    /// The log being replayed holds nothing for this exit and never will (it was cut short,
    /// or the primary sending it is gone): a backup goes live here; any other replay stops.
    LogEnded {
        /// How far the log covers.
        covered_landmark: u64,
    },
}

/// Why an input could not be produced. Each ends the run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    /// The guest waits, but nothing is armed that could ever wake it.
    #[error("the guest waits for an event but no timer is armed and no device can wake it")]
    NothingToWaitFor,
    /// The replayed guest is not where the log says it should be.
    #[error("{0}")]
    Diverged(Box<Divergence>),
    /// The log ends before the guest does (a recording cut short).
    #[error("the log ends at landmark {covered_landmark} but the guest ran on to landmark {landmark}; replay stops here rather than run past what was recorded")]
    LogEnded {
        /// How far the log covers.
        covered_landmark: u64,
        /// Where the guest is.
        landmark: u64,
    },
    /// The log could not be read: corrupt, truncated, out of order.
    #[error("the log is unreadable: {0}")]
    LogCorrupt(String),
    /// The log could not be written.
    #[error("writing the log failed: {0}")]
    LogWrite(String),
    /// A host device the inputs read failed (disk image, TAP).
    #[error("{0}")]
    Host(String),
}

/// Entries and bytes per kind of entry.
#[derive(Clone, Debug, Default)]
pub struct LogStats {
    /// (entries, frame bytes) per entry kind.
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
}

impl LogStats {
    /// Counts one entry of `kind` that took `bytes` in the log.
    pub fn count(&mut self, kind: &'static str, bytes: u64) {
        let slot = self.by_kind.entry(kind).or_default();
        slot.0 += 1;
        slot.1 += bytes;
    }

    /// Entries of every kind.
    pub fn entries(&self) -> u64 {
        self.by_kind.values().map(|(count, _)| count).sum()
    }

    /// Bytes of every kind.
    pub fn bytes(&self) -> u64 {
        self.by_kind.values().map(|(_, bytes)| bytes).sum()
    }
}

/// The source of every non-deterministic value.
pub trait Inputs {
    /// Guest monotonic time in ns since boot.
    fn monotonic_ns(&mut self, at: &At) -> Result<u64, InputError>;
    /// Wall-clock ns since the Unix epoch.
    fn wall_ns(&mut self, at: &At) -> Result<u64, InputError>;
    /// Fills `buf` with random bytes.
    fn entropy(&mut self, at: &At, buf: &mut [u8]) -> Result<(), InputError>;
    /// Reads `buf.len()` bytes of the guest's disk at byte `offset`.
    fn disk_read(&mut self, at: &At, offset: u64, buf: &mut [u8]) -> Result<(), InputError>;
    /// The asynchronous events that have arrived by this landmark, at once.
    /// At most `armed.net_rx_capacity` of them are received frames.
    fn poll_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError>;
    /// Whether the run goes on at this landmark, before its exit is handled (see
    /// [`AtLandmark`]).
    fn at_landmark(&mut self, at: &At) -> Result<AtLandmark, InputError>;
    /// Blocks until at least one asynchronous event arrives, or the host asks to stop (then
    /// with none: the next landmark ends the run).
    fn wait_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError>;
    /// The run is over: record its end, or check it against the recording.
    fn end_of_run(&mut self, end: &RunEnd) -> Result<(), InputError>;
    /// The guest's monotonic clock now, for inputs that read the host's clock (live): a
    /// snapshot saves it so a restored guest's clock goes on from there.
    fn clock_now_ns(&self) -> Option<u64> {
        None
    }
    /// Statistics of the log written or read (empty when live).
    fn log_stats(&self) -> LogStats {
        LogStats::default()
    }
}
