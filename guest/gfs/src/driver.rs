//! One driver per service node, the same in the VMs and in the simulators: it runs a node's
//! state machine over a transport and a disk that the world around it supplies (the guest
//! kernel: its mesh over smoltcp and virtio-blk; the simulators: their faulty versions).
//!
//! Shaped like a smoltcp interface: the caller hands the driver what arrived
//! ([`Driver::receive`]) and polls it with the time ([`Driver::poll`]); the driver steps the
//! state machine, loops the node's messages to itself straight back as inputs, sends the rest,
//! submits disk requests and feeds their completions back (a completion it did not ask for is
//! counted and dropped; a request that failed with an I/O error is issued again, up to
//! [`DISK_ATTEMPTS`] in all), ticks the machine once its poll time has come and gives the node's
//! scripted workload, if it has one, its turn. It reads no clock and does no I/O of its own.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::disk::{DiskCompletion, DiskError, DiskRequest};

/// How often a disk request that failed with an I/O error is issued in all before the node
/// sees the error (a device error may pass, as a block layer's retries assume).
pub const DISK_ATTEMPTS: u32 = 3;
use crate::wire::NodeId;

/// Where a node's messages go. Delivery is not promised: the services retry.
pub trait Transport<M> {
    /// Sends `msg` to node `to`.
    fn send(&mut self, to: NodeId, msg: M);
}

/// The node's own block device: requests go in, completions come out, maybe later.
pub trait Disk {
    /// Starts `request`; its completion is taken later with [`Disk::take_completion`].
    fn submit(&mut self, request: DiskRequest);

    /// A finished request, if any. A write completed without an error is durable.
    fn take_completion(&mut self) -> Option<DiskCompletion>;
}

/// A disk for nodes that have none: every request fails.
#[derive(Default)]
pub struct NoDisk {
    failed: VecDeque<u64>,
}

impl Disk for NoDisk {
    fn submit(&mut self, request: DiskRequest) {
        self.failed.push_back(request.id);
    }

    fn take_completion(&mut self) -> Option<DiskCompletion> {
        let id = self.failed.pop_front()?;
        Some(DiskCompletion { id, result: Err(crate::disk::DiskError::Io) })
    }
}

/// A state machine the driver can run: how its inputs are made and its outputs taken apart.
pub trait Node {
    /// What travels between nodes.
    type Message;
    type Input;
    type Outputs: Default;
    /// What the node reports to its workload and to whoever runs it (logs, checks).
    type Event;

    fn step(&mut self, now_ms: u64, input: Self::Input, out: &mut Self::Outputs);
    /// The earliest time the node wants a tick.
    fn next_poll_ms(&self) -> Option<u64>;
    fn message_input(from: NodeId, msg: Self::Message) -> Self::Input;
    fn disk_input(done: DiskCompletion) -> Self::Input;
    fn tick_input() -> Self::Input;
    /// Moves what `out` holds (and the events the node keeps inside, e.g. a client's
    /// completions) into `taken`.
    fn take_outputs(&mut self, out: &mut Self::Outputs, taken: &mut Taken<Self>);
}

/// Outputs taken apart by [`Node::take_outputs`].
pub struct Taken<N: Node + ?Sized> {
    pub messages: Vec<(NodeId, N::Message)>,
    pub disk: Vec<DiskRequest>,
    pub events: Vec<N::Event>,
}

impl<N: Node + ?Sized> Default for Taken<N> {
    fn default() -> Self {
        Taken { messages: Vec::new(), disk: Vec::new(), events: Vec::new() }
    }
}

/// A scripted workload on a node (e.g. the VM client that writes a file and reads it back).
pub trait Workload<N: Node> {
    /// Sees the node's events since its last turn and may start work on `node` (whose outputs
    /// go into `out`); says what happened in `log`. `Some` once the workload is over.
    fn drive(
        &mut self,
        now_ms: u64,
        node: &mut N,
        out: &mut N::Outputs,
        events: &[N::Event],
        log: &mut Vec<String>,
    ) -> Option<Result<(), String>>;

    /// When it next wants a turn without news.
    fn wake_at_ms(&self) -> Option<u64>;
}

/// Counters for reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverStats {
    pub steps: u64,
    pub messages_sent: u64,
    /// Messages the node sent itself (looped back, never on the wire).
    pub self_messages: u64,
    pub disk_requests: u64,
    /// I/O errors the node saw (after the retries), and retries made.
    pub disk_errors: u64,
    pub disk_retries: u64,
    /// Completions of requests the driver did not have in flight (dropped).
    pub stray_completions: u64,
}

/// Runs one node (see the module doc).
pub struct Driver<N: Node> {
    me: NodeId,
    node: N,
    outputs: N::Outputs,
    taken: Taken<N>,
    inputs: VecDeque<N::Input>,
    /// Disk requests issued and not completed, with the attempts made.
    disk_in_flight: BTreeMap<u64, (DiskRequest, u32)>,
    workload: Option<Box<dyn Workload<N>>>,
    finished: Option<Result<(), String>>,
    /// Events the caller has not taken yet; the workload has seen the first `workload_seen`
    /// (the caller gets no event before the workload has had it, and no copies are made).
    events: Vec<N::Event>,
    workload_seen: usize,
    log: Vec<String>,
    pub stats: DriverStats,
}

impl<N: Node> Driver<N> {
    /// A driver for `node`, whose id is `me`.
    pub fn new(me: NodeId, node: N) -> Self {
        Driver {
            me,
            node,
            outputs: N::Outputs::default(),
            taken: Taken::default(),
            inputs: VecDeque::new(),
            disk_in_flight: BTreeMap::new(),
            workload: None,
            finished: None,
            events: Vec::new(),
            workload_seen: 0,
            log: Vec::new(),
            stats: DriverStats::default(),
        }
    }

    /// Gives the node a scripted workload (its first turn comes at the next poll).
    pub fn set_workload(&mut self, workload: Box<dyn Workload<N>>) {
        self.workload = Some(workload);
        self.finished = None;
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn node(&self) -> &N {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut N {
        &mut self.node
    }

    /// The workload's result once it is over.
    pub fn finished(&self) -> Option<&Result<(), String>> {
        self.finished.as_ref()
    }

    /// Lets the caller start work on the node (e.g. submit a client operation); what the node
    /// emits goes out at the next poll.
    pub fn with_node<R>(&mut self, f: impl FnOnce(&mut N, &mut N::Outputs) -> R) -> R {
        f(&mut self.node, &mut self.outputs)
    }

    /// Queues a message that arrived from `from`; it is stepped at the next poll.
    pub fn receive(&mut self, from: NodeId, msg: N::Message) {
        self.inputs.push_back(N::message_input(from, msg));
    }

    /// Runs everything that is due at `now_ms`: arrived messages, disk completions, messages to
    /// itself, one tick if the node's poll time has come, and the workload's turn.
    pub fn poll(
        &mut self,
        now_ms: u64,
        transport: &mut impl Transport<N::Message>,
        disk: &mut impl Disk,
    ) {
        // What the node emitted outside a step (see `with_node`) goes first.
        self.route(transport, disk);
        self.run_inputs(now_ms, transport, disk);
        if self.node.next_poll_ms().is_some_and(|at_ms| at_ms <= now_ms) {
            self.step(now_ms, N::tick_input(), transport, disk);
            self.run_inputs(now_ms, transport, disk);
        }
        if let (Some(workload), None) = (self.workload.as_mut(), self.finished.as_ref()) {
            let events = &self.events[self.workload_seen..];
            self.finished =
                workload.drive(now_ms, &mut self.node, &mut self.outputs, events, &mut self.log);
            self.workload_seen = self.events.len();
            self.route(transport, disk);
            self.run_inputs(now_ms, transport, disk);
        }
    }

    /// Steps every queued input and completed disk request, and what they cause.
    fn run_inputs(
        &mut self,
        now_ms: u64,
        transport: &mut impl Transport<N::Message>,
        disk: &mut impl Disk,
    ) {
        loop {
            while let Some(done) = disk.take_completion() {
                let Some((request, attempts)) = self.disk_in_flight.remove(&done.id) else {
                    self.stats.stray_completions += 1;
                    continue;
                };
                if done.result == Err(DiskError::Io) && attempts < DISK_ATTEMPTS {
                    self.stats.disk_retries += 1;
                    self.disk_in_flight.insert(done.id, (request.clone(), attempts + 1));
                    disk.submit(request);
                    continue;
                }
                self.stats.disk_errors += u64::from(done.result.is_err());
                self.inputs.push_back(N::disk_input(done));
            }
            let Some(input) = self.inputs.pop_front() else { return };
            self.step(now_ms, input, transport, disk);
        }
    }

    fn step(
        &mut self,
        now_ms: u64,
        input: N::Input,
        transport: &mut impl Transport<N::Message>,
        disk: &mut impl Disk,
    ) {
        self.stats.steps += 1;
        self.node.step(now_ms, input, &mut self.outputs);
        self.route(transport, disk);
    }

    /// Carries out what the node emitted.
    fn route(&mut self, transport: &mut impl Transport<N::Message>, disk: &mut impl Disk) {
        self.node.take_outputs(&mut self.outputs, &mut self.taken);
        for (to, msg) in self.taken.messages.drain(..) {
            if to == self.me {
                self.stats.self_messages += 1;
                self.inputs.push_back(N::message_input(to, msg));
            } else {
                self.stats.messages_sent += 1;
                transport.send(to, msg);
            }
        }
        for request in self.taken.disk.drain(..) {
            self.stats.disk_requests += 1;
            self.disk_in_flight.insert(request.id, (request.clone(), 1));
            disk.submit(request);
        }
        self.events.append(&mut self.taken.events);
    }

    /// When the driver next wants a poll without news: the node's poll time (a time already
    /// handled counts as a millisecond later) or the workload's.
    pub fn wake_at_ms(&self, now_ms: u64) -> Option<u64> {
        let node_ms = self.node.next_poll_ms().map(|at_ms| at_ms.max(now_ms + 1));
        let workload_ms = match (&self.workload, &self.finished) {
            (Some(workload), None) => workload.wake_at_ms(),
            _ => None,
        };
        [node_ms, workload_ms].into_iter().flatten().min()
    }

    /// The events since the last call (while a workload runs, those it has seen).
    pub fn take_events(&mut self) -> Vec<N::Event> {
        let running = self.workload.is_some() && self.finished.is_none();
        let keep = if running { self.events.split_off(self.workload_seen) } else { Vec::new() };
        self.workload_seen = 0;
        core::mem::replace(&mut self.events, keep)
    }

    /// The workload's log lines since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        core::mem::take(&mut self.log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskOp;
    use alloc::vec;

    /// A node that records its inputs; a message `n > 0` makes it send `n - 1` to itself and
    /// to node 9, a message 100 issues a disk write; it wants a tick at 50 ms.
    #[derive(Default)]
    struct Echo {
        seen: Vec<Seen>,
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Message(NodeId, u32),
        Disk(u64, bool),
        Tick,
    }

    #[derive(Default)]
    struct EchoOut {
        messages: Vec<(NodeId, u32)>,
        disk: Vec<DiskRequest>,
    }

    impl Node for Echo {
        type Message = u32;
        type Input = Seen;
        type Outputs = EchoOut;
        type Event = ();

        fn step(&mut self, _now_ms: u64, input: Seen, out: &mut EchoOut) {
            if let Seen::Message(_, 100) = input {
                out.disk.push(DiskRequest { id: 7, op: DiskOp::Write { sector: 0, data: vec![] } });
            } else if let Seen::Message(_, n) = input {
                if n > 0 {
                    out.messages.extend([(1, n - 1), (9, n - 1)]);
                }
            }
            self.seen.push(input);
        }

        fn next_poll_ms(&self) -> Option<u64> {
            Some(50)
        }

        fn message_input(from: NodeId, msg: u32) -> Seen {
            Seen::Message(from, msg)
        }

        fn disk_input(done: DiskCompletion) -> Seen {
            Seen::Disk(done.id, done.result.is_ok())
        }

        fn tick_input() -> Seen {
            Seen::Tick
        }

        fn take_outputs(&mut self, out: &mut EchoOut, taken: &mut Taken<Self>) {
            taken.messages.append(&mut out.messages);
            taken.disk.append(&mut out.disk);
        }
    }

    #[derive(Default)]
    struct Wire(Vec<(NodeId, u32)>);

    impl Transport<u32> for Wire {
        fn send(&mut self, to: NodeId, msg: u32) {
            self.0.push((to, msg));
        }
    }

    /// Completes every request at once, failing the first `failures` with an I/O error.
    #[derive(Default)]
    struct Flaky {
        failures: u32,
        submitted: u32,
        done: VecDeque<DiskCompletion>,
    }

    impl Disk for Flaky {
        fn submit(&mut self, request: DiskRequest) {
            self.submitted += 1;
            let result = if self.failures > 0 {
                self.failures -= 1;
                Err(DiskError::Io)
            } else {
                Ok(Vec::new())
            };
            self.done.push_back(DiskCompletion { id: request.id, result });
        }

        fn take_completion(&mut self) -> Option<DiskCompletion> {
            self.done.pop_front()
        }
    }

    #[test]
    fn messages_to_itself_loop_back_and_never_reach_the_transport() {
        let mut driver = Driver::new(1, Echo::default());
        let (mut wire, mut disk) = (Wire::default(), Flaky::default());
        driver.receive(5, 2);
        driver.poll(10, &mut wire, &mut disk);
        let seen = &driver.node().seen;
        assert_eq!(seen, &[Seen::Message(5, 2), Seen::Message(1, 1), Seen::Message(1, 0)]);
        assert_eq!(wire.0, vec![(9, 1), (9, 0)]);
        assert_eq!(driver.stats.self_messages, 2);
    }

    #[test]
    fn the_tick_comes_once_its_time_has_come() {
        let mut driver = Driver::new(1, Echo::default());
        let (mut wire, mut disk) = (Wire::default(), Flaky::default());
        driver.poll(49, &mut wire, &mut disk);
        assert!(driver.node().seen.is_empty());
        driver.poll(50, &mut wire, &mut disk);
        assert_eq!(driver.node().seen, vec![Seen::Tick]);
        // A time already handled counts as a millisecond later.
        assert_eq!(driver.wake_at_ms(50), Some(51));
    }

    #[test]
    fn an_io_error_is_retried_and_only_a_persistent_one_reaches_the_node() {
        for (failures, reaches_node_ok) in [(DISK_ATTEMPTS - 1, true), (DISK_ATTEMPTS, false)] {
            let mut driver = Driver::new(1, Echo::default());
            let mut disk = Flaky { failures, ..Flaky::default() };
            driver.receive(5, 100);
            driver.poll(10, &mut Wire::default(), &mut disk);
            assert_eq!(driver.node().seen.last(), Some(&Seen::Disk(7, reaches_node_ok)));
            assert_eq!(disk.submitted, failures.min(DISK_ATTEMPTS - 1) + 1);
        }
    }

    #[test]
    fn a_completion_nobody_asked_for_is_dropped() {
        let mut driver = Driver::new(1, Echo::default());
        let mut disk = Flaky::default();
        disk.done.push_back(DiskCompletion { id: 99, result: Ok(Vec::new()) });
        driver.poll(10, &mut Wire::default(), &mut disk);
        assert!(driver.node().seen.is_empty());
        assert_eq!(driver.stats.stray_completions, 1);
    }
}
