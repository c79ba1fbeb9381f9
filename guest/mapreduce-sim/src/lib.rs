//! Seeded deterministic simulation of the `mapreduce` state machines over simulated GFS.
//!
//! A layer on `gfs-sim`'s [`World`]: the GFS master and chunkservers run inside the world as
//! usual; the coordinator, the workers and the job client are the world's
//! [`Role::External`] nodes, so they share its clock, its lossy reordering network (every
//! message crosses its wire encoding), its disks and its crash semantics, and this layer steps
//! their state machines. One seed drives everything: the cluster, the input, message fates,
//! worker crash and restart times.
//!
//! A run loads the input files into GFS (fault-free), submits one job, runs until the job
//! client hears it finished and every worker has exited, then reads every output file back.
//! Checks (the run stops at the first failure):
//! - the job finishes within its deadline, and the client is told;
//! - every output file equals the sequential run's output for its partition;
//! - no worker exits before the coordinator has recorded the job as finished;
//! - every worker that is up exits once the job is done.
//!
//! [`Outcome`] also reports what the scenario tests assert on: how often each map ran, the
//! largest number of maps and of reduces running at once, backup attempts, lost workers.

pub mod inputs;
pub mod settings;

use std::collections::BTreeMap;

use gfs::client::{ClientEvent, ClientOp, OpId, OpOutput};
use gfs::driver::Driver;
use gfs::pcg::Pcg32;
use gfs::wire::{GfsError, NodeId};
use gfs_sim::world::{ExternalInput, Role, World};
use mapreduce::app::app_for;
use mapreduce::coordinator::{output_path, Coordinator};
use mapreduce::records::run_sequential;
use mapreduce::script::WordCountScript;
use mapreduce::service::MrNode;
use mapreduce::wire::{decode_packet, Packet};
use mapreduce::wire::{JobSpec, JobState, TaskKind};
use mapreduce::worker::Worker;
use mapreduce::{Event, MrConfig};

pub use settings::{app_named, Settings, COORDINATOR_ID, JOB_CLIENT_ID, LOADER_ID};

/// Sectors of each worker's disk (intermediate data).
const WORKER_DISK_SECTORS: u64 = 8192;
/// Simulated time allowed for loading the input and for reading the output back.
const IO_LIMIT_MS: u64 = 60_000;
/// After the job finished, every worker that is up must exit within this.
const EXIT_LIMIT_MS: u64 = 5_000;
/// Partitions happen only this long after the job starts: like worker crashes (at most
/// `max_worker_crashes`) they are a bounded fault. With partitions without end (one every
/// second, each up to two seconds, against a 600 ms failure timeout) the coordinator presumes
/// workers dead faster than maps complete (seed 7340070277: 122 workers lost, 306 maps run
/// again in 120 s), which no timeout-based failure detector can outlast; liveness is judged
/// once they heal.
const PARTITION_PHASE_MS: u64 = 30_000;

/// A check that did not hold.
#[derive(Clone, Debug)]
pub struct Failure {
    pub check: &'static str,
    pub detail: String,
    pub at_ms: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub settings: Option<Settings>,
    pub failure: Option<Failure>,
    /// Simulated time from submission to the coordinator recording the job finished.
    pub job_ms: u64,
    pub map_tasks: usize,
    /// How many times the map function ran, per map task.
    pub map_runs: BTreeMap<u32, u32>,
    pub max_parallel_maps: usize,
    pub max_parallel_reduces: usize,
    pub backup_attempts: u32,
    pub workers_lost: u32,
    pub worker_crashes: u32,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub steps: u64,
    pub trace: Vec<String>,
    /// The world's digest of the run (see [`World::digest`]).
    pub world_digest: u64,
}

impl gfs_sim::cli::Report for Outcome {
    fn failure(&self) -> Option<String> {
        let failure = self.failure.as_ref()?;
        Some(gfs_sim::cli::failure_text(failure.check, failure.at_ms, &failure.detail))
    }

    fn trace(&self) -> &[String] {
        &self.trace
    }

    fn summary(&self) -> String {
        format!(
            "job {} sim ms, {} map tasks (runs {:?}), max parallel maps {} reduces {}, {} backups, \
             {} worker crashes, {} workers lost, {} B in, {} B out, {} steps",
            self.job_ms,
            self.map_tasks,
            self.map_runs.values().collect::<Vec<_>>(),
            self.max_parallel_maps,
            self.max_parallel_reduces,
            self.backup_attempts,
            self.worker_crashes,
            self.workers_lost,
            self.input_bytes,
            self.output_bytes,
            self.steps
        )
    }

    fn simulated_digest(&self) -> u64 {
        let runs =
            self.map_runs.iter().map(|(task, runs)| u64::from(*task) << 32 | u64::from(*runs));
        let figures = [
            self.job_ms,
            self.map_tasks as u64,
            self.max_parallel_maps as u64,
            self.max_parallel_reduces as u64,
            u64::from(self.backup_attempts),
            u64::from(self.workers_lost),
            u64::from(self.worker_crashes),
            self.input_bytes,
            self.output_bytes,
            self.steps,
        ];
        let digest = gfs_sim::world::mix_digest(self.world_digest, &figures);
        gfs_sim::world::mix_digest(digest, &runs.collect::<Vec<_>>())
    }
}

struct WorkerSlot {
    index: usize,
    id: NodeId,
    host: Option<NodeId>,
}

struct Sim {
    settings: Settings,
    config: MrConfig,
    world: World,
    /// The MapReduce nodes' drivers (the same the VMs run), by world index.
    drivers: BTreeMap<usize, Driver<MrNode>>,
    workers: Vec<WorkerSlot>,
    loader: usize,
    coordinator: usize,
    job_client: usize,
    fault_rng: Pcg32,
    down: Vec<(usize, u64)>,
    loader_events: Vec<ClientEvent>,
    submitted_ms: u64,
    job_finished_ms: Option<u64>,
    exited: BTreeMap<NodeId, u64>,
    early_exit: Option<(NodeId, u64)>,
    outcome: Outcome,
}

/// Runs the VM job node's script (`mapreduce::script::WordCountScript`, what `role=mr-job`
/// runs: load `files` files of `kib` KiB, submit word count, read the output back and compare)
/// on the job node of a world drawn from `settings`, under its message, disk and crash faults
/// from the start. The script's own verdict is the outcome's failure, if any.
pub fn run_vm_job_script(settings: &Settings, files: usize, kib: usize) -> Outcome {
    let mut sim = Sim::new(settings.clone(), false);
    let failure = sim.run_vm_job_script(files, kib).err();
    let mut outcome = std::mem::take(&mut sim.outcome);
    outcome.settings = Some(settings.clone());
    outcome.failure = failure;
    outcome.steps = sim.world.stats.steps;
    outcome
}

/// Runs one seeded simulation.
pub fn run(settings: &Settings, trace: bool) -> Outcome {
    let mut sim = Sim::new(settings.clone(), trace);
    let failure = sim.run_all().err();
    let mut outcome = std::mem::take(&mut sim.outcome);
    outcome.settings = Some(settings.clone());
    outcome.failure = failure;
    outcome.steps = sim.world.stats.steps;
    outcome.trace = sim.world.trace.take().unwrap_or_default();
    outcome.world_digest = sim.world.digest();
    outcome
}

fn fail(check: &'static str, detail: String, at_ms: u64) -> Failure {
    Failure { check, detail, at_ms }
}

impl Sim {
    fn new(settings: Settings, trace: bool) -> Self {
        let config = settings.config();
        let mut world = World::new(settings.seed, config.gfs.clone()).with_chunkserver_slots(128);
        world.delay_max_ms = settings.delay_max_ms;
        if trace {
            world.trace = Some(Vec::new());
        }
        world.add_node(gfs_sim::MASTER_ID, Role::Master);
        for k in 1..=settings.chunkservers {
            world.add_node(10 * k, Role::Chunkserver);
        }
        let loader = world.add_node(LOADER_ID, Role::Client);
        let coordinator = world.add_node(COORDINATOR_ID, Role::External);
        let job_client = world.add_node(JOB_CLIENT_ID, Role::External);
        let mut workers = Vec::new();
        for k in 1..=settings.workers {
            // Workers beside a chunkserver get the next id, so its replica is their nearest.
            let (id, host) = if k <= settings.chunkservers {
                (10 * k + 1, Some(10 * k))
            } else {
                (100 + k, None)
            };
            let index = world.add_node_with_disk(id, Role::External, WORKER_DISK_SECTORS);
            if let Some((slow, extra_ms)) = settings.slow_worker {
                if slow + 1 == k {
                    world.nodes[index].extra_latency_ms = extra_ms;
                }
            }
            workers.push(WorkerSlot { index, id, host });
        }
        let mut sim = Sim {
            fault_rng: Pcg32::new(settings.seed, 0xFA17),
            settings,
            config,
            world,
            drivers: BTreeMap::new(),
            workers,
            loader,
            coordinator,
            job_client,
            down: Vec::new(),
            loader_events: Vec::new(),
            submitted_ms: 0,
            job_finished_ms: None,
            exited: BTreeMap::new(),
            early_exit: None,
            outcome: Outcome::default(),
        };
        let seed = sim.fault_rng.next_u64();
        let node = Coordinator::new(COORDINATOR_ID, sim.config.clone(), seed);
        sim.install(coordinator, MrNode::Coordinator(Box::new(node)));
        let seed = sim.fault_rng.next_u64();
        sim.install(job_client, MrNode::job(JOB_CLIENT_ID, sim.config.clone(), seed));
        for k in 0..sim.workers.len() {
            sim.boot_worker(k);
        }
        sim
    }

    fn install(&mut self, index: usize, node: MrNode) {
        let id = self.world.nodes[index].id;
        self.drivers.insert(index, Driver::new(id, node));
        self.poll(index);
    }

    /// Polls node `index`'s driver through the world and observes its events.
    fn poll(&mut self, index: usize) {
        let Some(driver) = self.drivers.get_mut(&index) else { return };
        self.world.poll_driver(index, driver);
        let id = driver.id();
        for event in driver.take_events() {
            self.observe(id, event);
        }
        if self.workers.iter().any(|slot| slot.index == index) {
            self.count_parallel();
        }
    }

    fn boot_worker(&mut self, k: usize) {
        let slot = &self.workers[k];
        let (index, id, host) = (slot.index, slot.id, slot.host);
        let seed = self.fault_rng.next_u64();
        let worker = Worker::new(id, self.config.clone(), host, WORKER_DISK_SECTORS, seed);
        if self.world.nodes[index].machine.is_none() {
            self.world.boot(index);
        }
        self.install(index, MrNode::Worker(Box::new(worker)));
    }

    fn run_all(&mut self) -> Result<(), Failure> {
        let documents = inputs::documents(
            self.settings.seed,
            self.settings.input_files,
            self.settings.max_file_chunks,
            self.config.gfs.chunk_size_bytes,
        );
        self.outcome.input_bytes = documents.iter().map(|(_, text)| text.len() as u64).sum();
        self.load(&documents)?;
        self.world.drop_per_mille = self.settings.drop_per_mille;
        self.world.duplicate_per_mille = self.settings.duplicate_per_mille;
        self.world.start_faults(self.settings.device_faults);
        self.run_job()?;
        self.world.drop_per_mille = 0;
        self.world.duplicate_per_mille = 0;
        self.world.stop_faults();
        self.check_outputs(&documents)
    }

    fn run_vm_job_script(&mut self, files: usize, kib: usize) -> Result<(), Failure> {
        let chunk_bytes = u64::from(self.config.gfs.chunk_size_bytes);
        let (seed, now_ms) = (self.settings.seed, self.world.now_ms);
        let reduces = self.settings.reduce_tasks;
        let script = WordCountScript::new(files, kib, reduces, seed, chunk_bytes, now_ms, 100);
        let index = self.job_client;
        self.drivers.get_mut(&index).expect("the job node").set_workload(script.boxed());
        self.world.drop_per_mille = self.settings.drop_per_mille;
        self.world.duplicate_per_mille = self.settings.duplicate_per_mille;
        self.world.start_faults(self.settings.device_faults);
        self.poll(index);
        loop {
            match self.drivers.get(&index).and_then(Driver::finished) {
                Some(Ok(())) => return Ok(()),
                Some(Err(error)) => {
                    return Err(fail(
                        "the VM job script succeeds",
                        error.clone(),
                        self.world.now_ms,
                    ))
                }
                None => {}
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
            self.inject_faults();
        }
    }

    /// Runs the world up to `until_ms`, stepping the MapReduce machines it hands inputs to.
    fn run_until(&mut self, until_ms: u64) -> Result<(), Failure> {
        while self.world.run_one(until_ms) {
            let inputs = std::mem::take(&mut self.world.external_inputs);
            for (index, input) in inputs {
                self.step_external(index, input)?;
            }
            let events = std::mem::take(&mut self.world.client_events);
            self.loader_events.extend(events.into_iter().map(|(_, event)| event));
        }
        Ok(())
    }

    fn step_external(&mut self, index: usize, input: ExternalInput) -> Result<(), Failure> {
        if let ExternalInput::Frame { from, frame } = input {
            let sender = self.world.index_of(from);
            let from_gfs = self.world.nodes[sender].role != Role::External;
            let (packet, _) = decode_packet(from_gfs, &frame).expect("frames decode");
            if self.world.trace.is_some() {
                let line =
                    format!("node {} <- {from}: {}", self.world.nodes[index].id, short(&packet));
                self.world.log(line);
            }
            let Some(driver) = self.drivers.get_mut(&index) else { return Ok(()) };
            driver.receive(from, packet);
        }
        self.poll(index);
        Ok(())
    }

    fn observe(&mut self, node: NodeId, event: Event) {
        let now_ms = self.world.now_ms;
        if self.world.trace.is_some() {
            self.world.log(format!("node {node} event {event:?}"));
        }
        match event {
            Event::MapApplied { task, .. } => *self.outcome.map_runs.entry(task).or_default() += 1,
            Event::Assigned { backup: true, .. } => self.outcome.backup_attempts += 1,
            Event::WorkerLost { .. } => self.outcome.workers_lost += 1,
            Event::JobFinished { .. } => {
                self.job_finished_ms.get_or_insert(now_ms);
            }
            Event::Exited => {
                if self.job_finished_ms.is_none() && self.early_exit.is_none() {
                    self.early_exit = Some((node, now_ms));
                }
                self.exited.insert(node, now_ms);
            }
            _ => {}
        }
    }

    fn count_parallel(&mut self) {
        let mut maps = 0;
        let mut reduces = 0;
        for slot in &self.workers {
            if let Some(MrNode::Worker(worker)) = self.drivers.get(&slot.index).map(Driver::node) {
                match worker.running().map(|assignment| assignment.kind()) {
                    Some(TaskKind::Map) => maps += 1,
                    Some(TaskKind::Reduce) => reduces += 1,
                    None => {}
                }
            }
        }
        self.outcome.max_parallel_maps = self.outcome.max_parallel_maps.max(maps);
        self.outcome.max_parallel_reduces = self.outcome.max_parallel_reduces.max(reduces);
    }

    /// Runs one GFS client operation of the loader to completion.
    fn loader_op(&mut self, op: ClientOp) -> Result<Result<OpOutput, GfsError>, Failure> {
        let limit_ms = self.world.now_ms + IO_LIMIT_MS;
        let loader = self.loader;
        let op_id: OpId = self
            .world
            .with_client(loader, |client, now, out| client.submit(now, op, out))
            .expect("the loader is up");
        loop {
            self.loader_events
                .extend(std::mem::take(&mut self.world.client_events).into_iter().map(|(_, e)| e));
            if let Some(at) = self.loader_events.iter().position(|event| event.op == op_id) {
                return Ok(self.loader_events.remove(at).result);
            }
            if self.world.now_ms >= limit_ms {
                return Err(fail(
                    "GFS loads and reads complete",
                    format!("operation {op_id} hangs"),
                    self.world.now_ms,
                ));
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
        }
    }

    fn load(&mut self, documents: &[(String, Vec<u8>)]) -> Result<(), Failure> {
        for (path, text) in documents {
            self.world.log(format!("load {path}: {} bytes", text.len()));
            let created = self.loader_op(ClientOp::Create { path: path.clone() })?;
            let written = self.loader_op(ClientOp::Write {
                path: path.clone(),
                offset: 0,
                data: text.clone(),
            })?;
            if let Err(error) = created.and(written) {
                return Err(fail(
                    "inputs load into GFS",
                    format!("{path}: {error:?}"),
                    self.world.now_ms,
                ));
            }
            let len = text.len() as u64 + 100;
            let read = self.loader_op(ClientOp::Read { path: path.clone(), offset: 0, len })?;
            let mut want = text.clone();
            want.resize(len as usize, 0);
            if read != Ok(OpOutput::Data(want)) {
                return Err(fail(
                    "inputs read back as written",
                    format!("{path}: {read:?}"),
                    self.world.now_ms,
                ));
            }
        }
        Ok(())
    }

    fn spec(&self) -> JobSpec {
        JobSpec {
            job: 1,
            app: self.settings.app.clone(),
            inputs: (0..self.settings.input_files).map(|k| format!("/in/doc-{k}.txt")).collect(),
            reduce_tasks: self.settings.reduce_tasks,
            output_dir: "/out/job-1".into(),
        }
    }

    fn run_job(&mut self) -> Result<(), Failure> {
        let spec = self.spec();
        self.submitted_ms = self.world.now_ms;
        let index = self.job_client;
        let now_ms = self.world.now_ms;
        let driver = self.drivers.get_mut(&index).expect("the job client is installed");
        driver.with_node(|node, out| match node {
            MrNode::Job { job, .. } => job.submit(now_ms, spec, out),
            _ => unreachable!("the job client's node"),
        });
        self.poll(index);
        let deadline_ms = self.submitted_ms + self.settings.job_deadline_ms;
        loop {
            if let Some((node, at_ms)) = self.early_exit {
                return Err(fail(
                    "no worker exits before the job is done",
                    format!("worker {node} exited"),
                    at_ms,
                ));
            }
            let client_done = match self.drivers.get(&self.job_client).map(Driver::node) {
                Some(MrNode::Job { job, .. }) => job.result().cloned(),
                _ => None,
            };
            match client_done {
                Some(JobState::Finished { .. }) => break,
                Some(other) => {
                    return Err(fail(
                        "the job is accepted",
                        format!("client told {other:?}"),
                        self.world.now_ms,
                    ))
                }
                None => {}
            }
            if self.world.now_ms >= deadline_ms {
                let detail = format!("not finished after {} ms", self.settings.job_deadline_ms);
                return Err(fail("liveness: the job finishes", detail, self.world.now_ms));
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
            self.inject_faults();
        }
        let finished_ms = self.job_finished_ms.expect("the client heard of it, so it finished");
        self.outcome.job_ms = finished_ms - self.submitted_ms;
        if let Some(MrNode::Coordinator(coordinator)) =
            self.drivers.get(&self.coordinator).map(Driver::node)
        {
            self.outcome.map_tasks = coordinator.map_tasks();
        }
        // Faults stop; every worker comes back and must learn the job is done and exit.
        for (index, _) in std::mem::take(&mut self.down) {
            let k = self.workers.iter().position(|slot| slot.index == index).expect("a worker");
            self.boot_worker(k);
        }
        let limit_ms = self.world.now_ms + EXIT_LIMIT_MS;
        while self.exited.len() < self.workers.len() {
            if self.world.now_ms >= limit_ms {
                let missing: Vec<NodeId> = self
                    .workers
                    .iter()
                    .map(|s| s.id)
                    .filter(|id| !self.exited.contains_key(id))
                    .collect();
                let detail =
                    format!("workers {missing:?} still running {EXIT_LIMIT_MS} ms after the job");
                return Err(fail("workers exit once the job is done", detail, self.world.now_ms));
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
        }
        if let Some((node, at_ms)) = self.early_exit {
            return Err(fail(
                "no worker exits before the job is done",
                format!("worker {node} exited"),
                at_ms,
            ));
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        let now_ms = self.world.now_ms;
        let due: Vec<usize> =
            self.down.iter().filter(|(_, at)| *at <= now_ms).map(|(index, _)| *index).collect();
        self.down.retain(|(_, at)| *at > now_ms);
        for index in due {
            let k = self.workers.iter().position(|slot| slot.index == index).expect("a worker");
            self.boot_worker(k);
        }
        if now_ms < self.submitted_ms + PARTITION_PHASE_MS {
            let every = self.settings.device_faults.partition_every_ms;
            self.world.maybe_partition(&mut self.fault_rng, 10, every);
        }
        let every = self.settings.worker_crash_every_ms;
        if every == 0 || self.outcome.worker_crashes >= self.settings.max_worker_crashes {
            return;
        }
        if !self.fault_rng.chance(10, every) {
            return;
        }
        let k = self.fault_rng.below(self.workers.len() as u64) as usize;
        let index = self.workers[k].index;
        let up = self.world.nodes[index].machine.is_some();
        let exited = self.exited.contains_key(&self.workers[k].id);
        // Keep at least one worker up.
        if up && !exited && self.down.len() + 1 < self.workers.len() {
            self.world.crash(index);
            self.drivers.remove(&index);
            self.outcome.worker_crashes += 1;
            let downtime_ms = self.fault_rng.range_inclusive(20, 1500);
            self.down.push((index, now_ms + downtime_ms));
        }
    }

    fn check_outputs(&mut self, documents: &[(String, Vec<u8>)]) -> Result<(), Failure> {
        let app = app_for(&self.settings.app);
        let named: Vec<(&str, &[u8])> =
            documents.iter().map(|(path, text)| (path.as_str(), text.as_slice())).collect();
        let expected = run_sequential(app.as_ref(), &named, self.settings.reduce_tasks);
        let chunk_bytes = u64::from(self.config.gfs.chunk_size_bytes);
        for (partition, want) in expected.iter().enumerate() {
            let path = output_path("/out/job-1", partition as u32);
            let count = match self.loader_op(ClientOp::ChunkCount { path: path.clone() })? {
                Ok(OpOutput::ChunkCount(count)) => count,
                other => {
                    return Err(fail(
                        "every output file exists",
                        format!("{path}: {other:?}"),
                        self.world.now_ms,
                    ))
                }
            };
            let read = self.loader_op(ClientOp::Read {
                path: path.clone(),
                offset: 0,
                len: count * chunk_bytes,
            })?;
            let mut got = match read {
                Ok(OpOutput::Data(data)) => data,
                other => {
                    return Err(fail(
                        "output files read back",
                        format!("{path}: {other:?}"),
                        self.world.now_ms,
                    ))
                }
            };
            let end = got.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1);
            got.truncate(end);
            self.outcome.output_bytes += got.len() as u64;
            if got != *want {
                let detail = format!(
                    "{path}: {} bytes, expected {} bytes\n--- got\n{}\n--- expected\n{}",
                    got.len(),
                    want.len(),
                    String::from_utf8_lossy(&got[..got.len().min(600)]),
                    String::from_utf8_lossy(&want[..want.len().min(600)])
                );
                return Err(fail("output equals the sequential run", detail, self.world.now_ms));
            }
        }
        Ok(())
    }
}

fn short(packet: &Packet) -> String {
    match packet {
        Packet::Mr(msg) => gfs_sim::world::short_msg(msg),
        Packet::Gfs(msg) => gfs_sim::world::short_msg(msg),
    }
}
