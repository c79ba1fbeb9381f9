//! Simulation settings: everything a run depends on, drawn from its seed.

use core::fmt;

use gfs::pcg::Pcg32;
use gfs_sim::world::DeviceFaults;
use mapreduce::wire::AppKind;
use mapreduce::MrConfig;

/// The coordinator's node id (GFS's master is 0, chunkservers 10, 20, ...).
pub const COORDINATOR_ID: u32 = 1;
/// The job client's node id.
pub const JOB_CLIENT_ID: u32 = 2;
/// The GFS client that loads the inputs and reads the outputs back.
pub const LOADER_ID: u32 = 999;

/// The knobs of one simulated MapReduce run. [`Settings::from_seed`] draws them from the seed
/// so a seed alone reproduces a run; tests override fields for their scenario.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub app: AppKind,
    pub chunkservers: u32,
    /// Workers; the first `chunkservers` share a machine with one chunkserver each.
    pub workers: u32,
    pub input_files: u32,
    /// Largest input file, in chunks.
    pub max_file_chunks: u32,
    pub reduce_tasks: u32,
    /// Per-mille chance that a message is lost / delivered twice (after the inputs are loaded).
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_max_ms: u64,
    /// Mean time between worker crashes while the job runs (0: none); each crashed worker
    /// restarts after a random downtime.
    pub worker_crash_every_ms: u64,
    /// At most this many worker crashes per run.
    pub max_worker_crashes: u32,
    /// One worker (by index) is slow: this many ms are added to each of its messages and disk
    /// requests.
    pub slow_worker: Option<(u32, u64)>,
    pub backup_tasks: bool,
    /// The job must finish within this much simulated time after submission.
    pub job_deadline_ms: u64,
    /// Disk errors, slow disks and partitions while the job runs (drawn last, so the other
    /// draws stay the same).
    pub device_faults: DeviceFaults,
    /// The deliberately broken rule, if any.
    pub knobs: mapreduce::MrTestKnobs,
}

const APPS: [&str; 4] = ["wc", "ii", "grep", "sort"];

impl Settings {
    /// Settings drawn from `seed`: app, cluster shape, input, and (in four of five seeds)
    /// message faults and worker crashes.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Pcg32::new(seed, 0x5e77);
        let app = app_named(APPS[rng.below(4) as usize]).expect("known");
        let calm = rng.chance(1, 5);
        let chunkservers = rng.range_inclusive(3, 5) as u32;
        let mut settings = Settings {
            seed,
            app,
            chunkservers,
            workers: rng.range_inclusive(2, 6) as u32,
            input_files: rng.range_inclusive(1, 5) as u32,
            max_file_chunks: rng.range_inclusive(1, 4) as u32,
            reduce_tasks: rng.range_inclusive(1, 5) as u32,
            drop_per_mille: if calm { 0 } else { rng.below(40) },
            duplicate_per_mille: if calm { 0 } else { rng.below(40) },
            delay_max_ms: rng.range_inclusive(2, 20),
            worker_crash_every_ms: if calm { 0 } else { rng.range_inclusive(100, 1500) },
            max_worker_crashes: rng.range_inclusive(1, 6) as u32,
            slow_worker: None,
            backup_tasks: true,
            job_deadline_ms: 120_000,
            device_faults: DeviceFaults::default(),
            knobs: Default::default(),
        };
        settings.device_faults = DeviceFaults::draw(&mut rng, calm);
        settings
    }

    /// A fault-free run of `app` with `workers` workers (the lab's basic tests).
    pub fn calm(seed: u64, app: AppKind, workers: u32) -> Self {
        let mut settings = Settings::from_seed(seed);
        settings.app = app;
        settings.workers = workers;
        settings.drop_per_mille = 0;
        settings.duplicate_per_mille = 0;
        settings.worker_crash_every_ms = 0;
        settings.device_faults = DeviceFaults::default();
        settings
    }

    /// The MapReduce configuration: times scaled to a simulated cluster.
    pub fn config(&self) -> MrConfig {
        let mut gfs_settings = gfs_sim::Settings::from_seed(self.seed);
        gfs_settings.knobs = Default::default();
        let mut gfs = gfs_settings.config();
        gfs.master_id = gfs_sim::MASTER_ID;
        gfs.chunk_size_bytes = 2048;
        gfs.checksum_block_bytes = 1024;
        gfs.check_recovery = false;
        MrConfig {
            gfs,
            coordinator_id: COORDINATOR_ID,
            heartbeat_interval_ms: 50,
            worker_dead_after_ms: 600,
            fetch_timeout_ms: 150,
            fetch_max_attempts: 5,
            fetch_piece_bytes: 4096,
            tail_piece_bytes: 256,
            backup_tasks: self.backup_tasks,
            backup_after_median_factor: 3,
            backup_min_running_ms: 100,
            exit_workers_when_done: true,
            submit_retry_ms: 300,
            locate_retry_ms: 200,
            knobs: self.knobs.clone(),
        }
    }
}

/// The app for a short name: `wc`, `ii`, `grep`, `sort`.
pub fn app_named(name: &str) -> Option<AppKind> {
    Some(match name {
        "wc" => AppKind::WordCount,
        "ii" => AppKind::InvertedIndex,
        "grep" => AppKind::Grep { pattern: "ea".into() },
        "sort" => AppKind::Sort,
        _ => return None,
    })
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} app={:?} chunkservers={} workers={} files={} max_file_chunks={} R={} \
             drop={}‰ dup={}‰ delay=1..{}ms worker_crash_every={}ms max_crashes={} slow_worker={:?} backups={} {} never_reexecute_completed_maps={}",
            self.seed,
            self.app,
            self.chunkservers,
            self.workers,
            self.input_files,
            self.max_file_chunks,
            self.reduce_tasks,
            self.drop_per_mille,
            self.duplicate_per_mille,
            self.delay_max_ms,
            self.worker_crash_every_ms,
            self.max_worker_crashes,
            self.slow_worker,
            self.backup_tasks,
            self.device_faults,
            self.knobs.never_reexecute_completed_maps,
        )
    }
}
