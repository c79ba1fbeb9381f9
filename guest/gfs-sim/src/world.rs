//! The simulated world: nodes, their disks, a lossy reordering network and a clock, all driven
//! by one seeded generator. Every message crosses the wire encoding (postcard + CRC32C frame).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use gfs::chunkserver::Chunkserver;
use gfs::client::{Client, ClientEvent};
use gfs::disk::{DiskCompletion, DiskOp, DiskRequest, SECTOR_BYTES};
use gfs::master::Master;
use gfs::pcg::Pcg32;
use gfs::wire::{decode_frame, encode_frame, NodeId};
use gfs::{Config, Input, Outputs, StateMachine};

/// A role instance.
pub enum Machine {
    Master(Box<Master>),
    Chunkserver(Box<Chunkserver>),
    Client(Box<Client>),
    /// Up, but driven by a layer above the world (see [`Role::External`]).
    External,
}

impl Machine {
    fn as_state_machine(&mut self) -> Option<&mut dyn StateMachine> {
        match self {
            Machine::Master(m) => Some(m.as_mut()),
            Machine::Chunkserver(c) => Some(c.as_mut()),
            Machine::Client(c) => Some(c.as_mut()),
            Machine::External => None,
        }
    }
}

/// An input for an [`Role::External`] node, handed to the layer that drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalInput {
    /// A frame arrived (undecoded: the layer knows the sender's wire format).
    Frame { from: NodeId, frame: Vec<u8> },
    /// One of its disk requests completed.
    Disk(DiskCompletion),
    /// The poll time it set with [`World::set_poll`] has come.
    Tick,
}

/// Which role a node plays (kept while the node is down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Chunkserver,
    Client,
    /// A node of another service (e.g. MapReduce) that shares this world's clock, network,
    /// disks and crashes, but whose state machine lives in a layer above: its inputs are
    /// queued in [`World::external_inputs`] and its outputs enter with [`World::emit`].
    External,
}

/// One node: its role, its running instance (if up), its disk.
pub struct Node {
    pub id: NodeId,
    pub role: Role,
    pub machine: Option<Machine>,
    pub incarnation: u64,
    pub disk: Vec<u8>,
    /// Earliest time the node wants a tick (cached after each step).
    pub poll_ms: Option<u64>,
    /// Added to every message it sends and every disk request it issues (a slow machine).
    pub extra_latency_ms: u64,
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
    },
}

/// Counters for benchmarks and reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub messages: u64,
    pub message_bytes: u64,
    pub disk_ops: u64,
    pub disk_write_bytes: u64,
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
    pub stats: Stats,
    pub trace: Option<Vec<String>>,
    /// Client completions collected since the driver last looked.
    pub client_events: Vec<(NodeId, ClientEvent)>,
    /// Nodes stepped since the driver last looked (for the lease check).
    pub stepped: Vec<usize>,
    /// Disk size of chunkservers added from now on.
    pub chunkserver_disk_sectors: u64,
    /// Inputs for [`Role::External`] nodes, in order, for the layer above to step.
    pub external_inputs: Vec<(usize, ExternalInput)>,
}

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
            stats: Stats::default(),
            trace: None,
            client_events: Vec::new(),
            stepped: Vec::new(),
            chunkserver_disk_sectors: 0,
            external_inputs: Vec::new(),
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
            disk: vec![0; sectors as usize * SECTOR_BYTES],
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

    /// Starts a fresh instance of the node's role over its existing disk.
    pub fn boot(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let seed = self.rng.next_u64();
        let sectors = (node.disk.len() / SECTOR_BYTES) as u64;
        let config = self.config.clone();
        node.machine = Some(match node.role {
            Role::Master => Machine::Master(Box::new(Master::new(node.id, config, sectors, seed))),
            Role::Chunkserver => {
                Machine::Chunkserver(Box::new(Chunkserver::new(node.id, config, sectors)))
            }
            Role::Client => Machine::Client(Box::new(Client::new(node.id, config, seed))),
            Role::External => Machine::External,
        });
        node.poll_ms = if node.role == Role::External { None } else { Some(self.now_ms) };
        let id = node.id;
        self.log(format!("boot node {id}"));
    }

    /// Kills the node: its memory is gone; disk writes in flight land or not, by chance.
    pub fn crash(&mut self, index: usize) {
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
            if self.rng.chance(1, 2) {
                self.write_disk(index, sector, &data);
            }
        }
        let node = &mut self.nodes[index];
        node.machine = None;
        node.incarnation += 1;
        node.poll_ms = None;
        let id = node.id;
        self.log(format!("crash node {id}"));
    }

    fn write_disk(&mut self, index: usize, sector: u64, data: &[u8]) {
        let at = sector as usize * SECTOR_BYTES;
        let disk = &mut self.nodes[index].disk;
        disk[at..at + data.len()].copy_from_slice(data);
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

    /// Runs `input` on node `index` and routes what it emits.
    pub fn step(&mut self, index: usize, input: Input) {
        let now_ms = self.now_ms;
        let mut out = Outputs::default();
        if self.nodes[index].machine.is_none() {
            return;
        }
        if self.trace.is_some() {
            let line = format!("node {} <- {}", self.nodes[index].id, short(&input));
            self.log(line);
        }
        let machine = self.nodes[index].machine.as_mut().expect("checked");
        let Some(state_machine) = machine.as_state_machine() else {
            let external = match input {
                Input::Message { .. } => unreachable!("frames for external nodes stay undecoded"),
                Input::Disk(done) => ExternalInput::Disk(done),
                Input::Tick => {
                    self.nodes[index].poll_ms = None;
                    ExternalInput::Tick
                }
            };
            self.external_inputs.push((index, external));
            return;
        };
        state_machine.step(now_ms, input, &mut out);
        let poll = state_machine.next_poll_ms();
        self.nodes[index].poll_ms = poll;
        self.stats.steps += 1;
        self.stepped.push(index);
        self.route(index, out);
    }

    /// Submits work to a client node and routes the outputs.
    pub fn with_client<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Client, u64, &mut Outputs) -> R,
    ) -> Option<R> {
        let now_ms = self.now_ms;
        let mut out = Outputs::default();
        let Some(Machine::Client(client)) = self.nodes[index].machine.as_mut() else {
            return None;
        };
        let result = f(client, now_ms, &mut out);
        self.nodes[index].poll_ms = client.next_poll_ms();
        self.route(index, out);
        Some(result)
    }

    /// Sends what an [`Role::External`] node emitted: frames already encoded in the wire
    /// format their receiver speaks, and requests for its own disk. Nothing if it is down.
    pub fn emit(&mut self, index: usize, frames: Vec<(NodeId, Vec<u8>)>, disk: Vec<DiskRequest>) {
        if self.nodes[index].machine.is_none() {
            return;
        }
        let from = self.nodes[index].id;
        for (to, frame) in frames {
            self.send_frame(index, from, to, frame, None);
        }
        self.issue_disk(index, disk);
    }

    /// Sets when an [`Role::External`] node next wants an [`ExternalInput::Tick`].
    pub fn set_poll(&mut self, index: usize, poll_ms: Option<u64>) {
        if self.nodes[index].machine.is_some() {
            self.nodes[index].poll_ms = poll_ms.map(|at| at.max(self.now_ms));
        }
    }

    fn send_frame(
        &mut self,
        index: usize,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
        msg: Option<&gfs::wire::Message>,
    ) {
        self.stats.messages += 1;
        self.stats.message_bytes += frame.len() as u64;
        if self.rng.chance(self.drop_per_mille, 1000) {
            if self.trace.is_some() {
                let what = msg.map_or_else(|| format!("{}B frame", frame.len()), short_msg);
                self.log(format!("drop {from}->{to} {what}"));
            }
            return;
        }
        let copies = if self.rng.chance(self.duplicate_per_mille, 1000) { 2 } else { 1 };
        let extra_ms = self.nodes[index].extra_latency_ms;
        for _ in 0..copies {
            let delay = self.rng.range_inclusive(self.delay_min_ms, self.delay_max_ms) + extra_ms;
            let event = Event::Deliver { from, to, frame: frame.clone() };
            self.push(self.now_ms + delay, event);
        }
    }

    fn issue_disk(&mut self, index: usize, disk: Vec<DiskRequest>) {
        let incarnation = self.nodes[index].incarnation;
        let extra_ms = self.nodes[index].extra_latency_ms;
        for DiskRequest { id, op } in disk {
            self.stats.disk_ops += 1;
            let latency = self.rng.range_inclusive(1, 4) + extra_ms;
            let (write, read) = match op {
                DiskOp::Write { sector, data } => {
                    self.stats.disk_write_bytes += data.len() as u64;
                    (Some((sector, data)), None)
                }
                DiskOp::Read { sector, count } => (None, Some((sector, count))),
            };
            let event = Event::DiskDone { node: index, incarnation, request_id: id, write, read };
            self.push(self.now_ms + latency, event);
        }
    }

    fn route(&mut self, index: usize, out: Outputs) {
        let from = self.nodes[index].id;
        for envelope in out.messages {
            let frame = encode_frame(&envelope.msg);
            self.send_frame(index, from, envelope.to, frame, Some(&envelope.msg));
        }
        self.issue_disk(index, out.disk);
        for event in out.client_events {
            self.client_events.push((from, event));
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
        self.step(index, Input::Tick);
        // A node asking again for a time already handled is ticked one millisecond later.
        if let Some(poll) = self.nodes[index].poll_ms.as_mut() {
            *poll = (*poll).max(now_ms + 1);
        }
        true
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, frame } => {
                let Some(index) = self.nodes.iter().position(|node| node.id == to) else {
                    return;
                };
                if matches!(self.nodes[index].machine, Some(Machine::External)) {
                    self.external_inputs.push((index, ExternalInput::Frame { from, frame }));
                    return;
                }
                let (msg, _) = decode_frame(&frame).expect("frames decode");
                self.step(index, Input::Message { from, msg });
            }
            Event::DiskDone { node, incarnation, request_id, write, read } => {
                if self.nodes[node].incarnation != incarnation {
                    return; // the node crashed; crash() decided the write's fate
                }
                let total = self.nodes[node].disk.len();
                let result = if let Some((sector, data)) = write {
                    let at = sector as usize * SECTOR_BYTES;
                    if at + data.len() > total {
                        Err(gfs::disk::DiskError::OutOfRange)
                    } else {
                        self.write_disk(node, sector, &data);
                        Ok(Vec::new())
                    }
                } else {
                    let (sector, count) = read.expect("a read");
                    let at = sector as usize * SECTOR_BYTES;
                    let end = at + count as usize * SECTOR_BYTES;
                    if end > total {
                        Err(gfs::disk::DiskError::OutOfRange)
                    } else {
                        Ok(self.nodes[node].disk[at..end].to_vec())
                    }
                };
                let completion = DiskCompletion { id: request_id, result };
                self.step(node, Input::Disk(completion));
            }
        }
    }
}

fn short(input: &Input) -> String {
    match input {
        Input::Message { from, msg } => format!("{from}: {}", short_msg(msg)),
        Input::Disk(done) => format!(
            "disk #{} {}",
            done.id,
            match &done.result {
                Ok(bytes) => format!("ok {}B", bytes.len()),
                Err(e) => format!("{e:?}"),
            }
        ),
        Input::Tick => "tick".to_string(),
    }
}

/// A message for the trace, with long byte payloads elided.
pub fn short_msg(msg: &gfs::wire::Message) -> String {
    let mut text = format!("{msg:?}");
    if text.len() > 200 {
        text.truncate(200);
        text.push('…');
    }
    text
}
