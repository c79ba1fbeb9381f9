//! One test per client operation and background duty, on a fault-free simulated cluster: the
//! happy path and its failure paths (missing files, duplicates, crashed or stale or corrupt
//! replicas, a restarted master).

use gfs::client::{ClientOp, OpOutput};
use gfs::service::GfsNode;
use gfs::wire::{GfsError, NodeId};
use gfs_sim::model::write_bytes;
use gfs_sim::world::{Role, World};
use gfs_sim::{Settings, MASTER_ID};

const CLIENT: NodeId = 5;
const CHUNK: u64 = 8192;

struct Cluster {
    world: World,
    client: usize,
}

impl Cluster {
    fn new(chunkservers: u32) -> Self {
        let config = Settings::from_seed(0).config();
        let mut world = World::new(1, config);
        world.delay_min_ms = 1;
        world.delay_max_ms = 3;
        world.add_node(MASTER_ID, Role::Master);
        for k in 1..=chunkservers {
            world.add_node(10 * k, Role::Chunkserver);
        }
        let client = world.add_node(CLIENT, Role::Client);
        let mut cluster = Cluster { world, client };
        // The master grants leases only a lease period after it starts.
        cluster.idle(1500);
        cluster
    }

    fn idle(&mut self, ms: u64) {
        let until = self.world.now_ms + ms;
        while self.world.run_one(until) {}
        self.world.client_events.clear();
    }

    fn op(&mut self, op: ClientOp) -> Result<OpOutput, GfsError> {
        let client = self.client;
        let op_id = self
            .world
            .with_client(client, |c, now, out| c.submit(now, op, out))
            .expect("client is up");
        let limit = self.world.now_ms + 30_000;
        loop {
            if let Some(at) = self.world.client_events.iter().position(|(_, e)| e.op == op_id) {
                let (_, event) = self.world.client_events.remove(at);
                return event.result;
            }
            assert!(self.world.now_ms < limit, "operation never completed");
            self.world.run_one(limit);
        }
    }

    fn create(&mut self, path: &str) {
        let result = self.op(ClientOp::Create { path: path.into() });
        assert_eq!(result, Ok(OpOutput::Done), "create {path}");
    }

    fn write(&mut self, path: &str, offset: u64, data: Vec<u8>) -> Result<OpOutput, GfsError> {
        self.op(ClientOp::Write { path: path.into(), offset, data })
    }

    fn read(&mut self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, GfsError> {
        match self.op(ClientOp::Read { path: path.into(), offset, len })? {
            OpOutput::Data(data) => Ok(data),
            other => panic!("a read returned {other:?}"),
        }
    }

    fn index(&self, id: NodeId) -> usize {
        self.world.index_of(id)
    }

    fn master(&self) -> &gfs::master::Master {
        match self.world.nodes[self.index(MASTER_ID)].gfs() {
            Some(GfsNode::Master(master)) => master,
            _ => panic!("master is down"),
        }
    }

    fn chunkserver(&self, id: NodeId) -> &gfs::chunkserver::Chunkserver {
        match self.world.nodes[self.index(id)].gfs() {
            Some(GfsNode::Chunkserver(server)) => server,
            _ => panic!("chunkserver {id} is down"),
        }
    }

    /// Chunkservers holding `handle`.
    fn holders(&self, handle: u64) -> Vec<NodeId> {
        self.world
            .nodes
            .iter()
            .filter_map(|node| match node.gfs() {
                Some(GfsNode::Chunkserver(server))
                    if server.replica_versions().iter().any(|r| r.handle == handle) =>
                {
                    Some(node.id)
                }
                _ => None,
            })
            .collect()
    }

    fn handles_of(&self, path: &str) -> Vec<u64> {
        self.master().state().files[path].chunks.iter().flatten().copied().collect()
    }
}

#[test]
fn create_then_duplicate_and_invalid_paths_fail() {
    let mut cluster = Cluster::new(3);
    cluster.create("/a");
    assert_eq!(cluster.op(ClientOp::Create { path: "/a".into() }), Err(GfsError::AlreadyExists));
    for bad in ["relative", "/.trash/x", "/a//b", "/"] {
        assert_eq!(
            cluster.op(ClientOp::Create { path: bad.into() }),
            Err(GfsError::InvalidPath),
            "{bad}"
        );
    }
}

#[test]
fn list_shows_files_under_a_prefix_only() {
    let mut cluster = Cluster::new(3);
    for path in ["/d/x", "/d/y", "/e/z"] {
        cluster.create(path);
    }
    let listing = cluster.op(ClientOp::List { prefix: "/d/".into() });
    assert_eq!(listing, Ok(OpOutput::Listing(vec!["/d/x".into(), "/d/y".into()])));
    let empty = cluster.op(ClientOp::List { prefix: "/none/".into() });
    assert_eq!(empty, Ok(OpOutput::Listing(vec![])));
}

#[test]
fn write_spanning_chunks_reads_back_and_holes_read_as_zeros() {
    let mut cluster = Cluster::new(3);
    cluster.create("/f");
    let data = write_bytes(1, 5000, 2 * CHUNK);
    assert_eq!(cluster.write("/f", 5000, data.clone()), Ok(OpOutput::Done));
    assert_eq!(cluster.read("/f", 5000, 2 * CHUNK), Ok(data));
    assert_eq!(cluster.read("/f", 0, 100), Ok(vec![0; 100]), "before the write");
    assert_eq!(cluster.read("/f", 10 * CHUNK, 10), Ok(vec![0; 10]), "past the end");
    assert_eq!(cluster.handles_of("/f").len(), 3, "the write touched three chunks");
}

#[test]
fn write_and_read_of_a_missing_file_fail() {
    let mut cluster = Cluster::new(3);
    assert_eq!(cluster.write("/missing", 0, vec![1; 10]), Err(GfsError::NotFound));
    assert_eq!(cluster.read("/missing", 0, 10), Err(GfsError::NotFound));
}

#[test]
fn write_survives_a_crashed_chunkserver_and_the_stale_replica_is_dropped() {
    let mut cluster = Cluster::new(4);
    cluster.create("/f");
    let first = write_bytes(1, 0, 1000);
    assert_eq!(cluster.write("/f", 0, first), Ok(OpOutput::Done));
    let handle = cluster.handles_of("/f")[0];
    let victim = cluster.holders(handle)[0];
    let victim_index = cluster.index(victim);
    cluster.world.crash(victim_index);
    cluster.idle(1200); // the lease runs out; the master notices the silence
    let second = write_bytes(2, 0, 1000);
    assert_eq!(cluster.write("/f", 0, second.clone()), Ok(OpOutput::Done));
    cluster.world.boot(victim_index);
    cluster.idle(3000);
    // The stale replica (old version) was deleted, and re-replication restored the goal.
    let holders = cluster.holders(handle);
    assert_eq!(holders.len(), 3, "back at the goal: {holders:?}");
    let current = cluster.master().state().chunks[&handle].version;
    for id in holders {
        let report = cluster.chunkserver(id).replica_versions();
        let version = report.iter().find(|r| r.handle == handle).unwrap().version;
        assert!(version >= current, "node {id} kept a stale replica");
    }
    assert_eq!(cluster.read("/f", 0, 1000), Ok(second));
}

#[test]
fn read_moves_past_a_corrupt_replica_which_is_then_replaced() {
    let mut cluster = Cluster::new(3);
    cluster.create("/f");
    let data = write_bytes(3, 0, 3000);
    assert_eq!(cluster.write("/f", 0, data.clone()), Ok(OpOutput::Done));
    let handle = cluster.handles_of("/f")[0];
    // Corrupt the replica the client reads first (the nearest: node 10 to client 5).
    let server = cluster.chunkserver(10);
    let (slot, _) = server.replica_slot(handle).expect("node 10 holds the chunk");
    let at = server.layout().data_sector(slot, 0) as usize * gfs::disk::SECTOR_BYTES + 100;
    let index = cluster.index(10);
    cluster.world.nodes[index].disk[at] ^= 0xFF;
    assert_eq!(cluster.read("/f", 0, 3000), Ok(data.clone()));
    cluster.idle(3000);
    assert_eq!(cluster.holders(handle).len(), 3, "the corrupt copy was re-replicated");
    assert_eq!(cluster.read("/f", 0, 3000), Ok(data));
}

#[test]
fn record_append_returns_offsets_pads_full_chunks_and_rejects_big_records() {
    let mut cluster = Cluster::new(3);
    cluster.create("/log");
    let mut records = Vec::new();
    for id in 0..6u64 {
        let record = write_bytes(100 + id, 0, 1900);
        let Ok(OpOutput::Appended { offset }) =
            cluster.op(ClientOp::Append { path: "/log".into(), data: record.clone() })
        else {
            panic!("append {id} failed");
        };
        records.push((offset, record));
    }
    // Four records fill 7600 of a chunk's 8192 bytes; the fifth goes to the next chunk.
    assert_eq!(records[4].0, CHUNK, "the first chunk was padded");
    for (offset, record) in &records {
        assert_eq!(cluster.read("/log", *offset, record.len() as u64).as_ref(), Ok(record));
    }
    let too_big = vec![1; (CHUNK / 4) as usize + 1];
    let result = cluster.op(ClientOp::Append { path: "/log".into(), data: too_big });
    assert_eq!(result, Err(GfsError::TooLarge));
    let missing = cluster.op(ClientOp::Append { path: "/nope".into(), data: vec![1] });
    assert_eq!(missing, Err(GfsError::NotFound));
}

#[test]
fn snapshot_is_copy_on_write_and_checks_its_paths() {
    let mut cluster = Cluster::new(3);
    cluster.create("/src");
    let before = write_bytes(1, 0, 2000);
    assert_eq!(cluster.write("/src", 0, before.clone()), Ok(OpOutput::Done));
    let snapshot = ClientOp::Snapshot { source: "/src".into(), target: "/snap".into() };
    assert_eq!(cluster.op(snapshot.clone()), Ok(OpOutput::Done));
    assert_eq!(cluster.handles_of("/src"), cluster.handles_of("/snap"), "shared");
    let after = write_bytes(2, 0, 2000);
    assert_eq!(cluster.write("/src", 0, after.clone()), Ok(OpOutput::Done));
    assert_ne!(cluster.handles_of("/src"), cluster.handles_of("/snap"), "copied on write");
    assert_eq!(cluster.read("/snap", 0, 2000), Ok(before));
    assert_eq!(cluster.read("/src", 0, 2000), Ok(after));
    assert_eq!(cluster.op(snapshot), Err(GfsError::AlreadyExists));
    let missing = ClientOp::Snapshot { source: "/none".into(), target: "/t".into() };
    assert_eq!(cluster.op(missing), Err(GfsError::NotFound));
}

#[test]
fn delete_hides_the_file_then_garbage_collection_frees_its_chunks() {
    let mut cluster = Cluster::new(3);
    cluster.create("/f");
    assert_eq!(cluster.write("/f", 0, vec![7; 500]), Ok(OpOutput::Done));
    let handle = cluster.handles_of("/f")[0];
    assert_eq!(cluster.op(ClientOp::Delete { path: "/f".into() }), Ok(OpOutput::Done));
    assert_eq!(cluster.read("/f", 0, 10), Err(GfsError::NotFound));
    let listing = cluster.op(ClientOp::List { prefix: "/".into() });
    assert_eq!(listing, Ok(OpOutput::Listing(vec![])));
    assert_eq!(cluster.holders(handle).len(), 3, "still there during retention");
    cluster.idle(3000);
    assert!(cluster.holders(handle).is_empty(), "collected after retention");
    assert!(cluster.master().state().files.is_empty(), "trash emptied");
    assert_eq!(cluster.op(ClientOp::Delete { path: "/f".into() }), Err(GfsError::NotFound));
}

#[test]
fn restarted_master_recovers_namespace_and_serves_data() {
    let mut cluster = Cluster::new(3);
    for name in ["/a", "/b", "/c"] {
        cluster.create(name);
    }
    let data = write_bytes(9, 0, 3 * CHUNK);
    assert_eq!(cluster.write("/a", 0, data.clone()), Ok(OpOutput::Done));
    // Enough records to force a checkpoint (the simulator's threshold is 16 KiB of log).
    for n in 0..150 {
        cluster.create(&format!("/many/{n:03}"));
    }
    assert!(
        cluster.master().log_sectors_used() < 100,
        "150 flushes of one sector each: a checkpoint must have restarted the log"
    );
    let before = cluster.master().durable_state().cloned().expect("check_recovery is on");
    let index = cluster.index(MASTER_ID);
    cluster.world.crash(index);
    cluster.world.boot(index);
    cluster.idle(2000);
    assert_eq!(cluster.master().recovered_state(), Some(&before));
    assert_eq!(cluster.master().recovery_errors(), 0);
    assert_eq!(cluster.read("/a", 0, 3 * CHUNK), Ok(data));
    assert_eq!(cluster.op(ClientOp::Create { path: "/b".into() }), Err(GfsError::AlreadyExists));
}

#[test]
fn lost_chunkserver_is_re_replicated() {
    let mut cluster = Cluster::new(5);
    cluster.create("/f");
    assert_eq!(cluster.write("/f", 0, vec![3; 3 * CHUNK as usize]), Ok(OpOutput::Done));
    let handles = cluster.handles_of("/f");
    let victim = cluster.holders(handles[0])[0];
    let index = cluster.index(victim);
    cluster.world.crash(index);
    cluster.idle(4000);
    for handle in handles {
        let holders = cluster.holders(handle);
        assert_eq!(holders.len(), 3, "chunk {handle:#x} back at the goal");
        assert!(!holders.contains(&victim));
    }
}
