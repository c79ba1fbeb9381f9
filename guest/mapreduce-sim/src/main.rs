//! `mapreduce-sim`: sweeps seeds through the MapReduce simulator, reruns one seed with its
//! trace, or runs the benchmark.
//!
//! ```text
//! mapreduce-sim --seeds 0..10000         sweep (failures are reported by seed)
//! mapreduce-sim --seed 42 [--trace]      one run, settings first, trace on failure
//! mapreduce-sim --bench                  job time vs workers; word-count map throughput
//! ```

use gfs_sim::cli::{parse_seed_range, sweep_seeds};
use mapreduce_sim::{app_named, run, Outcome, Settings};
use std::ops::Range;
use std::process::ExitCode;

mod bench;

const USAGE: &str = "usage: mapreduce-sim [--seeds A..B | --seed N [--trace]] [--threads N] \
    [--app wc|ii|grep|sort] [--workers N] [--reduces N] [--crash-every-ms MS] \
    [--slow-worker-ms MS] [--no-backups] | --bench";

struct Args {
    seeds: Range<u64>,
    single: bool,
    trace: bool,
    bench: bool,
    threads: usize,
    /// Overrides of the drawn settings.
    overrides: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1000,
        single: false,
        trace: false,
        bench: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        overrides: Vec::new(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => args.seeds = parse_seed_range(&value("--seeds")?)?,
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
            "--app" | "--workers" | "--slow-worker-ms" | "--crash-every-ms" | "--reduces" => {
                let given = value(&arg)?;
                args.overrides.push((arg.clone(), given))
            }
            "--no-backups" => args.overrides.push((arg.clone(), String::new())),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn settings_for(seed: u64, args: &Args) -> Settings {
    let mut settings = Settings::from_seed(seed);
    for (name, value) in &args.overrides {
        let number =
            || value.parse::<u64>().unwrap_or_else(|e| panic!("bad {name} {value:?}: {e}"));
        match name.as_str() {
            "--app" => {
                settings.app = app_named(value).unwrap_or_else(|| panic!("unknown app {value:?}"))
            }
            "--workers" => settings.workers = number() as u32,
            "--reduces" => settings.reduce_tasks = number() as u32,
            "--crash-every-ms" => settings.worker_crash_every_ms = number(),
            "--slow-worker-ms" => settings.slow_worker = Some((0, number())),
            "--no-backups" => settings.backup_tasks = false,
            _ => unreachable!("parsed above"),
        }
    }
    settings
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
        settings_for(args.seeds.start, args)
    );
    let result = sweep_seeds(args.seeds.clone(), args.threads, usize::MAX, |seed| {
        let outcome = run(&settings_for(seed, args), false);
        if outcome.failure.is_some() {
            report_failure(&outcome);
        }
        outcome.failure.is_none()
    });
    let failed = result.failing_seeds.len() as u64;
    println!(
        "mapreduce-sim: {} seeds in {:.2}s; {} passed, {failed} failed; failing seeds: {:?}",
        result.ran,
        result.elapsed_s,
        result.ran - failed,
        result.failing_seeds
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn single(args: &Args) -> ExitCode {
    let settings = settings_for(args.seeds.start, args);
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
        bench::run_all()
    } else if args.single {
        single(&args)
    } else {
        sweep(&args)
    }
}
