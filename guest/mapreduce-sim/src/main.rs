//! `mapreduce-sim`: sweeps seeds through the MapReduce simulator, reruns one seed with its
//! trace, or runs the benchmark.
//!
//! ```text
//! mapreduce-sim                          1000 seeds from a random start seed (printed first)
//! mapreduce-sim --seeds 0..10000         sweep (failures are reported by seed, with a rerun command)
//! mapreduce-sim --seed 42 [--trace]      one run, settings first, trace on failure
//! mapreduce-sim --bench                  job time vs workers; word-count map throughput
//! ```

use gfs_sim::cli::{run_command, Command, SHARED_USAGE};
use mapreduce_sim::{app_named, run, Settings};
use std::process::ExitCode;

mod bench;

/// Every step allocates (messages, frames, disk buffers): mimalloc beats the system allocator
/// at that by a tenth of a sweep's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    format!(
        "usage: mapreduce-sim {SHARED_USAGE} [--app wc|ii|grep|sort] [--workers N] \
         [--reduces N] [--crash-every-ms MS] [--slow-worker-ms MS] [--no-backups] [--break map-reexecution]"
    )
}

/// Overrides of the drawn settings, checked as they are parsed.
#[derive(Default)]
struct Overrides {
    app: Option<mapreduce::wire::AppKind>,
    workers: Option<u32>,
    reduces: Option<u32>,
    crash_every_ms: Option<u64>,
    slow_worker_ms: Option<u64>,
    no_backups: bool,
    break_map_reexecution: bool,
}

impl Overrides {
    fn settings_for(&self, seed: u64) -> Settings {
        let mut settings = Settings::from_seed(seed);
        if let Some(app) = &self.app {
            settings.app = app.clone();
        }
        settings.workers = self.workers.unwrap_or(settings.workers);
        settings.reduce_tasks = self.reduces.unwrap_or(settings.reduce_tasks);
        settings.worker_crash_every_ms =
            self.crash_every_ms.unwrap_or(settings.worker_crash_every_ms);
        if let Some(extra_ms) = self.slow_worker_ms {
            settings.slow_worker = Some((0, extra_ms));
        }
        settings.backup_tasks &= !self.no_backups;
        settings.knobs.never_reexecute_completed_maps = self.break_map_reexecution;
        settings
    }
}

fn main() -> ExitCode {
    let mut overrides = Overrides::default();
    let usage = usage();
    let command = Command::parse(std::env::args().skip(1), &usage, |option, args| {
        let number = |args: &mut dyn Iterator<Item = String>| -> Result<u64, String> {
            let text = args.next().ok_or_else(|| format!("{option} needs a value"))?;
            text.parse().map_err(|error| format!("bad {option} {text:?}: {error}"))
        };
        match option {
            "--app" => {
                let name = args.next().unwrap_or_default();
                let app = app_named(&name).ok_or_else(|| format!("unknown app {name:?}"))?;
                overrides.app = Some(app);
            }
            "--workers" => overrides.workers = Some(number(args)? as u32),
            "--reduces" => overrides.reduces = Some(number(args)? as u32),
            "--crash-every-ms" => overrides.crash_every_ms = Some(number(args)?),
            "--slow-worker-ms" => overrides.slow_worker_ms = Some(number(args)?),
            "--no-backups" => overrides.no_backups = true,
            "--break" => match args.next().as_deref() {
                Some("map-reexecution") => overrides.break_map_reexecution = true,
                other => return Err(format!("unknown --break {other:?} (known: map-reexecution)")),
            },
            _ => return Ok(false),
        }
        Ok(true)
    });
    run_command(
        "mapreduce-sim",
        command,
        bench::run_all,
        |seed| overrides.settings_for(seed).to_string(),
        |seed, trace| run(&overrides.settings_for(seed), trace),
    )
}
