//! `mapreduce-sim`: sweeps seeds through the MapReduce simulator, reruns one seed with its
//! trace, or runs the benchmark.
//!
//! ```text
//! mapreduce-sim --seeds 0..10000         sweep (failures are reported by seed)
//! mapreduce-sim --seed 42 [--trace]      one run, settings first, trace on failure
//! mapreduce-sim --bench                  job time vs workers; word-count map throughput
//! ```

use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use mapreduce_sim::{run, Outcome, Settings};

mod bench;

struct Args {
    seeds: Range<u64>,
    single: bool,
    trace: bool,
    bench: bool,
    threads: usize,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) =
        text.split_once("..").ok_or_else(|| format!("--seeds wants START..END, got {text:?}"))?;
    let start = start.parse().map_err(|e| format!("bad seed range start {start:?}: {e}"))?;
    let end = end.parse().map_err(|e| format!("bad seed range end {end:?}: {e}"))?;
    Ok(start..end)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1000,
        single: false,
        trace: false,
        bench: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => args.seeds = parse_range(&value("--seeds")?)?,
            "--seed" => {
                let seed: u64 = value("--seed")?.parse().map_err(|e| format!("bad --seed: {e}"))?;
                args.seeds = seed..seed + 1;
                args.single = true;
            }
            "--trace" => args.trace = true,
            "--bench" => args.bench = true,
            "--threads" => {
                args.threads =
                    value("--threads")?.parse().map_err(|e| format!("bad --threads: {e}"))?
            }
            "--help" | "-h" => return Err(
                "usage: mapreduce-sim [--seeds A..B | --seed N [--trace]] [--threads N] | --bench"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn report_failure(outcome: &Outcome) {
    let failure = outcome.failure.as_ref().expect("a failure");
    let settings = outcome.settings.as_ref().expect("settings");
    println!("FAIL seed {}: {} at {}ms", settings.seed, failure.check, failure.at_ms);
    println!("  settings: {settings}");
    println!("  {}", failure.detail);
    println!("  rerun: cargo run --release -p mapreduce-sim -- --seed {} --trace", settings.seed);
}

fn sweep(args: &Args) -> ExitCode {
    println!(
        "mapreduce-sim: seeds {}..{} on {} threads; settings drawn per seed (e.g. {})",
        args.seeds.start,
        args.seeds.end,
        args.threads,
        Settings::from_seed(args.seeds.start)
    );
    let started = Instant::now();
    let next = AtomicU64::new(args.seeds.start);
    let done = AtomicU64::new(0);
    let failures: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= args.seeds.end {
                    return;
                }
                let outcome = run(&Settings::from_seed(seed), false);
                if outcome.failure.is_some() {
                    report_failure(&outcome);
                    failures.lock().expect("lock").push(seed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 1000 == 0 {
                    eprintln!("  {finished} seeds done, {:.1}s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("lock");
    failures.sort_unstable();
    let ran = done.load(Ordering::Relaxed);
    println!(
        "mapreduce-sim: {ran} seeds in {:.2}s; {} passed, {} failed; failing seeds: {failures:?}",
        started.elapsed().as_secs_f64(),
        ran - failures.len() as u64,
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn single(args: &Args) -> ExitCode {
    let settings = Settings::from_seed(args.seeds.start);
    println!("mapreduce-sim: {settings}");
    let outcome = run(&settings, true);
    let print_trace = args.trace || outcome.failure.is_some();
    if print_trace {
        let tail = outcome.trace.len().saturating_sub(if args.trace { usize::MAX } else { 400 });
        println!("trace ({} lines, last {}):", outcome.trace.len(), outcome.trace.len() - tail);
        for line in &outcome.trace[tail..] {
            println!("{line}");
        }
    }
    if outcome.failure.is_some() {
        report_failure(&outcome);
        return ExitCode::FAILURE;
    }
    println!(
        "ok: job {} sim ms, {} map tasks (runs {:?}), max parallel maps {} reduces {}, {} backups, \
         {} worker crashes, {} workers lost, {} B in, {} B out, {} steps",
        outcome.job_ms,
        outcome.map_tasks,
        outcome.map_runs.values().collect::<Vec<_>>(),
        outcome.max_parallel_maps,
        outcome.max_parallel_reduces,
        outcome.backup_attempts,
        outcome.worker_crashes,
        outcome.workers_lost,
        outcome.input_bytes,
        outcome.output_bytes,
        outcome.steps
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("mapreduce-sim: {message}");
            return ExitCode::from(2);
        }
    };
    if args.bench {
        bench::run()
    } else if args.single {
        single(&args)
    } else {
        sweep(&args)
    }
}
