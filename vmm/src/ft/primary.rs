//! The primary's side of the pair: every log entry goes to the backup over
//! the channel, with the lag bound applied as it is sent; every output is held
//! until the backup has acknowledged the last entry sent before it (the
//! output rule) and is then released, in order, by one thread. Execution goes
//! on meanwhile; only output waits.
//!
//! Fencing: the releaser performs an output only while the primary holds its
//! lease (see `logchannel::PrimaryCore`), checked right before the write on
//! the releaser's own thread, so a primary that was paused or cut off past the
//! failure timeout releases nothing more on waking: its link reports the
//! backup lost, and it asks the arbiter. It goes on solo (releasing what it
//! held) only if it wins; if it loses it drops everything it held and halts.
//!
//! The window that remains: a pause of the releaser thread after the lease
//! check and before its `pwrite`/`write` syscall (a few microseconds of code)
//! that lasts past the backup's go-live. Linux cannot revoke a file
//! descriptor, so only a fence in the storage itself (SCSI reservations, a
//! block service that checks generations) could close it.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use logchannel::{ChannelError, Entry, PrimaryLink};

use super::{arbitrate, median_p99, FtConfig, NotWon, PairReport};

/// Lag samples kept for the report (one per entry sent, up to this many).
const MAX_LAG_SAMPLES: usize = 1 << 20;
use crate::inputs::live::{deadline_after, unix_time_ns, HostClock};
use crate::inputs::record::EntrySink;
use crate::inputs::InputError;
use crate::outputs::{LiveOutputs, OutputError, Outputs};

/// The pair as the primary sees it; shared by the log sink and the releaser.
pub struct PrimarySide {
    link: PrimaryLink,
    config: FtConfig,
    generation: u64,
    /// The landmark the guest is at (its exit being handled).
    current_landmark: AtomicU64,
    /// The highest landmark a progress entry sent so far announced.
    announced_landmark: AtomicU64,
    solo: AtomicBool,
    /// Set when this side lost the arbiter, or was stopped while asking it.
    halted: Mutex<Option<NotWon>>,
    /// Set when an output failed on the host (the shared disk): the run ends.
    /// Set once, when an output failed on the host (a write or flush of the shared disk):
    /// nothing after it is released, and the run ends.
    output_failed: OnceLock<String>,
    last_sent_seq: AtomicU64,
    /// (entries, bytes, ms) the backup lagged behind, sampled at each entry sent.
    lag_samples: Mutex<Vec<(u64, u64, u64)>>,
    /// Measures the fence's window (lease check to end of write).
    clock: HostClock,
    fence_window_ns: AtomicU64,
    longest_output_call_ns: AtomicU64,
    released_under_lease: AtomicU64,
}

impl PrimarySide {
    /// The primary's side of `generation` over a connected link.
    pub fn new(link: PrimaryLink, config: FtConfig, generation: u64) -> Arc<Self> {
        Arc::new(PrimarySide {
            link,
            config,
            generation,
            current_landmark: AtomicU64::new(0),
            announced_landmark: AtomicU64::new(0),
            solo: AtomicBool::new(false),
            halted: Mutex::new(None),
            output_failed: OnceLock::new(),
            last_sent_seq: AtomicU64::new(0),
            lag_samples: Mutex::new(Vec::new()),
            clock: HostClock::start(),
            fence_window_ns: AtomicU64::new(0),
            longest_output_call_ns: AtomicU64::new(0),
            released_under_lease: AtomicU64::new(0),
        })
    }

    /// Whether the primary runs alone (the backup is gone and it won the arbiter).
    pub fn is_solo(&self) -> bool {
        self.solo.load(Ordering::SeqCst)
    }

    /// What the pair looked like from here.
    pub fn report(&self) -> PairReport {
        let stats = self.link.stats();
        let samples = self.lag_samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let column = |pick: fn(&(u64, u64, u64)) -> u64| {
            median_p99(&mut samples.iter().map(pick).collect::<Vec<_>>())
        };
        PairReport {
            role: if self.is_solo() { "solo" } else { "primary" }.into(),
            generation: self.generation,
            sent_seq: stats.sent_seq,
            acked_seq: stats.acked_seq,
            sent_bytes: stats.sent_bytes,
            lag_entries: column(|sample| sample.0),
            lag_bytes: column(|sample| sample.1),
            lag_ms: column(|sample| sample.2),
            released_under_lease: self.released_under_lease.load(Ordering::Relaxed),
            fence_window_ns: self.fence_window_ns.load(Ordering::Relaxed),
            longest_output_call_ns: self.longest_output_call_ns.load(Ordering::Relaxed),
            wall_ns: self.clock.elapsed_ns(),
        }
    }

    /// The backup is presumed dead: win the arbiter and go solo, or halt.
    /// Called by whichever thread notices first; the others wait for its answer.
    fn backup_failed(&self, error: &ChannelError) -> Result<(), NotWon> {
        let mut halted = self.halted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.is_solo() {
            return Ok(());
        }
        if let Some(not_won) = halted.as_ref() {
            return Err(not_won.clone());
        }
        let why = format!("backup presumed dead ({error})");
        match arbitrate(&self.config, self.generation, "primary", &why) {
            Ok(()) => {
                eprintln!(
                    "ftvm: role: primary -> solo, generation {}, at unix ns {}",
                    self.generation,
                    unix_time_ns()
                );
                self.solo.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(not_won) => {
                if let NotWon::Lost(reason) = &not_won {
                    eprintln!("ftvm: {reason}; the outputs it held are dropped");
                }
                *halted = Some(not_won.clone());
                Err(not_won)
            }
        }
    }
}

/// The primary's log sink: entries go to the backup, and the lag bound holds
/// the guest back when the backup falls behind.
pub struct LinkSink {
    side: Arc<PrimarySide>,
    clock_readings: u64,
}

impl LinkSink {
    /// A sink over `side`'s link.
    pub fn new(side: Arc<PrimarySide>) -> Self {
        LinkSink { side, clock_readings: 0 }
    }

    /// The testing hook of [`FtConfig::inject_divergence_at`].
    fn maybe_falsify(&mut self, entry: &Entry) -> Option<Entry> {
        let Entry::Input(input) = entry else { return None };
        let logchannel::Input::MonotonicNs(value) = input.input else { return None };
        self.clock_readings += 1;
        (self.side.config.inject_divergence_at == Some(self.clock_readings)).then(|| {
            let mut falsified = input.clone();
            falsified.input = logchannel::Input::MonotonicNs(value + 1);
            Entry::Input(falsified)
        })
    }
}

impl EntrySink for LinkSink {
    fn append(&mut self, entry: &Entry) -> Result<u64, InputError> {
        if let Some(reason) = self.side.output_failed.get() {
            return Err(InputError::Host(reason.clone()));
        }
        if self.side.is_solo() {
            return Ok(0);
        }
        let falsified = self.maybe_falsify(entry);
        let sent = self.side.link.send(falsified.as_ref().unwrap_or(entry)).and_then(|sent| {
            self.side.last_sent_seq.store(sent.seq, Ordering::SeqCst);
            if let Entry::Progress { landmark } = entry {
                self.side.announced_landmark.fetch_max(*landmark, Ordering::SeqCst);
            }
            let stats = self.side.link.stats();
            let mut samples =
                self.side.lag_samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if samples.len() < MAX_LAG_SAMPLES {
                samples.push((
                    stats.sent_seq - stats.replayed_seq,
                    stats.unreplayed_bytes,
                    stats.replay_catch_up_ms,
                ));
            }
            drop(samples);
            let config = &self.side.config;
            self.side.link.wait_for_room(config.max_lag_bytes, config.max_lag_ms).map(|()| sent)
        });
        match sent {
            Ok(sent) => Ok(sent.frame_len_bytes),
            Err(error) => self.side.backup_failed(&error).map(|()| 0).map_err(input_error),
        }
    }

    fn at_landmark(&mut self, landmark: u64) {
        self.side.current_landmark.store(landmark, Ordering::SeqCst);
    }

    fn flush(&mut self) -> Result<(), InputError> {
        if self.side.is_solo() {
            return Ok(());
        }
        let deadline =
            deadline_after(Duration::from_millis(self.side.config.channel.failure_timeout_ms * 2));
        match self.side.link.flush(deadline) {
            Ok(_) => Ok(()),
            Err(error) => self.side.backup_failed(&error).map_err(input_error),
        }
    }
}

/// How a lost arbitration ends the run.
fn input_error(not_won: NotWon) -> InputError {
    match not_won {
        NotWon::Lost(reason) => InputError::Halted(reason),
        NotWon::Stopped => InputError::Stopped,
    }
}

/// An output waiting for its acknowledgement.
enum Held {
    Console(Vec<u8>),
    Frame(Vec<u8>),
    DiskWrite(u64, Vec<u8>),
    DiskFlush,
}

impl Held {
    fn is_disk(&self) -> bool {
        matches!(self, Held::DiskWrite(..) | Held::DiskFlush)
    }

    fn len_bytes(&self) -> u64 {
        match self {
            Held::Console(bytes) | Held::Frame(bytes) | Held::DiskWrite(_, bytes) => {
                bytes.len() as u64
            }
            Held::DiskFlush => 0,
        }
    }
}

#[derive(Default)]
struct Queue {
    held: VecDeque<(u64, Held)>,
    /// Outputs queued or being performed.
    in_flight: usize,
    /// Disk outputs queued or being performed.
    disk_pending: usize,
    /// Bytes of the outputs queued or being performed.
    held_bytes: u64,
    /// Set when the run is over: the releaser drains what it holds and stops.
    closing: bool,
}

/// The output queue shared by the guest's outputs and the releaser thread.
pub struct OutputQueue {
    state: Mutex<Queue>,
    changed: Condvar,
}

impl OutputQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `held`; first waits (the vCPU with it) while the held bytes would pass
    /// `max_held_bytes`, unless nothing is held (one output larger than the bound still goes).
    /// Waiting ends early once `failed` is set (nothing will be released any more).
    fn push(&self, seq: u64, held: Held, max_held_bytes: u64, failed: &OnceLock<String>) {
        let mut queue = self.lock();
        let len_bytes = held.len_bytes();
        while queue.held_bytes > 0
            && queue.held_bytes + len_bytes > max_held_bytes
            && failed.get().is_none()
            && !queue.closing
        {
            queue = self.changed.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        queue.held_bytes += len_bytes;
        if held.is_disk() {
            queue.disk_pending += 1;
        }
        queue.in_flight += 1;
        queue.held.push_back((seq, held));
        self.changed.notify_all();
    }

    /// Blocks until no disk write or flush is held or in progress, so a disk
    /// read sees every write the guest made before it.
    pub fn wait_disk_drained(&self) {
        let mut queue = self.lock();
        while queue.disk_pending > 0 {
            queue = self.changed.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Blocks until every held output was released (or dropped by a halt).
    pub fn close_and_drain(&self) {
        let mut queue = self.lock();
        queue.closing = true;
        self.changed.notify_all();
        while queue.in_flight > 0 {
            queue = self.changed.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// The primary's outputs: held until acknowledged, then released in order
/// by a thread of their own.
pub struct HeldOutputs {
    side: Arc<PrimarySide>,
    queue: Arc<OutputQueue>,
}

impl HeldOutputs {
    /// Holds outputs for `live` (the real console, TAP and disk) and starts the releaser.
    pub fn start(
        side: Arc<PrimarySide>,
        live: LiveOutputs,
    ) -> (HeldOutputs, Arc<OutputQueue>, JoinHandle<()>) {
        let queue =
            Arc::new(OutputQueue { state: Mutex::new(Queue::default()), changed: Condvar::new() });
        let releaser = {
            let (side, queue) = (side.clone(), queue.clone());
            std::thread::Builder::new()
                .name("ftvm-output".into())
                .spawn(move || release(side, queue, live))
                .expect("spawning the output thread")
        };
        (HeldOutputs { side, queue: queue.clone() }, queue, releaser)
    }

    /// Holds `held`, tied to an entry at its own point: if nothing in the log announces the
    /// landmark the guest is at, a progress entry for it goes first. (Tied to an older entry,
    /// it could be released once that one is acked, and a backup going live there would meet
    /// live events at landmarks where the primary had none, and might never produce it.)
    fn hold(&self, held: Held) {
        let side = &self.side;
        let landmark = side.current_landmark.load(Ordering::SeqCst);
        if !side.is_solo() && side.announced_landmark.load(Ordering::SeqCst) < landmark {
            // A failed link is handled by the log sink and the releaser.
            if let Ok(sent) = side.link.send(&Entry::Progress { landmark }) {
                side.last_sent_seq.store(sent.seq, Ordering::SeqCst);
                side.announced_landmark.fetch_max(landmark, Ordering::SeqCst);
            }
        }
        let seq = side.last_sent_seq.load(Ordering::SeqCst);
        self.queue.push(seq, held, side.config.max_held_bytes, &side.output_failed);
    }

    fn disk_error(&self) -> Result<(), OutputError> {
        match self.side.output_failed.get() {
            Some(error) => Err(OutputError::Disk(error.clone())),
            None => Ok(()),
        }
    }
}

impl Outputs for HeldOutputs {
    fn console(&mut self, bytes: &[u8]) {
        self.hold(Held::Console(bytes.to_vec()));
    }

    fn transmit(&mut self, frame: &[u8]) {
        self.hold(Held::Frame(frame.to_vec()));
    }

    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        self.disk_error()?;
        self.hold(Held::DiskWrite(offset, data.to_vec()));
        Ok(())
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        self.disk_error()?;
        self.hold(Held::DiskFlush);
        Ok(())
    }
}

/// The releaser: waits until each output may be released (acknowledged, and
/// the lease held, or solo), then performs it at once on this thread.
fn release(side: Arc<PrimarySide>, queue: Arc<OutputQueue>, mut live: LiveOutputs) {
    let mut report = ReleaseReport::default();
    loop {
        let (seq, held) = {
            let mut state = queue.lock();
            loop {
                if let Some(next) = state.held.pop_front() {
                    break next;
                }
                if state.closing {
                    return;
                }
                state = queue.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        // `Some(time of the lease check)` when released under the lease.
        let mut checked_at_ns = None;
        let released = loop {
            if side.is_solo() {
                break true;
            }
            match side.link.wait_releasable(seq, deadline_after(Duration::from_millis(100))) {
                Ok(true) => {
                    checked_at_ns = Some(side.clock.elapsed_ns());
                    break true;
                }
                Ok(false) => continue,
                Err(error) => break side.backup_failed(&error).is_ok(),
            }
        };
        let is_disk = held.is_disk();
        let len_bytes = held.len_bytes();
        // After a failed output nothing more is released: the world must not see what the
        // guest did after a write the shared disk refused.
        let released = released && side.output_failed.get().is_none();
        if released {
            report.count(&held);
        }
        let called_at_ns = side.clock.elapsed_ns();
        let result = match (released, held) {
            (false, _) => Ok(()),
            (true, Held::Console(bytes)) => {
                live.console(&bytes);
                Ok(())
            }
            (true, Held::Frame(frame)) => {
                live.transmit(&frame);
                Ok(())
            }
            (true, Held::DiskWrite(offset, data)) => live.disk_write(offset, &data),
            (true, Held::DiskFlush) => live.disk_flush(),
        };
        if let Some(checked_at_ns) = checked_at_ns {
            // The fence's window: from the lease check to the call that performs the output (a
            // pause there lets the output out late); and how long the call itself took (storage
            // slower than the lease's margin lets a write land late too).
            let done_at_ns = side.clock.elapsed_ns();
            side.fence_window_ns
                .fetch_add(called_at_ns.saturating_sub(checked_at_ns), Ordering::Relaxed);
            side.longest_output_call_ns
                .fetch_max(done_at_ns.saturating_sub(called_at_ns), Ordering::Relaxed);
            side.released_under_lease.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = queue.lock();
        if let Err(error) = result {
            let reason = format!(
                "the shared disk refused a write of the guest ({error}): this primary releases \
                 nothing after it and halts"
            );
            eprintln!("ftvm: output stopped: {error}");
            let _ = side.output_failed.set(reason);
        }
        if is_disk {
            state.disk_pending -= 1;
        }
        state.held_bytes -= len_bytes;
        state.in_flight -= 1;
        let caught_up = state.held.is_empty();
        queue.changed.notify_all();
        drop(state);
        report.send_if_due(&side, caught_up);
    }
}

/// How far the releaser has released each kind of output, and when it last
/// told the backup (an [`Entry::Released`] in the log): when it has caught up
/// with the queue, or every [`ReleaseReport::EVERY`] outputs while it has not.
#[derive(Default)]
struct ReleaseReport {
    packets: u64,
    console_writes: u64,
    disk_writes: u64,
    since_sent: u64,
}

impl ReleaseReport {
    const EVERY: u64 = 32;

    fn count(&mut self, held: &Held) {
        match held {
            Held::Frame(_) => self.packets += 1,
            Held::Console(_) => self.console_writes += 1,
            Held::DiskWrite(..) => self.disk_writes += 1,
            Held::DiskFlush => return,
        }
        self.since_sent += 1;
    }

    fn send_if_due(&mut self, side: &PrimarySide, caught_up: bool) {
        if self.since_sent == 0 || !(caught_up || self.since_sent >= Self::EVERY) || side.is_solo()
        {
            return;
        }
        let entry = Entry::Released {
            packets: self.packets,
            console_writes: self.console_writes,
            disk_writes: self.disk_writes,
        };
        // A failed link is noticed and handled by the log sink and the wait for acks.
        let _ = side.link.send(&entry);
        self.since_sent = 0;
    }
}
