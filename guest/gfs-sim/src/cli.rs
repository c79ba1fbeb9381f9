//! Command-line helpers shared by the seeded simulators (`gfs-sim` and layers on it such as
//! `mapreduce-sim`): seed ranges, parallel seed sweeps, medians.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Parses `START..END`.
pub fn parse_seed_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) =
        text.split_once("..").ok_or_else(|| format!("--seeds wants START..END, got {text:?}"))?;
    let start = start.parse().map_err(|e| format!("bad seed range start {start:?}: {e}"))?;
    let end = end.parse().map_err(|e| format!("bad seed range end {end:?}: {e}"))?;
    Ok(start..end)
}

/// The median of `values` (sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The result of a sweep.
#[derive(Debug, Default)]
pub struct SweepResult {
    /// Seeds that ran.
    pub ran: u64,
    /// Seeds that failed, in order.
    pub failing_seeds: Vec<u64>,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

/// Runs `passes(seed)` for every seed on `threads` threads (the closure reports its own
/// failures), stops after `stop_after_failures` failures, and prints progress every 10,000.
pub fn sweep_seeds(
    seeds: Range<u64>,
    threads: usize,
    stop_after_failures: usize,
    passes: impl Fn(u64) -> bool + Sync,
) -> SweepResult {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let done = AtomicU64::new(0);
    let failures: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                if failures.lock().expect("lock").len() >= stop_after_failures {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                // A panic is a failure of that seed, not the end of the sweep.
                let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| passes(seed)))
                    .unwrap_or_else(|_| {
                        println!("FAIL seed {seed}: panicked (message above)");
                        false
                    });
                if !passed {
                    let elapsed = started.elapsed().as_secs_f64();
                    println!("  (found after {elapsed:.2}s of sweeping)");
                    failures.lock().expect("lock").push(seed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished.is_multiple_of(10_000) {
                    eprintln!("  {finished} seeds done, {:.1}s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let mut failing_seeds = failures.into_inner().expect("lock");
    failing_seeds.sort_unstable();
    SweepResult {
        ran: done.load(Ordering::Relaxed),
        failing_seeds,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}
