//! GFS nodes in the VM: `role=gfs-master`, `role=gfs-chunkserver` and `role=gfs-client`, each a
//! `gfs` crate [`GfsNode`] run by its driver over the mesh and virtio-blk (see [`super::node`]).
//!
//! Command line (space separated; `ip=`, `gw=`, `mac=` as for every networked role):
//!
//! ```text
//! role=gfs-master      node=1 ip=10.10.0.2/24 [gw=..] [CLUSTER]
//! role=gfs-chunkserver node=2 ip=10.10.0.3/24 master=1:10.10.0.2 [peers=3:10.10.0.4,...] [CLUSTER]
//! role=gfs-client      node=9 ip=10.10.0.5/24 master=1:10.10.0.2 peers=2:10.10.0.3,3:10.10.0.4
//!                      [mib=4] [seed=1] [path=/ftvm/pattern] [limit_s=60] [CLUSTER]
//! CLUSTER: [port=7100] [replicas=2] [chunk_kib=1024] [lease_ms=2000]
//! ```
//!
//! `node=` is the node's GFS id; `master=ID:ADDRESS` names the master (the master itself needs
//! no `master=`: its id is its `node=`), `peers=` other nodes as `ID:ADDRESS` pairs. Ids must be
//! unique, the master's the lowest, and a client's higher than every node it talks to: streams
//! are dialled by the higher id (see [`crate::mesh`]). Chunkservers list the other chunkservers
//! (replication chains and re-replication go between them); clients list the chunkservers. The
//! CLUSTER values must be the same on every node (`gfs::Config::for_vms`).
//!
//! The master and the chunkservers need a disk (`--disk`) and run until the VM is stopped. The
//! client runs `gfs::script::PatternScript`: it creates `path`, writes `mib` MiB of a pattern
//! drawn from `seed` in one write, reads the file back, compares, prints `gfs client ok` and
//! exits 0; a step that fails is retried until `limit_s` seconds have passed, then the role
//! fails.
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use gfs::client::ClientEvent;
use gfs::driver::Driver;
use gfs::script::PatternScript;
use gfs::service::GfsNode;
use gfs::wire::NodeId;

use super::node::{bad, bounded, cluster_config, node_id, open_disk, parse_peers};
use super::node::{required_peer, ClusterClock, Report, Wiring};
use super::{number, RoleError};
use crate::cmdline::Cmdline;
use crate::println;
use ftvm_abi::boot::BootInfo;

/// Which GFS role this VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Master,
    Chunkserver,
    Client,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Master => "gfs-master",
            Kind::Chunkserver => "gfs-chunkserver",
            Kind::Client => "gfs-client",
        }
    }
}

/// Console lines: the node is ready; a chunkserver's replicas and bytes when they change.
fn report(label: &'static str, me: NodeId) -> Report<GfsNode> {
    let mut ready_reported = false;
    let mut holdings_reported = (0, 0);
    Box::new(move |node: &GfsNode, _: Vec<ClientEvent>| {
        if !ready_reported && node.is_ready() {
            ready_reported = true;
            println!("{label}: node {me} ready");
        }
        let GfsNode::Chunkserver(chunkserver) = node else { return };
        let replicas = chunkserver.replica_versions();
        let bytes: u64 = replicas
            .iter()
            .filter_map(|report| chunkserver.replica_slot(report.handle))
            .map(|(_, meta)| u64::from(meta.len_bytes))
            .sum();
        if (replicas.len(), bytes) != holdings_reported {
            holdings_reported = (replicas.len(), bytes);
            println!("{label}: node {me} holds {} replicas, {bytes} bytes", replicas.len());
        }
    })
}

/// Runs the GFS role `kind`; only the client ever returns on success.
pub fn run(kind: Kind, args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let label = kind.label();
    let me = node_id(args)?;
    let mut addresses = Vec::new();
    let master_id = if kind == Kind::Master {
        if args.get("master").is_some() {
            return Err(bad("the master takes no master=: its id is its node=".into()));
        }
        me
    } else {
        let master = required_peer(args, "master")?;
        addresses.push(master);
        master.0
    };
    addresses.extend(parse_peers(args, "peers")?);
    for (id, _) in &addresses {
        if *id == me || (*id != master_id && *id < master_id) {
            return Err(bad(alloc::format!(
                "node id {id}: ids must be unique and the master's ({master_id}) the lowest"
            )));
        }
    }
    if me < master_id {
        return Err(bad(alloc::format!("node={me}: below the master's id {master_id}")));
    }
    let config = cluster_config(args, master_id)?;
    let disk = if kind == Kind::Client { None } else { Some(open_disk(label, info)?) };
    let disk_sectors = disk.as_ref().map_or(0, |disk| disk.capacity_sectors());
    let seed = crate::drivers::entropy::random_u64();
    let clock = ClusterClock::start();
    let node = match kind {
        Kind::Master => GfsNode::master(me, config.clone(), disk_sectors, seed),
        Kind::Chunkserver => GfsNode::chunkserver(me, config.clone(), disk_sectors),
        Kind::Client => Ok(GfsNode::client(me, config.clone(), seed)),
    }
    .map_err(RoleError::Check)?;
    let mut driver = Driver::new(me, node);
    if kind == Kind::Client {
        let mib = bounded(args, "mib", 4, 1)?;
        if mib > 64 {
            return Err(bad(alloc::format!("mib={mib}: expected 1..=64")));
        }
        let path = String::from(args.get("path").unwrap_or("/ftvm/pattern"));
        let seed = number(args, "seed", 1)?;
        let limit_s = number(args, "limit_s", 60)?;
        let script = PatternScript::new(path, seed, (mib as usize) << 20, clock.now_ms(), limit_s);
        driver.set_workload(script.boxed());
    }
    let decode = Box::new(|_, bytes: &[u8]| gfs::wire::decode_frame(bytes));
    let report = report(label, me);
    let wiring = Wiring { label, me, addresses, driver, disk, decode, report };
    super::node::run(wiring, &config, args, info, clock)
}
