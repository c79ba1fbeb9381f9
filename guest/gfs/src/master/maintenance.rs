//! The master's background duties: heartbeats (replica locations, stale replicas, lease
//! extensions), dead-chunkserver detection, re-replication (fewest replicas first) and lazy
//! garbage collection of deleted files and orphaned chunks.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use super::state::{deleted_at_ms, LogRecord, TRASH_PREFIX};
use super::{Master, ServerRuntime};
use crate::node::Outputs;
use crate::wire::{ChunkHandle, ChunkReport, LeaseExtension, Message, NodeId, Version};

/// Garbage collection removes at most this many files per scan.
const GC_FILES_PER_SCAN: usize = 32;

impl Master {
    pub(super) fn on_heartbeat(
        &mut self,
        now_ms: u64,
        from: NodeId,
        reports: Vec<ChunkReport>,
        extend_leases: Vec<ChunkHandle>,
        out: &mut Outputs,
    ) {
        let skip_check = self.config.knobs.skip_stale_version_check;
        let server = self.servers.entry(from).or_insert_with(|| ServerRuntime {
            last_heartbeat_ms: now_ms,
            chunks: BTreeSet::new(),
        });
        server.last_heartbeat_ms = now_ms;
        let previous = core::mem::take(&mut server.chunks);
        for handle in &previous {
            if let Some(chunk) = self.chunks.get_mut(handle) {
                chunk.locations.remove(&from);
            }
        }
        let mut delete = Vec::new();
        let mut accepted = BTreeSet::new();
        for report in reports {
            match self.state.chunks.get(&report.handle) {
                None if self.reserved_handles.contains(&report.handle) => {}
                None => delete.push(ChunkReport { handle: report.handle, version: Version::MAX }),
                Some(meta) if report.version < meta.version && !skip_check => {
                    delete.push(ChunkReport { handle: report.handle, version: meta.version });
                }
                Some(_) => {
                    let chunk = self.chunks.entry(report.handle).or_default();
                    chunk.locations.insert(from, report.version);
                    accepted.insert(report.handle);
                }
            }
        }
        if let Some(server) = self.servers.get_mut(&from) {
            server.chunks = accepted;
        }
        let mut extended = Vec::new();
        for handle in extend_leases {
            let Some(chunk) = self.chunks.get_mut(&handle) else {
                continue;
            };
            if chunk.busy {
                continue; // a snapshot is waiting for this lease to end
            }
            if let Some(lease) = chunk.lease.as_mut() {
                // A lease names its secondaries. Once one of them is known to have lost the
                // chunk (reported corrupt, missing from its heartbeat, or its server dead),
                // every mutation under the lease fails there, and re-replication waits for
                // leases to end: extended on, the lease would keep the chunk stuck (seed
                // 156430051601792). Left to expire, the next grant names the replicas that
                // hold the chunk.
                let secondaries_hold =
                    lease.secondaries.iter().all(|node| chunk.locations.contains_key(node));
                if lease.primary == from && lease.expiry_ms > now_ms && secondaries_hold {
                    lease.expiry_ms = now_ms + self.config.lease_ms;
                    extended.push(LeaseExtension {
                        handle,
                        version: lease.version,
                        expiry_ms: lease.expiry_ms,
                    });
                }
            }
        }
        out.send(from, Message::HeartbeatReply { delete, extended });
    }

    pub(super) fn on_tick(&mut self, now_ms: u64, out: &mut Outputs) {
        self.expire_tasks(now_ms, out);
        if now_ms < self.next_scan_ms {
            return;
        }
        self.next_scan_ms = now_ms + self.config.master_scan_interval_ms;
        self.forget_dead_servers(now_ms);
        self.collect_garbage(now_ms, out);
        self.re_replicate(now_ms, out);
    }

    fn forget_dead_servers(&mut self, now_ms: u64) {
        let dead_after_ms = self.config.chunkserver_dead_after_ms;
        let dead: Vec<NodeId> = self
            .servers
            .iter()
            .filter(|(_, server)| server.last_heartbeat_ms + dead_after_ms <= now_ms)
            .map(|(node, _)| *node)
            .collect();
        for node in dead {
            let server = self.servers.remove(&node).expect("listed");
            for handle in server.chunks {
                if let Some(chunk) = self.chunks.get_mut(&handle) {
                    chunk.locations.remove(&node);
                }
            }
        }
    }

    /// Removes files deleted longer ago than the retention period; their chunks become
    /// orphans, which chunkservers delete when their next heartbeat reports them.
    fn collect_garbage(&mut self, now_ms: u64, out: &mut Outputs) {
        let retention_ms = self.config.gc_retention_ms;
        let expired: Vec<String> = self
            .state
            .files
            .range(String::from(TRASH_PREFIX)..)
            .take_while(|(name, _)| name.starts_with(TRASH_PREFIX))
            .filter(|(name, _)| {
                deleted_at_ms(name).is_some_and(|deleted| deleted + retention_ms <= now_ms)
            })
            .map(|(name, _)| name.clone())
            .take(GC_FILES_PER_SCAN)
            .collect();
        for path in expired {
            self.log_record(LogRecord::RemoveFile { path }, out);
        }
        let state = &self.state;
        self.chunks.retain(|handle, _| {
            state.chunks.contains_key(handle) || self.reserved_handles.contains(handle)
        });
    }

    /// Copies chunks below the replication goal, those with the fewest replicas first.
    fn re_replicate(&mut self, now_ms: u64, out: &mut Outputs) {
        if now_ms < self.leases_allowed_ms {
            return; // leases of a previous incarnation may still be running
        }
        let running = self.clone_tasks_running();
        let budget = self.config.max_concurrent_clones.saturating_sub(running);
        if budget == 0 {
            return;
        }
        let goal = self.config.replication_goal;
        let mut wanting: Vec<(usize, ChunkHandle)> = self
            .state
            .chunks
            .keys()
            .filter_map(|handle| {
                let chunk = self.chunks.get(handle)?;
                let leased = chunk.lease.as_ref().is_some_and(|l| l.expiry_ms > now_ms);
                if chunk.busy || leased {
                    return None;
                }
                let count = self.current_replicas(*handle).len();
                (count > 0 && count < goal).then_some((count, *handle))
            })
            .collect();
        wanting.sort_unstable();
        for (_, handle) in wanting.into_iter().take(budget) {
            let replicas = self.current_replicas(handle);
            let holders: Vec<NodeId> = self.locations(handle);
            let Some(target) = self.pick_servers(1, &holders).first().copied() else {
                continue;
            };
            let source = replicas[self.rng.below(replicas.len() as u64) as usize];
            self.start_clone(now_ms, handle, source, target, out);
        }
    }

    /// Up to `count` live chunkservers not in `exclude`, least loaded first (ties by chance).
    pub(super) fn pick_servers(&mut self, count: usize, exclude: &[NodeId]) -> Vec<NodeId> {
        let mut candidates: Vec<(usize, u32, NodeId)> = Vec::new();
        for (node, server) in &self.servers {
            if !exclude.contains(node) {
                candidates.push((server.chunks.len(), self.rng.next_u32(), *node));
            }
        }
        candidates.sort_unstable();
        candidates.into_iter().take(count).map(|(_, _, node)| node).collect()
    }
}
