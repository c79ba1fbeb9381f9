//! Deterministic inputs for unit tests: time advances 1 us per clock read, a
//! wait jumps to the timer deadline, entropy counts up, disk reads return a
//! fixed byte, and frames queued by the test are delivered when the guest has
//! buffers.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{Armed, AsyncEvent, At, AtLandmark, InputError, Inputs, RunEnd};

/// The fill byte of every disk read.
pub const DISK_FILL: u8 = 0xd1;

/// Scripted inputs.
#[derive(Default)]
pub struct FakeInputs {
    /// The current guest time.
    pub now_ns: u64,
    counter: u8,
    /// Frames waiting to be delivered (shared with the test that queues them).
    pub frames: Arc<Mutex<VecDeque<Vec<u8>>>>,
    /// The log these inputs stand for ends before this landmark.
    pub log_ends_before: Option<u64>,
}

impl FakeInputs {
    fn arrived(&mut self, armed: Armed) -> Vec<AsyncEvent> {
        let mut events = Vec::new();
        if armed.timer_deadline_ns.is_some_and(|deadline| self.now_ns >= deadline) {
            events.push(AsyncEvent::TimerExpired);
        }
        for _ in 0..armed.net_rx_capacity {
            match self.frames.lock().expect("test lock").pop_front() {
                Some(frame) => events.push(AsyncEvent::FrameReceived(frame)),
                None => break,
            }
        }
        events
    }
}

impl Inputs for FakeInputs {
    fn monotonic_ns(&mut self, _at: &At) -> Result<u64, InputError> {
        self.now_ns += 1_000;
        Ok(self.now_ns)
    }

    fn wall_ns(&mut self, _at: &At) -> Result<u64, InputError> {
        Ok(1_700_000_000_000_000_000 + self.now_ns)
    }

    fn entropy(&mut self, _at: &At, buf: &mut [u8]) -> Result<(), InputError> {
        for byte in buf {
            self.counter = self.counter.wrapping_add(1);
            *byte = self.counter;
        }
        Ok(())
    }

    fn disk_read(&mut self, _at: &At, _offset: u64, buf: &mut [u8]) -> Result<(), InputError> {
        buf.fill(DISK_FILL);
        Ok(())
    }

    fn at_landmark(&mut self, at: &At) -> Result<AtLandmark, InputError> {
        Ok(match self.log_ends_before {
            Some(landmark) if at.point.landmark >= landmark => {
                AtLandmark::LogEnded { covered_landmark: landmark - 1 }
            }
            _ => AtLandmark::Run,
        })
    }

    fn poll_events(&mut self, _at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        Ok(self.arrived(armed))
    }

    fn wait_events(&mut self, _at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        if armed.net_rx_capacity > 0 && !self.frames.lock().expect("test lock").is_empty() {
            return Ok(self.arrived(armed));
        }
        let deadline = armed.timer_deadline_ns.ok_or(InputError::NothingToWaitFor)?;
        self.now_ns = self.now_ns.max(deadline);
        Ok(self.arrived(armed))
    }

    fn end_of_run(&mut self, _end: &RunEnd) -> Result<(), InputError> {
        Ok(())
    }
}
