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
use crate::mesh::Mesh;
use crate::net::service::{Service, Step};
use crate::net::Network;
use crate::println;
use ftvm_abi::boot::{device, BootInfo};

/// The TCP port every node listens on unless `port=` says otherwise.
const DEFAULT_PORT: u64 = 7100;
/// Frames larger than a chunk plus this much are refused.
const FRAME_SLACK_BYTES: usize = 64 * 1024;
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

fn bad(message: String) -> RoleError {
    RoleError::BadCmdline(message)
}

/// Parses `ID:ADDRESS`.
fn parse_peer(key: &str, text: &str) -> Result<(NodeId, Ipv4Address), RoleError> {
    let problem = || bad(alloc::format!("{key}={text}: expected ID:ADDRESS such as 2:10.10.0.3"));
    let (id, address) = text.split_once(':').ok_or_else(problem)?;
    let id = id.parse::<NodeId>().map_err(|_| problem())?;
    let address = address.parse::<Ipv4Address>().map_err(|_| problem())?;
    Ok((id, address))
}

/// A numeric command-line value that must fit a `u32` and be at least `min`.
fn bounded(args: &Cmdline, key: &'static str, default: u64, min: u64) -> Result<u64, RoleError> {
    let value = number(args, key, default)?;
    if value < min || value > u64::from(u32::MAX) {
        return Err(bad(alloc::format!("{key}={value}: expected {min}..={}", u32::MAX)));
    }
    Ok(value)
}

/// The cluster configuration: the paper's design, scaled to VMs and seconds.
fn cluster_config(args: &Cmdline, master_id: NodeId) -> Result<Config, RoleError> {
    let checksum_block_bytes: u32 = 64 * 1024;
    let chunk_kib = bounded(args, "chunk_kib", 1024, 64)?;
    if chunk_kib % 64 != 0 || chunk_kib > 64 * 1024 {
        return Err(bad(alloc::format!(
            "chunk_kib={chunk_kib}: expected a multiple of 64 up to 65536"
        )));
    }
    let replicas = bounded(args, "replicas", 2, 1)?;
    let lease_ms = bounded(args, "lease_ms", 2000, 200)?;
    Ok(Config {
        master_id,
        chunk_size_bytes: (chunk_kib * 1024) as u32,
        checksum_block_bytes,
        replication_goal: replicas as usize,
        lease_ms,
        heartbeat_interval_ms: 500,
        chunkserver_dead_after_ms: 4000,
        rpc_timeout_ms: 2000,
        client_max_attempts: 10,
        client_cache_ttl_ms: 5000,
        scrub_interval_ms: 2000,
        gc_retention_ms: 60_000,
        master_scan_interval_ms: 1000,
        max_concurrent_clones: 2,
        data_buffer_ttl_ms: 30_000,
        data_buffer_max_bytes: 64 << 20,
        copy_piece_bytes: 256 * 1024,
        master_checkpoint_sectors: 2048,
        master_log_checkpoint_bytes: 256 * 1024,
        check_recovery: false,
        knobs: Default::default(),
    })
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
struct DiskStats {
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
    mesh: Mesh,
    disk: Option<BlockDevice>,
    /// Cluster time minus monotonic time, in nanoseconds.
    clock_offset_ns: u64,
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

impl Node {
    fn cluster_ms(&self, now_ns: u64) -> u64 {
        (now_ns + self.clock_offset_ns) / 1_000_000
    }

    fn monotonic_ns_of(&self, cluster_ms: u64) -> u64 {
        cluster_ms.saturating_mul(1_000_000).saturating_sub(self.clock_offset_ns)
    }

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
                self.mesh.send(envelope.to, &envelope.msg);
            }
        }
        let requests: Vec<DiskRequest> = self.outputs.disk.drain(..).collect();
        if !requests.is_empty() {
            self.run_disk(requests);
        }
        self.events.append(&mut self.outputs.client_events);
    }

    /// Carries out disk requests in order; writes are flushed before any
    /// completion goes back to the state machine.
    fn run_disk(&mut self, requests: Vec<DiskRequest>) {
        let mut completions = Vec::with_capacity(requests.len());
        let mut wrote = false;
        for DiskRequest { id, op } in requests {
            let Some(disk) = self.disk.as_mut() else {
                completions.push((false, DiskCompletion { id, result: Err(DiskError::Io) }));
                continue;
            };
            let (is_write, result) = match op {
                DiskOp::Read { sector, count } => {
                    self.disk_stats.reads += 1;
                    let mut buf = alloc::vec![0u8; count as usize * SECTOR_BYTES];
                    (false, disk.read(sector, &mut buf).map(|()| buf).map_err(disk_error))
                }
                DiskOp::Write { sector, data } => {
                    self.disk_stats.writes += 1;
                    (true, disk.write(sector, &data).map(|()| Vec::new()).map_err(disk_error))
                }
            };
            wrote |= is_write && result.is_ok();
            completions.push((is_write, DiskCompletion { id, result }));
        }
        if wrote {
            let disk = self.disk.as_mut().expect("writes went to a disk");
            self.disk_stats.flushes += 1;
            if let Err(error) = disk.flush() {
                println!("{}: disk flush failed: {error}", self.kind.label());
                for (is_write, completion) in completions.iter_mut() {
                    if *is_write {
                        completion.result = Err(DiskError::Io);
                    }
                }
            }
        }
        for (_, completion) in completions {
            if completion.result.is_err() {
                self.disk_stats.errors += 1;
            }
            self.inputs.push_back(Input::Disk(completion));
        }
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
            script.pending = Some(id);
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
        let now_ms = self.cluster_ms(now_ns);
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
        let machine_wake_ns = self.machine.next_poll_ms().map(|at_ms| {
            // Already due (a tick left more work): come back in a millisecond.
            self.monotonic_ns_of(at_ms.max(now_ms + 1))
        });
        let script_wake_ns =
            self.script.as_ref().map(|script| self.monotonic_ns_of(script.wake_at_ms()));
        let wake_at_ns =
            [machine_wake_ns, script_wake_ns, self.mesh.wake_at_ns()].into_iter().flatten().min();
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
    /// The submitted operation of the current stage.
    pending: Option<OpId>,
    /// Failed attempts of the current stage.
    failures: u32,
    retry_at_ms: u64,
    deadline_ms: u64,
    started_ms: u64,
    stage_started_ms: u64,
    write_ms: u64,
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
        if self.pending.is_some() || now_ms < self.retry_at_ms {
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
        if self.pending.is_some() {
            self.deadline_ms
        } else {
            self.retry_at_ms.min(self.deadline_ms)
        }
    }

    fn advance(&mut self, now_ms: u64, next: Stage) {
        self.stage = next;
        self.failures = 0;
        self.stage_started_ms = now_ms;
    }

    fn on_event(&mut self, now_ms: u64, event: ClientEvent) -> Option<Result<(), RoleError>> {
        if self.pending != Some(event.op) {
            return None;
        }
        self.pending = None;
        let stage = self.stage;
        match (stage, event.result) {
            (Stage::Create, Ok(_)) => {
                println!("gfs client: created {}", self.path);
                self.advance(now_ms, Stage::Write);
            }
            // An earlier attempt may have created it before its reply was lost.
            (Stage::Create, Err(GfsError::AlreadyExists)) if self.failures > 0 => {
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
            (stage, result) => {
                self.failures += 1;
                println!(
                    "gfs client: {stage:?} attempt {} failed: {:?}; retrying",
                    self.failures,
                    result.err()
                );
                self.retry_at_ms = now_ms + SCRIPT_RETRY_MS;
            }
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
            now_ms - self.started_ms,
            self.write_ms
        );
        println!("gfs client ok");
        Ok(())
    }

    fn check_deadline(&self, now_ms: u64) -> Option<Result<(), RoleError>> {
        (now_ms >= self.deadline_ms).then(|| {
            Err(RoleError::Check(alloc::format!(
                "gfs client: still at {:?} (after {} failed attempts) when the time limit ran out",
                self.stage,
                self.failures
            )))
        })
    }
}

/// Runs the GFS role `kind`; only the client ever returns on success.
pub fn run(kind: Kind, args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let label = kind.label();
    let me = match args.get("node") {
        None => return Err(bad("missing node=ID (the GFS node id)".into())),
        Some(_) => bounded(args, "node", 0, 0)? as NodeId,
    };
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
    if let Some(text) = args.get("peers") {
        for item in text.split(',').filter(|item| !item.is_empty()) {
            addresses.push(parse_peer("peers", item)?);
        }
    }
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
    let port = number(args, "port", DEFAULT_PORT)?;
    let port = u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| bad(alloc::format!("port={port}: expected 1..65535")))?;
    let config = cluster_config(args, master_id)?;
    let max_frame_bytes = config.chunk_size_bytes as usize + FRAME_SLACK_BYTES;

    let disk = if kind == Kind::Client {
        None
    } else {
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
        Some(disk)
    };
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
    let mesh = Mesh::new(label, me, port, &addresses, max_frame_bytes);
    let monotonic_ns = clock::monotonic_ns();
    let clock_offset_ns = clock::wall_ns().saturating_sub(monotonic_ns);
    let now_ms = (monotonic_ns + clock_offset_ns) / 1_000_000;
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
            pending: None,
            failures: 0,
            retry_at_ms: now_ms,
            deadline_ms: now_ms + limit_s * 1000,
            started_ms: now_ms,
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
        clock_offset_ns,
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
    let mesh = &node.mesh.stats;
    let disk = &node.disk_stats;
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
    result
}
