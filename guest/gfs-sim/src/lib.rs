//! Seeded deterministic simulation of the `gfs` state machines (VOPR style).
//!
//! One seed drives everything: the cluster's shape, message fates (loss, duplication, delay and
//! so reordering), crash and restart times of chunkservers and the master, silent disk
//! corruption, a lost disk, and the clients' workload. A run has a fault phase, then a fault-free
//! liveness phase, then a final read-back of everything the clients were told was stored.
//! Invariants checked (the run stops at the first violation):
//! - every read returns only bytes some write produced at that offset, never stale data once a
//!   newer write was acknowledged (beyond the client cache lifetime) and never garbage;
//! - every acknowledged write and record append reads back intact at the end;
//! - no two chunkservers hold a valid lease for one chunk at once;
//! - a restarted master rebuilds exactly its durable state from checkpoint and log, and no
//!   acknowledged file disappears from listings;
//! - after faults stop, every chunk is back at the replication goal and every replica of a
//!   deleted chunk is collected.

pub mod cli;
pub mod disk_image;
mod final_checks;
pub mod model;
pub mod settings;
pub mod workload;
pub mod world;

use gfs::client::{ClientEvent, OpOutput};
use gfs::master::state::{LogRecord, PersistentState};
use gfs::wire::{GfsError, NodeId};

use gfs::service::GfsNode;
use model::{FileModel, Model};
pub use settings::Settings;
use workload::{ClientDriver, Pending};
use world::{Role, Stats, World};

/// The master's node id in the simulator.
pub const MASTER_ID: NodeId = 0;
/// The node id of the client that reads everything back at the end.
pub const CHECKER_ID: NodeId = 999;
/// Clients still busy this long after the fault phase are a liveness failure.
const CLIENT_DRAIN_LIMIT_MS: u64 = 60_000;
/// The final read-back must finish within this.
const READ_BACK_LIMIT_MS: u64 = 60_000;

/// An invariant that did not hold.
#[derive(Clone, Debug)]
pub struct Failure {
    pub invariant: &'static str,
    pub detail: String,
    pub at_ms: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub settings: Settings,
    pub failure: Option<Failure>,
    pub stats: Stats,
    pub sim_ms: u64,
    pub ops_completed: u64,
    pub bytes_acked: u64,
    pub chunks_lost: u64,
    /// Trace lines (only when asked for).
    pub trace: Vec<String>,
    /// The world's digest of the run (see [`World::digest`]).
    pub world_digest: u64,
}

impl cli::Report for Outcome {
    fn failure(&self) -> Option<String> {
        let failure = self.failure.as_ref()?;
        Some(cli::failure_text(failure.invariant, failure.at_ms, &failure.detail))
    }

    fn trace(&self) -> &[String] {
        &self.trace
    }

    fn summary(&self) -> String {
        format!(
            "{} ops, {} bytes acknowledged, {} sim ms, {} steps, {} chunks lost to corruption, \
             disk errors {} torn writes {} lost writes {}",
            self.ops_completed,
            self.bytes_acked,
            self.sim_ms,
            self.stats.steps,
            self.chunks_lost,
            self.stats.disk_errors,
            self.stats.torn_writes,
            self.stats.lost_writes
        )
    }

    fn simulated_digest(&self) -> u64 {
        let stats = &self.stats;
        let figures = [
            stats.steps,
            stats.messages,
            stats.message_bytes,
            stats.disk_ops,
            stats.disk_write_bytes,
            stats.disk_errors + (stats.torn_writes << 20) + (stats.lost_writes << 40),
            self.sim_ms,
            self.ops_completed,
            self.bytes_acked,
            self.chunks_lost,
        ];
        world::mix_digest(self.world_digest, &figures)
    }
}

struct Sim {
    world: World,
    model: Model,
    drivers: Vec<ClientDriver>,
    settings: Settings,
    fault_rng: gfs::pcg::Pcg32,
    /// At the master's crash: its durable state and the records a crash may or may not keep.
    master_expected: Option<(PersistentState, Vec<LogRecord>)>,
    down: Vec<(usize, u64)>,
    disk_lost: bool,
    corrupted: std::collections::BTreeSet<u64>,
    ops_completed: u64,
    bytes_acked: u64,
    chunks_lost: u64,
    checker: usize,
    checker_result: Option<ClientEvent>,
}

/// Runs one seeded simulation.
pub fn run(settings: &Settings, trace: bool) -> Outcome {
    let mut sim = Sim::new(settings.clone(), trace);
    let failure = sim.run_all().err();
    Outcome {
        settings: settings.clone(),
        failure,
        stats: sim.world.stats,
        sim_ms: sim.world.now_ms,
        ops_completed: sim.ops_completed,
        bytes_acked: sim.bytes_acked,
        chunks_lost: sim.chunks_lost,
        trace: sim.world.trace.take().unwrap_or_default(),
        world_digest: sim.world.digest(),
    }
}

fn fail(invariant: &'static str, detail: String, at_ms: u64) -> Failure {
    Failure { invariant, detail, at_ms }
}

impl Sim {
    fn new(settings: Settings, trace: bool) -> Self {
        let mut world = World::new(settings.seed, settings.config())
            .with_chunkserver_slots(settings.chunkserver_slots);
        world.drop_per_mille = settings.drop_per_mille;
        world.duplicate_per_mille = settings.duplicate_per_mille;
        world.delay_min_ms = settings.delay_min_ms;
        world.delay_max_ms = settings.delay_max_ms;
        world.start_faults(settings.device_faults);
        if trace {
            world.trace = Some(Vec::new());
        }
        world.add_node(MASTER_ID, Role::Master);
        for k in 1..=settings.chunkservers {
            world.add_node(10 * k, Role::Chunkserver);
        }
        let mut drivers = Vec::new();
        for k in 0..settings.clients {
            let id = 10 * k + 5;
            let index = world.add_node(id, Role::Client);
            drivers.push(ClientDriver::new(index, id, k, &settings));
        }
        let checker = world.add_node(CHECKER_ID, Role::Client);
        Sim {
            world,
            model: Model::default(),
            drivers,
            fault_rng: gfs::pcg::Pcg32::new(settings.seed, 0xFA17),
            settings,
            master_expected: None,
            down: Vec::new(),
            disk_lost: false,
            corrupted: Default::default(),
            ops_completed: 0,
            bytes_acked: 0,
            chunks_lost: 0,
            checker,
            checker_result: None,
        }
    }

    fn run_all(&mut self) -> Result<(), Failure> {
        self.fault_phase()?;
        self.drain_clients()?;
        let until = self.world.now_ms + self.settings.liveness_phase_ms;
        self.run_until(until)?;
        self.check_replication_and_gc()?;
        self.read_back()
    }

    /// Faults and workload together until the fault phase ends.
    fn fault_phase(&mut self) -> Result<(), Failure> {
        let end_ms = self.settings.fault_phase_ms;
        while self.world.now_ms < end_ms {
            let until = (self.world.now_ms + 10).min(end_ms);
            self.run_until(until)?;
            self.inject_faults();
            self.start_client_ops();
        }
        // Faults stop: bring every node back, the network becomes reliable.
        for (index, _) in std::mem::take(&mut self.down) {
            self.restart(index);
        }
        self.world.drop_per_mille = 0;
        self.world.duplicate_per_mille = 0;
        self.world.stop_faults();
        Ok(())
    }

    fn drain_clients(&mut self) -> Result<(), Failure> {
        let limit = self.world.now_ms + CLIENT_DRAIN_LIMIT_MS;
        while self.drivers.iter().any(|d| !d.finished()) {
            if self.world.now_ms >= limit {
                return Err(fail(
                    "liveness: client operations complete after faults stop",
                    "clients still busy a minute after the fault phase".into(),
                    self.world.now_ms,
                ));
            }
            let until = self.world.now_ms + 10;
            self.run_until(until)?;
            self.start_client_ops();
        }
        Ok(())
    }

    /// Runs the world up to `until_ms`, checking invariants after every step.
    fn run_until(&mut self, until_ms: u64) -> Result<(), Failure> {
        while self.world.run_one(until_ms) {
            self.after_step()?;
        }
        Ok(())
    }

    fn after_step(&mut self) -> Result<(), Failure> {
        let stepped = std::mem::take(&mut self.world.stepped);
        for index in stepped {
            match self.world.nodes[index].gfs() {
                Some(GfsNode::Chunkserver(_)) => self.check_leases(index)?,
                Some(GfsNode::Master(_)) => self.check_master_recovery(index)?,
                _ => {}
            }
        }
        let events = std::mem::take(&mut self.world.client_events);
        for (node, event) in events {
            self.on_client_event(node, event)?;
        }
        Ok(())
    }

    fn check_leases(&self, index: usize) -> Result<(), Failure> {
        let now_ms = self.world.now_ms;
        let Some(GfsNode::Chunkserver(server)) = self.world.nodes[index].gfs() else {
            return Ok(());
        };
        for (handle, version) in server.leases_held(now_ms) {
            for (other_index, other) in self.world.nodes.iter().enumerate() {
                if other_index == index {
                    continue;
                }
                if let Some(GfsNode::Chunkserver(other_server)) = other.gfs() {
                    if other_server.holds_lease(handle, now_ms) {
                        return Err(fail(
                            "one lease holder per chunk",
                            format!(
                                "chunk {handle:#x}: nodes {} (version {version:#x}) and {} both hold a valid lease",
                                server.id(),
                                other_server.id()
                            ),
                            now_ms,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_master_recovery(&mut self, index: usize) -> Result<(), Failure> {
        let Some(GfsNode::Master(master)) = self.world.nodes[index].gfs() else {
            return Ok(());
        };
        if master.recovery_errors() > 0 {
            return Err(fail(
                "master recovery replays its log cleanly",
                format!("{} log records failed to apply", master.recovery_errors()),
                self.world.now_ms,
            ));
        }
        let (Some((durable, undurable)), Some(recovered)) =
            (&self.master_expected, master.recovered_state())
        else {
            return Ok(());
        };
        // Acknowledged records must all be back; unacknowledged ones may survive as a prefix.
        let mut expected = durable.clone();
        let mut matched = expected == *recovered;
        for record in undurable {
            if matched {
                break;
            }
            let _ = expected.apply(record);
            matched = expected == *recovered;
        }
        if !matched {
            let expected = durable;
            return Err(fail(
                "a restarted master recovers its namespace",
                format!(
                    "recovered {} files / {} chunks, expected {} files / {} chunks\nexpected {expected:?}\nrecovered {recovered:?}",
                    recovered.files.len(),
                    recovered.chunks.len(),
                    expected.files.len(),
                    expected.chunks.len()
                ),
                self.world.now_ms,
            ));
        }
        self.master_expected = None;
        Ok(())
    }

    fn restart(&mut self, index: usize) {
        self.world.boot(index);
    }

    fn inject_faults(&mut self) {
        let now_ms = self.world.now_ms;
        let tick_ms = 10;
        // Restarts that are due.
        let due: Vec<usize> =
            self.down.iter().filter(|(_, at)| *at <= now_ms).map(|(index, _)| *index).collect();
        self.down.retain(|(_, at)| *at > now_ms);
        for index in due {
            self.restart(index);
        }
        let servers: Vec<usize> = (0..self.world.nodes.len())
            .filter(|i| self.world.nodes[*i].role == Role::Chunkserver)
            .collect();
        let every = self.settings.chunkserver_crash_every_ms;
        if every > 0 && self.fault_rng.chance(tick_ms, every) {
            let pick = servers[self.fault_rng.below(servers.len() as u64) as usize];
            let up = self.world.nodes[pick].machine.is_some();
            // Keep a majority of chunkservers up so data stays reachable.
            if up && self.down.len() < (servers.len() - 1) / 2 {
                self.world.crash(pick);
                let downtime = self.fault_rng.range_inclusive(50, 2500);
                if self.settings.lose_one_disk && !self.disk_lost && self.fault_rng.chance(1, 3) {
                    self.disk_lost = true;
                    self.world.nodes[pick].disk.clear();
                    self.world.log(format!("node {} lost its disk", self.world.nodes[pick].id));
                }
                self.down.push((pick, now_ms + downtime));
            }
        }
        let every = self.settings.master_crash_every_ms;
        if every > 0 && self.fault_rng.chance(tick_ms, every) {
            let index = self.world.index_of(MASTER_ID);
            if let Some(GfsNode::Master(master)) = self.world.nodes[index].gfs() {
                if master.is_ready() {
                    self.master_expected = master
                        .durable_state()
                        .cloned()
                        .map(|state| (state, master.undurable_records()));
                    self.world.crash(index);
                    let downtime = self.fault_rng.range_inclusive(10, 1500);
                    self.down.push((index, now_ms + downtime));
                }
            }
        }
        let every = self.settings.corruption_every_ms;
        if every > 0 && self.fault_rng.chance(tick_ms, every) {
            self.corrupt_one_replica(&servers);
        }
        let every = self.settings.device_faults.partition_every_ms;
        self.world.maybe_partition(&mut self.fault_rng, tick_ms, every);
    }

    /// Flips a byte in the written data of one replica, at most once per chunk (so the other
    /// replicas hold a good copy).
    fn corrupt_one_replica(&mut self, servers: &[usize]) {
        let pick = servers[self.fault_rng.below(servers.len() as u64) as usize];
        let Some(GfsNode::Chunkserver(server)) = self.world.nodes[pick].gfs() else {
            return;
        };
        let candidates: Vec<_> = server
            .replica_versions()
            .into_iter()
            .filter(|r| !self.corrupted.contains(&r.handle))
            .filter_map(|r| {
                server.replica_slot(r.handle).map(|(slot, meta)| (r.handle, slot, meta))
            })
            .filter(|(_, _, meta)| meta.len_bytes > 0)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (handle, slot, meta) =
            candidates[self.fault_rng.below(candidates.len() as u64) as usize].clone();
        let offset = self.fault_rng.below(u64::from(meta.len_bytes)) as usize;
        let sector = server.layout().data_sector(slot, 0);
        let at = sector as usize * gfs::disk::SECTOR_BYTES + offset;
        self.corrupted.insert(handle);
        self.world.nodes[pick].disk[at] ^= 0x5A;
        let id = self.world.nodes[pick].id;
        self.world.log(format!("corrupt node {id} chunk {handle:#x} byte {offset}"));
    }

    fn start_client_ops(&mut self) {
        for k in 0..self.drivers.len() {
            let driver = &mut self.drivers[k];
            if !driver.ready_to_start(self.world.now_ms) {
                continue;
            }
            let (op, pending) =
                driver.next_op(&mut self.model, self.world.now_ms, self.settings.clients);
            let index = driver.index;
            if let Some(op_id) =
                self.world.with_client(index, |client, now, out| client.submit(now, op, out))
            {
                self.drivers[k].pending = Some((op_id, pending));
            }
            let events = std::mem::take(&mut self.world.client_events);
            for (node, event) in events {
                // Immediate completions (e.g. an oversized record) have nothing to check.
                let _ = self.on_client_event(node, event);
            }
        }
    }

    fn on_client_event(&mut self, node: NodeId, event: ClientEvent) -> Result<(), Failure> {
        if node == CHECKER_ID {
            self.checker_result = Some(event);
            return Ok(());
        }
        let now_ms = self.world.now_ms;
        let Some(driver) = self.drivers.iter_mut().find(|d| d.id == node) else {
            return Ok(());
        };
        let Some((op_id, pending)) = driver.pending.take() else {
            return Ok(());
        };
        if op_id != event.op {
            driver.pending = Some((op_id, pending));
            return Ok(());
        }
        driver.op_done(now_ms);
        self.ops_completed += 1;
        let ttl_ms = self.world.config.client_cache_ttl_ms;
        match (pending, event.result) {
            (Pending::Create { path }, Ok(_) | Err(GfsError::AlreadyExists)) => {
                self.model.files.entry(path.clone()).or_default().created = true;
                driver.created(path);
            }
            (Pending::Write { path, write_index }, Ok(_)) => {
                let file = self.model.files.get_mut(&path).expect("written files are modelled");
                file.writes[write_index].acked_ms = Some(now_ms);
                self.bytes_acked += file.writes[write_index].len;
            }
            (Pending::Read { path, offset, issued_ms }, Ok(OpOutput::Data(data))) => {
                if let Some(file) = self.model.files.get(&path).filter(|f| f.created && !f.deleting)
                {
                    file.check_read(offset, &data, issued_ms, ttl_ms).map_err(|detail| {
                        fail(
                            "reads return only written, current bytes",
                            format!(
                                "client {node} read {path} at {offset} (+{}): {detail}",
                                data.len()
                            ),
                            now_ms,
                        )
                    })?;
                }
            }
            (Pending::Read { path, .. }, Err(GfsError::NotFound))
                if self.model.files.get(&path).is_some_and(|f| f.created && !f.deleting) =>
            {
                return Err(fail(
                    "acknowledged files survive",
                    format!("client {node}: {path} was created and never deleted, but is gone"),
                    now_ms,
                ));
            }
            (Pending::Append { path, data }, Ok(OpOutput::Appended { offset })) => {
                self.bytes_acked += data.len() as u64;
                self.model.appends.push(model::AckedAppend { path, offset, data });
            }
            (Pending::Snapshot { source, target, issued_ms }, Ok(_)) => {
                if let Some(file) = self.model.files.get(&source) {
                    let copy: FileModel = file.snapshot(issued_ms, now_ms);
                    self.model.files.insert(target.clone(), copy);
                    driver.snapshotted(target);
                }
            }
            (Pending::List { prefix }, Ok(OpOutput::Listing(names))) => {
                for (path, file) in self.model.files.range(prefix.clone()..) {
                    if !path.starts_with(&prefix) {
                        break;
                    }
                    if file.created && !file.deleting && !names.contains(path) {
                        return Err(fail(
                            "acknowledged files survive",
                            format!("client {node}: listing {prefix} misses {path}"),
                            now_ms,
                        ));
                    }
                }
            }
            _ => {} // failures during faults are allowed; what they leave behind is checked
        }
        Ok(())
    }
}
