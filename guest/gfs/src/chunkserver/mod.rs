//! The chunkserver: stores replicas on its disk, checks a CRC32C per block on every read, applies
//! mutations in the primary's serial order, buffers pushed data, copies replicas for
//! re-replication and snapshots, and reports its chunks to the master in heartbeats.
//!
//! Each replica runs one disk job at a time (a FIFO per replica), so reads and mutations of one
//! chunk never interleave on disk while different chunks proceed in parallel.

mod buffer;
mod primary;
pub mod store;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use crate::config::Config;
use crate::disk::{DiskCompletion, DiskOp, SECTOR_BYTES};
use crate::node::{Input, Outputs, StateMachine};
use crate::wire::{
    crc32c, ApplyData, ChunkCommand, ChunkHandle, ChunkReport, CopyPiece, GfsError, Message,
    NodeId, RequestId, Version,
};
use buffer::DataBuffer;
use primary::Lease;
use store::{Layout, ReplicaMeta};

/// A chunkserver role.
pub struct Chunkserver {
    id: NodeId,
    config: Config,
    layout: Layout,
    booted: bool,
    headers_to_load: u32,
    replicas: BTreeMap<ChunkHandle, Replica>,
    free_slots: BTreeSet<u32>,
    buffer: DataBuffer,
    disk_waits: BTreeMap<u64, DiskWait>,
    next_disk_id: u64,
    next_request_id: RequestId,
    next_heartbeat_ms: u64,
    next_scrub_ms: u64,
    /// The scrub walks the replicas in handle order; this is where it stopped.
    scrub_after: ChunkHandle,
    clones: BTreeMap<RequestId, CloneJob>,
}

enum DiskWait {
    LoadHeader { slot: u32 },
    Job { handle: ChunkHandle },
    EraseSlot { slot: u32 },
}

struct Replica {
    slot: u32,
    /// The metadata as it is on disk.
    meta: ReplicaMeta,
    /// Being created or copied: not reported, not readable.
    installing: bool,
    jobs: VecDeque<Job>,
    active: Option<(Job, Stage)>,
    lease: Option<Lease>,
    secondary: SecondaryOrder,
}

/// How far a secondary has applied the primary's serial order for one version.
#[derive(Default)]
struct SecondaryOrder {
    version: Version,
    accepted_serial: u64,
    durable_serial: u64,
}

enum Job {
    Read { offset: u32, len: u32, reply: ReadFor },
    Mutate { offset: u32, data: Vec<u8>, pad_to_end: bool, done: MutationFor },
    SetVersion { version: Version, reply: (NodeId, RequestId) },
    Install { data: Vec<u8>, reply: (NodeId, RequestId) },
    Delete,
}

enum ReadFor {
    Client {
        to: NodeId,
        req: RequestId,
    },
    Copy {
        to: NodeId,
        req: RequestId,
    },
    LocalCopy {
        target: ChunkHandle,
        target_version: Version,
        reply: (NodeId, RequestId),
    },
    /// Background verification of an idle replica: only a checksum failure matters.
    Scrub,
}

enum MutationFor {
    Primary { serial: u64 },
    Secondary { primary: NodeId, serial: u64 },
}

enum Stage {
    ReadBlocks { first_block: usize },
    WriteData { new_meta: ReplicaMeta },
    WriteHeader { new_meta: ReplicaMeta },
}

struct CloneJob {
    handle: ChunkHandle,
    version: Version,
    source: NodeId,
    reply: (NodeId, RequestId),
    data: Vec<u8>,
    deadline_ms: u64,
}

/// Why a replica is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Corrupt,
    Deleted,
}

impl Chunkserver {
    /// A chunkserver with node id `id` over a disk of `disk_sectors` sectors. On its first step
    /// it reads its slot headers, then reports to the master.
    pub fn new(id: NodeId, config: Config, disk_sectors: u64) -> Self {
        let layout = Layout::new(&config, disk_sectors);
        let buffer = DataBuffer::new(config.data_buffer_max_bytes, config.data_buffer_ttl_ms);
        Chunkserver {
            id,
            config,
            layout,
            booted: false,
            headers_to_load: 0,
            replicas: BTreeMap::new(),
            free_slots: BTreeSet::new(),
            buffer,
            disk_waits: BTreeMap::new(),
            next_disk_id: 1,
            next_request_id: 1,
            next_heartbeat_ms: 0,
            next_scrub_ms: 0,
            scrub_after: 0,
            clones: BTreeMap::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True once the slot headers are loaded and the server serves requests.
    pub fn is_ready(&self) -> bool {
        self.booted && self.headers_to_load == 0
    }

    /// The replicas this server would report: `(handle, version)`.
    pub fn replica_versions(&self) -> Vec<ChunkReport> {
        self.replicas
            .iter()
            .filter(|(_, replica)| !replica.installing)
            .map(|(handle, replica)| ChunkReport { handle: *handle, version: replica.meta.version })
            .collect()
    }

    /// Chunks this server holds a valid lease for at `now_ms`, with their versions (for the
    /// simulator's checks after every step, so not collected).
    pub fn leases_held(&self, now_ms: u64) -> impl Iterator<Item = (ChunkHandle, Version)> + '_ {
        self.replicas.iter().filter_map(move |(handle, replica)| {
            let lease = replica.lease.as_ref()?;
            (lease.expiry_ms > now_ms).then_some((*handle, lease.version))
        })
    }

    /// Whether it holds a lease for `handle` valid at `now_ms` (one of [`Chunkserver::leases_held`]).
    pub fn holds_lease(&self, handle: ChunkHandle, now_ms: u64) -> bool {
        let lease = self.replicas.get(&handle).and_then(|replica| replica.lease.as_ref());
        lease.is_some_and(|lease| lease.expiry_ms > now_ms)
    }

    /// Slot and length of a replica (for the simulator's disk inspection).
    pub fn replica_slot(&self, handle: ChunkHandle) -> Option<(u32, ReplicaMeta)> {
        let replica = self.replicas.get(&handle)?;
        (!replica.installing).then(|| (replica.slot, replica.meta.clone()))
    }

    /// Bytes of pushed data waiting in the buffer.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.total_bytes()
    }

    /// The disk layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn disk_id(&mut self, wait: DiskWait) -> u64 {
        let id = self.next_disk_id;
        self.next_disk_id += 1;
        self.disk_waits.insert(id, wait);
        id
    }

    fn request_id(&mut self) -> RequestId {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn boot(&mut self, out: &mut Outputs) {
        self.booted = true;
        self.headers_to_load = self.layout.slot_count;
        for slot in 0..self.layout.slot_count {
            self.load_header(slot, out);
        }
    }

    fn load_header(&mut self, slot: u32, out: &mut Outputs) {
        let id = self.disk_id(DiskWait::LoadHeader { slot });
        let sector = self.layout.header_sector(slot);
        let count = self.layout.header_sectors as u32;
        out.disk(id, DiskOp::Read { sector, count });
    }

    fn on_disk(&mut self, now_ms: u64, done: DiskCompletion, out: &mut Outputs) {
        let Some(wait) = self.disk_waits.remove(&done.id) else {
            return;
        };
        match wait {
            DiskWait::LoadHeader { slot } => {
                let Ok(bytes) = done.result else {
                    // A slot whose header cannot be read is neither free nor known: read again.
                    self.load_header(slot, out);
                    return;
                };
                self.headers_to_load -= 1;
                let meta = self.layout.decode_header(&bytes);
                match meta {
                    Some(meta) if !self.replicas.contains_key(&meta.handle) => {
                        let handle = meta.handle;
                        self.replicas.insert(handle, Replica::new(slot, meta, false));
                    }
                    _ => {
                        self.free_slots.insert(slot);
                    }
                }
                if self.headers_to_load == 0 {
                    self.next_heartbeat_ms = now_ms;
                }
            }
            DiskWait::EraseSlot { slot } => {
                self.free_slots.insert(slot);
            }
            DiskWait::Job { handle } => self.continue_job(now_ms, handle, done.result, out),
        }
    }

    // ---- jobs ----------------------------------------------------------------------------

    fn enqueue(&mut self, now_ms: u64, handle: ChunkHandle, job: Job, out: &mut Outputs) {
        if let Some(replica) = self.replicas.get_mut(&handle) {
            replica.jobs.push_back(job);
            self.start_next_job(now_ms, handle, out);
        } else {
            self.fail_job(handle, job, GfsError::NoSuchChunk, out);
        }
    }

    fn start_next_job(&mut self, now_ms: u64, handle: ChunkHandle, out: &mut Outputs) {
        loop {
            let Some(replica) = self.replicas.get_mut(&handle) else {
                return;
            };
            if replica.active.is_some() {
                return;
            }
            let Some(job) = replica.jobs.pop_front() else {
                return;
            };
            let block_bytes = self.layout.block_bytes;
            let chunk_len = replica.meta.len_bytes as usize;
            match &job {
                Job::Read { offset, len, .. } => {
                    let start = *offset as usize;
                    let end = (start + *len as usize).min(chunk_len);
                    if start >= end {
                        // Nothing written there: zeros, no disk access.
                        let bytes = vec![0; *len as usize];
                        let meta = replica.meta.clone();
                        self.finish_read(now_ms, job, meta, bytes, out);
                        continue;
                    }
                    let first_block = start / block_bytes;
                    let last_block = end.div_ceil(block_bytes);
                    self.issue_block_read(handle, job, first_block, last_block, out);
                }
                Job::Mutate { offset, data, pad_to_end, .. } => {
                    let (start, end) =
                        self.mutation_range(chunk_len, *offset, data.len(), *pad_to_end);
                    let first_block = start / block_bytes;
                    let last_block = end.div_ceil(block_bytes);
                    let block_start = first_block * block_bytes;
                    let block_end = last_block * block_bytes;
                    let needs_old = (block_start < start && block_start < chunk_len)
                        || (end < block_end && end < chunk_len);
                    if needs_old {
                        self.issue_block_read(handle, job, first_block, last_block, out);
                    } else {
                        let blocks = vec![0; block_end - block_start];
                        self.write_mutation(handle, job, first_block, blocks, out);
                    }
                }
                Job::SetVersion { version, .. } => {
                    let mut new_meta = replica.meta.clone();
                    new_meta.version = new_meta.version.max(*version);
                    self.write_header(handle, job, new_meta, out);
                }
                Job::Install { data, .. } => {
                    let mut new_meta = replica.meta.clone();
                    if data.is_empty() {
                        self.write_header(handle, job, new_meta, out);
                    } else {
                        let mut blocks = data.clone();
                        blocks.resize(data.len().div_ceil(block_bytes) * block_bytes, 0);
                        for (index, block) in blocks.chunks(block_bytes).enumerate() {
                            new_meta.block_crcs[index] = crc32c(block);
                        }
                        let sector = self.layout.data_sector(replica.slot, 0);
                        let id = self.disk_id(DiskWait::Job { handle });
                        let replica = self.replicas.get_mut(&handle).expect("replica exists");
                        replica.active = Some((job, Stage::WriteData { new_meta }));
                        out.disk(id, DiskOp::Write { sector, data: blocks });
                    }
                }
                Job::Delete => {
                    self.drop_replica(now_ms, handle, DropReason::Deleted, out);
                    return;
                }
            }
        }
    }

    /// The byte range a mutation rewrites: the gap between the old end and `offset` is zeroed.
    fn mutation_range(
        &self,
        chunk_len: usize,
        offset: u32,
        data_len: usize,
        pad_to_end: bool,
    ) -> (usize, usize) {
        let offset = offset as usize;
        let start = offset.min(chunk_len);
        let end =
            if pad_to_end { self.config.chunk_size_bytes as usize } else { offset + data_len };
        (start, end.max(start))
    }

    fn issue_block_read(
        &mut self,
        handle: ChunkHandle,
        job: Job,
        first_block: usize,
        last_block: usize,
        out: &mut Outputs,
    ) {
        let block_bytes = self.layout.block_bytes;
        let replica = self.replicas.get(&handle).expect("replica exists");
        let sector = self.layout.data_sector(replica.slot, first_block * block_bytes);
        let count = ((last_block - first_block) * block_bytes / SECTOR_BYTES) as u32;
        let id = self.disk_id(DiskWait::Job { handle });
        let replica = self.replicas.get_mut(&handle).expect("replica exists");
        replica.active = Some((job, Stage::ReadBlocks { first_block }));
        out.disk(id, DiskOp::Read { sector, count });
    }

    fn write_header(
        &mut self,
        handle: ChunkHandle,
        job: Job,
        new_meta: ReplicaMeta,
        out: &mut Outputs,
    ) {
        let replica = self.replicas.get(&handle).expect("replica exists");
        let sector = self.layout.header_sector(replica.slot);
        let data = self.layout.encode_header(&new_meta);
        let id = self.disk_id(DiskWait::Job { handle });
        let replica = self.replicas.get_mut(&handle).expect("replica exists");
        replica.active = Some((job, Stage::WriteHeader { new_meta }));
        out.disk(id, DiskOp::Write { sector, data });
    }

    /// Merges a mutation into `blocks` (the old contents of its blocks) and writes them.
    fn write_mutation(
        &mut self,
        handle: ChunkHandle,
        job: Job,
        first_block: usize,
        mut blocks: Vec<u8>,
        out: &mut Outputs,
    ) {
        let block_bytes = self.layout.block_bytes;
        let replica = self.replicas.get(&handle).expect("replica exists");
        let chunk_len = replica.meta.len_bytes as usize;
        let Job::Mutate { offset, data, pad_to_end, .. } = &job else {
            unreachable!("write_mutation only runs mutations")
        };
        let (start, end) = self.mutation_range(chunk_len, *offset, data.len(), *pad_to_end);
        let base = first_block * block_bytes;
        // Bytes past the old end are zeros whatever the disk held; padding also clears
        // whatever a failed mutation left past the primary's end.
        let zero_from = if *pad_to_end { start - base } else { chunk_len.max(base) - base };
        let zero_from = zero_from.min(blocks.len());
        blocks[zero_from..].fill(0);
        let data_at = *offset as usize - base;
        blocks[data_at..data_at + data.len()].copy_from_slice(data);
        let mut new_meta = replica.meta.clone();
        new_meta.len_bytes = new_meta.len_bytes.max(end as u32);
        for (index, block) in blocks.chunks(block_bytes).enumerate() {
            new_meta.block_crcs[first_block + index] = crc32c(block);
        }
        let sector = self.layout.data_sector(replica.slot, base);
        let id = self.disk_id(DiskWait::Job { handle });
        let replica = self.replicas.get_mut(&handle).expect("replica exists");
        replica.active = Some((job, Stage::WriteData { new_meta }));
        out.disk(id, DiskOp::Write { sector, data: blocks });
    }

    fn continue_job(
        &mut self,
        now_ms: u64,
        handle: ChunkHandle,
        result: Result<Vec<u8>, crate::disk::DiskError>,
        out: &mut Outputs,
    ) {
        let Some(replica) = self.replicas.get_mut(&handle) else {
            return;
        };
        let Some((job, stage)) = replica.active.take() else {
            return;
        };
        let bytes = match result {
            Ok(bytes) => bytes,
            // A failed read changed nothing on the disk: this job fails (a client tries
            // another replica), the replica stays.
            Err(_) if matches!(stage, Stage::ReadBlocks { .. }) => {
                match job {
                    Job::Mutate { done: MutationFor::Primary { serial }, .. } => {
                        self.primary_local_done(now_ms, handle, serial, Err(GfsError::Disk), out)
                    }
                    job => self.fail_job(handle, job, GfsError::Disk, out),
                }
                self.start_next_job(now_ms, handle, out);
                return;
            }
            // A failed write may have torn what it covered: the replica is not trusted.
            Err(_) => {
                replica.active = Some((job, stage));
                self.drop_replica(now_ms, handle, DropReason::Corrupt, out);
                return;
            }
        };
        match stage {
            Stage::ReadBlocks { first_block } => {
                if !self.blocks_intact(handle, first_block, &bytes) {
                    let replica = self.replicas.get_mut(&handle).expect("replica exists");
                    replica.active = Some((job, Stage::ReadBlocks { first_block }));
                    self.drop_replica(now_ms, handle, DropReason::Corrupt, out);
                    return;
                }
                match job {
                    Job::Read { offset, len, .. } => {
                        let meta = self.replicas[&handle].meta.clone();
                        let base = first_block * self.layout.block_bytes;
                        let mut data = vec![0; len as usize];
                        let from = offset as usize - base;
                        let valid = (meta.len_bytes as usize).saturating_sub(offset as usize);
                        let take = valid.min(len as usize).min(bytes.len() - from);
                        data[..take].copy_from_slice(&bytes[from..from + take]);
                        self.finish_read(now_ms, job, meta, data, out);
                    }
                    Job::Mutate { .. } => {
                        self.write_mutation(handle, job, first_block, bytes, out);
                        return;
                    }
                    _ => unreachable!("only reads and mutations read blocks"),
                }
            }
            Stage::WriteData { new_meta } => {
                self.write_header(handle, job, new_meta, out);
                return;
            }
            Stage::WriteHeader { new_meta } => {
                let replica = self.replicas.get_mut(&handle).expect("replica exists");
                replica.meta = new_meta;
                self.finish_job(now_ms, handle, job, out);
            }
        }
        self.start_next_job(now_ms, handle, out);
    }

    /// Checks the CRC of every block in `bytes` that holds written data.
    fn blocks_intact(&self, handle: ChunkHandle, first_block: usize, bytes: &[u8]) -> bool {
        let meta = &self.replicas[&handle].meta;
        let block_bytes = self.layout.block_bytes;
        bytes.chunks(block_bytes).enumerate().all(|(index, block)| {
            let block_index = first_block + index;
            let block_start = block_index * block_bytes;
            if block_start >= meta.len_bytes as usize {
                return true; // never written: read as zeros, not checked
            }
            crc32c(block) == meta.block_crcs[block_index]
        })
    }

    fn finish_read(
        &mut self,
        now_ms: u64,
        job: Job,
        meta: ReplicaMeta,
        bytes: Vec<u8>,
        out: &mut Outputs,
    ) {
        let Job::Read { reply, .. } = job else { unreachable!("finish_read only ends reads") };
        match reply {
            ReadFor::Client { to, req } => {
                out.send(to, Message::ReadReply { req, result: Ok(()), bytes })
            }
            ReadFor::Copy { to, req } => out.send(
                to,
                Message::CopyReply {
                    req,
                    result: Ok(CopyPiece {
                        version: meta.version,
                        chunk_len: meta.len_bytes,
                        bytes,
                    }),
                },
            ),
            ReadFor::LocalCopy { target, target_version, reply } => {
                if self.replicas.contains_key(&target) {
                    out.send(reply.0, command_reply(reply.1, Ok(())));
                    return;
                }
                let mut bytes = bytes;
                bytes.truncate(meta.len_bytes as usize);
                let mut target_meta = self.layout.fresh_meta(target, target_version);
                target_meta.len_bytes = meta.len_bytes;
                self.install(now_ms, target_meta, bytes, reply, out);
            }
            ReadFor::Scrub => {}
        }
    }

    /// Places a new replica with `meta` and `data` in a free slot, replying when it is durable.
    fn install(
        &mut self,
        now_ms: u64,
        meta: ReplicaMeta,
        data: Vec<u8>,
        reply: (NodeId, RequestId),
        out: &mut Outputs,
    ) {
        let Some(slot) = self.free_slots.pop_first() else {
            out.send(reply.0, command_reply(reply.1, Err(GfsError::DiskFull)));
            return;
        };
        let handle = meta.handle;
        self.replicas.insert(handle, Replica::new(slot, meta, true));
        self.enqueue(now_ms, handle, Job::Install { data, reply }, out);
    }

    fn finish_job(&mut self, now_ms: u64, handle: ChunkHandle, job: Job, out: &mut Outputs) {
        match job {
            Job::Mutate { done, .. } => match done {
                MutationFor::Primary { serial } => {
                    self.primary_local_done(now_ms, handle, serial, Ok(()), out)
                }
                MutationFor::Secondary { primary, serial } => {
                    let replica = self.replicas.get_mut(&handle).expect("replica exists");
                    if replica.secondary.version == replica.meta.version {
                        replica.secondary.durable_serial =
                            replica.secondary.durable_serial.max(serial);
                    }
                    out.send(primary, Message::ApplyAck { handle, serial, result: Ok(()) });
                }
            },
            Job::SetVersion { reply, .. } => out.send(reply.0, command_reply(reply.1, Ok(()))),
            Job::Install { reply, .. } => {
                let replica = self.replicas.get_mut(&handle).expect("replica exists");
                replica.installing = false;
                out.send(reply.0, command_reply(reply.1, Ok(())));
            }
            Job::Read { .. } | Job::Delete => {}
        }
    }

    fn fail_job(&mut self, handle: ChunkHandle, job: Job, error: GfsError, out: &mut Outputs) {
        match job {
            Job::Read { reply, .. } => match reply {
                ReadFor::Client { to, req } => {
                    out.send(to, Message::ReadReply { req, result: Err(error), bytes: Vec::new() })
                }
                ReadFor::Copy { to, req } => {
                    out.send(to, Message::CopyReply { req, result: Err(error) })
                }
                ReadFor::LocalCopy { reply, .. } => {
                    out.send(reply.0, command_reply(reply.1, Err(error)))
                }
                ReadFor::Scrub => {}
            },
            Job::Mutate { done, .. } => match done {
                MutationFor::Primary { .. } => {} // the lease is gone with the replica
                MutationFor::Secondary { primary, serial } => {
                    out.send(primary, Message::ApplyAck { handle, serial, result: Err(error) })
                }
            },
            Job::SetVersion { reply, .. } | Job::Install { reply, .. } => {
                out.send(reply.0, command_reply(reply.1, Err(error)))
            }
            Job::Delete => {}
        }
    }

    /// Forgets a replica, fails its pending work, frees its slot once the header is erased.
    fn drop_replica(
        &mut self,
        now_ms: u64,
        handle: ChunkHandle,
        reason: DropReason,
        out: &mut Outputs,
    ) {
        let Some(mut replica) = self.replicas.remove(&handle) else {
            return;
        };
        let error = match reason {
            DropReason::Corrupt => GfsError::Checksum,
            DropReason::Deleted => GfsError::NoSuchChunk,
        };
        if let Some(lease) = replica.lease.take() {
            lease.fail_all(error, out);
        }
        // A disk request may still be in flight for this replica: ignore its completion.
        self.disk_waits
            .retain(|_, wait| !matches!(wait, DiskWait::Job { handle: h } if *h == handle));
        if let Some((job, _)) = replica.active.take() {
            self.fail_job(handle, job, error, out);
        }
        while let Some(job) = replica.jobs.pop_front() {
            self.fail_job(handle, job, error, out);
        }
        let id = self.disk_id(DiskWait::EraseSlot { slot: replica.slot });
        let sector = self.layout.header_sector(replica.slot);
        let data = self.layout.empty_header();
        out.disk(id, DiskOp::Write { sector, data });
        if reason == DropReason::Corrupt && !replica.installing {
            out.send(self.config.master_id, Message::ReportCorrupt { handle });
        }
        let _ = now_ms;
    }

    // ---- messages ------------------------------------------------------------------------

    fn on_message(&mut self, now_ms: u64, from: NodeId, msg: Message, out: &mut Outputs) {
        match msg {
            Message::PushData { data_id, client, bytes, chain } => {
                if let Some((next, rest)) = chain.split_first() {
                    let forward = Message::PushData {
                        data_id,
                        client,
                        bytes: bytes.clone(),
                        chain: rest.to_vec(),
                    };
                    out.send(*next, forward);
                }
                self.buffer.insert(now_ms, data_id, bytes);
                out.send(client, Message::PushAck { data_id });
            }
            Message::ReadChunk { req, handle, version, offset, len } => {
                let error = match self.replicas.get(&handle) {
                    None => Some(GfsError::NoSuchChunk),
                    Some(replica) if replica.installing => Some(GfsError::NoSuchChunk),
                    Some(replica)
                        if replica.meta.version < version
                            && !self.config.knobs.skip_stale_version_check =>
                    {
                        Some(GfsError::StaleVersion)
                    }
                    Some(_) if offset as u64 + len as u64 > self.config.chunk_size_bytes as u64 => {
                        Some(GfsError::TooLarge)
                    }
                    Some(_) => None,
                };
                match error {
                    Some(error) => out.send(
                        from,
                        Message::ReadReply { req, result: Err(error), bytes: Vec::new() },
                    ),
                    None => {
                        let reply = ReadFor::Client { to: from, req };
                        self.enqueue(now_ms, handle, Job::Read { offset, len, reply }, out);
                    }
                }
            }
            Message::CopyRead { req, handle, offset, len } => {
                let readable =
                    self.replicas.get(&handle).is_some_and(|replica| !replica.installing);
                if readable {
                    let reply = ReadFor::Copy { to: from, req };
                    self.enqueue(now_ms, handle, Job::Read { offset, len, reply }, out);
                } else {
                    out.send(from, Message::CopyReply { req, result: Err(GfsError::NoSuchChunk) });
                }
            }
            Message::CopyReply { req, result } => self.on_copy_reply(now_ms, req, result, out),
            Message::Mutate { req, handle, version, data_id, kind } => {
                self.on_mutate(now_ms, from, req, handle, version, data_id, kind, out)
            }
            Message::Apply { handle, version, serial, lease_expiry_ms, offset, data } => self
                .on_apply(
                    now_ms,
                    from,
                    handle,
                    version,
                    serial,
                    lease_expiry_ms,
                    offset,
                    data,
                    out,
                ),
            Message::ApplyAck { handle, serial, result } => {
                self.on_apply_ack(now_ms, from, handle, serial, result, out)
            }
            Message::Command { req, cmd } => self.on_command(now_ms, from, req, cmd, out),
            Message::HeartbeatReply { delete, extended } => {
                for below in delete {
                    let stale = self
                        .replicas
                        .get(&below.handle)
                        .is_some_and(|replica| replica.meta.version < below.version);
                    if stale {
                        self.enqueue(now_ms, below.handle, Job::Delete, out);
                    }
                }
                for extension in extended {
                    if let Some(replica) = self.replicas.get_mut(&extension.handle) {
                        if let Some(lease) = replica.lease.as_mut() {
                            if lease.version == extension.version {
                                lease.expiry_ms = lease.expiry_ms.max(extension.expiry_ms);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_command(
        &mut self,
        now_ms: u64,
        from: NodeId,
        req: RequestId,
        cmd: ChunkCommand,
        out: &mut Outputs,
    ) {
        let reply = (from, req);
        match cmd {
            ChunkCommand::Create { handle, version } => {
                if self.replicas.contains_key(&handle) {
                    out.send(from, command_reply(req, Ok(())));
                    return;
                }
                let meta = self.layout.fresh_meta(handle, version);
                self.install(now_ms, meta, Vec::new(), reply, out);
            }
            ChunkCommand::SetVersion { handle, from: _, to } => {
                match self.replicas.get_mut(&handle) {
                    Some(replica) if !replica.installing => {
                        // A new version ends any lease on the old one.
                        if let Some(lease) = replica.lease.take_if(|lease| lease.version < to) {
                            lease.fail_all(GfsError::NotPrimary, out);
                        }
                        self.enqueue(now_ms, handle, Job::SetVersion { version: to, reply }, out);
                    }
                    _ => out.send(from, command_reply(req, Err(GfsError::NoSuchChunk))),
                }
            }
            ChunkCommand::GrantLease { handle, version, expiry_ms, secondaries } => {
                let result = match self.replicas.get_mut(&handle) {
                    Some(replica) if replica.meta.version == version && expiry_ms > now_ms => {
                        let keep =
                            replica.lease.as_ref().is_some_and(|lease| lease.version == version);
                        if keep {
                            let lease = replica.lease.as_mut().expect("checked");
                            lease.expiry_ms = lease.expiry_ms.max(expiry_ms);
                        } else {
                            replica.lease =
                                Some(Lease::new(now_ms, version, expiry_ms, secondaries));
                        }
                        Ok(())
                    }
                    Some(_) => Err(GfsError::StaleVersion),
                    None => Err(GfsError::NoSuchChunk),
                };
                out.send(from, command_reply(req, result));
            }
            ChunkCommand::RevokeLease { handle } => {
                if let Some(replica) = self.replicas.get_mut(&handle) {
                    if let Some(lease) = replica.lease.take() {
                        lease.fail_all(GfsError::NotPrimary, out);
                    }
                }
                out.send(from, command_reply(req, Ok(())));
            }
            ChunkCommand::CloneFrom { handle, version, source } => {
                if let Some(replica) = self.replicas.get(&handle) {
                    let result = if replica.meta.version >= version && !replica.installing {
                        Ok(())
                    } else {
                        Err(GfsError::Busy)
                    };
                    out.send(from, command_reply(req, result));
                    return;
                }
                if self.clones.values().any(|job| job.handle == handle) {
                    return; // a copy is already under way; it will answer
                }
                let job =
                    CloneJob { handle, version, source, reply, data: Vec::new(), deadline_ms: 0 };
                self.request_next_piece(now_ms, job, out);
            }
            ChunkCommand::LocalCopy { source, source_version, target, target_version } => {
                if self.replicas.contains_key(&target) {
                    out.send(from, command_reply(req, Ok(())));
                    return;
                }
                match self.replicas.get(&source) {
                    Some(replica)
                        if replica.meta.version == source_version && !replica.installing =>
                    {
                        let len = self.config.chunk_size_bytes;
                        let reply = ReadFor::LocalCopy { target, target_version, reply };
                        self.enqueue(now_ms, source, Job::Read { offset: 0, len, reply }, out);
                    }
                    Some(_) => out.send(from, command_reply(req, Err(GfsError::StaleVersion))),
                    None => out.send(from, command_reply(req, Err(GfsError::NoSuchChunk))),
                }
            }
        }
    }

    fn request_next_piece(&mut self, now_ms: u64, mut job: CloneJob, out: &mut Outputs) {
        let req = self.request_id();
        job.deadline_ms = now_ms + self.config.rpc_timeout_ms;
        let offset = job.data.len() as u32;
        let len = self.config.copy_piece_bytes.min(self.config.chunk_size_bytes - offset);
        out.send(job.source, Message::CopyRead { req, handle: job.handle, offset, len });
        self.clones.insert(req, job);
    }

    fn on_copy_reply(
        &mut self,
        now_ms: u64,
        req: RequestId,
        result: Result<CopyPiece, GfsError>,
        out: &mut Outputs,
    ) {
        let Some(mut job) = self.clones.remove(&req) else {
            return;
        };
        let piece = match result {
            Ok(piece) if piece.version == job.version => piece,
            Ok(_) => {
                out.send(job.reply.0, command_reply(job.reply.1, Err(GfsError::StaleVersion)));
                return;
            }
            Err(error) => {
                out.send(job.reply.0, command_reply(job.reply.1, Err(error)));
                return;
            }
        };
        job.data.extend_from_slice(&piece.bytes);
        if job.data.len() >= piece.chunk_len as usize {
            job.data.truncate(piece.chunk_len as usize);
            let mut meta = self.layout.fresh_meta(job.handle, job.version);
            meta.len_bytes = piece.chunk_len;
            if self.replicas.contains_key(&job.handle) {
                out.send(job.reply.0, command_reply(job.reply.1, Err(GfsError::Busy)));
                return;
            }
            self.install(now_ms, meta, job.data, job.reply, out);
        } else {
            self.request_next_piece(now_ms, job, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_apply(
        &mut self,
        now_ms: u64,
        primary: NodeId,
        handle: ChunkHandle,
        version: Version,
        serial: u64,
        lease_expiry_ms: u64,
        offset: u32,
        data: ApplyData,
        out: &mut Outputs,
    ) {
        let reject = |error, out: &mut Outputs| {
            out.send(primary, Message::ApplyAck { handle, serial, result: Err(error) })
        };
        let Some(replica) = self.replicas.get_mut(&handle) else {
            return reject(GfsError::NoSuchChunk, out);
        };
        if replica.meta.version != version || replica.installing {
            return reject(GfsError::StaleVersion, out);
        }
        if lease_expiry_ms <= now_ms {
            return reject(GfsError::NotPrimary, out);
        }
        let order = &mut replica.secondary;
        if order.version != version {
            *order = SecondaryOrder { version, ..SecondaryOrder::default() };
        }
        if serial <= order.durable_serial {
            out.send(primary, Message::ApplyAck { handle, serial, result: Ok(()) });
            return;
        }
        if serial <= order.accepted_serial {
            return; // already queued: its ack will follow
        }
        let (bytes, pad_to_end) = match data {
            ApplyData::Pushed(data_id) => match self.buffer.get(data_id) {
                Some(bytes) => (bytes.to_vec(), false),
                None => return reject(GfsError::DataMissing, out),
            },
            ApplyData::PadToEnd => (Vec::new(), true),
        };
        if offset as usize + bytes.len() > self.config.chunk_size_bytes as usize {
            return reject(GfsError::TooLarge, out);
        }
        order.accepted_serial = serial;
        let job = Job::Mutate {
            offset,
            data: bytes,
            pad_to_end,
            done: MutationFor::Secondary { primary, serial },
        };
        self.enqueue(now_ms, handle, job, out);
    }

    fn heartbeat(&mut self, now_ms: u64, out: &mut Outputs) {
        let half_lease_ms = self.config.lease_ms / 2;
        let extend_leases = self
            .replicas
            .iter()
            .filter_map(|(handle, replica)| {
                let lease = replica.lease.as_ref()?;
                let busy = now_ms.saturating_sub(lease.last_mutation_ms) < half_lease_ms;
                let ending = lease.expiry_ms.saturating_sub(now_ms) < half_lease_ms;
                (busy && ending && lease.expiry_ms > now_ms).then_some(*handle)
            })
            .collect();
        out.send(
            self.config.master_id,
            Message::Heartbeat { chunks: self.replica_versions(), extend_leases },
        );
        self.next_heartbeat_ms = now_ms + self.config.heartbeat_interval_ms;
    }

    /// Verifies the checksums of the next idle replica, so corruption of data nobody reads is
    /// found and repaired too.
    fn scrub_next(&mut self, now_ms: u64, out: &mut Outputs) {
        self.next_scrub_ms = now_ms + self.config.scrub_interval_ms;
        let next = self
            .replicas
            .range(self.scrub_after + 1..)
            .chain(self.replicas.range(..=self.scrub_after))
            .find(|(_, replica)| {
                !replica.installing && replica.active.is_none() && replica.jobs.is_empty()
            })
            .map(|(handle, replica)| (*handle, replica.meta.len_bytes));
        if let Some((handle, len)) = next {
            self.scrub_after = handle;
            let job = Job::Read { offset: 0, len, reply: ReadFor::Scrub };
            self.enqueue(now_ms, handle, job, out);
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Outputs) {
        if now_ms >= self.next_heartbeat_ms {
            self.heartbeat(now_ms, out);
        }
        if now_ms >= self.next_scrub_ms {
            self.scrub_next(now_ms, out);
        }
        self.buffer.expire(now_ms);
        let expired: Vec<RequestId> = self
            .clones
            .iter()
            .filter(|(_, job)| job.deadline_ms <= now_ms)
            .map(|(req, _)| *req)
            .collect();
        for req in expired {
            let job = self.clones.remove(&req).expect("listed");
            out.send(job.reply.0, command_reply(job.reply.1, Err(GfsError::Timeout)));
        }
        let handles: Vec<ChunkHandle> = self
            .replicas
            .iter()
            .filter(|(_, replica)| replica.lease.is_some())
            .map(|(handle, _)| *handle)
            .collect();
        for handle in handles {
            self.primary_tick(now_ms, handle, out);
        }
    }
}

impl Replica {
    fn new(slot: u32, meta: ReplicaMeta, installing: bool) -> Self {
        Replica {
            slot,
            meta,
            installing,
            jobs: VecDeque::new(),
            active: None,
            lease: None,
            secondary: SecondaryOrder::default(),
        }
    }
}

fn command_reply(req: RequestId, result: Result<(), GfsError>) -> Message {
    Message::CommandReply { req, result }
}

impl StateMachine for Chunkserver {
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        if !self.booted {
            self.boot(out);
        }
        match input {
            Input::Disk(done) => self.on_disk(now_ms, done, out),
            Input::Message { from, msg } if self.is_ready() => {
                self.on_message(now_ms, from, msg, out)
            }
            Input::Message { .. } => {} // still loading: the sender retries
            Input::Tick => {
                if self.is_ready() {
                    self.on_tick(now_ms, out)
                }
            }
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        if !self.booted {
            return Some(0);
        }
        if !self.is_ready() {
            return None;
        }
        let clone_deadline = self.clones.values().map(|job| job.deadline_ms).min();
        let lease_deadline = self
            .replicas
            .values()
            .filter_map(|replica| replica.lease.as_ref()?.next_deadline_ms())
            .min();
        [Some(self.next_heartbeat_ms), Some(self.next_scrub_ms), clone_deadline, lease_deadline]
            .into_iter()
            .flatten()
            .min()
    }
}
