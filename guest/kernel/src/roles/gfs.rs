//! GFS nodes in the VM: `role=gfs-master`, `role=gfs-chunkserver` and
//! `role=gfs-client`, each one of the `gfs` crate's sans-IO state machines
//! driven over the real network (smoltcp, [`crate::mesh`]) and disk (virtio-blk).
//!
//! Command line (space separated; `ip=`, `gw=`, `mac=` as for every networked role):
//!
//! ```text
//! role=gfs-master      node=1 ip=10.10.0.2/24 [gw=..] [CLUSTER]
//! role=gfs-chunkserver node=2 ip=10.10.0.3/24 master=1:10.10.0.2 [peers=3:10.10.0.4,...] [CLUSTER]
//! role=gfs-client      node=9 ip=10.10.0.5/24 master=1:10.10.0.2 peers=2:10.10.0.3,3:10.10.0.4
//!                      [mib=4] [seed=1] [path=/ftvm/pattern] [limit_s=60] [CLUSTER]
//! CLUSTER: [port=7100] [replicas=2] [chunk_kib=1024] [lease_ms=2000]
//! ```
//!
//! `node=` is the node's GFS id; `master=ID:ADDRESS` names the master (the
//! master itself needs no `master=`: its id is its `node=`), `peers=` other
//! nodes as `ID:ADDRESS` pairs. Ids must be unique, the master's the lowest,
//! and a client's higher than every node it talks to: streams are dialled by
//! the higher id (see [`crate::mesh`]). Chunkservers list the other
//! chunkservers (replication chains and re-replication go between them);
//! clients list the chunkservers. The CLUSTER values must be the same on
//! every node (they default to a VM-sized configuration: 1 MiB chunks, 64 KiB
//! checksum blocks, second-scale leases and timeouts).
//!
//! The master and the chunkservers need a disk (`--disk`) and run until the VM
//! is stopped. The client is a script: it creates `path`, writes `mib` MiB of
//! a pattern drawn from `seed` in one write, reads the file back, compares,
//! prints `gfs client ok` and exits 0; a step that fails is retried (the
//! cluster may still be starting) until `limit_s` seconds have passed, then
//! the role fails.
//!
//! Time: the state machines get milliseconds of *cluster time*, the clock
//! device's wall time sampled once at start plus the monotonic time elapsed
//! since (from the event page on every loop turn), so lease expiries the
//! master hands out mean the same on every VM of one host and never jump.
//! Disk requests are carried out at once (a virtio-blk request completes
//! during its notify exit); the writes of one step are flushed before any of
//! their completions is fed back, so a completed write is durable.
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Debug;

use gfs::chunkserver::Chunkserver;
use gfs::client::{Client, ClientEvent, ClientOp, OpId, OpOutput};
use gfs::disk::{DiskCompletion, DiskError, DiskOp, DiskRequest, SECTOR_BYTES};
use gfs::master::Master;
use gfs::pcg::Pcg32;
use gfs::wire::{GfsError, Message, NodeId};
use gfs::{Config, Input, Outputs, StateMachine};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::wire::Ipv4Address;

use super::{net_error, number, RoleError};
use crate::cmdline::Cmdline;
use crate::drivers::clock;
use crate::drivers::virtio::block::{BlockDevice, BlockError};
use crate::mesh::{Mesh, MeshStats};
use crate::net::service::{Service, Step};
use crate::net::Network;
use crate::println;
use ftvm_abi::boot::{device, BootInfo};

/// The TCP port every node listens on unless `port=` says otherwise.
pub(super) const DEFAULT_PORT: u64 = 7100;
/// Frames larger than a chunk plus this much are refused.
pub(super) const FRAME_SLACK_BYTES: usize = 64 * 1024;
/// How long the client script waits before retrying a failed step.
const SCRIPT_RETRY_MS: u64 = 500;

/// Which GFS role this VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Master,
    Chunkserver,
    Client,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Master => "gfs-master",
            Kind::Chunkserver => "gfs-chunkserver",
            Kind::Client => "gfs-client",
        }
    }
}

pub(super) fn bad(message: String) -> RoleError {
    RoleError::BadCmdline(message)
}

/// Parses `ID:ADDRESS`.
pub(super) fn parse_peer(key: &str, text: &str) -> Result<(NodeId, Ipv4Address), RoleError> {
    let problem = || bad(alloc::format!("{key}={text}: expected ID:ADDRESS such as 2:10.10.0.3"));
    let (id, address) = text.split_once(':').ok_or_else(problem)?;
    let id = id.parse::<NodeId>().map_err(|_| problem())?;
    let address = address.parse::<Ipv4Address>().map_err(|_| problem())?;
    Ok((id, address))
}

/// The node's own id, from `node=`.
pub(super) fn node_id(args: &Cmdline) -> Result<NodeId, RoleError> {
    match args.get("node") {
        None => Err(bad("missing node=ID (the node's GFS or MapReduce id)".into())),
        Some(_) => Ok(bounded(args, "node", 0, 0)? as NodeId),
    }
}

/// Parses `key=ID:ADDRESS,...` (nothing when `key=` is absent).
pub(super) fn parse_peers(
    args: &Cmdline,
    key: &'static str,
) -> Result<Vec<(NodeId, Ipv4Address)>, RoleError> {
    let text = args.get(key).unwrap_or("");
    text.split(',').filter(|item| !item.is_empty()).map(|item| parse_peer(key, item)).collect()
}

/// A numeric command-line value that must fit a `u32` and be at least `min`.
pub(super) fn bounded(
    args: &Cmdline,
    key: &'static str,
    default: u64,
    min: u64,
) -> Result<u64, RoleError> {
    let value = number(args, key, default)?;
    if value < min || value > u64::from(u32::MAX) {
        return Err(bad(alloc::format!("{key}={value}: expected {min}..={}", u32::MAX)));
    }
    Ok(value)
}

/// The cluster configuration: the paper's design, scaled to VMs and seconds.
pub(super) fn cluster_config(args: &Cmdline, master_id: NodeId) -> Result<Config, RoleError> {
    let chunk_kib = bounded(args, "chunk_kib", 1024, 64)?;
    if chunk_kib % 64 != 0 || chunk_kib > 64 * 1024 {
        return Err(bad(alloc::format!(
            "chunk_kib={chunk_kib}: expected a multiple of 64 up to 65536"
        )));
    }
    let replicas = bounded(args, "replicas", 2, 1)?;
    let lease_ms = bounded(args, "lease_ms", 2000, 200)?;
    Ok(Config::for_vms(master_id, (chunk_kib * 1024) as u32, replicas as usize, lease_ms))
}

/// The state machine a VM runs.
enum Machine {
    Master(alloc::boxed::Box<Master>),
    Chunkserver(alloc::boxed::Box<Chunkserver>),
    Client(alloc::boxed::Box<Client>),
}

impl Machine {
    fn state_machine(&mut self) -> &mut dyn StateMachine {
        match self {
            Machine::Master(master) => &mut **master,
            Machine::Chunkserver(chunkserver) => &mut **chunkserver,
            Machine::Client(client) => &mut **client,
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        match self {
            Machine::Master(master) => master.next_poll_ms(),
            Machine::Chunkserver(chunkserver) => chunkserver.next_poll_ms(),
            Machine::Client(client) => client.next_poll_ms(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Machine::Master(master) => master.is_ready(),
            Machine::Chunkserver(chunkserver) => chunkserver.is_ready(),
            Machine::Client(_) => true,
        }
    }
}

/// Counters for the end-of-run line.
#[derive(Default)]
pub(super) struct DiskStats {
    reads: u64,
    writes: u64,
    flushes: u64,
    errors: u64,
}

/// The adapter: network, disk and clock around one state machine.
struct Node {
    kind: Kind,
    me: NodeId,
    machine: Machine,
    mesh: Mesh<Message>,
    disk: Option<BlockDevice>,
    clock: ClusterClock,
    inbox: Vec<(NodeId, Message)>,
    outputs: Outputs,
    inputs: VecDeque<Input>,
    events: Vec<ClientEvent>,
    script: Option<Script>,
    ready_reported: bool,
    /// Replicas and their bytes as last printed (chunkservers only).
    holdings_reported: (usize, u64),
    disk_stats: DiskStats,
}

fn disk_error(error: BlockError) -> DiskError {
    match error {
        BlockError::PartialSector { .. } | BlockError::OutOfRange { .. } => DiskError::OutOfRange,
        BlockError::ReadOnly | BlockError::Device(_) => DiskError::Io,
    }
}

/// Cluster time (see the module doc) from monotonic time and back.
pub(super) struct ClusterClock {
    /// Cluster time minus monotonic time, in nanoseconds.
    offset_ns: u64,
}

impl ClusterClock {
    /// Samples the wall clock once.
    pub(super) fn start() -> Self {
        ClusterClock { offset_ns: clock::wall_ns().saturating_sub(clock::monotonic_ns()) }
    }

    /// Cluster milliseconds at monotonic `now_ns`.
    pub(super) fn cluster_ms(&self, now_ns: u64) -> u64 {
        (now_ns + self.offset_ns) / 1_000_000
    }

    /// The monotonic time of cluster millisecond `cluster_ms`.
    fn monotonic_ns_of(&self, cluster_ms: u64) -> u64 {
        cluster_ms.saturating_mul(1_000_000).saturating_sub(self.offset_ns)
    }

    /// When a node is next polled without network news: the earliest of its
    /// state machines' poll time (`machine_ms`), its script's (`script_ms`)
    /// and its mesh's (`mesh_ns`, monotonic).
    pub(super) fn wake_at_ns(
        &self,
        now_ms: u64,
        machine_ms: Option<u64>,
        script_ms: Option<u64>,
        mesh_ns: Option<u64>,
    ) -> Option<u64> {
        // Already due (a tick left more work): come back in a millisecond.
        let machine_ns = machine_ms.map(|at_ms| self.monotonic_ns_of(at_ms.max(now_ms + 1)));
        let script_ns = script_ms.map(|at_ms| self.monotonic_ns_of(at_ms));
        [machine_ns, script_ns, mesh_ns].into_iter().flatten().min()
    }
}

/// Carries out disk requests in order on `disk` (every one fails without a
/// disk); writes are flushed before the completions are returned, so a
/// completed write is durable.
pub(super) fn run_disk(
    label: &str,
    disk: Option<&mut BlockDevice>,
    requests: Vec<DiskRequest>,
    stats: &mut DiskStats,
) -> Vec<DiskCompletion> {
    let mut completions = Vec::with_capacity(requests.len());
    let mut wrote = false;
    let Some(disk) = disk else {
        for DiskRequest { id, .. } in requests {
            stats.errors += 1;
            completions.push(DiskCompletion { id, result: Err(DiskError::Io) });
        }
        return completions;
    };
    let mut written = Vec::with_capacity(requests.len());
    for DiskRequest { id, op } in requests {
        let (is_write, result) = match op {
            DiskOp::Read { sector, count } => {
                stats.reads += 1;
                let mut buf = alloc::vec![0u8; count as usize * SECTOR_BYTES];
                (false, disk.read(sector, &mut buf).map(|()| buf).map_err(disk_error))
            }
            DiskOp::Write { sector, data } => {
                stats.writes += 1;
                (true, disk.write(sector, &data).map(|()| Vec::new()).map_err(disk_error))
            }
        };
        wrote |= is_write && result.is_ok();
        written.push(is_write);
        completions.push(DiskCompletion { id, result });
    }
    if wrote {
        stats.flushes += 1;
        if let Err(error) = disk.flush() {
            println!("{label}: disk flush failed: {error}");
            for (is_write, completion) in written.iter().zip(completions.iter_mut()) {
                if *is_write {
                    completion.result = Err(DiskError::Io);
                }
            }
        }
    }
    stats.errors +=
        completions.iter().filter(|completion| completion.result.is_err()).count() as u64;
    completions
}

/// Opens the VM's disk for a role that keeps its state there.
pub(super) fn open_disk(label: &str, info: &BootInfo) -> Result<BlockDevice, RoleError> {
    if info.devices & device::BLOCK == 0 {
        return Err(RoleError::Check(alloc::format!(
            "{label} keeps its state on a disk: start the VM with --disk PATH"
        )));
    }
    let disk = BlockDevice::open()
        .map_err(|error| RoleError::Check(alloc::format!("virtio-blk: {error}")))?;
    if disk.read_only() {
        return Err(RoleError::Check("the disk is read-only".into()));
    }
    Ok(disk)
}

/// The mesh's TCP port from `port=`.
pub(super) fn parse_port(args: &Cmdline) -> Result<u16, RoleError> {
    let port = number(args, "port", DEFAULT_PORT)?;
    u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| bad(alloc::format!("port={port}: expected 1..65535")))
}

/// The end-of-run line.
pub(super) fn print_stats(label: &str, mesh: &MeshStats, disk: &DiskStats) {
    println!(
        "{label}: messages sent {} received {} dropped {}, bytes sent {} received {}, \
         streams opened {} broken {}; disk reads {} writes {} flushes {} errors {}",
        mesh.messages_sent,
        mesh.messages_received,
        mesh.messages_dropped,
        mesh.bytes_sent,
        mesh.bytes_received,
        mesh.streams_opened,
        mesh.streams_broken,
        disk.reads,
        disk.writes,
        disk.flushes,
        disk.errors
    );
}

impl Node {
    /// Feeds `input` and everything it causes (disk completions, messages to
    /// itself) through the state machine, carrying out the outputs.
    fn step(&mut self, now_ms: u64, input: Input) {
        self.inputs.push_back(input);
        while let Some(input) = self.inputs.pop_front() {
            self.machine.state_machine().step(now_ms, input, &mut self.outputs);
            self.carry_out();
        }
    }

    /// Sends the queued messages, runs the disk requests and collects client events.
    fn carry_out(&mut self) {
        for envelope in self.outputs.messages.drain(..) {
            if envelope.to == self.me {
                self.inputs.push_back(Input::Message { from: self.me, msg: envelope.msg });
            } else {
                self.mesh.send_frame(envelope.to, gfs::wire::encode_frame(&envelope.msg));
            }
        }
        let requests: Vec<DiskRequest> = self.outputs.disk.drain(..).collect();
        if !requests.is_empty() {
            self.run_disk(requests);
        }
        self.events.append(&mut self.outputs.client_events);
    }

    /// Carries out disk requests; their completions become inputs.
    fn run_disk(&mut self, requests: Vec<DiskRequest>) {
        let completions =
            run_disk(self.kind.label(), self.disk.as_mut(), requests, &mut self.disk_stats);
        self.inputs.extend(completions.into_iter().map(Input::Disk));
    }

    /// Prints a chunkserver's replica count and their bytes when they change.
    fn report_holdings(&mut self) {
        let Machine::Chunkserver(chunkserver) = &self.machine else {
            return;
        };
        let replicas = chunkserver.replica_versions();
        let bytes: u64 = replicas
            .iter()
            .filter_map(|report| chunkserver.replica_slot(report.handle))
            .map(|(_, meta)| u64::from(meta.len_bytes))
            .sum();
        if (replicas.len(), bytes) != self.holdings_reported {
            self.holdings_reported = (replicas.len(), bytes);
            println!(
                "{}: node {} holds {} replicas, {bytes} bytes",
                self.kind.label(),
                self.me,
                replicas.len()
            );
        }
    }

    /// Runs the client script's next step, if any; `Some` when it finished.
    fn drive_script(&mut self, now_ms: u64) -> Option<Result<(), RoleError>> {
        let Machine::Client(client) = &mut self.machine else {
            return None;
        };
        let script = self.script.as_mut()?;
        if let Some(op) = script.next_op(now_ms) {
            let id = client.submit(now_ms, op, &mut self.outputs);
            script.attempts.pending = Some(id);
            self.carry_out();
            // The submit's messages may have caused disk work or self-messages.
            while let Some(input) = self.inputs.pop_front() {
                self.machine.state_machine().step(now_ms, input, &mut self.outputs);
                self.carry_out();
            }
        }
        let script = self.script.as_mut().expect("checked above");
        for event in self.events.drain(..) {
            if let Some(result) = script.on_event(now_ms, event) {
                return Some(result);
            }
        }
        script.check_deadline(now_ms)
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
        for (from, msg) in inbox {
            self.step(now_ms, Input::Message { from, msg });
        }
        if self.machine.next_poll_ms().is_some_and(|at_ms| at_ms <= now_ms) {
            self.step(now_ms, Input::Tick);
        }
        if !self.ready_reported && self.machine.is_ready() {
            self.ready_reported = true;
            println!("{}: node {} ready", self.kind.label(), self.me);
        }
        self.report_holdings();
        let finished = self.drive_script(now_ms);
        self.mesh.flush(sockets);
        if let Some(result) = finished {
            return Step::Done(result);
        }
        let wake_at_ns = self.clock.wake_at_ns(
            now_ms,
            self.machine.next_poll_ms(),
            self.script.as_ref().map(Script::wake_at_ms),
            self.mesh.wake_at_ns(),
        );
        Step::Continue { wake_at_ns }
    }

    fn after_frame(&mut self, sockets: &mut SocketSet<'static>) {
        self.mesh.refill_listeners(sockets);
    }
}

/// The client script's steps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Create,
    Write,
    Read,
}

/// Create, write, read back, verify.
struct Script {
    path: String,
    data: Vec<u8>,
    stage: Stage,
    attempts: Attempts,
    stage_started_ms: u64,
    write_ms: u64,
}

/// A script's bookkeeping of one GFS operation at a time: the operation in
/// flight, the failed attempts of the current step and when to retry, and
/// the time limit of the whole script.
pub(super) struct Attempts {
    /// Console prefix, e.g. `gfs client`.
    label: &'static str,
    /// The submitted operation of the current step.
    pub(super) pending: Option<OpId>,
    /// Failed attempts of the current step.
    pub(super) failures: u32,
    retry_at_ms: u64,
    deadline_ms: u64,
    pub(super) started_ms: u64,
}

impl Attempts {
    pub(super) fn new(label: &'static str, now_ms: u64, limit_s: u64) -> Self {
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
    pub(super) fn ready(&self, now_ms: u64) -> bool {
        self.pending.is_none() && now_ms >= self.retry_at_ms
    }

    /// True (and nothing is in flight any more) when `op` is the operation in flight.
    pub(super) fn complete(&mut self, op: OpId) -> bool {
        let ours = self.pending == Some(op);
        if ours {
            self.pending = None;
        }
        ours
    }

    /// When the script wants to run again; `busy`: it waits for something besides GFS.
    pub(super) fn wake_at_ms(&self, busy: bool) -> u64 {
        if self.pending.is_some() || busy {
            self.deadline_ms
        } else {
            self.retry_at_ms.min(self.deadline_ms)
        }
    }

    /// The step at `stage` failed with `error`: it is retried after a pause.
    pub(super) fn failed(&mut self, now_ms: u64, stage: &dyn Debug, error: Option<GfsError>) {
        self.failures += 1;
        println!(
            "{}: {stage:?} attempt {} failed: {:?}; retrying",
            self.label, self.failures, error
        );
        self.retry_at_ms = now_ms + SCRIPT_RETRY_MS;
    }

    /// The role's failure once the time limit has run out at `stage`.
    pub(super) fn check_deadline(
        &self,
        now_ms: u64,
        stage: &dyn Debug,
    ) -> Option<Result<(), RoleError>> {
        (now_ms >= self.deadline_ms).then(|| {
            Err(RoleError::Check(alloc::format!(
                "{}: still at {stage:?} (after {} failed attempts) when the time limit ran out",
                self.label,
                self.failures
            )))
        })
    }
}

/// `len` bytes drawn from `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Pcg32::new(seed, 0x6f5);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Megabytes per second with one decimal.
fn rate(bytes: usize, elapsed_ms: u64) -> String {
    let tenths = (bytes as u64 * 10) / (elapsed_ms.max(1) * 1000);
    alloc::format!("{}.{} MB/s", tenths / 10, tenths % 10)
}

impl Script {
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

    fn wake_at_ms(&self) -> u64 {
        self.attempts.wake_at_ms(false)
    }

    fn advance(&mut self, now_ms: u64, next: Stage) {
        self.stage = next;
        self.attempts.failures = 0;
        self.stage_started_ms = now_ms;
    }

    fn on_event(&mut self, now_ms: u64, event: ClientEvent) -> Option<Result<(), RoleError>> {
        if !self.attempts.complete(event.op) {
            return None;
        }
        let stage = self.stage;
        match (stage, event.result) {
            (Stage::Create, Ok(_)) => {
                println!("gfs client: created {}", self.path);
                self.advance(now_ms, Stage::Write);
            }
            // An earlier attempt may have created it before its reply was lost.
            (Stage::Create, Err(GfsError::AlreadyExists)) if self.attempts.failures > 0 => {
                println!("gfs client: {} exists (an earlier attempt made it)", self.path);
                self.advance(now_ms, Stage::Write);
            }
            (Stage::Write, Ok(_)) => {
                self.write_ms = now_ms - self.stage_started_ms;
                println!(
                    "gfs client: wrote {} bytes in {} ms ({})",
                    self.data.len(),
                    self.write_ms,
                    rate(self.data.len(), self.write_ms)
                );
                self.advance(now_ms, Stage::Read);
            }
            (Stage::Read, Ok(OpOutput::Data(read))) => {
                let read_ms = now_ms - self.stage_started_ms;
                println!(
                    "gfs client: read {} bytes in {read_ms} ms ({})",
                    read.len(),
                    rate(read.len(), read_ms)
                );
                return Some(self.verify(&read, now_ms));
            }
            (stage, result) => self.attempts.failed(now_ms, &stage, result.err()),
        }
        None
    }

    fn verify(&self, read: &[u8], now_ms: u64) -> Result<(), RoleError> {
        if read.len() != self.data.len() {
            return Err(RoleError::Check(alloc::format!(
                "read {} bytes back, wrote {}",
                read.len(),
                self.data.len()
            )));
        }
        if let Some(offset) = read.iter().zip(&self.data).position(|(got, want)| got != want) {
            return Err(RoleError::Check(alloc::format!(
                "byte {offset} read back as {:#04x}, written as {:#04x}",
                read[offset],
                self.data[offset]
            )));
        }
        println!(
            "gfs client: {} bytes verified; {} ms in all, write {} ms",
            read.len(),
            now_ms - self.attempts.started_ms,
            self.write_ms
        );
        println!("gfs client ok");
        Ok(())
    }

    fn check_deadline(&self, now_ms: u64) -> Option<Result<(), RoleError>> {
        self.attempts.check_deadline(now_ms, &self.stage)
    }
}

/// Runs the GFS role `kind`; only the client ever returns on success.
pub fn run(kind: Kind, args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let label = kind.label();
    let me = node_id(args)?;
    let mut addresses: Vec<(NodeId, Ipv4Address)> = Vec::new();
    let master_id = match (kind, args.get("master")) {
        (Kind::Master, None) => me,
        (Kind::Master, Some(_)) => {
            return Err(bad("the master takes no master=: its id is its node=".into()));
        }
        (_, None) => return Err(bad("missing master=ID:ADDRESS".into())),
        (_, Some(text)) => {
            let (id, address) = parse_peer("master", text)?;
            addresses.push((id, address));
            id
        }
    };
    addresses.extend(parse_peers(args, "peers")?);
    for (id, _) in &addresses {
        if *id == me || (*id != master_id && *id < master_id) {
            return Err(bad(alloc::format!(
                "node id {id}: ids must be unique and the master's ({master_id}) the lowest"
            )));
        }
    }
    if me < master_id {
        return Err(bad(alloc::format!("node={me}: below the master's id {master_id}")));
    }
    let port = parse_port(args)?;
    let config = cluster_config(args, master_id)?;
    let max_frame_bytes = config.chunk_size_bytes as usize + FRAME_SLACK_BYTES;

    let disk = if kind == Kind::Client { None } else { Some(open_disk(label, info)?) };
    let disk_sectors = disk.as_ref().map_or(0, BlockDevice::capacity_sectors);
    let seed = crate::drivers::entropy::random_u64();
    let machine = match kind {
        Kind::Master => {
            let minimum_sectors = 2 + 2 * config.master_checkpoint_sectors + 64;
            if disk_sectors < minimum_sectors {
                return Err(RoleError::Check(alloc::format!(
                    "the master's disk has {disk_sectors} sectors; it needs {minimum_sectors}"
                )));
            }
            Machine::Master(alloc::boxed::Box::new(Master::new(
                me,
                config.clone(),
                disk_sectors,
                seed,
            )))
        }
        Kind::Chunkserver => {
            let slots = gfs::chunkserver::store::Layout::new(&config, disk_sectors).slot_count;
            if slots == 0 {
                return Err(RoleError::Check(alloc::format!(
                    "the disk ({disk_sectors} sectors) holds no {} KiB chunk",
                    config.chunk_size_bytes / 1024
                )));
            }
            println!("{label}: {slots} chunk slots on the disk");
            Machine::Chunkserver(alloc::boxed::Box::new(Chunkserver::new(
                me,
                config.clone(),
                disk_sectors,
            )))
        }
        Kind::Client => {
            Machine::Client(alloc::boxed::Box::new(Client::new(me, config.clone(), seed)))
        }
    };

    let mut network = Network::open(info, args).map_err(net_error)?;
    let address = network.address().expect("Network::open sets an address");
    let decode: crate::mesh::Decoder<Message> =
        alloc::boxed::Box::new(|_, bytes| gfs::wire::decode_frame(bytes));
    let mesh = Mesh::new(label, me, port, &addresses, max_frame_bytes, decode);
    let cluster_clock = ClusterClock::start();
    let now_ms = cluster_clock.cluster_ms(clock::monotonic_ns());
    let script = if kind == Kind::Client {
        let mib = number(args, "mib", 4)?;
        if mib == 0 || mib > 64 {
            return Err(bad(alloc::format!("mib={mib}: expected 1..=64")));
        }
        let limit_s = number(args, "limit_s", 60)?;
        let path = String::from(args.get("path").unwrap_or("/ftvm/pattern"));
        let data = pattern(number(args, "seed", 1)?, (mib as usize) << 20);
        Some(Script {
            path,
            data,
            stage: Stage::Create,
            attempts: Attempts::new("gfs client", now_ms, limit_s),
            stage_started_ms: now_ms,
            write_ms: 0,
        })
    } else {
        None
    };
    println!(
        "{label}: node {me} at {address} port {port}, master {master_id}, {} peers known, \
         chunk {} KiB, replicas {}",
        addresses.len(),
        config.chunk_size_bytes / 1024,
        config.replication_goal
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
        events: Vec::new(),
        script,
        ready_reported: false,
        holdings_reported: (0, 0),
        disk_stats: DiskStats::default(),
    };
    node.mesh.refill_listeners(&mut network.sockets);
    let result = network.run(&mut node);
    print_stats(label, &node.mesh.stats, &node.disk_stats);
    result
}
