//! Settings every MapReduce role agrees on (intervals, timeouts, sizes, straggler policy).

/// MapReduce settings. Defaults suit a real cluster; the simulator scales times down.
#[derive(Clone, Debug)]
pub struct MrConfig {
    /// Settings of the GFS cluster the jobs read and write.
    pub gfs: gfs::Config,
    /// The coordinator's node id.
    pub coordinator_id: gfs::wire::NodeId,
    /// A worker reports its state this often (and at once when it changes).
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is presumed dead.
    pub worker_dead_after_ms: u64,
    /// How long a reducer waits for one fetched piece before asking again.
    pub fetch_timeout_ms: u64,
    /// How many times a reducer asks for one piece before it reports the mapper unreachable.
    pub fetch_max_attempts: u32,
    /// Bytes a mapper sends per fetch reply.
    pub fetch_piece_bytes: u32,
    /// Bytes a mapper reads at a time past its split's end to finish the last line.
    pub tail_piece_bytes: u32,
    /// Whether the coordinator starts backup attempts of straggling tasks.
    pub backup_tasks: bool,
    /// An attempt is a straggler once it has run this many times the median duration of the
    /// completed tasks of its kind ...
    pub backup_after_median_factor: u64,
    /// ... and at least this long.
    pub backup_min_running_ms: u64,
    /// Workers stop (and report it) once the coordinator says the job is done.
    pub exit_workers_when_done: bool,
    /// A job client repeats its submission (which doubles as a status query) this often.
    pub submit_retry_ms: u64,
    /// How long the coordinator waits before asking GFS again about the input files.
    pub locate_retry_ms: u64,
    /// Deliberately broken behaviour, only for proving the simulator catches it.
    pub knobs: MrTestKnobs,
}

/// Switches that break a rule on purpose. All off in production.
#[derive(Clone, Debug, Default)]
pub struct MrTestKnobs {
    /// Never run a completed map again: not when its worker is lost (its output lived on that
    /// worker's disk), not when a reducer cannot fetch its output.
    pub never_reexecute_completed_maps: bool,
}

impl Default for MrConfig {
    fn default() -> Self {
        MrConfig {
            gfs: gfs::Config::default(),
            coordinator_id: 1,
            heartbeat_interval_ms: 1_000,
            worker_dead_after_ms: 10_000,
            fetch_timeout_ms: 2_000,
            fetch_max_attempts: 6,
            fetch_piece_bytes: 1 << 20,
            tail_piece_bytes: 4096,
            backup_tasks: true,
            backup_after_median_factor: 3,
            backup_min_running_ms: 5_000,
            exit_workers_when_done: false,
            submit_retry_ms: 5_000,
            locate_retry_ms: 1_000,
            knobs: MrTestKnobs::default(),
        }
    }
}

impl MrConfig {
    /// The settings of a cluster of VMs over the GFS cluster `gfs` (the guest roles and the
    /// host clients must agree on them): the defaults scaled to VMs and seconds.
    pub fn for_vms(gfs: gfs::Config, coordinator_id: gfs::wire::NodeId) -> MrConfig {
        let fetch_piece_bytes = gfs.chunk_size_bytes.min(256 * 1024);
        MrConfig {
            gfs,
            coordinator_id,
            heartbeat_interval_ms: 500,
            worker_dead_after_ms: 5_000,
            fetch_timeout_ms: 2_000,
            fetch_max_attempts: 6,
            fetch_piece_bytes,
            tail_piece_bytes: 4096,
            backup_tasks: true,
            backup_after_median_factor: 3,
            backup_min_running_ms: 5_000,
            exit_workers_when_done: false,
            submit_retry_ms: 1_000,
            locate_retry_ms: 500,
            knobs: MrTestKnobs::default(),
        }
    }
}
