//! The benchmark: simulated job time against the number of workers (the speed-up curve), and
//! the host throughput of the word-count map function next to a plain single-threaded word
//! count over the same bytes. Medians over repeats; printed as tables.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use gfs_sim::cli::median;
use mapreduce::app::{App, WordCount};
use mapreduce::records::{map_to_runs, PairBuffer};
use mapreduce::wire::AppKind;
use mapreduce_sim::{inputs, run, Settings};

const SEEDS: u64 = 5;
const THROUGHPUT_REPEATS: usize = 5;

/// The same job (word count over 8 files of up to 6 chunks, R = 8, no faults) per seed.
fn job_settings(seed: u64, workers: u32) -> Settings {
    let mut settings = Settings::calm(seed, AppKind::WordCount, workers);
    settings.chunkservers = 5;
    settings.input_files = 8;
    settings.max_file_chunks = 6;
    settings.reduce_tasks = 8;
    settings.delay_max_ms = 5;
    settings
}

fn speed_up() -> Result<(), String> {
    println!("job time vs workers: word count, 8 files x up to 6 chunks of 2 KiB, R = 8, 5 chunkservers,");
    println!("no faults, message delay 1..5 ms, disk 1..4 ms; medians over seeds 0..{SEEDS} (job time is simulated)");
    println!();
    println!("| workers | map tasks | job time (sim ms) | speed-up | wall ms per run |");
    println!("|---------|-----------|-------------------|----------|-----------------|");
    let mut single_ms = 0.0;
    for workers in [1u32, 2, 4, 8] {
        let mut job_ms = Vec::new();
        let mut wall_ms = Vec::new();
        let mut maps = Vec::new();
        for seed in 0..SEEDS {
            let started = Instant::now();
            let outcome = run(&job_settings(seed, workers), false);
            wall_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if let Some(failure) = &outcome.failure {
                return Err(format!(
                    "seed {seed}, {workers} workers: {} ({})",
                    failure.check, failure.detail
                ));
            }
            job_ms.push(outcome.job_ms as f64);
            maps.push(outcome.map_tasks as f64);
        }
        let median_ms = median(&mut job_ms);
        if workers == 1 {
            single_ms = median_ms;
        }
        println!(
            "| {workers:>7} | {:>9} | {median_ms:>17.0} | {:>7.2}x | {:>15.1} |",
            median(&mut maps),
            single_ms / median_ms,
            median(&mut wall_ms)
        );
    }
    Ok(())
}

/// MB/s of `f` over `bytes` (median of repeats).
fn throughput(bytes: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut rates = Vec::new();
    let mut result = 0;
    for _ in 0..THROUGHPUT_REPEATS {
        let started = Instant::now();
        result = std::hint::black_box(f());
        rates.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e6);
    }
    (median(&mut rates), result)
}

fn plain_word_count(text: &[u8]) -> HashMap<&[u8], u64> {
    let mut counts: HashMap<&[u8], u64> = HashMap::new();
    for word in text.split(|byte| !byte.is_ascii_alphabetic()) {
        if !word.is_empty() {
            *counts.entry(word).or_insert(0) += 1;
        }
    }
    counts
}

fn map_throughput() {
    let documents = inputs::documents(42, 32, 1, 1 << 20);
    let text: Vec<u8> = documents.iter().flat_map(|(_, text)| text.iter().copied()).collect();
    let bytes = text.len();
    println!();
    println!(
        "word count on the host: {:.1} MB of generated text, one thread, median of {THROUGHPUT_REPEATS}",
        bytes as f64 / 1e6
    );
    println!();
    let (map_only, pairs) = throughput(bytes, || {
        let mut buffer = PairBuffer::default();
        WordCount.map("doc", 0, &text, &mut |key, value| buffer.push(key, value));
        buffer.len()
    });
    let (map_runs, _) = throughput(bytes, || map_to_runs(&WordCount, "doc", 0, &text, 8).len());
    let (plain, distinct) = throughput(bytes, || plain_word_count(&text).len());
    let rows = [
        (format!("WordCount::map, {pairs} pairs into the arena"), map_only),
        ("map + partition + sort + combine into 8 runs (a map task)".to_string(), map_runs),
        (format!("plain word count: split + HashMap ({distinct} distinct words)"), plain),
    ];
    println!("| {:<58} | {:>7} |", "what", "MB/s");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(9));
    for (what, rate) in rows {
        println!("| {what:<58} | {rate:>7.1} |");
    }
}

/// Runs both parts.
pub fn run_all() -> ExitCode {
    if let Err(message) = speed_up() {
        eprintln!("mapreduce-sim bench: {message}");
        return ExitCode::FAILURE;
    }
    map_throughput();
    ExitCode::SUCCESS
}
