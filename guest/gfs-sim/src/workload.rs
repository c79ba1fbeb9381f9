//! The clients' workload: each simulated client runs a seeded sequence of operations, one at a
//! time, and records in the model what it issued.

use gfs::client::{ClientOp, OpId};
use gfs::pcg::Pcg32;
use gfs::wire::NodeId;

use crate::model::{write_bytes, Model, WriteRecord};
use crate::Settings;

/// An operation in flight, with what the checker needs to judge its result.
pub enum Pending {
    Create { path: String },
    Delete,
    List { prefix: String },
    Snapshot { source: String, target: String, issued_ms: u64 },
    Read { path: String, offset: u64, issued_ms: u64 },
    Write { path: String, write_index: usize },
    Append { path: String, data: Vec<u8> },
}

/// One client's workload.
pub struct ClientDriver {
    pub index: usize,
    pub id: NodeId,
    pub pending: Option<(OpId, Pending)>,
    number: u32,
    rng: Pcg32,
    ops_left: u32,
    next_start_ms: u64,
    files: Vec<String>,
    snapshots: Vec<String>,
    names_used: u32,
    log_requested: bool,
    chunk_bytes: u64,
    max_record_bytes: u64,
}

impl ClientDriver {
    /// The driver of client number `number` (node `id`, world index `index`).
    pub fn new(index: usize, id: NodeId, number: u32, settings: &Settings) -> Self {
        let config = settings.config();
        ClientDriver {
            index,
            id,
            pending: None,
            number,
            rng: Pcg32::new(settings.seed, 100 + u64::from(number)),
            ops_left: settings.ops_per_client,
            next_start_ms: 0,
            files: Vec::new(),
            snapshots: Vec::new(),
            names_used: 0,
            log_requested: false,
            chunk_bytes: u64::from(config.chunk_size_bytes),
            max_record_bytes: u64::from(config.max_record_bytes()),
        }
    }

    /// True when every operation has been issued and answered.
    pub fn finished(&self) -> bool {
        self.ops_left == 0 && self.pending.is_none()
    }

    /// True when the next operation may start.
    pub fn ready_to_start(&self, now_ms: u64) -> bool {
        self.pending.is_none() && self.ops_left > 0 && now_ms >= self.next_start_ms
    }

    /// The last operation finished: think a little before the next.
    pub fn op_done(&mut self, now_ms: u64) {
        self.next_start_ms = now_ms + self.rng.range_inclusive(0, 40);
    }

    /// A create was acknowledged.
    pub fn created(&mut self, path: String) {
        if !path.ends_with("/log") && !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    /// A snapshot was acknowledged.
    pub fn snapshotted(&mut self, path: String) {
        self.snapshots.push(path);
    }

    fn log_path(number: u64) -> String {
        format!("/c{number}/log")
    }

    fn fresh_name(&mut self, kind: &str) -> String {
        self.names_used += 1;
        format!("/c{}/{kind}{}", self.number, self.names_used)
    }

    fn pick<'a>(&mut self, paths: &'a [String]) -> &'a String {
        &paths[self.rng.below(paths.len() as u64) as usize]
    }

    /// Chooses the next operation and records it in the model.
    pub fn next_op(&mut self, model: &mut Model, now_ms: u64, clients: u32) -> (ClientOp, Pending) {
        self.ops_left -= 1;
        if !self.log_requested {
            // First operation: the client's own record-append log.
            self.log_requested = true;
            let path = Self::log_path(u64::from(self.number));
            model.files.entry(path.clone()).or_default();
            return (ClientOp::Create { path: path.clone() }, Pending::Create { path });
        }
        let roll = self.rng.below(100);
        let chunk = self.chunk_bytes;
        if (roll < 10 && self.files.len() < 4) || self.files.is_empty() && roll < 40 {
            let path = self.fresh_name("f");
            model.files.entry(path.clone()).or_default();
            return (ClientOp::Create { path: path.clone() }, Pending::Create { path });
        }
        if roll < 40 && !self.files.is_empty() {
            let files = self.files.clone();
            let path = self.pick(&files).clone();
            let offset = self.rng.below(3 * chunk);
            let len = 1 + self.rng.below(chunk * 3 / 2);
            let id = model.next_write_id;
            model.next_write_id += 1;
            let file = model.files.entry(path.clone()).or_default();
            file.writes.push(WriteRecord { id, offset, len, issued_ms: now_ms, acked_ms: None });
            let write_index = file.writes.len() - 1;
            let data = write_bytes(id, offset, len);
            let op = ClientOp::Write { path: path.clone(), offset, data };
            return (op, Pending::Write { path, write_index });
        }
        let readable: Vec<String> = self.files.iter().chain(&self.snapshots).cloned().collect();
        if roll < 65 && !readable.is_empty() {
            let path = self.pick(&readable).clone();
            let offset = self.rng.below(3 * chunk);
            let len = 1 + self.rng.below(2 * chunk);
            let op = ClientOp::Read { path: path.clone(), offset, len };
            return (op, Pending::Read { path, offset, issued_ms: now_ms });
        }
        if roll < 88 || self.files.is_empty() {
            let owner = self.rng.below(u64::from(clients));
            let path = Self::log_path(owner);
            let id = model.next_write_id;
            model.next_write_id += 1;
            let len = 1 + self.rng.below(self.max_record_bytes);
            let data = write_bytes(id, 0, len);
            let op = ClientOp::Append { path: path.clone(), data: data.clone() };
            return (op, Pending::Append { path, data });
        }
        if roll < 94 {
            let files = self.files.clone();
            let source = self.pick(&files).clone();
            let target = self.fresh_name("s");
            let op = ClientOp::Snapshot { source: source.clone(), target: target.clone() };
            return (op, Pending::Snapshot { source, target, issued_ms: now_ms });
        }
        if roll < 97 && self.files.len() > 1 {
            let at = self.rng.below(self.files.len() as u64) as usize;
            let path = self.files.remove(at);
            if let Some(file) = model.files.get_mut(&path) {
                file.deleting = true;
            }
            return (ClientOp::Delete { path }, Pending::Delete);
        }
        let prefix = format!("/c{}/", self.number);
        (ClientOp::List { prefix: prefix.clone() }, Pending::List { prefix })
    }
}
