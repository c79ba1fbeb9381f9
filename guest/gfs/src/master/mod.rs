//! The master: namespace, file -> chunk map, chunk versions, leases, replica placement, the
//! operation log with checkpoints, re-replication, stale-replica detection, lazy garbage
//! collection and snapshots.
//!
//! Concurrency control: the master is one single-threaded state machine, so each request is
//! validated and applied to the in-memory state atomically. Instead of the paper's per-path
//! read/write locks it uses an output-commit rule: a mutation's log record is appended (and
//! applied in memory) at once, and *every* reply — also to reads that saw the change — is held
//! until the log is durable up to the last record appended before the reply was made. No
//! client can observe a change a crash could undo. Multi-step work on one chunk (a version
//! round, a copy-on-write, a re-replication, a snapshot's lease revocation) marks the chunk
//! busy, which plays the role of the paper's chunk-level write lock; other requests for it get
//! `Busy` and retry.

mod maintenance;
mod oplog;
pub mod state;
mod tasks;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::Config;
use crate::disk::{sectors_for, DiskCompletion, DiskOp};
use crate::node::{Input, Outputs, StateMachine};
use crate::pcg::Pcg32;
use crate::wire::{
    ChunkHandle, ChunkLocation, Envelope, GfsError, MasterAnswer, MasterOp, Message, NodeId,
    RequestId, Version,
};
use oplog::{LogLayout, Lsn, OpLog, Superblock};
use state::{valid_user_path, LogRecord, PersistentState, TRASH_PREFIX};
use tasks::{Continuation, Task};

/// How many answered client requests the master remembers to answer retries the same way.
const RECENT_REPLIES: usize = 512;

/// The master role.
pub struct Master {
    id: NodeId,
    config: Config,
    rng: Pcg32,
    layout: LogLayout,
    phase: Phase,
    state: PersistentState,
    log: Option<OpLog>,
    /// The state as of the durable log (kept only with `check_recovery`).
    shadow: Option<PersistentState>,
    shadow_pending: VecDeque<(Lsn, LogRecord)>,
    /// What recovery rebuilt (kept only with `check_recovery`).
    recovered: Option<PersistentState>,
    recovery_errors: u32,
    leases_allowed_ms: u64,
    chunks: BTreeMap<ChunkHandle, ChunkRuntime>,
    servers: BTreeMap<NodeId, ServerRuntime>,
    held_replies: VecDeque<(Lsn, Envelope)>,
    after_durable: Vec<(Lsn, Continuation)>,
    tasks: BTreeMap<u64, Task>,
    command_waits: BTreeMap<RequestId, (u64, NodeId)>,
    recent_replies: VecDeque<((NodeId, RequestId), Result<MasterAnswer, GfsError>)>,
    in_progress: BTreeSet<(NodeId, RequestId)>,
    creating: BTreeSet<(String, u64)>,
    reserved_handles: BTreeSet<ChunkHandle>,
    disk_waits: BTreeMap<u64, DiskWait>,
    next_disk_id: u64,
    next_request_id: RequestId,
    next_task_id: u64,
    allocation_counter: u32,
    next_scan_ms: u64,
}

/// Volatile facts about a chunk: learned from chunkservers, never logged.
#[derive(Default)]
struct ChunkRuntime {
    locations: BTreeMap<NodeId, Version>,
    lease: Option<MasterLease>,
    busy: bool,
}

#[derive(Clone)]
struct MasterLease {
    primary: NodeId,
    secondaries: Vec<NodeId>,
    version: Version,
    expiry_ms: u64,
}

struct ServerRuntime {
    last_heartbeat_ms: u64,
    chunks: BTreeSet<ChunkHandle>,
}

enum Phase {
    Booting,
    ReadingSuperblock,
    ReadingCheckpoint(Superblock),
    ReadingLog(Superblock),
    /// Recovered; serving once the boot record is durable.
    Running {
        ready: bool,
    },
}

enum DiskWait {
    /// A recovery read of `count` sectors at `sector` (read again after an I/O error).
    Recovery {
        sector: u64,
        count: u64,
    },
    Log,
}

impl Master {
    /// A master with node id `id` over a disk of `disk_sectors` sectors. Its first step reads
    /// the checkpoint and log; it serves once its boot record is durable, and grants leases
    /// only a lease period after that (leases of a previous incarnation may still run).
    pub fn new(id: NodeId, config: Config, disk_sectors: u64, seed: u64) -> Self {
        let layout = LogLayout::new(disk_sectors, config.master_checkpoint_sectors);
        Master {
            id,
            rng: Pcg32::new(seed, u64::from(id)),
            layout,
            phase: Phase::Booting,
            state: PersistentState::default(),
            log: None,
            shadow: None,
            shadow_pending: VecDeque::new(),
            recovered: None,
            recovery_errors: 0,
            leases_allowed_ms: u64::MAX,
            chunks: BTreeMap::new(),
            servers: BTreeMap::new(),
            held_replies: VecDeque::new(),
            after_durable: Vec::new(),
            tasks: BTreeMap::new(),
            command_waits: BTreeMap::new(),
            recent_replies: VecDeque::new(),
            in_progress: BTreeSet::new(),
            creating: BTreeSet::new(),
            reserved_handles: BTreeSet::new(),
            disk_waits: BTreeMap::new(),
            next_disk_id: 1,
            next_request_id: 1,
            next_task_id: 1,
            allocation_counter: 0,
            next_scan_ms: 0,
            config,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Sectors of the log area in use since the last checkpoint.
    pub fn log_sectors_used(&self) -> u64 {
        self.log.as_ref().map_or(0, OpLog::log_sectors_used)
    }

    /// True once recovered and the boot record is durable.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { ready: true })
    }

    /// The persistent state including records not yet durable.
    pub fn state(&self) -> &PersistentState {
        &self.state
    }

    /// Records appended but not yet known durable (with `Config::check_recovery`): a crash
    /// may keep any prefix of them.
    pub fn undurable_records(&self) -> Vec<LogRecord> {
        self.shadow_pending.iter().map(|(_, record)| record.clone()).collect()
    }

    /// The state as of the durable log (with `Config::check_recovery`).
    pub fn durable_state(&self) -> Option<&PersistentState> {
        self.shadow.as_ref()
    }

    /// What recovery rebuilt from checkpoint and log (with `Config::check_recovery`).
    pub fn recovered_state(&self) -> Option<&PersistentState> {
        self.recovered.as_ref()
    }

    /// Log records that did not apply during recovery (always 0 unless something is broken).
    pub fn recovery_errors(&self) -> u32 {
        self.recovery_errors
    }

    /// Current replica locations of a chunk, as the master believes.
    pub fn locations(&self, handle: ChunkHandle) -> Vec<NodeId> {
        self.chunks
            .get(&handle)
            .map(|chunk| chunk.locations.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The chunkservers the master believes alive.
    pub fn live_servers(&self) -> Vec<NodeId> {
        self.servers.keys().copied().collect()
    }

    // ---- identifiers -----------------------------------------------------------------------

    /// A handle or version no earlier incarnation can have used: the boot epoch (logged before
    /// the master serves) in the high bits.
    fn allocate_id(&mut self) -> u64 {
        self.allocation_counter += 1;
        (self.state.boot_epoch << 32) | u64::from(self.allocation_counter)
    }

    fn request_id(&mut self) -> RequestId {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn disk_id(&mut self, wait: DiskWait) -> u64 {
        let id = self.next_disk_id;
        self.next_disk_id += 1;
        self.disk_waits.insert(id, wait);
        id
    }

    // ---- recovery --------------------------------------------------------------------------

    fn read_disk(&mut self, sector: u64, count: u64, out: &mut Outputs) {
        let id = self.disk_id(DiskWait::Recovery { sector, count });
        out.disk(id, DiskOp::Read { sector, count: count as u32 });
    }

    fn on_recovery_read(&mut self, now_ms: u64, bytes: Vec<u8>, out: &mut Outputs) {
        match core::mem::replace(&mut self.phase, Phase::Booting) {
            Phase::ReadingSuperblock => match oplog::pick_superblock(&bytes) {
                Some(superblock) if superblock.sequence > 0 => {
                    let sector = self.layout.checkpoint_sector(superblock.checkpoint_slot);
                    let count = sectors_for(superblock.checkpoint_bytes as usize);
                    self.phase = Phase::ReadingCheckpoint(superblock);
                    self.read_disk(sector, count, out);
                }
                _ => {
                    self.phase = Phase::ReadingLog(Superblock::default());
                    self.read_disk(self.layout.log_start_sector, self.layout.log_sectors, out);
                }
            },
            Phase::ReadingCheckpoint(superblock) => {
                self.state = oplog::decode_checkpoint(&bytes)
                    .expect("the master's checkpoint is corrupt: restore its disk");
                self.phase = Phase::ReadingLog(superblock);
                self.read_disk(self.layout.log_start_sector, self.layout.log_sectors, out);
            }
            Phase::ReadingLog(superblock) => {
                let (records, used) = oplog::parse_log(&bytes, superblock.log_epoch);
                for record in records {
                    if self.state.apply(&record).is_err() {
                        self.recovery_errors += 1;
                    }
                }
                self.log = Some(OpLog::new(
                    self.layout,
                    self.config.master_log_checkpoint_bytes,
                    superblock,
                    used,
                ));
                if self.config.check_recovery {
                    self.shadow = Some(self.state.clone());
                    self.recovered = Some(self.state.clone());
                }
                self.phase = Phase::Running { ready: false };
                let epoch = self.state.boot_epoch + 1;
                let lsn = self.log_record(LogRecord::Boot { epoch }, out);
                self.after_durable.push((lsn, Continuation::Ready));
                self.next_scan_ms = now_ms;
            }
            other => self.phase = other,
        }
    }

    // ---- the log and the output-commit rule ------------------------------------------------

    /// Applies `record` in memory and appends it to the log. Callers validate first.
    fn log_record(&mut self, record: LogRecord, out: &mut Outputs) -> Lsn {
        let applied = self.state.apply(&record);
        debug_assert!(applied.is_ok(), "logged an invalid record {record:?}");
        let log = self.log.as_mut().expect("the log exists once recovered");
        let lsn = log.append(&record);
        if self.shadow.is_some() {
            self.shadow_pending.push_back((lsn, record));
        }
        self.pump_log(out);
        lsn
    }

    fn pump_log(&mut self, out: &mut Outputs) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if let Some(op) = log.next_write(&self.state) {
            let id = self.disk_id(DiskWait::Log);
            out.disk(id, op);
        }
    }

    fn on_log_write(&mut self, now_ms: u64, ok: bool, out: &mut Outputs) {
        let log = self.log.as_mut().expect("log writes come after recovery");
        if let Some(op) = log.on_write_done(ok) {
            let id = self.disk_id(DiskWait::Log);
            out.disk(id, op);
        }
        self.release_durable(now_ms, out);
        self.pump_log(out);
    }

    fn durable_lsn(&self) -> Lsn {
        self.log.as_ref().map_or(0, OpLog::durable_lsn)
    }

    fn release_durable(&mut self, now_ms: u64, out: &mut Outputs) {
        let durable = self.durable_lsn();
        while let Some((lsn, _)) = self.held_replies.front() {
            if *lsn > durable {
                break;
            }
            let (_, envelope) = self.held_replies.pop_front().expect("checked");
            out.messages.push(envelope);
        }
        if let Some(shadow) = self.shadow.as_mut() {
            while let Some((lsn, _)) = self.shadow_pending.front() {
                if *lsn > durable {
                    break;
                }
                let (_, record) = self.shadow_pending.pop_front().expect("checked");
                let _ = shadow.apply(&record);
            }
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = core::mem::take(&mut self.after_durable)
            .into_iter()
            .partition(|(lsn, _)| *lsn <= durable);
        self.after_durable = waiting;
        for (_, continuation) in ready {
            self.run_continuation(now_ms, continuation, out);
        }
    }

    /// Replies to a client once everything logged so far is durable.
    fn reply(
        &mut self,
        to: NodeId,
        req: RequestId,
        result: Result<MasterAnswer, GfsError>,
        out: &mut Outputs,
    ) {
        self.in_progress.remove(&(to, req));
        self.recent_replies.push_back(((to, req), result.clone()));
        if self.recent_replies.len() > RECENT_REPLIES {
            self.recent_replies.pop_front();
        }
        let envelope = Envelope { to, msg: Message::MasterReply { req, result } };
        let appended = self.log.as_ref().map_or(0, OpLog::appended_lsn);
        if appended <= self.durable_lsn() {
            out.messages.push(envelope);
        } else {
            self.held_replies.push_back((appended, envelope));
        }
    }

    // ---- client requests -------------------------------------------------------------------

    fn on_client_request(
        &mut self,
        now_ms: u64,
        client: NodeId,
        req: RequestId,
        op: MasterOp,
        out: &mut Outputs,
    ) {
        if !self.is_ready() {
            out.send(client, Message::MasterReply { req, result: Err(GfsError::Busy) });
            return;
        }
        if let Some((_, result)) = self.recent_replies.iter().find(|(key, _)| *key == (client, req))
        {
            let result = result.clone();
            self.reply(client, req, result, out);
            return;
        }
        if !self.in_progress.insert((client, req)) {
            return; // a retry of a request still under way
        }
        let result = match op {
            MasterOp::Create { path } => self.create_file(path, out),
            MasterOp::Delete { path } => self.delete_file(now_ms, path, out),
            MasterOp::List { prefix } => Ok(self.list(&prefix)),
            MasterOp::FileInfo { path } => self
                .state
                .files
                .get(&path)
                .map(|file| MasterAnswer::FileInfo { chunk_count: file.chunks.len() as u64 })
                .ok_or(GfsError::NotFound),
            MasterOp::Lookup { path, index } => self.lookup(&path, index),
            MasterOp::GetLease { path, index } => {
                match self.get_lease(now_ms, (client, req), path, index, out) {
                    Some(result) => result,
                    None => return, // a task answers later
                }
            }
            MasterOp::Snapshot { source, target } => {
                match self.snapshot(now_ms, (client, req), source, target, out) {
                    Some(result) => result,
                    None => return,
                }
            }
        };
        self.reply(client, req, result, out);
    }

    fn create_file(&mut self, path: String, out: &mut Outputs) -> Result<MasterAnswer, GfsError> {
        if !valid_user_path(&path) {
            return Err(GfsError::InvalidPath);
        }
        if self.state.files.contains_key(&path) {
            return Err(GfsError::AlreadyExists);
        }
        self.log_record(LogRecord::CreateFile { path }, out);
        Ok(MasterAnswer::Done)
    }

    fn delete_file(
        &mut self,
        now_ms: u64,
        path: String,
        out: &mut Outputs,
    ) -> Result<MasterAnswer, GfsError> {
        if !valid_user_path(&path) {
            return Err(GfsError::InvalidPath);
        }
        if !self.state.files.contains_key(&path) {
            return Err(GfsError::NotFound);
        }
        let mut to = state::trash_name(&path, now_ms);
        let mut bump = now_ms;
        while self.state.files.contains_key(&to) {
            bump += 1;
            to = state::trash_name(&path, bump);
        }
        self.log_record(LogRecord::RenameFile { from: path, to }, out);
        Ok(MasterAnswer::Done)
    }

    fn list(&self, prefix: &str) -> MasterAnswer {
        let show_trash = prefix.starts_with(TRASH_PREFIX);
        let names = self
            .state
            .files
            .range(String::from(prefix)..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter(|(name, _)| show_trash || !name.starts_with(TRASH_PREFIX))
            .map(|(name, _)| name.clone())
            .collect();
        MasterAnswer::Listing(names)
    }

    fn lookup(&self, path: &str, index: u64) -> Result<MasterAnswer, GfsError> {
        let file = self.state.files.get(path).ok_or(GfsError::NotFound)?;
        let Some(Some(handle)) = file.chunks.get(index as usize) else {
            return Ok(MasterAnswer::Chunk(None));
        };
        let version = self.state.chunks.get(handle).map_or(0, |meta| meta.version);
        let replicas: Vec<NodeId> = self
            .chunks
            .get(handle)
            .map(|chunk| {
                chunk
                    .locations
                    .iter()
                    .filter(|(_, v)| **v >= version || self.config.knobs.skip_stale_version_check)
                    .map(|(node, _)| *node)
                    .collect()
            })
            .unwrap_or_default();
        if replicas.is_empty() {
            return Err(GfsError::NoReplica);
        }
        Ok(MasterAnswer::Chunk(Some(ChunkLocation { handle: *handle, version, replicas })))
    }

    fn on_disk(&mut self, now_ms: u64, done: DiskCompletion, out: &mut Outputs) {
        match self.disk_waits.remove(&done.id) {
            Some(DiskWait::Recovery { sector, count }) => match done.result {
                Ok(bytes) => self.on_recovery_read(now_ms, bytes, out),
                // A device error may pass; recovery cannot go on without the bytes.
                Err(_) => self.read_disk(sector, count, out),
            },
            Some(DiskWait::Log) => self.on_log_write(now_ms, done.result.is_ok(), out),
            None => {}
        }
    }

    fn on_message(&mut self, now_ms: u64, from: NodeId, msg: Message, out: &mut Outputs) {
        match msg {
            Message::MasterRequest { req, op } => {
                self.on_client_request(now_ms, from, req, op, out)
            }
            Message::Heartbeat { chunks, extend_leases } if self.is_ready() => {
                self.on_heartbeat(now_ms, from, chunks, extend_leases, out)
            }
            Message::CommandReply { req, result } => {
                self.on_command_reply(now_ms, from, req, result, out)
            }
            Message::ReportCorrupt { handle } => self.remove_location(handle, from),
            _ => {}
        }
    }
}

impl StateMachine for Master {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        if matches!(self.phase, Phase::Booting) {
            self.phase = Phase::ReadingSuperblock;
            self.read_disk(0, 2, out);
        }
        match input {
            Input::Disk(done) => self.on_disk(now_ms, done, out),
            Input::Message { from, msg } => self.on_message(now_ms, from, msg, out),
            Input::Tick => {
                if self.is_ready() {
                    self.on_tick(now_ms, out);
                }
            }
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Booting => Some(0),
            Phase::Running { ready: true } => {
                let task_deadline = self.tasks.values().map(Task::deadline_ms).min();
                [Some(self.next_scan_ms), task_deadline].into_iter().flatten().min()
            }
            _ => None,
        }
    }
}
