//! The client library: file operations as asynchronous state machines over the master and the
//! chunkservers, with a metadata cache.
//!
//! Operations are submitted with [`Client::submit`] and complete as [`ClientEvent`]s kept in the
//! client until taken with [`Client::take_event`] (as a smoltcp socket keeps what it received).
//! Reads go to the nearest replica (smallest node-id distance, the
//! simulator's topology) and move on to the next on a checksum error, a stale replica or a
//! timeout. Writes and appends push their data along a chain of replicas, then ask the primary
//! to apply it. Record append is at-least-once: a failed attempt is retried and may leave a
//! duplicate or a partial record behind, as in the paper.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::Config;
use crate::node::{Input, Outputs, StateMachine};
use crate::pcg::Pcg32;
use crate::wire::{
    ChunkLocation, DataId, GfsError, LeaseInfo, MasterAnswer, MasterOp, Message, MutationKind,
    NodeId, RequestId,
};

/// Names a submitted operation.
pub type OpId = u64;

/// What a client can ask for. `ChunkCount` answers how many chunks a file has (the last may
/// be partly written); `Locate` where chunk `index` of a file lives (`None`: never written),
/// e.g. to schedule work near a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Create { path: String },
    Delete { path: String },
    List { prefix: String },
    Snapshot { source: String, target: String },
    ChunkCount { path: String },
    Locate { path: String, index: u64 },
    Read { path: String, offset: u64, len: u64 },
    Write { path: String, offset: u64, data: Vec<u8> },
    Append { path: String, data: Vec<u8> },
}

/// What a successful operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Done,
    Listing(Vec<String>),
    Data(Vec<u8>),
    /// Answer to [`ClientOp::ChunkCount`].
    ChunkCount(u64),
    /// Answer to [`ClientOp::Locate`].
    Location(Option<ChunkLocation>),
    /// File offset at which the record was appended.
    Appended {
        offset: u64,
    },
}

/// A finished operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    pub op: OpId,
    pub result: Result<OpOutput, GfsError>,
}

/// A client role.
pub struct Client {
    id: NodeId,
    config: Config,
    rng: Pcg32,
    next_request_id: RequestId,
    next_op_id: OpId,
    next_data_id: u64,
    ops: BTreeMap<OpId, Op>,
    replies: BTreeMap<RequestId, OpId>,
    pushes: BTreeMap<DataId, OpId>,
    locations: BTreeMap<(String, u64), CachedLocation>,
    /// Finished operations not yet taken, oldest first.
    events: VecDeque<ClientEvent>,
}

struct CachedLocation {
    location: Option<ChunkLocation>,
    fetched_ms: u64,
}

struct Op {
    kind: OpKind,
    attempts: u32,
    wait: Wait,
    deadline_ms: u64,
    retry_at_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Nothing,
    Master(RequestId),
    Push(DataId),
    Read(RequestId, NodeId),
    Mutate(RequestId),
}

enum OpKind {
    Meta { request: MasterOp },
    Read(ReadState),
    Mutation(MutationState),
}

struct ReadState {
    path: String,
    offset: u64,
    len: u64,
    buf: Vec<u8>,
    location: Option<ChunkLocation>,
    tried: Vec<NodeId>,
}

struct MutationState {
    path: String,
    append: bool,
    offset: u64,
    data: Vec<u8>,
    written: usize,
    index: Option<u64>,
    lease: Option<LeaseInfo>,
    pushed: bool,
    data_id: DataId,
    push_pending: BTreeSet<NodeId>,
}

impl Client {
    /// A client with node id `id`; `seed` drives its retry jitter.
    pub fn new(id: NodeId, config: Config, seed: u64) -> Self {
        let mut rng = Pcg32::new(seed, u64::from(id));
        // Request and data ids start at random, so a restarted client (a new seed) never takes
        // a late reply or buffered data meant for its previous life.
        let next_request_id = rng.next_u64() >> 1;
        let next_data_id = rng.next_u64() >> 25;
        Client {
            id,
            config,
            rng,
            next_request_id,
            next_op_id: 1,
            next_data_id,
            ops: BTreeMap::new(),
            replies: BTreeMap::new(),
            pushes: BTreeMap::new(),
            locations: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The oldest finished operation not yet taken.
    pub fn take_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Operations not yet finished.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }

    /// Starts `op`; its result arrives later as a [`ClientEvent`] with the returned id.
    pub fn submit(&mut self, now_ms: u64, op: ClientOp, out: &mut Outputs) -> OpId {
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let kind = match op {
            ClientOp::Create { path } => OpKind::Meta { request: MasterOp::Create { path } },
            ClientOp::Delete { path } => OpKind::Meta { request: MasterOp::Delete { path } },
            ClientOp::List { prefix } => OpKind::Meta { request: MasterOp::List { prefix } },
            ClientOp::Snapshot { source, target } => {
                OpKind::Meta { request: MasterOp::Snapshot { source, target } }
            }
            ClientOp::ChunkCount { path } => OpKind::Meta { request: MasterOp::FileInfo { path } },
            ClientOp::Locate { path, index } => {
                OpKind::Meta { request: MasterOp::Lookup { path, index } }
            }
            ClientOp::Read { path, offset, len } => OpKind::Read(ReadState {
                path,
                offset,
                len,
                buf: Vec::new(),
                location: None,
                tried: Vec::new(),
            }),
            ClientOp::Write { path, offset, data } => {
                OpKind::Mutation(MutationState::new(path, false, offset, data))
            }
            ClientOp::Append { path, data } => {
                if data.len() > self.config.max_record_bytes() as usize || data.is_empty() {
                    self.events
                        .push_back(ClientEvent { op: op_id, result: Err(GfsError::TooLarge) });
                    return op_id;
                }
                OpKind::Mutation(MutationState::new(path, true, 0, data))
            }
        };
        let op = Op { kind, attempts: 0, wait: Wait::Nothing, deadline_ms: 0, retry_at_ms: 0 };
        self.ops.insert(op_id, op);
        self.drive(now_ms, op_id, out);
        op_id
    }

    fn request_id(&mut self) -> RequestId {
        next_id(&mut self.next_request_id)
    }

    fn chunk_size(&self) -> u64 {
        u64::from(self.config.chunk_size_bytes)
    }

    fn complete(&mut self, op_id: OpId, result: Result<OpOutput, GfsError>) {
        if let Some(op) = self.ops.remove(&op_id) {
            self.forget_wait(op.wait);
            self.events.push_back(ClientEvent { op: op_id, result });
        }
    }

    fn forget_wait(&mut self, wait: Wait) {
        match wait {
            Wait::Master(req) | Wait::Read(req, _) | Wait::Mutate(req) => {
                self.replies.remove(&req);
            }
            Wait::Push(data_id) => {
                self.pushes.remove(&data_id);
            }
            Wait::Nothing => {}
        }
    }

    /// Counts a failed attempt and schedules a retry after a jittered backoff, or fails the op.
    fn retry_later(&mut self, now_ms: u64, op_id: OpId, error: GfsError) {
        let max_attempts = self.config.client_max_attempts;
        let backoff_base_ms = self.config.rpc_timeout_ms / 8 + 1;
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.attempts += 1;
        if op.attempts >= max_attempts {
            self.complete(op_id, Err(error));
            return;
        }
        let wait = core::mem::replace(&mut op.wait, Wait::Nothing);
        let backoff_ms = backoff_base_ms * u64::from(op.attempts.min(8));
        op.retry_at_ms = now_ms + backoff_ms + self.rng.below(backoff_base_ms);
        self.forget_wait(wait);
    }

    fn wait_for(&mut self, now_ms: u64, op_id: OpId, wait: Wait) {
        match wait {
            Wait::Master(req) | Wait::Read(req, _) | Wait::Mutate(req) => {
                self.replies.insert(req, op_id);
            }
            Wait::Push(data_id) => {
                self.pushes.insert(data_id, op_id);
            }
            Wait::Nothing => {}
        }
        let op = self.ops.get_mut(&op_id).expect("op exists");
        op.wait = wait;
        op.deadline_ms = now_ms + self.config.rpc_timeout_ms;
    }

    fn ask_master(&mut self, now_ms: u64, op_id: OpId, request: MasterOp, out: &mut Outputs) {
        let req = self.request_id();
        out.send(self.config.master_id, Message::MasterRequest { req, op: request });
        self.wait_for(now_ms, op_id, Wait::Master(req));
    }

    /// Issues the next request of an operation that waits for nothing.
    fn drive(&mut self, now_ms: u64, op_id: OpId, out: &mut Outputs) {
        let chunk_size = self.chunk_size();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        if op.wait != Wait::Nothing || op.retry_at_ms > now_ms {
            return;
        }
        match &mut op.kind {
            OpKind::Meta { request } => {
                let request = request.clone();
                self.ask_master(now_ms, op_id, request, out);
            }
            OpKind::Read(read) => {
                if read.buf.len() as u64 >= read.len {
                    let data = core::mem::take(&mut read.buf);
                    self.complete(op_id, Ok(OpOutput::Data(data)));
                    return;
                }
                let position = read.offset + read.buf.len() as u64;
                let index = position / chunk_size;
                let key = (read.path.clone(), index);
                if read.location.is_none() {
                    let cached = self.locations.get(&key).filter(|cached| {
                        cached.fetched_ms + self.config.client_cache_ttl_ms > now_ms
                    });
                    match cached {
                        Some(CachedLocation { location: None, .. }) => {
                            self.fill_hole(now_ms, op_id, out);
                            return;
                        }
                        Some(CachedLocation { location: Some(location), .. }) => {
                            read.location = Some(location.clone())
                        }
                        None => {
                            let request = MasterOp::Lookup { path: key.0, index };
                            self.ask_master(now_ms, op_id, request, out);
                            return;
                        }
                    }
                }
                let location = read.location.as_ref().expect("set above");
                let client = self.id;
                let replica = location
                    .replicas
                    .iter()
                    .copied()
                    .filter(|node| !read.tried.contains(node))
                    .min_by_key(|node| node.abs_diff(client));
                let Some(replica) = replica else {
                    // Every replica failed: ask the master again.
                    read.location = None;
                    read.tried.clear();
                    self.locations.remove(&key);
                    self.retry_later(now_ms, op_id, GfsError::NoReplica);
                    return;
                };
                let chunk_offset = position % chunk_size;
                let len = (read.len - read.buf.len() as u64).min(chunk_size - chunk_offset);
                let req = next_id(&mut self.next_request_id);
                let msg = Message::ReadChunk {
                    req,
                    handle: location.handle,
                    version: location.version,
                    offset: chunk_offset as u32,
                    len: len as u32,
                };
                out.send(replica, msg);
                self.wait_for(now_ms, op_id, Wait::Read(req, replica));
            }
            OpKind::Mutation(state) => {
                if !state.append && state.written >= state.data.len() {
                    self.complete(op_id, Ok(OpOutput::Done));
                    return;
                }
                let Some(index) = state.current_index(chunk_size) else {
                    let request = MasterOp::FileInfo { path: state.path.clone() };
                    self.ask_master(now_ms, op_id, request, out);
                    return;
                };
                let lease = state.lease.as_ref().filter(|lease| lease.expiry_ms > now_ms);
                let Some(lease) = lease.cloned() else {
                    state.lease = None;
                    let request = MasterOp::GetLease { path: state.path.clone(), index };
                    self.ask_master(now_ms, op_id, request, out);
                    return;
                };
                if !state.pushed {
                    let data_id = (u64::from(self.id) << 40) | self.next_data_id;
                    self.next_data_id += 1;
                    state.data_id = data_id;
                    let piece = state.piece(chunk_size).to_vec();
                    let mut chain: Vec<NodeId> = core::iter::once(lease.primary)
                        .chain(lease.secondaries.iter().copied())
                        .collect();
                    let client = self.id;
                    chain.sort_by_key(|node| node.abs_diff(client));
                    state.push_pending = chain.iter().copied().collect();
                    let first = chain.remove(0);
                    let msg = Message::PushData { data_id, client, bytes: piece, chain };
                    out.send(first, msg);
                    self.wait_for(now_ms, op_id, Wait::Push(data_id));
                    return;
                }
                let kind = if state.append {
                    MutationKind::Append
                } else {
                    let position = state.offset + state.written as u64;
                    MutationKind::Write { offset: (position % chunk_size) as u32 }
                };
                let req = next_id(&mut self.next_request_id);
                let msg = Message::Mutate {
                    req,
                    handle: lease.handle,
                    version: lease.version,
                    data_id: state.data_id,
                    kind,
                };
                out.send(lease.primary, msg);
                self.wait_for(now_ms, op_id, Wait::Mutate(req));
            }
        }
    }

    /// The piece being read lies in a chunk never written: it reads as zeros.
    fn fill_hole(&mut self, now_ms: u64, op_id: OpId, out: &mut Outputs) {
        let chunk_size = self.chunk_size();
        if let Some(Op { kind: OpKind::Read(read), .. }) = self.ops.get_mut(&op_id) {
            let position = read.offset + read.buf.len() as u64;
            let len = (read.len - read.buf.len() as u64).min(chunk_size - position % chunk_size);
            read.buf.extend(core::iter::repeat_n(0, len as usize));
        }
        self.drive(now_ms, op_id, out);
    }

    fn on_master_reply(
        &mut self,
        now_ms: u64,
        op_id: OpId,
        result: Result<MasterAnswer, GfsError>,
        out: &mut Outputs,
    ) {
        let chunk_size = self.chunk_size();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.wait = Wait::Nothing;
        let attempts = op.attempts;
        match (&mut op.kind, result) {
            (_, Err(GfsError::Busy | GfsError::NoReplica | GfsError::Timeout)) => {
                let error = GfsError::Busy;
                self.retry_later(now_ms, op_id, error);
                return;
            }
            (OpKind::Meta { request }, result) => {
                // A retried create or delete may find its own earlier attempt done.
                let result = match (request, result) {
                    (MasterOp::Create { .. }, Err(GfsError::AlreadyExists)) if attempts > 0 => {
                        Ok(OpOutput::Done)
                    }
                    (MasterOp::Delete { .. }, Err(GfsError::NotFound)) if attempts > 0 => {
                        Ok(OpOutput::Done)
                    }
                    (_, Ok(MasterAnswer::Listing(names))) => Ok(OpOutput::Listing(names)),
                    (_, Ok(MasterAnswer::FileInfo { chunk_count })) => {
                        Ok(OpOutput::ChunkCount(chunk_count))
                    }
                    (_, Ok(MasterAnswer::Chunk(location))) => Ok(OpOutput::Location(location)),
                    (_, Ok(_)) => Ok(OpOutput::Done),
                    (_, Err(error)) => Err(error),
                };
                self.complete(op_id, result);
                return;
            }
            (OpKind::Read(read), Ok(MasterAnswer::Chunk(location))) => {
                let index = (read.offset + read.buf.len() as u64) / chunk_size;
                let cached = CachedLocation { location: location.clone(), fetched_ms: now_ms };
                self.locations.insert((read.path.clone(), index), cached);
                match location {
                    None => {
                        self.fill_hole(now_ms, op_id, out);
                        return;
                    }
                    Some(location) => {
                        read.location = Some(location);
                        read.tried.clear();
                    }
                }
            }
            (OpKind::Mutation(state), Ok(MasterAnswer::FileInfo { chunk_count })) => {
                state.index = Some(chunk_count.saturating_sub(1));
            }
            (OpKind::Mutation(state), Ok(MasterAnswer::Lease(lease))) => {
                state.lease = Some(lease);
                state.pushed = false;
            }
            (_, Ok(_)) => {
                self.retry_later(now_ms, op_id, GfsError::Busy);
                return;
            }
            (_, Err(error)) => {
                self.complete(op_id, Err(error));
                return;
            }
        }
        self.drive(now_ms, op_id, out);
    }

    fn on_read_reply(
        &mut self,
        now_ms: u64,
        op_id: OpId,
        replica: NodeId,
        result: Result<Vec<u8>, GfsError>,
        out: &mut Outputs,
    ) {
        let chunk_size = self.chunk_size();
        let Some(Op { kind: OpKind::Read(read), wait, attempts, .. }) = self.ops.get_mut(&op_id)
        else {
            return;
        };
        *wait = Wait::Nothing;
        match result {
            Ok(bytes) => {
                // Per step, as for writes: a chunk read is progress.
                *attempts = 0;
                let position = read.offset + read.buf.len() as u64;
                let len =
                    (read.len - read.buf.len() as u64).min(chunk_size - position % chunk_size);
                let mut piece = bytes;
                piece.resize(len as usize, 0);
                read.buf.extend_from_slice(&piece);
                read.tried.clear();
                read.location = None;
            }
            Err(_) => read.tried.push(replica),
        }
        self.drive(now_ms, op_id, out);
    }

    fn on_push_ack(&mut self, now_ms: u64, from: NodeId, data_id: DataId, out: &mut Outputs) {
        let Some(op_id) = self.pushes.get(&data_id).copied() else {
            return;
        };
        let Some(Op { kind: OpKind::Mutation(state), wait, .. }) = self.ops.get_mut(&op_id) else {
            return;
        };
        state.push_pending.remove(&from);
        if state.push_pending.is_empty() {
            state.pushed = true;
            *wait = Wait::Nothing;
            self.pushes.remove(&data_id);
            self.drive(now_ms, op_id, out);
        }
    }

    fn on_mutate_reply(
        &mut self,
        now_ms: u64,
        op_id: OpId,
        result: Result<u32, GfsError>,
        out: &mut Outputs,
    ) {
        let chunk_size = self.chunk_size();
        let Some(Op { kind: OpKind::Mutation(state), wait, attempts, .. }) =
            self.ops.get_mut(&op_id)
        else {
            return;
        };
        *wait = Wait::Nothing;
        state.pushed = false;
        match result {
            Ok(chunk_offset) => {
                // The attempt limit is per step: a long write that keeps making progress
                // must not run out of attempts on the failures of earlier chunks.
                *attempts = 0;
                if state.append {
                    let index = state.index.expect("known before mutating");
                    let offset = index * chunk_size + u64::from(chunk_offset);
                    self.complete(op_id, Ok(OpOutput::Appended { offset }));
                    return;
                }
                state.written += state.piece(chunk_size).len();
            }
            Err(GfsError::ChunkFull) if state.append => {
                state.index = state.index.map(|index| index + 1);
                state.lease = None;
            }
            Err(error) => {
                if matches!(
                    error,
                    GfsError::NotPrimary | GfsError::StaleVersion | GfsError::NoSuchChunk
                ) {
                    state.lease = None;
                }
                self.retry_later(now_ms, op_id, error);
                return;
            }
        }
        self.drive(now_ms, op_id, out);
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Outputs) {
        let due: Vec<(OpId, Wait)> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                (op.wait != Wait::Nothing && op.deadline_ms <= now_ms)
                    || (op.wait == Wait::Nothing && op.retry_at_ms <= now_ms)
            })
            .map(|(id, op)| (*id, op.wait))
            .collect();
        for (op_id, wait) in due {
            match wait {
                Wait::Nothing => self.drive(now_ms, op_id, out),
                Wait::Read(req, replica) => {
                    self.replies.remove(&req);
                    self.on_read_reply(now_ms, op_id, replica, Err(GfsError::Timeout), out);
                }
                _ => self.retry_later(now_ms, op_id, GfsError::Timeout),
            }
        }
    }
}

impl MutationState {
    fn new(path: String, append: bool, offset: u64, data: Vec<u8>) -> Self {
        MutationState {
            path,
            append,
            offset,
            data,
            written: 0,
            index: None,
            lease: None,
            pushed: false,
            data_id: 0,
            push_pending: BTreeSet::new(),
        }
    }

    /// The chunk index the next piece goes to (`None`: an append that must ask for the
    /// file's last chunk first).
    fn current_index(&mut self, chunk_size: u64) -> Option<u64> {
        if self.append {
            return self.index;
        }
        let index = (self.offset + self.written as u64) / chunk_size;
        if self.index != Some(index) {
            self.index = Some(index);
            self.lease = None;
        }
        Some(index)
    }

    /// The bytes of the next piece (a whole record, or the part of a write in this chunk).
    fn piece(&self, chunk_size: u64) -> &[u8] {
        if self.append {
            return &self.data;
        }
        let position = self.offset + self.written as u64;
        let room = (chunk_size - position % chunk_size) as usize;
        let end = (self.written + room).min(self.data.len());
        &self.data[self.written..end]
    }
}

impl StateMachine for Client {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        match input {
            Input::Message { from, msg } => match msg {
                Message::MasterReply { req, result } => {
                    if let Some(op_id) = self.replies.remove(&req) {
                        self.on_master_reply(now_ms, op_id, result, out);
                    }
                }
                Message::ReadReply { req, result, bytes } => {
                    if let Some(op_id) = self.replies.remove(&req) {
                        let result = result.map(|()| bytes);
                        self.on_read_reply(now_ms, op_id, from, result, out);
                    }
                }
                Message::MutateReply { req, result } => {
                    if let Some(op_id) = self.replies.remove(&req) {
                        self.on_mutate_reply(now_ms, op_id, result, out);
                    }
                }
                Message::PushAck { data_id } => self.on_push_ack(now_ms, from, data_id, out),
                _ => {}
            },
            Input::Disk(_) => {}
            Input::Tick => self.on_tick(now_ms, out),
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        self.ops
            .values()
            .map(|op| match op.wait {
                Wait::Nothing => op.retry_at_ms,
                _ => op.deadline_ms,
            })
            .min()
    }
}

/// Returns `*counter` and advances it.
fn next_id(counter: &mut u64) -> u64 {
    let id = *counter;
    *counter += 1;
    id
}
