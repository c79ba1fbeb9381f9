//! A client's session with a lab: it finds the lab from its state directory,
//! enters the lab's client namespace (this thread only), and drives a GFS
//! client and optionally a MapReduce job client over a [`HostMesh`], on the
//! cluster time the guests use (the host's wall clock in milliseconds).
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gfs::client::{Client, ClientEvent, ClientOp, OpId, OpOutput};
use gfs::wire::{GfsError, NodeId};
use gfs::StateMachine as _;
use mapreduce::job_client::JobClient;
use mapreduce::{Event, MrConfig, StateMachine as _};

use super::mesh::{HostMesh, Packet};
use super::ClientError;
use crate::lab::spec::{Plan, Role};
use crate::lab::state::StateDir;

/// Frames larger than a chunk plus this much break a stream (as in the guests).
const FRAME_SLACK_BYTES: usize = 64 * 1024;

/// Milliseconds of cluster time now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_namespace(ns: &str) -> Result<(), ClientError> {
    let path = format!("/run/netns/{ns}");
    let problem = |source| ClientError::Namespace { ns: ns.to_string(), source };
    let file = std::fs::File::open(&path).map_err(problem)?;
    // SAFETY: setns(2) with a namespace file descriptor we own (kept open
    // for the call); it changes only this thread's network namespace.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(problem(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A client node in the lab.
pub struct Session {
    pub plan: Plan,
    pub mesh: HostMesh,
    me: NodeId,
    gfs: Client,
    gfs_out: gfs::Outputs,
    gfs_events: Vec<ClientEvent>,
    job: JobClient,
    mr_out: mapreduce::Outputs,
    /// MapReduce events (job status) not yet taken.
    pub mr_events: Vec<Event>,
    /// When each node last sent anything.
    pub heard_at: BTreeMap<NodeId, Instant>,
}

impl Session {
    /// A session with the lab kept in `dir`, from the calling thread.
    pub fn open(dir: &StateDir) -> Result<Session, ClientError> {
        let state = dir.load()?;
        ensure_running(&state, &state.plan.master().name)?;
        enter_namespace(&state.names.client())?;
        let plan = state.plan;
        let addresses = plan.vms.iter().map(|vm| (vm.node, vm.ip)).collect();
        let gfs_ids: BTreeSet<NodeId> = plan
            .vms
            .iter()
            .filter(|vm| matches!(vm.role, Role::GfsMaster | Role::GfsChunkserver))
            .map(|vm| vm.node)
            .collect();
        let seed = now_ms() ^ u64::from(std::process::id()) << 32;
        // Above every lab node (they are below 256); unique per client so
        // two clients never take each other's streams.
        let me = 1000 + (seed % 1_000_000_000) as NodeId;
        let master = plan.master().node;
        let gfs_config = plan.cluster.gfs_config(master);
        let max_frame_bytes = gfs_config.chunk_size_bytes as usize + FRAME_SLACK_BYTES;
        let coordinator = plan.coordinator().map_or(0, |vm| vm.node);
        let mr_config = MrConfig::for_vms(gfs_config.clone(), coordinator);
        Ok(Session {
            mesh: HostMesh::new(me, plan.cluster.port, addresses, gfs_ids, max_frame_bytes),
            me,
            gfs: Client::new(me, gfs_config, seed),
            gfs_out: gfs::Outputs::default(),
            gfs_events: Vec::new(),
            job: JobClient::new(me, mr_config),
            mr_out: mapreduce::Outputs::default(),
            mr_events: Vec::new(),
            heard_at: BTreeMap::new(),
            plan,
        })
    }

    /// The GFS chunk size of the lab.
    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.plan.cluster.chunk_kib) * 1024
    }

    /// Sends what the state machines queued.
    fn carry_out(&mut self) {
        for envelope in self.gfs_out.messages.drain(..) {
            self.mesh.send(envelope.to, &gfs::wire::encode_frame(&envelope.msg));
        }
        self.gfs_events.extend(std::iter::from_fn(|| self.gfs.take_event()));
        self.gfs_out.disk.clear();
        for envelope in self.mr_out.messages.drain(..) {
            self.mesh.send(envelope.to, &mapreduce::wire::encode_frame(&envelope.msg));
        }
        for envelope in self.mr_out.gfs_messages.drain(..) {
            self.mesh.send(envelope.to, &gfs::wire::encode_frame(&envelope.msg));
        }
        self.mr_events.append(&mut self.mr_out.events);
        self.mr_out.disk.clear();
    }

    /// Runs the state machines until `until`: messages, then due ticks.
    pub fn pump(&mut self, until: Instant) {
        loop {
            if crate::stop::stop_requested() {
                return;
            }
            let now = now_ms();
            let next_ms = [self.gfs.next_poll_ms(), self.job.next_poll_ms()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
            if next_ms <= now {
                self.gfs.step(now, gfs::Input::Tick, &mut self.gfs_out);
                self.job.step(now, mapreduce::Input::Tick, &mut self.mr_out);
                self.carry_out();
            }
            let tick_at = Instant::now()
                + Duration::from_millis(next_ms.saturating_sub(now_ms()).clamp(1, 60_000));
            let wait_until = until.min(tick_at);
            if let Some((from, packet)) = self.mesh.receive(wait_until) {
                self.heard_at.insert(from, Instant::now());
                let now = now_ms();
                match packet {
                    Packet::Gfs(msg) => {
                        self.gfs.step(now, gfs::Input::Message { from, msg }, &mut self.gfs_out)
                    }
                    Packet::Mr(msg) => {
                        self.job.step(now, mapreduce::Input::Mr { from, msg }, &mut self.mr_out)
                    }
                }
                self.carry_out();
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// Starts a GFS operation; its result comes from [`Session::gfs_result`].
    pub fn gfs_submit(&mut self, op: ClientOp) -> OpId {
        let id = self.gfs.submit(now_ms(), op, &mut self.gfs_out);
        self.carry_out();
        id
    }

    /// The result of operation `op`, if it finished.
    pub fn gfs_result(&mut self, op: OpId) -> Option<Result<OpOutput, GfsError>> {
        let at = self.gfs_events.iter().position(|event| event.op == op)?;
        Some(self.gfs_events.swap_remove(at).result)
    }

    /// Runs one GFS operation to its end; gives up (with `Timeout`) when a
    /// stop is requested (SIGINT/SIGTERM: see [`ClientError::Interrupted`]).
    pub fn gfs_op(&mut self, op: ClientOp) -> Result<OpOutput, GfsError> {
        let id = self.gfs_submit(op);
        loop {
            if let Some(result) = self.gfs_result(id) {
                return result;
            }
            if crate::stop::stop_requested() {
                return Err(GfsError::Timeout);
            }
            self.pump(Instant::now() + Duration::from_millis(50));
        }
    }

    /// Submits (and keeps re-submitting, which doubles as a status query) a MapReduce job.
    pub fn submit_job(&mut self, spec: mapreduce::wire::JobSpec) {
        self.job.submit(now_ms(), spec, &mut self.mr_out);
        self.carry_out();
    }

    /// Why node `node` is unreachable, if the mesh knows.
    pub fn problem(&self, node: NodeId) -> Option<&String> {
        self.mesh.problems.get(&node)
    }

    /// This client's node id.
    pub fn id(&self) -> NodeId {
        self.me
    }
}

/// Fails at once, naming the fix, when no VMM of VM `vm` runs the guest
/// (rather than after a client's retries run out).
pub fn ensure_running(state: &crate::lab::state::LabState, vm: &str) -> Result<(), ClientError> {
    let status = crate::lab::status::status(state);
    match status.vms.iter().find(|status| status.name == vm) {
        // A pair's backup that still runs will go live: only no VMM at all is fatal.
        Some(status) if !status.sides.iter().any(|side| side.alive) => Err(ClientError::Down {
            what: format!("{} `{vm}` (node {})", status.role.guest_role(), status.node),
        }),
        _ => Ok(()),
    }
}

/// Waits until the lab's GFS master answers a listing (from a thread of its
/// own, so the caller stays in its namespace), or `deadline` passes.
pub fn probe_master(dir: &StateDir, deadline: Instant) -> Result<(), ClientError> {
    let dir = dir.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut session = Session::open(&dir)?;
                let master = session.plan.master().node;
                loop {
                    match session.gfs_op(ClientOp::List { prefix: "/".into() }) {
                        Ok(_) => return Ok(()),
                        Err(_) if crate::stop::stop_requested() => {
                            return Err(ClientError::Interrupted)
                        }
                        Err(error) if Instant::now() >= deadline => {
                            let detail = session
                                .problem(master)
                                .cloned()
                                .unwrap_or_else(|| format!("{error:?}"));
                            return Err(ClientError::Unreachable {
                                what: format!("the GFS master (node {master})"),
                                detail,
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            })
            .join()
            .expect("the probe thread does not panic")
    })
}
