//! The backup's decisions: it replays every complete exit it received; when the channel has
//! failed and nothing is left to replay, it waits until the failure timeout has passed since
//! it last heard the primary (so the primary's lease has ended, whichever way the link
//! failed), asks the arbiter, and goes live or halts on the verdict. Going live it re-emits
//! the outputs its guest produced beyond what the primary reported releasing
//! ([`Unreleased`]). Before that, once the primary has been silent for half the timeout, it
//! takes the guest's inbound traffic and keeps it for go-live ([`InboundWatch`]).

use std::collections::VecDeque;

use super::{OutputKind, ReleasedCounts};
use crate::channel::BackupCore;
use crate::entry::Entry;

const NS_PER_MS: u64 = 1_000_000;

/// Where the backup stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupRole {
    /// Replaying the primary's log.
    Backup,
    /// The primary is presumed dead and the replay has run out: waiting out its lease.
    LostPrimary {
        /// Why.
        why: String,
        /// The earliest time this side may ask to go live, on the channel core's clock.
        not_before_ns: u64,
    },
    /// Asking the arbiter.
    Arbitrating,
    /// Won: runs the guest.
    Live,
    /// Lost the arbiter (or was stopped while asking it).
    Halted(String),
}

/// What the backup's driver does next, once its replay has run out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupStep {
    /// Wait until this time (the channel core's clock), then ask again.
    WaitUntil(u64),
    /// Ask the arbiter, then call [`BackupPair::arbiter_said`].
    AskArbiter(String),
    /// Go live at the point the replay reached.
    GoLive,
    /// Halt: the other side runs the guest.
    Halt(String),
}

/// The backup's side of a pair.
pub struct BackupPair {
    role: BackupRole,
    failure_timeout_ns: u64,
    /// How far the primary reported releasing each kind of output.
    released: ReleasedCounts,
}

impl BackupPair {
    /// A backup whose channel presumes the primary dead after `failure_timeout_ms`.
    pub fn new(failure_timeout_ms: u64) -> Self {
        BackupPair {
            role: BackupRole::Backup,
            failure_timeout_ns: failure_timeout_ms.saturating_mul(NS_PER_MS),
            released: ReleasedCounts::default(),
        }
    }

    /// Where the backup stands.
    pub fn role(&self) -> &BackupRole {
        &self.role
    }

    /// Takes in an entry received from the primary; `false` if it is not for the replay (a
    /// release report, absorbed here).
    pub fn note_entry(&mut self, entry: &Entry) -> bool {
        let Some(counts) = ReleasedCounts::from_entry(entry) else { return true };
        let released = &mut self.released;
        released.packets = released.packets.max(counts.packets);
        released.console_writes = released.console_writes.max(counts.console_writes);
        released.disk_writes = released.disk_writes.max(counts.disk_writes);
        false
    }

    /// How many outputs of `kind` the primary reported releasing.
    pub fn released(&self, kind: OutputKind) -> u64 {
        self.released.of(kind)
    }

    /// The replay has taken every complete exit `channel` received, and `channel` has failed:
    /// what to do now, at `now_ns` on the core's clock.
    pub fn replay_ran_out(&mut self, channel: &BackupCore, now_ns: u64) -> BackupStep {
        if self.role == BackupRole::Backup {
            let why = channel.error().map_or("the log ended".into(), ToString::to_string);
            let not_before_ns = channel.last_heard_ns().saturating_add(self.failure_timeout_ns);
            self.role = BackupRole::LostPrimary { why, not_before_ns };
        }
        match &self.role {
            BackupRole::LostPrimary { why, not_before_ns } => {
                if now_ns < *not_before_ns {
                    return BackupStep::WaitUntil(*not_before_ns);
                }
                let why = format!("primary presumed dead ({why})");
                self.role = BackupRole::Arbitrating;
                BackupStep::AskArbiter(why)
            }
            BackupRole::Halted(reason) => BackupStep::Halt(reason.clone()),
            BackupRole::Live => BackupStep::GoLive,
            BackupRole::Arbitrating | BackupRole::Backup => {
                unreachable!("the driver asks the arbiter before it asks again")
            }
        }
    }

    /// The arbiter's verdict after [`BackupStep::AskArbiter`]: `Ok` if this side won, else why
    /// it halts.
    pub fn arbiter_said(&mut self, verdict: Result<(), String>) -> BackupStep {
        match verdict {
            Ok(()) => {
                self.role = BackupRole::Live;
                BackupStep::GoLive
            }
            Err(reason) => {
                self.role = BackupRole::Halted(reason.clone());
                BackupStep::Halt(reason)
            }
        }
    }
}

/// One kind of output the backup's guest produced that the world may not have seen: numbered
/// from 1 in the order the guest produced them (the primary's guest produced the same ones in
/// the same order), kept until the primary reports releasing them, up to a byte bound. With
/// a grace, the last outputs reported released are kept too, up to that many bytes: a frame
/// the primary released just before its host died may have died in its NIC (TCP absorbs the
/// duplicate; its own retransmission would come a backed-off timer later).
pub struct Unreleased<T> {
    produced: u64,
    kept: VecDeque<(u64, T, u64)>,
    kept_bytes: u64,
    max_kept_bytes: u64,
    /// Bytes of released outputs kept.
    released_grace_bytes: u64,
    /// How many kept outputs, from the front, are reported released, and their bytes.
    released_kept: usize,
    released_kept_bytes: u64,
    /// Outputs given up to the byte bound before the primary reported them.
    dropped: u64,
}

impl<T> Unreleased<T> {
    /// Keeps at most `max_kept_bytes` of outputs, none of those reported released.
    pub fn new(max_kept_bytes: u64) -> Self {
        Unreleased {
            produced: 0,
            kept: VecDeque::new(),
            kept_bytes: 0,
            max_kept_bytes,
            released_grace_bytes: 0,
            released_kept: 0,
            released_kept_bytes: 0,
            dropped: 0,
        }
    }

    /// Keeps the last outputs reported released too, up to `grace_bytes`.
    pub fn keeping_released(mut self, grace_bytes: u64) -> Self {
        self.released_grace_bytes = grace_bytes;
        self
    }

    /// Keeps `item` (`bytes` long), forgetting those up to `released` beyond the grace.
    pub fn push(&mut self, item: T, bytes: u64, released: u64) {
        self.produced += 1;
        self.kept.push_back((self.produced, item, bytes));
        self.kept_bytes += bytes;
        self.forget_through(released);
        while self.kept_bytes > self.max_kept_bytes {
            if !self.pop_front() {
                self.dropped += 1;
            }
        }
    }

    /// Forgets the outputs up to `released`, except the last ones within the grace. Each
    /// output is counted as released once, so a push costs O(1) amortized.
    fn forget_through(&mut self, released: u64) {
        while let Some((index, _, bytes)) = self.kept.get(self.released_kept) {
            if *index > released {
                break;
            }
            self.released_kept += 1;
            self.released_kept_bytes += bytes;
        }
        while self.released_kept_bytes > self.released_grace_bytes {
            self.pop_front();
        }
    }

    /// Forgets the oldest output kept; whether it had been reported released.
    fn pop_front(&mut self) -> bool {
        let (_, _, bytes) = self.kept.pop_front().expect("bytes counted are kept");
        self.kept_bytes -= bytes;
        let released = self.released_kept > 0;
        if released {
            self.released_kept -= 1;
            self.released_kept_bytes -= bytes;
        }
        released
    }

    /// What the world may not have seen, in order: the outputs after `released` and, within
    /// the grace, the last ones up to it. The queue is empty afterwards.
    pub fn take_after(&mut self, released: u64) -> Vec<T> {
        self.forget_through(released);
        (self.kept_bytes, self.released_kept, self.released_kept_bytes) = (0, 0, 0);
        std::mem::take(&mut self.kept).into_iter().map(|(_, item, _)| item).collect()
    }

    /// Outputs given up to the byte bound before the primary reported them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// What reaches the backup's own NIC while it replays. While the primary is heard, those
/// frames are copies of what the primary's guest receives (a bridge flooding them), and the
/// log carries what the guest took: they are dropped. Once the primary has been silent for
/// [`ChannelConfig::capture_after_ms`](crate::ChannelConfig::capture_after_ms), the backup
/// announces the guest's MAC, so the LAN sends it the guest's traffic, and keeps what arrives:
/// at go-live the guest receives it first. The client's retransmission that arrived meanwhile
/// is then answered at go-live instead of at its next, backed-off, retransmission. If the
/// primary is heard again, what was kept is dropped (the client resends it; the primary,
/// seeing the announcement count grow in the backup's acks, announces again).
pub struct InboundWatch<T> {
    capture_after_ns: u64,
    capturing: bool,
    /// The other side won the arbiter: this side never captures again.
    stood_down: bool,
    kept: VecDeque<T>,
    kept_bytes: u64,
    max_kept_bytes: u64,
    /// Frames that arrived while capturing with `max_kept_bytes` already kept.
    overflowed: u64,
}

/// What the backup's driver does about the watch, after [`InboundWatch::tick`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchStep {
    /// Announce the guest's MAC on this side's network and count it in the acks: capturing.
    /// Unless the arbiter already gave the generation to the primary (alive, it stopped
    /// talking to this side when it presumed it dead): then call
    /// [`InboundWatch::stand_down`] instead, so the winner keeps its traffic.
    Announce,
    /// The primary was heard again: these many kept frames were dropped.
    PrimaryBack {
        /// Kept frames dropped.
        dropped: usize,
    },
}

impl<T> InboundWatch<T> {
    /// A watch that captures after `capture_after_ms` of silence, keeping at most
    /// `max_kept_bytes`.
    pub fn new(capture_after_ms: u64, max_kept_bytes: u64) -> Self {
        InboundWatch {
            capture_after_ns: capture_after_ms.saturating_mul(NS_PER_MS),
            capturing: false,
            stood_down: false,
            kept: VecDeque::new(),
            kept_bytes: 0,
            max_kept_bytes,
            overflowed: 0,
        }
    }

    /// The primary has been silent for `silent_for_ns`: what to do, if anything.
    pub fn tick(&mut self, silent_for_ns: u64) -> Option<WatchStep> {
        let silent = silent_for_ns >= self.capture_after_ns && !self.stood_down;
        if silent == self.capturing {
            return None;
        }
        self.capturing = silent;
        if silent {
            return Some(WatchStep::Announce);
        }
        let dropped = self.take().len();
        Some(WatchStep::PrimaryBack { dropped })
    }

    /// A frame (`bytes` long) arrived on this side's NIC: kept while capturing and within the
    /// bound, else dropped.
    pub fn arrived(&mut self, frame: T, bytes: u64) {
        if !self.capturing {
            return;
        }
        if self.kept_bytes.saturating_add(bytes) > self.max_kept_bytes {
            self.overflowed += 1;
            return;
        }
        self.kept.push_back(frame);
        self.kept_bytes += bytes;
    }

    /// The primary holds the generation: nothing is kept, and nothing will be.
    pub fn stand_down(&mut self) {
        self.stood_down = true;
        self.capturing = false;
        self.take();
    }

    /// Whether frames are being kept.
    pub fn capturing(&self) -> bool {
        self.capturing
    }

    /// The frames kept, in arrival order; the watch keeps none afterwards.
    pub fn take(&mut self) -> Vec<T> {
        self.kept_bytes = 0;
        std::mem::take(&mut self.kept).into()
    }

    /// Frames not kept for want of room while capturing.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreleased_keeps_what_the_primary_did_not_report_in_order() {
        let mut kept = Unreleased::new(10);
        for item in 1..=5u64 {
            kept.push(item, 1, 2);
        }
        assert_eq!(kept.take_after(3), vec![4, 5]);
        assert!(kept.take_after(0).is_empty(), "taken once");
    }

    #[test]
    fn a_grace_keeps_the_last_released_outputs_within_its_bytes() {
        let mut kept = Unreleased::new(100).keeping_released(2);
        for item in 1..=6u64 {
            kept.push(item, 1, 4);
        }
        assert_eq!(kept.take_after(4), vec![3, 4, 5, 6], "the last 2 released, then the rest");
    }

    proptest::proptest! {
        /// Against the rule written plainly (no byte bound): after pushes reporting `released`
        /// as it grows, what is taken is every output after the last report and, before it,
        /// the newest released outputs whose bytes fit the grace, as counted at each push.
        #[test]
        fn unreleased_matches_its_rule(
            pushes in proptest::collection::vec((1u64..5, 0u64..3), 1..60),
            grace_bytes in 0u64..12,
        ) {
            let mut kept = Unreleased::new(u64::MAX).keeping_released(grace_bytes);
            let mut model: Vec<(u64, u64)> = Vec::new();
            let mut released = 0;
            for (produced, (bytes, advance)) in (1u64..).zip(pushes) {
                released = (released + advance).min(produced);
                kept.push(produced, bytes, released);
                model.push((produced, bytes));
                // Drop released outputs from the front while they exceed the grace.
                let mut released_bytes: u64 =
                    model.iter().filter(|(index, _)| *index <= released).map(|(_, b)| b).sum();
                while released_bytes > grace_bytes {
                    let (_, bytes) = model.remove(0);
                    released_bytes -= bytes;
                }
            }
            let expected: Vec<u64> = model.iter().map(|(index, _)| *index).collect();
            proptest::prop_assert_eq!(kept.take_after(released), expected);
            proptest::prop_assert_eq!(kept.dropped(), 0);
        }
    }

    #[test]
    fn unreleased_gives_up_the_oldest_past_its_bound_and_counts_them() {
        let mut kept = Unreleased::new(3);
        for item in 1..=5u64 {
            kept.push(item, 1, 0);
        }
        assert_eq!(kept.dropped(), 2);
        assert_eq!(kept.take_after(0), vec![3, 4, 5]);
    }

    #[test]
    fn the_backup_goes_live_only_a_failure_timeout_after_it_last_heard_the_primary() {
        let config = crate::channel::ChannelConfig::default();
        let key = crate::SessionKey::from_bytes([3; 32]);
        let mut channel = BackupCore::new(&config, 0, &key);
        let _ = channel.handle_eof();
        let mut pair = BackupPair::new(config.failure_timeout_ms);
        let timeout_ns = config.failure_timeout_ms * NS_PER_MS;
        assert_eq!(pair.replay_ran_out(&channel, 1), BackupStep::WaitUntil(timeout_ns));
        assert_eq!(
            pair.replay_ran_out(&channel, timeout_ns - 1),
            BackupStep::WaitUntil(timeout_ns)
        );
        assert!(matches!(pair.replay_ran_out(&channel, timeout_ns), BackupStep::AskArbiter(_)));
        assert_eq!(pair.arbiter_said(Ok(())), BackupStep::GoLive);
        assert_eq!(pair.role(), &BackupRole::Live);
        let mut loser = BackupPair::new(config.failure_timeout_ms);
        let _ = loser.replay_ran_out(&channel, timeout_ns);
        assert_eq!(loser.arbiter_said(Err("lost".into())), BackupStep::Halt("lost".into()));
    }

    #[test]
    fn release_reports_are_absorbed_and_only_move_forward() {
        let mut pair = BackupPair::new(300);
        assert!(pair.note_entry(&Entry::Progress { landmark: 3 }));
        let report = |packets| Entry::Released { packets, console_writes: 1, disk_writes: 2 };
        assert!(!pair.note_entry(&report(7)));
        assert!(!pair.note_entry(&report(5)));
        assert_eq!(pair.released(OutputKind::Packet), 7);
        assert_eq!(pair.released(OutputKind::DiskWrite), 2);
    }

    #[test]
    fn the_watch_keeps_frames_only_once_the_primary_is_silent_and_drops_them_if_it_returns() {
        let mut watch = InboundWatch::new(150, 10);
        watch.arrived("flooded copy", 1);
        assert_eq!(watch.tick(149 * NS_PER_MS), None);
        assert_eq!(watch.tick(150 * NS_PER_MS), Some(WatchStep::Announce));
        assert_eq!(watch.tick(200 * NS_PER_MS), None, "announced once per silence");
        watch.arrived("retransmission", 1);
        assert_eq!(watch.tick(0), Some(WatchStep::PrimaryBack { dropped: 1 }));
        watch.arrived("flooded again", 1);
        assert_eq!(watch.tick(151 * NS_PER_MS), Some(WatchStep::Announce));
        watch.arrived("first", 4);
        watch.arrived("second", 4);
        watch.arrived("over the bound", 4);
        assert_eq!(watch.take(), vec!["first", "second"]);
        assert_eq!(watch.overflowed(), 1);
        watch.stand_down();
        watch.arrived("after the primary won", 1);
        assert_eq!(watch.tick(0), None);
        assert_eq!(watch.tick(500 * NS_PER_MS), None, "a side that lost never captures again");
        assert!(watch.take().is_empty());
    }
}
