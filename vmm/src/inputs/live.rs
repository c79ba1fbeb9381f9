//! Live inputs: the host clock, host sleeps, host randomness, frames from
//! the TAP device and reads of the disk image. This is the only module in the
//! VMM that reads the host clock, sleeps or draws randomness
//! (tests/tests/hygiene.rs checks); measurement code (benchmarks, run
//! statistics) reads time through [`HostClock`], defined here, and never
//! hands it to the guest.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use storage::BlockStore;

use super::{Armed, AsyncEvent, At, AtLandmark, InputError, Inputs, RunEnd};
use crate::outcome::RunOutcome;
use crate::tap::Tap;

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

/// The host's wall clock in ns since the Unix epoch, for VMM messages that
/// other processes on the host correlate (a role change's moment).
pub fn unix_time_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// Reads the guest's disk as the guest sees it, in place of the image: an FT
/// primary's guest must see its own writes that are held for acknowledgement.
pub type DiskReader = Arc<dyn Fn(&BlockStore, u64, &mut [u8]) -> Result<(), String> + Send + Sync>;

/// A host deadline `duration` from now, for VMM-side waits that never reach
/// the guest (the FT pair's ack and flush waits). It lives here so that this
/// module stays the only one that reads the host clock.
pub fn deadline_after(duration: std::time::Duration) -> Instant {
    Instant::now() + duration
}

/// Whether `deadline` has passed.
pub fn has_passed(deadline: Instant) -> bool {
    Instant::now() >= deadline
}

/// A stop signal (SIGINT/SIGTERM) ended a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRequested;

/// Sleeps until `deadline` on the host clock, waking early only for a stop
/// signal.
pub fn sleep_until(deadline: Instant) -> Result<(), StopRequested> {
    const SLICE: std::time::Duration = std::time::Duration::from_millis(10);
    loop {
        if crate::signals::stop_requested() {
            return Err(StopRequested);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(SLICE));
    }
}

/// The host resources a live guest reads: its NIC's TAP and its disk image.
#[derive(Clone, Default)]
pub struct Backends {
    /// The TAP device behind the NIC.
    pub tap: Option<Arc<Tap>>,
    /// The disk image behind the block device.
    pub disk: Option<Arc<BlockStore>>,
    /// Reads the disk instead of reading the image directly, if set.
    pub disk_reader: Option<DiskReader>,
    /// The image is this side's own in an FT pair (`mode=own`): its reads need no log.
    pub disk_own: bool,
}

/// Inputs taken from the host as they happen.
pub struct LiveInputs {
    boot: HostClock,
    monotonic_base_ns: u64,
    backends: Backends,
    /// Print the time the first frame arrives (a backup gone live: the failover timeline).
    note_first_frame: bool,
    /// Frames the guest receives before any from the TAP (a backup gone live: what arrived
    /// while it waited to).
    received_first: VecDeque<Vec<u8>>,
}

impl LiveInputs {
    /// Guest monotonic time starts at zero now.
    pub fn new(backends: Backends) -> Self {
        LiveInputs::continuing_at(0, backends)
    }

    /// Prints, once, when the first frame arrives from now on.
    pub fn noting_first_frame(mut self) -> Self {
        self.note_first_frame = true;
        self
    }

    /// The guest receives `frames` (TAP packets) before anything from the TAP.
    pub fn receiving_first(mut self, frames: Vec<Vec<u8>>) -> Self {
        self.received_first = frames.into();
        self
    }

    /// Live inputs for a guest whose monotonic clock already reads
    /// `monotonic_ns` (a backup going live continues its guest's clock).
    pub fn continuing_at(monotonic_ns: u64, backends: Backends) -> Self {
        LiveInputs {
            boot: HostClock::start(),
            monotonic_base_ns: monotonic_ns,
            backends,
            note_first_frame: false,
            received_first: VecDeque::new(),
        }
    }

    /// Whether the disk is this side's own image (its reads are not logged).
    pub fn disk_is_own(&self) -> bool {
        self.backends.disk_own
    }

    /// The guest's monotonic clock: host ns since it booted (or since it
    /// went live, plus where its clock stood then).
    pub fn now_ns(&self) -> u64 {
        self.monotonic_base_ns + self.boot.elapsed_ns()
    }

    /// Everything that has arrived, without blocking: an expired timer and
    /// as many frames as the guest has buffers for (the rest stay queued in
    /// the TAP, which is the backpressure a real NIC gives).
    fn arrived(&mut self, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let mut events = Vec::new();
        if armed.timer_deadline_ns.is_some_and(|deadline| self.now_ns() >= deadline) {
            events.push(AsyncEvent::TimerExpired);
        }
        if let Some(tap) = &self.backends.tap {
            tap.set_receive_offloads(armed.net_guest_offloads).map_err(|error| {
                InputError::Host(format!("setting the offloads of TAP {}: {error}", tap.name()))
            })?;
            let kept = self.received_first.len().min(armed.net_rx_capacity);
            let first = self.received_first.drain(..kept).map(AsyncEvent::FrameReceived);
            events.extend(first);
            for _ in kept..armed.net_rx_capacity {
                match tap.read_packet() {
                    Ok(Some(frame)) => events.push(AsyncEvent::FrameReceived(frame)),
                    Ok(None) => break,
                    Err(error) => {
                        return Err(InputError::Host(format!(
                            "reading TAP {}: {error}",
                            tap.name()
                        )))
                    }
                }
            }
        }
        Ok(events)
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

    fn disk_read(&mut self, _at: &At, offset: u64, buf: &mut [u8]) -> Result<(), InputError> {
        let disk = self.backends.disk.as_ref().ok_or_else(|| {
            InputError::Host("the guest read a disk the VMM has no image for".into())
        })?;
        match &self.backends.disk_reader {
            Some(reader) => reader(disk, offset, buf).map_err(InputError::Host),
            None => disk.read_at(offset, buf).map_err(|error| InputError::Host(error.to_string())),
        }
    }

    fn at_landmark(&mut self, _at: &At) -> Result<AtLandmark, InputError> {
        Ok(match crate::signals::stop_requested() {
            true => AtLandmark::End(RunOutcome::Stopped),
            false => AtLandmark::Run,
        })
    }

    fn poll_events(&mut self, _at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let events = self.arrived(armed)?;
        let frame = |event: &AsyncEvent| matches!(event, AsyncEvent::FrameReceived(_));
        if self.note_first_frame && events.iter().any(frame) {
            self.note_first_frame = false;
            eprintln!("ftvm: live: first frame in at unix ns {}", unix_time_ns());
        }
        Ok(events)
    }

    fn wait_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let tap_fd = self
            .backends
            .tap
            .as_ref()
            .filter(|_| armed.net_rx_capacity > 0)
            .map(|tap| tap.raw_fd());
        if armed.timer_deadline_ns.is_none() && tap_fd.is_none() {
            return Err(InputError::NothingToWaitFor);
        }
        loop {
            let events = self.poll_events(at, armed)?;
            if !events.is_empty() {
                return Ok(events);
            }
            if crate::signals::stop_requested() {
                // The wait ends empty; the next landmark ends the run.
                return Ok(Vec::new());
            }
            let remaining_ns =
                armed.timer_deadline_ns.map(|deadline| deadline.saturating_sub(self.now_ns()));
            // ppoll, not sleep: a stop signal interrupts it (EINTR).
            let mut poll_fds: Vec<libc::pollfd> = tap_fd
                .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
                .into_iter()
                .collect();
            let timeout = remaining_ns.map(|ns| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            });
            let timeout_ptr =
                timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `poll_fds` (0 or 1 valid pollfd) and the optional
            // timespec live across the call; the fd is the TAP that
            // `self.backends` keeps open.
            unsafe {
                libc::ppoll(
                    poll_fds.as_mut_ptr(),
                    poll_fds.len() as libc::nfds_t,
                    timeout_ptr,
                    std::ptr::null(),
                )
            };
        }
    }

    fn end_of_run(&mut self, _end: &RunEnd) -> Result<(), InputError> {
        Ok(())
    }

    fn clock_now_ns(&self) -> Option<u64> {
        Some(self.now_ns())
    }
}
