//! The job client: submits one job to the coordinator and repeats the submission (which
//! doubles as a status query) until the job is finished or refused.

use crate::config::MrConfig;
use crate::node::{Event, Input, Outputs, StateMachine};
use crate::wire::{JobSpec, JobState, MrMessage, NodeId};

/// A client for one job.
pub struct JobClient {
    id: NodeId,
    config: MrConfig,
    spec: Option<JobSpec>,
    result: Option<JobState>,
    next_submit_ms: u64,
}

impl JobClient {
    /// An idle client with node id `id`.
    pub fn new(id: NodeId, config: MrConfig) -> Self {
        JobClient { id, config, spec: None, result: None, next_submit_ms: 0 }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Submits `spec` now (and again every `submit_retry_ms` until it is answered for good).
    pub fn submit(&mut self, now_ms: u64, spec: JobSpec, out: &mut Outputs) {
        self.spec = Some(spec);
        self.result = None;
        self.send(now_ms, out);
    }

    /// The final answer: finished (with the output files), busy or rejected.
    pub fn result(&self) -> Option<&JobState> {
        self.result.as_ref()
    }

    fn send(&mut self, now_ms: u64, out: &mut Outputs) {
        if let Some(spec) = self.spec.clone() {
            out.send(self.config.coordinator_id, MrMessage::SubmitJob { spec });
            self.next_submit_ms = now_ms + self.config.submit_retry_ms;
        }
    }
}

impl StateMachine for JobClient {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        match input {
            Input::Mr { msg: MrMessage::JobStatus { job, state }, .. } => {
                if self.spec.as_ref().is_none_or(|spec| spec.job != job) || self.result.is_some() {
                    return;
                }
                out.events.push(Event::JobStatus { job, state: state.clone() });
                if !matches!(state, JobState::Running(_)) {
                    self.result = Some(state);
                    self.spec = None;
                }
            }
            Input::Tick if now_ms >= self.next_submit_ms => self.send(now_ms, out),
            _ => {}
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        self.spec.as_ref().map(|_| self.next_submit_ms)
    }
}
