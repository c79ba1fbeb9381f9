//! A GFS or MapReduce node in the VM: the service crates' [`Driver`] run over the devices this
//! kernel supplies, the mesh over smoltcp ([`crate::mesh`]) as its transport and virtio-blk as
//! its disk, on cluster time; plus the command-line pieces the GFS and MapReduce roles share.
//! Everything between the wire and the state machines (the step loop, messages to itself,
//! timers, disk bookkeeping, the scripted workloads) is the driver's, the same code the
//! simulators run.
//!
//! Time: the drivers get milliseconds of *cluster time*, the clock device's wall time sampled
//! once at start plus the monotonic time elapsed since (from the event page on every loop
//! turn), so lease expiries the master hands out mean the same on every VM of one host and
//! never jump. Disk requests are carried out at once (a virtio-blk request completes during its
//! notify exit); writes are flushed before any completion is handed out, so a completed write
//! is durable.
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use gfs::disk::{DiskCompletion, DiskError, DiskOp, DiskRequest, SECTOR_BYTES};
use gfs::driver::{Disk, Driver, Node};
use gfs::wire::{FramedMessage, NodeId};
use gfs::Config;
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::wire::Ipv4Address;

use super::{net_error, number, RoleError};
use crate::cmdline::Cmdline;
use crate::drivers::clock;
use crate::drivers::virtio::block::{BlockDevice, BlockError};
use crate::mesh::{Decoder, Mesh, MeshStats};
use crate::net::service::{Service, Step};
use crate::net::Network;
use crate::println;
use ftvm_abi::boot::{device, BootInfo};

/// The TCP port every node listens on unless `port=` says otherwise.
const DEFAULT_PORT: u64 = 7100;
/// Frames larger than a chunk plus this much are refused.
const FRAME_SLACK_BYTES: usize = 64 * 1024;

pub(super) fn bad(message: String) -> RoleError {
    RoleError::BadCmdline(message)
}

/// Parses `ID:ADDRESS`.
pub(super) fn parse_peer(key: &str, text: &str) -> Result<(NodeId, Ipv4Address), RoleError> {
    let problem = || bad(alloc::format!("{key}={text}: expected ID:ADDRESS such as 2:10.10.0.3"));
    let (id, address) = text.split_once(':').ok_or_else(problem)?;
    let id = id.parse::<NodeId>().map_err(|_| problem())?;
    let address = address.parse::<Ipv4Address>().map_err(|_| problem())?;
    Ok((id, address))
}

/// Parses the required `key=ID:ADDRESS`.
pub(super) fn required_peer(
    args: &Cmdline,
    key: &'static str,
) -> Result<(NodeId, Ipv4Address), RoleError> {
    let text = args.get(key).ok_or_else(|| bad(alloc::format!("missing {key}=ID:ADDRESS")))?;
    parse_peer(key, text)
}

/// The node's own id, from `node=`.
pub(super) fn node_id(args: &Cmdline) -> Result<NodeId, RoleError> {
    match args.get("node") {
        None => Err(bad("missing node=ID (the node's GFS or MapReduce id)".into())),
        Some(_) => Ok(bounded(args, "node", 0, 0)? as NodeId),
    }
}

/// Parses `key=ID:ADDRESS,...` (nothing when `key=` is absent).
pub(super) fn parse_peers(
    args: &Cmdline,
    key: &'static str,
) -> Result<Vec<(NodeId, Ipv4Address)>, RoleError> {
    let text = args.get(key).unwrap_or("");
    text.split(',').filter(|item| !item.is_empty()).map(|item| parse_peer(key, item)).collect()
}

/// A numeric command-line value that must fit a `u32` and be at least `min`.
pub(super) fn bounded(
    args: &Cmdline,
    key: &'static str,
    default: u64,
    min: u64,
) -> Result<u64, RoleError> {
    let value = number(args, key, default)?;
    if value < min || value > u64::from(u32::MAX) {
        return Err(bad(alloc::format!("{key}={value}: expected {min}..={}", u32::MAX)));
    }
    Ok(value)
}

/// The cluster configuration (`chunk_kib=`, `replicas=`, `lease_ms=`): the crate's VM settings.
pub(super) fn cluster_config(args: &Cmdline, master_id: NodeId) -> Result<Config, RoleError> {
    let chunk_kib = bounded(args, "chunk_kib", 1024, 64)?;
    if chunk_kib % 64 != 0 || chunk_kib > 64 * 1024 {
        return Err(bad(alloc::format!(
            "chunk_kib={chunk_kib}: expected a multiple of 64 up to 65536"
        )));
    }
    let replicas = bounded(args, "replicas", 2, 1)?;
    let lease_ms = bounded(args, "lease_ms", 2000, 200)?;
    Ok(Config::for_vms(master_id, (chunk_kib * 1024) as u32, replicas as usize, lease_ms))
}

/// Opens the VM's disk for a role that keeps its state there.
pub(super) fn open_disk(label: &str, info: &BootInfo) -> Result<BlockDevice, RoleError> {
    if info.devices & device::BLOCK == 0 {
        return Err(RoleError::Check(alloc::format!(
            "{label} keeps its state on a disk: start the VM with --disk PATH"
        )));
    }
    let disk = BlockDevice::open()
        .map_err(|error| RoleError::Check(alloc::format!("virtio-blk: {error}")))?;
    if disk.read_only() {
        return Err(RoleError::Check("the disk is read-only".into()));
    }
    Ok(disk)
}

/// The mesh's TCP port from `port=`.
fn parse_port(args: &Cmdline) -> Result<u16, RoleError> {
    let port = number(args, "port", DEFAULT_PORT)?;
    u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| bad(alloc::format!("port={port}: expected 1..65535")))
}

/// Cluster time (see the module doc) from monotonic time and back.
pub(super) struct ClusterClock {
    /// Cluster time minus monotonic time, in nanoseconds.
    offset_ns: u64,
}

impl ClusterClock {
    /// Samples the wall clock once.
    pub(super) fn start() -> Self {
        ClusterClock { offset_ns: clock::wall_ns().saturating_sub(clock::monotonic_ns()) }
    }

    /// Cluster milliseconds at monotonic `now_ns`.
    pub(super) fn cluster_ms(&self, now_ns: u64) -> u64 {
        (now_ns + self.offset_ns) / 1_000_000
    }

    /// Cluster milliseconds now.
    pub(super) fn now_ms(&self) -> u64 {
        self.cluster_ms(clock::monotonic_ns())
    }

    /// The monotonic time of cluster millisecond `cluster_ms`.
    fn monotonic_ns_of(&self, cluster_ms: u64) -> u64 {
        cluster_ms.saturating_mul(1_000_000).saturating_sub(self.offset_ns)
    }
}

/// Counters for the end-of-run line.
#[derive(Default)]
struct DiskStats {
    reads: u64,
    writes: u64,
    flushes: u64,
}

/// The VM's virtio-blk disk behind the driver's [`Disk`]: requests are carried out at once;
/// writes are flushed before any completion is handed out (a failed flush fails them).
struct VirtioDisk {
    device: BlockDevice,
    done: VecDeque<DiskCompletion>,
    /// Completions of writes not yet flushed.
    unflushed: usize,
    stats: DiskStats,
}

fn disk_error(error: BlockError) -> DiskError {
    match error {
        BlockError::PartialSector { .. } | BlockError::OutOfRange { .. } => DiskError::OutOfRange,
        BlockError::ReadOnly | BlockError::Device(_) => DiskError::Io,
    }
}

impl Disk for VirtioDisk {
    fn submit(&mut self, DiskRequest { id, op }: DiskRequest) {
        let result = match op {
            DiskOp::Read { sector, count } => {
                self.stats.reads += 1;
                let mut buf = alloc::vec![0u8; count as usize * SECTOR_BYTES];
                self.device.read(sector, &mut buf).map(|()| buf).map_err(disk_error)
            }
            DiskOp::Write { sector, data } => {
                self.stats.writes += 1;
                let result = self.device.write(sector, &data).map(|()| Vec::new());
                // Queued behind the flush of the writes before it.
                self.unflushed = self.done.len() + 1;
                result.map_err(disk_error)
            }
        };
        self.done.push_back(DiskCompletion { id, result });
    }

    fn take_completion(&mut self) -> Option<DiskCompletion> {
        if self.unflushed > 0 {
            self.stats.flushes += 1;
            if let Err(error) = self.device.flush() {
                println!("disk flush failed: {error}");
                for done in self.done.iter_mut().take(self.unflushed) {
                    if done.result.as_ref().is_ok_and(Vec::is_empty) {
                        done.result = Err(DiskError::Io);
                    }
                }
            }
            self.unflushed = 0;
        }
        self.done.pop_front()
    }
}

/// What a role wires into [`run`]: its node, the peers it knows, how frames from each are
/// decoded, and what it prints along the way.
pub(super) struct Wiring<N: Node> {
    pub(super) label: &'static str,
    pub(super) me: NodeId,
    pub(super) addresses: Vec<(NodeId, Ipv4Address)>,
    pub(super) driver: Driver<N>,
    pub(super) disk: Option<BlockDevice>,
    pub(super) decode: Decoder<N::Message>,
    /// Called after every poll with the node and its new events (console lines).
    pub(super) report: Report<N>,
}

/// A role's console lines about its node and the node's events.
pub(super) type Report<N> = alloc::boxed::Box<dyn FnMut(&N, Vec<<N as Node>::Event>)>;

/// The adapter: mesh, disk and clock around one driver.
struct NodeService<N: Node> {
    driver: Driver<N>,
    mesh: Mesh<N::Message>,
    disk: Option<VirtioDisk>,
    clock: ClusterClock,
    inbox: Vec<(NodeId, N::Message)>,
    report: Report<N>,
}

impl<N: Node> Service for NodeService<N>
where
    N::Message: FramedMessage,
{
    type Output = Result<(), RoleError>;

    fn poll(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
    ) -> Step<Self::Output> {
        let now_ms = self.clock.cluster_ms(now_ns);
        self.mesh.poll(iface, sockets, now_ns, &mut self.inbox);
        for (from, msg) in self.inbox.drain(..) {
            self.driver.receive(from, msg);
        }
        match self.disk.as_mut() {
            Some(disk) => self.driver.poll(now_ms, &mut self.mesh, disk),
            None => self.driver.poll(now_ms, &mut self.mesh, &mut gfs::driver::NoDisk::default()),
        }
        for line in self.driver.take_log() {
            println!("{line}");
        }
        let events = self.driver.take_events();
        (self.report)(self.driver.node(), events);
        self.mesh.flush(sockets);
        if let Some(result) = self.driver.finished() {
            return Step::Done(result.clone().map_err(RoleError::Check));
        }
        let driver_ns =
            self.driver.wake_at_ms(now_ms).map(|at_ms| self.clock.monotonic_ns_of(at_ms));
        let wake_at_ns = [driver_ns, self.mesh.wake_at_ns()].into_iter().flatten().min();
        Step::Continue { wake_at_ns }
    }

    fn after_frame(&mut self, sockets: &mut SocketSet<'static>) {
        self.mesh.refill_listeners(sockets);
    }
}

/// Brings the network up and runs the node until its workload finishes (a node without one
/// runs until the VM is stopped); prints the end-of-run line.
pub(super) fn run<N: Node>(
    wiring: Wiring<N>,
    config: &Config,
    args: &Cmdline,
    info: &BootInfo,
    clock: ClusterClock,
) -> Result<(), RoleError>
where
    N::Message: FramedMessage,
{
    let Wiring { label, me, addresses, driver, disk, decode, report } = wiring;
    let port = parse_port(args)?;
    let mut network = Network::open(info, args).map_err(net_error)?;
    let address = network.address().expect("Network::open sets an address");
    println!(
        "{label}: node {me} at {address} port {port}, {} peers known, chunk {} KiB, replicas {}",
        addresses.len(),
        config.chunk_size_bytes / 1024,
        config.replication_goal
    );
    let max_frame_bytes = config.chunk_size_bytes as usize + FRAME_SLACK_BYTES;
    let entropy = &mut crate::drivers::entropy::KernelEntropy;
    let mesh = Mesh::new(label, me, port, &addresses, max_frame_bytes, decode, entropy);
    let disk = disk.map(|device| VirtioDisk {
        device,
        done: VecDeque::new(),
        unflushed: 0,
        stats: DiskStats::default(),
    });
    let mut node = NodeService { driver, mesh, disk, clock, inbox: Vec::new(), report };
    node.mesh.refill_listeners(&mut network.sockets);
    let result = network.run(&mut node);
    print_stats(label, node.mesh.stats(), node.disk.as_ref().map(|disk| &disk.stats), &node.driver);
    result
}

/// The end-of-run line.
fn print_stats<N: Node>(
    label: &str,
    mesh: &MeshStats,
    disk: Option<&DiskStats>,
    driver: &Driver<N>,
) {
    let disk = disk.unwrap_or(&DiskStats { reads: 0, writes: 0, flushes: 0 });
    println!(
        "{label}: messages sent {} received {} dropped {}, bytes sent {} received {}, \
         streams opened {} broken {}; disk reads {} writes {} flushes {} errors {}",
        mesh.messages_sent,
        mesh.messages_received,
        mesh.messages_dropped,
        mesh.bytes_sent,
        mesh.bytes_received,
        mesh.streams_opened,
        mesh.streams_broken,
        disk.reads,
        disk.writes,
        disk.flushes,
        driver.stats.disk_errors
    );
}
