//! MapReduce nodes in the VM: `role=mr-coordinator`, `role=mr-worker` and
//! `role=mr-job`, each one of the `mapreduce` crate's sans-IO state machines
//! driven over the same mesh, disk and cluster clock as the GFS roles (see
//! [`super::gfs`]; this module reuses its adapter pieces).
//!
//! Command line (space separated; `ip=`, `gw=`, `mac=` as for every networked role):
//!
//! ```text
//! role=mr-coordinator node=4 ip=10.10.0.5/24 master=1:10.10.0.2 chunkservers=2:10.10.0.3,3:10.10.0.4
//!                     [CLUSTER]
//! role=mr-worker      node=5 ip=10.10.0.6/24 coordinator=4:10.10.0.5 master=.. chunkservers=..
//!                     [workers=6:10.10.0.7,...] [CLUSTER]
//! role=mr-job         node=7 ip=10.10.0.8/24 coordinator=4:10.10.0.5 master=.. chunkservers=..
//!                     [files=2] [kib=300] [reduces=2] [seed=1] [limit_s=60] [CLUSTER]
//! CLUSTER: as for the GFS roles ([port=7100] [replicas=2] [chunk_kib=1024] [lease_ms=2000]),
//!          the same on every GFS and MapReduce node
//! ```
//!
//! GFS and MapReduce nodes share one id space and one mesh port. `master=`
//! and `chunkservers=` name the GFS nodes (`ID:ADDRESS`): every frame from
//! one of them is a GFS message (for the node's embedded GFS client),
//! every other frame a MapReduce message. Streams are dialled by the higher
//! id, so MapReduce ids must lie above the GFS ones, the coordinator's below
//! the workers' and the job client's the highest; a worker lists the workers
//! below it (`workers=`) so reducers can fetch from every mapper.
//!
//! The workers need a disk (`--disk`) for their intermediate data. The
//! coordinator and the workers run until the VM is stopped. The job client is
//! a script: it writes `files` text files of `kib` KiB drawn from `seed` into
//! GFS (`/mr/input/words-N`), submits a word-count job with `reduces` reduce
//! tasks writing to `/mr/out/job-1`, waits for it, reads every output file
//! back, compares them with a word count it computes itself, prints `mr job
//! ok` and exits 0; a GFS step that fails is retried until `limit_s` seconds
//! have passed, then the role fails.
use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use gfs::client::{Client, ClientEvent, ClientOp, OpOutput};
use gfs::pcg::Pcg32;
use gfs::wire::{GfsError, NodeId};
use gfs::StateMachine as _;
use mapreduce::app::app_for;
use mapreduce::coordinator::{output_path, Coordinator};
use mapreduce::job_client::JobClient;
use mapreduce::records::run_sequential;
use mapreduce::wire::{AppKind, JobSpec, JobState, MrMessage};
use mapreduce::worker::Worker;
use mapreduce::{Event, Input, MrConfig, Outputs, StateMachine};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::wire::Ipv4Address;

use super::gfs::{
    bad, cluster_config, node_id, open_disk, parse_peer, parse_peers, parse_port, print_stats,
    run_disk, Attempts, ClusterClock, DiskStats, FRAME_SLACK_BYTES,
};
use super::{net_error, number, RoleError};
use crate::cmdline::Cmdline;
use crate::drivers::clock;
use crate::drivers::virtio::block::BlockDevice;
use crate::mesh::{Decoder, Mesh};
use crate::net::service::{Service, Step};
use crate::net::Network;
use crate::println;
use ftvm_abi::boot::BootInfo;

/// The job the script submits and where its output goes.
const JOB_ID: u64 = 1;
const OUTPUT_DIR: &str = "/mr/out/job-1";

/// Which MapReduce role this VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Coordinator,
    Worker,
    Job,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Coordinator => "mr-coordinator",
            Kind::Worker => "mr-worker",
            Kind::Job => "mr-job",
        }
    }
}

/// A frame on a MapReduce node's mesh: told apart by its sender.
enum Packet {
    Gfs(gfs::wire::Message),
    Mr(MrMessage),
}

/// The state machine a VM runs.
enum Machine {
    Coordinator(Box<Coordinator>),
    Worker(Box<Worker>),
    Job(Box<JobClient>),
}

impl Machine {
    fn state_machine(&mut self) -> &mut dyn StateMachine {
        match self {
            Machine::Coordinator(coordinator) => &mut **coordinator,
            Machine::Worker(worker) => &mut **worker,
            Machine::Job(job) => &mut **job,
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        match self {
            Machine::Coordinator(coordinator) => coordinator.next_poll_ms(),
            Machine::Worker(worker) => worker.next_poll_ms(),
            Machine::Job(job) => job.next_poll_ms(),
        }
    }
}

/// The job VM's own GFS client, which loads the input and reads the output.
struct Loader {
    client: Box<Client>,
    outputs: gfs::Outputs,
    events: Vec<ClientEvent>,
}

/// The adapter: network, disk and clock around one state machine.
struct Node {
    kind: Kind,
    me: NodeId,
    machine: Machine,
    mesh: Mesh<Packet>,
    disk: Option<BlockDevice>,
    clock: ClusterClock,
    inbox: Vec<(NodeId, Packet)>,
    outputs: Outputs,
    inputs: VecDeque<Input>,
    loader: Option<Loader>,
    script: Option<Script>,
    disk_stats: DiskStats,
}

impl Node {
    /// Feeds `input` and everything it causes (disk completions, messages to
    /// itself) through the state machines, carrying out the outputs.
    fn step(&mut self, now_ms: u64, input: Input) {
        self.inputs.push_back(input);
        self.drain_inputs(now_ms);
    }

    fn drain_inputs(&mut self, now_ms: u64) {
        while let Some(input) = self.inputs.pop_front() {
            match (self.loader.as_mut(), input) {
                (Some(loader), Input::Gfs { from, msg }) => {
                    let input = gfs::Input::Message { from, msg };
                    loader.client.step(now_ms, input, &mut loader.outputs);
                }
                (_, input) => self.machine.state_machine().step(now_ms, input, &mut self.outputs),
            }
            self.carry_out();
        }
    }

    /// Sends the queued messages, runs the disk requests and reports events.
    fn carry_out(&mut self) {
        for envelope in self.outputs.messages.drain(..) {
            if envelope.to == self.me {
                self.inputs.push_back(Input::Mr { from: self.me, msg: envelope.msg });
            } else {
                self.mesh.send_frame(envelope.to, mapreduce::wire::encode_frame(&envelope.msg));
            }
        }
        let loader_messages = self.loader.as_mut().map(|loader| {
            loader.events.append(&mut loader.outputs.client_events);
            loader.outputs.disk.clear();
            core::mem::take(&mut loader.outputs.messages)
        });
        for envelope in
            self.outputs.gfs_messages.drain(..).chain(loader_messages.into_iter().flatten())
        {
            self.mesh.send_frame(envelope.to, gfs::wire::encode_frame(&envelope.msg));
        }
        let requests: Vec<_> = self.outputs.disk.drain(..).collect();
        if !requests.is_empty() {
            let completions =
                run_disk(self.kind.label(), self.disk.as_mut(), requests, &mut self.disk_stats);
            self.inputs.extend(completions.into_iter().map(Input::Disk));
        }
        for event in self.outputs.events.drain(..) {
            report(self.kind.label(), &event);
            if let (Some(script), Event::JobStatus { state, .. }) = (self.script.as_mut(), event) {
                script.job_state = Some(state);
            }
        }
    }

    /// Ticks the state machines that are due.
    fn tick(&mut self, now_ms: u64) {
        if self.machine.next_poll_ms().is_some_and(|at_ms| at_ms <= now_ms) {
            self.step(now_ms, Input::Tick);
        }
        let loader_due = self
            .loader
            .as_ref()
            .and_then(|loader| loader.client.next_poll_ms())
            .is_some_and(|at_ms| at_ms <= now_ms);
        if loader_due {
            let loader = self.loader.as_mut().expect("checked above");
            loader.client.step(now_ms, gfs::Input::Tick, &mut loader.outputs);
            self.carry_out();
            self.drain_inputs(now_ms);
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        let loader = self.loader.as_ref().and_then(|loader| loader.client.next_poll_ms());
        [self.machine.next_poll_ms(), loader].into_iter().flatten().min()
    }

    /// Runs the job script's next step, if any; `Some` when it finished.
    fn drive_script(&mut self, now_ms: u64) -> Option<Result<(), RoleError>> {
        let script = self.script.as_mut()?;
        let loader = self.loader.as_mut().expect("the job VM has a loader");
        for event in loader.events.drain(..) {
            if let Some(result) = script.on_gfs_event(now_ms, event) {
                return Some(result);
            }
        }
        if let Some(result) = script.on_job_state(now_ms) {
            return Some(result);
        }
        match script.next_action(now_ms) {
            Some(Action::Gfs(op)) => {
                let id = loader.client.submit(now_ms, op, &mut loader.outputs);
                script.attempts.pending = Some(id);
            }
            Some(Action::Submit(spec)) => {
                let Machine::Job(job) = &mut self.machine else {
                    unreachable!("the script runs on the job VM")
                };
                job.submit(now_ms, spec, &mut self.outputs);
            }
            None => {}
        }
        self.carry_out();
        self.drain_inputs(now_ms);
        self.script.as_ref().expect("checked above").check_deadline(now_ms)
    }
}

/// Prints the events worth a console line.
fn report(label: &str, event: &Event) {
    match event {
        Event::Assigned { .. }
        | Event::WorkerLost { .. }
        | Event::JobFinished { .. }
        | Event::TaskStarted { .. }
        | Event::ReduceCommitted { .. }
        | Event::JobStatus { .. } => println!("{label}: {event:?}"),
        Event::AttemptFinished { worker, kind, task, outcome, .. } => {
            println!("{label}: {kind:?} task {task} on worker {worker}: {outcome:?}")
        }
        _ => {}
    }
}

impl Service for Node {
    type Output = Result<(), RoleError>;

    fn poll(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
    ) -> Step<Self::Output> {
        let now_ms = self.clock.cluster_ms(now_ns);
        self.mesh.poll(iface, sockets, now_ns, &mut self.inbox);
        let inbox = core::mem::take(&mut self.inbox);
        for (from, packet) in inbox {
            let input = match packet {
                Packet::Gfs(msg) => Input::Gfs { from, msg },
                Packet::Mr(msg) => Input::Mr { from, msg },
            };
            self.step(now_ms, input);
        }
        self.tick(now_ms);
        let finished = self.drive_script(now_ms);
        self.mesh.flush(sockets);
        if let Some(result) = finished {
            return Step::Done(result);
        }
        let wake_at_ns = self.clock.wake_at_ns(
            now_ms,
            self.next_poll_ms(),
            self.script.as_ref().map(Script::wake_at_ms),
            self.mesh.wake_at_ns(),
        );
        Step::Continue { wake_at_ns }
    }

    fn after_frame(&mut self, sockets: &mut SocketSet<'static>) {
        self.mesh.refill_listeners(sockets);
    }
}

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

/// What the script wants started.
enum Action {
    Gfs(ClientOp),
    Submit(JobSpec),
}

/// Load the input, run the job, read the output back, verify.
struct Script {
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

/// `kib` KiB of lines of words drawn from `seed`: a vocabulary of a few
/// hundred made-up words, some far more frequent than others.
fn text(seed: u64, file: usize, kib: usize) -> Vec<u8> {
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

impl Script {
    fn next_action(&mut self, now_ms: u64) -> Option<Action> {
        if !self.attempts.ready(now_ms) {
            return None;
        }
        Some(match self.stage {
            Stage::Create(file) => {
                Action::Gfs(ClientOp::Create { path: self.files[file].0.clone() })
            }
            Stage::Write(file) => {
                let (path, data) = &self.files[file];
                Action::Gfs(ClientOp::Write { path: path.clone(), offset: 0, data: data.clone() })
            }
            Stage::Submit => {
                self.stage = Stage::Wait;
                self.submitted_ms = now_ms;
                println!("mr job: submitting word count over {} files", self.files.len());
                Action::Submit(JobSpec {
                    job: JOB_ID,
                    app: AppKind::WordCount,
                    inputs: self.files.iter().map(|(path, _)| path.clone()).collect(),
                    reduce_tasks: self.reduces,
                    output_dir: String::from(OUTPUT_DIR),
                })
            }
            Stage::Wait => return None,
            Stage::Count(partition) => {
                Action::Gfs(ClientOp::ChunkCount { path: output_path(OUTPUT_DIR, partition) })
            }
            Stage::Read(partition) => Action::Gfs(ClientOp::Read {
                path: output_path(OUTPUT_DIR, partition),
                offset: 0,
                len: self.chunks * self.chunk_bytes,
            }),
        })
    }

    fn wake_at_ms(&self) -> u64 {
        self.attempts.wake_at_ms(self.stage == Stage::Wait)
    }

    fn advance(&mut self, next: Stage) {
        self.stage = next;
        self.attempts.failures = 0;
    }

    /// The stage after reading partition `partition`'s output (or finding it empty).
    fn after_partition(&mut self, now_ms: u64, partition: u32) -> Option<Result<(), RoleError>> {
        if partition + 1 < self.reduces {
            self.advance(Stage::Count(partition + 1));
            None
        } else {
            Some(self.verify(now_ms))
        }
    }

    fn on_job_state(&mut self, now_ms: u64) -> Option<Result<(), RoleError>> {
        if self.stage != Stage::Wait {
            return None;
        }
        match self.job_state.take()? {
            JobState::Running(_) => None,
            JobState::Finished { outputs, .. } => {
                self.job_ms = now_ms - self.submitted_ms;
                println!("mr job: finished in {} ms: {outputs:?}", self.job_ms);
                self.advance(Stage::Count(0));
                None
            }
            state => Some(Err(RoleError::Check(alloc::format!(
                "the coordinator answered the job with {state:?}"
            )))),
        }
    }

    fn on_gfs_event(&mut self, now_ms: u64, event: ClientEvent) -> Option<Result<(), RoleError>> {
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
                println!("mr job: wrote {path}, {} bytes", data.len());
                let next = if file + 1 < self.files.len() {
                    Stage::Create(file + 1)
                } else {
                    Stage::Submit
                };
                self.advance(next);
            }
            (Stage::Count(partition), Ok(OpOutput::ChunkCount(0))) => {
                self.outputs.push(Vec::new());
                return self.after_partition(now_ms, partition);
            }
            (Stage::Count(partition), Ok(OpOutput::ChunkCount(chunks))) => {
                self.chunks = chunks;
                self.advance(Stage::Read(partition));
            }
            (Stage::Read(partition), Ok(OpOutput::Data(mut data))) => {
                // The last chunk reads back zero-filled past the file's end.
                let end = data.iter().rposition(|byte| *byte != 0).map_or(0, |at| at + 1);
                data.truncate(end);
                println!("mr job: read {}, {} bytes", output_path(OUTPUT_DIR, partition), end);
                self.outputs.push(data);
                return self.after_partition(now_ms, partition);
            }
            (stage, result) => self.attempts.failed(now_ms, &stage, result.err()),
        }
        None
    }

    fn verify(&self, now_ms: u64) -> Result<(), RoleError> {
        let app = app_for(&AppKind::WordCount);
        let documents: Vec<(&str, &[u8])> =
            self.files.iter().map(|(path, data)| (path.as_str(), data.as_slice())).collect();
        let expected = run_sequential(app.as_ref(), &documents, self.reduces);
        for (partition, (got, want)) in self.outputs.iter().zip(&expected).enumerate() {
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len());
                return Err(RoleError::Check(alloc::format!(
                    "output partition {partition}: {} bytes, the sequential count {} bytes, \
                     first difference at byte {at}",
                    got.len(),
                    want.len()
                )));
            }
        }
        let keys: usize =
            expected.iter().map(|part| part.iter().filter(|byte| **byte == b'\n').count()).sum();
        let input_bytes: usize = self.files.iter().map(|(_, data)| data.len()).sum();
        println!(
            "mr job: {keys} distinct words over {input_bytes} bytes match the sequential count; \
             job {} ms, {} ms in all",
            self.job_ms,
            now_ms - self.attempts.started_ms
        );
        println!("mr job ok");
        Ok(())
    }

    fn check_deadline(&self, now_ms: u64) -> Option<Result<(), RoleError>> {
        self.attempts.check_deadline(now_ms, &self.stage)
    }
}

/// Runs the MapReduce role `kind`; only the job client ever returns on success.
pub fn run(kind: Kind, args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let label = kind.label();
    let me = node_id(args)?;
    let master = parse_peer(
        "master",
        args.get("master")
            .ok_or_else(|| bad("missing master=ID:ADDRESS (the GFS master)".into()))?,
    )?;
    let chunkservers = parse_peers(args, "chunkservers")?;
    if chunkservers.is_empty() {
        return Err(bad("missing chunkservers=ID:ADDRESS,...".into()));
    }
    let mut addresses: Vec<(NodeId, Ipv4Address)> = Vec::new();
    addresses.push(master);
    addresses.extend(&chunkservers);
    let gfs_ids: BTreeSet<NodeId> = addresses.iter().map(|(id, _)| *id).collect();
    let coordinator_id = match (kind, args.get("coordinator")) {
        (Kind::Coordinator, None) => me,
        (Kind::Coordinator, Some(_)) => {
            return Err(bad("the coordinator takes no coordinator=: its id is its node=".into()));
        }
        (_, None) => return Err(bad("missing coordinator=ID:ADDRESS".into())),
        (_, Some(text)) => {
            let coordinator = parse_peer("coordinator", text)?;
            addresses.push(coordinator);
            coordinator.0
        }
    };
    addresses.extend(parse_peers(args, "workers")?);
    if let Some(id) = gfs_ids.iter().find(|id| **id >= coordinator_id.min(me)) {
        return Err(bad(alloc::format!(
            "GFS node id {id}: MapReduce ids must lie above every GFS node's"
        )));
    }
    if me < coordinator_id || addresses.iter().any(|(id, _)| *id == me) {
        return Err(bad(alloc::format!(
            "node={me}: ids must be unique and the coordinator's ({coordinator_id}) the lowest \
             MapReduce id"
        )));
    }
    let port = parse_port(args)?;
    let config = MrConfig::for_vms(cluster_config(args, master.0)?, coordinator_id);
    let max_frame_bytes = config.gfs.chunk_size_bytes as usize + FRAME_SLACK_BYTES;

    let disk = if kind == Kind::Worker { Some(open_disk(label, info)?) } else { None };
    let disk_sectors = disk.as_ref().map_or(0, BlockDevice::capacity_sectors);
    let seed = crate::drivers::entropy::random_u64();
    let machine = match kind {
        Kind::Coordinator => {
            Machine::Coordinator(Box::new(Coordinator::new(me, config.clone(), seed)))
        }
        Kind::Worker => {
            Machine::Worker(Box::new(Worker::new(me, config.clone(), None, disk_sectors, seed)))
        }
        Kind::Job => Machine::Job(Box::new(JobClient::new(me, config.clone()))),
    };

    let mut network = Network::open(info, args).map_err(net_error)?;
    let address = network.address().expect("Network::open sets an address");
    let decode: Decoder<Packet> = Box::new(move |from, bytes| {
        if gfs_ids.contains(&from) {
            gfs::wire::decode_frame(bytes).map(|(msg, used)| (Packet::Gfs(msg), used))
        } else {
            mapreduce::wire::decode_frame(bytes).map(|(msg, used)| (Packet::Mr(msg), used))
        }
    });
    let mesh = Mesh::new(label, me, port, &addresses, max_frame_bytes, decode);
    let cluster_clock = ClusterClock::start();
    let now_ms = cluster_clock.cluster_ms(clock::monotonic_ns());
    let (loader, script) = if kind == Kind::Job {
        let files = number(args, "files", 2)? as usize;
        let kib = number(args, "kib", 300)? as usize;
        let reduces = number(args, "reduces", 2)?;
        if !(1..=16).contains(&files) || !(1..=8192).contains(&kib) || !(1..=64).contains(&reduces)
        {
            return Err(bad(alloc::format!(
                "files={files} kib={kib} reduces={reduces}: expected 1..=16, 1..=8192, 1..=64"
            )));
        }
        let seed = number(args, "seed", 1)?;
        let limit_s = number(args, "limit_s", 60)?;
        let files = (0..files)
            .map(|file| (alloc::format!("/mr/input/words-{file}"), text(seed, file, kib)))
            .collect();
        let loader = Loader {
            client: Box::new(Client::new(me, config.gfs.clone(), seed ^ 0x10ad)),
            outputs: gfs::Outputs::default(),
            events: Vec::new(),
        };
        let script = Script {
            files,
            reduces: reduces as u32,
            chunk_bytes: u64::from(config.gfs.chunk_size_bytes),
            stage: Stage::Create(0),
            attempts: Attempts::new("mr job", now_ms, limit_s),
            job_state: None,
            submitted_ms: now_ms,
            job_ms: 0,
            outputs: Vec::new(),
            chunks: 0,
        };
        (Some(loader), Some(script))
    } else {
        (None, None)
    };
    println!(
        "{label}: node {me} at {address} port {port}, GFS master {}, coordinator \
         {coordinator_id}, {} peers known, chunk {} KiB",
        master.0,
        addresses.len(),
        config.gfs.chunk_size_bytes / 1024
    );
    let mut node = Node {
        kind,
        me,
        machine,
        mesh,
        disk,
        clock: cluster_clock,
        inbox: Vec::new(),
        outputs: Outputs::default(),
        inputs: VecDeque::new(),
        loader,
        script,
        disk_stats: DiskStats::default(),
    };
    node.mesh.refill_listeners(&mut network.sockets);
    let result = network.run(&mut node);
    print_stats(label, &node.mesh.stats, &node.disk_stats);
    result
}
