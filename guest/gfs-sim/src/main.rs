//! `gfs-sim`: sweeps seeds through the GFS simulator, reruns one seed with its trace, or
//! benchmarks the state machines.
//!
//! ```text
//! gfs-sim                              1000 seeds from a random start seed (printed first)
//! gfs-sim --seeds 0..100000            sweep (failures are reported by seed, with a rerun command)
//! gfs-sim --seed 42 [--trace]          one run, settings first, trace on failure
//! gfs-sim --seeds 0..2000 --break stale-version
//! gfs-sim --bench                      medians of ops/s and bytes/s
//! ```

use std::process::ExitCode;
use std::time::Instant;

use gfs_sim::cli::{median, run_command, Command, Report, SHARED_USAGE};
use gfs_sim::{run, Outcome, Settings};

/// Every step allocates (messages, frames, disk buffers): mimalloc beats the system allocator
/// at that by a tenth of a sweep's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    format!("usage: gfs-sim {SHARED_USAGE} [--break stale-version]")
}

fn settings_for(seed: u64, break_stale_version: bool) -> Settings {
    let mut settings = Settings::from_seed(seed);
    settings.knobs.skip_stale_version_check = break_stale_version;
    settings
}

fn report_failure(outcome: &Outcome) {
    if let Some(failure) = outcome.failure() {
        println!("FAIL seed {}: {failure}", outcome.settings.seed);
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
        settings.device_faults = Default::default();
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
    let mut break_stale_version = false;
    let usage = usage();
    let command = Command::parse(std::env::args().skip(1), &usage, |option, args| {
        if option != "--break" {
            return Ok(false);
        }
        match args.next().as_deref() {
            Some("stale-version") => break_stale_version = true,
            other => return Err(format!("unknown --break {other:?} (known: stale-version)")),
        }
        Ok(true)
    });
    run_command(
        "gfs-sim",
        command,
        bench,
        |seed| settings_for(seed, break_stale_version).to_string(),
        |seed, trace| run(&settings_for(seed, break_stale_version), trace),
    )
}
