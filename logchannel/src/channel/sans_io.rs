//! The sans-IO cores of the log channel: all of its state and rules, none of its I/O.
//!
//! Each core is fed the bytes read from the peer and the current time in ns (any monotonic
//! clock, only differences matter), and accumulates the bytes to send in an outbox the caller
//! drains with `take_output`. Failures are sticky: once a core has reported an error it reports
//! the same error to every later call, since nothing after a failure can be trusted.

use std::collections::VecDeque;
use std::sync::Arc;

use super::session::{Direction, Opener, Sealer, SessionKey};
use super::{heartbeat_entry, BackupMessage, ChannelConfig, ChannelError, LeaseRule, Peer};
use crate::entry::Entry;
use crate::file::FIRST_SEQ;
use crate::frame::{FrameDecoder, FrameEncoder};

const NS_PER_MS: u64 = 1_000_000;

/// The window over which the backup's replay speed is measured.
const REPLAY_SPEED_WINDOW_NS: u64 = 500 * NS_PER_MS;
/// The shortest span of replay progress a speed is computed from.
const REPLAY_SPEED_MIN_SPAN_NS: u64 = 20 * NS_PER_MS;
/// The slowest replay the estimate believes (so one stalled sample cannot block forever).
const MAX_SLOWDOWN: u64 = 100;

/// An entry the primary core framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Its sequence number: wait for the ack of this one before releasing the output it
    /// precedes.
    pub seq: u64,
    /// Bytes its frame takes on the wire.
    pub frame_len_bytes: u64,
}

/// An entry the backup core received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its sequence number.
    pub seq: u64,
    /// The entry.
    pub entry: Entry,
    /// Bytes its frame took on the wire.
    pub frame_len_bytes: u64,
}

/// When each side last heard from and spoke to its peer.
#[derive(Debug)]
struct Liveness {
    peer: Peer,
    last_rx_ns: u64,
    last_tx_ns: u64,
    heartbeat_interval_ns: u64,
    failure_timeout_ns: u64,
}

impl Liveness {
    fn new(peer: Peer, config: &ChannelConfig, now_ns: u64) -> Self {
        Liveness {
            peer,
            last_rx_ns: now_ns,
            last_tx_ns: now_ns,
            heartbeat_interval_ns: config.heartbeat_interval_ms.saturating_mul(NS_PER_MS),
            failure_timeout_ns: config.failure_timeout_ms.saturating_mul(NS_PER_MS),
        }
    }

    /// The error to report if the peer has been silent past the failure timeout.
    fn check_silence(&self, now_ns: u64) -> Result<(), ChannelError> {
        let silent_ns = now_ns.saturating_sub(self.last_rx_ns);
        if silent_ns > self.failure_timeout_ns {
            return Err(ChannelError::PeerSilent {
                peer: self.peer,
                silent_ms: silent_ns / NS_PER_MS,
                failure_timeout_ms: self.failure_timeout_ns / NS_PER_MS,
            });
        }
        Ok(())
    }

    fn heartbeat_due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_tx_ns) >= self.heartbeat_interval_ns
    }

    /// The next time something is due: a heartbeat or the failure timeout.
    fn next_wakeup_ns(&self) -> u64 {
        let heartbeat_ns = self.last_tx_ns.saturating_add(self.heartbeat_interval_ns);
        let timeout_ns = self.last_rx_ns.saturating_add(self.failure_timeout_ns).saturating_add(1);
        heartbeat_ns.min(timeout_ns)
    }
}

/// Records the first error and returns it; later errors are dropped in favour of the first.
fn fail(slot: &mut Option<ChannelError>, error: ChannelError) -> ChannelError {
    slot.get_or_insert(error).clone()
}

fn check(slot: &Option<ChannelError>) -> Result<(), ChannelError> {
    slot.as_ref().map_or(Ok(()), |error| Err(error.clone()))
}

/// A frame sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Stream offset just past its frame.
    end_offset_bytes: u64,
    /// When it was handed to the core.
    sent_ns: u64,
    /// The primary's work clock then (see [`PrimaryCore::add_blocked_ns`]).
    work_ns: u64,
}

/// The primary's end: frames entries, tracks acks and the unacknowledged tail, heartbeats,
/// watches the backup's liveness, and holds the lease that allows releasing output.
///
/// # The lease
///
/// An ack of an entry the primary sent at time T (its own clock, when the entry was handed to
/// the core: never later than the backup received it) proves the backup heard the primary at or
/// after T, and the backup goes live no earlier than the failure timeout after it last heard the
/// primary. So until T + failure timeout - margin the backup cannot be live, and the primary may
/// release output ([`PrimaryCore::lease_valid`]). Heartbeats from the backup do not extend the
/// lease: with the link cut from the primary to the backup only, they still arrive while the
/// backup, hearing nothing, goes live.
#[derive(Debug)]
pub struct PrimaryCore {
    frames: FrameEncoder<Entry>,
    sealer: Sealer,
    opener: Opener,
    acks: FrameDecoder<BackupMessage>,
    outbox: Vec<u8>,
    in_flight: VecDeque<InFlight>,
    /// Frames sent and not yet replayed by the backup (acked or not).
    unreplayed: VecDeque<InFlight>,
    replayed_seq: u64,
    /// Stream offset of the first unreplayed byte.
    replayed_offset_bytes: u64,
    /// (when the replayed position moved, the work clock of the entry it moved to, the time
    /// the backup had work to replay so far), over the last [`REPLAY_SPEED_WINDOW_NS`]: how
    /// fast the backup replays the primary's work while it has some. (Time it waited for the
    /// primary says nothing of its speed: counting it would make a primary the lag bound holds
    /// back see its backup as slow, and hold itself back for ever.)
    replay_marks: VecDeque<(u64, u64, u64)>,
    /// The time the backup had work to replay, summed.
    replay_busy_ns: u64,
    /// Time the primary's guest spent held back by the lag bound: not work to replay.
    blocked_ns: u64,
    /// The work clock of the last entry the backup replayed.
    replayed_work_ns: u64,
    acked_seq: u64,
    /// Stream offset of the first unacknowledged byte.
    acked_offset_bytes: u64,
    progress_landmark: u64,
    heartbeats_sent: u64,
    liveness: Liveness,
    /// Output may be released before this time (0: not yet).
    lease_until_ns: u64,
    /// How long an ack extends the lease past its entry's send time.
    lease_ns: u64,
    /// When the acked sequence number last moved (or the core started).
    last_ack_progress_ns: u64,
    /// What the backup last said: false while its replay is behind and it does not read.
    backup_receiving: bool,
    /// How many times the backup said it announced the guest's MAC.
    backup_announced: u64,
    lease_rule: LeaseRule,
    error: Option<ChannelError>,
}

impl PrimaryCore {
    /// A core for the session `session` whose first entry gets sequence number [`FIRST_SEQ`].
    pub fn new(config: &ChannelConfig, now_ns: u64, session: &SessionKey) -> Self {
        let lease_ms = config.failure_timeout_ms.saturating_sub(config.lease_margin_ms());
        PrimaryCore {
            frames: FrameEncoder::new(FIRST_SEQ, 0),
            sealer: session.sealer(Direction::PrimaryToBackup),
            opener: session.opener(Direction::BackupToPrimary),
            acks: FrameDecoder::new(FIRST_SEQ, 0),
            outbox: Vec::new(),
            in_flight: VecDeque::new(),
            unreplayed: VecDeque::new(),
            replayed_seq: FIRST_SEQ - 1,
            replayed_offset_bytes: 0,
            replay_marks: VecDeque::new(),
            replay_busy_ns: 0,
            blocked_ns: 0,
            replayed_work_ns: 0,
            acked_seq: FIRST_SEQ - 1,
            acked_offset_bytes: 0,
            progress_landmark: 0,
            heartbeats_sent: 0,
            liveness: Liveness::new(Peer::Backup, config, now_ns),
            lease_until_ns: 0,
            lease_ns: lease_ms.saturating_mul(NS_PER_MS),
            last_ack_progress_ns: now_ns,
            backup_receiving: true,
            backup_announced: 0,
            lease_rule: config.lease_rule,
            error: None,
        }
    }

    /// Frames `entry` into the outbox. After a failure, returns the failure and frames nothing.
    pub fn send(&mut self, entry: &Entry, now_ns: u64) -> Result<Sent, ChannelError> {
        check(&self.error)?;
        let start_offset_bytes = self.frames.offset_bytes();
        let frame_start = self.outbox.len();
        let seq = self
            .frames
            .encode(entry, &mut self.outbox)
            .map_err(|source| ChannelError::Encode { source: Arc::new(source) })?;
        self.sealer.seal(&mut self.outbox, frame_start);
        let end_offset_bytes = self.frames.offset_bytes();
        let work_ns = self.work_ns(now_ns);
        self.in_flight.push_back(InFlight { seq, end_offset_bytes, sent_ns: now_ns, work_ns });
        self.unreplayed.push_back(InFlight { seq, end_offset_bytes, sent_ns: now_ns, work_ns });
        self.liveness.last_tx_ns = now_ns;
        if let Entry::Progress { landmark } = entry {
            self.progress_landmark = self.progress_landmark.max(*landmark);
        }
        Ok(Sent { seq, frame_len_bytes: end_offset_bytes - start_offset_bytes })
    }

    /// Takes bytes received from the backup; returns the acked sequence number afterwards.
    pub fn handle_input(&mut self, bytes: &[u8], now_ns: u64) -> Result<u64, ChannelError> {
        check(&self.error)?;
        if bytes.is_empty() {
            return Ok(self.acked_seq);
        }
        self.liveness.last_rx_ns = now_ns;
        if self.lease_rule == LeaseRule::AnythingHeard {
            self.lease_until_ns = self.lease_until_ns.max(now_ns.saturating_add(self.lease_ns));
        }
        self.opener.push(bytes);
        loop {
            let frame = match self.opener.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(self.acked_seq),
                Err(source) => {
                    let error = ChannelError::Unauthenticated { peer: Peer::Backup, source };
                    return Err(self.fail(error));
                }
            };
            match self.acks.decode(frame) {
                Ok(Some((
                    _,
                    BackupMessage::Ack { acked_seq, replayed_seq, receiving, announced },
                ))) => {
                    self.backup_receiving = receiving;
                    self.backup_announced = self.backup_announced.max(announced);
                    self.apply_ack(acked_seq, now_ns)?;
                    self.apply_replayed(replayed_seq, now_ns)?
                }
                Ok(None) => {}
                Err(source) => {
                    let error =
                        ChannelError::Corrupt { peer: Peer::Backup, source: Arc::new(source) };
                    return Err(self.fail(error));
                }
            }
        }
    }

    fn apply_ack(&mut self, acked_seq: u64, now_ns: u64) -> Result<(), ChannelError> {
        let last_seq = self.last_seq();
        let violation = if acked_seq > last_seq {
            format!("ack of seq {acked_seq}, but only up to seq {last_seq} was sent")
        } else if acked_seq < self.acked_seq {
            format!("ack of seq {acked_seq} after an ack of seq {}", self.acked_seq)
        } else {
            while self.in_flight.front().is_some_and(|frame| frame.seq <= acked_seq) {
                let frame = self.in_flight.pop_front().expect("front exists");
                self.acked_offset_bytes = frame.end_offset_bytes;
                self.lease_until_ns =
                    self.lease_until_ns.max(frame.sent_ns.saturating_add(self.lease_ns));
            }
            if acked_seq > self.acked_seq {
                self.last_ack_progress_ns = now_ns;
            }
            self.acked_seq = acked_seq;
            return Ok(());
        };
        Err(self.fail(ChannelError::Protocol { peer: Peer::Backup, detail: violation }))
    }

    fn apply_replayed(&mut self, replayed_seq: u64, now_ns: u64) -> Result<(), ChannelError> {
        let violation = if replayed_seq > self.acked_seq {
            format!("replayed seq {replayed_seq} beyond the acked seq {}", self.acked_seq)
        } else if replayed_seq < self.replayed_seq {
            format!("replayed seq {replayed_seq} after replayed seq {}", self.replayed_seq)
        } else {
            let mut replayed_work_ns = None;
            // The backup had work from the later of its last progress and the first entry
            // it replayed now reaching the core.
            let previous_mark_ns = self.replay_marks.back().map_or(0, |mark| mark.0);
            let busy_since_ns =
                self.unreplayed.front().map_or(now_ns, |frame| frame.sent_ns.max(previous_mark_ns));
            while self.unreplayed.front().is_some_and(|frame| frame.seq <= replayed_seq) {
                let frame = self.unreplayed.pop_front().expect("front exists");
                self.replayed_offset_bytes = frame.end_offset_bytes;
                replayed_work_ns = Some(frame.work_ns);
            }
            if let Some(work_ns) = replayed_work_ns {
                // Work replayed only moves the estimate if it is work (heartbeats of a guest
                // held back carry none).
                if work_ns > self.replayed_work_ns {
                    self.replay_busy_ns += now_ns.saturating_sub(busy_since_ns);
                }
                self.replayed_work_ns = work_ns;
                self.replay_marks.push_back((now_ns, work_ns, self.replay_busy_ns));
                while self.replay_marks.len() > 2
                    && self.replay_marks.front().is_some_and(|(at_ns, _, _)| {
                        now_ns.saturating_sub(*at_ns) > REPLAY_SPEED_WINDOW_NS
                    })
                {
                    self.replay_marks.pop_front();
                }
            }
            self.replayed_seq = replayed_seq;
            return Ok(());
        };
        Err(self.fail(ChannelError::Protocol { peer: Peer::Backup, detail: violation }))
    }

    /// Advances time: sends a heartbeat if one is due, and fails if the backup has been silent
    /// past the failure timeout, or has acknowledged nothing new for that long while it says it
    /// is reading (it no longer hears the primary).
    pub fn poll(&mut self, now_ns: u64) -> Result<(), ChannelError> {
        check(&self.error)?;
        if let Err(error) = self.liveness.check_silence(now_ns) {
            return Err(self.fail(error));
        }
        let failure_timeout_ns = self.liveness.failure_timeout_ns;
        let stalled_ns = now_ns.saturating_sub(self.last_ack_progress_ns);
        if self.backup_receiving
            && self.unacked_age_ns(now_ns) > failure_timeout_ns
            && stalled_ns > failure_timeout_ns
        {
            return Err(self.fail(ChannelError::Unacknowledged {
                silent_ms: stalled_ns / NS_PER_MS,
                failure_timeout_ms: failure_timeout_ns / NS_PER_MS,
            }));
        }
        if self.liveness.heartbeat_due(now_ns) {
            self.send(&heartbeat_entry(self.progress_landmark), now_ns)?;
            self.heartbeats_sent += 1;
        }
        Ok(())
    }

    /// Records a failure found outside the core (the connection ended, a send failed); returns
    /// the error the core now reports, the first one recorded.
    pub fn fail(&mut self, error: ChannelError) -> ChannelError {
        fail(&mut self.error, error)
    }

    /// The failure, if any.
    pub fn error(&self) -> Option<&ChannelError> {
        self.error.as_ref()
    }

    /// Moves the bytes to send to the end of `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.outbox);
        } else {
            out.append(&mut self.outbox);
        }
    }

    /// Whether there are bytes to send.
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// When `poll` should next be called, on the caller's clock.
    pub fn next_wakeup_ns(&self) -> u64 {
        self.liveness.next_wakeup_ns()
    }

    /// The highest sequence number the backup acknowledged (0: none).
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Whether the lease allows releasing output at `now_ns` (see the type's documentation).
    pub fn lease_valid(&self, now_ns: u64) -> bool {
        now_ns < self.lease_until_ns
    }

    /// The highest sequence number framed (0: none).
    pub fn last_seq(&self) -> u64 {
        self.frames.next_seq() - 1
    }

    /// Bytes of frames sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> u64 {
        self.frames.offset_bytes() - self.acked_offset_bytes
    }

    /// Entries sent and not yet acknowledged.
    pub fn unacked_entries(&self) -> u64 {
        self.last_seq() - self.acked_seq
    }

    /// How long the oldest unacknowledged entry has waited (0 when all are acknowledged).
    pub fn unacked_age_ns(&self, now_ns: u64) -> u64 {
        self.in_flight.front().map_or(0, |frame| now_ns.saturating_sub(frame.sent_ns))
    }

    /// The highest sequence number the backup handed to its replay (0: none).
    pub fn replayed_seq(&self) -> u64 {
        self.replayed_seq
    }

    /// Bytes of frames sent and not yet replayed: what a backup going live now still has to
    /// replay, at most.
    pub fn unreplayed_bytes(&self) -> u64 {
        self.frames.offset_bytes() - self.replayed_offset_bytes
    }

    /// How long the oldest entry not yet replayed has waited (0 when all are replayed): the
    /// backup's replay lag, in the primary's time.
    pub fn unreplayed_age_ns(&self, now_ns: u64) -> u64 {
        self.unreplayed.front().map_or(0, |frame| now_ns.saturating_sub(frame.sent_ns))
    }

    /// Says the guest was held back (by the lag bound) for `blocked_ns`: that time is not work
    /// the backup has to replay. The work clock is the core's clock minus all such time.
    pub fn add_blocked_ns(&mut self, blocked_ns: u64) {
        self.blocked_ns = self.blocked_ns.saturating_add(blocked_ns);
    }

    fn work_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.blocked_ns)
    }

    /// How long the backup would take to replay what it has not: the primary's work since the
    /// last entry the backup replayed, divided by the speed at which the backup has replayed
    /// that work lately (at most 1: a backup is never assumed faster than its primary). The lag
    /// bound holds this, not the lag itself: a backup replaying at a tenth of the primary's
    /// speed (a throttled host) needs ten times its lag to catch up.
    pub fn replay_catch_up_ns(&self, now_ns: u64) -> u64 {
        if self.unreplayed.is_empty() {
            return 0;
        }
        let backlog_ns = self.work_ns(now_ns).saturating_sub(self.replayed_work_ns);
        let (Some(&(_, first_work_ns, first_busy_ns)), Some(&(_, last_work_ns, last_busy_ns))) =
            (self.replay_marks.front(), self.replay_marks.back())
        else {
            return backlog_ns;
        };
        let elapsed_ns = last_busy_ns.saturating_sub(first_busy_ns);
        if elapsed_ns < REPLAY_SPEED_MIN_SPAN_NS {
            return backlog_ns;
        }
        // Speed = replayed work / elapsed, at least 1/MAX_SLOWDOWN, at most 1.
        let replayed_ns = last_work_ns.saturating_sub(first_work_ns).min(elapsed_ns);
        let replayed_ns = replayed_ns.max(elapsed_ns / MAX_SLOWDOWN).max(1);
        (backlog_ns as u128 * elapsed_ns as u128 / replayed_ns as u128) as u64
    }

    /// Says every exit of the guest through `landmark` is complete (all its entries were
    /// sent): heartbeats carry it, so the backup can replay up to there while the guest idles.
    pub fn note_exits_complete(&mut self, landmark: u64) {
        self.progress_landmark = self.progress_landmark.max(landmark);
    }

    /// Bytes framed since the start.
    pub fn sent_bytes(&self) -> u64 {
        self.frames.offset_bytes()
    }

    /// How many times the backup said it announced the guest's MAC (took its inbound
    /// traffic); a primary that sees this grow announces again.
    pub fn backup_announcements(&self) -> u64 {
        self.backup_announced
    }

    /// Heartbeats sent since the start.
    pub fn heartbeats_sent(&self) -> u64 {
        self.heartbeats_sent
    }
}

/// The backup's end: decodes and checks frames, queues entries for replay, acks on receipt,
/// heartbeats, and watches the primary's liveness.
#[derive(Debug)]
pub struct BackupCore {
    opener: Opener,
    frames: FrameDecoder<Entry>,
    sealer: Sealer,
    acks: FrameEncoder<BackupMessage>,
    outbox: Vec<u8>,
    received: VecDeque<Received>,
    /// How many entries at the back of `received` wait for their ack to be sent.
    awaiting_ack_sent: usize,
    /// The sequence number of the last entry handed out by `next_entry`.
    taken_seq: u64,
    /// Every exit of the primary's guest through this landmark is complete in what was
    /// received ([`Entry::exits_complete_through`]).
    complete_through: u64,
    queued_bytes: u64,
    paused: bool,
    /// How many times this side announced the guest's MAC ([`Self::note_announced`]).
    announced: u64,
    liveness: Liveness,
    error: Option<ChannelError>,
}

impl BackupCore {
    /// A core for the session `session`, expecting sequence number [`FIRST_SEQ`] first.
    pub fn new(config: &ChannelConfig, now_ns: u64, session: &SessionKey) -> Self {
        BackupCore {
            opener: session.opener(Direction::PrimaryToBackup),
            frames: FrameDecoder::new(FIRST_SEQ, 0),
            sealer: session.sealer(Direction::BackupToPrimary),
            acks: FrameEncoder::new(FIRST_SEQ, 0),
            outbox: Vec::new(),
            received: VecDeque::new(),
            awaiting_ack_sent: 0,
            taken_seq: FIRST_SEQ - 1,
            complete_through: 0,
            queued_bytes: 0,
            paused: false,
            announced: 0,
            liveness: Liveness::new(Peer::Primary, config, now_ns),
            error: None,
        }
    }

    /// Takes bytes received from the primary: queues every complete, valid frame and acks the
    /// highest. Returns how many entries were queued; a bad frame is an error, and neither it nor
    /// anything after it is ever queued (those before it are).
    ///
    /// The entries are handed out by `next_entry` only once the caller has sent the ack (taken
    /// the output, written it, and called [`Self::acks_sent`]): the backup acks on receipt,
    /// before it replays.
    pub fn handle_input(&mut self, bytes: &[u8], now_ns: u64) -> Result<usize, ChannelError> {
        check(&self.error)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        self.liveness.last_rx_ns = now_ns;
        self.opener.push(bytes);
        let mut queued = 0;
        let outcome = loop {
            let frame = match self.opener.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(queued),
                Err(source) => {
                    break Err(ChannelError::Unauthenticated { peer: Peer::Primary, source })
                }
            };
            let start_offset_bytes = self.frames.offset_bytes();
            match self.frames.decode(frame) {
                Ok(Some((seq, entry))) => {
                    let frame_len_bytes = self.frames.offset_bytes() - start_offset_bytes;
                    if let Some(landmark) = entry.exits_complete_through() {
                        self.complete_through = self.complete_through.max(landmark);
                    }
                    self.queued_bytes += frame_len_bytes;
                    self.received.push_back(Received { seq, entry, frame_len_bytes });
                    self.awaiting_ack_sent += 1;
                    queued += 1;
                }
                Ok(None) => {}
                Err(source) => {
                    break Err(ChannelError::Corrupt {
                        peer: Peer::Primary,
                        source: Arc::new(source),
                    })
                }
            }
        };
        if queued > 0 {
            self.send_ack(now_ns);
        }
        outcome.map_err(|error| self.fail(error))
    }

    /// The primary closed the connection: a peer failure, whose report says whether the stream
    /// ended inside a frame.
    pub fn handle_eof(&mut self) -> ChannelError {
        let detail = match self.opener.buffered_len_bytes() {
            0 => "the primary closed the connection".to_owned(),
            cut => format!("the primary closed the connection inside a frame ({cut} bytes of it)"),
        };
        self.fail(ChannelError::Disconnected { peer: Peer::Primary, detail })
    }

    /// Advances time: sends a heartbeat (a repeated ack) if one is due, and fails if the primary
    /// has been silent past the failure timeout (not checked while paused).
    pub fn poll(&mut self, now_ns: u64) -> Result<(), ChannelError> {
        check(&self.error)?;
        if !self.paused {
            if let Err(error) = self.liveness.check_silence(now_ns) {
                return Err(self.fail(error));
            }
        }
        if self.liveness.heartbeat_due(now_ns) {
            self.send_ack(now_ns);
        }
        Ok(())
    }

    /// Says whether the caller has stopped reading from the primary (its queue is full). While
    /// paused the primary's silence proves nothing, so it is not held against it; the silence
    /// clock restarts when reading resumes.
    pub fn set_paused(&mut self, paused: bool, now_ns: u64) {
        if self.paused && !paused {
            self.liveness.last_rx_ns = now_ns;
        }
        let changed = self.paused != paused;
        self.paused = paused;
        if changed && self.error.is_none() {
            // The primary learns at once whether stalled acks mean "behind" or "deaf".
            self.send_ack(now_ns);
        }
    }

    fn send_ack(&mut self, now_ns: u64) {
        let ack = BackupMessage::Ack {
            acked_seq: self.acked_seq(),
            replayed_seq: self.taken_seq,
            receiving: !self.paused,
            announced: self.announced,
        };
        let frame_start = self.outbox.len();
        self.acks.encode(&ack, &mut self.outbox).expect("an ack is far below the frame size limit");
        self.sealer.seal(&mut self.outbox, frame_start);
        self.liveness.last_tx_ns = now_ns;
    }

    /// This side announced the guest's MAC: the next ack (at the latest the next heartbeat)
    /// tells the primary, so that if it is alive it announces again.
    pub fn note_announced(&mut self) {
        self.announced += 1;
    }

    /// How long the primary has not been heard, at `now_ns`; 0 while this side does not read
    /// (then silence proves nothing) unless the channel has failed.
    pub fn silent_for_ns(&self, now_ns: u64) -> u64 {
        if self.paused && self.error.is_none() {
            return 0;
        }
        now_ns.saturating_sub(self.liveness.last_rx_ns)
    }

    /// Says the output taken so far has been sent: the entries it acks may now be handed out.
    pub fn acks_sent(&mut self) {
        self.awaiting_ack_sent = 0;
    }

    /// The next received entry whose ack has been sent, in order, once the exit that consumed
    /// it is known to be complete: so a replay never starts an exit whose inputs it may not
    /// all get, and a backup that loses its primary goes live between two exits, never in
    /// one. Complete exits received before a failure are all handed out after it, acked or not
    /// (they are valid; only the primary's knowledge of them is in doubt); the entries of an
    /// exit the primary did not finish never are. (No output of that exit was released: the
    /// primary ties each output to the end of its exit.)
    pub fn next_entry(&mut self) -> Option<Received> {
        if self.received.len() <= self.awaiting_ack_sent {
            return None;
        }
        let front = self.received.front()?;
        if front.entry.exit_landmark().is_some_and(|landmark| landmark > self.complete_through) {
            return None;
        }
        let received = self.received.pop_front()?;
        self.queued_bytes -= received.frame_len_bytes;
        self.taken_seq = received.seq;
        if self.received.is_empty() && self.error.is_none() {
            // Caught up: say so now rather than with the next heartbeat, since a primary the
            // lag bound holds back waits for exactly this.
            let last_tx_ns = self.liveness.last_tx_ns;
            self.send_ack(last_tx_ns);
        }
        Some(received)
    }

    /// Records a failure found outside the core; returns the error the core now reports.
    pub fn fail(&mut self, error: ChannelError) -> ChannelError {
        self.awaiting_ack_sent = 0;
        fail(&mut self.error, error)
    }

    /// The failure, if any.
    pub fn error(&self) -> Option<&ChannelError> {
        self.error.as_ref()
    }

    /// Moves the bytes to send to the end of `out`; call [`Self::acks_sent`] once they are sent.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.outbox);
    }

    /// When `poll` should next be called, on the caller's clock.
    pub fn next_wakeup_ns(&self) -> u64 {
        self.liveness.next_wakeup_ns()
    }

    /// The highest contiguous sequence number received (and acked or about to be).
    pub fn acked_seq(&self) -> u64 {
        self.frames.next_seq() - 1
    }

    /// When the primary was last heard (bytes received, or reading resumed after a pause), on
    /// the caller's clock: the backup goes live no earlier than the failure timeout after it.
    pub fn last_heard_ns(&self) -> u64 {
        self.liveness.last_rx_ns
    }

    /// Bytes of received entries not yet taken with `next_entry`.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Received entries not yet taken with `next_entry`.
    pub fn queued_entries(&self) -> usize {
        self.received.len()
    }
}
