//! Simulation settings: everything a run depends on, derived from its seed.

use core::fmt;

use gfs::config::TestKnobs;
use gfs::pcg::Pcg32;
use gfs::Config;

use crate::world::DeviceFaults;

/// The knobs of one simulated run. [`Settings::from_seed`] draws them from the seed, so a seed
/// alone reproduces a run; tests may override fields afterwards.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub chunkservers: u32,
    pub clients: u32,
    pub ops_per_client: u32,
    /// Per-mille chance that a message is lost / delivered twice.
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Message delay range (reordering comes from the spread).
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Mean time between chunkserver crashes during the fault phase (0: none).
    pub chunkserver_crash_every_ms: u64,
    /// Mean time between master crashes during the fault phase (0: none).
    pub master_crash_every_ms: u64,
    /// Mean time between silent disk corruptions on chunkservers (0: none).
    pub corruption_every_ms: u64,
    /// Whether one chunkserver loses its disk for good (replaced by an empty one).
    pub lose_one_disk: bool,
    /// The fault phase ends at this time (clients may still be finishing).
    pub fault_phase_ms: u64,
    /// How long the fault-free liveness phase runs before its checks.
    pub liveness_phase_ms: u64,
    /// Chunks each chunkserver's disk holds.
    pub chunkserver_slots: u64,
    /// How often each chunkserver verifies one idle replica.
    pub scrub_interval_ms: u64,
    /// Disk errors, slow disks and partitions (drawn last, so the other draws stay the same).
    pub device_faults: DeviceFaults,
    /// The deliberately broken invariant, if any.
    pub knobs: TestKnobs,
}

impl Settings {
    /// Settings drawn from `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Pcg32::new(seed, 0x5e77);
        let calm = rng.chance(1, 5);
        let mut settings = Settings {
            seed,
            chunkservers: rng.range_inclusive(3, 6) as u32,
            clients: rng.range_inclusive(1, 3) as u32,
            ops_per_client: rng.range_inclusive(10, 30) as u32,
            drop_per_mille: if calm { 0 } else { rng.below(80) },
            duplicate_per_mille: if calm { 0 } else { rng.below(50) },
            delay_min_ms: 1,
            delay_max_ms: rng.range_inclusive(2, 40),
            chunkserver_crash_every_ms: if calm { 0 } else { rng.range_inclusive(500, 4000) },
            master_crash_every_ms: if calm || rng.chance(1, 2) {
                0
            } else {
                rng.range_inclusive(2000, 8000)
            },
            corruption_every_ms: if calm || rng.chance(1, 3) {
                0
            } else {
                rng.range_inclusive(300, 3000)
            },
            lose_one_disk: !calm && rng.chance(1, 4),
            fault_phase_ms: rng.range_inclusive(3000, 8000),
            liveness_phase_ms: 12_000,
            scrub_interval_ms: 50,
            chunkserver_slots: 64,
            device_faults: DeviceFaults::default(),
            knobs: TestKnobs::default(),
        };
        settings.device_faults = DeviceFaults::draw(&mut rng, calm);
        settings
    }

    /// A shorter run for the default test suite (thousands of seeds in debug builds): the same
    /// faults at the same rates, fewer operations, shorter phases.
    pub fn quick_from_seed(seed: u64) -> Self {
        let mut settings = Settings::from_seed(seed);
        settings.ops_per_client = settings.ops_per_client / 3 + 2;
        settings.fault_phase_ms = settings.fault_phase_ms / 3 + 500;
        settings.liveness_phase_ms = 4000;
        settings.scrub_interval_ms = 80;
        settings
    }

    /// The cluster configuration: paper defaults scaled to kilobytes and seconds.
    pub fn config(&self) -> Config {
        Config {
            master_id: crate::MASTER_ID,
            chunk_size_bytes: 8192,
            checksum_block_bytes: 1024,
            replication_goal: 3,
            lease_ms: 1000,
            heartbeat_interval_ms: 150,
            chunkserver_dead_after_ms: 1000,
            rpc_timeout_ms: 250,
            client_max_attempts: 12,
            client_cache_ttl_ms: 800,
            scrub_interval_ms: self.scrub_interval_ms,
            gc_retention_ms: 1500,
            master_scan_interval_ms: 200,
            max_concurrent_clones: 4,
            data_buffer_ttl_ms: 3000,
            data_buffer_max_bytes: 1 << 20,
            copy_piece_bytes: 4096,
            master_checkpoint_sectors: 256,
            master_log_checkpoint_bytes: 16 * 1024,
            check_recovery: true,
            knobs: self.knobs.clone(),
        }
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} chunkservers={} clients={} ops/client={} drop={}‰ dup={}‰ delay={}..{}ms \
             cs_crash_every={}ms master_crash_every={}ms corrupt_every={}ms lose_disk={} \
             {} faults_until={}ms liveness={}ms skip_stale_version_check={}",
            self.seed,
            self.chunkservers,
            self.clients,
            self.ops_per_client,
            self.drop_per_mille,
            self.duplicate_per_mille,
            self.delay_min_ms,
            self.delay_max_ms,
            self.chunkserver_crash_every_ms,
            self.master_crash_every_ms,
            self.corruption_every_ms,
            self.lose_one_disk,
            self.device_faults,
            self.fault_phase_ms,
            self.liveness_phase_ms,
            self.knobs.skip_stale_version_check,
        )
    }
}
