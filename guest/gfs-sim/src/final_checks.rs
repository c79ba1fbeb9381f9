//! Checks made after the faults stop: replication back at the goal, garbage collected, and
//! every acknowledged write and record append read back intact.

use gfs::client::{ClientOp, OpOutput};
use gfs::wire::crc32c;

use crate::{fail, Failure, Sim, READ_BACK_LIMIT_MS};
use gfs::service::GfsNode;

impl Sim {
    /// Chunkservers holding an intact replica of `handle` at `version` or newer (god view: the
    /// simulator reads their disks directly).
    fn intact_replicas(&self, handle: u64, version: u64) -> usize {
        self.world
            .nodes
            .iter()
            .filter(|node| {
                let Some(GfsNode::Chunkserver(server)) = node.gfs() else {
                    return false;
                };
                let Some((slot, meta)) = server.replica_slot(handle) else {
                    return false;
                };
                if meta.version < version {
                    return false;
                }
                let layout = server.layout();
                let base = layout.data_sector(slot, 0) as usize * gfs::disk::SECTOR_BYTES;
                let blocks = (meta.len_bytes as usize).div_ceil(layout.block_bytes);
                (0..blocks).all(|b| {
                    let at = base + b * layout.block_bytes;
                    crc32c(&node.disk.read(at, layout.block_bytes)) == meta.block_crcs[b]
                })
            })
            .count()
    }

    pub(crate) fn check_replication_and_gc(&mut self) -> Result<(), Failure> {
        let now_ms = self.world.now_ms;
        let master_index = self.world.index_of(crate::MASTER_ID);
        let Some(GfsNode::Master(master)) = self.world.nodes[master_index].gfs() else {
            return Err(fail("liveness: master up", "master is down".into(), now_ms));
        };
        let state = master.state().clone();
        let servers = self.settings.chunkservers as usize;
        let goal = self.world.config.replication_goal.min(servers);
        for (handle, meta) in &state.chunks {
            let intact = self.intact_replicas(*handle, meta.version);
            if intact == 0 {
                self.chunks_lost += 1;
            } else if intact < goal {
                return Err(fail(
                    "liveness: replication returns to the goal",
                    format!(
                        "chunk {handle:#x} v{:#x} has {intact} intact replicas, goal {goal}; master sees {:?}",
                        meta.version,
                        master.locations(*handle)
                    ),
                    now_ms,
                ));
            }
        }
        for node in &self.world.nodes {
            let Some(GfsNode::Chunkserver(server)) = node.gfs() else {
                continue;
            };
            for replica in server.replica_versions() {
                if !state.chunks.contains_key(&replica.handle) {
                    return Err(fail(
                        "liveness: deleted chunks are collected",
                        format!("node {} still holds orphan chunk {:#x}", node.id, replica.handle),
                        now_ms,
                    ));
                }
            }
        }
        let retention_ms = self.world.config.gc_retention_ms;
        for path in state.files.keys() {
            let expired = gfs::master::state::deleted_at_ms(path)
                .is_some_and(|deleted| deleted + retention_ms * 2 < now_ms);
            if expired {
                return Err(fail(
                    "liveness: deleted files are collected",
                    format!("{path} is still in the trash"),
                    now_ms,
                ));
            }
        }
        Ok(())
    }

    /// Runs one operation on the checker client to completion.
    fn checker_op(
        &mut self,
        op: ClientOp,
    ) -> Result<Result<OpOutput, gfs::wire::GfsError>, Failure> {
        self.checker_result = None;
        let checker = self.checker;
        self.world.with_client(checker, |client, now, out| client.submit(now, op, out));
        let limit = self.world.now_ms + READ_BACK_LIMIT_MS;
        loop {
            let events = std::mem::take(&mut self.world.client_events);
            for (node, event) in events {
                self.on_client_event(node, event)?;
            }
            if let Some(event) = self.checker_result.take() {
                return Ok(event.result);
            }
            if self.world.now_ms >= limit {
                return Err(fail(
                    "liveness: reads complete after faults stop",
                    "the read-back client got no answer".into(),
                    self.world.now_ms,
                ));
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
        }
    }

    pub(crate) fn read_back(&mut self) -> Result<(), Failure> {
        let files: Vec<(String, u64)> = self
            .model
            .files
            .iter()
            .filter(|(_, file)| file.created && !file.deleting && file.extent() > 0)
            .map(|(path, file)| (path.clone(), file.extent()))
            .collect();
        for (path, extent) in files {
            let started_ms = self.world.now_ms;
            let op = ClientOp::Read { path: path.clone(), offset: 0, len: extent };
            match self.checker_op(op)? {
                Ok(OpOutput::Data(data)) => {
                    let file = &self.model.files[&path];
                    file.check_read(0, &data, started_ms, 0).map_err(|detail| {
                        fail(
                            "acknowledged writes survive",
                            format!("read-back of {path}: {detail}"),
                            self.world.now_ms,
                        )
                    })?;
                }
                other if self.chunks_lost == 0 => {
                    return Err(fail(
                        "acknowledged writes survive",
                        format!("read-back of {path} failed: {other:?}"),
                        self.world.now_ms,
                    ));
                }
                _ => {}
            }
        }
        for append in self.model.appends.clone() {
            let op = ClientOp::Read {
                path: append.path.clone(),
                offset: append.offset,
                len: append.data.len() as u64,
            };
            match self.checker_op(op)? {
                Ok(OpOutput::Data(data)) if data == append.data => {}
                other if self.chunks_lost == 0 || other.is_ok() => {
                    let got = match &other {
                        Ok(OpOutput::Data(data)) => {
                            format!("{} bytes, first {:?}", data.len(), &data[..data.len().min(8)])
                        }
                        other => format!("{other:?}"),
                    };
                    return Err(fail(
                        "acknowledged record appends survive intact",
                        format!(
                            "record of {} bytes at {}:{} reads back as {got}",
                            append.data.len(),
                            append.path,
                            append.offset
                        ),
                        self.world.now_ms,
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
