//! The primary's side of the pair: a thin driver of [`PrimaryPair`], the sans-IO core that
//! holds the decisions. The vCPU thread appends every log entry to the channel (the lag bound
//! holding it back when the backup falls behind), holds every output in the core, and tells
//! it when each exit ends (the output's entry goes out then). One releaser thread performs
//! what the core releases, asks the arbiter when the core says the backup is lost, and drops
//! what the core drops. The run ends at the next landmark once the core says so (halted, or
//! an output failed on the host).
//!
//! The fence's remaining window: a pause of the releaser thread after the lease check and
//! before its `pwrite`/`write` syscall (a few microseconds of code) that lasts past the
//! backup's go-live. Linux cannot revoke a file descriptor, so only a fence in the storage
//! itself (SCSI reservations, a block service that checks generations) could close it.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logchannel::pair::primary::{PrimaryEnd, PrimaryPair, PrimaryRole, PrimaryStep};
use logchannel::pair::OutputKind;
use logchannel::{Entry, PrimaryLink};
use storage::BlockStore;

use super::{arbitrate, median_p99, FtConfig, NotWon, PairReport};
use crate::inputs::live::{deadline_after, has_passed, sleep_until, unix_time_ns, HostClock};
use crate::inputs::record::EntrySink;
use crate::inputs::InputError;
use crate::outcome::RunOutcome;
use crate::outputs::{LiveOutputs, OutputError, Outputs};

/// Lag samples kept for the report (one per entry sent, up to this many).
const MAX_LAG_SAMPLES: usize = 1 << 20;
/// How long the releaser waits before it looks at the channel again (a failed link is
/// noticed within this, also while nothing is held).
const RELEASER_TICK: Duration = Duration::from_millis(20);

/// An output waiting for its acknowledgement.
pub enum Held {
    /// Console text.
    Console(Vec<u8>),
    /// A frame for the TAP.
    Frame(Vec<u8>),
    /// A write of the shared disk at a byte offset.
    DiskWrite(u64, Vec<u8>),
    /// A flush of the shared disk.
    DiskFlush,
}

/// The core and whether the run is over, under one lock.
struct PairState {
    core: PrimaryPair<Held>,
    closing: bool,
}

/// The pair as the primary sees it; shared by the log sink, the held outputs and the releaser.
pub struct PrimarySide {
    link: PrimaryLink,
    config: FtConfig,
    generation: u64,
    state: Mutex<PairState>,
    /// Paired, and no output failed: cleared by the releaser when the core's role or end
    /// changes, read without the lock by the vCPU thread at every exit and entry.
    paired: AtomicBool,
    /// A stop signal came while this side asked the arbiter: the run ends as stopped.
    stopped: AtomicBool,
    /// An output was held or done, a verdict came, or the run is closing.
    changed: Condvar,
    /// (entries, bytes, ms) the backup lagged behind, sampled at each entry sent.
    lag_samples: Mutex<Vec<(u64, u64, u64)>>,
    /// Measures the fence's window (lease check to end of write).
    clock: HostClock,
    fence_window_ns: AtomicU64,
    longest_output_call_ns: AtomicU64,
    /// Set to the generation when this side goes solo (it may then take a new backup).
    running_alone_in: Arc<Mutex<Option<u64>>>,
}

impl PrimarySide {
    /// The primary's side of `generation` over a connected link; `running_alone_in` is set
    /// to the generation if it goes solo.
    pub fn new(
        link: PrimaryLink,
        config: FtConfig,
        generation: u64,
        running_alone_in: Arc<Mutex<Option<u64>>>,
    ) -> Arc<Self> {
        let core = PrimaryPair::new(config.max_held_bytes, config.channel.primary_defers_ms());
        Arc::new(PrimarySide {
            link,
            config,
            generation,
            state: Mutex::new(PairState { core, closing: false }),
            paired: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            changed: Condvar::new(),
            lag_samples: Mutex::new(Vec::new()),
            clock: HostClock::start(),
            fence_window_ns: AtomicU64::new(0),
            longest_output_call_ns: AtomicU64::new(0),
            running_alone_in,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, PairState>) -> MutexGuard<'a, PairState> {
        match self.changed.wait_timeout(state, RELEASER_TICK) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// How the run must end, if the core says it must (or a stop signal came while this
    /// side asked the arbiter).
    pub fn end(&self) -> Option<RunOutcome> {
        if self.stopped.load(Ordering::SeqCst) {
            return Some(RunOutcome::Stopped);
        }
        self.lock().core.end().map(|end| match end {
            PrimaryEnd::Halted(reason) => RunOutcome::Halted(reason),
            PrimaryEnd::OutputFailed(reason) => RunOutcome::OutputFailed(format!(
                "the shared disk refused a write of the guest ({reason}): this primary released \
                 nothing after it and halts"
            )),
        })
    }

    /// Reads `buf.len()` bytes of the guest's disk at `offset` as the guest sees it: the
    /// image, with the writes still held for acknowledgement laid over it in order. (Waiting
    /// for them to be released instead would deadlock a read that follows a write in the same
    /// exit: that write is released only when the exit ends.) A write being performed is
    /// waited for; the lock keeps the releaser from taking another meanwhile.
    pub fn read_disk(&self, disk: &BlockStore, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let mut state = self.lock();
        while state.core.performing(OutputKind::DiskWrite) {
            state = self.wait(state);
        }
        disk.read_at(offset, buf).map_err(|error| error.to_string())?;
        let end = offset + buf.len() as u64;
        for held in state.core.held() {
            let Held::DiskWrite(at, data) = held else { continue };
            let (from, to) = ((*at).max(offset), (at + data.len() as u64).min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        Ok(())
    }

    /// Mirrors the core's role for the vCPU thread's lock-free checks.
    fn note_role(&self, state: &PairState) {
        let paired = *state.core.role() == PrimaryRole::Paired && state.core.end().is_none();
        self.paired.store(paired, Ordering::SeqCst);
    }

    fn is_paired(&self) -> bool {
        self.paired.load(Ordering::SeqCst)
    }

    /// Blocks until every held output was released (or dropped), an arbitration in progress
    /// included; the releaser then stops. Outputs of an exit the run ended in without
    /// finishing it (a VMM error) are tied to `last_landmark` first.
    pub fn close_and_drain(&self, last_landmark: u64) {
        let mut state = self.lock();
        self.link.with_core(|channel, now_ns| state.core.exit_done(channel, last_landmark, now_ns));
        state.closing = true;
        self.changed.notify_all();
        while !state.core.drained()
            || matches!(
                state.core.role(),
                PrimaryRole::Arbitrating | PrimaryRole::LostBackup { .. }
            )
        {
            state = self.wait(state);
        }
    }

    /// What the pair looked like from here.
    pub fn report(&self) -> PairReport {
        let stats = self.link.stats();
        let (role, released_under_lease) = {
            let state = self.lock();
            let role = match state.core.role() {
                PrimaryRole::Solo => "solo",
                PrimaryRole::Halted(_) => "halted",
                PrimaryRole::Paired | PrimaryRole::LostBackup { .. } | PrimaryRole::Arbitrating => {
                    "primary"
                }
            };
            (role, state.core.released_under_lease())
        };
        let samples = self.lag_samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let column = |pick: fn(&(u64, u64, u64)) -> u64| {
            median_p99(&mut samples.iter().map(pick).collect::<Vec<_>>())
        };
        PairReport {
            role: role.into(),
            generation: self.generation,
            sent_seq: stats.sent_seq,
            acked_seq: stats.acked_seq,
            sent_bytes: stats.sent_bytes,
            lag_entries: column(|sample| sample.0),
            lag_bytes: column(|sample| sample.1),
            lag_ms: column(|sample| sample.2),
            released_under_lease,
            fence_window_ns: self.fence_window_ns.load(Ordering::Relaxed),
            longest_output_call_ns: self.longest_output_call_ns.load(Ordering::Relaxed),
            wall_ns: self.clock.elapsed_ns(),
        }
    }

    fn sample_lag(&self) {
        let stats = self.link.stats();
        let mut samples = self.lag_samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() < MAX_LAG_SAMPLES {
            samples.push((
                stats.sent_seq - stats.replayed_seq,
                stats.unreplayed_bytes,
                stats.replay_catch_up_ms,
            ));
        }
    }
}

/// The primary's log sink: entries go to the backup while paired, and the lag bound holds the
/// guest back when the backup falls behind. A failed link is the releaser's to handle (the
/// core reports it there); meanwhile entries are not sent (a side that wins goes solo, one
/// that loses halts).
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
        if !self.side.is_paired() {
            return Ok(0);
        }
        let falsified = self.maybe_falsify(entry);
        let link = &self.side.link;
        let Ok(sent) = link.send(falsified.as_ref().unwrap_or(entry)) else { return Ok(0) };
        self.side.sample_lag();
        Ok(sent.frame_len_bytes)
    }

    /// Between two exits: the lag bound holds the guest here while the backup falls behind
    /// (never inside an exit: the backup replays an exit only once it is complete), and the
    /// run ends here once the core says so.
    fn at_landmark(&mut self, landmark: u64) -> Option<RunOutcome> {
        let side = &self.side;
        if !side.paired.load(Ordering::SeqCst) {
            return side.end();
        }
        let config = &side.config;
        // The exits before this one are complete: say so before waiting, so the backup can
        // replay up to here. A link that fails meanwhile ends the wait.
        let complete = Entry::Progress { landmark: landmark - 1 };
        let _ =
            side.link.wait_for_room_after(config.max_lag_bytes, config.max_lag_ms, Some(&complete));
        None
    }

    fn flush(&mut self) -> Result<(), InputError> {
        if self.side.is_paired() {
            let timeout_ms = self.side.config.channel.failure_timeout_ms * 2;
            // A failed link is the releaser's to handle.
            let _ = self.side.link.flush(deadline_after(Duration::from_millis(timeout_ms)));
        }
        Ok(())
    }
}

/// The primary's outputs: held in the core until it releases them; writes to this side's
/// own disk image (`mode=own`) are not outputs to the world and go to it at once.
pub struct HeldOutputs {
    side: Arc<PrimarySide>,
    own_disk: Option<Arc<BlockStore>>,
    /// Outputs were held during the exit in progress.
    held_in_exit: bool,
}

impl HeldOutputs {
    /// Holds outputs for `live` (the real console, TAP and disk) and starts the releaser;
    /// `own_disk` is this side's own image, if the pair's disks are `mode=own`; `net_mac` the
    /// guest's MAC, announced when this side goes solo or the backup announced it.
    pub fn start(
        side: Arc<PrimarySide>,
        live: LiveOutputs,
        own_disk: Option<Arc<BlockStore>>,
        net_mac: Option<[u8; 6]>,
    ) -> (HeldOutputs, JoinHandle<()>) {
        let releaser = {
            let side = side.clone();
            let announcer = Announcer {
                packet: net_mac.map(super::mac_announcement),
                seen: 0,
                again_at: None,
                again_after: Duration::from_millis(side.config.channel.failure_timeout_ms),
            };
            std::thread::Builder::new()
                .name("ftvm-output".into())
                .spawn(move || release(&side, live, announcer))
                .expect("spawning the output thread")
        };
        (HeldOutputs { side, own_disk, held_in_exit: false }, releaser)
    }

    /// Holds `output`; first waits (the vCPU with it) while the core has no room for it.
    fn hold(&mut self, output: Held, kind: OutputKind, len_bytes: u64) {
        let side = &self.side;
        let mut state = side.lock();
        while !state.core.has_room_for(len_bytes) && !state.closing {
            state = side.wait(state);
        }
        state.core.hold(output, kind, len_bytes);
        // A paired releaser waits for acks, not for holds: the output waits for the end of its
        // exit and the ack of its entry anyway. Other roles release at once.
        if *state.core.role() != PrimaryRole::Paired {
            side.changed.notify_all();
        }
        self.held_in_exit = true;
    }

    fn disk_error(&self) -> Result<(), OutputError> {
        match self.side.lock().core.end() {
            Some(PrimaryEnd::OutputFailed(error)) => Err(OutputError::Disk(error)),
            _ => Ok(()),
        }
    }
}

impl Outputs for HeldOutputs {
    fn console(&mut self, bytes: &[u8]) {
        self.hold(Held::Console(bytes.to_vec()), OutputKind::Console, bytes.len() as u64);
    }

    fn transmit(&mut self, frame: &[u8]) {
        self.hold(Held::Frame(frame.to_vec()), OutputKind::Packet, frame.len() as u64);
    }

    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        if let Some(disk) = &self.own_disk {
            return disk.write_at(offset, data).map_err(OutputError::from);
        }
        self.disk_error()?;
        let len_bytes = data.len() as u64;
        self.hold(Held::DiskWrite(offset, data.to_vec()), OutputKind::DiskWrite, len_bytes);
        Ok(())
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        if let Some(disk) = &self.own_disk {
            return disk.flush().map_err(OutputError::from);
        }
        self.disk_error()?;
        self.hold(Held::DiskFlush, OutputKind::DiskFlush, 0);
        Ok(())
    }

    fn exit_done(&mut self, landmark: u64) {
        let side = &self.side;
        side.link.note_exits_complete(landmark);
        if std::mem::take(&mut self.held_in_exit) {
            let mut state = side.lock();
            side.link.with_core(|channel, now_ns| state.core.exit_done(channel, landmark, now_ns));
            // A paired releaser is woken by the ack of the entry just sent.
            if *state.core.role() != PrimaryRole::Paired {
                side.changed.notify_all();
            }
        }
    }
}

/// Takes the guest's inbound traffic back from a backup that announced the guest's MAC (it
/// had not heard this primary for half the failure timeout: a pause, a slow link) while this
/// side still holds its lease, and announces it when this side goes solo.
struct Announcer {
    /// The announcement frame, if the guest has a NIC.
    packet: Option<Vec<u8>>,
    /// The backup's announcements answered so far.
    seen: u64,
    /// When a side gone solo announces once more.
    again_at: Option<Instant>,
    /// How long after going solo: a backup that stopped hearing this side announces once,
    /// half the failure timeout after it last heard it (at the latest that long after this
    /// side went solo) whether or not this side went on; without a later word from here, the
    /// LAN would send the guest's traffic to a backup that lost the arbiter.
    again_after: Duration,
}

impl Announcer {
    /// Announces if the backup announced since the last call and this side's lease holds (a
    /// primary that wakes from a long pause reads the backup's old acks, but holds no lease:
    /// the backup may be live by then).
    fn answer_backup(&mut self, side: &PrimarySide, live: &mut LiveOutputs) {
        let Some(packet) = &self.packet else { return };
        let (announced, lease_valid) = side.link.with_core(|channel, now_ns| {
            (channel.backup_announcements(), channel.lease_valid(now_ns))
        });
        if announced > self.seen && lease_valid && side.is_paired() {
            self.seen = announced;
            eprintln!(
                "ftvm: the backup announced the guest's MAC (it had not heard this primary for \
                 half the failure timeout); announcing it again"
            );
            live.transmit(packet);
        }
    }

    /// This side went solo: the guest's traffic must come here, wherever the LAN sends it.
    fn solo(&mut self, live: &mut LiveOutputs) {
        if let Some(packet) = &self.packet {
            live.transmit(packet);
            self.again_at = Some(deadline_after(self.again_after));
        }
    }

    /// Announces once more when [`Self::solo`]'s second announcement is due.
    fn repeat_when_due(&mut self, live: &mut LiveOutputs) {
        let Some(packet) = &self.packet else { return };
        if self.again_at.is_some_and(has_passed) {
            self.again_at = None;
            live.transmit(packet);
        }
    }
}

/// The releaser: performs what the core releases, right after the lease check on this
/// thread; asks the arbiter when the core says so.
fn release(side: &PrimarySide, mut live: LiveOutputs, mut announcer: Announcer) {
    loop {
        announcer.answer_backup(side, &mut live);
        announcer.repeat_when_due(&mut live);
        let mut state = side.lock();
        if state.closing && state.core.drained() && *state.core.role() == PrimaryRole::Paired {
            // The run is over and everything was released: a backup that ends with it (its
            // replay reached the run's end) is no failure to arbitrate.
            return;
        }
        let (step, acked_seq) = side.link.with_core(|channel, now_ns| {
            (state.core.next_step(channel, now_ns), channel.acked_seq())
        });
        side.note_role(&state);
        match step {
            PrimaryStep::Release { output, under_lease, .. } => {
                let checked_at_ns = side.clock.elapsed_ns();
                drop(state);
                let called_at_ns = side.clock.elapsed_ns();
                let result = perform(&mut live, output);
                if under_lease {
                    // The fence's window: from the lease check to the call that performs the
                    // output (a pause there lets the output out late); and how long the call
                    // took (storage slower than the lease's margin lets a write land late too).
                    let done_at_ns = side.clock.elapsed_ns();
                    side.fence_window_ns
                        .fetch_add(called_at_ns.saturating_sub(checked_at_ns), Ordering::Relaxed);
                    side.longest_output_call_ns
                        .fetch_max(done_at_ns.saturating_sub(called_at_ns), Ordering::Relaxed);
                }
                if let Err(error) = &result {
                    eprintln!("ftvm: output stopped: {error}; nothing after it is released");
                }
                done(side, Some(result.map_err(|error| error.to_string())));
            }
            PrimaryStep::Drop(_) => {
                drop(state);
                done(side, None);
            }
            PrimaryStep::WaitForAck(seq) => {
                drop(state);
                // A failure or a timeout is the core's to judge at the next step.
                let _ = side.link.wait_releasable(seq, deadline_after(RELEASER_TICK));
            }
            PrimaryStep::AskArbiter(why) => {
                drop(state);
                let verdict = arbitrate(&side.config, side.generation, "primary", &why);
                let mut state = side.lock();
                match &verdict {
                    Ok(()) => {
                        announcer.solo(&mut live);
                        *side.running_alone_in.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(side.generation);
                        eprintln!(
                            "ftvm: role: primary -> solo, generation {}, at unix ns {}",
                            side.generation,
                            unix_time_ns()
                        )
                    }
                    Err(NotWon::Lost(reason)) => {
                        eprintln!("ftvm: {reason}; the outputs it held are dropped")
                    }
                    Err(NotWon::Stopped) => side.stopped.store(true, Ordering::SeqCst),
                }
                state.core.arbiter_said(verdict.map_err(|not_won| match not_won {
                    NotWon::Lost(reason) => reason,
                    NotWon::Stopped => "stopped while asking the arbiter".into(),
                }));
                side.note_role(&state);
                side.changed.notify_all();
            }
            PrimaryStep::WaitUntil(at_ns) => {
                drop(state);
                let wait_ns = side.link.with_core(|_, now_ns| at_ns.saturating_sub(now_ns));
                // A stop signal ends the wait early; the loop then looks again.
                let _ =
                    sleep_until(deadline_after(Duration::from_nanos(wait_ns).min(RELEASER_TICK)));
            }
            PrimaryStep::Idle | PrimaryStep::WaitForExitEnd | PrimaryStep::WaitForVerdict => {
                if state.closing && state.core.drained() {
                    return;
                }
                if *state.core.role() == PrimaryRole::Paired {
                    // What is held next is released after the ack of an entry sent after this
                    // look (its exit's end): one wakeup, by that ack, instead of one per hold
                    // and per exit end as well (the vCPU does not wake this thread while paired).
                    drop(state);
                    side.link.wait_for_ack_after(acked_seq, deadline_after(RELEASER_TICK));
                } else {
                    drop(side.wait(state));
                }
            }
        }
    }
}

/// Tells the core an output it handed out is done (`None`: dropped).
fn done(side: &PrimarySide, result: Option<Result<(), String>>) {
    let mut state = side.lock();
    side.link.with_core(|channel, now_ns| state.core.output_done(channel, result, now_ns));
    side.note_role(&state);
    side.changed.notify_all();
}

fn perform(live: &mut LiveOutputs, output: Held) -> Result<(), OutputError> {
    match output {
        Held::Console(bytes) => live.console(&bytes),
        Held::Frame(frame) => live.transmit(&frame),
        Held::DiskWrite(offset, data) => return live.disk_write(offset, &data),
        Held::DiskFlush => return live.disk_flush(),
    }
    Ok(())
}
