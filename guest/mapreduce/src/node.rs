//! The interface every MapReduce role implements: `(now, input) -> outputs`, plus when to poll.

use alloc::string::String;
use alloc::vec::Vec;

use gfs::disk::{DiskCompletion, DiskOp, DiskRequest};
use gfs::wire::{Envelope, NodeId};

use crate::wire::{
    AttemptId, JobId, JobState, MrEnvelope, MrMessage, TaskIndex, TaskKind, TaskOutcome,
};

/// Something that happened to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A MapReduce message arrived.
    Mr { from: NodeId, msg: MrMessage },
    /// A GFS message arrived for the node's embedded GFS client.
    Gfs { from: NodeId, msg: gfs::wire::Message },
    /// A request on the node's own disk completed.
    Disk(DiskCompletion),
    /// The time from [`StateMachine::next_poll_ms`] has come (ticks are always safe).
    Tick,
}

/// Observable facts a role reports (for logs, tests and the simulator's checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Coordinator: an attempt was handed to a worker (`backup`: the task already runs).
    Assigned { worker: NodeId, attempt: AttemptId, kind: TaskKind, task: TaskIndex, backup: bool },
    /// Coordinator: a worker incarnation is presumed dead (silent, or seen restarted).
    WorkerLost { worker: NodeId },
    /// Coordinator: an attempt's result was recorded.
    AttemptFinished {
        worker: NodeId,
        attempt: AttemptId,
        kind: TaskKind,
        task: TaskIndex,
        outcome: TaskOutcome,
    },
    /// Coordinator: every output file of the job is committed.
    JobFinished { job: JobId, outputs: Vec<String> },
    /// Worker: it started running an attempt.
    TaskStarted { attempt: AttemptId, kind: TaskKind, task: TaskIndex },
    /// Worker: the app's map function ran over a split of `input_bytes`.
    MapApplied { job: JobId, task: TaskIndex, input_bytes: u64 },
    /// Worker: a reduce output was committed (or found committed by another attempt).
    ReduceCommitted { job: JobId, task: TaskIndex, output_bytes: u64 },
    /// Worker: the attempt ended here (done, failed or aborted).
    TaskStopped { attempt: AttemptId, kind: TaskKind, task: TaskIndex },
    /// Worker: the coordinator said the job is done; the worker stopped.
    Exited,
    /// Job client: the coordinator's answer about its job.
    JobStatus { job: JobId, state: JobState },
}

/// What a node wants done, filled in by [`StateMachine::step`].
#[derive(Debug, Default)]
pub struct Outputs {
    /// MapReduce messages to send.
    pub messages: Vec<MrEnvelope>,
    /// GFS messages from the embedded GFS client.
    pub gfs_messages: Vec<Envelope>,
    /// Requests for the node's own disk.
    pub disk: Vec<DiskRequest>,
    /// What happened.
    pub events: Vec<Event>,
}

impl Outputs {
    /// Queues `msg` for `to`.
    pub fn send(&mut self, to: NodeId, msg: MrMessage) {
        self.messages.push(MrEnvelope { to, msg });
    }

    /// Queues a disk request.
    pub fn disk(&mut self, id: u64, op: DiskOp) {
        self.disk.push(DiskRequest { id, op });
    }
}

/// A sans-IO role: no I/O, no clock, no hidden randomness.
pub trait StateMachine {
    /// Handles `input` at time `now_ms`, appending what must be done to `out`.
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs);

    /// The earliest time the node wants an [`Input::Tick`], if any.
    fn next_poll_ms(&self) -> Option<u64>;
}
