//! The master's multi-step work on chunks: creating a chunk, a version round before a lease,
//! copy-on-write after a snapshot, re-replication, and a snapshot's lease revocation.
//!
//! A round sends a command to every target replica and waits for all of them. A version round
//! or copy-on-write that not every target confirmed is abandoned and retried with a fresh
//! version or handle, so the replicas holding the version a lease is granted for are exactly
//! those that take part in its mutations: a replica that applied a command late is left with
//! a number no lease uses and is detected as stale.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use super::{ChunkRuntime, Master, MasterLease};
use crate::node::Outputs;
use crate::wire::{
    ChunkCommand, ChunkHandle, GfsError, LeaseInfo, MasterAnswer, Message, NodeId, RequestId,
    Version,
};

/// A client request waiting for a task.
pub(super) type ClientRequest = (NodeId, RequestId);

/// How many version rounds a lease request tries before answering `Busy`.
const MAX_ROUND_ATTEMPTS: u32 = 3;
/// Files have at most this many chunks.
const MAX_CHUNK_INDEX: u64 = 1 << 24;

/// Work to do once the log is durable up to some record.
pub(super) enum Continuation {
    /// The boot record is durable: start serving.
    Ready,
    /// The new version is durable: grant the lease.
    GrantLease {
        handle: ChunkHandle,
        version: Version,
        replicas: Vec<NodeId>,
        client: ClientRequest,
    },
}

/// A task waiting for chunkservers to answer commands.
pub(super) struct Task {
    targets: Vec<NodeId>,
    acked: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
    deadline_ms: u64,
    kind: TaskKind,
}

enum TaskKind {
    CreateChunk {
        path: String,
        index: u64,
        handle: ChunkHandle,
        version: Version,
        client: ClientRequest,
    },
    Round {
        handle: ChunkHandle,
        version: Version,
        client: ClientRequest,
        attempt: u32,
    },
    CopyOnWrite {
        path: String,
        index: u64,
        old: ChunkHandle,
        new: ChunkHandle,
        version: Version,
        client: ClientRequest,
    },
    Clone {
        handle: ChunkHandle,
        version: Version,
        target: NodeId,
    },
    Snapshot {
        source: String,
        target: String,
        handles: Vec<ChunkHandle>,
        client: ClientRequest,
    },
}

impl Task {
    /// When the task gives up waiting.
    pub(super) fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    fn all_answered(&self) -> bool {
        self.acked.len() + self.failed.len() >= self.targets.len()
    }

    fn all_acked(&self) -> bool {
        self.targets.iter().all(|node| self.acked.contains(node))
    }
}

impl Master {
    fn runtime(&mut self, handle: ChunkHandle) -> &mut ChunkRuntime {
        self.chunks.entry(handle).or_default()
    }

    /// Replicas at the current version (or newer, from a round that was not logged).
    pub(super) fn current_replicas(&self, handle: ChunkHandle) -> Vec<(NodeId, Version)> {
        let version = self.state.chunks.get(&handle).map_or(0, |meta| meta.version);
        let skip_check = self.config.knobs.skip_stale_version_check;
        self.chunks
            .get(&handle)
            .map(|chunk| {
                chunk
                    .locations
                    .iter()
                    .filter(|(_, v)| **v >= version || skip_check)
                    .map(|(node, v)| (*node, *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn start_task(
        &mut self,
        now_ms: u64,
        kind: TaskKind,
        commands: Vec<(NodeId, ChunkCommand)>,
        timeout_ms: u64,
        out: &mut Outputs,
    ) -> u64 {
        let task_id = self.next_task_id;
        self.next_task_id += 1;
        let targets = commands.iter().map(|(node, _)| *node).collect();
        for (node, cmd) in commands {
            let req = self.request_id();
            self.command_waits.insert(req, (task_id, node));
            out.send(node, Message::Command { req, cmd });
        }
        let task = Task {
            targets,
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            deadline_ms: now_ms + timeout_ms,
            kind,
        };
        self.tasks.insert(task_id, task);
        task_id
    }

    /// `GetLease`: answers now (`Some`) or starts a task that answers later (`None`).
    pub(super) fn get_lease(
        &mut self,
        now_ms: u64,
        client: ClientRequest,
        path: String,
        index: u64,
        out: &mut Outputs,
    ) -> Option<Result<MasterAnswer, GfsError>> {
        if now_ms < self.leases_allowed_ms {
            return Some(Err(GfsError::Busy));
        }
        if index >= MAX_CHUNK_INDEX {
            return Some(Err(GfsError::TooLarge));
        }
        let Some(file) = self.state.files.get(&path) else {
            return Some(Err(GfsError::NotFound));
        };
        let Some(handle) = file.chunks.get(index as usize).copied().flatten() else {
            return self.create_chunk(now_ms, client, path, index, out);
        };
        let refcount = self.state.chunks.get(&handle).map_or(0, |meta| meta.refcount);
        let chunk = self.runtime(handle);
        if chunk.busy {
            return Some(Err(GfsError::Busy));
        }
        let valid_lease = chunk.lease.clone().filter(|lease| lease.expiry_ms > now_ms);
        if let Some(lease) = valid_lease {
            if refcount > 1 {
                return Some(Err(GfsError::Busy));
            }
            // The grant may have been lost: repeating it is harmless.
            let req = self.request_id();
            let cmd = ChunkCommand::GrantLease {
                handle,
                version: lease.version,
                expiry_ms: lease.expiry_ms,
                secondaries: lease.secondaries.clone(),
            };
            out.send(lease.primary, Message::Command { req, cmd });
            return Some(Ok(MasterAnswer::Lease(LeaseInfo {
                handle,
                version: lease.version,
                primary: lease.primary,
                secondaries: lease.secondaries,
                expiry_ms: lease.expiry_ms,
            })));
        }
        if refcount > 1 {
            return self.copy_on_write(now_ms, client, path, index, handle, out);
        }
        self.start_round(now_ms, handle, client, 0, None, out)
    }

    fn create_chunk(
        &mut self,
        now_ms: u64,
        client: ClientRequest,
        path: String,
        index: u64,
        out: &mut Outputs,
    ) -> Option<Result<MasterAnswer, GfsError>> {
        if self.creating.contains(&(path.clone(), index)) {
            return Some(Err(GfsError::Busy));
        }
        let servers = self.pick_servers(self.config.replication_goal, &[]);
        if servers.is_empty() {
            return Some(Err(GfsError::NoChunkservers));
        }
        let handle = self.allocate_id();
        let version = self.allocate_id();
        self.reserved_handles.insert(handle);
        self.creating.insert((path.clone(), index));
        let commands =
            servers.iter().map(|node| (*node, ChunkCommand::Create { handle, version })).collect();
        let kind = TaskKind::CreateChunk { path, index, handle, version, client };
        self.start_task(now_ms, kind, commands, self.config.rpc_timeout_ms, out);
        None
    }

    /// Starts a version round over `targets` (default: the current replicas).
    fn start_round(
        &mut self,
        now_ms: u64,
        handle: ChunkHandle,
        client: ClientRequest,
        attempt: u32,
        targets: Option<Vec<NodeId>>,
        out: &mut Outputs,
    ) -> Option<Result<MasterAnswer, GfsError>> {
        let targets = targets.unwrap_or_else(|| {
            self.current_replicas(handle).into_iter().map(|(node, _)| node).collect()
        });
        if targets.is_empty() {
            self.runtime(handle).busy = false;
            return Some(Err(GfsError::NoReplica));
        }
        let from = self.state.chunks.get(&handle).map_or(0, |meta| meta.version);
        let version = self.allocate_id();
        self.runtime(handle).busy = true;
        let commands = targets
            .iter()
            .map(|node| {
                let cmd = ChunkCommand::SetVersion { handle, from, to: version };
                (*node, cmd)
            })
            .collect();
        let kind = TaskKind::Round { handle, version, client, attempt };
        self.start_task(now_ms, kind, commands, self.config.rpc_timeout_ms, out);
        None
    }

    fn copy_on_write(
        &mut self,
        now_ms: u64,
        client: ClientRequest,
        path: String,
        index: u64,
        old: ChunkHandle,
        out: &mut Outputs,
    ) -> Option<Result<MasterAnswer, GfsError>> {
        let sources = self.current_replicas(old);
        if sources.is_empty() {
            return Some(Err(GfsError::NoReplica));
        }
        let new = self.allocate_id();
        let version = self.allocate_id();
        self.reserved_handles.insert(new);
        self.runtime(old).busy = true;
        let commands = sources
            .iter()
            .map(|(node, source_version)| {
                let cmd = ChunkCommand::LocalCopy {
                    source: old,
                    source_version: *source_version,
                    target: new,
                    target_version: version,
                };
                (*node, cmd)
            })
            .collect();
        let kind = TaskKind::CopyOnWrite { path, index, old, new, version, client };
        self.start_task(now_ms, kind, commands, self.config.rpc_timeout_ms, out);
        None
    }

    /// Starts copying `handle` from `source` to `target` (re-replication).
    pub(super) fn start_clone(
        &mut self,
        now_ms: u64,
        handle: ChunkHandle,
        source: (NodeId, Version),
        target: NodeId,
        out: &mut Outputs,
    ) {
        self.runtime(handle).busy = true;
        let cmd = ChunkCommand::CloneFrom { handle, version: source.1, source: source.0 };
        let kind = TaskKind::Clone { handle, version: source.1, target };
        let timeout_ms = self.config.rpc_timeout_ms * 4;
        self.start_task(now_ms, kind, alloc::vec![(target, cmd)], timeout_ms, out);
    }

    /// `Snapshot`: revokes the source's leases, then logs the copy.
    pub(super) fn snapshot(
        &mut self,
        now_ms: u64,
        client: ClientRequest,
        source: String,
        target: String,
        out: &mut Outputs,
    ) -> Option<Result<MasterAnswer, GfsError>> {
        if !super::valid_user_path(&source) || !super::valid_user_path(&target) {
            return Some(Err(GfsError::InvalidPath));
        }
        let Some(file) = self.state.files.get(&source) else {
            return Some(Err(GfsError::NotFound));
        };
        if self.state.files.contains_key(&target) {
            return Some(Err(GfsError::AlreadyExists));
        }
        if now_ms < self.leases_allowed_ms {
            return Some(Err(GfsError::Busy));
        }
        let handles: Vec<ChunkHandle> = file.chunks.iter().flatten().copied().collect();
        if handles.iter().any(|handle| self.chunks.get(handle).is_some_and(|chunk| chunk.busy)) {
            return Some(Err(GfsError::Busy));
        }
        let mut commands = Vec::new();
        let mut latest_expiry_ms = now_ms;
        for handle in &handles {
            let chunk = self.runtime(*handle);
            chunk.busy = true;
            if let Some(lease) = chunk.lease.as_ref().filter(|l| l.expiry_ms > now_ms) {
                latest_expiry_ms = latest_expiry_ms.max(lease.expiry_ms);
                let cmd = ChunkCommand::RevokeLease { handle: *handle };
                commands.push((lease.primary, cmd));
            }
        }
        let kind = TaskKind::Snapshot { source, target, handles, client };
        let timeout_ms = latest_expiry_ms - now_ms;
        let task_id = self.start_task(now_ms, kind, commands, timeout_ms, out);
        self.finish_if_done(now_ms, task_id, out);
        None
    }

    pub(super) fn on_command_reply(
        &mut self,
        now_ms: u64,
        from: NodeId,
        req: RequestId,
        result: Result<(), GfsError>,
        out: &mut Outputs,
    ) {
        let Some((task_id, node)) = self.command_waits.remove(&req) else {
            return;
        };
        if node != from {
            return;
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if result.is_ok() {
            task.acked.insert(node);
        } else {
            task.failed.insert(node);
        }
        if let (TaskKind::Snapshot { handles, .. }, Ok(())) = (&task.kind, result) {
            for handle in handles.clone() {
                let chunk = self.runtime(handle);
                if chunk.lease.as_ref().is_some_and(|lease| lease.primary == from) {
                    chunk.lease = None;
                }
            }
        }
        self.finish_if_done(now_ms, task_id, out);
    }

    /// Finishes tasks whose deadline passed.
    pub(super) fn expire_tasks(&mut self, now_ms: u64, out: &mut Outputs) {
        let due: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for task_id in due {
            self.finish_task(now_ms, task_id, out);
        }
    }

    fn finish_if_done(&mut self, now_ms: u64, task_id: u64, out: &mut Outputs) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let done = match &task.kind {
            TaskKind::Snapshot { handles, .. } => handles.iter().all(|handle| {
                self.chunks
                    .get(handle)
                    .and_then(|chunk| chunk.lease.as_ref())
                    .is_none_or(|lease| lease.expiry_ms <= now_ms)
            }),
            _ => task.all_answered(),
        };
        if done {
            self.finish_task(now_ms, task_id, out);
        }
    }

    fn finish_task(&mut self, now_ms: u64, task_id: u64, out: &mut Outputs) {
        let Some(task) = self.tasks.remove(&task_id) else {
            return;
        };
        self.command_waits.retain(|_, (id, _)| *id != task_id);
        let all_acked = task.all_acked();
        let acked: Vec<NodeId> = task.acked.iter().copied().collect();
        match task.kind {
            TaskKind::CreateChunk { path, index, handle, version, client } => {
                self.reserved_handles.remove(&handle);
                self.creating.remove(&(path.clone(), index));
                let slot_free = self
                    .state
                    .files
                    .get(&path)
                    .map(|file| file.chunks.get(index as usize).copied().flatten().is_none());
                let result = match slot_free {
                    None => Some(Err(GfsError::NotFound)),
                    Some(false) => Some(Err(GfsError::Busy)),
                    Some(true) if acked.is_empty() => Some(Err(GfsError::NoChunkservers)),
                    Some(true) => {
                        let record = super::LogRecord::AddChunk { path, index, handle, version };
                        self.log_record(record, out);
                        self.set_locations(handle, &acked, version);
                        self.start_round(now_ms, handle, client, 0, Some(acked), out)
                    }
                };
                if let Some(result) = result {
                    self.reply(client.0, client.1, result, out);
                }
            }
            TaskKind::Round { handle, version, client, attempt } => {
                let result = if all_acked && self.state.chunks.contains_key(&handle) {
                    let record = super::LogRecord::SetVersion { handle, version };
                    let lsn = self.log_record(record, out);
                    self.set_locations(handle, &acked, version);
                    let continuation =
                        Continuation::GrantLease { handle, version, replicas: acked, client };
                    self.after_durable.push((lsn, continuation));
                    None
                } else {
                    let failed: Vec<NodeId> = self
                        .locations(handle)
                        .into_iter()
                        .filter(|node| !acked.contains(node))
                        .collect();
                    for node in failed {
                        self.remove_location(handle, node);
                    }
                    self.runtime(handle).busy = false;
                    if !acked.is_empty() && attempt + 1 < MAX_ROUND_ATTEMPTS {
                        self.start_round(now_ms, handle, client, attempt + 1, Some(acked), out)
                    } else {
                        Some(Err(GfsError::Busy))
                    }
                };
                if let Some(result) = result {
                    self.reply(client.0, client.1, result, out);
                }
            }
            TaskKind::CopyOnWrite { path, index, old, new, version, client } => {
                self.reserved_handles.remove(&new);
                self.runtime(old).busy = false;
                let still_shared = self.state.chunks.get(&old).is_some_and(|m| m.refcount > 1);
                let still_there = self
                    .state
                    .files
                    .get(&path)
                    .and_then(|file| file.chunks.get(index as usize).copied().flatten())
                    == Some(old);
                let result = if all_acked && still_shared && still_there {
                    let record =
                        super::LogRecord::ReplaceChunk { path, index, new_handle: new, version };
                    self.log_record(record, out);
                    self.set_locations(new, &acked, version);
                    self.start_round(now_ms, new, client, 0, Some(acked), out)
                } else {
                    Some(Err(GfsError::Busy))
                };
                if let Some(result) = result {
                    self.reply(client.0, client.1, result, out);
                }
            }
            TaskKind::Clone { handle, version, target } => {
                let current = self.state.chunks.get(&handle).map(|meta| meta.version);
                self.runtime(handle).busy = false;
                if all_acked && current.is_some_and(|current| version >= current) {
                    self.add_location(handle, target, version);
                }
            }
            TaskKind::Snapshot { source, target, handles, client } => {
                for handle in &handles {
                    self.runtime(*handle).busy = false;
                }
                let result = if !self.state.files.contains_key(&source) {
                    Err(GfsError::NotFound)
                } else if self.state.files.contains_key(&target) {
                    Err(GfsError::AlreadyExists)
                } else {
                    self.log_record(super::LogRecord::Snapshot { source, target }, out);
                    Ok(MasterAnswer::Done)
                };
                self.reply(client.0, client.1, result, out);
            }
        }
    }

    pub(super) fn run_continuation(
        &mut self,
        now_ms: u64,
        continuation: Continuation,
        out: &mut Outputs,
    ) {
        match continuation {
            Continuation::Ready => {
                self.phase = super::Phase::Running { ready: true };
                self.leases_allowed_ms = now_ms + self.config.lease_ms;
            }
            Continuation::GrantLease { handle, version, replicas, client } => {
                let pick = self.rng.below(replicas.len() as u64) as usize;
                let primary = replicas[pick];
                let secondaries: Vec<NodeId> =
                    replicas.iter().copied().filter(|node| *node != primary).collect();
                let expiry_ms = now_ms + self.config.lease_ms;
                let chunk = self.runtime(handle);
                chunk.busy = false;
                chunk.lease = Some(MasterLease {
                    primary,
                    secondaries: secondaries.clone(),
                    version,
                    expiry_ms,
                });
                let req = self.request_id();
                let cmd = ChunkCommand::GrantLease {
                    handle,
                    version,
                    expiry_ms,
                    secondaries: secondaries.clone(),
                };
                out.send(primary, Message::Command { req, cmd });
                let info = LeaseInfo { handle, version, primary, secondaries, expiry_ms };
                self.reply(client.0, client.1, Ok(MasterAnswer::Lease(info)), out);
            }
        }
    }
}

impl Master {
    /// Records that `node` holds `handle` at `version` (both in the chunk's locations and the
    /// server's list, which the next heartbeat reconciles).
    pub(super) fn add_location(&mut self, handle: ChunkHandle, node: NodeId, version: Version) {
        if let Some(server) = self.servers.get_mut(&node) {
            server.chunks.insert(handle);
            self.runtime(handle).locations.insert(node, version);
        }
    }

    /// Forgets that `node` holds `handle`.
    pub(super) fn remove_location(&mut self, handle: ChunkHandle, node: NodeId) {
        if let Some(chunk) = self.chunks.get_mut(&handle) {
            chunk.locations.remove(&node);
        }
        if let Some(server) = self.servers.get_mut(&node) {
            server.chunks.remove(&handle);
        }
    }

    /// Makes `nodes` the chunk's only locations, all at `version`.
    fn set_locations(&mut self, handle: ChunkHandle, nodes: &[NodeId], version: Version) {
        for node in self.locations(handle) {
            self.remove_location(handle, node);
        }
        for node in nodes {
            self.add_location(handle, *node, version);
        }
    }

    /// Re-replications under way.
    pub(super) fn clone_tasks_running(&self) -> usize {
        self.tasks.values().filter(|task| matches!(task.kind, TaskKind::Clone { .. })).count()
    }
}
