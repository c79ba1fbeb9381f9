//! The MapReduce lab's checks, each over many seeds of the simulator: output equals a
//! sequential run (word count, inverted index, grep, sort); maps and reduces run in parallel;
//! without failures every map runs exactly once; no worker exits before the job is done; with
//! random worker crashes and restarts (and a lossy network) the output is still exactly right;
//! a slow worker triggers backup tasks that shorten the job.
//!
//! A failing seed prints its settings, the trace tail and the command that reruns it.

use std::ops::Range;

use gfs_sim::cli::changed_digests;
use mapreduce::wire::AppKind;
use mapreduce_sim::{app_named, run, Outcome, Settings};

/// Runs `settings`, and on failure prints everything needed to reproduce it, then panics.
fn run_ok(settings: &Settings) -> Outcome {
    let outcome = run(settings, false);
    if let Some(failure) = &outcome.failure {
        let traced = run(settings, true);
        let tail = traced.trace.len().saturating_sub(200);
        for line in &traced.trace[tail..] {
            println!("{line}");
        }
        panic!(
            "seed {}: {} at {}ms\n  settings: {settings}\n  {}\n  rerun: cargo run --release -p mapreduce-sim -- --seed {} --trace",
            settings.seed, failure.check, failure.at_ms, failure.detail, settings.seed
        );
    }
    outcome
}

/// A fault-free job big enough for several maps and reduces.
fn calm(seed: u64, app: AppKind, workers: u32) -> Settings {
    let mut settings = Settings::calm(seed, app, workers);
    settings.input_files = 4;
    settings.max_file_chunks = 3;
    settings.reduce_tasks = 4;
    settings
}

const SEEDS_PER_APP: Range<u64> = 0..60;

#[test]
fn word_count_equals_the_sequential_run() {
    for seed in SEEDS_PER_APP {
        run_ok(&calm(seed, AppKind::WordCount, 1 + (seed % 4) as u32));
    }
}

#[test]
fn inverted_index_equals_the_sequential_run() {
    for seed in SEEDS_PER_APP {
        run_ok(&calm(seed, AppKind::InvertedIndex, 1 + (seed % 4) as u32));
    }
}

#[test]
fn grep_and_sort_equal_the_sequential_run() {
    for seed in SEEDS_PER_APP {
        run_ok(&calm(seed, app_named("grep").expect("known"), 3));
        run_ok(&calm(seed, AppKind::Sort, 3));
    }
}

#[test]
fn maps_and_reduces_run_in_parallel() {
    let mut checked = 0;
    for seed in 0..40 {
        let outcome = run_ok(&calm(seed, AppKind::WordCount, 4));
        if outcome.map_tasks < 4 {
            continue; // a small random input
        }
        checked += 1;
        assert!(outcome.max_parallel_maps >= 2, "seed {seed}: maps never ran in parallel");
        assert!(outcome.max_parallel_reduces >= 2, "seed {seed}: reduces never ran in parallel");
    }
    assert!(checked >= 30, "only {checked} seeds had 4 map tasks or more");
}

#[test]
fn without_failures_each_map_runs_exactly_once() {
    for seed in 0..100 {
        let outcome = run_ok(&calm(seed, AppKind::WordCount, 1 + (seed % 6) as u32));
        assert_eq!(outcome.map_runs.len(), outcome.map_tasks, "seed {seed}: a map never ran");
        let repeated: Vec<_> = outcome.map_runs.iter().filter(|(_, runs)| **runs != 1).collect();
        assert!(repeated.is_empty(), "seed {seed}: maps run more than once: {repeated:?}");
        assert_eq!(outcome.backup_attempts, 0, "seed {seed}: backups without a straggler");
    }
}

#[test]
fn no_worker_exits_before_the_job_is_done() {
    // The run itself fails on an early exit and on a worker that never exits; crashes and
    // message loss make early exits likelier if the protocol allowed them.
    for seed in 0..80 {
        let mut settings = Settings::from_seed(seed);
        settings.worker_crash_every_ms = 300;
        run_ok(&settings);
    }
}

#[test]
fn random_seeds_with_crashes_restarts_and_message_loss_give_exact_output() {
    let mut crashes = 0;
    let mut lost = 0;
    for seed in 1000..2000 {
        let outcome = run_ok(&Settings::from_seed(seed));
        crashes += outcome.worker_crashes;
        lost += outcome.workers_lost;
    }
    assert!(
        crashes > 200 && lost > 100,
        "too few faults to mean anything: {crashes} crashes, {lost} lost"
    );
}

#[test]
fn heavy_worker_crashes_still_give_exact_output() {
    let mut crashes = 0;
    for seed in 0..60 {
        let mut settings = Settings::from_seed(seed);
        settings.workers = 4;
        settings.input_files = 4;
        settings.max_file_chunks = 3;
        settings.worker_crash_every_ms = 120;
        settings.max_worker_crashes = 8;
        crashes += run_ok(&settings).worker_crashes;
    }
    assert!(crashes >= 120, "only {crashes} crashes in 60 runs");
}

#[test]
fn a_slow_worker_triggers_backup_tasks_that_shorten_the_job() {
    let seeds = 0..24u64;
    let mut backed_up_runs = 0;
    let mut faster = 0;
    let mut with_backups_ms = 0;
    let mut without_backups_ms = 0;
    for seed in seeds.clone() {
        let mut settings = calm(seed, AppKind::WordCount, 4);
        settings.max_file_chunks = 4;
        settings.slow_worker = Some(((seed % 4) as u32, 150));
        let backed_up = run_ok(&settings);
        settings.backup_tasks = false;
        let plain = run_ok(&settings);
        assert_eq!(plain.backup_attempts, 0);
        println!(
            "seed {seed}: {} ms with {} backups, {} ms without",
            backed_up.job_ms, backed_up.backup_attempts, plain.job_ms
        );
        backed_up_runs += u32::from(backed_up.backup_attempts > 0);
        faster += u32::from(backed_up.job_ms < plain.job_ms);
        with_backups_ms += backed_up.job_ms;
        without_backups_ms += plain.job_ms;
    }
    println!(
        "slow worker: {with_backups_ms} ms with backups, {without_backups_ms} ms without (sum)"
    );
    let runs = seeds.count() as u32;
    assert!(
        backed_up_runs * 4 >= runs * 3,
        "backups started in only {backed_up_runs} of {runs} runs"
    );
    assert!(faster * 4 >= runs * 3, "backups shortened only {faster} of {runs} jobs");
    assert!(
        with_backups_ms * 3 < without_backups_ms * 2,
        "{with_backups_ms} vs {without_backups_ms}"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let settings = Settings::from_seed(7);
    let first = run(&settings, true);
    let second = run(&settings, true);
    assert!(first.failure.is_none());
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.job_ms, second.job_ms);
}

#[test]
fn never_reexecuting_completed_maps_is_caught() {
    // Worker crashes lose completed maps' outputs; a coordinator that never runs them again
    // must fail the run (the job cannot finish) within a few seeds.
    let caught = (0..40u64).find(|seed| {
        let mut settings = Settings::from_seed(*seed);
        settings.worker_crash_every_ms = 150;
        settings.max_worker_crashes = 6;
        settings.knobs.never_reexecute_completed_maps = true;
        run(&settings, false).failure.is_some()
    });
    assert!(caught.is_some(), "the broken re-execution rule went unnoticed in 40 seeds");
}

/// What four seeds of each simulator simulate is pinned (`--digests` prints these): a
/// speed-up must leave every run exactly as it was; a deliberate change of behaviour pins the
/// new values (and those in `gfs-sim/scripts/check-digests.sh`, which compares 3000 seeds each).
#[test]
fn four_seeds_of_each_simulator_simulate_what_they_did() {
    let gfs_pinned = [
        (10_000_000_000, 0x2db6_134a_1fe1_6894),
        (10_000_000_001, 0xa333_2485_ab43_c190),
        (10_000_000_002, 0x9025_6c92_bccb_4ecc),
        (10_000_000_003, 0x2531_c2a6_2aeb_8b96),
    ];
    let mapreduce_pinned = [
        (10_000_000_000, 0x4fbd_9937_2893_e6af),
        (10_000_000_001, 0xbd6d_0444_5cd7_3ff2),
        (10_000_000_002, 0x6d6d_ba8e_a898_0361),
        (10_000_000_003, 0x44c8_9c01_d991_897f),
    ];
    let gfs_changed = changed_digests(&gfs_pinned, |seed| {
        gfs_sim::run(&gfs_sim::Settings::from_seed(seed), false)
    });
    let mapreduce_changed =
        changed_digests(&mapreduce_pinned, |seed| run(&Settings::from_seed(seed), false));
    assert_eq!(gfs_changed, vec![], "gfs-sim seeds whose runs changed, with their digests now");
    assert_eq!(mapreduce_changed, vec![], "mapreduce-sim seeds whose runs changed");
}
