//! The backup's side of the pair: a thin driver of [`BackupPair`], the sans-IO core that
//! holds the decisions. The replay reads the primary's log from the channel ([`LinkSource`]:
//! only complete exits, never past what the primary reported); the guest's outputs go nowhere
//! but are kept until the primary reports releasing them ([`BackupOutputs`]). When the log
//! ends (the primary is gone), the vCPU loop stops before the next exit and calls
//! [`BackupTakeover`]: it waits out the primary's lease and asks the arbiter as the core says,
//! and, having won, hands the loop live inputs (the guest clock continuing from its last
//! logged value) and live outputs (the real console, TAP and disk) after re-applying the
//! writes and re-emitting the packets and console output the primary may not have released,
//! and announcing the guest's MAC with a RARP frame so the bridge learns the new port.
//!
//! Meanwhile [`InboundWatcher`] reads this side's TAP: it drops what arrives while the primary
//! is heard, and once the primary has been silent for half the failure timeout announces the
//! guest's MAC here and keeps what arrives, for the guest to receive first at go-live.
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use logchannel::pair::backup::{BackupPair, BackupStep, InboundWatch, Unreleased, WatchStep};
use logchannel::pair::OutputKind;
use logchannel::{BackupLink, Entry, Input};
use storage::BlockStore;

use super::{arbitrate, FtConfig, NotWon};
use crate::inputs::live::{sleep_until, unix_time_ns, Backends, LiveInputs};
use crate::inputs::replay::EntrySource;
use crate::inputs::InputError;
use crate::outcome::RunOutcome;
use crate::outputs::{LiveOutputs, OutputError, Outputs};
use crate::tap::Tap;
use crate::vm::{LiveIo, Takeover};

/// How long one wait for the next entry lasts before it is retried (the
/// channel reports a dead primary on its own, after the failure timeout).
const RECV_SLICE: Duration = Duration::from_millis(100);
/// The most bytes of unreleased outputs of one kind the backup keeps to re-emit at go-live.
const UNRELEASED_MAX_BYTES: u64 = 64 << 20;
/// The last packets the primary reported releasing that the backup keeps to re-emit too: a
/// host that crashes loses what its NIC had not sent yet (TCP absorbs the duplicates).
const RELEASED_PACKETS_KEPT_BYTES: u64 = 256 << 10;
/// The most bytes of inbound frames the backup keeps for go-live while the primary is silent.
const INBOUND_MAX_BYTES: u64 = 16 << 20;
/// How often the inbound watcher looks at the primary's silence when no frame arrives.
const WATCH_TICK: Duration = Duration::from_millis(5);

/// What the backup is doing, readable from any thread (for SIGUSR1).
#[derive(Default)]
pub struct BackupStatus {
    /// The sequence number of the last entry handed to the replay.
    replayed_seq: AtomicU64,
    /// Set at go-live.
    live: AtomicBool,
}

impl BackupStatus {
    /// Role, generation, how far the log was received and replayed, as JSON.
    pub fn to_json(&self, link: &BackupLink, generation: u64) -> serde_json::Value {
        let role = if self.live.load(Ordering::SeqCst) { "live" } else { "backup" };
        let (received, replayed) = (link.acked_seq(), self.replayed_seq.load(Ordering::SeqCst));
        serde_json::json!({
            "role": role,
            "generation": generation,
            "received_seq": received,
            "replayed_seq": replayed,
            "lag_entries": received.saturating_sub(replayed),
        })
    }
}

/// What the replay, the outputs and the takeover share on the vCPU thread.
struct Replayed {
    core: BackupPair,
    /// The last guest clock value the log gave: the live clock continues from it.
    last_monotonic_ns: u64,
    packets: Unreleased<Vec<u8>>,
    console: Unreleased<Vec<u8>>,
    disk_writes: Unreleased<(u64, Vec<u8>)>,
}

/// The log channel as an entry source.
pub struct LinkSource {
    link: Arc<BackupLink>,
    status: Arc<BackupStatus>,
    replayed: Rc<RefCell<Replayed>>,
}

impl EntrySource for LinkSource {
    fn next_entry(&mut self, wait: bool) -> Result<Option<(u64, Entry, u64)>, InputError> {
        loop {
            let slice = if wait { RECV_SLICE } else { Duration::ZERO };
            let received = match self.link.recv_frame(slice) {
                Ok(received) => received,
                Err(error) => {
                    if !error.is_peer_failure() {
                        // A corrupt or out-of-order frame is never replayed; the channel is
                        // unusable, which for the pair is the same as losing the primary.
                        eprintln!("ftvm: the log channel failed: {error}");
                    }
                    return Ok(None);
                }
            };
            let Some(received) = received else {
                if wait {
                    continue;
                }
                return Ok(None);
            };
            let mut replayed = self.replayed.borrow_mut();
            if !replayed.core.note_entry(&received.entry) {
                continue;
            }
            if let Entry::Input(input) = &received.entry {
                if let Input::MonotonicNs(value) = input.input {
                    replayed.last_monotonic_ns = replayed.last_monotonic_ns.max(value);
                }
            }
            self.status.replayed_seq.store(received.seq, Ordering::SeqCst);
            return Ok(Some((received.seq, received.entry, received.frame_len_bytes)));
        }
    }

    fn ended_by_writer_loss(&self) -> bool {
        self.link.error().is_some()
    }
}

/// The backup's outputs: nothing leaves; what the primary may not have released yet is kept
/// for go-live. Writes to this side's own disk image (`mode=own`) go to it as they are
/// replayed: the image follows the guest, as the primary's does.
pub struct BackupOutputs {
    replayed: Rc<RefCell<Replayed>>,
    own_disk: Option<Arc<BlockStore>>,
}

impl Outputs for BackupOutputs {
    fn console(&mut self, bytes: &[u8]) {
        let replayed = &mut *self.replayed.borrow_mut();
        let released = replayed.core.released(OutputKind::Console);
        replayed.console.push(bytes.to_vec(), bytes.len() as u64, released);
    }

    fn transmit(&mut self, frame: &[u8]) {
        let replayed = &mut *self.replayed.borrow_mut();
        let released = replayed.core.released(OutputKind::Packet);
        replayed.packets.push(frame.to_vec(), frame.len() as u64, released);
    }

    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        if let Some(disk) = &self.own_disk {
            return disk.write_at(offset, data).map_err(OutputError::from);
        }
        let replayed = &mut *self.replayed.borrow_mut();
        let released = replayed.core.released(OutputKind::DiskWrite);
        replayed.disk_writes.push((offset, data.to_vec()), data.len() as u64, released);
        Ok(())
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        match &self.own_disk {
            Some(disk) => disk.flush().map_err(OutputError::from),
            None => Ok(()),
        }
    }
}

/// The watch over this side's TAP and whether the takeover has taken it over.
struct Watched {
    watch: InboundWatch<Vec<u8>>,
    /// Set at go-live (or when the run ends): the watcher stops reading the TAP.
    handed_over: bool,
}

/// The thread that reads this side's TAP while it is a backup ([`InboundWatch`]).
pub struct InboundWatcher {
    watched: Arc<Mutex<Watched>>,
    thread: Option<JoinHandle<()>>,
}

impl InboundWatcher {
    /// Starts watching `tap` for the guest whose MAC is `mac`, judging the primary's silence
    /// on `link` with `config`'s capture delay.
    fn start(
        tap: Arc<Tap>,
        mac: [u8; 6],
        link: Arc<BackupLink>,
        config: &FtConfig,
        generation: u64,
    ) -> Self {
        let capture_after_ms = config.channel.capture_after_ms();
        let arbiter = Arbiter { config: config.clone(), generation };
        let watched = Arc::new(Mutex::new(Watched {
            watch: InboundWatch::new(capture_after_ms, INBOUND_MAX_BYTES),
            handed_over: false,
        }));
        let thread = {
            let watched = watched.clone();
            std::thread::Builder::new()
                .name("ftvm-inbound".into())
                .spawn(move || watch_inbound(&tap, mac, &link, &watched, &arbiter))
                .expect("spawning the inbound watcher")
        };
        InboundWatcher { watched, thread: Some(thread) }
    }

    /// Stops the watcher; the frames it kept, in arrival order. Frames that arrive from now
    /// on stay in the TAP for the live inputs.
    fn hand_over(&mut self) -> Vec<Vec<u8>> {
        let mut watched = self.watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        watched.handed_over = true;
        let overflowed = watched.watch.overflowed();
        if overflowed > 0 {
            eprintln!(
                "ftvm: warning: {overflowed} inbound frames arrived while {} MiB were kept for \
                 go-live and were dropped (their senders resend them)",
                INBOUND_MAX_BYTES >> 20
            );
        }
        watched.watch.take()
    }
}

impl Drop for InboundWatcher {
    fn drop(&mut self) {
        self.hand_over();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the watcher learns whether the primary already won.
struct Arbiter {
    config: FtConfig,
    generation: u64,
}

impl Arbiter {
    /// Whether the arbiter gave this generation to a side (an error counts as no: a backup
    /// whose primary died must not lose its clients' packets to a slow storage).
    fn decided(&self) -> bool {
        self.config.arbiter.open().holder(self.generation).is_ok_and(|holder| holder.is_some())
    }
}

/// The watcher's loop: looks at the primary's silence and reads what arrived, every
/// [`WATCH_TICK`] or frame, until handed over.
fn watch_inbound(
    tap: &Tap,
    mac: [u8; 6],
    link: &BackupLink,
    watched: &Mutex<Watched>,
    arbiter: &Arbiter,
) {
    let capture_after_ms = arbiter.config.channel.capture_after_ms();
    let announcement = super::mac_announcement(mac);
    loop {
        if let Err(error) = tap.wait_readable(WATCH_TICK) {
            eprintln!(
                "ftvm: warning: waiting on TAP {}: {error}; inbound watch stopped",
                tap.name()
            );
            return;
        }
        let mut watched = watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if watched.handed_over {
            return;
        }
        let silent_for_ns = link.with_core(|channel, now_ns| channel.silent_for_ns(now_ns));
        match watched.watch.tick(silent_for_ns) {
            Some(WatchStep::Announce) if arbiter.decided() => {
                // The primary won while this side still heard nothing: it lives, and keeps
                // its traffic.
                watched.watch.stand_down();
                eprintln!(
                    "ftvm: the primary has been silent for {capture_after_ms} ms but holds \
                     generation {}: its traffic stays with it",
                    arbiter.generation
                );
            }
            Some(WatchStep::Announce) => {
                if let Err(error) = tap.write_packet(&announcement) {
                    eprintln!(
                        "ftvm: warning: announcing the guest's MAC on {}: {error}",
                        tap.name()
                    );
                }
                link.note_announced();
                eprintln!(
                    "ftvm: the primary has been silent for {capture_after_ms} ms: the guest's MAC \
                     is announced here and its inbound frames are kept for go-live, at unix ns {}",
                    unix_time_ns()
                );
            }
            Some(WatchStep::PrimaryBack { dropped }) => eprintln!(
                "ftvm: the primary is heard again: {dropped} inbound frames kept here are dropped \
                 (their senders resend them to the primary)"
            ),
            None => {}
        }
        loop {
            match tap.read_packet() {
                Ok(Some(frame)) => {
                    let len_bytes = frame.len() as u64;
                    watched.watch.arrived(frame, len_bytes);
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!(
                        "ftvm: warning: reading TAP {}: {error}; inbound watch stopped",
                        tap.name()
                    );
                    return;
                }
            }
        }
    }
}

/// Going live: what it needs.
pub struct BackupTakeover {
    config: FtConfig,
    generation: u64,
    link: Arc<BackupLink>,
    /// This host's TAP and disk, opened and checked at start.
    backends: Backends,
    net_mac: Option<[u8; 6]>,
    console: Option<Box<dyn Write + Send>>,
    replayed: Rc<RefCell<Replayed>>,
    status: Arc<BackupStatus>,
    inbound: Option<InboundWatcher>,
    /// Set to the generation at go-live: this side then runs the guest alone.
    running_alone_in: Arc<Mutex<Option<u64>>>,
}

/// This backup's pair: its settings, generation and link.
pub struct BackupPairLink {
    /// Its settings.
    pub config: FtConfig,
    /// The generation it runs in.
    pub generation: u64,
    /// The link to the primary.
    pub link: Arc<BackupLink>,
}

/// The backup's entry source, outputs and takeover, going live on `backends` (this host's
/// attachments, already checked against the primary's devices; `net_mac` the guest's MAC).
pub fn backup_io(
    status: Arc<BackupStatus>,
    pair: BackupPairLink,
    backends: Backends,
    net_mac: Option<[u8; 6]>,
    console: Box<dyn Write + Send>,
    running_alone_in: Arc<Mutex<Option<u64>>>,
) -> (LinkSource, BackupOutputs, BackupTakeover) {
    let BackupPairLink { config, generation, link } = pair;
    let replayed = Rc::new(RefCell::new(Replayed {
        core: BackupPair::new(config.channel.failure_timeout_ms),
        last_monotonic_ns: 0,
        packets: Unreleased::new(UNRELEASED_MAX_BYTES)
            .keeping_released(RELEASED_PACKETS_KEPT_BYTES),
        console: Unreleased::new(UNRELEASED_MAX_BYTES),
        disk_writes: Unreleased::new(UNRELEASED_MAX_BYTES),
    }));
    let source =
        LinkSource { link: link.clone(), status: status.clone(), replayed: replayed.clone() };
    let own_disk = backends.disk.clone().filter(|_| backends.disk_own);
    let outputs = BackupOutputs { replayed: replayed.clone(), own_disk };
    let inbound = match (backends.tap.clone(), net_mac) {
        (Some(tap), Some(mac)) => {
            Some(InboundWatcher::start(tap, mac, link.clone(), &config, generation))
        }
        _ => None,
    };
    let takeover = BackupTakeover {
        config,
        generation,
        link,
        backends,
        net_mac,
        console: Some(console),
        replayed,
        status,
        inbound,
        running_alone_in,
    };
    (source, outputs, takeover)
}

/// Where a failover's time went on the backup, in ns since the Unix epoch (printed at
/// go-live for the failover benchmark; 0: did not happen).
#[derive(Default)]
struct Timeline {
    replay_drained: u128,
    lease_end: i128,
    lease_waited: u128,
    arbiter_won: u128,
}

impl BackupTakeover {
    /// Waits out the primary's lease and asks the arbiter, as the core says, until it says
    /// go live; or the outcome that ends the run.
    fn decide(&mut self, timeline: &mut Timeline) -> Result<(), RunOutcome> {
        timeline.replay_drained = unix_time_ns();
        // No wait when the lease has already ended (a silent primary is noticed at its end).
        timeline.lease_waited = timeline.replay_drained;
        let timeout_ns = self.config.channel.failure_timeout_ms.saturating_mul(1_000_000);
        let last_heard_ns = self.link.with_core(|channel, _| channel.last_heard_ns());
        timeline.lease_end = self.link.unix_ns_at(last_heard_ns.saturating_add(timeout_ns));
        loop {
            let step = {
                let mut replayed = self.replayed.borrow_mut();
                self.link.with_core(|channel, now_ns| replayed.core.replay_ran_out(channel, now_ns))
            };
            match step {
                BackupStep::WaitUntil(at_ns) => {
                    sleep_until(self.link.instant_at(at_ns)).map_err(|_| RunOutcome::Stopped)?;
                    timeline.lease_waited = unix_time_ns();
                }
                BackupStep::AskArbiter(why) => {
                    let verdict = arbitrate(&self.config, self.generation, "backup", &why);
                    let verdict = match verdict {
                        Ok(()) => Ok(()),
                        Err(NotWon::Stopped) => return Err(RunOutcome::Stopped),
                        Err(NotWon::Lost(reason)) => {
                            eprintln!("ftvm: {reason}");
                            Err(reason)
                        }
                    };
                    self.replayed.borrow_mut().core.arbiter_said(verdict);
                    timeline.arbiter_won = unix_time_ns();
                }
                BackupStep::GoLive => return Ok(()),
                BackupStep::Halt(reason) => return Err(RunOutcome::Halted(reason)),
            }
        }
    }
}

impl Takeover for BackupTakeover {
    fn take_over(&mut self, landmark: u64) -> Result<LiveIo, RunOutcome> {
        let mut timeline = Timeline::default();
        self.decide(&mut timeline)?;
        let backends = std::mem::take(&mut self.backends);
        let inbound = self.inbound.as_mut().map(InboundWatcher::hand_over).unwrap_or_default();
        let console = self.console.take().expect("go-live happens once");
        let mut live = LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone());
        let re_emitting_from_ns = unix_time_ns();
        let replayed = &mut *self.replayed.borrow_mut();
        let core = &replayed.core;
        // What the primary may not have released: its writes first (a reader must find them),
        // then the announcement, then the packets and console output the world may not have
        // seen, in the order the guest produced them.
        let host_error = |error: OutputError| RunOutcome::OutputFailed(error.to_string());
        let writes = replayed.disk_writes.take_after(core.released(OutputKind::DiskWrite));
        let rewritten = writes.len();
        for (offset, data) in writes {
            live.disk_write(offset, &data).map_err(host_error)?;
        }
        if backends.disk.is_some() {
            live.disk_flush().map_err(host_error)?;
        }
        if let (Some(mac), Some(_)) = (self.net_mac, backends.tap.as_ref()) {
            live.transmit(&super::mac_announcement(mac));
        }
        let packets = replayed.packets.take_after(core.released(OutputKind::Packet));
        let console = replayed.console.take_after(core.released(OutputKind::Console));
        let re_emitted = (packets.len(), console.len());
        packets.iter().for_each(|packet| live.transmit(packet));
        console.iter().for_each(|text| live.console(text));
        let dropped = replayed.packets.dropped()
            + replayed.console.dropped()
            + replayed.disk_writes.dropped();
        if dropped > 0 {
            eprintln!(
                "ftvm: warning: {dropped} unreleased outputs were over the {} MiB kept per kind \
                 and are not re-emitted",
                UNRELEASED_MAX_BYTES >> 20
            );
        }
        self.status.live.store(true, Ordering::SeqCst);
        *self.running_alone_in.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(self.generation);
        eprintln!(
            "ftvm: role: backup -> live, generation {}, at landmark {landmark}, replayed through seq {}, {rewritten} unreleased disk writes re-applied, {} packets and {} console writes re-emitted, {} inbound frames kept for the guest, at unix ns {}",
            self.generation,
            self.status.replayed_seq.load(Ordering::SeqCst),
            re_emitted.0,
            re_emitted.1,
            inbound.len(),
            unix_time_ns()
        );
        eprintln!(
            "ftvm: go-live timeline (unix ns): link failed {} replay drained {} lease end {} \
             lease waited {} arbiter won {} re-emitted from {re_emitting_from_ns}",
            self.link.failed_at_unix_ns().unwrap_or(0),
            timeline.replay_drained,
            timeline.lease_end,
            timeline.lease_waited,
            timeline.arbiter_won,
        );
        let inputs = LiveInputs::continuing_at(replayed.last_monotonic_ns + 1, backends)
            .receiving_first(inbound)
            .noting_first_frame();
        Ok((Box::new(inputs), Box::new(live.noting_first_frame())))
    }
}
