//! The worker: runs the map and reduce attempts the coordinator assigns and serves its map
//! outputs to reducers.
//!
//! Map: read the split (its chunk, from one byte before it to see whether a line starts at
//! the chunk's first byte, plus pieces past its end until the last line ends) through the GFS
//! client; apply the app's map to the lines that start in the chunk; partition, sort and
//! combine (see [`crate::records`]); write the R runs to the worker's own disk; remember where.
//! Reduce: fetch partition `r` of every map output from its worker (piece by piece, retried
//! on timeout, checked by CRC32C), merge, reduce, write the output to a temporary GFS file
//! named after the attempt, then commit it with a GFS snapshot to the final name (atomic: the
//! final file appears whole or not at all; `AlreadyExists` means another attempt of the same
//! task committed identical bytes first) and delete the temporary file.
//!
//! Map outputs live only as long as the worker's memory of them: a restarted worker is a new
//! incarnation and serves nothing from before (the coordinator re-runs those maps).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use gfs::client::{ClientOp, OpId, OpOutput};
use gfs::disk::{pad_to_sector, sectors_for, DiskCompletion, DiskOp, SECTOR_BYTES};
use gfs::pcg::Pcg32;
use gfs::wire::{crc32c, GfsError, NodeId};

use crate::app::app_for;
use crate::config::MrConfig;
use crate::coordinator::output_path;
use crate::gfs_link::GfsLink;
use crate::node::{Event, Input, Outputs, StateMachine};
use crate::records::{decode_run, map_to_runs, reduce_runs};
use crate::split::SplitReader;
use crate::wire::{
    Assignment, AttemptId, Directive, FetchError, FetchId, FetchRequest, Incarnation, JobId,
    MapOutputLocation, MrMessage, PartitionPiece, TaskError, TaskIndex, TaskOutcome, TaskSpec,
    WorkerStatus,
};

/// Attempt ids remembered after they finish, to ignore late duplicate assignments.
const REMEMBERED_ATTEMPTS: usize = 64;

/// One run (partition) of a map output on disk.
#[derive(Clone, Copy, Debug)]
struct Extent {
    sector: u64,
    bytes: u64,
    crc32c: u32,
}

/// Map outputs on this worker's disk (bump-allocated; reset when a new job starts).
#[derive(Default)]
struct Store {
    job: Option<JobId>,
    next_free_sector: u64,
    outputs: BTreeMap<TaskIndex, Vec<Extent>>,
}

enum DiskWait {
    MapWrite { attempt: AttemptId },
    Serve { to: NodeId, id: FetchId, skip: usize, len: usize, total_bytes: u64, crc32c: u32 },
}

struct MapRun {
    reader: SplitReader,
    read_op: Option<OpId>,
    writes_pending: usize,
    extents: Vec<Extent>,
}

struct Fetch {
    location: MapOutputLocation,
    /// Requests sent for the current offset (a late reply to an earlier one is as good).
    requests: Vec<FetchId>,
    bytes: Vec<u8>,
    done: bool,
    attempts: u32,
    deadline_ms: u64,
}

#[derive(PartialEq)]
enum ReduceStage {
    Fetching,
    CreateTemp,
    WriteTemp,
    Commit,
    DeleteTemp,
}

struct ReduceRun {
    fetches: Vec<Fetch>,
    stage: ReduceStage,
    output: Vec<u8>,
    output_bytes: u64,
    temp_path: String,
}

enum Work {
    Map(MapRun),
    Reduce(ReduceRun),
}

struct Running {
    assignment: Assignment,
    work: Work,
}

/// The worker role.
pub struct Worker {
    id: NodeId,
    config: MrConfig,
    host: Option<NodeId>,
    disk_sectors: u64,
    rng: Pcg32,
    incarnation: Incarnation,
    gfs: GfsLink,
    running: Option<Running>,
    finished: Vec<(AttemptId, TaskOutcome)>,
    recently_done: VecDeque<AttemptId>,
    next_heartbeat_ms: u64,
    exited: bool,
    store: Store,
    next_disk_id: u64,
    disk_waits: BTreeMap<u64, DiskWait>,
    gfs_ops: BTreeMap<OpId, AttemptId>,
    next_fetch_id: FetchId,
}

impl Worker {
    /// A worker with node id `id` whose machine also runs chunkserver `host` (if any), with a
    /// disk of `disk_sectors` sectors for map outputs; `seed` draws its incarnations and
    /// drives its GFS client's jitter.
    pub fn new(
        id: NodeId,
        config: MrConfig,
        host: Option<NodeId>,
        disk_sectors: u64,
        seed: u64,
    ) -> Self {
        let mut rng = Pcg32::new(seed, u64::from(id));
        let incarnation = rng.next_u64();
        // Random start: a restarted worker never takes a reply to its previous life's fetch.
        let next_fetch_id = rng.next_u64() >> 1;
        Worker {
            id,
            gfs: GfsLink::new(id, config.gfs.clone(), rng.next_u64()),
            config,
            host,
            disk_sectors,
            rng,
            incarnation,
            running: None,
            finished: Vec::new(),
            recently_done: VecDeque::new(),
            next_heartbeat_ms: 0,
            exited: false,
            store: Store::default(),
            next_disk_id: 1,
            disk_waits: BTreeMap::new(),
            gfs_ops: BTreeMap::new(),
            next_fetch_id,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The attempt it runs, with its assignment.
    pub fn running(&self) -> Option<&Assignment> {
        self.running.as_ref().map(|running| &running.assignment)
    }

    /// True once it stopped because the job is done.
    pub fn exited(&self) -> bool {
        self.exited
    }

    fn heartbeat(&mut self, now_ms: u64, out: &mut Outputs) {
        if self.exited {
            return;
        }
        let status = WorkerStatus {
            incarnation: self.incarnation,
            host: self.host,
            running: self.running.as_ref().map(|running| running.assignment.attempt),
            finished: self.finished.clone(),
        };
        out.send(self.config.coordinator_id, MrMessage::Heartbeat(status));
        self.next_heartbeat_ms = now_ms + self.config.heartbeat_interval_ms;
    }

    fn on_directive(&mut self, now_ms: u64, directive: Directive, out: &mut Outputs) {
        if self.exited {
            return;
        }
        if directive.reset {
            self.stop_running(now_ms, out);
            self.finished.clear();
            self.store = Store::default();
            self.incarnation = self.rng.next_u64();
            self.heartbeat(now_ms, out);
            return;
        }
        self.finished.retain(|(attempt, _)| !directive.acknowledged.contains(attempt));
        if let Some(abort) = directive.abort {
            if self.running.as_ref().is_some_and(|running| running.assignment.attempt == abort) {
                self.stop_running(now_ms, out);
            }
        }
        if let Some(assignment) = directive.assign {
            let known = self.recently_done.contains(&assignment.attempt)
                || self.finished.iter().any(|(attempt, _)| *attempt == assignment.attempt);
            if self.running.is_none() && !known {
                self.start(now_ms, assignment, out);
            }
        }
        if directive.job_done
            && self.config.exit_workers_when_done
            && self.running.is_none()
            && self.finished.is_empty()
        {
            self.exited = true;
            out.events.push(Event::Exited);
        }
    }

    /// Ends the running attempt, however it ended (done, failed, aborted, reset).
    fn stop_running(&mut self, now_ms: u64, out: &mut Outputs) {
        if let Some(running) = self.running.take() {
            // A reduce attempt that created (or may be creating) its temporary file and did not
            // commit and delete it would hold its chunks forever; attempt after attempt (an
            // abort at every partition) they fill the chunkservers. Delete it; the result is
            // not awaited.
            if let Work::Reduce(reduce) = &running.work {
                let made = [ReduceStage::CreateTemp, ReduceStage::WriteTemp, ReduceStage::Commit];
                if made.contains(&reduce.stage) {
                    let op = ClientOp::Delete { path: reduce.temp_path.clone() };
                    self.gfs.submit(now_ms, op, out);
                }
            }
            let assignment = &running.assignment;
            out.events.push(Event::TaskStopped {
                attempt: assignment.attempt,
                kind: assignment.kind(),
                task: assignment.task,
            });
            self.recently_done.push_back(assignment.attempt);
            if self.recently_done.len() > REMEMBERED_ATTEMPTS {
                self.recently_done.pop_front();
            }
        }
    }

    fn finish(&mut self, now_ms: u64, outcome: TaskOutcome, out: &mut Outputs) {
        let Some(attempt) = self.running.as_ref().map(|running| running.assignment.attempt) else {
            return;
        };
        self.stop_running(now_ms, out);
        self.finished.push((attempt, outcome));
        self.heartbeat(now_ms, out);
    }

    fn start(&mut self, now_ms: u64, assignment: Assignment, out: &mut Outputs) {
        if self.store.job != Some(assignment.job) {
            self.store = Store { job: Some(assignment.job), ..Store::default() };
        }
        out.events.push(Event::TaskStarted {
            attempt: assignment.attempt,
            kind: assignment.kind(),
            task: assignment.task,
        });
        let attempt = assignment.attempt;
        let work = match &assignment.spec {
            TaskSpec::Map { split } => {
                let chunk_bytes = u64::from(self.config.gfs.chunk_size_bytes);
                let tail_bytes = u64::from(self.config.tail_piece_bytes);
                let reader = SplitReader::new(split.chunk_index, chunk_bytes, tail_bytes);
                let (offset, len) = reader.next_read().expect("a new reader reads the chunk");
                let op = ClientOp::Read { path: split.path.clone(), offset, len };
                let op_id = self.gfs.submit(now_ms, op, out);
                self.gfs_ops.insert(op_id, attempt);
                Work::Map(MapRun {
                    reader,
                    read_op: Some(op_id),
                    writes_pending: 0,
                    extents: Vec::new(),
                })
            }
            TaskSpec::Reduce { map_outputs } => {
                let fetches = map_outputs
                    .iter()
                    .map(|location| Fetch {
                        location: *location,
                        requests: Vec::new(),
                        bytes: Vec::new(),
                        done: false,
                        attempts: 0,
                        deadline_ms: 0,
                    })
                    .collect();
                let temp_path = format!(
                    "{}.tmp/part-{:05}.{}",
                    assignment.output_dir, assignment.task, attempt
                );
                Work::Reduce(ReduceRun {
                    fetches,
                    stage: ReduceStage::Fetching,
                    output: Vec::new(),
                    output_bytes: 0,
                    temp_path,
                })
            }
        };
        self.running = Some(Running { assignment, work });
        if matches!(self.running.as_ref().map(|r| &r.work), Some(Work::Reduce(_))) {
            let count = match &self.running.as_ref().expect("set").work {
                Work::Reduce(reduce) => reduce.fetches.len(),
                Work::Map(_) => 0,
            };
            for index in 0..count {
                self.send_fetch(now_ms, index, out);
            }
            self.reduce_if_fetched(now_ms, out);
        }
        self.heartbeat(now_ms, out);
    }

    // ---- map ----

    fn on_map_read(&mut self, now_ms: u64, result: Result<OpOutput, GfsError>, out: &mut Outputs) {
        let Some(Running { assignment, work: Work::Map(map) }) = self.running.as_mut() else {
            return;
        };
        let TaskSpec::Map { split } = &assignment.spec else { return };
        map.read_op = None;
        match result {
            Ok(OpOutput::Data(bytes)) => map.reader.on_data(&bytes),
            Ok(_) => {
                return self.finish(
                    now_ms,
                    TaskOutcome::Failed(TaskError::Gfs(GfsError::Busy)),
                    out,
                )
            }
            Err(error) => {
                return self.finish(now_ms, TaskOutcome::Failed(TaskError::Gfs(error)), out)
            }
        }
        let Some((offset, len)) = map.reader.next_read() else {
            return self.run_map(now_ms, out);
        };
        let op = ClientOp::Read { path: split.path.clone(), offset, len };
        let attempt = assignment.attempt;
        let op_id = self.gfs.submit(now_ms, op, out);
        self.gfs_ops.insert(op_id, attempt);
        if let Some(Running { work: Work::Map(map), .. }) = self.running.as_mut() {
            map.read_op = Some(op_id);
        }
    }

    fn run_map(&mut self, now_ms: u64, out: &mut Outputs) {
        let Some(Running { assignment, work: Work::Map(map) }) = self.running.as_mut() else {
            return;
        };
        let TaskSpec::Map { split } = &assignment.spec else { return };
        let app = app_for(&assignment.app);
        let text = map.reader.text();
        let base_offset = map.reader.base_offset();
        let runs =
            map_to_runs(app.as_ref(), &split.path, base_offset, text, assignment.reduce_tasks);
        out.events.push(Event::MapApplied {
            job: assignment.job,
            task: assignment.task,
            input_bytes: text.len() as u64,
        });
        let sectors: u64 = runs.iter().map(|run| sectors_for(run.len())).sum();
        if self.store.next_free_sector + sectors > self.disk_sectors {
            return self.finish(now_ms, TaskOutcome::Failed(TaskError::DiskFull), out);
        }
        let attempt = assignment.attempt;
        for run in runs {
            let extent = Extent {
                sector: self.store.next_free_sector,
                bytes: run.len() as u64,
                crc32c: crc32c(&run),
            };
            self.store.next_free_sector += sectors_for(run.len());
            map.extents.push(extent);
            if !run.is_empty() {
                let id = self.next_disk_id;
                self.next_disk_id += 1;
                out.disk(id, DiskOp::Write { sector: extent.sector, data: pad_to_sector(run) });
                self.disk_waits.insert(id, DiskWait::MapWrite { attempt });
                map.writes_pending += 1;
            }
        }
        self.map_if_written(now_ms, out);
    }

    fn map_if_written(&mut self, now_ms: u64, out: &mut Outputs) {
        let Some(Running { assignment, work: Work::Map(map) }) = self.running.as_mut() else {
            return;
        };
        if map.writes_pending > 0 || map.read_op.is_some() {
            return;
        }
        let extents = core::mem::take(&mut map.extents);
        self.store.outputs.insert(assignment.task, extents);
        self.finish(now_ms, TaskOutcome::Done, out);
    }

    // ---- serving map outputs ----

    fn on_fetch(&mut self, from: NodeId, request: FetchRequest, out: &mut Outputs) {
        let FetchRequest { id, job, map_task, partition, incarnation, offset, max_bytes } = request;
        let extent = (incarnation == self.incarnation && self.store.job == Some(job))
            .then(|| {
                self.store
                    .outputs
                    .get(&map_task)
                    .and_then(|extents| extents.get(partition as usize))
            })
            .flatten()
            .copied();
        let Some(extent) = extent else {
            out.send(from, MrMessage::FetchReply { id, result: Err(FetchError::Gone) });
            return;
        };
        if offset >= extent.bytes {
            let piece = PartitionPiece {
                total_bytes: extent.bytes,
                crc32c: extent.crc32c,
                bytes: Vec::new(),
            };
            out.send(from, MrMessage::FetchReply { id, result: Ok(piece) });
            return;
        }
        let len = (extent.bytes - offset).min(u64::from(max_bytes)) as usize;
        let skip = (offset % SECTOR_BYTES as u64) as usize;
        let sector = extent.sector + offset / SECTOR_BYTES as u64;
        let count = sectors_for(skip + len) as u32;
        let disk_id = self.next_disk_id;
        self.next_disk_id += 1;
        out.disk(disk_id, DiskOp::Read { sector, count });
        let wait = DiskWait::Serve {
            to: from,
            id,
            skip,
            len,
            total_bytes: extent.bytes,
            crc32c: extent.crc32c,
        };
        self.disk_waits.insert(disk_id, wait);
    }

    fn on_disk(&mut self, now_ms: u64, done: DiskCompletion, out: &mut Outputs) {
        match self.disk_waits.remove(&done.id) {
            Some(DiskWait::MapWrite { attempt }) => {
                let current =
                    self.running.as_ref().is_some_and(|r| r.assignment.attempt == attempt);
                if !current {
                    return;
                }
                if done.result.is_err() {
                    return self.finish(now_ms, TaskOutcome::Failed(TaskError::Disk), out);
                }
                if let Some(Running { work: Work::Map(map), .. }) = self.running.as_mut() {
                    map.writes_pending -= 1;
                }
                self.map_if_written(now_ms, out);
            }
            Some(DiskWait::Serve { to, id, skip, len, total_bytes, crc32c }) => {
                let result = match done.result {
                    Ok(data) if data.len() >= skip + len => Ok(PartitionPiece {
                        total_bytes,
                        crc32c,
                        bytes: data[skip..skip + len].to_vec(),
                    }),
                    _ => Err(FetchError::Disk),
                };
                out.send(to, MrMessage::FetchReply { id, result });
            }
            None => {}
        }
    }

    // ---- reduce ----

    fn send_fetch(&mut self, now_ms: u64, index: usize, out: &mut Outputs) {
        let request = self.next_fetch_id;
        self.next_fetch_id += 1;
        let timeout_ms = self.config.fetch_timeout_ms;
        let max_bytes = self.config.fetch_piece_bytes;
        let Some(Running { assignment, work: Work::Reduce(reduce) }) = self.running.as_mut() else {
            return;
        };
        let fetch = &mut reduce.fetches[index];
        fetch.requests.push(request);
        fetch.deadline_ms = now_ms + timeout_ms;
        let msg = MrMessage::Fetch(FetchRequest {
            id: request,
            job: assignment.job,
            map_task: fetch.location.map_task,
            partition: assignment.task,
            incarnation: fetch.location.incarnation,
            offset: fetch.bytes.len() as u64,
            max_bytes,
        });
        out.send(fetch.location.worker, msg);
    }

    fn on_fetch_reply(
        &mut self,
        now_ms: u64,
        id: FetchId,
        result: Result<PartitionPiece, FetchError>,
        out: &mut Outputs,
    ) {
        let Some(Running { work: Work::Reduce(reduce), .. }) = self.running.as_mut() else {
            return;
        };
        let Some(index) = reduce.fetches.iter().position(|f| !f.done && f.requests.contains(&id))
        else {
            return;
        };
        let fetch = &mut reduce.fetches[index];
        match result {
            Err(_) => {
                let location = fetch.location;
                self.finish(now_ms, TaskOutcome::Failed(TaskError::FetchFailed { location }), out)
            }
            Ok(piece) => {
                fetch.bytes.extend_from_slice(&piece.bytes);
                fetch.requests.clear();
                fetch.attempts = 0;
                if (fetch.bytes.len() as u64) < piece.total_bytes {
                    return self.send_fetch(now_ms, index, out);
                }
                if fetch.bytes.len() as u64 != piece.total_bytes
                    || crc32c(&fetch.bytes) != piece.crc32c
                    || decode_run(&fetch.bytes).is_err()
                {
                    let error = TaskError::CorruptPartition { location: fetch.location };
                    return self.finish(now_ms, TaskOutcome::Failed(error), out);
                }
                fetch.done = true;
                self.reduce_if_fetched(now_ms, out);
            }
        }
    }

    fn reduce_if_fetched(&mut self, now_ms: u64, out: &mut Outputs) {
        let Some(Running { assignment, work: Work::Reduce(reduce) }) = self.running.as_mut() else {
            return;
        };
        if !matches!(reduce.stage, ReduceStage::Fetching) || reduce.fetches.iter().any(|f| !f.done)
        {
            return;
        }
        let app = app_for(&assignment.app);
        let runs: Vec<&[u8]> = reduce.fetches.iter().map(|f| f.bytes.as_slice()).collect();
        match reduce_runs(app.as_ref(), &runs) {
            Ok(output) => {
                reduce.output_bytes = output.len() as u64;
                reduce.output = output;
            }
            Err(_) => {
                let error = TaskError::Records;
                return self.finish(now_ms, TaskOutcome::Failed(error), out);
            }
        }
        reduce.fetches.clear();
        reduce.stage = ReduceStage::CreateTemp;
        let op = ClientOp::Create { path: reduce.temp_path.clone() };
        let attempt = assignment.attempt;
        let op_id = self.gfs.submit(now_ms, op, out);
        self.gfs_ops.insert(op_id, attempt);
    }

    fn on_reduce_gfs(
        &mut self,
        now_ms: u64,
        result: Result<OpOutput, GfsError>,
        out: &mut Outputs,
    ) {
        let Some(Running { assignment, work: Work::Reduce(reduce) }) = self.running.as_mut() else {
            return;
        };
        let final_path = output_path(&assignment.output_dir, assignment.task);
        let next = match (&reduce.stage, result) {
            (ReduceStage::CreateTemp, Ok(_)) if !reduce.output.is_empty() => {
                reduce.stage = ReduceStage::WriteTemp;
                let data = core::mem::take(&mut reduce.output);
                ClientOp::Write { path: reduce.temp_path.clone(), offset: 0, data }
            }
            (ReduceStage::CreateTemp | ReduceStage::WriteTemp, Ok(_)) => {
                reduce.stage = ReduceStage::Commit;
                ClientOp::Snapshot { source: reduce.temp_path.clone(), target: final_path }
            }
            (ReduceStage::Commit, Ok(_) | Err(GfsError::AlreadyExists)) => {
                out.events.push(Event::ReduceCommitted {
                    job: assignment.job,
                    task: assignment.task,
                    output_bytes: reduce.output_bytes,
                });
                reduce.stage = ReduceStage::DeleteTemp;
                ClientOp::Delete { path: reduce.temp_path.clone() }
            }
            (ReduceStage::DeleteTemp, _) => return self.finish(now_ms, TaskOutcome::Done, out),
            // `finish` deletes the temporary file.
            (_, Err(error)) => {
                return self.finish(now_ms, TaskOutcome::Failed(TaskError::Gfs(error)), out)
            }
            (ReduceStage::Fetching, Ok(_)) => return,
        };
        let attempt = assignment.attempt;
        let op_id = self.gfs.submit(now_ms, next, out);
        self.gfs_ops.insert(op_id, attempt);
    }

    fn on_gfs_events(&mut self, now_ms: u64, out: &mut Outputs) {
        while let Some(event) = self.gfs.events.pop_front() {
            let Some(attempt) = self.gfs_ops.remove(&event.op) else { continue };
            let Some(running) = self.running.as_ref().filter(|r| r.assignment.attempt == attempt)
            else {
                continue; // a stopped attempt's operation
            };
            match running.work {
                Work::Map(_) => self.on_map_read(now_ms, event.result, out),
                Work::Reduce(_) => self.on_reduce_gfs(now_ms, event.result, out),
            }
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Outputs) {
        if self.exited {
            return;
        }
        if now_ms >= self.next_heartbeat_ms {
            self.heartbeat(now_ms, out);
        }
        let max_attempts = self.config.fetch_max_attempts;
        let Some(Running { work: Work::Reduce(reduce), .. }) = self.running.as_mut() else {
            return;
        };
        let overdue: Vec<usize> = reduce
            .fetches
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.done && f.deadline_ms <= now_ms)
            .map(|(index, _)| index)
            .collect();
        for index in overdue {
            let Some(Running { work: Work::Reduce(reduce), .. }) = self.running.as_mut() else {
                return;
            };
            let fetch = &mut reduce.fetches[index];
            fetch.attempts += 1;
            if fetch.attempts >= max_attempts {
                let location = fetch.location;
                return self.finish(
                    now_ms,
                    TaskOutcome::Failed(TaskError::FetchFailed { location }),
                    out,
                );
            }
            self.send_fetch(now_ms, index, out);
        }
    }
}

impl StateMachine for Worker {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        if self.exited {
            return;
        }
        match input {
            Input::Mr { from, msg } => match msg {
                MrMessage::Directive(directive) => self.on_directive(now_ms, directive, out),
                MrMessage::Fetch(request) => self.on_fetch(from, request, out),
                MrMessage::FetchReply { id, result } => {
                    self.on_fetch_reply(now_ms, id, result, out)
                }
                _ => {}
            },
            Input::Gfs { from, msg } => {
                self.gfs.step(now_ms, gfs::Input::Message { from, msg }, out)
            }
            Input::Disk(done) => self.on_disk(now_ms, done, out),
            Input::Tick => {
                self.gfs.step(now_ms, gfs::Input::Tick, out);
                self.on_tick(now_ms, out);
            }
        }
        self.on_gfs_events(now_ms, out);
    }

    fn next_poll_ms(&self) -> Option<u64> {
        if self.exited {
            return None;
        }
        let fetch = match self.running.as_ref().map(|r| &r.work) {
            Some(Work::Reduce(reduce)) => {
                reduce.fetches.iter().filter(|f| !f.done).map(|f| f.deadline_ms).min()
            }
            _ => None,
        };
        [Some(self.next_heartbeat_ms), fetch, self.gfs.next_poll_ms()].into_iter().flatten().min()
    }
}
