//! Recording inputs: live inputs, each also written to a log as it is
//! consumed, with where it was consumed and the register hash there.
use logchannel::{Entry, Input, InputEntry, LogFileWriter, RunStart};

use super::live::{Backends, LiveInputs};
use super::{Armed, AsyncEvent, At, AtLandmark, InputError, Inputs, LogStats, RunEnd};
use crate::outcome::RunOutcome;

/// Where a recorder writes entries (a log file; later the log channel).
pub trait EntrySink {
    /// Appends one entry; returns the bytes it took.
    fn append(&mut self, entry: &Entry) -> Result<u64, InputError>;
    /// Pushes buffered entries out.
    fn flush(&mut self) -> Result<(), InputError>;
    /// The guest has reached `landmark` (every exit, before anything is consumed there):
    /// `Some` ends the run there (an FT primary that lost its arbiter).
    fn at_landmark(&mut self, _landmark: u64) -> Option<RunOutcome> {
        None
    }
}

impl EntrySink for LogFileWriter<Entry> {
    fn append(&mut self, entry: &Entry) -> Result<u64, InputError> {
        let before = self.len_bytes();
        self.write_entry(entry).map_err(|error| InputError::LogWrite(error.to_string()))?;
        Ok(self.len_bytes() - before)
    }

    fn flush(&mut self) -> Result<(), InputError> {
        LogFileWriter::flush(self).map_err(|error| InputError::LogWrite(error.to_string()))
    }
}

/// How often, at most, a progress entry is written while nothing else is.
const PROGRESS_INTERVAL_NS: u64 = 1_000_000;

/// Live inputs that log everything they hand out.
pub struct RecordingInputs<S: EntrySink> {
    live: LiveInputs,
    sink: S,
    stats: LogStats,
    last_entry_ns: u64,
    progress_landmark: u64,
}

impl<S: EntrySink> RecordingInputs<S> {
    /// Starts a recording of the run described by `start`, reading the
    /// world through `backends`.
    pub fn new(mut sink: S, start: &RunStart, backends: Backends) -> Result<Self, InputError> {
        let entry = Entry::RunStart(start.clone());
        let mut stats = LogStats::default();
        stats.count(entry.kind(), sink.append(&entry)?);
        Ok(RecordingInputs {
            live: LiveInputs::new(backends),
            sink,
            stats,
            last_entry_ns: 0,
            progress_landmark: 0,
        })
    }

    /// Goes on recording a guest that already runs on `live` (a side that becomes a primary:
    /// the log it joins begins with the guest's state, not a run start).
    pub fn continuing(sink: S, live: LiveInputs) -> Self {
        RecordingInputs {
            live,
            sink,
            stats: LogStats::default(),
            last_entry_ns: 0,
            progress_landmark: 0,
        }
    }

    fn append(&mut self, entry: &Entry) -> Result<(), InputError> {
        let bytes = self.sink.append(entry)?;
        self.stats.count(entry.kind(), bytes);
        self.last_entry_ns = self.live.now_ns();
        Ok(())
    }

    fn log(&mut self, at: &At, input: Input) -> Result<(), InputError> {
        self.append(&Entry::Input(InputEntry { point: at.point, regs_hash: at.regs_hash(), input }))
    }

    /// Logs `events` as the input `kind` makes of them and hands them back: the frames a guest
    /// receives are logged without a copy.
    fn log_events(
        &mut self,
        at: &At,
        events: Vec<AsyncEvent>,
        kind: fn(Vec<AsyncEvent>) -> Input,
    ) -> Result<Vec<AsyncEvent>, InputError> {
        let input = kind(events);
        let entry = Entry::Input(InputEntry { point: at.point, regs_hash: at.regs_hash(), input });
        self.append(&entry)?;
        match entry {
            Entry::Input(InputEntry {
                input: Input::Polled(events) | Input::Waited(events),
                ..
            }) => Ok(events),
            _ => unreachable!("built above from events"),
        }
    }

    /// The sink, e.g. to finish the file after the run.
    pub fn into_sink(self) -> S {
        self.sink
    }
}

impl<S: EntrySink> Inputs for RecordingInputs<S> {
    fn clock_now_ns(&self) -> Option<u64> {
        self.live.clock_now_ns()
    }

    fn monotonic_ns(&mut self, at: &At) -> Result<u64, InputError> {
        let value = self.live.monotonic_ns(at)?;
        self.log(at, Input::MonotonicNs(value))?;
        Ok(value)
    }

    fn wall_ns(&mut self, at: &At) -> Result<u64, InputError> {
        let value = self.live.wall_ns(at)?;
        self.log(at, Input::WallNs(value))?;
        Ok(value)
    }

    fn entropy(&mut self, at: &At, buf: &mut [u8]) -> Result<(), InputError> {
        self.live.entropy(at, buf)?;
        self.log(at, Input::Entropy(buf.to_vec()))
    }

    fn disk_read(&mut self, at: &At, offset: u64, buf: &mut [u8]) -> Result<(), InputError> {
        self.live.disk_read(at, offset, buf)?;
        // The backup reads its own image, which holds the same data: nothing to log.
        if self.live.disk_is_own() {
            return Ok(());
        }
        self.log(at, Input::DiskRead(buf.to_vec()))
    }

    fn at_landmark(&mut self, at: &At) -> Result<AtLandmark, InputError> {
        if let Some(end) = self.sink.at_landmark(at.point.landmark) {
            return Ok(AtLandmark::End(end));
        }
        self.live.at_landmark(at)
    }

    fn poll_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let events = self.live.poll_events(at, armed)?;
        if !events.is_empty() {
            return self.log_events(at, events, Input::Polled);
        } else if self.live.now_ns() - self.last_entry_ns >= PROGRESS_INTERVAL_NS {
            // Nothing consumed at this landmark yet: the log covers everything before it.
            self.progress_landmark = at.point.landmark - 1;
            self.append(&Entry::Progress { landmark: self.progress_landmark })?;
        }
        Ok(events)
    }

    fn wait_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let events = self.live.wait_events(at, armed)?;
        self.log_events(at, events, Input::Waited)
    }

    fn end_of_run(&mut self, end: &RunEnd) -> Result<(), InputError> {
        self.append(&Entry::RunEnd(end.clone()))?;
        self.sink.flush()
    }

    fn log_stats(&self) -> LogStats {
        self.stats.clone()
    }
}
