//! The coordinator: splits jobs into tasks, assigns them to workers, tracks worker liveness,
//! re-executes lost work, runs backup attempts of stragglers and reports finished jobs.
//!
//! Workers pull work: every heartbeat carries the worker's incarnation, the attempt it runs
//! and the attempts it finished; the reply ([`Directive`]) acknowledges, aborts, assigns. All
//! of it is idempotent, so lost, duplicated and reordered messages only cost time:
//! - an assignment the worker does not confirm is repeated (same attempt id);
//! - a finished attempt is reported until acknowledged; only the first result of a task counts;
//! - a worker silent for `worker_dead_after_ms`, or seen with a new incarnation, is presumed
//!   dead: its in-progress attempts are dropped and its completed maps (their output sat on
//!   its disk) run again unless every reduce is already done; a heartbeat from a dead
//!   incarnation gets `reset`;
//! - once no task of the current phase is idle, an idle worker gets a backup attempt of the
//!   longest-running single attempt that has run `backup_after_median_factor` times the median
//!   duration of completed tasks of its kind (and at least `backup_min_running_ms`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use gfs::client::{ClientOp, OpId, OpOutput};
use gfs::wire::{GfsError, NodeId};

use crate::config::MrConfig;
use crate::gfs_link::GfsLink;
use crate::node::{Event, Input, Outputs, StateMachine};
use crate::wire::{
    Assignment, AttemptId, Directive, Incarnation, JobId, JobProgress, JobSpec, JobState,
    MapOutputLocation, MrMessage, Split, TaskError, TaskIndex, TaskKind, TaskOutcome, TaskSpec,
    WorkerStatus,
};

/// The output file of partition `partition` of a job writing to `output_dir`.
pub fn output_path(output_dir: &str, partition: TaskIndex) -> String {
    format!("{output_dir}/part-{partition:05}")
}

struct WorkerInfo {
    incarnation: Incarnation,
    host: Option<NodeId>,
    last_seen_ms: u64,
    assigned: Option<AttemptId>,
}

struct LiveAttempt {
    kind: TaskKind,
    task: TaskIndex,
    worker: NodeId,
    incarnation: Incarnation,
    started_ms: u64,
}

#[derive(Clone, Copy, Default)]
struct TaskState {
    /// Who completed it (for maps: where the output is).
    done: Option<(NodeId, Incarnation)>,
    live_attempts: u32,
}

#[derive(PartialEq, Eq)]
enum Phase {
    /// Asking GFS how many chunks each input has and where they are.
    Locating,
    Running,
    Finished,
}

struct Job {
    spec: JobSpec,
    submitter: NodeId,
    phase: Phase,
    chunk_counts: Vec<Option<u64>>,
    replicas: BTreeMap<(usize, u64), Vec<NodeId>>,
    retry_counts_at_ms: Vec<(usize, u64)>,
    splits: Vec<(Split, Vec<NodeId>)>,
    maps: Vec<TaskState>,
    reduces: Vec<TaskState>,
    /// Durations of completed attempts, per kind (map, reduce).
    durations_ms: [Vec<u64>; 2],
    /// Failures, re-executions and lost workers so far (the counts of the progress).
    tally: JobProgress,
}

impl Job {
    /// How far the job is.
    fn progress(&self) -> JobProgress {
        let done = |tasks: &[TaskState]| tasks.iter().filter(|t| t.done.is_some()).count() as u32;
        JobProgress {
            maps_done: done(&self.maps),
            maps: self.maps.len() as u32,
            reduces_done: done(&self.reduces),
            reduces: self.reduces.len() as u32,
            ..self.tally
        }
    }
}

enum GfsPurpose {
    Count { file: usize },
    Locate { file: usize, index: u64 },
}

/// The coordinator role.
pub struct Coordinator {
    id: NodeId,
    config: MrConfig,
    gfs: GfsLink,
    workers: BTreeMap<NodeId, WorkerInfo>,
    retired: BTreeSet<(NodeId, Incarnation)>,
    job: Option<Job>,
    finished_jobs: BTreeMap<JobId, (Vec<String>, JobProgress)>,
    next_attempt: AttemptId,
    attempts: BTreeMap<AttemptId, LiveAttempt>,
    gfs_ops: BTreeMap<OpId, GfsPurpose>,
}

fn kind_slot(kind: TaskKind) -> usize {
    match kind {
        TaskKind::Map => 0,
        TaskKind::Reduce => 1,
    }
}

impl Coordinator {
    /// A coordinator with node id `id`; `seed` drives its GFS client's retry jitter.
    pub fn new(id: NodeId, config: MrConfig, seed: u64) -> Self {
        Coordinator {
            id,
            gfs: GfsLink::new(id, config.gfs.clone(), seed),
            config,
            workers: BTreeMap::new(),
            retired: BTreeSet::new(),
            job: None,
            finished_jobs: BTreeMap::new(),
            next_attempt: 1,
            attempts: BTreeMap::new(),
            gfs_ops: BTreeMap::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Number of map tasks of the current job (known once its inputs are located).
    pub fn map_tasks(&self) -> usize {
        self.job.as_ref().map_or(0, |job| job.maps.len())
    }

    /// True once the current job (if any) has finished.
    pub fn idle(&self) -> bool {
        self.job.as_ref().is_none_or(|job| job.phase == Phase::Finished)
    }

    /// True once a job ran and finished and no other started since.
    pub fn job_finished(&self) -> bool {
        self.job.as_ref().is_some_and(|job| job.phase == Phase::Finished)
    }

    fn on_submit(&mut self, now_ms: u64, from: NodeId, spec: JobSpec, out: &mut Outputs) {
        let job_id = spec.job;
        let state = if let Some((outputs, progress)) = self.finished_jobs.get(&job_id) {
            JobState::Finished { outputs: outputs.clone(), progress: *progress }
        } else if let Some(job) = self.job.as_ref().filter(|job| job.spec.job == job_id) {
            JobState::Running(job.progress())
        } else if !self.idle() {
            JobState::Busy
        } else if spec.reduce_tasks == 0 || spec.inputs.is_empty() {
            JobState::Rejected
        } else {
            let files = spec.inputs.len();
            let job = Job {
                spec,
                submitter: from,
                phase: Phase::Locating,
                chunk_counts: alloc::vec![None; files],
                replicas: BTreeMap::new(),
                retry_counts_at_ms: Vec::new(),
                splits: Vec::new(),
                maps: Vec::new(),
                reduces: Vec::new(),
                durations_ms: [Vec::new(), Vec::new()],
                tally: JobProgress::default(),
            };
            self.job = Some(job);
            for file in 0..files {
                self.ask_chunk_count(now_ms, file, out);
            }
            JobState::Running(JobProgress::default())
        };
        out.send(from, MrMessage::JobStatus { job: job_id, state });
    }

    fn ask_chunk_count(&mut self, now_ms: u64, file: usize, out: &mut Outputs) {
        let Some(job) = &self.job else { return };
        let path = job.spec.inputs[file].clone();
        let op = self.gfs.submit(now_ms, ClientOp::ChunkCount { path }, out);
        self.gfs_ops.insert(op, GfsPurpose::Count { file });
    }

    fn on_gfs_events(&mut self, now_ms: u64, out: &mut Outputs) {
        while let Some(event) = self.gfs.events.pop_front() {
            let Some(purpose) = self.gfs_ops.remove(&event.op) else { continue };
            let Some(job) = self.job.as_mut().filter(|job| job.phase == Phase::Locating) else {
                continue;
            };
            match (purpose, event.result) {
                (GfsPurpose::Count { file }, Ok(OpOutput::ChunkCount(count))) => {
                    job.chunk_counts[file] = Some(count);
                    let path = job.spec.inputs[file].clone();
                    for index in 0..count {
                        let op = ClientOp::Locate { path: path.clone(), index };
                        let op_id = self.gfs.submit(now_ms, op, out);
                        self.gfs_ops.insert(op_id, GfsPurpose::Locate { file, index });
                    }
                }
                (GfsPurpose::Count { .. }, Err(GfsError::NotFound | GfsError::InvalidPath)) => {
                    self.reject_job(out);
                    continue;
                }
                (GfsPurpose::Count { file }, _) => {
                    job.retry_counts_at_ms.push((file, now_ms + self.config.locate_retry_ms));
                }
                (GfsPurpose::Locate { file, index }, result) => {
                    // Without a location the split is still usable, just not placed near data.
                    let replicas = match result {
                        Ok(OpOutput::Location(Some(location))) => location.replicas,
                        _ => Vec::new(),
                    };
                    job.replicas.insert((file, index), replicas);
                }
            }
            self.start_if_located(now_ms);
        }
    }

    fn reject_job(&mut self, out: &mut Outputs) {
        if let Some(job) = self.job.take() {
            self.gfs_ops.clear();
            let msg = MrMessage::JobStatus { job: job.spec.job, state: JobState::Rejected };
            out.send(job.submitter, msg);
        }
    }

    fn start_if_located(&mut self, _now_ms: u64) {
        let Some(job) = self.job.as_mut() else { return };
        let expected: u64 =
            job.chunk_counts.iter().map(|count| count.unwrap_or(u64::MAX / 4)).sum();
        if job.chunk_counts.iter().any(Option::is_none) || job.replicas.len() as u64 != expected {
            return;
        }
        for (file, count) in job.chunk_counts.iter().enumerate() {
            for index in 0..count.expect("all counted") {
                let split = Split { path: job.spec.inputs[file].clone(), chunk_index: index };
                let replicas = job.replicas.remove(&(file, index)).unwrap_or_default();
                job.splits.push((split, replicas));
            }
        }
        job.maps = alloc::vec![TaskState::default(); job.splits.len()];
        job.reduces = alloc::vec![TaskState::default(); job.spec.reduce_tasks as usize];
        job.phase = Phase::Running;
    }

    fn on_heartbeat(&mut self, now_ms: u64, from: NodeId, status: WorkerStatus, out: &mut Outputs) {
        let mut directive = Directive {
            acknowledged: Vec::new(),
            abort: None,
            assign: None,
            reset: false,
            job_done: self.job_finished(),
        };
        if self.retired.contains(&(from, status.incarnation)) {
            directive.reset = true;
            out.send(from, MrMessage::Directive(directive));
            return;
        }
        if let Some(known) = self.workers.get(&from) {
            if known.incarnation != status.incarnation {
                let old = known.incarnation;
                self.lose_worker(now_ms, from, old, out);
            }
        }
        let info = self.workers.entry(from).or_insert(WorkerInfo {
            incarnation: status.incarnation,
            host: status.host,
            last_seen_ms: now_ms,
            assigned: None,
        });
        info.last_seen_ms = now_ms;
        info.host = status.host;
        for (attempt, outcome) in &status.finished {
            directive.acknowledged.push(*attempt);
            self.finish_attempt(now_ms, from, *attempt, *outcome, out);
        }
        // An attempt the worker runs that is no longer wanted here is aborted.
        if let Some(running) = status.running {
            let wanted =
                self.workers[&from].assigned == Some(running) && self.attempt_wanted(running);
            if !wanted {
                directive.abort = Some(running);
                self.drop_attempt(running);
            }
        }
        // An assignment the worker does not confirm is repeated (if still valid).
        let assigned = self.workers[&from].assigned;
        if let Some(attempt) = assigned {
            if !self.attempt_wanted(attempt) {
                self.drop_attempt(attempt);
            } else if status.running != Some(attempt) {
                directive.assign = self.assignment(attempt);
                if directive.assign.is_none() {
                    self.drop_attempt(attempt);
                }
            }
        }
        let busy = status.running.is_some() && directive.abort.is_none();
        if self.workers[&from].assigned.is_none() && !busy {
            directive.assign = self.assign_new(now_ms, from, out);
        }
        directive.job_done = self.job_finished();
        out.send(from, MrMessage::Directive(directive));
    }

    /// True while `attempt` is live and its task still needs it.
    fn attempt_wanted(&self, attempt: AttemptId) -> bool {
        let (Some(live), Some(job)) = (self.attempts.get(&attempt), self.job.as_ref()) else {
            return false;
        };
        job.phase == Phase::Running && job.task(live.kind, live.task).done.is_none()
    }

    /// Forgets a live attempt (aborted or lost).
    fn drop_attempt(&mut self, attempt: AttemptId) {
        let Some(live) = self.attempts.remove(&attempt) else { return };
        if let Some(job) = self.job.as_mut() {
            if let Some(task) = job.task_mut(live.kind, live.task) {
                task.live_attempts = task.live_attempts.saturating_sub(1);
            }
        }
        if let Some(info) = self.workers.get_mut(&live.worker) {
            if info.assigned == Some(attempt) {
                info.assigned = None;
            }
        }
    }

    fn finish_attempt(
        &mut self,
        now_ms: u64,
        from: NodeId,
        attempt: AttemptId,
        outcome: TaskOutcome,
        out: &mut Outputs,
    ) {
        let Some(live) = self.attempts.get(&attempt) else { return };
        if live.worker != from {
            return;
        }
        let (kind, task, incarnation, started_ms) =
            (live.kind, live.task, live.incarnation, live.started_ms);
        self.drop_attempt(attempt);
        out.events.push(Event::AttemptFinished { worker: from, attempt, kind, task, outcome });
        let Some(job) = self.job.as_mut().filter(|job| job.phase == Phase::Running) else { return };
        match outcome {
            TaskOutcome::Done => {
                let Some(state) = job.task_mut(kind, task) else { return };
                if state.done.is_none() {
                    state.done = Some((from, incarnation));
                    job.durations_ms[kind_slot(kind)].push(now_ms - started_ms);
                }
                if kind == TaskKind::Reduce && job.reduces.iter().all(|r| r.done.is_some()) {
                    self.finish_job(out);
                }
            }
            TaskOutcome::Failed(
                TaskError::FetchFailed { location } | TaskError::CorruptPartition { location },
            ) => {
                job.tally.attempts_failed += 1;
                // The reducer could not get this map output (intact): run the map again.
                let reexecute = !self.config.knobs.never_reexecute_completed_maps;
                if let Some(map) =
                    job.maps.get_mut(location.map_task as usize).filter(|_| reexecute)
                {
                    if map.done == Some((location.worker, location.incarnation)) {
                        map.done = None;
                        job.tally.maps_reexecuted += 1;
                    }
                }
            }
            TaskOutcome::Failed(_) => job.tally.attempts_failed += 1,
        }
    }

    fn finish_job(&mut self, out: &mut Outputs) {
        let Some(job) = self.job.as_mut() else { return };
        job.phase = Phase::Finished;
        let outputs: Vec<String> =
            (0..job.spec.reduce_tasks).map(|r| output_path(&job.spec.output_dir, r)).collect();
        let job_id = job.spec.job;
        let progress = job.progress();
        self.finished_jobs.insert(job_id, (outputs.clone(), progress));
        let state = JobState::Finished { outputs: outputs.clone(), progress };
        out.send(job.submitter, MrMessage::JobStatus { job: job_id, state });
        out.events.push(Event::JobFinished { job: job_id, outputs });
        let live: Vec<AttemptId> = self.attempts.keys().copied().collect();
        for attempt in live {
            self.drop_attempt(attempt);
        }
    }

    /// Presumes incarnation `incarnation` of `worker` dead.
    fn lose_worker(
        &mut self,
        _now_ms: u64,
        worker: NodeId,
        incarnation: Incarnation,
        out: &mut Outputs,
    ) {
        self.retired.insert((worker, incarnation));
        self.workers.remove(&worker);
        let lost: Vec<AttemptId> = self
            .attempts
            .iter()
            .filter(|(_, live)| live.worker == worker && live.incarnation == incarnation)
            .map(|(id, _)| *id)
            .collect();
        for attempt in lost {
            self.drop_attempt(attempt);
        }
        if let Some(job) = self.job.as_mut().filter(|job| job.phase == Phase::Running) {
            job.tally.workers_lost += 1;
            if job.reduces.iter().any(|r| r.done.is_none())
                && !self.config.knobs.never_reexecute_completed_maps
            {
                for map in job.maps.iter_mut().filter(|m| m.done == Some((worker, incarnation))) {
                    map.done = None;
                    job.tally.maps_reexecuted += 1;
                }
            }
        }
        out.events.push(Event::WorkerLost { worker });
    }

    /// The assignment message for a live attempt (`None` if it can no longer run).
    fn assignment(&self, attempt: AttemptId) -> Option<Assignment> {
        let live = self.attempts.get(&attempt)?;
        let job = self.job.as_ref()?;
        let spec = match live.kind {
            TaskKind::Map => TaskSpec::Map { split: job.splits[live.task as usize].0.clone() },
            TaskKind::Reduce => {
                let mut map_outputs = Vec::with_capacity(job.maps.len());
                for (index, map) in job.maps.iter().enumerate() {
                    let (worker, incarnation) = map.done?;
                    map_outputs.push(MapOutputLocation {
                        map_task: index as TaskIndex,
                        worker,
                        incarnation,
                    });
                }
                TaskSpec::Reduce { map_outputs }
            }
        };
        Some(Assignment {
            attempt,
            job: job.spec.job,
            app: job.spec.app.clone(),
            task: live.task,
            reduce_tasks: job.spec.reduce_tasks,
            output_dir: job.spec.output_dir.clone(),
            spec,
        })
    }

    fn assign_new(&mut self, now_ms: u64, worker: NodeId, out: &mut Outputs) -> Option<Assignment> {
        let (kind, task, backup) = self.pick_task(now_ms, worker)?;
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let info = self.workers.get_mut(&worker)?;
        info.assigned = Some(attempt);
        let incarnation = info.incarnation;
        self.attempts
            .insert(attempt, LiveAttempt { kind, task, worker, incarnation, started_ms: now_ms });
        let job = self.job.as_mut()?;
        if let Some(state) = job.task_mut(kind, task) {
            state.live_attempts += 1;
        }
        out.events.push(Event::Assigned { worker, attempt, kind, task, backup });
        self.assignment(attempt)
    }

    fn pick_task(&self, now_ms: u64, worker: NodeId) -> Option<(TaskKind, TaskIndex, bool)> {
        let job = self.job.as_ref().filter(|job| job.phase == Phase::Running)?;
        let (kind, tasks) = if job.maps.iter().any(|m| m.done.is_none()) {
            (TaskKind::Map, &job.maps)
        } else {
            (TaskKind::Reduce, &job.reduces)
        };
        let idle =
            |(_, state): &(usize, &TaskState)| state.done.is_none() && state.live_attempts == 0;
        if kind == TaskKind::Map {
            let host = self.workers.get(&worker).and_then(|info| info.host);
            let near =
                tasks.iter().enumerate().filter(idle).find(|(index, _)| {
                    host.is_some_and(|host| job.splits[*index].1.contains(&host))
                });
            if let Some((index, _)) = near {
                return Some((kind, index as TaskIndex, false));
            }
        }
        if let Some((index, _)) = tasks.iter().enumerate().find(idle) {
            return Some((kind, index as TaskIndex, false));
        }
        self.pick_backup(now_ms, worker, kind).map(|task| (kind, task, true))
    }

    /// The straggler to back up, if any.
    fn pick_backup(&self, now_ms: u64, worker: NodeId, kind: TaskKind) -> Option<TaskIndex> {
        if !self.config.backup_tasks {
            return None;
        }
        let job = self.job.as_ref()?;
        let mut durations = job.durations_ms[kind_slot(kind)].clone();
        if durations.is_empty() {
            return None;
        }
        durations.sort_unstable();
        let median_ms = durations[durations.len() / 2];
        let threshold_ms = (median_ms * self.config.backup_after_median_factor)
            .max(self.config.backup_min_running_ms);
        self.attempts
            .values()
            .filter(|live| live.kind == kind && live.worker != worker)
            .filter(|live| now_ms.saturating_sub(live.started_ms) >= threshold_ms)
            .filter(|live| {
                let state = job.task(kind, live.task);
                state.done.is_none() && state.live_attempts == 1
            })
            .min_by_key(|live| live.started_ms)
            .map(|live| live.task)
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Outputs) {
        let dead: Vec<(NodeId, Incarnation)> = self
            .workers
            .iter()
            .filter(|(_, info)| info.last_seen_ms + self.config.worker_dead_after_ms <= now_ms)
            .map(|(id, info)| (*id, info.incarnation))
            .collect();
        for (worker, incarnation) in dead {
            self.lose_worker(now_ms, worker, incarnation, out);
        }
        let due: Vec<usize> = match self.job.as_mut() {
            Some(job) => {
                let due = job
                    .retry_counts_at_ms
                    .iter()
                    .filter(|(_, at)| *at <= now_ms)
                    .map(|(f, _)| *f)
                    .collect();
                job.retry_counts_at_ms.retain(|(_, at)| *at > now_ms);
                due
            }
            None => Vec::new(),
        };
        for file in due {
            self.ask_chunk_count(now_ms, file, out);
        }
    }
}

impl Job {
    fn task(&self, kind: TaskKind, task: TaskIndex) -> TaskState {
        let tasks = match kind {
            TaskKind::Map => &self.maps,
            TaskKind::Reduce => &self.reduces,
        };
        tasks.get(task as usize).copied().unwrap_or_default()
    }

    fn task_mut(&mut self, kind: TaskKind, task: TaskIndex) -> Option<&mut TaskState> {
        match kind {
            TaskKind::Map => self.maps.get_mut(task as usize),
            TaskKind::Reduce => self.reduces.get_mut(task as usize),
        }
    }
}

impl StateMachine for Coordinator {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        match input {
            Input::Mr { from, msg } => match msg {
                MrMessage::SubmitJob { spec } => self.on_submit(now_ms, from, spec, out),
                MrMessage::Heartbeat(status) => self.on_heartbeat(now_ms, from, status, out),
                _ => {}
            },
            Input::Gfs { from, msg } => {
                self.gfs.step(now_ms, gfs::Input::Message { from, msg }, out)
            }
            Input::Disk(_) => {}
            Input::Tick => {
                self.gfs.step(now_ms, gfs::Input::Tick, out);
                self.on_tick(now_ms, out);
            }
        }
        self.on_gfs_events(now_ms, out);
    }

    fn next_poll_ms(&self) -> Option<u64> {
        let dead_check = self
            .workers
            .values()
            .map(|info| info.last_seen_ms + self.config.worker_dead_after_ms)
            .min();
        let retry = self
            .job
            .as_ref()
            .and_then(|job| job.retry_counts_at_ms.iter().map(|(_, at)| *at).min());
        [dead_check, retry, self.gfs.next_poll_ms()].into_iter().flatten().min()
    }
}
