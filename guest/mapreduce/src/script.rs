//! The job node's scripted workload, as the VMs run it: write `files` text files drawn from a
//! seed into GFS, submit a word-count job, wait for it, read every output file back and compare
//! it with a word count computed locally; a GFS step that fails is retried until a time limit.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use gfs::client::{ClientEvent, ClientOp, OpOutput};
use gfs::driver::Workload;
use gfs::pcg::Pcg32;
use gfs::script::Attempts;
use gfs::wire::GfsError;

use crate::app::app_for;
use crate::coordinator::output_path;
use crate::node::{Event, Outputs};
use crate::records::run_sequential;
use crate::service::MrNode;
use crate::wire::{AppKind, JobSpec, JobState};

/// The job the script submits and where its output goes.
pub const JOB_ID: u64 = 1;
pub const OUTPUT_DIR: &str = "/mr/out/job-1";

/// The job script's steps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Create(usize),
    Write(usize),
    Submit,
    Wait,
    Count(u32),
    Read(u32),
}

/// Load the input, run the job, read the output back, verify.
pub struct WordCountScript {
    files: Vec<(String, Vec<u8>)>,
    reduces: u32,
    chunk_bytes: u64,
    stage: Stage,
    attempts: Attempts,
    /// The job client's latest word from the coordinator.
    job_state: Option<JobState>,
    submitted_ms: u64,
    job_ms: u64,
    /// The output files read so far, by partition.
    outputs: Vec<Vec<u8>>,
    /// Chunks of the output file being read.
    chunks: u64,
}

/// `kib` KiB of lines of words drawn from `seed`: a vocabulary of a few hundred made-up words,
/// some far more frequent than others.
pub fn text(seed: u64, file: usize, kib: usize) -> Vec<u8> {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ho",
        "ju",
    ];
    let mut rng = Pcg32::new(seed, 0x77 + file as u64);
    let mut data = Vec::with_capacity(kib * 1024 + 64);
    while data.len() < kib * 1024 {
        let words = 4 + rng.next_u64() % 9;
        for index in 0..words {
            if index > 0 {
                data.push(b' ');
            }
            // The product of two uniform draws favours small numbers.
            let number = (rng.next_u64() % 32) * (rng.next_u64() % 32);
            for digit in [number / 16 % 16, number % 16] {
                data.extend_from_slice(SYLLABLES[digit as usize].as_bytes());
            }
            if number >= 256 {
                data.extend_from_slice(SYLLABLES[(number / 256) as usize].as_bytes());
            }
        }
        data.push(b'\n');
    }
    data
}

impl WordCountScript {
    /// `files` files of `kib` KiB drawn from `seed` (`/mr/input/words-N`), `reduces` reduce
    /// tasks, chunks of `chunk_bytes`, within `limit_s` seconds from `now_ms`.
    pub fn new(
        files: usize,
        kib: usize,
        reduces: u32,
        seed: u64,
        chunk_bytes: u64,
        now_ms: u64,
        limit_s: u64,
    ) -> Self {
        let files = (0..files)
            .map(|file| (alloc::format!("/mr/input/words-{file}"), text(seed, file, kib)))
            .collect();
        WordCountScript {
            files,
            reduces,
            chunk_bytes,
            stage: Stage::Create(0),
            attempts: Attempts::new("mr job", now_ms, limit_s),
            job_state: None,
            submitted_ms: now_ms,
            job_ms: 0,
            outputs: Vec::new(),
            chunks: 0,
        }
    }

    pub fn boxed(self) -> Box<dyn Workload<MrNode>> {
        Box::new(self)
    }

    /// The GFS operation of the current step, or the job to submit.
    fn next_action(
        &mut self,
        now_ms: u64,
        log: &mut Vec<String>,
    ) -> Option<Result<ClientOp, JobSpec>> {
        if !self.attempts.ready(now_ms) {
            return None;
        }
        Some(Ok(match self.stage {
            Stage::Create(file) => ClientOp::Create { path: self.files[file].0.clone() },
            Stage::Write(file) => {
                let (path, data) = &self.files[file];
                ClientOp::Write { path: path.clone(), offset: 0, data: data.clone() }
            }
            Stage::Submit => {
                self.stage = Stage::Wait;
                self.submitted_ms = now_ms;
                log.push(alloc::format!(
                    "mr job: submitting word count over {} files",
                    self.files.len()
                ));
                return Some(Err(JobSpec {
                    job: JOB_ID,
                    app: AppKind::WordCount,
                    inputs: self.files.iter().map(|(path, _)| path.clone()).collect(),
                    reduce_tasks: self.reduces,
                    output_dir: String::from(OUTPUT_DIR),
                }));
            }
            Stage::Wait => return None,
            Stage::Count(partition) => {
                ClientOp::ChunkCount { path: output_path(OUTPUT_DIR, partition) }
            }
            Stage::Read(partition) => ClientOp::Read {
                path: output_path(OUTPUT_DIR, partition),
                offset: 0,
                len: self.chunks * self.chunk_bytes,
            },
        }))
    }

    fn advance(&mut self, next: Stage) {
        self.stage = next;
        self.attempts.failures = 0;
    }

    /// The stage after reading partition `partition`'s output (or finding it empty).
    fn after_partition(
        &mut self,
        now_ms: u64,
        partition: u32,
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>> {
        if partition + 1 < self.reduces {
            self.advance(Stage::Count(partition + 1));
            None
        } else {
            Some(self.verify(now_ms, log))
        }
    }

    fn on_job_state(&mut self, now_ms: u64, log: &mut Vec<String>) -> Option<Result<(), String>> {
        if self.stage != Stage::Wait {
            return None;
        }
        match self.job_state.take()? {
            JobState::Running(_) => None,
            JobState::Finished { outputs, .. } => {
                self.job_ms = now_ms - self.submitted_ms;
                log.push(alloc::format!("mr job: finished in {} ms: {outputs:?}", self.job_ms));
                self.advance(Stage::Count(0));
                None
            }
            state => Some(Err(alloc::format!("the coordinator answered the job with {state:?}"))),
        }
    }

    fn on_gfs_event(
        &mut self,
        now_ms: u64,
        event: ClientEvent,
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>> {
        if !self.attempts.complete(event.op) {
            return None;
        }
        match (self.stage, event.result) {
            (Stage::Create(file), Ok(_)) => self.advance(Stage::Write(file)),
            // An earlier attempt may have created it before its reply was lost.
            (Stage::Create(file), Err(GfsError::AlreadyExists)) if self.attempts.failures > 0 => {
                self.advance(Stage::Write(file))
            }
            (Stage::Write(file), Ok(_)) => {
                let (path, data) = &self.files[file];
                log.push(alloc::format!("mr job: wrote {path}, {} bytes", data.len()));
                let next = if file + 1 < self.files.len() {
                    Stage::Create(file + 1)
                } else {
                    Stage::Submit
                };
                self.advance(next);
            }
            (Stage::Count(partition), Ok(OpOutput::ChunkCount(0))) => {
                self.outputs.push(Vec::new());
                return self.after_partition(now_ms, partition, log);
            }
            (Stage::Count(partition), Ok(OpOutput::ChunkCount(chunks))) => {
                self.chunks = chunks;
                self.advance(Stage::Read(partition));
            }
            (Stage::Read(partition), Ok(OpOutput::Data(mut data))) => {
                // The last chunk reads back zero-filled past the file's end.
                let end = data.iter().rposition(|byte| *byte != 0).map_or(0, |at| at + 1);
                data.truncate(end);
                log.push(alloc::format!(
                    "mr job: read {}, {} bytes",
                    output_path(OUTPUT_DIR, partition),
                    end
                ));
                self.outputs.push(data);
                return self.after_partition(now_ms, partition, log);
            }
            (stage, result) => self.attempts.failed(now_ms, &stage, result.err(), log),
        }
        None
    }

    fn verify(&self, now_ms: u64, log: &mut Vec<String>) -> Result<(), String> {
        let app = app_for(&AppKind::WordCount);
        let documents: Vec<(&str, &[u8])> =
            self.files.iter().map(|(path, data)| (path.as_str(), data.as_slice())).collect();
        let expected = run_sequential(app.as_ref(), &documents, self.reduces);
        for (partition, (got, want)) in self.outputs.iter().zip(&expected).enumerate() {
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len());
                return Err(alloc::format!(
                    "output partition {partition}: {} bytes, the sequential count {} bytes, \
                     first difference at byte {at}",
                    got.len(),
                    want.len()
                ));
            }
        }
        let keys: usize =
            expected.iter().map(|part| part.iter().filter(|byte| **byte == b'\n').count()).sum();
        let input_bytes: usize = self.files.iter().map(|(_, data)| data.len()).sum();
        log.push(alloc::format!(
            "mr job: {keys} distinct words over {input_bytes} bytes match the sequential count; \
             job {} ms, {} ms in all",
            self.job_ms,
            now_ms - self.attempts.started_ms
        ));
        log.push("mr job ok".into());
        Ok(())
    }
}

impl Workload<MrNode> for WordCountScript {
    fn drive(
        &mut self,
        now_ms: u64,
        node: &mut MrNode,
        out: &mut Outputs,
        events: &[Event],
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>> {
        let MrNode::Job { job, loader } = node else {
            return Some(Err("the word-count script runs on a job node".into()));
        };
        for event in events {
            if let Event::JobStatus { state, .. } = event {
                self.job_state = Some(state.clone());
            }
        }
        while let Some(event) = loader.events.pop_front() {
            if let Some(result) = self.on_gfs_event(now_ms, event, log) {
                return Some(result);
            }
        }
        if let Some(result) = self.on_job_state(now_ms, log) {
            return Some(result);
        }
        match self.next_action(now_ms, log) {
            Some(Ok(op)) => self.attempts.pending = Some(loader.submit(now_ms, op, out)),
            Some(Err(spec)) => job.submit(now_ms, spec, out),
            None => {}
        }
        self.attempts.check_deadline(now_ms, &self.stage)
    }

    fn wake_at_ms(&self) -> Option<u64> {
        Some(self.attempts.wake_at_ms(self.stage == Stage::Wait))
    }
}
