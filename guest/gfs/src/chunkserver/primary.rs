//! The primary's side of a lease: it queues client mutations, gives each a serial number, applies
//! it locally and on every secondary, and answers the client once all have it on disk.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;

use super::{Chunkserver, Job, MutationFor};
use crate::node::Outputs;
use crate::wire::{
    ApplyData, ChunkHandle, DataId, GfsError, Message, MutationKind, NodeId, RequestId, Version,
};

/// How many answered mutations a primary remembers to answer duplicates.
const RECENT_ANSWERS: usize = 64;

/// Room for this many (as a power of two) mutations per millisecond in the serial space.
const SERIALS_PER_MS_BITS: u32 = 20;

/// A lease this chunkserver holds as primary.
pub(super) struct Lease {
    pub version: Version,
    pub expiry_ms: u64,
    pub last_mutation_ms: u64,
    secondaries: Vec<NodeId>,
    next_serial: u64,
    queue: VecDeque<ClientMutation>,
    in_flight: Option<InFlight>,
    recent: VecDeque<((NodeId, RequestId), Result<u32, GfsError>)>,
}

struct ClientMutation {
    client: NodeId,
    req: RequestId,
    data_id: DataId,
    kind: MutationKind,
}

struct InFlight {
    serial: u64,
    client: NodeId,
    req: RequestId,
    result: Result<u32, GfsError>,
    waiting: BTreeSet<NodeId>,
    local_done: bool,
    failure: Option<GfsError>,
    deadline_ms: u64,
}

impl Lease {
    /// A lease granted at `now_ms`. Serials start from the clock so that a lease re-granted
    /// for the same version (after it lapsed or the server restarted) never reuses a serial
    /// the secondaries already applied (they would take it for a duplicate).
    pub fn new(now_ms: u64, version: Version, expiry_ms: u64, secondaries: Vec<NodeId>) -> Self {
        Lease {
            version,
            expiry_ms,
            last_mutation_ms: 0,
            secondaries,
            next_serial: (now_ms << SERIALS_PER_MS_BITS) + 1,
            queue: VecDeque::new(),
            in_flight: None,
            recent: VecDeque::new(),
        }
    }

    /// Answers every waiting client with `error` (the lease is gone).
    pub fn fail_all(self, error: GfsError, out: &mut Outputs) {
        let waiting = self
            .queue
            .iter()
            .map(|m| (m.client, m.req))
            .chain(self.in_flight.iter().map(|f| (f.client, f.req)));
        for (client, req) in waiting {
            out.send(client, Message::MutateReply { req, result: Err(error) });
        }
    }

    /// When the primary next needs a tick: an in-flight deadline, or the lease's end.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match &self.in_flight {
            Some(in_flight) => Some(in_flight.deadline_ms),
            None => Some(self.expiry_ms),
        }
    }

    fn knows(&self, client: NodeId, req: RequestId) -> bool {
        self.queue.iter().any(|m| m.client == client && m.req == req)
            || self.in_flight.as_ref().is_some_and(|f| f.client == client && f.req == req)
    }
}

impl Chunkserver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_mutate(
        &mut self,
        now_ms: u64,
        client: NodeId,
        req: RequestId,
        handle: ChunkHandle,
        version: Version,
        data_id: DataId,
        kind: MutationKind,
        out: &mut Outputs,
    ) {
        let reply =
            |result, out: &mut Outputs| out.send(client, Message::MutateReply { req, result });
        let Some(replica) = self.replicas.get_mut(&handle) else {
            return reply(Err(GfsError::NoSuchChunk), out);
        };
        if replica.meta.version != version {
            return reply(Err(GfsError::StaleVersion), out);
        }
        let Some(lease) = replica
            .lease
            .as_mut()
            .filter(|lease| lease.version == version && lease.expiry_ms > now_ms)
        else {
            return reply(Err(GfsError::NotPrimary), out);
        };
        if let Some((_, result)) = lease.recent.iter().find(|(key, _)| *key == (client, req)) {
            return reply(*result, out);
        }
        if lease.knows(client, req) {
            return; // a duplicate of a mutation under way
        }
        lease.queue.push_back(ClientMutation { client, req, data_id, kind });
        self.pump(now_ms, handle, out);
    }

    /// Starts the next queued mutation if none is in flight.
    fn pump(&mut self, now_ms: u64, handle: ChunkHandle, out: &mut Outputs) {
        let chunk_size = self.config.chunk_size_bytes as usize;
        let max_record = self.config.max_record_bytes() as usize;
        let timeout_ms = self.config.rpc_timeout_ms;
        loop {
            let Some(replica) = self.replicas.get_mut(&handle) else {
                return;
            };
            let chunk_len = replica.meta.len_bytes as usize;
            let Some(lease) = replica.lease.as_mut() else {
                return;
            };
            if lease.in_flight.is_some() {
                return;
            }
            if lease.expiry_ms <= now_ms {
                let expired = replica.lease.take().expect("checked");
                expired.fail_all(GfsError::NotPrimary, out);
                return;
            }
            let Some(next) = lease.queue.pop_front() else {
                return;
            };
            let reject = |error, out: &mut Outputs| {
                out.send(next.client, Message::MutateReply { req: next.req, result: Err(error) })
            };
            let Some(bytes) = self.buffer.get(next.data_id) else {
                reject(GfsError::DataMissing, out);
                continue;
            };
            let (offset, data, pad_to_end, result) = match next.kind {
                MutationKind::Write { offset } => {
                    if offset as usize + bytes.len() > chunk_size {
                        reject(GfsError::TooLarge, out);
                        continue;
                    }
                    (offset, bytes.to_vec(), false, Ok(offset))
                }
                MutationKind::Append => {
                    if bytes.len() > max_record {
                        reject(GfsError::TooLarge, out);
                        continue;
                    }
                    let offset = chunk_len as u32;
                    if chunk_len + bytes.len() > chunk_size {
                        (offset, Vec::new(), true, Err(GfsError::ChunkFull))
                    } else {
                        (offset, bytes.to_vec(), false, Ok(offset))
                    }
                }
            };
            let serial = lease.next_serial;
            lease.next_serial += 1;
            lease.last_mutation_ms = now_ms;
            let apply_data =
                if pad_to_end { ApplyData::PadToEnd } else { ApplyData::Pushed(next.data_id) };
            for secondary in &lease.secondaries {
                out.send(
                    *secondary,
                    Message::Apply {
                        handle,
                        version: lease.version,
                        serial,
                        lease_expiry_ms: lease.expiry_ms,
                        offset,
                        data: apply_data.clone(),
                    },
                );
            }
            lease.in_flight = Some(InFlight {
                serial,
                client: next.client,
                req: next.req,
                result,
                waiting: lease.secondaries.iter().copied().collect(),
                local_done: false,
                failure: None,
                deadline_ms: now_ms + timeout_ms,
            });
            let job =
                Job::Mutate { offset, data, pad_to_end, done: MutationFor::Primary { serial } };
            self.enqueue(now_ms, handle, job, out);
            return;
        }
    }

    /// The mutation in flight on `handle` if it is `serial`.
    fn in_flight_mut(&mut self, handle: ChunkHandle, serial: u64) -> Option<&mut InFlight> {
        self.replicas
            .get_mut(&handle)
            .and_then(|replica| replica.lease.as_mut())
            .and_then(|lease| lease.in_flight.as_mut())
            .filter(|in_flight| in_flight.serial == serial)
    }

    pub(super) fn primary_local_done(
        &mut self,
        now_ms: u64,
        handle: ChunkHandle,
        serial: u64,
        result: Result<(), GfsError>,
        out: &mut Outputs,
    ) {
        let in_flight = self.in_flight_mut(handle, serial);
        if let Some(in_flight) = in_flight {
            in_flight.local_done = true;
            if let Err(error) = result {
                in_flight.failure = Some(error);
            }
            self.complete_if_done(now_ms, handle, out);
        }
    }

    pub(super) fn on_apply_ack(
        &mut self,
        now_ms: u64,
        from: NodeId,
        handle: ChunkHandle,
        serial: u64,
        result: Result<(), GfsError>,
        out: &mut Outputs,
    ) {
        let in_flight = self.in_flight_mut(handle, serial);
        if let Some(in_flight) = in_flight {
            if in_flight.waiting.remove(&from) && result.is_err() {
                in_flight.failure = Some(GfsError::ReplicaFailed);
            }
            self.complete_if_done(now_ms, handle, out);
        }
    }

    pub(super) fn primary_tick(&mut self, now_ms: u64, handle: ChunkHandle, out: &mut Outputs) {
        self.complete_if_done(now_ms, handle, out);
        self.pump(now_ms, handle, out);
    }

    /// Answers the client once the local write is durable and every secondary answered (or the
    /// deadline passed), then starts the next mutation.
    fn complete_if_done(&mut self, now_ms: u64, handle: ChunkHandle, out: &mut Outputs) {
        let Some(lease) = self.replicas.get_mut(&handle).and_then(|replica| replica.lease.as_mut())
        else {
            return;
        };
        let Some(in_flight) = &lease.in_flight else {
            return;
        };
        let answered = in_flight.waiting.is_empty() || in_flight.failure.is_some();
        if !in_flight.local_done || !(answered || now_ms >= in_flight.deadline_ms) {
            return;
        }
        let in_flight = lease.in_flight.take().expect("checked");
        let result = match (in_flight.failure, in_flight.waiting.is_empty()) {
            (Some(error), _) => Err(error),
            (None, false) => Err(GfsError::Timeout),
            (None, true) => in_flight.result,
        };
        lease.recent.push_back(((in_flight.client, in_flight.req), result));
        if lease.recent.len() > RECENT_ANSWERS {
            lease.recent.pop_front();
        }
        out.send(in_flight.client, Message::MutateReply { req: in_flight.req, result });
        self.pump(now_ms, handle, out);
    }
}
