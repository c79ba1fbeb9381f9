//! Scripted workloads the VMs run (and the simulators can run too): the GFS client script that
//! creates a file, writes a pattern into it, reads it back and compares, retrying a failed step
//! until a time limit; and [`Attempts`], the bookkeeping of one operation at a time that other
//! services' scripts share.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Debug;

use crate::client::{ClientEvent, ClientOp, OpId, OpOutput};
use crate::driver::Workload;
use crate::pcg::Pcg32;
use crate::service::GfsNode;
use crate::wire::GfsError;
use crate::Outputs;

/// How long a script waits before retrying a failed step.
pub const SCRIPT_RETRY_MS: u64 = 500;

/// A script's bookkeeping of one GFS operation at a time: the operation in flight, the failed
/// attempts of the current step and when to retry, and the time limit of the whole script.
pub struct Attempts {
    /// Log prefix, e.g. `gfs client`.
    label: &'static str,
    /// The submitted operation of the current step.
    pub pending: Option<OpId>,
    /// Failed attempts of the current step.
    pub failures: u32,
    retry_at_ms: u64,
    deadline_ms: u64,
    pub started_ms: u64,
}

impl Attempts {
    pub fn new(label: &'static str, now_ms: u64, limit_s: u64) -> Self {
        Attempts {
            label,
            pending: None,
            failures: 0,
            retry_at_ms: now_ms,
            deadline_ms: now_ms + limit_s * 1000,
            started_ms: now_ms,
        }
    }

    /// True when no operation is in flight and no retry is waiting.
    pub fn ready(&self, now_ms: u64) -> bool {
        self.pending.is_none() && now_ms >= self.retry_at_ms
    }

    /// True (and nothing is in flight any more) when `op` is the operation in flight.
    pub fn complete(&mut self, op: OpId) -> bool {
        let ours = self.pending == Some(op);
        if ours {
            self.pending = None;
        }
        ours
    }

    /// When the script wants to run again; `busy`: it waits for something besides GFS.
    pub fn wake_at_ms(&self, busy: bool) -> u64 {
        if self.pending.is_some() || busy {
            self.deadline_ms
        } else {
            self.retry_at_ms.min(self.deadline_ms)
        }
    }

    /// The step at `stage` failed with `error`: it is retried after a pause.
    pub fn failed(
        &mut self,
        now_ms: u64,
        stage: &dyn Debug,
        error: Option<GfsError>,
        log: &mut Vec<String>,
    ) {
        self.failures += 1;
        log.push(alloc::format!(
            "{}: {stage:?} attempt {} failed: {:?}; retrying",
            self.label,
            self.failures,
            error
        ));
        self.retry_at_ms = now_ms + SCRIPT_RETRY_MS;
    }

    /// The script's failure once the time limit has run out at `stage`.
    pub fn check_deadline(&self, now_ms: u64, stage: &dyn Debug) -> Option<Result<(), String>> {
        (now_ms >= self.deadline_ms).then(|| {
            Err(alloc::format!(
                "{}: still at {stage:?} (after {} failed attempts) when the time limit ran out",
                self.label,
                self.failures
            ))
        })
    }
}

/// `len` bytes drawn from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Pcg32::new(seed, 0x6f5);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Megabytes per second with one decimal.
pub fn rate(bytes: usize, elapsed_ms: u64) -> String {
    let tenths = (bytes as u64 * 10) / (elapsed_ms.max(1) * 1000);
    alloc::format!("{}.{} MB/s", tenths / 10, tenths % 10)
}

/// The pattern script's steps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Create,
    Write,
    Read,
}

/// Create `path`, write the pattern in one write, read it back, verify.
pub struct PatternScript {
    path: String,
    data: Vec<u8>,
    stage: Stage,
    attempts: Attempts,
    stage_started_ms: u64,
    write_ms: u64,
}

impl PatternScript {
    /// Writes `len_bytes` drawn from `seed` to `path`, within `limit_s` seconds from `now_ms`.
    pub fn new(path: String, seed: u64, len_bytes: usize, now_ms: u64, limit_s: u64) -> Self {
        PatternScript {
            path,
            data: pattern(seed, len_bytes),
            stage: Stage::Create,
            attempts: Attempts::new("gfs client", now_ms, limit_s),
            stage_started_ms: now_ms,
            write_ms: 0,
        }
    }

    pub fn boxed(self) -> Box<dyn Workload<GfsNode>> {
        Box::new(self)
    }

    fn next_op(&mut self, now_ms: u64) -> Option<ClientOp> {
        if !self.attempts.ready(now_ms) {
            return None;
        }
        let path = self.path.clone();
        Some(match self.stage {
            Stage::Create => ClientOp::Create { path },
            Stage::Write => ClientOp::Write { path, offset: 0, data: self.data.clone() },
            Stage::Read => ClientOp::Read { path, offset: 0, len: self.data.len() as u64 },
        })
    }

    fn advance(&mut self, now_ms: u64, next: Stage) {
        self.stage = next;
        self.attempts.failures = 0;
        self.stage_started_ms = now_ms;
    }

    fn on_event(
        &mut self,
        now_ms: u64,
        event: &ClientEvent,
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>> {
        if !self.attempts.complete(event.op) {
            return None;
        }
        match (self.stage, &event.result) {
            (Stage::Create, Ok(_)) => {
                log.push(alloc::format!("gfs client: created {}", self.path));
                self.advance(now_ms, Stage::Write);
            }
            // An earlier attempt may have created it before its reply was lost.
            (Stage::Create, Err(GfsError::AlreadyExists)) if self.attempts.failures > 0 => {
                log.push(alloc::format!(
                    "gfs client: {} exists (an earlier attempt made it)",
                    self.path
                ));
                self.advance(now_ms, Stage::Write);
            }
            (Stage::Write, Ok(_)) => {
                self.write_ms = now_ms - self.stage_started_ms;
                log.push(alloc::format!(
                    "gfs client: wrote {} bytes in {} ms ({})",
                    self.data.len(),
                    self.write_ms,
                    rate(self.data.len(), self.write_ms)
                ));
                self.advance(now_ms, Stage::Read);
            }
            (Stage::Read, Ok(OpOutput::Data(read))) => {
                let read_ms = now_ms - self.stage_started_ms;
                log.push(alloc::format!(
                    "gfs client: read {} bytes in {read_ms} ms ({})",
                    read.len(),
                    rate(read.len(), read_ms)
                ));
                return Some(self.verify(read, now_ms, log));
            }
            (stage, result) => {
                let error = result.as_ref().err().copied();
                self.attempts.failed(now_ms, &stage, error, log);
            }
        }
        None
    }

    fn verify(&self, read: &[u8], now_ms: u64, log: &mut Vec<String>) -> Result<(), String> {
        if read.len() != self.data.len() {
            return Err(alloc::format!(
                "read {} bytes back, wrote {}",
                read.len(),
                self.data.len()
            ));
        }
        if let Some(offset) = read.iter().zip(&self.data).position(|(got, want)| got != want) {
            return Err(alloc::format!(
                "byte {offset} read back as {:#04x}, written as {:#04x}",
                read[offset],
                self.data[offset]
            ));
        }
        log.push(alloc::format!(
            "gfs client: {} bytes verified; {} ms in all, write {} ms",
            read.len(),
            now_ms - self.attempts.started_ms,
            self.write_ms
        ));
        log.push("gfs client ok".into());
        Ok(())
    }
}

impl Workload<GfsNode> for PatternScript {
    fn drive(
        &mut self,
        now_ms: u64,
        node: &mut GfsNode,
        out: &mut Outputs,
        events: &[ClientEvent],
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>> {
        for event in events {
            if let Some(result) = self.on_event(now_ms, event, log) {
                return Some(result);
            }
        }
        if let (GfsNode::Client(client), Some(op)) = (node, self.next_op(now_ms)) {
            self.attempts.pending = Some(client.submit(now_ms, op, out));
        }
        self.attempts.check_deadline(now_ms, &self.stage)
    }

    fn wake_at_ms(&self) -> Option<u64> {
        Some(self.attempts.wake_at_ms(false))
    }
}
