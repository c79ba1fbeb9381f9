//! MapReduce nodes in the VM: `role=mr-coordinator`, `role=mr-worker` and `role=mr-job`, each a
//! `mapreduce` crate [`MrNode`] run by its driver over the same mesh, disk and cluster clock as
//! the GFS roles (see [`super::node`]).
//!
//! Command line (space separated; `ip=`, `gw=`, `mac=` as for every networked role):
//!
//! ```text
//! role=mr-coordinator node=4 ip=10.10.0.5/24 master=1:10.10.0.2 chunkservers=2:10.10.0.3,3:10.10.0.4
//!                     [CLUSTER]
//! role=mr-worker      node=5 ip=10.10.0.6/24 coordinator=4:10.10.0.5 master=.. chunkservers=..
//!                     [workers=6:10.10.0.7,...] [CLUSTER]
//! role=mr-job         node=7 ip=10.10.0.8/24 coordinator=4:10.10.0.5 master=.. chunkservers=..
//!                     [files=2] [kib=300] [reduces=2] [seed=1] [limit_s=60] [CLUSTER]
//! CLUSTER: as for the GFS roles ([port=7100] [replicas=2] [chunk_kib=1024] [lease_ms=2000]),
//!          the same on every GFS and MapReduce node
//! ```
//!
//! GFS and MapReduce nodes share one id space and one mesh port. `master=` and `chunkservers=`
//! name the GFS nodes (`ID:ADDRESS`): every frame from one of them is a GFS message (for the
//! node's embedded GFS client), every other frame a MapReduce message. Streams are dialled by
//! the higher id, so MapReduce ids must lie above the GFS ones, the coordinator's below the
//! workers' and the job client's the highest; a worker lists the workers below it (`workers=`)
//! so reducers can fetch from every mapper.
//!
//! The workers need a disk (`--disk`) for their intermediate data. The coordinator and the
//! workers run until the VM is stopped. The job node runs `mapreduce::script::WordCountScript`:
//! it writes `files` text files of `kib` KiB drawn from `seed` into GFS, submits a word count
//! with `reduces` reduce tasks, reads the output back, compares it with a local count, prints
//! `mr job ok` and exits 0; a GFS step that fails is retried until `limit_s` seconds have
//! passed, then the role fails.
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use gfs::driver::Driver;
use gfs::wire::NodeId;
use mapreduce::coordinator::Coordinator;
use mapreduce::script::WordCountScript;
use mapreduce::service::MrNode;
use mapreduce::worker::Worker;
use mapreduce::{Event, MrConfig};

use super::node::{bad, cluster_config, node_id, open_disk, parse_peer, parse_peers};
use super::node::{required_peer, ClusterClock, Report, Wiring};
use super::{number, RoleError};
use crate::cmdline::Cmdline;
use crate::println;
use ftvm_abi::boot::BootInfo;

/// Which MapReduce role this VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Coordinator,
    Worker,
    Job,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Coordinator => "mr-coordinator",
            Kind::Worker => "mr-worker",
            Kind::Job => "mr-job",
        }
    }
}

/// Prints the events worth a console line.
fn report(label: &'static str) -> Report<MrNode> {
    Box::new(move |_: &MrNode, events: Vec<Event>| {
        for event in events {
            match event {
                Event::Assigned { .. }
                | Event::WorkerLost { .. }
                | Event::JobFinished { .. }
                | Event::TaskStarted { .. }
                | Event::ReduceCommitted { .. }
                | Event::JobStatus { .. } => println!("{label}: {event:?}"),
                Event::AttemptFinished { worker, kind, task, outcome, .. } => {
                    println!("{label}: {kind:?} task {task} on worker {worker}: {outcome:?}")
                }
                _ => {}
            }
        }
    })
}

/// The job node's script from `files=`, `kib=`, `reduces=`, `seed=` and `limit_s=`.
fn job_script(args: &Cmdline, chunk_bytes: u64, now_ms: u64) -> Result<WordCountScript, RoleError> {
    let files = number(args, "files", 2)? as usize;
    let kib = number(args, "kib", 300)? as usize;
    let reduces = number(args, "reduces", 2)?;
    if !(1..=16).contains(&files) || !(1..=8192).contains(&kib) || !(1..=64).contains(&reduces) {
        return Err(bad(alloc::format!(
            "files={files} kib={kib} reduces={reduces}: expected 1..=16, 1..=8192, 1..=64"
        )));
    }
    let seed = number(args, "seed", 1)?;
    let limit_s = number(args, "limit_s", 60)?;
    Ok(WordCountScript::new(files, kib, reduces as u32, seed, chunk_bytes, now_ms, limit_s))
}

/// Runs the MapReduce role `kind`; only the job node ever returns on success.
pub fn run(kind: Kind, args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let label = kind.label();
    let me = node_id(args)?;
    let master = required_peer(args, "master")?;
    let chunkservers = parse_peers(args, "chunkservers")?;
    if chunkservers.is_empty() {
        return Err(bad("missing chunkservers=ID:ADDRESS,...".into()));
    }
    let mut addresses = Vec::from([master]);
    addresses.extend(&chunkservers);
    let gfs_ids: BTreeSet<NodeId> = addresses.iter().map(|(id, _)| *id).collect();
    let coordinator_id = match (kind, args.get("coordinator")) {
        (Kind::Coordinator, None) => me,
        (Kind::Coordinator, Some(_)) => {
            return Err(bad("the coordinator takes no coordinator=: its id is its node=".into()));
        }
        (_, None) => return Err(bad("missing coordinator=ID:ADDRESS".into())),
        (_, Some(text)) => {
            let coordinator = parse_peer("coordinator", text)?;
            addresses.push(coordinator);
            coordinator.0
        }
    };
    addresses.extend(parse_peers(args, "workers")?);
    if let Some(id) = gfs_ids.iter().find(|id| **id >= coordinator_id.min(me)) {
        return Err(bad(alloc::format!(
            "GFS node id {id}: MapReduce ids must lie above every GFS node's"
        )));
    }
    if me < coordinator_id || addresses.iter().any(|(id, _)| *id == me) {
        return Err(bad(alloc::format!(
            "node={me}: ids must be unique and the coordinator's ({coordinator_id}) the lowest \
             MapReduce id"
        )));
    }
    let config = MrConfig::for_vms(cluster_config(args, master.0)?, coordinator_id);
    let disk = if kind == Kind::Worker { Some(open_disk(label, info)?) } else { None };
    let disk_sectors = disk.as_ref().map_or(0, |disk| disk.capacity_sectors());
    let seed = crate::drivers::entropy::random_u64();
    let clock = ClusterClock::start();
    let driver = match kind {
        Kind::Coordinator => {
            let coordinator = Coordinator::new(me, config.clone(), seed);
            Driver::new(me, MrNode::Coordinator(Box::new(coordinator)))
        }
        Kind::Worker => {
            let worker = Worker::new(me, config.clone(), None, disk_sectors, seed);
            Driver::new(me, MrNode::Worker(Box::new(worker)))
        }
        Kind::Job => {
            let chunk_bytes = u64::from(config.gfs.chunk_size_bytes);
            let script = job_script(args, chunk_bytes, clock.now_ms())?;
            let mut driver = Driver::new(me, MrNode::job(me, config.clone(), seed));
            driver.set_workload(script.boxed());
            driver
        }
    };
    let decode = Box::new(move |from, bytes: &[u8]| {
        mapreduce::wire::decode_packet(gfs_ids.contains(&from), bytes)
    });
    let wiring = Wiring { label, me, addresses, driver, disk, decode, report: report(label) };
    super::node::run(wiring, &config.gfs, args, info, clock)
}
