//! Throughput of framing typical log entries: about 40 bytes of payload, the size of an
//! asynchronous event with its execution point and register hash.
//!
//! Reported twice, per entry (entries/s) and per byte of frames (MB/s), for encoding, decoding
//! and the two together.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use logchannel::{FrameReader, FrameWriter};
use serde::{Deserialize, Serialize};

/// Shaped like a timer event at an execution point: varint fields of realistic magnitude.
#[derive(Serialize, Deserialize)]
enum BenchEntry {
    TimerFired { landmark: u64, rip: u64, registers_hash: u64, deadline_ns: u64, timer_id: u32 },
}

const ENTRIES_PER_ITERATION: u64 = 10_000;

fn bench_entries() -> Vec<BenchEntry> {
    (0..ENTRIES_PER_ITERATION)
        .map(|index| BenchEntry::TimerFired {
            landmark: 1_000_000 + index * 37,
            rip: 0xffff_ffff_8000_0000 + (index * 0x1f3) % 0x10_0000,
            registers_hash: index.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            deadline_ns: 5_000_000_000 + index * 1_000_000,
            timer_id: (index % 4) as u32,
        })
        .collect()
}

fn encode(entries: &[BenchEntry], stream: Vec<u8>) -> Vec<u8> {
    let mut writer = FrameWriter::new(stream, 1, 0);
    for entry in entries {
        writer.write_entry(entry).unwrap();
    }
    writer.into_inner()
}

fn decode(stream: &[u8]) -> u64 {
    let mut reader = FrameReader::<_, BenchEntry>::new(stream, 1, 0);
    let mut landmark_sum = 0u64;
    while let Some((_, BenchEntry::TimerFired { landmark, .. })) = reader.read_entry().unwrap() {
        landmark_sum = landmark_sum.wrapping_add(landmark);
    }
    landmark_sum
}

fn framing(criterion: &mut Criterion) {
    let entries = bench_entries();
    let stream = encode(&entries, Vec::new());
    let frame_len_bytes = stream.len() as f64 / ENTRIES_PER_ITERATION as f64;
    eprintln!("mean frame length: {frame_len_bytes:.1} bytes (header 8, payload the rest)");

    for (unit, throughput) in [
        ("entries", Throughput::Elements(ENTRIES_PER_ITERATION)),
        ("bytes", Throughput::Bytes(stream.len() as u64)),
    ] {
        let mut group = criterion.benchmark_group(format!("framing_{unit}"));
        group.throughput(throughput);
        let mut reused_stream = Vec::with_capacity(stream.len());
        group.bench_function(BenchmarkId::from_parameter("encode"), |bencher| {
            bencher.iter(|| {
                reused_stream.clear();
                reused_stream = encode(black_box(&entries), std::mem::take(&mut reused_stream));
            })
        });
        group.bench_function(BenchmarkId::from_parameter("decode"), |bencher| {
            bencher.iter(|| decode(black_box(&stream)))
        });
        group.bench_function(BenchmarkId::from_parameter("encode_decode"), |bencher| {
            bencher.iter(|| {
                reused_stream.clear();
                reused_stream = encode(black_box(&entries), std::mem::take(&mut reused_stream));
                decode(&reused_stream)
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short: the figures are stable to a few percent, and the machine is shared.
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = framing
}
criterion_main!(benches);
