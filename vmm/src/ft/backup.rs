//! The backup's side of the pair: it replays the primary's log as it
//! arrives over the channel (never running past what the primary reported),
//! sends nothing to the outside, and remembers the guest's recent disk writes.
//! When the primary is presumed dead it waits until the failure timeout has
//! passed since it last heard the primary (so the primary's lease has ended,
//! whichever way the link failed), asks the arbiter, and, having won, goes
//! live at exactly the point its replay reached: the inputs switch from the
//! log to the host (the guest clock continuing from its last logged value),
//! the outputs to the real console, TAP and disk (re-applying the recent
//! writes the primary may not have released), and the VMM announces the
//! guest's MAC with a RARP frame so the bridge learns the new port.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use logchannel::{BackupLink, ChannelError, Entry};

use super::{arbitrate, FtConfig, NotWon};
use crate::inputs::live::{sleep_until, unix_time_ns, Backends, LiveInputs};
use crate::inputs::replay::{EntrySource, ReplayInputs};
use crate::inputs::{Armed, AsyncEvent, At, InputError, Inputs, LogStats, RunEnd};
use crate::outputs::{LiveOutputs, OutputError, Outputs};

/// How long one wait for the next entry lasts before it is retried (the
/// channel reports a dead primary on its own, after the failure timeout).
const RECV_SLICE: Duration = Duration::from_millis(100);
/// The most bytes of unreleased outputs of one kind the backup keeps to re-emit at go-live.
const UNRELEASED_MAX_BYTES: u64 = 64 << 20;

/// What the backup is doing, readable from any thread (for SIGUSR1).
#[derive(Default)]
pub struct BackupStatus {
    /// The sequence number of the last entry handed to the replay.
    replayed_seq: AtomicU64,
    /// Set at go-live.
    live: AtomicBool,
    /// How far the primary reported releasing the guest's output, per kind.
    released: [AtomicU64; 3],
}

/// The kinds of output the primary reports releasing (indexes of `released`).
#[derive(Clone, Copy)]
enum OutputKind {
    Packet = 0,
    Console = 1,
    DiskWrite = 2,
}

impl BackupStatus {
    fn released(&self, kind: OutputKind) -> u64 {
        self.released[kind as usize].load(Ordering::SeqCst)
    }

    fn note_released(&self, packets: u64, console_writes: u64, disk_writes: u64) {
        for (slot, count) in self.released.iter().zip([packets, console_writes, disk_writes]) {
            slot.fetch_max(count, Ordering::SeqCst);
        }
    }
}

impl BackupStatus {
    /// One line: role, generation, how far the log was received and replayed.
    pub fn describe(&self, link: &BackupLink, generation: u64) -> String {
        let role = if self.live.load(Ordering::SeqCst) { "live" } else { "backup" };
        let (received, replayed) = (link.acked_seq(), self.replayed_seq.load(Ordering::SeqCst));
        format!(
            "role {role} generation {generation} received seq {received} replayed seq {replayed} lag entries {}",
            received.saturating_sub(replayed)
        )
    }
}

/// The log channel as an entry source.
pub struct LinkSource {
    link: Arc<BackupLink>,
    status: Arc<BackupStatus>,
}

impl LinkSource {
    /// A source over an accepted link, reporting progress to `status`.
    pub fn new(link: Arc<BackupLink>, status: Arc<BackupStatus>) -> Self {
        LinkSource { link, status }
    }
}

fn channel_error(error: ChannelError) -> InputError {
    if error.is_peer_failure() {
        InputError::PrimaryLost(error.to_string())
    } else {
        // A corrupt or out-of-order frame is never replayed; the channel is
        // unusable, which for the pair is the same as losing the primary.
        eprintln!("ftvm: the log channel failed: {error}");
        InputError::PrimaryLost(format!("the log channel failed: {error}"))
    }
}

impl EntrySource for LinkSource {
    fn next_entry(&mut self, wait: bool) -> Result<Option<(u64, Entry, u64)>, InputError> {
        loop {
            let slice = if wait { RECV_SLICE } else { Duration::ZERO };
            match self.link.recv_frame(slice).map_err(channel_error)? {
                // The primary's release reports are for go-live, not for the replay.
                Some(logchannel::Received {
                    entry: Entry::Released { packets, console_writes, disk_writes },
                    ..
                }) => self.status.note_released(packets, console_writes, disk_writes),
                Some(received) => {
                    self.status.replayed_seq.store(received.seq, Ordering::SeqCst);
                    return Ok(Some((received.seq, received.entry, received.frame_len_bytes)));
                }
                None if wait => continue,
                None => return Ok(None),
            }
        }
    }
}

/// One kind of output the backup's guest produced that the primary may not
/// have released yet: numbered from 1 in the order the guest produced them
/// (the primary's guest produced the same ones in the same order), kept
/// until the primary reports releasing them, up to [`UNRELEASED_MAX_BYTES`].
struct Unreleased<T> {
    produced: u64,
    kept: VecDeque<(u64, T, u64)>,
    kept_bytes: u64,
    /// Outputs given up to the byte bound before the primary reported them.
    dropped: u64,
}

impl<T> Default for Unreleased<T> {
    fn default() -> Self {
        Unreleased { produced: 0, kept: VecDeque::new(), kept_bytes: 0, dropped: 0 }
    }
}

impl<T> Unreleased<T> {
    fn push(&mut self, item: T, bytes: u64, released: u64) {
        self.produced += 1;
        self.kept.push_back((self.produced, item, bytes));
        self.kept_bytes += bytes;
        self.forget_through(released);
        while self.kept_bytes > UNRELEASED_MAX_BYTES {
            let (_, _, bytes) = self.kept.pop_front().expect("bytes counted are kept");
            self.kept_bytes -= bytes;
            self.dropped += 1;
        }
    }

    /// Forgets the outputs numbered up to `released`.
    fn forget_through(&mut self, released: u64) {
        while self.kept.front().is_some_and(|(index, _, _)| *index <= released) {
            let (_, _, bytes) = self.kept.pop_front().expect("front exists");
            self.kept_bytes -= bytes;
        }
    }

    /// The outputs after `released`, in order.
    fn take_after(&mut self, released: u64) -> Vec<T> {
        self.forget_through(released);
        self.kept_bytes = 0;
        std::mem::take(&mut self.kept).into_iter().map(|(_, item, _)| item).collect()
    }
}

/// State the backup's inputs and outputs share (both live on the vCPU thread).
#[derive(Default)]
struct Shared {
    /// The real outputs, once live.
    live: Option<LiveOutputs>,
    /// Outputs the primary may not have released: re-emitted (the disk
    /// writes re-applied) at go-live.
    packets: Unreleased<Vec<u8>>,
    console: Unreleased<Vec<u8>>,
    disk_writes: Unreleased<(u64, Vec<u8>)>,
}

/// The backup's outputs: nothing leaves while it is a backup; what the
/// primary may not have released yet is kept for go-live.
pub struct BackupOutputs {
    shared: Rc<RefCell<Shared>>,
    status: Arc<BackupStatus>,
}

impl Outputs for BackupOutputs {
    fn console(&mut self, bytes: &[u8]) {
        let mut shared = self.shared.borrow_mut();
        match shared.live.as_mut() {
            Some(live) => live.console(bytes),
            None => {
                let released = self.status.released(OutputKind::Console);
                shared.console.push(bytes.to_vec(), bytes.len() as u64, released);
            }
        }
    }

    fn transmit(&mut self, frame: &[u8]) {
        let mut shared = self.shared.borrow_mut();
        match shared.live.as_mut() {
            Some(live) => {
                live.transmit(frame);
                // Once: when the live guest's own first frame left (after any re-emitted ones).
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    eprintln!("ftvm: live: first guest frame out at unix ns {}", unix_time_ns());
                }
            }
            None => {
                let released = self.status.released(OutputKind::Packet);
                shared.packets.push(frame.to_vec(), frame.len() as u64, released);
            }
        }
    }

    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        let mut shared = self.shared.borrow_mut();
        if let Some(live) = shared.live.as_mut() {
            return live.disk_write(offset, data);
        }
        let released = self.status.released(OutputKind::DiskWrite);
        shared.disk_writes.push((offset, data.to_vec()), data.len() as u64, released);
        Ok(())
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        match self.shared.borrow_mut().live.as_mut() {
            Some(live) => live.disk_flush(),
            None => Ok(()),
        }
    }
}

/// What going live needs.
struct GoLive {
    config: FtConfig,
    generation: u64,
    link: Arc<BackupLink>,
    /// This host's TAP and disk, opened and checked at start.
    backends: Backends,
    net_mac: Option<[u8; 6]>,
    console: Option<Box<dyn Write + Send>>,
}

/// The backup's inputs: the replayed log, then, after go-live, the host.
pub struct BackupInputs {
    replay: Option<ReplayInputs<LinkSource>>,
    live: Option<LiveInputs>,
    last_monotonic_ns: u64,
    go_live: GoLive,
    shared: Rc<RefCell<Shared>>,
    status: Arc<BackupStatus>,
}

/// This backup's pair: its settings, generation and link.
pub struct BackupPair {
    /// Its settings.
    pub config: FtConfig,
    /// The generation it runs in.
    pub generation: u64,
    /// The link to the primary.
    pub link: Arc<BackupLink>,
}

/// The backup's inputs and outputs for a run whose start was read from
/// `replay`, going live on `backends` (this host's attachments, already
/// checked against the primary's devices; `net_mac` the guest's MAC).
pub fn backup_io(
    replay: ReplayInputs<LinkSource>,
    status: Arc<BackupStatus>,
    pair: BackupPair,
    backends: Backends,
    net_mac: Option<[u8; 6]>,
    console: Box<dyn Write + Send>,
) -> (BackupInputs, BackupOutputs) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    let BackupPair { config, generation, link } = pair;
    let go_live = GoLive { config, generation, link, backends, net_mac, console: Some(console) };
    let inputs = BackupInputs {
        replay: Some(replay),
        live: None,
        last_monotonic_ns: 0,
        go_live,
        shared: shared.clone(),
        status: status.clone(),
    };
    (inputs, BackupOutputs { shared, status })
}

/// A gratuitous RARP from `mac` (what VMware FT sends): every bridge on the
/// way learns the guest's new port without the VMM knowing its IP address.
fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x80, 0x35]); // EtherType: RARP
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 3]); // Ethernet/IPv4, "request reverse"
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.resize(60, 0);
    frame
}

impl BackupInputs {
    /// The primary is gone: wait out its lease, win the arbiter, then switch to the host.
    fn go_live(&mut self, at: &At, why: String) -> Result<(), InputError> {
        // Timeline of the failover (printed at the end): the replay has taken every entry received.
        let drained_unix_ns = unix_time_ns();
        let lease_end_unix_ns = self.go_live.link.live_not_before_unix_ns();
        sleep_until(self.go_live.link.live_not_before())?;
        let lease_waited_unix_ns = unix_time_ns();
        let go_live = &self.go_live;
        let why = format!("primary presumed dead ({why})");
        arbitrate(&go_live.config, go_live.generation, "backup", &why).map_err(|not_won| {
            match not_won {
                NotWon::Lost(reason) => {
                    eprintln!("ftvm: {reason}");
                    InputError::Halted(reason)
                }
                NotWon::Stopped => InputError::Stopped,
            }
        })?;
        let arbiter_won_unix_ns = unix_time_ns();
        let backends = std::mem::take(&mut self.go_live.backends);
        if let Some(tap) = backends.tap.as_ref() {
            // Frames queued while this side was a backup were flooded to both sides (the
            // primary's guest consumed them, and the log carried them here): stale now.
            while let Ok(Some(_)) = tap.read_packet() {}
        }
        let mut shared = self.shared.borrow_mut();
        let console = self.go_live.console.take().expect("go-live happens once");
        let mut live_outputs =
            LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone());
        // What the primary may not have released: its writes first (a reader must find them),
        // then the announcement, then the packets and console output the world may not have
        // seen, in the order the guest produced them.
        let host_error = |error: OutputError| InputError::Host(error.to_string());
        let status = &self.status;
        let writes = shared.disk_writes.take_after(status.released(OutputKind::DiskWrite));
        let rewritten = writes.len();
        for (offset, data) in writes {
            live_outputs.disk_write(offset, &data).map_err(host_error)?;
        }
        if backends.disk.is_some() {
            live_outputs.disk_flush().map_err(host_error)?;
        }
        if let (Some(mac), Some(_)) = (self.go_live.net_mac, backends.tap.as_ref()) {
            live_outputs
                .transmit(&crate::devices::virtio::net::plain_packet(&rarp_announcement(mac)));
        }
        let packets = shared.packets.take_after(status.released(OutputKind::Packet));
        let console = shared.console.take_after(status.released(OutputKind::Console));
        let re_emitted = (packets.len(), console.len());
        packets.iter().for_each(|packet| live_outputs.transmit(packet));
        console.iter().for_each(|text| live_outputs.console(text));
        let dropped = shared.packets.dropped + shared.console.dropped + shared.disk_writes.dropped;
        if dropped > 0 {
            eprintln!(
                "ftvm: warning: {dropped} unreleased outputs were over the {} MiB kept per kind \
                 and are not re-emitted",
                UNRELEASED_MAX_BYTES >> 20
            );
        }
        shared.live = Some(live_outputs);
        self.status.live.store(true, Ordering::SeqCst);
        let replayed = self.replay.take().map(|replay| replay.log_stats().entries()).unwrap_or(0);
        self.live = Some(LiveInputs::continuing_at(self.last_monotonic_ns + 1, backends));
        eprintln!(
            "ftvm: role: backup -> live, generation {}, at landmark {} rip {:#x}, {replayed} entries replayed, {rewritten} unreleased disk writes re-applied, {} packets and {} console writes re-emitted, at unix ns {}",
            self.go_live.generation, at.point.landmark, at.point.rip, re_emitted.0, re_emitted.1, unix_time_ns()
        );
        eprintln!(
            "ftvm: go-live timeline (unix ns): link failed {} replay drained {drained_unix_ns} lease end {lease_end_unix_ns} lease waited {lease_waited_unix_ns} arbiter won {arbiter_won_unix_ns}",
            self.go_live.link.failed_at_unix_ns().unwrap_or(0)
        );
        Ok(())
    }

    /// Runs `call` on the replay, or after go-live on the host; a lost
    /// primary in the middle of a call makes the backup go live and redo it.
    fn with<T>(
        &mut self,
        at: &At,
        mut call: impl FnMut(&mut dyn Inputs) -> Result<T, InputError>,
    ) -> Result<T, InputError> {
        if let Some(replay) = self.replay.as_mut() {
            match call(replay) {
                Err(InputError::PrimaryLost(why)) => self.go_live(at, why)?,
                other => return other,
            }
        }
        call(self.live.as_mut().expect("live after go-live"))
    }
}

/// Logs, once, when the live guest got its first frame from the network (for the failover
/// timeline: a client's retransmission reaching the new side).
fn note_first_frame_in(live: bool, events: &[AsyncEvent]) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let frame = |event: &AsyncEvent| matches!(event, AsyncEvent::FrameReceived(_));
    if live && events.iter().any(frame) && !LOGGED.swap(true, Ordering::Relaxed) {
        eprintln!("ftvm: live: first frame in at unix ns {}", unix_time_ns());
    }
}

impl Inputs for BackupInputs {
    fn monotonic_ns(&mut self, at: &At) -> Result<u64, InputError> {
        let value = self.with(at, |inputs| inputs.monotonic_ns(at))?;
        self.last_monotonic_ns = self.last_monotonic_ns.max(value);
        Ok(value)
    }

    fn wall_ns(&mut self, at: &At) -> Result<u64, InputError> {
        self.with(at, |inputs| inputs.wall_ns(at))
    }

    fn entropy(&mut self, at: &At, buf: &mut [u8]) -> Result<(), InputError> {
        self.with(at, |inputs| inputs.entropy(at, buf))
    }

    fn disk_read(&mut self, at: &At, offset: u64, buf: &mut [u8]) -> Result<(), InputError> {
        self.with(at, |inputs| inputs.disk_read(at, offset, buf))
    }

    fn stop_here(&mut self, at: &At) -> Result<bool, InputError> {
        if crate::signals::stop_requested() {
            return Ok(true);
        }
        self.with(at, |inputs| inputs.stop_here(at))
    }

    fn poll_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let events = self.with(at, |inputs| inputs.poll_events(at, armed))?;
        note_first_frame_in(self.live.is_some(), &events);
        Ok(events)
    }

    fn wait_events(&mut self, at: &At, armed: Armed) -> Result<Vec<AsyncEvent>, InputError> {
        let events = self.with(at, |inputs| inputs.wait_events(at, armed))?;
        note_first_frame_in(self.live.is_some(), &events);
        Ok(events)
    }

    fn end_of_run(&mut self, end: &RunEnd) -> Result<(), InputError> {
        // This backup was stopped (SIGTERM) in the middle of its replay: its end is its own,
        // not the recorded guest's, so there is nothing to compare.
        if end.stopped && crate::signals::stop_requested() {
            return Ok(());
        }
        match self.replay.as_mut() {
            Some(replay) => match replay.end_of_run(end) {
                // The primary died after its guest ended: nothing left to check.
                Err(InputError::PrimaryLost(_)) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    fn log_stats(&self) -> LogStats {
        self.replay.as_ref().map(|replay| replay.log_stats()).unwrap_or_default()
    }
}
