//! The sans-IO channel cores, driven by hand: delivery in order under any chunking of both byte
//! streams, acks, the unacknowledged tail, heartbeats, failure timeouts, and bad data that is
//! reported and never delivered.

use logchannel::channel::session::{Direction, OpenError, TAG_LEN_BYTES};
use logchannel::channel::{BackupCore, BackupMessage, ChannelConfig, ChannelError, PrimaryCore};
use logchannel::{Entry, ExecPoint, FrameEncoder, Input, InputEntry, SessionKey};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

fn session() -> SessionKey {
    SessionKey::from_bytes([5; 32])
}

/// Sealed ack frames as the backup would send them, for acked sequence numbers `acked`.
fn acks_of(acked: &[(u64, bool)]) -> Vec<u8> {
    let (mut encoder, mut sealer) =
        (FrameEncoder::new(1, 0), session().sealer(Direction::BackupToPrimary));
    let mut bytes = Vec::new();
    for &(acked_seq, receiving) in acked {
        let start = bytes.len();
        let ack =
            BackupMessage::Ack { acked_seq, replayed_seq: acked_seq, receiving, announced: 0 };
        encoder.encode(&ack, &mut bytes).unwrap();
        sealer.seal(&mut bytes, start);
    }
    bytes
}

fn input(landmark: u64, input: Input) -> Entry {
    Entry::Input(InputEntry {
        point: ExecPoint { landmark, rip: landmark ^ 0x20_1000 },
        regs_hash: landmark.wrapping_mul(7),
        input,
    })
}

/// Any entry the backup core hands out as soon as it is acked: inputs of landmark 0 (before
/// the first exit, so their exit is complete) and progress entries. The handing out of
/// incomplete exits has tests of its own below.
fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        any::<u64>().prop_map(|ns| input(0, Input::MonotonicNs(ns))),
        any::<u64>().prop_map(|ns| input(0, Input::WallNs(ns))),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|bytes| input(0, Input::Entropy(bytes))),
        any::<u64>().prop_map(|landmark| Entry::Progress { landmark }),
    ]
}

/// Moves `bytes` in chunks of the cycled lengths, calling `deliver` on each.
fn in_chunks(bytes: &[u8], chunk_lens_bytes: &[usize], mut deliver: impl FnMut(&[u8])) {
    let mut remaining = bytes;
    for &len_bytes in chunk_lens_bytes.iter().cycle() {
        if remaining.is_empty() {
            return;
        }
        let (chunk, rest) = remaining.split_at(len_bytes.clamp(1, remaining.len()));
        deliver(chunk);
        remaining = rest;
    }
}

/// Changes the primary's bytes on their way to the backup.
type Tamper<'a> = &'a mut dyn FnMut(&mut Vec<u8>);

/// A primary and a backup core joined by an in-memory wire.
struct Pair {
    primary: PrimaryCore,
    backup: BackupCore,
    delivered: Vec<(u64, Entry)>,
    backup_error: Option<ChannelError>,
}

impl Pair {
    fn new() -> Self {
        let config = ChannelConfig::default();
        Pair {
            primary: PrimaryCore::new(&config, 0, &session()),
            backup: BackupCore::new(&config, 0, &session()),
            delivered: Vec::new(),
            backup_error: None,
        }
    }

    /// Sends every byte the primary has to the backup, then every ack back, in chunks.
    fn exchange(&mut self, wire: Option<Tamper<'_>>, chunks: &[usize], ack_chunks: &[usize]) {
        let mut bytes = Vec::new();
        self.primary.take_output(&mut bytes);
        if let Some(tamper) = wire {
            tamper(&mut bytes);
        }
        let acked_before = self.backup.acked_seq();
        let (backup, error) = (&mut self.backup, &mut self.backup_error);
        in_chunks(&bytes, chunks, |chunk| {
            if let Err(failure) = backup.handle_input(chunk, 1) {
                error.get_or_insert(failure);
            }
        });
        let mut acks = Vec::new();
        self.backup.take_output(&mut acks);
        if self.backup_error.is_none() {
            // Nothing is handed out before its ack is sent (entries acked before may be, once
            // their exit is complete).
            while let Some(received) = self.backup.next_entry() {
                assert!(received.seq <= acked_before, "handed out before its ack was sent");
                self.delivered.push((received.seq, received.entry));
            }
        }
        self.backup.acks_sent();
        while let Some(received) = self.backup.next_entry() {
            self.delivered.push((received.seq, received.entry));
        }
        let primary = &mut self.primary;
        in_chunks(&acks, ack_chunks, |chunk| {
            primary.handle_input(chunk, 1).expect("acks are valid");
        });
    }
}

fn numbered(entries: &[Entry]) -> Vec<(u64, Entry)> {
    (1..).zip(entries.iter().cloned()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn delivered_in_order_and_acked_under_any_chunking(
        batches in proptest::collection::vec(proptest::collection::vec(entry(), 0..20), 1..6),
        chunks in proptest::collection::vec(1usize..120, 1..30),
        ack_chunks in proptest::collection::vec(1usize..12, 1..10),
    ) {
        let mut pair = Pair::new();
        let mut sent = Vec::new();
        for batch in &batches {
            for entry in batch {
                let receipt = pair.primary.send(entry, 1).unwrap();
                prop_assert_eq!(receipt.seq, sent.len() as u64 + 1);
                sent.push(entry.clone());
            }
            prop_assert_eq!(pair.primary.unacked_entries(), pair.primary.last_seq() - pair.primary.acked_seq());
            pair.exchange(None, &chunks, &ack_chunks);
            prop_assert!(pair.backup_error.is_none());
            prop_assert_eq!(&pair.delivered, &numbered(&sent));
            prop_assert_eq!(pair.primary.acked_seq(), sent.len() as u64);
            prop_assert_eq!(pair.primary.unacked_bytes(), 0);
            prop_assert_eq!(pair.primary.unacked_age_ns(5), 0);
        }
    }

    #[test]
    fn a_corrupted_byte_is_reported_and_nothing_from_its_frame_on_is_delivered(
        entries in proptest::collection::vec(entry(), 1..30),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        chunks in proptest::collection::vec(1usize..120, 1..30),
    ) {
        let mut pair = Pair::new();
        let mut frame_starts_bytes = Vec::new();
        let mut offset_bytes = 0;
        for entry in &entries {
            frame_starts_bytes.push(offset_bytes);
            offset_bytes +=
                pair.primary.send(entry, 1).unwrap().frame_len_bytes + TAG_LEN_BYTES as u64;
        }
        let position = position.index(offset_bytes as usize) as u64;
        let corrupted_frame = frame_starts_bytes.partition_point(|&start| start <= position) - 1;
        let mut tamper = |bytes: &mut Vec<u8>| bytes[position as usize] ^= flip;
        pair.exchange(Some(&mut tamper), &chunks, &[64]);
        // Everything before the corrupted frame, nothing from it on.
        prop_assert_eq!(&pair.delivered, &numbered(&entries[..corrupted_frame]));
        prop_assert_eq!(pair.primary.acked_seq(), corrupted_frame as u64);
        match &pair.backup_error {
            Some(ChannelError::Unauthenticated { source: OpenError::BadTag { index }, .. }) => {
                prop_assert_eq!(*index, corrupted_frame as u64);
            }
            Some(ChannelError::Unauthenticated { source: OpenError::TooLong { index, .. }, .. }) => {
                prop_assert_eq!(*index, corrupted_frame as u64);
                prop_assert!(position - frame_starts_bytes[corrupted_frame] < 4);
            }
            Some(other) => prop_assert!(false, "unexpected error {}", other),
            // Only a length field corrupted upwards can leave the backup waiting for bytes that
            // will never complete the frame; on a live channel the next frames would, and the
            // checksum would then fail.
            None => prop_assert!(position - frame_starts_bytes[corrupted_frame] < 4),
        }
        // Sticky: more valid-looking input does not revive it.
        if pair.backup_error.is_some() {
            prop_assert!(pair.backup.handle_input(&[0; 16], 2).is_err());
            prop_assert!(pair.backup.next_entry().is_none());
        }
    }
}

#[test]
fn duplicated_frame_is_reported_and_delivered_once() {
    let mut pair = Pair::new();
    pair.primary.send(&Entry::Progress { landmark: 1 }, 0).unwrap();
    let mut duplicate = |bytes: &mut Vec<u8>| {
        let copy = bytes.clone();
        bytes.extend_from_slice(&copy);
    };
    pair.exchange(Some(&mut duplicate), &[1000], &[64]);
    assert_eq!(pair.delivered, vec![(1, Entry::Progress { landmark: 1 })]);
    let error = pair.backup_error.expect("duplicate reported");
    assert!(error.to_string().contains("authentication checksum"), "{error}");
    assert!(!error.is_peer_failure());
}

#[test]
fn heartbeats_are_sent_when_idle_and_carry_the_last_progress() {
    let config =
        ChannelConfig { heartbeat_interval_ms: 20, failure_timeout_ms: 300, ..Default::default() };
    let mut primary = PrimaryCore::new(&config, 0, &session());
    let mut backup = BackupCore::new(&config, 0, &session());
    let mut bytes = Vec::new();
    primary.poll(19 * MS).unwrap();
    backup.poll(19 * MS).unwrap();
    primary.take_output(&mut bytes);
    backup.take_output(&mut bytes);
    assert!(bytes.is_empty(), "nothing due before the interval");

    primary.send(&Entry::Progress { landmark: 42 }, 19 * MS).unwrap();
    primary.poll(38 * MS).unwrap(); // 19 ms after the last send: not yet.
    primary.poll(39 * MS).unwrap();
    assert_eq!(primary.heartbeats_sent(), 1);
    primary.take_output(&mut bytes);
    backup.handle_input(&bytes, 40 * MS).unwrap();
    let mut acks = Vec::new();
    backup.take_output(&mut acks);
    backup.acks_sent();
    let received: Vec<Entry> =
        std::iter::from_fn(|| backup.next_entry()).map(|r| r.entry).collect();
    assert_eq!(received, vec![Entry::Progress { landmark: 42 }, Entry::Progress { landmark: 42 }]);

    // The backup acked on receipt; its next heartbeat is a repeated ack.
    assert_eq!(primary.handle_input(&acks, 41 * MS).unwrap(), 2);
    backup.poll(60 * MS).unwrap();
    acks.clear();
    backup.take_output(&mut acks);
    assert!(!acks.is_empty());
    assert_eq!(primary.handle_input(&acks, 61 * MS).unwrap(), 2);
    assert_eq!(primary.next_wakeup_ns(), 59 * MS, "the next heartbeat");
}

#[test]
fn silence_past_the_timeout_is_peer_death_on_both_sides() {
    let config =
        ChannelConfig { heartbeat_interval_ms: 20, failure_timeout_ms: 300, ..Default::default() };
    let mut primary = PrimaryCore::new(&config, 0, &session());
    let mut backup = BackupCore::new(&config, 0, &session());
    primary.poll(300 * MS).unwrap();
    backup.poll(300 * MS).unwrap();
    let error = primary.poll(301 * MS).unwrap_err();
    assert!(matches!(
        error,
        ChannelError::PeerSilent { silent_ms: 301, failure_timeout_ms: 300, .. }
    ));
    assert!(error.is_peer_failure());
    assert!(error.to_string().contains("backup is presumed dead"), "{error}");
    assert!(primary.send(&Entry::Progress { landmark: 1 }, 302 * MS).is_err(), "sticky");
    let error = backup.poll(301 * MS).unwrap_err();
    assert!(error.to_string().contains("primary is presumed dead"), "{error}");
}

#[test]
fn a_paused_backup_does_not_hold_silence_against_the_primary() {
    let config =
        ChannelConfig { heartbeat_interval_ms: 20, failure_timeout_ms: 300, ..Default::default() };
    let mut backup = BackupCore::new(&config, 0, &session());
    backup.set_paused(true, 100 * MS);
    backup.poll(1_000 * MS).unwrap();
    backup.set_paused(false, 1_000 * MS);
    backup.poll(1_300 * MS).unwrap();
    assert!(backup.poll(1_301 * MS).is_err());
}

#[test]
fn the_unacknowledged_tail_is_measured_in_bytes_and_age() {
    let mut primary = PrimaryCore::new(&ChannelConfig::default(), 0, &session());
    let first = primary.send(&input(1, Input::Entropy(vec![7; 100])), 10 * MS).unwrap();
    let second = primary.send(&input(2, Input::MonotonicNs(5)), 15 * MS).unwrap();
    assert_eq!(primary.unacked_bytes(), first.frame_len_bytes + second.frame_len_bytes);
    assert_eq!(primary.unacked_age_ns(25 * MS), 15 * MS);
    let acks = acks_of(&[(1, true)]);
    assert_eq!(primary.handle_input(&acks, 26 * MS).unwrap(), 1);
    assert_eq!(primary.unacked_bytes(), second.frame_len_bytes);
    assert_eq!(primary.unacked_age_ns(25 * MS), 10 * MS);
}

#[test]
fn an_ack_of_entries_never_sent_is_a_protocol_violation() {
    let mut primary = PrimaryCore::new(&ChannelConfig::default(), 0, &session());
    primary.send(&Entry::Progress { landmark: 1 }, 0).unwrap();
    let acks = acks_of(&[(2, true)]);
    let error = primary.handle_input(&acks, 1).unwrap_err();
    assert!(matches!(error, ChannelError::Protocol { .. }), "{error}");
    assert!(!primary.error().unwrap().is_peer_failure());
}

#[test]
fn a_corrupted_ack_is_reported() {
    let mut primary = PrimaryCore::new(&ChannelConfig::default(), 0, &session());
    primary.send(&Entry::Progress { landmark: 1 }, 0).unwrap();
    let mut acks = acks_of(&[(1, true)]);
    *acks.last_mut().unwrap() ^= 0x40;
    assert!(matches!(primary.handle_input(&acks, 1), Err(ChannelError::Unauthenticated { .. })));
    assert_eq!(primary.acked_seq(), 0);
}

const TIMEOUT: ChannelConfig = ChannelConfig {
    heartbeat_interval_ms: 20,
    failure_timeout_ms: 300,
    connect_timeout_ms: 5_000,
    handshake_timeout_ms: 3_000,
    max_received_bytes: 1 << 20,
    lease_rule: logchannel::LeaseRule::AckOfEntrySent,
};

#[test]
fn an_ack_extends_the_lease_from_the_send_time_of_its_entry_only() {
    // Failure timeout 300 ms, margin 30 ms: an ack of an entry sent at T allows release until
    // T + 270 ms, however late the ack arrives and however often it is repeated.
    let mut primary = PrimaryCore::new(&TIMEOUT, 0, &session());
    assert!(!primary.lease_valid(MS), "no lease before any ack");
    primary.send(&Entry::Progress { landmark: 1 }, 10 * MS).unwrap();
    primary.handle_input(&acks_of(&[(1, true)]), 200 * MS).unwrap();
    assert!(primary.lease_valid(279 * MS));
    assert!(!primary.lease_valid(280 * MS));
    // A heartbeat (a repeated ack) arriving later proves nothing new.
    let repeated = acks_of(&[(1, true), (1, true)]);
    primary.handle_input(&repeated[repeated.len() / 2..], 290 * MS).unwrap();
    assert!(!primary.lease_valid(290 * MS));
}

#[test]
fn repeated_heartbeats_do_not_renew_the_lease() {
    let mut primary = PrimaryCore::new(&TIMEOUT, 0, &session());
    primary.send(&Entry::Progress { landmark: 1 }, 10 * MS).unwrap();
    primary.handle_input(&acks_of(&[(1, true), (1, true), (1, true)]), 20 * MS).unwrap();
    assert!(!primary.lease_valid(280 * MS));
    primary.send(&Entry::Progress { landmark: 2 }, 250 * MS).unwrap();
    assert!(!primary.lease_valid(281 * MS), "sending alone renews nothing");
}

#[test]
fn a_backup_that_hears_nothing_new_is_presumed_dead_though_its_heartbeats_arrive() {
    // The link cut from the primary to the backup only: the backup's heartbeats still arrive,
    // acking nothing new.
    let mut primary = PrimaryCore::new(&TIMEOUT, 0, &session());
    primary.send(&Entry::Progress { landmark: 1 }, 0).unwrap();
    let heartbeats = acks_of(&[(0, true); 20]);
    let one = heartbeats.len() / 20;
    for (index, at_ms) in (0..20).zip((20..).step_by(20)) {
        let outcome = primary
            .handle_input(&heartbeats[index * one..(index + 1) * one], at_ms * MS)
            .and_then(|_| primary.poll(at_ms * MS));
        if at_ms <= 300 {
            outcome.unwrap();
        } else {
            let error = outcome.unwrap_err();
            assert!(matches!(error, ChannelError::Unacknowledged { .. }), "{error}");
            assert!(error.is_peer_failure());
            return;
        }
    }
    panic!("never presumed dead");
}

#[test]
fn a_backup_behind_on_replay_is_waited_for() {
    // Acks stall because the backup stopped reading (its queue is full) and says so.
    let mut primary = PrimaryCore::new(&TIMEOUT, 0, &session());
    primary.send(&Entry::Progress { landmark: 1 }, 0).unwrap();
    let heartbeats = acks_of(&[(0, false); 50]);
    let one = heartbeats.len() / 50;
    for (index, at_ms) in (0..50).zip((20..).step_by(20)) {
        primary.handle_input(&heartbeats[index * one..(index + 1) * one], at_ms * MS).unwrap();
        primary.poll(at_ms * MS).unwrap();
    }
    assert!(!primary.lease_valid(MS), "but nothing may be released meanwhile");
}

#[test]
fn the_lag_is_measured_on_what_the_backup_replayed_not_on_what_it_received() {
    let mut primary = PrimaryCore::new(&TIMEOUT, 0, &session());
    let first = primary.send(&input(1, Input::MonotonicNs(1)), 10 * MS).unwrap();
    let second = primary.send(&input(2, Input::MonotonicNs(2)), 20 * MS).unwrap();
    // Both received, only the first replayed.
    let ack = BackupMessage::Ack { acked_seq: 2, replayed_seq: 1, receiving: true, announced: 0 };
    let (mut encoder, mut sealer) =
        (FrameEncoder::new(1, 0), session().sealer(Direction::BackupToPrimary));
    let mut bytes = Vec::new();
    encoder.encode(&ack, &mut bytes).unwrap();
    sealer.seal(&mut bytes, 0);
    primary.handle_input(&bytes, 30 * MS).unwrap();
    assert_eq!((primary.acked_seq(), primary.replayed_seq()), (2, 1));
    assert_eq!(primary.unacked_bytes(), 0);
    assert_eq!(primary.unreplayed_bytes(), second.frame_len_bytes);
    assert_eq!(primary.unreplayed_age_ns(50 * MS), 30 * MS);
    assert!(first.frame_len_bytes > 0);
    // Replayed beyond what was received makes no sense.
    let bad = BackupMessage::Ack { acked_seq: 2, replayed_seq: 3, receiving: true, announced: 0 };
    let start = bytes.len();
    encoder.encode(&bad, &mut bytes).unwrap();
    sealer.seal(&mut bytes, start);
    let error = primary.handle_input(&bytes[start..], 40 * MS).unwrap_err();
    assert!(matches!(error, ChannelError::Protocol { .. }), "{error}");
}

/// Sends `entries` and exchanges them; returns the sequence numbers delivered since.
fn deliver(pair: &mut Pair, entries: &[Entry]) -> Vec<u64> {
    let before = pair.delivered.len();
    for entry in entries {
        pair.primary.send(entry, 1).unwrap();
    }
    pair.exchange(None, &[1000], &[64]);
    pair.delivered[before..].iter().map(|(seq, _)| *seq).collect()
}

#[test]
fn an_exit_is_handed_out_only_once_something_proves_it_complete() {
    let mut pair = Pair::new();
    let clock = |landmark| input(landmark, Input::MonotonicNs(landmark));
    assert_eq!(deliver(&mut pair, &[clock(5), clock(5)]), Vec::<u64>::new(), "exit 5 may go on");
    // An input of a later exit proves every earlier one complete.
    assert_eq!(deliver(&mut pair, &[clock(7)]), vec![1, 2]);
    // So does a progress entry for the exit (the end of an exit with output, a heartbeat).
    assert_eq!(deliver(&mut pair, &[Entry::Progress { landmark: 7 }]), vec![3, 4]);
    // And the end of the run.
    assert_eq!(deliver(&mut pair, &[clock(9)]), Vec::<u64>::new());
    let end = Entry::RunEnd(logchannel::RunEnd {
        landmarks: 9,
        outcome: "powered off".into(),
        exit_status: 0,
        console_hash: 0,
        memory_hash: 0,
        regs_hash: 0,
        stopped: false,
    });
    assert_eq!(deliver(&mut pair, &[end]), vec![5, 6]);
}

#[test]
fn after_a_failure_the_exit_the_primary_did_not_finish_is_never_handed_out() {
    let mut pair = Pair::new();
    let clock = |landmark| input(landmark, Input::MonotonicNs(landmark));
    assert_eq!(deliver(&mut pair, &[clock(3), clock(4), clock(4)]), vec![1]);
    pair.backup.handle_eof();
    assert!(pair.backup.next_entry().is_none(), "exit 4 was not finished");
    assert!(pair.backup.error().is_some());
}
