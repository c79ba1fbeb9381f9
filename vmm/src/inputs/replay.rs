//! Replaying inputs: every value comes from a log, in the order the recorded
//! guest consumed them, and each is checked against where the replayed guest
//! is (landmark, RIP, register hash) before it is handed over. Nothing is
//! read from the host. The guest is never run past what the log covers.
use std::sync::Arc;

use logchannel::{Entry, FrameError, Input, InputEntry, LogFileReader};
use storage::BlockStore;

use super::{Armed, AsyncEvent, At, AtLandmark, Divergence, InputError, Inputs, LogStats, RunEnd};
use crate::outcome::RunOutcome;

/// Where a replayer reads entries from: a log file, or the log channel from
/// a live primary.
pub trait EntrySource {
    /// The next entry, its sequence number and the bytes it took. With
    /// `wait`, blocks until one arrives (`None` only when the log has ended:
    /// the clean end of a file, or a channel whose primary is gone); without,
    /// `None` also means "none has arrived yet".
    fn next_entry(&mut self, wait: bool) -> Result<Option<(u64, Entry, u64)>, InputError>;

    /// Whether the log ended because its writer is gone (a primary that died), not at an
    /// end it wrote: then a guest that ended on its own has nothing to be compared with.
    fn ended_by_writer_loss(&self) -> bool {
        false
    }
}

impl EntrySource for LogFileReader<Entry> {
    fn next_entry(&mut self, _wait: bool) -> Result<Option<(u64, Entry, u64)>, InputError> {
        let before = self.offset_bytes();
        let next = self
            .read_entry()
            .map_err(|error: FrameError| InputError::LogCorrupt(error.to_string()))?;
        Ok(next.map(|(seq, entry)| (seq, entry, self.offset_bytes() - before)))
    }
}

/// Inputs read back from a log.
/// How a log begins.
pub enum LogStart {
    /// With the guest's boot.
    Boot(logchannel::RunStart),
    /// With a running guest's RAM pages (a later copy of a page replaces an earlier one) and
    /// its encoded state without RAM.
    Resume {
        /// (page index, 4 KiB), in the order sent.
        pages: Vec<(u64, serde_bytes::ByteBuf)>,
        /// The encoded snapshot without RAM.
        state: Vec<u8>,
    },
}

pub struct ReplayInputs<S: EntrySource> {
    source: S,
    /// A backup's own image of the disk (`mode=own`): reads come from it, not the log.
    own_disk: Option<Arc<BlockStore>>,
    peeked: Option<(u64, Entry)>,
    covered_landmark: u64,
    stats: LogStats,
}

fn describe(entry: &InputEntry) -> String {
    format!(
        "{} at landmark {} rip {:#x} (registers hash {:016x})",
        entry.input.kind(),
        entry.point.landmark,
        entry.point.rip,
        entry.regs_hash
    )
}

fn describe_guest(wants: &str, at: &At) -> String {
    format!(
        "{wants} at landmark {} rip {:#x} (registers hash {:016x})",
        at.point.landmark,
        at.point.rip,
        at.regs_hash()
    )
}

fn format_regs(at: &At) -> String {
    let r = &at.regs;
    format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
    )
}

impl<S: EntrySource> ReplayInputs<S> {
    /// A replayer over `source`, positioned after the run-start entry.
    pub fn new(source: S) -> Self {
        ReplayInputs {
            source,
            own_disk: None,
            peeked: None,
            covered_landmark: 0,
            stats: LogStats::default(),
        }
    }

    /// Reads the guest's disk from `own_disk`, if given, rather than from the log.
    pub fn reading_own_disk(mut self, own_disk: Option<Arc<BlockStore>>) -> Self {
        self.own_disk = own_disk;
        self
    }

    /// Reads the run-start entry (the first entry of a log recorded from boot).
    pub fn read_start(&mut self) -> Result<logchannel::RunStart, InputError> {
        match self.read_log_start()? {
            LogStart::Boot(start) => Ok(start),
            LogStart::Resume { .. } => Err(InputError::LogCorrupt(
                "this log begins with a running guest's state, which only a backup being added \
                 restores"
                    .into(),
            )),
        }
    }

    /// Reads how the log begins: a run start, or the pages and state of a running guest
    /// (a backup being added to it); the replay goes on from there.
    pub fn read_log_start(&mut self) -> Result<LogStart, InputError> {
        let mut pages = Vec::new();
        let mut first = true;
        loop {
            self.peek()?;
            let next = self.peeked.take();
            let resuming = !matches!(next, Some((_, Entry::RunStart(_))));
            if std::mem::take(&mut first) && resuming {
                // This side's own image becomes a copy of the running guest's: the blocks
                // that follow are its non-zero ones.
                if let Some(disk) = &self.own_disk {
                    disk.zero_all().map_err(|error| InputError::Host(error.to_string()))?;
                }
            }
            match next {
                Some((_, Entry::RunStart(start))) if pages.is_empty() => {
                    return Ok(LogStart::Boot(start))
                }
                Some((_, Entry::Pages(more))) => pages.extend(more),
                Some((seq, Entry::DiskBlocks(blocks))) => self.write_own_disk(seq, blocks)?,
                Some((_, Entry::ResumeFrom(state))) => {
                    return Ok(LogStart::Resume { pages, state: state.into_vec() })
                }
                Some((seq, other)) => {
                    return Err(InputError::LogCorrupt(format!(
                        "entry {seq} is a {} entry; a log must begin with a run start, or with \
                         pages and then the state to resume from",
                        other.kind()
                    )))
                }
                None => {
                    return Err(InputError::LogCorrupt(
                        "the log ended before it began a run".into(),
                    ))
                }
            }
        }
    }

    /// Writes the blocks of entry `seq` to this side's own image.
    fn write_own_disk(
        &self,
        seq: u64,
        blocks: Vec<(u64, serde_bytes::ByteBuf)>,
    ) -> Result<(), InputError> {
        let disk = self.own_disk.as_ref().ok_or_else(|| {
            InputError::LogCorrupt(format!(
                "entry {seq} holds blocks of the guest's own disk, but this side has no own disk"
            ))
        })?;
        for (offset, data) in blocks {
            disk.write_at(offset, &data).map_err(|error| InputError::Host(error.to_string()))?;
        }
        Ok(())
    }

    /// Replays a guest restored at `landmark` (its exits through there are done).
    pub fn resuming_at(mut self, landmark: u64) -> Self {
        self.covered_landmark = landmark;
        self
    }

    /// The next entry that is not a progress entry (progress is absorbed
    /// into `covered_landmark` on the way). Waits for one, except when
    /// `landmark` is already covered by progress: then `None` means nothing
    /// more is known yet and nothing more is needed to go on.
    fn peek_at(&mut self, landmark: Option<u64>) -> Result<Option<&(u64, Entry)>, InputError> {
        while self.peeked.is_none() {
            let wait = landmark.is_none_or(|landmark| landmark > self.covered_landmark);
            let Some((seq, entry, bytes)) = self.source.next_entry(wait)? else {
                return Ok(None);
            };
            self.stats.count(entry.kind(), bytes);
            match entry {
                Entry::Progress { landmark } => {
                    self.covered_landmark = self.covered_landmark.max(landmark)
                }
                entry => self.peeked = Some((seq, entry)),
            }
        }
        Ok(self.peeked.as_ref())
    }

    /// The next entry that is not a progress entry, waiting for one.
    fn peek(&mut self) -> Result<Option<&(u64, Entry)>, InputError> {
        self.peek_at(None)
    }

    fn diverged(&self, seq: u64, expected: String, wants: &str, at: &At) -> InputError {
        InputError::Diverged(Box::new(Divergence {
            seq,
            expected,
            actual: describe_guest(wants, at),
            actual_regs: format_regs(at),
        }))
    }

    /// Takes the next input, which must be of the kind `wants` names (checked
    /// by `accept`) at exactly this point with these registers.
    fn take(
        &mut self,
        at: &At,
        wants: &'static str,
        accept: fn(&Input) -> bool,
    ) -> Result<Input, InputError> {
        let covered_landmark = self.covered_landmark;
        let mismatch = match self.peek()? {
            None => {
                return Err(InputError::LogEnded { covered_landmark, landmark: at.point.landmark })
            }
            Some((seq, Entry::Input(entry))) => {
                let matches = entry.point == at.point
                    && entry.regs_hash == at.regs_hash()
                    && accept(&entry.input);
                (!matches).then(|| (*seq, describe(entry)))
            }
            Some((seq, other)) => Some((*seq, format!("a {} entry", other.kind()))),
        };
        if let Some((seq, expected)) = mismatch {
            return Err(self.diverged(seq, expected, wants, at));
        }
        match self.peeked.take() {
            Some((_, Entry::Input(entry))) => Ok(entry.input),
            _ => unreachable!("peeked an input entry"),
        }
    }

    fn events(
        &mut self,
        at: &At,
        wants: &'static str,
        accept: fn(&Input) -> bool,
    ) -> Result<Vec<AsyncEvent>, InputError> {
        match self.take(at, wants, accept)? {
            Input::Polled(events) | Input::Waited(events) => Ok(events),
            _ => unreachable!("accept admits only events"),
        }
    }
}

impl<S: EntrySource> Inputs for ReplayInputs<S> {
    fn monotonic_ns(&mut self, at: &At) -> Result<u64, InputError> {
        match self.take(at, "monotonic clock", |input| matches!(input, Input::MonotonicNs(_)))? {
            Input::MonotonicNs(value) => Ok(value),
            _ => unreachable!("accept admits only this kind"),
        }
    }

    fn wall_ns(&mut self, at: &At) -> Result<u64, InputError> {
        match self.take(at, "wall clock", |input| matches!(input, Input::WallNs(_)))? {
            Input::WallNs(value) => Ok(value),
            _ => unreachable!("accept admits only this kind"),
        }
    }

    fn entropy(&mut self, at: &At, buf: &mut [u8]) -> Result<(), InputError> {
        let Input::Entropy(bytes) =
            self.take(at, "entropy", |input| matches!(input, Input::Entropy(_)))?
        else {
            unreachable!("accept admits only this kind")
        };
        if bytes.len() != buf.len() {
            return Err(self.diverged(
                0,
                format!("{} bytes of entropy", bytes.len()),
                "a different amount of entropy",
                at,
            ));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn disk_read(&mut self, at: &At, offset: u64, buf: &mut [u8]) -> Result<(), InputError> {
        if let Some(disk) = &self.own_disk {
            return disk.read_at(offset, buf).map_err(|error| InputError::Host(error.to_string()));
        }
        let Input::DiskRead(bytes) =
            self.take(at, "disk read", |input| matches!(input, Input::DiskRead(_)))?
        else {
            unreachable!("accept admits only this kind")
        };
        if bytes.len() != buf.len() {
            return Err(self.diverged(
                0,
                format!("a disk read of {} bytes", bytes.len()),
                "a disk read of another size",
                at,
            ));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn at_landmark(&mut self, at: &At) -> Result<AtLandmark, InputError> {
        let landmark = at.point.landmark;
        if crate::signals::stop_requested() {
            return Ok(AtLandmark::End(RunOutcome::Stopped));
        }
        let stopped_here = self.peek_at(Some(landmark))?.map(|(_, entry)| {
            matches!(entry, Entry::RunEnd(end) if end.stopped && end.landmarks == landmark)
        });
        Ok(match stopped_here {
            Some(true) => AtLandmark::End(RunOutcome::Stopped),
            // Nothing more will come and this exit is not covered (read after peeking, which
            // may have moved the coverage): the log ends before it.
            None if landmark > self.covered_landmark => {
                AtLandmark::LogEnded { covered_landmark: self.covered_landmark }
            }
            _ => AtLandmark::Run,
        })
    }

    fn poll_events(&mut self, at: &At, _armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let landmark = at.point.landmark;
        if self.peek_at(Some(landmark))?.is_none() {
            return match landmark <= self.covered_landmark {
                true => Ok(Vec::new()),
                false => {
                    Err(InputError::LogEnded { covered_landmark: self.covered_landmark, landmark })
                }
            };
        }
        match self.peeked.as_ref() {
            // The recorded guest found events here.
            Some((_, Entry::Input(entry)))
                if entry.point.landmark == landmark && matches!(entry.input, Input::Polled(_)) =>
            {
                self.events(at, "events (polled)", |input| matches!(input, Input::Polled(_)))
            }
            // An input the recorded guest consumed at an earlier landmark was skipped.
            Some((seq, Entry::Input(entry))) if entry.point.landmark < landmark => {
                let (seq, expected) = (*seq, describe(entry));
                Err(self.diverged(seq, expected, "no input", at))
            }
            // The next input belongs to this landmark (not a poll) or a later one.
            Some(_) => Ok(Vec::new()),
            None => unreachable!("peeked above"),
        }
    }

    fn wait_events(&mut self, at: &At, _armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        self.events(at, "events (waited)", |input| matches!(input, Input::Waited(_)))
    }

    fn end_of_run(&mut self, end: &RunEnd) -> Result<(), InputError> {
        // Stopped by this host, not where the recording stopped: nothing to compare.
        if end.stopped && crate::signals::stop_requested() {
            return Ok(());
        }
        if self.peek()?.is_none() {
            // The primary died after its guest ended: nothing left to check.
            if self.source.ended_by_writer_loss() {
                return Ok(());
            }
            let (covered_landmark, landmark) = (self.covered_landmark, end.landmarks);
            return Err(InputError::LogEnded { covered_landmark, landmark });
        }
        match self.peek()? {
            Some((_, Entry::RunEnd(recorded))) if recorded == end => Ok(()),
            Some((seq, Entry::RunEnd(recorded))) => {
                Err(InputError::Diverged(Box::new(Divergence {
                    seq: *seq,
                    expected: format!("{recorded:?}"),
                    actual: format!("{end:?}"),
                    actual_regs: String::new(),
                })))
            }
            Some((seq, other)) => Err(InputError::Diverged(Box::new(Divergence {
                seq: *seq,
                expected: format!("a {} entry", other.kind()),
                actual: format!("the guest ended the run: {}", end.outcome),
                actual_regs: String::new(),
            }))),
            None => unreachable!("seen above"),
        }
    }

    fn log_stats(&self) -> LogStats {
        self.stats.clone()
    }
}
