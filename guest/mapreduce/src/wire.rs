//! The MapReduce wire format: messages between job clients, the coordinator and workers.
//!
//! Frames reuse GFS's framing (`len | crc32c | postcard payload`, see
//! [`gfs::wire::encode_frame_of`]); GFS traffic of the embedded clients keeps GFS's own
//! messages. A receiver tells the two apart by the connection (in the simulator: the sender's
//! role).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub use gfs::wire::NodeId;
use gfs::wire::{FrameError, GfsError};

/// Names one job.
pub type JobId = u64;
/// Index of a map task (0..M) or a reduce task / partition (0..R).
pub type TaskIndex = u32;
/// Names one execution of one task (unique per coordinator).
pub type AttemptId = u64;
/// Names one life of a worker: drawn at boot, so a restarted worker is a new incarnation.
pub type Incarnation = u64;
/// Matches a fetch reply to its request (unique per reducer).
pub type FetchId = u64;

/// The application a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppKind {
    WordCount,
    InvertedIndex,
    /// Lines containing `pattern`, keyed by `document:byte offset`.
    Grep {
        pattern: String,
    },
    /// Lines in byte order (range-partitioned: the parts concatenated are sorted).
    Sort,
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job: JobId,
    pub app: AppKind,
    /// GFS paths of the input files (text; lines end with `\n`; no NUL bytes).
    pub inputs: Vec<String>,
    /// R: number of reduce tasks and output files.
    pub reduce_tasks: u32,
    /// GFS directory of the output files `part-00000` .. (must not exist yet).
    pub output_dir: String,
}

/// Which kind a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskKind {
    Map,
    Reduce,
}

/// A map task's input: one chunk of one file (plus the end of its last line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub path: String,
    pub chunk_index: u64,
}

/// Where a completed map task's partitions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutputLocation {
    pub map_task: TaskIndex,
    pub worker: NodeId,
    pub incarnation: Incarnation,
}

/// What a task needs besides the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskSpec {
    Map { split: Split },
    Reduce { map_outputs: Vec<MapOutputLocation> },
}

/// Coordinator -> worker: run this attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub attempt: AttemptId,
    pub job: JobId,
    pub app: AppKind,
    pub task: TaskIndex,
    pub reduce_tasks: u32,
    pub output_dir: String,
    pub spec: TaskSpec,
}

impl Assignment {
    /// Map or reduce.
    pub fn kind(&self) -> TaskKind {
        match self.spec {
            TaskSpec::Map { .. } => TaskKind::Map,
            TaskSpec::Reduce { .. } => TaskKind::Reduce,
        }
    }
}

/// Why a task attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskError {
    /// A GFS operation failed after the client's retries.
    Gfs(GfsError),
    /// The worker's disk failed a request.
    Disk,
    /// The worker's disk has no room for the map output.
    DiskFull,
    /// A mapper's partition could not be fetched (its worker is gone or unreachable).
    FetchFailed { location: MapOutputLocation },
    /// A fetched partition failed its checksum or did not decode.
    CorruptPartition { location: MapOutputLocation },
    /// The merged runs did not decode (a bug: each was checked when fetched).
    Records,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    Done,
    Failed(TaskError),
}

/// A worker's state, sent as its heartbeat (and at once when it changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub incarnation: Incarnation,
    /// The chunkserver on the worker's machine, if any (for map locality).
    pub host: Option<NodeId>,
    /// The attempt it is running.
    pub running: Option<AttemptId>,
    /// Attempts it finished that the coordinator has not acknowledged yet.
    pub finished: Vec<(AttemptId, TaskOutcome)>,
}

/// Coordinator -> worker: the answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Finished attempts the coordinator has recorded.
    pub acknowledged: Vec<AttemptId>,
    /// Stop this attempt (another attempt finished the task, or it was reassigned).
    pub abort: Option<AttemptId>,
    /// Run this (may repeat an earlier assignment the worker did not confirm).
    pub assign: Option<Assignment>,
    /// The heartbeat came from an incarnation presumed dead: drop all state, start afresh.
    pub reset: bool,
    /// No job is running or queued.
    pub job_done: bool,
}

/// A piece of a map output partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPiece {
    /// Length of the whole partition.
    pub total_bytes: u64,
    /// CRC32C of the whole partition.
    pub crc32c: u32,
    #[serde(with = "gfs::wire::byte_vec")]
    pub bytes: Vec<u8>,
}

/// Reducer -> mapper: bytes `offset..offset+max_bytes` of partition `partition` of map task
/// `map_task` of `job`, as written by incarnation `incarnation` of the mapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub id: FetchId,
    pub job: JobId,
    pub map_task: TaskIndex,
    pub partition: TaskIndex,
    pub incarnation: Incarnation,
    pub offset: u64,
    pub max_bytes: u32,
}

/// Why a mapper could not serve a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchError {
    /// This worker (incarnation) does not hold that map output.
    Gone,
    /// Its disk failed the read.
    Disk,
}

/// How far a running job is, as the coordinator tells the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Map tasks whose output is available, of `maps` (0 while the inputs are located).
    pub maps_done: u32,
    pub maps: u32,
    /// Reduce tasks whose output is committed, of `reduces`.
    pub reduces_done: u32,
    pub reduces: u32,
    /// Attempts that ended in failure.
    pub attempts_failed: u32,
    /// Finished map tasks run again because their output was lost with a worker.
    pub maps_reexecuted: u32,
    /// Workers presumed dead during the job.
    pub workers_lost: u32,
}

/// Where a job stands, as the coordinator tells the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted and running.
    Running(JobProgress),
    /// Every output file is committed; `progress` sums up how it went.
    Finished { outputs: Vec<String>, progress: JobProgress },
    /// Not accepted: another job is running.
    Busy,
    /// Not accepted: the spec is unusable (no inputs, no reduce tasks, a missing input file).
    Rejected,
}

/// Every MapReduce message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MrMessage {
    /// Client -> coordinator; repeated until finished (doubles as a status query).
    SubmitJob { spec: JobSpec },
    /// Coordinator -> client.
    JobStatus { job: JobId, state: JobState },
    /// Worker -> coordinator.
    Heartbeat(WorkerStatus),
    /// Coordinator -> worker.
    Directive(Directive),
    /// Reducer -> mapper.
    Fetch(FetchRequest),
    /// Mapper -> reducer.
    FetchReply { id: FetchId, result: Result<PartitionPiece, FetchError> },
}

/// A MapReduce message with its addressee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MrEnvelope {
    pub to: NodeId,
    pub msg: MrMessage,
}

/// Encodes `msg` as one frame (GFS's framing).
pub fn encode_frame(msg: &MrMessage) -> Vec<u8> {
    gfs::wire::encode_frame_of(msg)
}

/// Decodes the first frame in `bytes`, returning the message and the bytes it used.
pub fn decode_frame(bytes: &[u8]) -> Result<(MrMessage, usize), FrameError> {
    gfs::wire::decode_frame_of(bytes)
}

/// What a MapReduce node's mesh carries: GFS messages (for its embedded GFS client) and
/// MapReduce messages. The two share the frame format; a receiver tells them apart by sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Gfs(gfs::wire::Message),
    Mr(MrMessage),
}

impl gfs::wire::FramedMessage for Packet {
    fn to_frame(&self) -> Vec<u8> {
        match self {
            Packet::Gfs(msg) => gfs::wire::encode_frame(msg),
            Packet::Mr(msg) => encode_frame(msg),
        }
    }
}

/// Decodes the first frame in `bytes` from a GFS node (`from_gfs`) or a MapReduce node.
pub fn decode_packet(from_gfs: bool, bytes: &[u8]) -> Result<(Packet, usize), FrameError> {
    if from_gfs {
        gfs::wire::decode_frame(bytes).map(|(msg, used)| (Packet::Gfs(msg), used))
    } else {
        decode_frame(bytes).map(|(msg, used)| (Packet::Mr(msg), used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn frames_round_trip_and_reject_corruption() {
        let msg = MrMessage::FetchReply {
            id: 9,
            result: Ok(PartitionPiece { total_bytes: 3, crc32c: 7, bytes: vec![1, 2, 3] }),
        };
        let frame = encode_frame(&msg);
        assert_eq!(decode_frame(&frame), Ok((msg, frame.len())));
        let mut corrupt = frame.clone();
        corrupt[10] ^= 1;
        assert_eq!(decode_frame(&corrupt), Err(FrameError::Checksum));
    }
}
