//! Cluster-wide settings shared by every role (sizes, timeouts, replication goal).

use crate::wire::NodeId;

/// Settings every role must agree on. Defaults follow the GFS paper; the simulator scales the
/// sizes down to kilobytes and the times down to seconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id of the master.
    pub master_id: NodeId,
    /// Size of one chunk (64 MiB in the paper). A multiple of `checksum_block_bytes`.
    pub chunk_size_bytes: u32,
    /// Size of the block each CRC32C covers (64 KiB in the paper). A multiple of 512.
    pub checksum_block_bytes: u32,
    /// Number of replicas each chunk should have.
    pub replication_goal: usize,
    /// How long a lease lasts after it is granted or extended.
    pub lease_ms: u64,
    /// How often a chunkserver reports its chunks to the master.
    pub heartbeat_interval_ms: u64,
    /// A chunkserver silent for this long is presumed dead by the master.
    pub chunkserver_dead_after_ms: u64,
    /// How long a request waits for its reply before it is retried or failed.
    pub rpc_timeout_ms: u64,
    /// How many times a client retries one step before it reports failure.
    pub client_max_attempts: u32,
    /// How long a client trusts cached chunk locations.
    pub client_cache_ttl_ms: u64,
    /// A chunkserver verifies the checksums of one idle replica this often.
    pub scrub_interval_ms: u64,
    /// How long a deleted (hidden) file is kept before garbage collection removes it.
    pub gc_retention_ms: u64,
    /// How often the master scans for garbage and under-replicated chunks.
    pub master_scan_interval_ms: u64,
    /// How many re-replications the master runs at once.
    pub max_concurrent_clones: usize,
    /// How long pushed data waits in a chunkserver's buffer for its mutation.
    pub data_buffer_ttl_ms: u64,
    /// Bytes of buffered pushed data a chunkserver keeps at most.
    pub data_buffer_max_bytes: usize,
    /// Bytes a re-replication copies per message.
    pub copy_piece_bytes: u32,
    /// Sectors reserved for each of the master's two checkpoint slots.
    pub master_checkpoint_sectors: u64,
    /// The log is checkpointed once it holds this many bytes.
    pub master_log_checkpoint_bytes: u64,
    /// Keep a second copy of the master's durable state so a test can compare it with what
    /// recovery rebuilds (costs memory; off in production).
    pub check_recovery: bool,
    /// Deliberately broken behaviour, only for proving the simulator catches it.
    pub knobs: TestKnobs,
}

/// Switches that break an invariant on purpose. All off in production.
#[derive(Clone, Debug, Default)]
pub struct TestKnobs {
    /// Accept replicas whatever their version: the master keeps stale replicas as locations and
    /// chunkservers serve reads for an older version than the client asked for.
    pub skip_stale_version_check: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            master_id: 0,
            chunk_size_bytes: 64 << 20,
            checksum_block_bytes: 64 << 10,
            replication_goal: 3,
            lease_ms: 60_000,
            heartbeat_interval_ms: 5_000,
            chunkserver_dead_after_ms: 30_000,
            rpc_timeout_ms: 2_000,
            client_max_attempts: 8,
            client_cache_ttl_ms: 10_000,
            scrub_interval_ms: 1_000,
            gc_retention_ms: 3 * 24 * 3600 * 1000,
            master_scan_interval_ms: 10_000,
            max_concurrent_clones: 4,
            data_buffer_ttl_ms: 60_000,
            data_buffer_max_bytes: 256 << 20,
            copy_piece_bytes: 1 << 20,
            master_checkpoint_sectors: 64 * 1024,
            master_log_checkpoint_bytes: 16 << 20,
            check_recovery: false,
            knobs: TestKnobs::default(),
        }
    }
}

impl Config {
    /// The configuration of a cluster of VMs (the guest roles and the host clients must agree
    /// on it): the paper's design scaled to VMs and seconds, with `chunk_size_bytes` chunks,
    /// `replication_goal` replicas and leases of `lease_ms`.
    pub fn for_vms(
        master_id: NodeId,
        chunk_size_bytes: u32,
        replication_goal: usize,
        lease_ms: u64,
    ) -> Config {
        Config {
            master_id,
            chunk_size_bytes,
            checksum_block_bytes: 64 * 1024,
            replication_goal,
            lease_ms,
            heartbeat_interval_ms: 500,
            chunkserver_dead_after_ms: 4000,
            rpc_timeout_ms: 2000,
            client_max_attempts: 10,
            client_cache_ttl_ms: 5000,
            scrub_interval_ms: 2000,
            gc_retention_ms: 60_000,
            master_scan_interval_ms: 1000,
            max_concurrent_clones: 2,
            data_buffer_ttl_ms: 30_000,
            data_buffer_max_bytes: 64 << 20,
            copy_piece_bytes: 256 * 1024,
            master_checkpoint_sectors: 2048,
            master_log_checkpoint_bytes: 256 * 1024,
            check_recovery: false,
            knobs: TestKnobs::default(),
        }
    }

    /// Number of checksum blocks in one chunk.
    pub fn blocks_per_chunk(&self) -> u32 {
        self.chunk_size_bytes / self.checksum_block_bytes
    }

    /// Largest record a record append accepts: a quarter of a chunk.
    pub fn max_record_bytes(&self) -> u32 {
        self.chunk_size_bytes / 4
    }
}
