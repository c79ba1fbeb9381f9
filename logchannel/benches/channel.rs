//! Throughput and ack latency of the log channel over loopback TCP: a primary sends entries as
//! fast as its lag bound allows while a backup thread receives them; reported in entries/s and
//! MB/s of frames, for small entries (a clock read, ~25 bytes framed) and 4 KiB ones (a disk
//! read). Then the round trip the output rule waits for: one entry sent, its ack received; and
//! the cost of opening a channel: TCP connect plus the authenticated handshake.
//!
//! A plain timing harness (`cargo bench -p logchannel --bench channel`), since each figure is one
//! long run over a real socket rather than a micro-benchmark.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use logchannel::channel::{BackupLink, BackupListener, ChannelConfig, PrimaryLink};
use logchannel::{Credentials, Devices, Entry, ExecPoint, Input, InputEntry};

const MAX_UNACKED_BYTES: u64 = 8 << 20;
const MAX_UNACKED_AGE_MS: u64 = 500;

fn credentials() -> Credentials {
    Credentials { pair_id: "bench".into(), key: [9; 32], generation: 1 }
}

/// A connected pair, and how long the primary's connect (TCP and handshake) took.
fn timed_pair() -> (PrimaryLink, BackupLink, Duration) {
    let config = ChannelConfig::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let backup_config = config.clone();
    let backup = thread::spawn(move || {
        let listener =
            BackupListener::start(listener, &backup_config, &credentials(), |_| Ok(()), |_| {})
                .unwrap();
        let accepted = listener.next(Duration::from_secs(10)).expect("a primary");
        BackupLink::from_stream(accepted.stream, &backup_config, &accepted.session).unwrap()
    });
    let start = Instant::now();
    let primary = PrimaryLink::connect(addr, &config, &credentials(), Devices::default()).unwrap();
    let took = start.elapsed();
    (primary, backup.join().unwrap(), took)
}

fn pair() -> (PrimaryLink, BackupLink) {
    let (primary, backup, _) = timed_pair();
    (primary, backup)
}

fn connect_cost() {
    let mut samples_ms: Vec<f64> = (0..21).map(|_| timed_pair().2.as_secs_f64() * 1e3).collect();
    samples_ms.sort_by(f64::total_cmp);
    println!(
        "connect + handshake          {} samples: median {:.2} ms, max {:.2} ms",
        samples_ms.len(),
        samples_ms[samples_ms.len() / 2],
        samples_ms[samples_ms.len() - 1]
    );
}

fn entry(landmark: u64, input: Input) -> Entry {
    Entry::Input(InputEntry {
        point: ExecPoint { landmark, rip: 0x20_1000 },
        regs_hash: landmark,
        input,
    })
}

fn throughput(label: &str, count: u64, make: impl Fn(u64) -> Entry) {
    let (primary, backup) = pair();
    let consumer = thread::spawn(move || {
        let mut received = 0;
        while received < count {
            let next = backup.recv(Duration::from_secs(10));
            match next.unwrap_or_else(|error| panic!("{error}")).expect("an entry") {
                Entry::Progress { .. } => {}
                _ => received += 1,
            }
        }
    });
    let start = Instant::now();
    let mut last_seq = 0;
    let mut bytes = 0;
    for landmark in 0..count {
        let sent = primary.send(&make(landmark)).unwrap();
        (last_seq, bytes) = (sent.seq, bytes + sent.frame_len_bytes);
        if landmark % 256 == 0 {
            let room = primary.wait_for_room(MAX_UNACKED_BYTES, MAX_UNACKED_AGE_MS);
            room.unwrap_or_else(|error| panic!("{error}"));
        }
    }
    let acked = primary.wait_releasable(last_seq, Instant::now() + Duration::from_secs(30));
    assert!(acked.unwrap_or_else(|error| panic!("{error}")), "not acked within 30 s");
    let seconds = start.elapsed().as_secs_f64();
    consumer.join().unwrap();
    println!(
        "{label:<28} {count:>8} entries in {seconds:.3} s: {:>10.0} entries/s, {:>7.1} MB/s ({:.0} bytes/frame)",
        count as f64 / seconds,
        bytes as f64 / seconds / 1e6,
        bytes as f64 / count as f64,
    );
}

fn round_trip() {
    let (primary, backup) = pair();
    let consumer =
        thread::spawn(
            move || while backup.recv(Duration::from_secs(2)).is_ok_and(|e| e.is_some()) {},
        );
    let mut samples_us = Vec::new();
    for landmark in 0..2_000 {
        let start = Instant::now();
        let seq = primary.send(&entry(landmark, Input::MonotonicNs(landmark))).unwrap().seq;
        assert!(primary.wait_releasable(seq, Instant::now() + Duration::from_secs(5)).unwrap());
        samples_us.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples_us.sort_by(f64::total_cmp);
    let at = |quantile: f64| samples_us[((samples_us.len() - 1) as f64 * quantile) as usize];
    println!(
        "send -> ack round trip       {} samples: median {:.0} us, p99 {:.0} us, max {:.0} us",
        samples_us.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    drop(primary);
    consumer.join().unwrap();
}

fn main() {
    throughput("clock reads (~25 B framed)", 1_000_000, |landmark| {
        entry(landmark, Input::MonotonicNs(landmark * 1_000))
    });
    throughput("disk reads (4 KiB)", 50_000, |landmark| {
        entry(landmark, Input::Entropy(vec![landmark as u8; 4096]))
    });
    round_trip();
    connect_cost();
}
