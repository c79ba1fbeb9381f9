//! The host side of the guests' mesh (see `guest/kernel/src/mesh.rs`): one
//! TCP stream per node, dialled by the client (whose node id is above every
//! lab node's), opened with the hello frame and carrying frames in the
//! `gfs::wire` format, all encoded by the same `gfs::wire` functions the
//! guests use. Frames from GFS nodes are GFS messages, all others MapReduce
//! messages. Every node is dialled at once and kept dialled (nodes reply
//! only over streams their peers opened), each dial on a thread of its own
//! so a dead host costs no waiting; messages for a node wait in a queue
//! while it is dialled. A reader thread per stream decodes what arrives
//! into one channel; writes happen on the caller's thread. A broken stream
//! is redialled; the message that found it broken is lost, which the state
//! machines treat as message loss and retry.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use gfs::wire::{self, FrameError, NodeId, FRAME_HEADER_BYTES};
use mapreduce::wire::MrMessage;

/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write blocked this long breaks the stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued for a node beyond this many bytes are dropped (lost messages).
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// How long after a failed dial a node is not dialled again.
const REDIAL_DELAY: Duration = Duration::from_millis(300);

/// A message from a lab node.
#[derive(Debug)]
pub enum Packet {
    Gfs(wire::Message),
    Mr(MrMessage),
}

enum Arrival {
    Packet(NodeId, Packet),
    Broken { node: NodeId, stream: u64, why: String },
    Connected { node: NodeId, socket: TcpStream },
    DialFailed { node: NodeId, why: String },
}

struct Stream {
    id: u64,
    socket: TcpStream,
}

/// Streams from this client to the lab's nodes.
pub struct HostMesh {
    me: NodeId,
    port: u16,
    addresses: BTreeMap<NodeId, Ipv4Addr>,
    gfs_ids: BTreeSet<NodeId>,
    max_frame_bytes: usize,
    streams: BTreeMap<NodeId, Stream>,
    /// Nodes being dialled now.
    dialling: BTreeSet<NodeId>,
    /// Frames waiting for a node's stream, and their bytes.
    queues: BTreeMap<NodeId, (Vec<Vec<u8>>, usize)>,
    redial_at: BTreeMap<NodeId, Instant>,
    next_stream: u64,
    tx: Sender<Arrival>,
    rx: Receiver<Arrival>,
    /// Why the last dial of or write to a node failed (cleared by success).
    pub problems: BTreeMap<NodeId, String>,
}

impl HostMesh {
    /// A mesh for client `me` to the nodes at `addresses` (all on `port`);
    /// frames from `gfs_ids` are GFS messages.
    pub fn new(
        me: NodeId,
        port: u16,
        addresses: BTreeMap<NodeId, Ipv4Addr>,
        gfs_ids: BTreeSet<NodeId>,
        max_frame_bytes: usize,
    ) -> HostMesh {
        let (tx, rx) = channel();
        HostMesh {
            me,
            port,
            addresses,
            gfs_ids,
            max_frame_bytes,
            streams: BTreeMap::new(),
            dialling: BTreeSet::new(),
            queues: BTreeMap::new(),
            redial_at: BTreeMap::new(),
            next_stream: 0,
            tx,
            rx,
            problems: BTreeMap::new(),
        }
    }

    /// The address of `node` (for messages).
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.addresses.get(&node).map(|ip| SocketAddr::from((*ip, self.port)))
    }

    /// Sends one whole `frame` to `node` (queued while its stream is dialled).
    pub fn send(&mut self, node: NodeId, frame: &[u8]) {
        let Some(stream) = self.streams.get_mut(&node) else {
            let (queue, bytes) = self.queues.entry(node).or_default();
            if *bytes + frame.len() <= MAX_QUEUED_BYTES {
                *bytes += frame.len();
                queue.push(frame.to_vec());
            }
            self.dial(node);
            return;
        };
        if let Err(error) = stream.socket.write_all(frame) {
            self.problems.insert(node, format!("write: {error}"));
            self.drop_stream(node);
        }
    }

    /// Dials every node without a stream (each at most every `REDIAL_DELAY`).
    pub fn dial_all(&mut self) {
        let nodes: Vec<NodeId> = self.addresses.keys().copied().collect();
        for node in nodes {
            self.dial(node);
        }
    }

    /// Starts dialling `node` unless a stream is up, a dial runs or one failed just now.
    fn dial(&mut self, node: NodeId) {
        if self.streams.contains_key(&node)
            || self.dialling.contains(&node)
            || self.redial_at.get(&node).is_some_and(|at| Instant::now() < *at)
        {
            return;
        }
        let Some(address) = self.address(node) else {
            self.problems.insert(node, "no address known".into());
            return;
        };
        self.dialling.insert(node);
        let hello = wire::encode_hello(self.me);
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let arrival = match connect(address, &hello) {
                Ok(socket) => Arrival::Connected { node, socket },
                Err(why) => Arrival::DialFailed { node, why },
            };
            let _ = tx.send(arrival);
        });
    }

    /// Makes `socket` the stream to `node` and sends what waited for it.
    fn install(&mut self, node: NodeId, socket: TcpStream) {
        let reader = match socket.try_clone() {
            Ok(reader) => reader,
            Err(error) => {
                self.problems.insert(node, format!("socket: {error}"));
                return;
            }
        };
        self.next_stream += 1;
        let id = self.next_stream;
        let tx = self.tx.clone();
        let gfs = self.gfs_ids.contains(&node);
        let max_frame_bytes = self.max_frame_bytes;
        std::thread::spawn(move || read_stream(reader, node, id, gfs, max_frame_bytes, tx));
        self.streams.insert(node, Stream { id, socket });
        self.problems.remove(&node);
        let (queue, _) = self.queues.remove(&node).unwrap_or_default();
        for frame in queue {
            self.send(node, &frame);
        }
    }

    fn drop_stream(&mut self, node: NodeId) {
        if let Some(stream) = self.streams.remove(&node) {
            let _ = stream.socket.shutdown(Shutdown::Both);
        }
    }

    /// The next message, waiting until `deadline` at most.
    pub fn receive(&mut self, deadline: Instant) -> Option<(NodeId, Packet)> {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Arrival::Packet(node, packet)) => return Some((node, packet)),
                Ok(Arrival::Broken { node, stream, why }) => {
                    if self.streams.get(&node).is_some_and(|current| current.id == stream) {
                        self.problems.insert(node, why);
                        self.drop_stream(node);
                        self.dial(node);
                    }
                }
                Ok(Arrival::Connected { node, socket }) => {
                    self.dialling.remove(&node);
                    self.install(node, socket);
                }
                Ok(Arrival::DialFailed { node, why }) => {
                    self.dialling.remove(&node);
                    self.problems.insert(node, why);
                    self.redial_at.insert(node, Instant::now() + REDIAL_DELAY);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for HostMesh {
    fn drop(&mut self) {
        // Ends the reader threads too.
        for stream in self.streams.values() {
            let _ = stream.socket.shutdown(Shutdown::Both);
        }
    }
}

/// Dials `address` and says hello.
fn connect(address: SocketAddr, hello: &[u8]) -> Result<TcpStream, String> {
    let mut socket = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let _ = socket.set_nodelay(true);
    let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
    socket.write_all(hello).map_err(|error| format!("hello to {address}: {error}"))?;
    Ok(socket)
}

/// Decodes every frame node `node` sends on stream `id` into `tx`, until
/// the stream ends or carries garbage.
fn read_stream(
    mut socket: TcpStream,
    node: NodeId,
    id: u64,
    gfs: bool,
    max_frame_bytes: usize,
    tx: Sender<Arrival>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut piece = vec![0u8; 256 * 1024];
    let why = loop {
        let read = match socket.read(&mut piece) {
            Ok(0) => break "the node closed the stream".to_string(),
            Ok(read) => read,
            Err(error) => break format!("read: {error}"),
        };
        buffer.extend_from_slice(&piece[..read]);
        let mut start = 0;
        let broken = loop {
            let rest = &buffer[start..];
            if rest.len() >= 4 {
                let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                if len + FRAME_HEADER_BYTES > max_frame_bytes {
                    break Some(format!("a {len}-byte frame is larger than any message"));
                }
            }
            let decoded = if gfs {
                wire::decode_frame(rest).map(|(msg, used)| (Packet::Gfs(msg), used))
            } else {
                mapreduce::wire::decode_frame(rest).map(|(msg, used)| (Packet::Mr(msg), used))
            };
            match decoded {
                Ok((packet, used)) => {
                    start += used;
                    if tx.send(Arrival::Packet(node, packet)).is_err() {
                        return;
                    }
                }
                Err(FrameError::Incomplete) => break None,
                Err(error) => break Some(format!("undecodable frame: {error:?}")),
            }
        };
        buffer.drain(..start);
        if let Some(why) = broken {
            break why;
        }
    };
    let _ = tx.send(Arrival::Broken { node, stream: id, why });
}
