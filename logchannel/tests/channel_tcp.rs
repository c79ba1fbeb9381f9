//! The log channel over loopback TCP: delivery and acks, a byte corrupted on the wire (by a
//! proxy between the sides), a connection cut or silenced, the lag bound, backpressure.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use logchannel::channel::session::Direction;
use logchannel::channel::{
    handshake, BackupLink, BackupListener, BackupMessage, ChannelConfig, ChannelError, Peer,
    PrimaryLink,
};
use logchannel::{Credentials, Devices, Entry, ExecPoint, FrameEncoder, Input, InputEntry};

const LONG: Duration = Duration::from_secs(10);

fn input(landmark: u64) -> Entry {
    Entry::Input(InputEntry {
        point: ExecPoint { landmark, rip: 0x20_1000 },
        regs_hash: landmark,
        input: Input::MonotonicNs(landmark * 1000),
    })
}

fn config(failure_timeout_ms: u64) -> ChannelConfig {
    ChannelConfig { heartbeat_interval_ms: 20, failure_timeout_ms, ..Default::default() }
}

fn credentials() -> Credentials {
    Credentials { pair_id: "test-pair".into(), key: [42; 32], generation: 1 }
}

fn connect(addr: SocketAddr, config: &ChannelConfig) -> PrimaryLink {
    PrimaryLink::connect(addr, config, &credentials(), Devices::default()).unwrap()
}

/// A listener on loopback and a thread accepting the backup's end on it.
fn backup_listening(config: ChannelConfig) -> (SocketAddr, JoinHandle<BackupLink>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = move || {
        let listener =
            BackupListener::start(listener, &config, &credentials(), |_| Ok(()), |_| {}).unwrap();
        let accepted = listener.next(LONG).expect("a primary within 10 s");
        BackupLink::from_stream(accepted.stream, &config, &accepted.session).unwrap()
    };
    (addr, thread::spawn(accept))
}

fn pair(primary_config: ChannelConfig, backup_config: ChannelConfig) -> (PrimaryLink, BackupLink) {
    let (addr, backup) = backup_listening(backup_config);
    let primary = connect(addr, &primary_config);
    (primary, backup.join().unwrap())
}

/// Receives until an error, skipping heartbeats; returns the entries and the error.
fn recv_until_error(backup: &BackupLink) -> (Vec<Entry>, ChannelError) {
    let mut entries = Vec::new();
    loop {
        match backup.recv(LONG) {
            Ok(Some(Entry::Progress { .. })) => {}
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => panic!("nothing for {LONG:?}"),
            Err(error) => return (entries, error),
        }
    }
}

/// Waits until `done` holds, for at most `limit`; returns how long it took.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// A TCP proxy from the primary to the backup that can flip one byte of the primary's stream
/// and can silently drop everything in both directions (a partition that keeps both
/// connections open).
struct Proxy {
    addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    fn start(backup_addr: SocketAddr, corrupt_offset_bytes: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&blackhole);
        thread::spawn(move || {
            let (primary, _) = listener.accept().unwrap();
            let backup = TcpStream::connect(backup_addr).unwrap();
            let (primary_in, backup_out) =
                (primary.try_clone().unwrap(), backup.try_clone().unwrap());
            let flag_in = Arc::clone(&flag);
            thread::spawn(move || forward(primary_in, backup_out, corrupt_offset_bytes, &flag_in));
            forward(backup, primary, None, &flag);
        });
        Proxy { addr, blackhole }
    }
}

fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    corrupt_offset_bytes: Option<u64>,
    blackhole: &AtomicBool,
) {
    let mut chunk = [0u8; 4096];
    let mut offset_bytes = 0u64;
    loop {
        let len_bytes = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(len_bytes) => len_bytes,
        };
        let bytes = &mut chunk[..len_bytes];
        if let Some(at) = corrupt_offset_bytes {
            if (offset_bytes..offset_bytes + len_bytes as u64).contains(&at) {
                bytes[(at - offset_bytes) as usize] ^= 0x10;
            }
        }
        offset_bytes += len_bytes as u64;
        if !blackhole.load(Ordering::SeqCst) && to.write_all(bytes).is_err() {
            break;
        }
    }
    if blackhole.load(Ordering::SeqCst) {
        // A partition passes no FIN either: keep the other connection open a while.
        thread::sleep(Duration::from_secs(5));
    } else {
        let _ = to.shutdown(Shutdown::Write);
    }
}

#[test]
fn entries_arrive_in_order_and_are_acked() {
    let (primary, backup) = pair(config(300), config(300));
    let count = 5_000;
    let mut last_seq = 0;
    for landmark in 1..=count {
        let sent = primary.send(&input(landmark)).unwrap();
        assert!(sent.seq > last_seq);
        last_seq = sent.seq;
    }
    // The last exit is handed out once a heartbeat says it is complete.
    primary.note_exits_complete(count);
    let mut received = Vec::new();
    while received.len() < count as usize {
        match backup.recv_frame(LONG).unwrap().expect("an entry") {
            logchannel::Received { entry: Entry::Progress { .. }, .. } => {}
            frame => received.push(frame),
        }
    }
    for (landmark, frame) in (1..).zip(&received) {
        assert_eq!(frame.entry, input(landmark));
        assert!(frame.frame_len_bytes > 8);
    }
    assert!(received.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert!(primary.wait_releasable(last_seq, Instant::now() + LONG).unwrap());
    assert!(primary.acked_seq() >= last_seq);
    let stats = primary.stats();
    assert!(stats.sent_seq >= last_seq && stats.sent_bytes > 0);
    assert!(primary.peer_alive() && backup.peer_alive());
}

#[test]
fn an_idle_link_stays_alive_on_heartbeats() {
    let (primary, backup) = pair(config(150), config(150));
    primary.send(&Entry::Progress { landmark: 7 }).unwrap();
    thread::sleep(Duration::from_millis(600));
    assert!(primary.peer_alive() && backup.peer_alive());
    let stats = primary.stats();
    assert!(stats.heartbeats_sent >= 5, "{stats:?}");
    // The heartbeats are progress entries repeating the last landmark announced (0 before it,
    // if the test thread was slow to send it).
    while backup.recv(LONG).unwrap() != Some(Entry::Progress { landmark: 7 }) {}
    for _ in 0..5 {
        assert_eq!(backup.recv(LONG).unwrap(), Some(Entry::Progress { landmark: 7 }));
    }
}

#[test]
fn a_corrupted_byte_on_the_wire_is_reported_and_nothing_after_it_is_delivered() {
    let entries: Vec<Entry> = (1..=200).map(input).collect();
    // Past the handshake (a few hundred bytes), inside the stream of entries.
    let corrupt_offset_bytes = 3_000;
    let (backup_addr, backup) = backup_listening(config(300));
    let proxy = Proxy::start(backup_addr, Some(corrupt_offset_bytes));
    // No heartbeats from the primary, so the stream is exactly the entries.
    let quiet = ChannelConfig { heartbeat_interval_ms: 60_000, ..config(300) };
    let primary = connect(proxy.addr, &quiet);
    let backup = backup.join().unwrap();
    for entry in &entries {
        // The backup may refuse the stream (and close) while later entries are still sent.
        if primary.send(entry).is_err() {
            break;
        }
    }
    let (received, error) = recv_until_error(&backup);
    assert!(received.len() > 10 && received.len() < entries.len(), "{}", received.len());
    assert_eq!(received, entries[..received.len()]);
    let ChannelError::Unauthenticated { peer: Peer::Primary, .. } = &error else {
        panic!("expected a frame failing its tag, got {error}");
    };
    assert!(error.to_string().contains("authentication checksum"), "{error}");
    assert!(!error.is_peer_failure());
    assert!(backup.recv(Duration::from_millis(50)).is_err(), "stays failed");
    // The primary got the acks of the good frames, then lost the connection. The last good
    // one was not handed out: nothing proved its exit complete.
    wait_until(LONG, || !primary.peer_alive());
    assert_eq!(primary.acked_seq(), received.len() as u64 + 1);
}

#[test]
fn dropping_either_side_is_detected_at_once() {
    let (primary, backup) = pair(config(10_000), config(10_000));
    primary.send(&input(1)).unwrap();
    primary.send(&input(2)).unwrap();
    assert!(primary.flush(Instant::now() + LONG).unwrap());
    drop(primary);
    let start = Instant::now();
    let (received, error) = recv_until_error(&backup);
    // Exit 2 was not finished: only exit 1 is handed out.
    assert_eq!(received, vec![input(1)]);
    assert!(matches!(error, ChannelError::Disconnected { peer: Peer::Primary, .. }), "{error}");
    assert!(error.is_peer_failure());
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());

    let (primary, backup) = pair(config(10_000), config(10_000));
    drop(backup);
    wait_until(Duration::from_secs(2), || !primary.peer_alive());
    let error = primary.error().unwrap();
    assert!(error.is_peer_failure(), "{error}");
    assert!(primary.send(&input(2)).is_err());
}

#[test]
fn a_silent_partition_is_detected_by_both_sides_within_the_timeout() {
    let failure_timeout_ms = 200;
    let (backup_addr, backup) = backup_listening(config(failure_timeout_ms));
    let proxy = Proxy::start(backup_addr, None);
    let primary = connect(proxy.addr, &config(failure_timeout_ms));
    let backup = backup.join().unwrap();
    primary.send(&input(1)).unwrap();
    assert!(primary.wait_releasable(1, Instant::now() + LONG).unwrap());

    proxy.blackhole.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let backup_thread = thread::spawn(move || {
        let (_, error) = recv_until_error(&backup);
        (cut.elapsed(), error)
    });
    let primary_took = wait_until(LONG, || !primary.peer_alive());
    let (backup_took, backup_error) = backup_thread.join().unwrap();
    let primary_error = primary.error().unwrap();
    for (took, error, peer) in
        [(primary_took, primary_error, Peer::Backup), (backup_took, backup_error, Peer::Primary)]
    {
        assert!(matches!(error, ChannelError::PeerSilent { peer: p, .. } if p == peer), "{error}");
        // Silence counts from the last byte received, at most a heartbeat interval before the
        // cut; detection comes within a tick or so after the timeout.
        assert!(took >= Duration::from_millis(failure_timeout_ms - 25), "{peer}: {took:?}");
        assert!(took <= Duration::from_millis(failure_timeout_ms + 500), "{peer}: {took:?}");
    }
}

/// A backup that reads and discards the log, and acks only when told to.
struct FakeBackup {
    addr: SocketAddr,
    ack_tx: std::sync::mpsc::Sender<u64>,
}

impl FakeBackup {
    fn start() -> FakeBackup {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<u64>();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let proven = handshake::backup(&mut stream, &credentials(), |_| Ok(()), LONG).unwrap();
            let (_, session) = proven.accept(&mut stream).unwrap();
            stream.set_read_timeout(None).unwrap();
            let mut reader = stream.try_clone().unwrap();
            thread::spawn(move || while reader.read(&mut [0u8; 4096]).is_ok_and(|len| len > 0) {});
            let mut writer = stream;
            let mut encoder = FrameEncoder::new(1, 0);
            let mut sealer = session.sealer(Direction::BackupToPrimary);
            for acked_seq in ack_rx {
                let mut frame = Vec::new();
                let ack = BackupMessage::Ack {
                    acked_seq,
                    replayed_seq: acked_seq,
                    receiving: true,
                    announced: 0,
                };
                encoder.encode(&ack, &mut frame).unwrap();
                sealer.seal(&mut frame, 0);
                writer.write_all(&frame).unwrap();
            }
        });
        FakeBackup { addr, ack_tx }
    }
}

#[test]
fn the_lag_bound_blocks_a_primary_whose_backup_does_not_ack() {
    let fake = FakeBackup::start();
    // No heartbeats: the fake backup acks only what the test tells it to.
    let quiet = ChannelConfig { heartbeat_interval_ms: 60_000, ..config(60_000) };
    let primary = Arc::new(connect(fake.addr, &quiet));
    let mut last_seq = 0;
    let mut unacked_bytes = 0;
    for landmark in 1..=10 {
        let sent = primary.send(&input(landmark)).unwrap();
        (last_seq, unacked_bytes) = (sent.seq, unacked_bytes + sent.frame_len_bytes);
    }
    // Within both bounds: no wait.
    primary.wait_for_room(unacked_bytes, 60_000).unwrap();
    // Over the byte bound: blocks until the backup acks.
    let waiter = {
        let primary = Arc::clone(&primary);
        thread::spawn(move || primary.wait_for_room(unacked_bytes / 2, 60_000))
    };
    thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the byte bound did not block");
    assert!(!primary
        .wait_releasable(last_seq, Instant::now() + Duration::from_millis(50))
        .unwrap());
    fake.ack_tx.send(last_seq).unwrap();
    waiter.join().unwrap().unwrap();
    assert!(primary.wait_releasable(last_seq, Instant::now() + LONG).unwrap());
    assert_eq!(primary.stats().unacked_bytes, 0);

    // Over the age bound: blocks once the oldest unacked entry is older than it.
    let sent = primary.send(&input(11)).unwrap();
    thread::sleep(Duration::from_millis(150));
    let waiter = {
        let primary = Arc::clone(&primary);
        thread::spawn(move || primary.wait_for_room(u64::MAX, 100))
    };
    thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the age bound did not block");
    fake.ack_tx.send(sent.seq).unwrap();
    waiter.join().unwrap().unwrap();
}

#[test]
fn the_lag_bound_gives_up_when_the_backup_is_dead() {
    let fake = FakeBackup::start();
    let primary = connect(fake.addr, &config(200));
    primary.send(&input(1)).unwrap();
    let start = Instant::now();
    let error = primary.wait_for_room(0, 60_000).unwrap_err();
    assert!(matches!(error, ChannelError::PeerSilent { peer: Peer::Backup, .. }), "{error}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(primary.wait_releasable(1, Instant::now() + LONG).is_err());
}

#[test]
fn a_backup_that_does_not_replay_pushes_back_without_either_side_dying() {
    let backup_config = ChannelConfig { max_received_bytes: 2048, ..config(200) };
    let (primary, backup) = pair(config(200), backup_config);
    let big = |landmark| {
        Entry::Input(InputEntry {
            point: ExecPoint { landmark, rip: 0 },
            regs_hash: 0,
            input: Input::Entropy(vec![landmark as u8; 1000]),
        })
    };
    let mut last_seq = 0;
    for landmark in 1..=2_000 {
        last_seq = primary.send(&big(landmark)).unwrap().seq;
    }
    primary.note_exits_complete(2_000);
    // Far longer than the failure timeout, with the backup's queue full.
    thread::sleep(Duration::from_millis(800));
    assert!(primary.peer_alive() && backup.peer_alive());
    let stats = primary.stats();
    assert!(stats.unacked_bytes > 100_000, "backpressure did not reach the primary: {stats:?}");
    let mut landmark = 1;
    while landmark <= 2_000 {
        match backup.recv(LONG).unwrap().expect("an entry") {
            Entry::Progress { .. } => {}
            entry => {
                assert_eq!(entry, big(landmark));
                landmark += 1;
            }
        }
    }
    assert!(primary.wait_releasable(last_seq, Instant::now() + LONG).unwrap());
}

#[test]
fn connecting_to_no_backup_names_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = PrimaryLink::connect(addr, &config(300), &credentials(), Devices::default())
        .err()
        .expect("nothing listens");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}
