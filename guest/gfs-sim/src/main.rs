//! `gfs-sim`: sweeps seeds through the GFS simulator, reruns one seed with its trace, or
//! benchmarks the state machines.
//!
//! ```text
//! gfs-sim --seeds 0..100000            sweep (failures are reported by seed)
//! gfs-sim --seed 42 [--trace]          one run, settings first, trace on failure
//! gfs-sim --seeds 0..2000 --break stale-version
//! gfs-sim --bench                      medians of ops/s and bytes/s
//! ```

use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

use gfs_sim::cli::{median, parse_seed_range, sweep_seeds};
use gfs_sim::{run, Outcome, Settings};

struct Args {
    seeds: Range<u64>,
    single: bool,
    trace: bool,
    break_stale_version: bool,
    bench: bool,
    threads: usize,
    stop_after_failures: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1000,
        single: false,
        trace: false,
        break_stale_version: false,
        bench: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        stop_after_failures: usize::MAX,
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
            "--break" => match value("--break")?.as_str() {
                "stale-version" => args.break_stale_version = true,
                other => return Err(format!("unknown --break {other:?} (known: stale-version)")),
            },
            "--bench" => args.bench = true,
            "--threads" => {
                args.threads =
                    value("--threads")?.parse().map_err(|e| format!("bad --threads: {e}"))?
            }
            "--stop-after" => {
                args.stop_after_failures =
                    value("--stop-after")?.parse().map_err(|e| format!("bad --stop-after: {e}"))?
            }
            "--help" | "-h" => {
                return Err("usage: gfs-sim [--seeds A..B | --seed N] [--trace] \
                            [--break stale-version] [--threads N] [--stop-after N] | --bench"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn settings_for(seed: u64, args: &Args) -> Settings {
    let mut settings = Settings::from_seed(seed);
    settings.knobs.skip_stale_version_check = args.break_stale_version;
    settings
}

fn report_failure(outcome: &Outcome) {
    let failure = outcome.failure.as_ref().expect("a failure");
    println!("FAIL seed {}: {} at {}ms", outcome.settings.seed, failure.invariant, failure.at_ms);
    println!("  settings: {}", outcome.settings);
    println!("  {}", failure.detail);
}

fn sweep(args: &Args) -> ExitCode {
    let first = settings_for(args.seeds.start, args);
    println!(
        "gfs-sim: seeds {}..{} on {} threads; settings drawn per seed (e.g. {}); break stale-version check: {}",
        args.seeds.start, args.seeds.end, args.threads, first, args.break_stale_version
    );
    let result = sweep_seeds(args.seeds.clone(), args.threads, args.stop_after_failures, |seed| {
        let outcome = run(&settings_for(seed, args), false);
        if outcome.failure.is_some() {
            report_failure(&outcome);
        }
        outcome.failure.is_none()
    });
    println!(
        "gfs-sim: {} seeds in {:.2}s; failing seeds: {:?}",
        result.ran, result.elapsed_s, result.failing_seeds
    );
    println!(
        "{} passed, {} failed",
        result.ran - result.failing_seeds.len() as u64,
        result.failing_seeds.len()
    );
    if result.failing_seeds.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn single(args: &Args) -> ExitCode {
    let settings = settings_for(args.seeds.start, args);
    println!("gfs-sim: {settings}");
    let outcome = run(&settings, true);
    match &outcome.failure {
        None => {
            if args.trace {
                for line in &outcome.trace {
                    println!("{line}");
                }
            }
            println!(
                "ok: {} ops, {} bytes acknowledged, {} sim ms, {} steps, {} chunks lost to corruption",
                outcome.ops_completed,
                outcome.bytes_acked,
                outcome.sim_ms,
                outcome.stats.steps,
                outcome.chunks_lost
            );
            ExitCode::SUCCESS
        }
        Some(_) => {
            let tail =
                outcome.trace.len().saturating_sub(if args.trace { usize::MAX } else { 400 });
            println!("trace ({} lines, last {}):", outcome.trace.len(), outcome.trace.len() - tail);
            for line in &outcome.trace[tail..] {
                println!("{line}");
            }
            report_failure(&outcome);
            ExitCode::FAILURE
        }
    }
}

fn bench() -> ExitCode {
    const REPEATS: usize = 7;
    println!("gfs-sim bench: fault-free cluster (5 chunkservers, 3 clients x 150 ops), {REPEATS} runs, medians");
    let mut steps_per_s = Vec::new();
    let mut ops_per_s = Vec::new();
    let mut acked_bytes_per_s = Vec::new();
    let mut wire_bytes_per_s = Vec::new();
    let mut disk_bytes_per_s = Vec::new();
    let mut sim_ops_per_sim_s = Vec::new();
    for repeat in 0..REPEATS {
        let mut settings = Settings::from_seed(repeat as u64);
        settings.chunkservers = 5;
        settings.clients = 3;
        settings.ops_per_client = 150;
        settings.drop_per_mille = 0;
        settings.duplicate_per_mille = 0;
        settings.delay_max_ms = 5;
        settings.chunkserver_crash_every_ms = 0;
        settings.master_crash_every_ms = 0;
        settings.corruption_every_ms = 0;
        settings.lose_one_disk = false;
        settings.fault_phase_ms = 100_000; // no faults are configured: this is the workload phase
        settings.liveness_phase_ms = 8000;
        settings.chunkserver_slots = 256;
        let started = Instant::now();
        let outcome = run(&settings, false);
        let wall_s = started.elapsed().as_secs_f64();
        if outcome.failure.is_some() {
            report_failure(&outcome);
            return ExitCode::FAILURE;
        }
        steps_per_s.push(outcome.stats.steps as f64 / wall_s);
        ops_per_s.push(outcome.ops_completed as f64 / wall_s);
        acked_bytes_per_s.push(outcome.bytes_acked as f64 / wall_s);
        wire_bytes_per_s.push(outcome.stats.message_bytes as f64 / wall_s);
        disk_bytes_per_s.push(outcome.stats.disk_write_bytes as f64 / wall_s);
        sim_ops_per_sim_s.push(outcome.ops_completed as f64 / (outcome.sim_ms as f64 / 1000.0));
    }
    println!("| metric                                   | median        |");
    println!("|------------------------------------------|---------------|");
    println!("| state-machine steps / s (wall)           | {:>13.0} |", median(&mut steps_per_s));
    println!("| client operations / s (wall)             | {:>13.0} |", median(&mut ops_per_s));
    println!(
        "| acknowledged data bytes / s (wall)       | {:>13.0} |",
        median(&mut acked_bytes_per_s)
    );
    println!(
        "| wire bytes / s (wall, encoded frames)    | {:>13.0} |",
        median(&mut wire_bytes_per_s)
    );
    println!(
        "| disk bytes written / s (wall)            | {:>13.0} |",
        median(&mut disk_bytes_per_s)
    );
    println!(
        "| client operations / simulated s          | {:>13.1} |",
        median(&mut sim_ops_per_sim_s)
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("gfs-sim: {message}");
            return ExitCode::from(2);
        }
    };
    if args.bench {
        bench()
    } else if args.single {
        single(&args)
    } else {
        sweep(&args)
    }
}
