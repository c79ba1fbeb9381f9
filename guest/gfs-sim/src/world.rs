//! The simulated world: nodes, their disks, a lossy reordering network that partitions, and a
//! clock, all driven by one seeded generator. Every node runs under the same
//! [`gfs::driver::Driver`] the VMs use; the world supplies the driver's transport and disk,
//! with the faults behind those interfaces: messages are lost, duplicated, delayed (and so
//! reordered) and cut by partitions, every one crossing its wire encoding; disk requests
//! complete late, some with I/O errors (a failed write may land, partly or not at all), and
//! the writes in flight when a node crashes land, tear (a prefix of their sectors) or are lost.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Debug;

use crate::disk_image::DiskImage;
use gfs::client::{Client, ClientEvent};
use gfs::disk::{DiskCompletion, DiskError, DiskOp, DiskRequest, SECTOR_BYTES};
use gfs::driver::{Disk, Driver, Transport, Workload};
use gfs::pcg::Pcg32;
use gfs::service::GfsNode;
use gfs::wire::{decode_frame, FramedMessage, NodeId};
use gfs::{Config, Outputs};

/// A running node.
pub enum Machine {
    /// A GFS node under its driver.
    Gfs(Box<Driver<GfsNode>>),
    /// Up, but driven by a layer above the world (see [`Role::External`]).
    External,
}

/// What an [`Role::External`] node's layer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalInput {
    /// A frame arrived (undecoded: the layer knows the sender's wire format).
    Frame { from: NodeId, frame: Vec<u8> },
    /// A disk completion is waiting, or the poll time it asked for has come: poll its driver.
    Poll,
}

/// Which role a node plays (kept while the node is down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Chunkserver,
    Client,
    /// A node of another service (e.g. MapReduce) that shares this world's clock, network,
    /// disks and crashes, but whose driver lives in a layer above: its inputs are queued in
    /// [`World::external_inputs`] and the layer polls its driver with [`World::poll_driver`].
    External,
}

/// The simulated disk behind a driver's [`Disk`]: the world carries the requests out later.
#[derive(Default)]
pub struct SimDisk {
    submitted: Vec<DiskRequest>,
    done: VecDeque<DiskCompletion>,
}

impl Disk for SimDisk {
    fn submit(&mut self, request: DiskRequest) {
        self.submitted.push(request);
    }

    fn take_completion(&mut self) -> Option<DiskCompletion> {
        self.done.pop_front()
    }
}

/// The simulated transport behind a driver's [`Transport`]: the world sends what it holds.
struct Outbox<M>(Vec<(NodeId, M)>);

impl<M> Transport<M> for Outbox<M> {
    fn send(&mut self, to: NodeId, msg: M) {
        self.0.push((to, msg));
    }
}

/// One node: its role, its running instance (if up), its disk.
pub struct Node {
    pub id: NodeId,
    pub role: Role,
    pub machine: Option<Machine>,
    pub incarnation: u64,
    pub disk: DiskImage,
    pub sim_disk: SimDisk,
    /// Earliest time the node wants a poll (cached after each poll).
    pub poll_ms: Option<u64>,
    /// Added to every message it sends and every disk request it issues (a slow machine).
    pub extra_latency_ms: u64,
}

impl Node {
    /// The GFS node, if this is one and it is up.
    pub fn gfs(&self) -> Option<&GfsNode> {
        match &self.machine {
            Some(Machine::Gfs(driver)) => Some(driver.node()),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
    },
    DiskDone {
        node: usize,
        incarnation: u64,
        request_id: u64,
        write: Option<(u64, Vec<u8>)>,
        read: Option<(u64, u32)>,
        /// The device reports an I/O error (a failed write lands, tears or is lost by chance).
        io_error: bool,
    },
}

/// Disk faults, in per mille of requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskFaults {
    /// A request fails with an I/O error.
    pub error_per_mille: u64,
    /// A request completes this much later than usual (a slow device).
    pub slow_per_mille: u64,
    pub slow_ms: u64,
}

/// The faults behind the driver's interfaces besides message loss, duplication and delay, as
/// both simulators draw them from a seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceFaults {
    pub disk: DiskFaults,
    /// Mean time between network partitions (0: none).
    pub partition_every_ms: u64,
}

impl DeviceFaults {
    /// Faults drawn from `rng` (none when `calm`).
    pub fn draw(rng: &mut Pcg32, calm: bool) -> Self {
        let error_per_mille = rng.below(25);
        let slow_per_mille = rng.below(60);
        let slow_ms = rng.range_inclusive(10, 300);
        let partition_every_ms = if rng.chance(1, 2) { 0 } else { rng.range_inclusive(800, 6000) };
        if calm {
            return DeviceFaults::default();
        }
        DeviceFaults {
            disk: DiskFaults { error_per_mille, slow_per_mille, slow_ms },
            partition_every_ms,
        }
    }
}

impl std::fmt::Display for DeviceFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "disk_errors={}‰ disk_slow={}‰(+{}ms) partition_every={}ms",
            self.disk.error_per_mille,
            self.disk.slow_per_mille,
            self.disk.slow_ms,
            self.partition_every_ms
        )
    }
}

/// A network partition: messages between `side` and the other nodes are lost until `until_ms`.
#[derive(Clone, Debug)]
pub struct Partition {
    pub side: BTreeSet<NodeId>,
    pub until_ms: u64,
}

/// Counters for benchmarks and reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub messages: u64,
    pub message_bytes: u64,
    pub disk_ops: u64,
    pub disk_write_bytes: u64,
    pub disk_errors: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
}

/// The world.
pub struct World {
    pub now_ms: u64,
    pub rng: Pcg32,
    pub config: Config,
    pub nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    pub disk_faults: DiskFaults,
    pub partition: Option<Partition>,
    pub stats: Stats,
    pub trace: Option<Vec<String>>,
    /// Client completions collected since the layer above last looked.
    pub client_events: Vec<(NodeId, ClientEvent)>,
    /// Nodes polled since the layer above last looked (for the lease check).
    pub stepped: Vec<usize>,
    /// Disk size of chunkservers added from now on.
    pub chunkserver_disk_sectors: u64,
    /// Inputs for [`Role::External`] nodes, in order, for the layer above.
    pub external_inputs: Vec<(usize, ExternalInput)>,
    /// A fingerprint of everything that happened, in order (see [`World::digest`]).
    digest: u64,
}

/// What the digest records, told apart.
const DIGEST_DELIVER: u64 = 1;
const DIGEST_DISK: u64 = 2;
const DIGEST_TICK: u64 = 3;
const DIGEST_BOOT: u64 = 4;
const DIGEST_CRASH: u64 = 5;

/// Master disk size in sectors.
pub const MASTER_DISK_SECTORS: u64 = 2048;

impl World {
    /// An empty world.
    pub fn new(seed: u64, config: Config) -> Self {
        World {
            now_ms: 0,
            rng: Pcg32::new(seed, 0xC0FFEE),
            config,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_min_ms: 1,
            delay_max_ms: 1,
            disk_faults: DiskFaults::default(),
            partition: None,
            stats: Stats::default(),
            trace: None,
            client_events: Vec::new(),
            stepped: Vec::new(),
            chunkserver_disk_sectors: 0,
            external_inputs: Vec::new(),
            digest: 0,
        }
        .with_chunkserver_slots(64)
    }

    /// Sizes chunkserver disks to hold `slots` chunks.
    pub fn with_chunkserver_slots(mut self, slots: u64) -> Self {
        let layout = gfs::chunkserver::store::Layout::new(&self.config, u64::MAX / 2);
        self.chunkserver_disk_sectors = slots * (layout.header_sectors + layout.data_sectors);
        self
    }

    /// Adds a node with a blank disk and boots it.
    pub fn add_node(&mut self, id: NodeId, role: Role) -> usize {
        let sectors = match role {
            Role::Master => MASTER_DISK_SECTORS,
            Role::Chunkserver => self.chunkserver_disk_sectors,
            Role::Client | Role::External => 0,
        };
        self.add_node_with_disk(id, role, sectors)
    }

    /// Adds a node with a blank disk of `sectors` sectors and boots it.
    pub fn add_node_with_disk(&mut self, id: NodeId, role: Role, sectors: u64) -> usize {
        self.nodes.push(Node {
            id,
            role,
            machine: None,
            incarnation: 0,
            disk: DiskImage::zeroed(sectors as usize * SECTOR_BYTES),
            sim_disk: SimDisk::default(),
            poll_ms: None,
            extra_latency_ms: 0,
        });
        let index = self.nodes.len() - 1;
        self.boot(index);
        index
    }

    /// Index of node `id`.
    pub fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|node| node.id == id).expect("known node")
    }

    /// The GFS node at `index`, if it is up.
    pub fn gfs_node(&self, index: usize) -> Option<&GfsNode> {
        self.nodes[index].gfs()
    }

    /// Starts a fresh instance of the node's role over its existing disk.
    pub fn boot(&mut self, index: usize) {
        self.mix(&[DIGEST_BOOT, self.now_ms, index as u64]);
        let seed = self.rng.next_u64();
        let node = &mut self.nodes[index];
        let sectors = (node.disk.len() / SECTOR_BYTES) as u64;
        let config = self.config.clone();
        let gfs = match node.role {
            Role::Master => GfsNode::master(node.id, config, sectors, seed),
            Role::Chunkserver => GfsNode::chunkserver(node.id, config, sectors),
            Role::Client => Ok(GfsNode::client(node.id, config, seed)),
            Role::External => {
                node.machine = Some(Machine::External);
                node.poll_ms = None;
                node.sim_disk = SimDisk::default();
                return;
            }
        };
        let gfs = gfs.expect("the simulator sizes every disk");
        node.machine = Some(Machine::Gfs(Box::new(Driver::new(node.id, gfs))));
        node.poll_ms = Some(self.now_ms);
        node.sim_disk = SimDisk::default();
        let id = node.id;
        self.log(format!("boot node {id}"));
    }

    /// Kills the node: its memory is gone; each disk write in flight lands, tears (a prefix
    /// of its sectors lands) or is lost, by chance.
    pub fn crash(&mut self, index: usize) {
        self.mix(&[DIGEST_CRASH, self.now_ms, index as u64]);
        let incarnation = self.nodes[index].incarnation;
        let mut in_flight: Vec<(u64, u64, Vec<u8>)> = self
            .queue
            .iter()
            .filter_map(|Reverse((_, seq, event))| match event {
                Event::DiskDone { node, incarnation: inc, write: Some((sector, data)), .. }
                    if *node == index && *inc == incarnation =>
                {
                    Some((*seq, *sector, data.clone()))
                }
                _ => None,
            })
            .collect();
        in_flight.sort_by_key(|(seq, _, _)| *seq);
        for (_, sector, data) in in_flight {
            self.land_partly(index, sector, &data);
        }
        let node = &mut self.nodes[index];
        node.machine = None;
        node.incarnation += 1;
        node.poll_ms = None;
        let id = node.id;
        self.log(format!("crash node {id}"));
    }

    /// Starts the device faults `faults` (disk faults now, partitions with
    /// [`World::maybe_partition`]).
    pub fn start_faults(&mut self, faults: DeviceFaults) {
        self.disk_faults = faults.disk;
    }

    /// Ends the disk faults and any partition.
    pub fn stop_faults(&mut self) {
        self.disk_faults = DiskFaults::default();
        self.partition = None;
    }

    /// Once per `tick_ms`: with a mean time of `every_ms` between them, cuts the nodes into two
    /// random sides for 50 ms to 2 s (one partition at a time).
    pub fn maybe_partition(&mut self, rng: &mut Pcg32, tick_ms: u64, every_ms: u64) {
        let active = self.partition.as_ref().is_some_and(|p| self.now_ms < p.until_ms);
        if every_ms == 0 || active || !rng.chance(tick_ms, every_ms) {
            return;
        }
        let side: BTreeSet<NodeId> =
            self.nodes.iter().filter(|_| rng.chance(1, 2)).map(|node| node.id).collect();
        let until_ms = self.now_ms + rng.range_inclusive(50, 2000);
        self.log(format!("partition {side:?} from the rest until {until_ms}ms"));
        self.partition = Some(Partition { side, until_ms });
    }

    /// A write the device did not finish: all of it, a prefix of its sectors, or nothing
    /// reaches the disk.
    fn land_partly(&mut self, index: usize, sector: u64, data: &[u8]) {
        let sectors = data.len() / SECTOR_BYTES;
        let landed = match self.rng.below(3) {
            0 => sectors,
            1 => {
                self.stats.lost_writes += 1;
                0
            }
            _ => {
                self.stats.torn_writes += 1;
                self.rng.below(sectors as u64 + 1) as usize
            }
        };
        self.write_disk(index, sector, &data[..landed * SECTOR_BYTES]);
    }

    fn write_disk(&mut self, index: usize, sector: u64, data: &[u8]) {
        let at = sector as usize * SECTOR_BYTES;
        let disk = &mut self.nodes[index].disk;
        if at + data.len() <= disk.len() {
            disk.write(at, data);
        }
    }

    /// A fingerprint of the run so far: every delivery (its time, ends, length and the
    /// frame's checksum of its payload), disk completion (its request, placement, fault and a
    /// sample of a write's bytes), tick, boot and crash, in order. Two builds that simulate
    /// the same thing give every seed the same digest (`digests` in the simulators' CLI).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    fn mix(&mut self, values: &[u64]) {
        self.digest = mix_digest(self.digest, values);
    }

    fn mix_event(&mut self, event: &Event) {
        let now_ms = self.now_ms;
        match event {
            Event::Deliver { from, to, frame } => {
                // A frame opens with its payload's length and CRC.
                let header =
                    frame.get(..8).map_or(0, |h| u64::from_le_bytes(h.try_into().expect("8")));
                let ends = u64::from(*from) << 32 | u64::from(*to);
                self.mix(&[DIGEST_DELIVER, now_ms, ends, frame.len() as u64, header]);
            }
            Event::DiskDone { node, incarnation, request_id, write, read, io_error } => {
                let (sector, len, sample) = match (write, read) {
                    (Some((sector, data)), _) => {
                        let sample = data
                            .iter()
                            .step_by(509)
                            .fold(0u64, |acc, b| acc.rotate_left(8) ^ u64::from(*b));
                        (*sector, data.len() as u64, sample)
                    }
                    (None, Some((sector, count))) => (*sector, u64::from(*count), u64::MAX),
                    (None, None) => (0, 0, 0),
                };
                let values = [
                    DIGEST_DISK,
                    now_ms,
                    *node as u64,
                    *incarnation,
                    *request_id,
                    u64::from(*io_error),
                    sector,
                    len,
                    sample,
                ];
                self.mix(&values);
            }
        }
    }

    /// Appends a line to the trace, if tracing.
    pub fn log(&mut self, line: String) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(format!("{:>7}ms {line}", self.now_ms));
        }
    }

    fn push(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at_ms, self.sequence, event)));
    }

    /// Polls the driver of node `index` (which the caller holds) at the current time through
    /// the world's transport and disk, and carries out what it emitted. Nothing if it is down.
    pub fn poll_driver<N: gfs::driver::Node>(&mut self, index: usize, driver: &mut Driver<N>)
    where
        N::Message: FramedMessage + Debug,
    {
        if self.nodes[index].machine.is_none() {
            return;
        }
        let steps = driver.stats.steps;
        let mut outbox = Outbox(Vec::new());
        let mut disk = std::mem::take(&mut self.nodes[index].sim_disk);
        driver.poll(self.now_ms, &mut outbox, &mut disk);
        self.stats.steps += driver.stats.steps - steps;
        let from = self.nodes[index].id;
        for (to, msg) in outbox.0 {
            self.send_frame(index, from, to, msg.to_frame(), &msg);
        }
        let requests = std::mem::take(&mut disk.submitted);
        self.nodes[index].sim_disk = disk;
        self.issue_disk(index, requests);
        self.nodes[index].poll_ms = driver.wake_at_ms(self.now_ms);
        for line in driver.take_log() {
            self.log(format!("node {from}: {line}"));
        }
    }

    /// Polls GFS node `index` and collects its client's completions.
    fn poll_gfs(&mut self, index: usize) {
        let Some(Machine::Gfs(mut driver)) = self.nodes[index].machine.take() else {
            return;
        };
        self.nodes[index].machine = Some(Machine::External);
        self.poll_driver(index, &mut driver);
        let id = self.nodes[index].id;
        self.client_events.extend(driver.take_events().into_iter().map(|event| (id, event)));
        self.nodes[index].machine = Some(Machine::Gfs(driver));
        self.stepped.push(index);
    }

    /// Gives GFS node `index` a scripted workload (e.g. the VM client's script), polled from now.
    pub fn set_workload(&mut self, index: usize, workload: Box<dyn Workload<GfsNode>>) {
        if let Some(Machine::Gfs(driver)) = self.nodes[index].machine.as_mut() {
            driver.set_workload(workload);
            self.nodes[index].poll_ms = Some(self.now_ms);
        }
    }

    /// The result of GFS node `index`'s workload, once it is over.
    pub fn workload_result(&self, index: usize) -> Option<&Result<(), String>> {
        match &self.nodes[index].machine {
            Some(Machine::Gfs(driver)) => driver.finished(),
            _ => None,
        }
    }

    /// Submits work to a client node and sends what it emits.
    pub fn with_client<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Client, u64, &mut Outputs) -> R,
    ) -> Option<R> {
        let now_ms = self.now_ms;
        let Some(Machine::Gfs(driver)) = self.nodes[index].machine.as_mut() else {
            return None;
        };
        let result = driver.with_node(|node, out| match node {
            GfsNode::Client(client) => Some(f(client, now_ms, out)),
            _ => None,
        })?;
        self.poll_gfs(index);
        Some(result)
    }

    fn send_frame(
        &mut self,
        index: usize,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
        msg: &dyn Debug,
    ) {
        self.stats.messages += 1;
        self.stats.message_bytes += frame.len() as u64;
        let cut = self.partition.as_ref().is_some_and(|partition| {
            self.now_ms < partition.until_ms
                && partition.side.contains(&from) != partition.side.contains(&to)
        });
        if cut || self.rng.chance(self.drop_per_mille, 1000) {
            if self.trace.is_some() {
                let why = if cut { "cut" } else { "drop" };
                self.log(format!("{why} {from}->{to} {}", short_msg(msg)));
            }
            return;
        }
        let duplicate = self.rng.chance(self.duplicate_per_mille, 1000);
        let extra_ms = self.nodes[index].extra_latency_ms;
        if duplicate {
            self.deliver_later(from, to, frame.clone(), extra_ms);
        }
        // The last copy takes the frame itself (most messages have one).
        self.deliver_later(from, to, frame, extra_ms);
    }

    /// Queues the delivery of `frame` after a drawn network delay plus `extra_ms`.
    fn deliver_later(&mut self, from: NodeId, to: NodeId, frame: Vec<u8>, extra_ms: u64) {
        let delay = self.rng.range_inclusive(self.delay_min_ms, self.delay_max_ms) + extra_ms;
        self.push(self.now_ms + delay, Event::Deliver { from, to, frame });
    }

    fn issue_disk(&mut self, index: usize, disk: Vec<DiskRequest>) {
        let incarnation = self.nodes[index].incarnation;
        let extra_ms = self.nodes[index].extra_latency_ms;
        let faults = self.disk_faults;
        for DiskRequest { id, op } in disk {
            self.stats.disk_ops += 1;
            let mut latency = self.rng.range_inclusive(1, 4) + extra_ms;
            if self.rng.chance(faults.slow_per_mille, 1000) {
                latency += self.rng.range_inclusive(1, faults.slow_ms.max(1));
            }
            let io_error = self.rng.chance(faults.error_per_mille, 1000);
            let (write, read) = match op {
                DiskOp::Write { sector, data } => {
                    self.stats.disk_write_bytes += data.len() as u64;
                    (Some((sector, data)), None)
                }
                DiskOp::Read { sector, count } => (None, Some((sector, count))),
            };
            let event =
                Event::DiskDone { node: index, incarnation, request_id: id, write, read, io_error };
            self.push(self.now_ms + latency, event);
        }
    }

    /// Time of the next thing that happens.
    pub fn next_time_ms(&self) -> Option<u64> {
        let event = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let poll = self.nodes.iter().filter_map(|node| node.poll_ms).min();
        [event, poll].into_iter().flatten().min()
    }

    /// Advances to the next event or poll (not past `until_ms`); false if nothing is left.
    pub fn run_one(&mut self, until_ms: u64) -> bool {
        let Some(next_ms) = self.next_time_ms() else {
            self.now_ms = until_ms;
            return false;
        };
        if next_ms > until_ms {
            self.now_ms = until_ms;
            return false;
        }
        self.now_ms = self.now_ms.max(next_ms);
        let event_due = self.queue.peek().is_some_and(|Reverse((at, _, _))| *at <= self.now_ms);
        if event_due {
            let Reverse((_, _, event)) = self.queue.pop().expect("peeked");
            self.handle(event);
            return true;
        }
        let now_ms = self.now_ms;
        let index = self
            .nodes
            .iter()
            .position(|node| node.poll_ms.is_some_and(|at| at <= now_ms))
            .expect("a poll is due");
        self.mix(&[DIGEST_TICK, now_ms, index as u64]);
        if self.trace.is_some() {
            let line = format!("node {} <- tick", self.nodes[index].id);
            self.log(line);
        }
        self.poll_node(index);
        // A node asking again for a time already handled is polled one millisecond later.
        if let Some(poll) = self.nodes[index].poll_ms.as_mut() {
            *poll = (*poll).max(now_ms + 1);
        }
        true
    }

    /// Polls node `index`, or asks the layer above to.
    fn poll_node(&mut self, index: usize) {
        match self.nodes[index].machine {
            Some(Machine::Gfs(_)) => self.poll_gfs(index),
            Some(Machine::External) => {
                self.nodes[index].poll_ms = None;
                self.external_inputs.push((index, ExternalInput::Poll));
            }
            None => {}
        }
    }

    fn handle(&mut self, event: Event) {
        self.mix_event(&event);
        match event {
            Event::Deliver { from, to, frame } => {
                let Some(index) = self.nodes.iter().position(|node| node.id == to) else {
                    return;
                };
                match &self.nodes[index].machine {
                    Some(Machine::External) => {
                        self.external_inputs.push((index, ExternalInput::Frame { from, frame }));
                    }
                    Some(Machine::Gfs(_)) => {
                        let (msg, _) = decode_frame(&frame).expect("frames decode");
                        if self.trace.is_some() {
                            let line = format!("node {to} <- {from}: {}", short_msg(&msg));
                            self.log(line);
                        }
                        if let Some(Machine::Gfs(driver)) = self.nodes[index].machine.as_mut() {
                            driver.receive(from, msg);
                        }
                        self.poll_gfs(index);
                    }
                    None => {}
                }
            }
            Event::DiskDone { node, incarnation, request_id, write, read, io_error } => {
                if self.nodes[node].incarnation != incarnation {
                    return; // the node crashed; crash() decided the write's fate
                }
                let result = self.carry_out_disk(node, write, read, io_error);
                if self.trace.is_some() {
                    let what = match &result {
                        Ok(bytes) => format!("ok {}B", bytes.len()),
                        Err(error) => format!("{error:?}"),
                    };
                    let line = format!("node {} <- disk #{request_id} {what}", self.nodes[node].id);
                    self.log(line);
                }
                let completion = DiskCompletion { id: request_id, result };
                self.nodes[node].sim_disk.done.push_back(completion);
                self.poll_node(node);
            }
        }
    }

    /// Carries out one disk request on node `index`'s disk.
    fn carry_out_disk(
        &mut self,
        index: usize,
        write: Option<(u64, Vec<u8>)>,
        read: Option<(u64, u32)>,
        io_error: bool,
    ) -> Result<Vec<u8>, DiskError> {
        let total = self.nodes[index].disk.len();
        if let Some((sector, data)) = write {
            let at = sector as usize * SECTOR_BYTES;
            if at + data.len() > total {
                return Err(DiskError::OutOfRange);
            }
            if io_error {
                self.stats.disk_errors += 1;
                self.land_partly(index, sector, &data);
                return Err(DiskError::Io);
            }
            self.write_disk(index, sector, &data);
            return Ok(Vec::new());
        }
        let (sector, count) = read.expect("a read");
        let at = sector as usize * SECTOR_BYTES;
        let end = at + count as usize * SECTOR_BYTES;
        if end > total {
            return Err(DiskError::OutOfRange);
        }
        if io_error {
            self.stats.disk_errors += 1;
            return Err(DiskError::Io);
        }
        Ok(self.nodes[index].disk.read(at, end - at))
    }
}

/// Folds `values` into `digest` (a multiply-rotate mix: cheap enough to stay on in sweeps).
pub fn mix_digest(digest: u64, values: &[u64]) -> u64 {
    values.iter().fold(digest, |digest, value| {
        (digest.rotate_left(23) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    })
}

/// A message for the trace, with long byte payloads elided.
pub fn short_msg(msg: &dyn Debug) -> String {
    let mut text = format!("{msg:?}");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
