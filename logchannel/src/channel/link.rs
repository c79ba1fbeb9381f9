//! The log channel over a `TcpStream`: the sans-IO cores run by a few threads.
//!
//! Primary: `send` frames the entry into the core's outbox under a mutex and wakes a writer
//! thread, which writes whatever has accumulated in one `write_all` (so bursts are batched); a
//! reader thread takes acks, sends heartbeats and checks the backup's liveness, waking every
//! tick (a read timeout) to do so. Backup: one reader thread decodes, queues and acks, and stops
//! reading while `max_received_bytes` wait in its queue (backpressure that reaches the primary's
//! lag bound through TCP). The clock of both is an `Instant` taken when the link starts.
//!
//! When a link fails, its socket is shut down, which ends every blocked read or write, and
//! every waiter is woken with the error. Dropping a link shuts it down and joins its threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::handshake::{self, Credentials, Devices, HandshakeError, Hello};
use super::sans_io::{BackupCore, PrimaryCore, Received, Sent};
use super::session::SessionKey;
use super::{ChannelConfig, ChannelError, Peer};
use crate::entry::Entry;

/// How long a primary waits before trying a refusing backup again.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// The shortest read timeout a backup's reader sets (a zero timeout would mean none).
const MIN_READ_TIMEOUT: Duration = Duration::from_micros(100);

/// How much a reader asks its socket for at a time: a few of the log's largest common entries (a
/// 64 KiB received segment), so that a backup that fell behind by several takes them, and acks
/// them, in one read.
const READ_CHUNK_LEN_BYTES: usize = 256 * 1024;

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Wall-clock ns since the Unix epoch, for timestamps other processes compare with.
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

fn disconnected(peer: Peer, what: &str, error: &std::io::Error) -> ChannelError {
    ChannelError::Disconnected { peer, detail: format!("{what}: {error}") }
}

/// A read that ended because the tick (the read timeout) passed, or a signal: not a failure.
fn is_tick(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// Locks, ignoring poisoning: the state is a core whose invariants hold between calls, and a
/// panicking thread already reports itself.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` for at most `timeout`, ignoring poisoning like [`lock`].
fn wait<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// Counters of the primary's end, for `--stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryStats {
    /// The highest sequence number sent.
    pub sent_seq: u64,
    /// The highest sequence number the backup acknowledged.
    pub acked_seq: u64,
    /// Entries sent and not acknowledged.
    pub unacked_entries: u64,
    /// Bytes sent and not acknowledged.
    pub unacked_bytes: u64,
    /// Age of the oldest unacknowledged entry.
    pub unacked_age_ms: u64,
    /// The highest sequence number the backup replayed.
    pub replayed_seq: u64,
    /// Bytes sent and not yet replayed (the replay lag in bytes).
    pub unreplayed_bytes: u64,
    /// Age of the oldest entry not yet replayed (the replay lag in time).
    pub unreplayed_age_ms: u64,
    /// How long the backup would take to replay what it has not, at its recent speed.
    pub replay_catch_up_ms: u64,
    /// Bytes of log sent since the start.
    pub sent_bytes: u64,
    /// Heartbeats sent since the start.
    pub heartbeats_sent: u64,
}

struct PrimaryState {
    core: PrimaryCore,
    /// Bytes taken by the writer and not yet written.
    writing: bool,
    /// Callers of `flush` waiting for the writer: it wakes them only when there are some (the
    /// ack waiters are not woken by every write).
    flush_waiters: usize,
    closing: bool,
}

struct PrimaryShared {
    state: Mutex<PrimaryState>,
    /// The landmark through which the guest's exits are complete, set by the VMM at every
    /// exit without taking the lock; the reader hands it to the core before each heartbeat.
    exits_complete_through: AtomicU64,
    /// Acks arrived, or the link failed.
    changed: Condvar,
    /// The writer wrote what it had taken, or the link failed.
    written: Condvar,
    /// The outbox has bytes, or the link is closing.
    output_ready: Condvar,
    epoch: Instant,
    tick: Duration,
}

impl PrimaryShared {
    /// Records a failure, shuts the socket so blocked I/O ends, and wakes everyone.
    fn fail(&self, stream: &TcpStream, error: ChannelError) {
        let mut state = lock(&self.state);
        if !state.closing {
            state.core.fail(error);
        }
        drop(state);
        let _ = stream.shutdown(Shutdown::Both);
        self.changed.notify_all();
        self.written.notify_all();
        self.output_ready.notify_all();
    }
}

/// The primary's end of the log channel.
pub struct PrimaryLink {
    shared: Arc<PrimaryShared>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl PrimaryLink {
    /// Connects to the backup listening at `addr`, retrying for up to `connect_timeout_ms`
    /// while it refuses (a backup that is still starting), and opens an authenticated session
    /// with it ([`handshake`]) as a primary of `credentials`' pair whose guest has `devices`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        config: &ChannelConfig,
        credentials: &Credentials,
        devices: Devices,
    ) -> Result<Self, ChannelError> {
        let mut stream = Self::connect_tcp(addr, config)?;
        let peer = stream.peer_addr().map_or("the backup".into(), |addr| addr.to_string());
        let timeout = Duration::from_millis(config.handshake_timeout_ms);
        let session = handshake::primary(&mut stream, credentials, devices, timeout)
            .map_err(|error| handshake_error(&peer, error))?;
        Self::from_stream(stream, config, &session)
    }

    fn connect_tcp(
        addr: impl ToSocketAddrs,
        config: &ChannelConfig,
    ) -> Result<TcpStream, ChannelError> {
        let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms.max(1));
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ChannelError::Connect {
                addr: "(unresolved)".into(),
                source: Arc::new(source),
            })?
            .collect();
        let mut last_error = std::io::Error::new(ErrorKind::InvalidInput, "no address to try");
        loop {
            for addr in &addrs {
                let remaining = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                match TcpStream::connect_timeout(addr, remaining) {
                    Ok(stream) => return Ok(stream),
                    Err(error) => last_error = error,
                }
            }
            if Instant::now() >= deadline || last_error.kind() != ErrorKind::ConnectionRefused {
                break;
            }
            thread::sleep(CONNECT_RETRY);
        }
        let addr = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Err(ChannelError::Connect { addr, source: Arc::new(last_error) })
    }

    /// Runs the primary's end of `session` over an established connection.
    pub fn from_stream(
        stream: TcpStream,
        config: &ChannelConfig,
        session: &SessionKey,
    ) -> Result<Self, ChannelError> {
        let setup_error = |source| ChannelError::Connect {
            addr: stream.peer_addr().map_or("(unknown)".into(), |addr| addr.to_string()),
            source: Arc::new(source),
        };
        let tick = Duration::from_millis(config.tick_ms());
        stream.set_nodelay(true).map_err(setup_error)?;
        stream.set_read_timeout(Some(tick)).map_err(setup_error)?;
        stream.set_write_timeout(None).map_err(setup_error)?;
        let peer_addr = stream.peer_addr().map_err(setup_error)?;
        let (reader_stream, writer_stream) =
            (stream.try_clone().map_err(setup_error)?, stream.try_clone().map_err(setup_error)?);
        let epoch = Instant::now();
        let shared = Arc::new(PrimaryShared {
            state: Mutex::new(PrimaryState {
                core: PrimaryCore::new(config, 0, session),
                writing: false,
                flush_waiters: 0,
                closing: false,
            }),
            exits_complete_through: AtomicU64::new(0),
            changed: Condvar::new(),
            written: Condvar::new(),
            output_ready: Condvar::new(),
            epoch,
            tick,
        });
        let threads = vec![
            spawn("ftvm-log-ack-reader", {
                let shared = Arc::clone(&shared);
                move || primary_reader(&shared, reader_stream)
            }),
            spawn("ftvm-log-writer", {
                let shared = Arc::clone(&shared);
                move || primary_writer(&shared, writer_stream)
            }),
        ];
        Ok(PrimaryLink { shared, stream, peer_addr, threads })
    }

    /// Queues `entry` for the backup and returns its sequence number; never blocks on the
    /// network. Fails once the link has failed.
    pub fn send(&self, entry: &Entry) -> Result<Sent, ChannelError> {
        let mut state = lock(&self.shared.state);
        let sent = state.core.send(entry, now_ns(self.shared.epoch))?;
        drop(state);
        self.shared.output_ready.notify_one();
        Ok(sent)
    }

    /// The highest sequence number the backup acknowledged (0: none).
    pub fn acked_seq(&self) -> u64 {
        lock(&self.shared.state).core.acked_seq()
    }

    /// Says every exit of the guest through `landmark` is complete (its entries were all
    /// sent); cheap enough for every exit. Heartbeats carry it.
    pub fn note_exits_complete(&self, landmark: u64) {
        self.shared.exits_complete_through.fetch_max(landmark, Ordering::SeqCst);
    }

    /// Runs `decide` on the core under the link's lock, with the link's clock, and wakes the
    /// writer for whatever it framed: the pair's decisions read and feed the channel in one
    /// step.
    pub fn with_core<R>(&self, decide: impl FnOnce(&mut PrimaryCore, u64) -> R) -> R {
        let mut state = lock(&self.shared.state);
        let result = decide(&mut state.core, now_ns(self.shared.epoch));
        let has_output = state.core.has_output();
        drop(state);
        if has_output {
            self.shared.output_ready.notify_one();
        }
        result
    }

    /// The lag bound: blocks while more than `max_lag_bytes` are sent and not yet replayed by
    /// the backup, or the backup would need more than `max_lag_ms` to replay what it has not
    /// ([`PrimaryCore::replay_catch_up_ns`]); so a backup going live has about the bound left
    /// to replay. Returns the link's failure if
    /// it fails meanwhile (a backup that stops acking entirely is presumed dead after the
    /// failure timeout, so this does not block forever).
    pub fn wait_for_room(&self, max_lag_bytes: u64, max_lag_ms: u64) -> Result<(), ChannelError> {
        self.wait_for_room_after(max_lag_bytes, max_lag_ms, None)
    }

    /// Like [`Self::wait_for_room`]; if it has to wait, sends `before_waiting` first (a
    /// progress entry that lets the backup replay up to where the guest waits).
    pub fn wait_for_room_after(
        &self,
        max_lag_bytes: u64,
        max_lag_ms: u64,
        before_waiting: Option<&Entry>,
    ) -> Result<(), ChannelError> {
        let mut before_waiting = before_waiting;
        let max_lag_ns = max_lag_ms.saturating_mul(1_000_000);
        let mut state = lock(&self.shared.state);
        let mut blocked_since_ns = None;
        loop {
            let now_ns = now_ns(self.shared.epoch);
            let room = state.core.unreplayed_bytes() <= max_lag_bytes
                && state.core.replay_catch_up_ns(now_ns) <= max_lag_ns;
            if let Some(error) = state.core.error() {
                return Err(error.clone());
            }
            if room {
                if let Some(since_ns) = blocked_since_ns {
                    // Time the guest waited here is no work for the backup to replay.
                    state.core.add_blocked_ns(now_ns.saturating_sub(since_ns));
                }
                return Ok(());
            }
            blocked_since_ns.get_or_insert(now_ns);
            if let Some(entry) = before_waiting.take() {
                state.core.send(entry, now_ns)?;
                self.shared.output_ready.notify_one();
            }
            state = wait(&self.shared.changed, state, self.shared.tick);
        }
    }

    /// The output rule and the fence: waits until the backup has acknowledged `seq` and the
    /// lease is valid ([`PrimaryCore::lease_valid`]), so an output tied to `seq` may be released
    /// now. `Ok(true)` then; `Ok(false)` if `deadline` passes first; the link's failure if it
    /// fails first (the caller must then win the arbiter before it releases anything). Call it
    /// right before the write it allows, on the thread that writes.
    pub fn wait_releasable(&self, seq: u64, deadline: Instant) -> Result<bool, ChannelError> {
        let mut state = lock(&self.shared.state);
        loop {
            if state.core.acked_seq() >= seq && state.core.lease_valid(now_ns(self.shared.epoch)) {
                return Ok(true);
            }
            if let Some(error) = state.core.error() {
                return Err(error.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Woken by acks; the tick bounds the wait when only time changes the answer.
            state = wait(&self.shared.changed, state, (deadline - now).min(self.shared.tick));
        }
    }

    /// Waits until the backup acknowledges an entry after `seen_seq`, the link fails, or
    /// `deadline` passes: how a thread that has nothing releasable yet learns that entries sent
    /// after it looked were acknowledged, woken by acks alone.
    pub fn wait_for_ack_after(&self, seen_seq: u64, deadline: Instant) {
        let mut state = lock(&self.shared.state);
        while state.core.acked_seq() <= seen_seq && state.core.error().is_none() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = wait(&self.shared.changed, state, deadline - now);
        }
    }

    /// Waits until everything sent so far has been handed to the socket. `Ok(false)` if
    /// `deadline` passes first.
    pub fn flush(&self, deadline: Instant) -> Result<bool, ChannelError> {
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(error) = state.core.error() {
                return Err(error.clone());
            }
            if !state.core.has_output() && !state.writing {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            state.flush_waiters += 1;
            state = wait(&self.shared.written, state, deadline - now);
            state.flush_waiters -= 1;
        }
    }

    /// False once the link has failed (the backup went silent, the connection ended, bad data).
    pub fn peer_alive(&self) -> bool {
        lock(&self.shared.state).core.error().is_none()
    }

    /// The failure, if the link has failed.
    pub fn error(&self) -> Option<ChannelError> {
        lock(&self.shared.state).core.error().cloned()
    }

    /// Where the backup is.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Counters for reports.
    pub fn stats(&self) -> PrimaryStats {
        let state = lock(&self.shared.state);
        let core = &state.core;
        PrimaryStats {
            sent_seq: core.last_seq(),
            acked_seq: core.acked_seq(),
            unacked_entries: core.unacked_entries(),
            unacked_bytes: core.unacked_bytes(),
            unacked_age_ms: core.unacked_age_ns(now_ns(self.shared.epoch)) / 1_000_000,
            replayed_seq: core.replayed_seq(),
            unreplayed_bytes: core.unreplayed_bytes(),
            unreplayed_age_ms: core.unreplayed_age_ns(now_ns(self.shared.epoch)) / 1_000_000,
            replay_catch_up_ms: core.replay_catch_up_ns(now_ns(self.shared.epoch)) / 1_000_000,
            sent_bytes: core.sent_bytes(),
            heartbeats_sent: core.heartbeats_sent(),
        }
    }
}

impl Drop for PrimaryLink {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.closing = true;
        state.core.fail(ChannelError::Closed);
        drop(state);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.shared.changed.notify_all();
        self.shared.written.notify_all();
        self.shared.output_ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    thread::Builder::new().name(name.into()).spawn(body).expect("cannot spawn a log channel thread")
}

fn primary_reader(shared: &PrimaryShared, mut stream: TcpStream) {
    let mut chunk = vec![0u8; READ_CHUNK_LEN_BYTES];
    loop {
        let read = stream.read(&mut chunk);
        let mut state = lock(&shared.state);
        if state.closing || state.core.error().is_some() {
            return;
        }
        let now_ns = now_ns(shared.epoch);
        let outcome = match read {
            Ok(0) => Err(ChannelError::Disconnected {
                peer: Peer::Backup,
                detail: "the backup closed the connection".into(),
            }),
            Ok(len_bytes) => state.core.handle_input(&chunk[..len_bytes], now_ns).map(drop),
            Err(error) if is_tick(&error) => Ok(()),
            Err(error) => Err(disconnected(Peer::Backup, "cannot read from the backup", &error)),
        }
        .and_then(|()| {
            // Read after the lock is taken: every entry of those exits is framed already.
            let complete = shared.exits_complete_through.load(Ordering::SeqCst);
            state.core.note_exits_complete(complete);
            state.core.poll(now_ns)
        });
        let has_output = state.core.has_output();
        drop(state);
        if let Err(error) = outcome {
            shared.fail(&stream, error);
            return;
        }
        if has_output {
            shared.output_ready.notify_one();
        }
        shared.changed.notify_all();
    }
}

fn primary_writer(shared: &PrimaryShared, mut stream: TcpStream) {
    let mut bytes = Vec::new();
    loop {
        let mut state = lock(&shared.state);
        while !state.core.has_output() && !state.closing && state.core.error().is_none() {
            state = wait(&shared.output_ready, state, shared.tick);
        }
        if state.closing || state.core.error().is_some() {
            return;
        }
        state.core.take_output(&mut bytes);
        state.writing = true;
        drop(state);
        let written = stream.write_all(&bytes);
        bytes.clear();
        let mut state = lock(&shared.state);
        state.writing = false;
        let flush_waiters = state.flush_waiters;
        drop(state);
        if let Err(error) = written {
            shared.fail(&stream, disconnected(Peer::Backup, "cannot send to the backup", &error));
            return;
        }
        if flush_waiters > 0 {
            shared.written.notify_all();
        }
    }
}

struct BackupState {
    core: BackupCore,
    closing: bool,
}

struct BackupShared {
    state: Mutex<BackupState>,
    /// Entries arrived, entries were taken, or the link failed.
    changed: Condvar,
    epoch: Instant,
    tick: Duration,
    max_received_bytes: u64,
    /// The failure timeout: the reader's read ends when the primary's silence reaches it.
    failure_timeout: Duration,
    /// When the reader found the link failed (Unix ns; 0 while it has not): the backup's
    /// detection of a lost primary, reported at go-live to show where a failover's time went.
    failed_at_unix_ns: AtomicU64,
}

impl BackupShared {
    /// Records the time the reader found the link failed (the first time only).
    fn note_failure(&self) {
        let _ = self.failed_at_unix_ns.compare_exchange(
            0,
            unix_ns(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// The backup's end of the log channel.
pub struct BackupLink {
    shared: Arc<BackupShared>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    reader: Option<JoinHandle<()>>,
}

impl BackupLink {
    /// Runs the backup's end of `session` over an established connection.
    pub fn from_stream(
        stream: TcpStream,
        config: &ChannelConfig,
        session: &SessionKey,
    ) -> Result<Self, ChannelError> {
        let setup_error = |source| ChannelError::Accept {
            addr: stream.local_addr().map_or("(unknown)".into(), |addr| addr.to_string()),
            source: Arc::new(source),
        };
        let tick = Duration::from_millis(config.tick_ms());
        stream.set_nodelay(true).map_err(setup_error)?;
        stream.set_read_timeout(Some(tick)).map_err(setup_error)?;
        // Acks are tiny: a send that cannot complete within the failure timeout means the
        // primary stopped reading.
        let write_timeout = Duration::from_millis(config.failure_timeout_ms.max(1));
        stream.set_write_timeout(Some(write_timeout)).map_err(setup_error)?;
        let peer_addr = stream.peer_addr().map_err(setup_error)?;
        let reader_stream = stream.try_clone().map_err(setup_error)?;
        let shared = Arc::new(BackupShared {
            state: Mutex::new(BackupState {
                core: BackupCore::new(config, 0, session),
                closing: false,
            }),
            changed: Condvar::new(),
            epoch: Instant::now(),
            tick,
            max_received_bytes: config.max_received_bytes.max(1),
            failure_timeout: Duration::from_millis(config.failure_timeout_ms),
            failed_at_unix_ns: AtomicU64::new(0),
        });
        let reader = spawn("ftvm-log-reader", {
            let shared = Arc::clone(&shared);
            move || backup_reader(&shared, reader_stream)
        });
        Ok(BackupLink { shared, stream, peer_addr, reader: Some(reader) })
    }

    /// The next entry, waiting up to `timeout` for it: `Ok(None)` if none came in time. Entries
    /// received before a failure are all delivered before the failure is reported; a failure
    /// where [`ChannelError::is_peer_failure`] holds means the primary is presumed dead.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Entry>, ChannelError> {
        Ok(self.recv_frame(timeout)?.map(|received| received.entry))
    }

    /// Like [`Self::recv`], with the sequence number and frame length (the shape of the VMM's
    /// entry source).
    pub fn recv_frame(&self, timeout: Duration) -> Result<Option<Received>, ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(received) = state.core.next_entry() {
                drop(state);
                self.shared.changed.notify_all();
                return Ok(Some(received));
            }
            if let Some(error) = state.core.error() {
                return Err(error.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = wait(&self.shared.changed, state, deadline - now);
        }
    }

    /// The highest contiguous sequence number received.
    pub fn acked_seq(&self) -> u64 {
        lock(&self.shared.state).core.acked_seq()
    }

    /// Runs `decide` on the core under the link's lock, with the link's clock: the pair's
    /// decisions read the channel in one step.
    pub fn with_core<R>(&self, decide: impl FnOnce(&BackupCore, u64) -> R) -> R {
        let state = lock(&self.shared.state);
        decide(&state.core, now_ns(self.shared.epoch))
    }

    /// The instant at `at_ns` on the link's clock (the one [`Self::with_core`] gives).
    pub fn instant_at(&self, at_ns: u64) -> Instant {
        self.shared.epoch + Duration::from_nanos(at_ns)
    }

    /// The time `at_ns` on the link's clock in ns since the Unix epoch (for timelines other
    /// processes read).
    pub fn unix_ns_at(&self, at_ns: u64) -> i128 {
        let (at, now, now_unix_ns) = (self.instant_at(at_ns), Instant::now(), unix_ns());
        now_unix_ns as i128 + at.saturating_duration_since(now).as_nanos() as i128
            - now.saturating_duration_since(at).as_nanos() as i128
    }

    /// This side announced the guest's MAC: its next ack says so ([`BackupCore::note_announced`]).
    pub fn note_announced(&self) {
        lock(&self.shared.state).core.note_announced();
    }

    /// False once the link has failed.
    pub fn peer_alive(&self) -> bool {
        lock(&self.shared.state).core.error().is_none()
    }

    /// The failure, if the link has failed.
    pub fn error(&self) -> Option<ChannelError> {
        lock(&self.shared.state).core.error().cloned()
    }

    /// When the link's reader found it failed (silence past the failure timeout, the
    /// connection's end or an error), in ns since the Unix epoch; None while it has not.
    pub fn failed_at_unix_ns(&self) -> Option<u64> {
        Some(self.shared.failed_at_unix_ns.load(Ordering::SeqCst)).filter(|ns| *ns != 0)
    }

    /// Where the primary is.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }
}

impl Drop for BackupLink {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.closing = true;
        state.core.fail(ChannelError::Closed);
        drop(state);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.shared.changed.notify_all();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn backup_reader(shared: &BackupShared, mut stream: TcpStream) {
    let mut chunk = vec![0u8; READ_CHUNK_LEN_BYTES];
    let mut acks = Vec::new();
    let mut read_timeout = shared.tick;
    loop {
        // Backpressure: while the queue is full, only heartbeats go out.
        let mut state = lock(&shared.state);
        loop {
            if state.closing || state.core.error().is_some() {
                return;
            }
            let full = state.core.queued_bytes() >= shared.max_received_bytes;
            let now_ns = now_ns(shared.epoch);
            state.core.set_paused(full, now_ns);
            if !full {
                break;
            }
            // Cannot fail while paused: silence is not checked.
            let _ = state.core.poll(now_ns);
            state.core.take_output(&mut acks);
            if !acks.is_empty() {
                drop(state);
                if let Err(error) = stream.write_all(&acks) {
                    return backup_fail(shared, &stream, &error);
                }
                acks.clear();
                state = lock(&shared.state);
                state.core.acks_sent();
            }
            state = wait(&shared.changed, state, shared.tick);
        }
        // The read ends when the primary's silence would pass the failure timeout, not up to a
        // tick after: the backup's detection of a silent primary, and so its go-live, is not
        // rounded up to the tick. (Set only when it differs: a streaming primary keeps the
        // deadline far off and costs no extra call.)
        let silent_after_ns = (state.core.last_heard_ns()
            + shared.failure_timeout.as_nanos() as u64)
            .saturating_sub(now_ns(shared.epoch))
            + 1;
        drop(state);
        let wanted = Duration::from_nanos(silent_after_ns).clamp(MIN_READ_TIMEOUT, shared.tick);
        if wanted != read_timeout && stream.set_read_timeout(Some(wanted)).is_ok() {
            read_timeout = wanted;
        }

        let read = stream.read(&mut chunk);
        let mut state = lock(&shared.state);
        if state.closing {
            return;
        }
        let now_ns = now_ns(shared.epoch);
        let outcome = match read {
            Ok(0) => Err(state.core.handle_eof()),
            Ok(len_bytes) => state.core.handle_input(&chunk[..len_bytes], now_ns).map(drop),
            Err(error) if is_tick(&error) => Ok(()),
            Err(error) => Err(state.core.fail(disconnected(
                Peer::Primary,
                "cannot read from the primary",
                &error,
            ))),
        }
        .and_then(|()| state.core.poll(now_ns));
        // Acks of what was received go out even when a later frame was bad, and before the
        // entries they ack can be taken by `recv`.
        state.core.take_output(&mut acks);
        drop(state);
        if !acks.is_empty() {
            if let Err(error) = stream.write_all(&acks) {
                return backup_fail(shared, &stream, &error);
            }
            acks.clear();
        }
        lock(&shared.state).core.acks_sent();
        shared.changed.notify_all();
        if outcome.is_err() {
            shared.note_failure();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn backup_fail(shared: &BackupShared, stream: &TcpStream, error: &std::io::Error) {
    shared.note_failure();
    let mut state = lock(&shared.state);
    if !state.closing {
        state.core.fail(disconnected(Peer::Primary, "cannot send acks to the primary", error));
    }
    drop(state);
    let _ = stream.shutdown(Shutdown::Both);
    shared.changed.notify_all();
}

fn handshake_error(peer: &str, error: HandshakeError) -> ChannelError {
    match error {
        HandshakeError::Refused { reason, .. } => {
            ChannelError::Refused { addr: peer.into(), reason }
        }
        HandshakeError::Peer(detail) => ChannelError::Handshake { addr: peer.into(), detail },
    }
}

/// How many handshakes the backup runs at once; more connections are refused at once, so a
/// flood of strangers cannot exhaust threads or memory while the real primary still gets in.
const MAX_CONCURRENT_HANDSHAKES: usize = 8;

/// How long the acceptor rests after an accept error (EMFILE and the like).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A primary that completed the handshake, with its session.
pub struct AcceptedPrimary {
    /// The connection.
    pub stream: TcpStream,
    /// Where it comes from.
    pub peer_addr: SocketAddr,
    /// What it said of itself (pair, generation, devices).
    pub hello: Hello,
    /// The session both sides derived.
    pub session: SessionKey,
}

/// Judges a primary's hello: `Err` carries the reason it is refused.
type HelloCheck = dyn Fn(&Hello) -> Result<(), String> + Send + Sync;

/// What the backup's listener needs to judge a connection.
struct Gate {
    config: ChannelConfig,
    /// The credentials to prove, as they stand at each handshake.
    credentials: Box<dyn Fn() -> Credentials + Send + Sync>,
    /// Judges a primary's hello against this side's attachments.
    check: Box<HelloCheck>,
    /// Says what happened to each refused connection (the caller's log).
    report: Box<dyn Fn(String) + Send + Sync>,
    /// Set once a primary has been accepted: every later connection is refused.
    paired: Mutex<Option<SocketAddr>>,
    handshakes: AtomicUsize,
    stop: AtomicBool,
}

/// The backup's listening end: accepts connections on a thread of its own, runs each one's
/// handshake on a thread of its own (so a stranger that says nothing delays no one), hands out
/// the first primary that proves the pair's key and matches, and refuses (and reports) every
/// other connection, before and after, for as long as it lives.
pub struct BackupListener {
    accepted: mpsc::Receiver<AcceptedPrimary>,
    gate: Arc<Gate>,
    local_addr: Option<SocketAddr>,
    acceptor: Option<JoinHandle<()>>,
}

impl BackupListener {
    /// Starts accepting on `listener`. `check` judges each authenticated primary's hello;
    /// `report` receives one line for every connection refused (naming the peer and why).
    pub fn start(
        listener: TcpListener,
        config: &ChannelConfig,
        credentials: &Credentials,
        check: impl Fn(&Hello) -> Result<(), String> + Send + Sync + 'static,
        report: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<Self, ChannelError> {
        let credentials = credentials.clone();
        Self::start_with(listener, config, move || credentials.clone(), check, report)
    }

    /// [`Self::start`] with the credentials `credentials()` gives at each handshake (a spare's
    /// generation is the one the side adding it moved the pair to).
    pub fn start_with(
        listener: TcpListener,
        config: &ChannelConfig,
        credentials: impl Fn() -> Credentials + Send + Sync + 'static,
        check: impl Fn(&Hello) -> Result<(), String> + Send + Sync + 'static,
        report: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<Self, ChannelError> {
        let local_addr = listener.local_addr().ok();
        let gate = Arc::new(Gate {
            config: config.clone(),
            credentials: Box::new(credentials),
            check: Box::new(check),
            report: Box::new(report),
            paired: Mutex::new(None),
            handshakes: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let (sender, accepted) = mpsc::channel();
        let acceptor = spawn("ftvm-log-acceptor", {
            let gate = Arc::clone(&gate);
            move || accept_loop(&listener, &gate, &sender)
        });
        Ok(BackupListener { accepted, gate, local_addr, acceptor: Some(acceptor) })
    }

    /// The first accepted primary, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<AcceptedPrimary> {
        self.accepted.recv_timeout(timeout).ok()
    }
}

impl Drop for BackupListener {
    fn drop(&mut self) {
        self.gate.stop.store(true, Ordering::SeqCst);
        // The acceptor blocks in accept(2): a connection of our own wakes it to see the flag.
        let woken = self.local_addr.is_some_and(|mut addr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        if let Some(acceptor) = self.acceptor.take() {
            if woken {
                let _ = acceptor.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, gate: &Arc<Gate>, sender: &mpsc::Sender<AcceptedPrimary>) {
    loop {
        let accepted = listener.accept();
        if gate.stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer_addr) = match accepted {
            Ok(connection) => connection,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                // EMFILE and the like: say so, and keep serving once resources come back.
                (gate.report)(format!("cannot accept a connection: {error}"));
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        let refuse = |why: String| {
            (gate.report)(format!("refused a connection from {peer_addr}: {why}"));
            let _ = stream.shutdown(Shutdown::Both);
        };
        if let Some(primary) = *lock(&gate.paired) {
            refuse(format!("this backup is already paired with its primary at {primary}"));
            continue;
        }
        if gate.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_HANDSHAKES {
            gate.handshakes.fetch_sub(1, Ordering::SeqCst);
            refuse(format!("{MAX_CONCURRENT_HANDSHAKES} handshakes are already under way"));
            continue;
        }
        let (gate, sender) = (Arc::clone(gate), sender.clone());
        spawn("ftvm-log-handshake", move || {
            let outcome = handshake_one(stream, peer_addr, &gate);
            gate.handshakes.fetch_sub(1, Ordering::SeqCst);
            match outcome {
                Ok(accepted) => {
                    let _ = sender.send(accepted);
                }
                Err(why) => (gate.report)(format!("refused a connection from {peer_addr}: {why}")),
            }
        });
    }
}

fn handshake_one(
    mut stream: TcpStream,
    peer_addr: SocketAddr,
    gate: &Gate,
) -> Result<AcceptedPrimary, HandshakeError> {
    let timeout = Duration::from_millis(gate.config.handshake_timeout_ms);
    let credentials = (gate.credentials)();
    let proven = handshake::backup(&mut stream, &credentials, &gate.check, timeout);
    let proven = proven.inspect_err(|_| {
        let _ = stream.shutdown(Shutdown::Both);
    })?;
    // First proven primary wins; decided under the lock so two can never both be accepted.
    let mut paired = lock(&gate.paired);
    if let Some(primary) = *paired {
        let reason = format!("this backup is already paired with its primary at {primary}");
        let error = proven.refuse(&mut stream, reason);
        let _ = stream.shutdown(Shutdown::Both);
        return Err(error);
    }
    let (hello, session) = proven.accept(&mut stream)?;
    *paired = Some(peer_addr);
    Ok(AcceptedPrimary { stream, peer_addr, hello, session })
}
