//! The primary's decisions: every output the guest produces is held, tied to the entry that
//! ends the exit that produced it, and released in order once the backup has acknowledged
//! that entry while the lease holds (the output rule and the fence, see
//! [`PrimaryCore`](crate::PrimaryCore)); a lost backup makes the primary ask the arbiter, and
//! the verdict makes it solo (release everything) or halted (drop everything). A failed
//! output (the shared disk refused a write) stops every later release and ends the run.
//!
//! Why the end of the exit: a backup that loses its primary goes live between two exits
//! ([`BackupCore::next_entry`](crate::BackupCore::next_entry) never hands out the inputs of an
//! exit the primary did not finish). An output tied to an entry in the middle of its exit
//! could be released while the backup, lacking the rest of that exit, redoes the exit with
//! live inputs and takes a path that contradicts what the world saw.

use std::collections::VecDeque;

use super::{OutputKind, ReleasedCounts};
use crate::channel::PrimaryCore;
use crate::entry::Entry;

/// Release reports are sent when the releaser catches up, or every this many outputs.
const REPORT_EVERY: u64 = 32;

/// Where the primary stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryRole {
    /// Paired with a live backup: outputs wait for acks and the lease.
    Paired,
    /// The backup is presumed dead; the backup gets the first try at the arbiter (it may be
    /// alive behind a cut link, with the guest's inbound traffic).
    LostBackup {
        /// Why.
        why: String,
        /// When this side asks the arbiter, on the channel core's clock.
        asks_at_ns: u64,
    },
    /// The backup is presumed dead; the arbiter is being asked.
    Arbitrating,
    /// Won the arbiter: runs alone, releases without waiting.
    Solo,
    /// Lost the arbiter (or was stopped while asking it): drops everything, the run ends.
    Halted(String),
}

/// What the releaser does next.
#[derive(Debug, PartialEq, Eq)]
pub enum PrimaryStep<T> {
    /// Perform `output` now.
    Release {
        /// The output.
        output: T,
        /// The entry it was tied to (0: none, released solo).
        seq: u64,
        /// Released under the lease (not solo).
        under_lease: bool,
    },
    /// Drop `output`: this side halted, or an earlier output failed.
    Drop(T),
    /// Wait until the backup acknowledges `seq` (or the lease is renewed, or time passes).
    WaitForAck(u64),
    /// Wait for the exit that produced the next output to end.
    WaitForExitEnd,
    /// Nothing is held.
    Idle,
    /// The backup is presumed dead: ask the arbiter, then call
    /// [`PrimaryPair::arbiter_said`].
    AskArbiter(String),
    /// The arbiter is being asked by this driver already: wait for the verdict.
    WaitForVerdict,
    /// The backup is presumed dead: wait until this time (the channel core's clock), then
    /// ask again.
    WaitUntil(u64),
}

/// How the run must end, if it must.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryEnd {
    /// The arbiter gave the guest to the backup.
    Halted(String),
    /// An output failed on the host; nothing after it was released.
    OutputFailed(String),
}

struct Held<T> {
    /// The entry it is tied to; `None` until the exit that produced it ends.
    seq: Option<u64>,
    kind: OutputKind,
    len_bytes: u64,
    output: T,
}

/// The primary's side of a pair: the held outputs of type `T` and the rules that release
/// them.
pub struct PrimaryPair<T> {
    role: PrimaryRole,
    held: VecDeque<Held<T>>,
    /// Bytes held or being performed.
    held_bytes: u64,
    max_held_bytes: u64,
    /// How long a primary that lost its backup waits before it asks the arbiter.
    defer_ns: u64,
    /// The kind and size of each output handed out by `next_step` and not yet reported done,
    /// in order.
    performing: VecDeque<(OutputKind, u64)>,
    /// Outputs held since the last end-of-exit entry.
    untied: usize,
    released: ReleasedCounts,
    unreported: u64,
    output_failed: Option<String>,
    released_under_lease: u64,
}

impl<T> PrimaryPair<T> {
    /// A paired primary that holds at most `max_held_bytes` of output before its guest waits,
    /// and that asks the arbiter `defer_ms` after it presumes its backup dead
    /// ([`ChannelConfig::primary_defers_ms`](crate::ChannelConfig::primary_defers_ms)).
    pub fn new(max_held_bytes: u64, defer_ms: u64) -> Self {
        PrimaryPair {
            role: PrimaryRole::Paired,
            held: VecDeque::new(),
            held_bytes: 0,
            max_held_bytes,
            defer_ns: defer_ms.saturating_mul(1_000_000),
            performing: VecDeque::new(),
            untied: 0,
            released: ReleasedCounts::default(),
            unreported: 0,
            output_failed: None,
            released_under_lease: 0,
        }
    }

    /// Where the primary stands.
    pub fn role(&self) -> &PrimaryRole {
        &self.role
    }

    /// Whether the guest may produce an output of `len_bytes` now; if not, it waits until an
    /// output is done. One output larger than the bound still goes when nothing is held; a
    /// side that releases nothing any more never makes the guest wait.
    pub fn has_room_for(&self, len_bytes: u64) -> bool {
        self.held_bytes == 0
            || self.held_bytes.saturating_add(len_bytes) <= self.max_held_bytes
            || self.end().is_some()
    }

    /// Holds `output` (`len_bytes` of kind `kind`), produced by the exit in progress.
    pub fn hold(&mut self, output: T, kind: OutputKind, len_bytes: u64) {
        self.held.push_back(Held { seq: None, kind, len_bytes, output });
        self.held_bytes += len_bytes;
        self.untied += 1;
    }

    /// The exit in progress, at `landmark`, is complete (every entry of it was sent). Its
    /// outputs are tied to a progress entry for `landmark`, sent now through `channel`.
    pub fn exit_done(&mut self, channel: &mut PrimaryCore, landmark: u64, now_ns: u64) {
        if self.untied == 0 {
            return;
        }
        // Only a paired primary needs the entry; a failed send is noticed by `next_step`.
        let seq = match self.role {
            PrimaryRole::Paired => {
                channel.send(&Entry::Progress { landmark }, now_ns).map_or(0, |sent| sent.seq)
            }
            _ => 0,
        };
        for held in self.held.iter_mut().rev().take(self.untied) {
            held.seq = Some(seq);
        }
        self.untied = 0;
    }

    /// What the releaser does next, given the channel's state at `now_ns`.
    pub fn next_step(&mut self, channel: &PrimaryCore, now_ns: u64) -> PrimaryStep<T> {
        if self.role == PrimaryRole::Paired {
            if let Some(error) = channel.error() {
                let why = format!("backup presumed dead ({error})");
                self.role = PrimaryRole::LostBackup {
                    why,
                    asks_at_ns: now_ns.saturating_add(self.defer_ns),
                };
            }
        }
        if let PrimaryRole::LostBackup { why, asks_at_ns } = &self.role {
            if now_ns < *asks_at_ns {
                return PrimaryStep::WaitUntil(*asks_at_ns);
            }
            let why = why.clone();
            self.role = PrimaryRole::Arbitrating;
            return PrimaryStep::AskArbiter(why);
        }
        let Some(front) = self.held.front() else { return PrimaryStep::Idle };
        if self.output_failed.is_some() || matches!(self.role, PrimaryRole::Halted(_)) {
            return PrimaryStep::Drop(self.take_front());
        }
        let under_lease = match self.role {
            PrimaryRole::Arbitrating => return PrimaryStep::WaitForVerdict,
            PrimaryRole::LostBackup { .. } => unreachable!("handled above"),
            PrimaryRole::Solo => false,
            PrimaryRole::Paired => {
                let Some(seq) = front.seq else { return PrimaryStep::WaitForExitEnd };
                if channel.acked_seq() < seq || !channel.lease_valid(now_ns) {
                    return PrimaryStep::WaitForAck(seq);
                }
                true
            }
            PrimaryRole::Halted(_) => unreachable!("dropped above"),
        };
        let seq = front.seq.unwrap_or(0);
        if under_lease {
            self.released_under_lease += 1;
        }
        PrimaryStep::Release { output: self.take_front(), seq, under_lease }
    }

    fn take_front(&mut self) -> T {
        let held = self.held.pop_front().expect("the caller saw a front");
        if held.seq.is_none() {
            self.untied -= 1;
        }
        self.performing.push_back((held.kind, held.len_bytes));
        held.output
    }

    /// The arbiter's verdict after [`PrimaryStep::AskArbiter`]: `Ok` if this side won, else why
    /// it halts.
    pub fn arbiter_said(&mut self, verdict: Result<(), String>) {
        self.role = match verdict {
            Ok(()) => PrimaryRole::Solo,
            Err(reason) => PrimaryRole::Halted(reason),
        };
    }

    /// The output handed out first among those not yet done was performed (`Ok`), failed on
    /// the host (`Err`, why), or dropped (`None`). A successful release is counted, and
    /// reported to the backup through `channel` when the releaser has caught up or every
    /// [`REPORT_EVERY`] outputs.
    pub fn output_done(
        &mut self,
        channel: &mut PrimaryCore,
        result: Option<Result<(), String>>,
        now_ns: u64,
    ) {
        let (kind, len_bytes) = self.performing.pop_front().expect("an output was handed out");
        self.held_bytes -= len_bytes;
        match result {
            Some(Ok(())) if self.released.count(kind) => self.unreported += 1,
            Some(Ok(())) => {}
            Some(Err(reason)) => {
                self.output_failed.get_or_insert(reason);
            }
            None => {}
        }
        let caught_up = self.held.is_empty();
        if self.unreported > 0
            && (caught_up || self.unreported >= REPORT_EVERY)
            && self.role == PrimaryRole::Paired
        {
            // A failed send is noticed by `next_step`.
            let _ = channel.send(&self.released.entry(), now_ns);
            self.unreported = 0;
        }
    }

    /// How the run must end, if it must: checked by the vCPU loop at every landmark.
    pub fn end(&self) -> Option<PrimaryEnd> {
        if let Some(reason) = &self.output_failed {
            return Some(PrimaryEnd::OutputFailed(reason.clone()));
        }
        match &self.role {
            PrimaryRole::Halted(reason) => Some(PrimaryEnd::Halted(reason.clone())),
            _ => None,
        }
    }

    /// The outputs held and not yet handed out, oldest first.
    pub fn held(&self) -> impl Iterator<Item = &T> {
        self.held.iter().map(|held| &held.output)
    }

    /// Whether an output of `kind` was handed out and is not done yet.
    pub fn performing(&self, kind: OutputKind) -> bool {
        self.performing.iter().any(|(performing, _)| *performing == kind)
    }

    /// Whether nothing is held or being performed.
    pub fn drained(&self) -> bool {
        self.held.is_empty() && self.performing.is_empty()
    }

    /// Outputs released under the lease so far.
    pub fn released_under_lease(&self) -> u64 {
        self.released_under_lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{BackupCore, ChannelConfig, ChannelError};
    use crate::SessionKey;

    const MS: u64 = 1_000_000;

    /// A primary core and a backup core joined directly, and the pair's core on top.
    struct Harness {
        channel: PrimaryCore,
        backup: BackupCore,
        pair: PrimaryPair<&'static str>,
    }

    impl Harness {
        fn new(max_held_bytes: u64) -> Self {
            let (config, key) = (ChannelConfig::default(), SessionKey::from_bytes([9; 32]));
            Harness {
                channel: PrimaryCore::new(&config, 0, &key),
                backup: BackupCore::new(&config, 0, &key),
                pair: PrimaryPair::new(max_held_bytes, 0),
            }
        }

        /// Delivers everything sent to the backup and its acks back, at `now_ns`.
        fn exchange(&mut self, now_ns: u64) {
            let mut bytes = Vec::new();
            self.channel.take_output(&mut bytes);
            self.backup.handle_input(&bytes, now_ns).unwrap();
            let mut acks = Vec::new();
            self.backup.take_output(&mut acks);
            self.backup.acks_sent();
            self.channel.handle_input(&acks, now_ns).unwrap();
        }

        fn step(&mut self, now_ns: u64) -> PrimaryStep<&'static str> {
            self.pair.next_step(&self.channel, now_ns)
        }
    }

    #[test]
    fn an_output_waits_for_the_end_of_its_exit_then_for_the_ack_of_that_entry() {
        let mut harness = Harness::new(1 << 20);
        harness.pair.hold("frame", OutputKind::Packet, 60);
        assert_eq!(harness.step(MS), PrimaryStep::WaitForExitEnd);
        harness.pair.exit_done(&mut harness.channel, 4, MS);
        assert_eq!(harness.step(MS), PrimaryStep::WaitForAck(1));
        harness.exchange(2 * MS);
        let step = harness.step(2 * MS);
        assert_eq!(step, PrimaryStep::Release { output: "frame", seq: 1, under_lease: true });
        harness.pair.output_done(&mut harness.channel, Some(Ok(())), 2 * MS);
        assert!(harness.pair.drained());
        // The release was reported to the backup (the entry after the progress entry).
        harness.exchange(3 * MS);
        let reported: Vec<Entry> =
            std::iter::from_fn(|| harness.backup.next_entry()).map(|r| r.entry).collect();
        assert_eq!(
            reported,
            vec![
                Entry::Progress { landmark: 4 },
                Entry::Released { packets: 1, console_writes: 0, disk_writes: 0 }
            ]
        );
    }

    #[test]
    fn no_release_once_the_lease_has_lapsed() {
        let mut harness = Harness::new(1 << 20);
        harness.pair.hold("frame", OutputKind::Packet, 60);
        harness.pair.exit_done(&mut harness.channel, 1, 0);
        harness.exchange(0);
        let timeout_ns = ChannelConfig::default().failure_timeout_ms * MS;
        assert_eq!(harness.step(timeout_ns), PrimaryStep::WaitForAck(1));
    }

    #[test]
    fn a_lost_backup_means_asking_the_arbiter_and_the_verdict_decides() {
        for won in [true, false] {
            let mut harness = Harness::new(1 << 20);
            harness.pair.hold("frame", OutputKind::Packet, 60);
            harness.pair.exit_done(&mut harness.channel, 1, 0);
            harness.channel.fail(ChannelError::Closed);
            assert!(matches!(harness.step(MS), PrimaryStep::AskArbiter(_)));
            assert_eq!(harness.step(MS), PrimaryStep::WaitForVerdict);
            assert_eq!(harness.pair.end(), None);
            harness.pair.arbiter_said(if won { Ok(()) } else { Err("lost".into()) });
            let step = harness.step(MS);
            if won {
                assert_eq!(
                    step,
                    PrimaryStep::Release { output: "frame", seq: 1, under_lease: false }
                );
                assert_eq!(harness.pair.end(), None);
            } else {
                assert_eq!(step, PrimaryStep::Drop("frame"));
                assert_eq!(harness.pair.end(), Some(PrimaryEnd::Halted("lost".into())));
            }
        }
    }

    #[test]
    fn a_failed_output_drops_everything_after_it_and_ends_the_run() {
        let mut harness = Harness::new(1 << 20);
        harness.pair.hold("write", OutputKind::DiskWrite, 512);
        harness.pair.hold("frame", OutputKind::Packet, 60);
        harness.pair.exit_done(&mut harness.channel, 1, 0);
        harness.exchange(0);
        assert!(matches!(harness.step(0), PrimaryStep::Release { output: "write", .. }));
        harness.pair.output_done(&mut harness.channel, Some(Err("EIO".into())), 0);
        assert_eq!(harness.step(0), PrimaryStep::Drop("frame"));
        assert_eq!(harness.pair.end(), Some(PrimaryEnd::OutputFailed("EIO".into())));
    }

    #[test]
    fn held_bytes_are_bounded_but_one_large_output_still_goes() {
        let mut harness = Harness::new(100);
        assert!(harness.pair.has_room_for(1_000), "nothing held: any size goes");
        harness.pair.hold("big", OutputKind::Packet, 1_000);
        assert!(!harness.pair.has_room_for(1));
        harness.pair.exit_done(&mut harness.channel, 1, 0);
        harness.exchange(0);
        assert!(matches!(harness.step(0), PrimaryStep::Release { .. }));
        assert!(!harness.pair.has_room_for(1), "still being performed");
        harness.pair.output_done(&mut harness.channel, Some(Ok(())), 0);
        assert!(harness.pair.has_room_for(100));
    }
}
