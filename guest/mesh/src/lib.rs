//! The sans-IO core of the mesh that carries GFS and MapReduce messages between nodes: one
//! framed byte stream per pair of nodes, addressed by node id. It owns the connection table,
//! the hello, the redial timing and the framing; it opens, reads, writes and closes nothing
//! itself. An adapter (the guest kernel's, over smoltcp) names each TCP stream with a
//! [`StreamId`], reports what happened to it and carries out what the core asks for, so
//! everything here runs, and is tested, on the host.
//!
//! Who dials: a node dials every peer it has an address for whose id is *lower* than its own,
//! and accepts streams from everyone else. The dialler's first frame is a hello,
//! `(HELLO_MAGIC, node id)`, which tells the acceptor who is on the other end; a hello from a
//! node that already has a stream replaces the old stream (the peer reconnected). A stream
//! carries frames in the `gfs::wire` format (length, CRC32C, postcard); what a frame's payload
//! is, the owner's decoder decides (it is told the sender).
//!
//! Frames for a peer wait in a per-peer queue until its stream is up and has room. When a
//! stream breaks, the frame that was partly written is dropped (the next stream starts on a
//! frame boundary); the services treat that as message loss and retry. A broken dialled stream
//! is redialled after [`REDIAL_DELAY_NS`]. Bytes a peer sends are never trusted: a corrupt,
//! undecodable or oversized frame, or a stream that is not a mesh node, closes that stream and
//! nothing else.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use gfs::wire::{self, FrameError, NodeId, FRAME_HEADER_BYTES};

/// How long after a dialled stream broke (or was refused) it is dialled again.
pub const REDIAL_DELAY_NS: u64 = 200_000_000;
/// Frames queued for one peer beyond this many bytes are dropped (lost messages).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// A stream that has sent this much without a complete hello is not a mesh node.
pub const MAX_HELLO_BYTES: usize = 64;
/// A dialled stream not up, or an accepted one without its hello, this long after it began is
/// given up (and a dialled one redialled).
pub const SETUP_TIMEOUT_NS: u64 = 3_000_000_000;
/// The first local port the dialler uses, and the last before it wraps.
const LOCAL_PORTS: core::ops::RangeInclusive<u16> = 49152..=65000;

/// Randomness the mesh needs, supplied by its owner (the guest reads a device).
pub trait Entropy {
    fn random_u64(&mut self) -> u64;
}

/// Decodes the first frame of the bytes received from a node into a message and the bytes it
/// used.
pub type Decoder<M> = Box<dyn Fn(NodeId, &[u8]) -> Result<(M, usize), FrameError>>;

/// The adapter's name for one stream.
pub type StreamId = u64;

/// Counters for the end-of-run line.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeshStats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_dropped: u64,
    pub streams_opened: u64,
    pub streams_broken: u64,
}

/// A stream the core wants dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dial {
    pub node: NodeId,
    pub local_port: u16,
}

/// The stream to a known peer.
struct Link {
    stream: StreamId,
    /// Received bytes not yet decoded into frames.
    rx: Vec<u8>,
    /// The hello still to be written (dialled streams only), before any frame.
    preamble: Vec<u8>,
    /// Established (and reported so).
    up: bool,
    /// When the stream was dialled or accepted.
    since_ns: u64,
}

/// Everything the mesh knows about one peer.
#[derive(Default)]
struct Peer {
    /// The core dials this peer (it has an address and a lower id).
    dialled: bool,
    link: Option<Link>,
    /// Whole frames waiting to be written, oldest first.
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already written to the current stream.
    front_written_bytes: usize,
    queued_bytes: usize,
    /// Before this the peer is not dialled again.
    redial_at_ns: u64,
}

/// An accepted stream whose hello has not arrived yet.
struct Greeting {
    rx: Vec<u8>,
    since_ns: u64,
}

/// The mesh of one node (see the crate doc).
pub struct MeshCore<M> {
    me: NodeId,
    max_frame_bytes: usize,
    peers: BTreeMap<NodeId, Peer>,
    /// Which peer each linked stream belongs to.
    linked: BTreeMap<StreamId, NodeId>,
    greetings: BTreeMap<StreamId, Greeting>,
    next_local_port: u16,
    decode: Decoder<M>,
    /// Streams the adapter must close, oldest first.
    to_close: Vec<StreamId>,
    /// Lines worth a console line (streams up and lost).
    log: Vec<String>,
    pub stats: MeshStats,
}

impl<M> MeshCore<M> {
    /// The mesh of node `me`; it dials the peers in `dialled` whose ids are below its own.
    /// Frames larger than `max_frame_bytes` break a stream.
    pub fn new(
        me: NodeId,
        dialled: &[NodeId],
        max_frame_bytes: usize,
        decode: Decoder<M>,
        entropy: &mut impl Entropy,
    ) -> Self {
        let mut peers = BTreeMap::new();
        for node in dialled.iter().filter(|node| **node < me) {
            peers.insert(*node, Peer { dialled: true, ..Peer::default() });
        }
        // Local ports start at random so a restarted node does not reuse the 4-tuple of a
        // stream its peers may still remember.
        let span = u64::from(LOCAL_PORTS.end() - LOCAL_PORTS.start());
        let next_local_port = LOCAL_PORTS.start() + (entropy.random_u64() % span) as u16;
        MeshCore {
            me,
            max_frame_bytes,
            peers,
            linked: BTreeMap::new(),
            greetings: BTreeMap::new(),
            next_local_port,
            decode,
            to_close: Vec::new(),
            log: Vec::new(),
            stats: MeshStats::default(),
        }
    }

    /// Queues a whole `frame` for `to`; it goes out once a stream to `to` is up.
    pub fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        let peer = self.peers.entry(to).or_default();
        if peer.queued_bytes >= MAX_QUEUED_BYTES {
            self.stats.messages_dropped += 1;
            return;
        }
        peer.queued_bytes += frame.len();
        peer.queue.push_back(frame);
        self.stats.messages_sent += 1;
    }

    /// The peers due a dial at `now_ns`, each with the local port to dial from. A dial that
    /// fails needs no report: the peer is dialled again after [`REDIAL_DELAY_NS`].
    pub fn dials_due(&mut self, now_ns: u64) -> Vec<Dial> {
        let mut dials = Vec::new();
        for (node, peer) in &mut self.peers {
            if peer.dialled && peer.link.is_none() && now_ns >= peer.redial_at_ns {
                peer.redial_at_ns = now_ns + REDIAL_DELAY_NS;
                let local_port = self.next_local_port;
                self.next_local_port = if local_port >= *LOCAL_PORTS.end() {
                    *LOCAL_PORTS.start()
                } else {
                    local_port + 1
                };
                dials.push(Dial { node: *node, local_port });
            }
        }
        dials
    }

    /// The adapter dialled `node` (as [`MeshCore::dials_due`] asked) on `stream`.
    pub fn dialled(&mut self, node: NodeId, stream: StreamId, now_ns: u64) {
        let preamble = wire::encode_hello(self.me);
        let link = Link { stream, rx: Vec::new(), preamble, up: false, since_ns: now_ns };
        self.install(node, link, now_ns);
    }

    /// A peer opened `stream` to this node; it is a peer's once its hello arrives.
    pub fn accepted(&mut self, stream: StreamId, now_ns: u64) {
        self.greetings.insert(stream, Greeting { rx: Vec::new(), since_ns: now_ns });
    }

    /// `stream` is established (dialled streams report it; accepted ones may too).
    pub fn established(&mut self, stream: StreamId) {
        let Some(node) = self.linked.get(&stream).copied() else { return };
        let link = self.link_mut(node);
        if !link.up {
            link.up = true;
            self.log.push(alloc::format!("stream to node {node} up"));
        }
    }

    /// `stream` can carry nothing more (reset, closed or timed out).
    pub fn gone(&mut self, stream: StreamId, now_ns: u64) {
        if self.greetings.remove(&stream).is_some() {
            self.to_close.push(stream);
        } else if let Some(node) = self.linked.get(&stream).copied() {
            self.drop_link(node, now_ns);
        }
    }

    /// Bytes arrived on `stream`; every complete message is appended to `inbox` with its
    /// sender. Bytes that are not a hello or not good frames close the stream.
    pub fn received(
        &mut self,
        stream: StreamId,
        bytes: &[u8],
        now_ns: u64,
        inbox: &mut Vec<(NodeId, M)>,
    ) {
        if let Some(greeting) = self.greetings.get_mut(&stream) {
            greeting.rx.extend_from_slice(bytes);
            match wire::decode_hello(&greeting.rx) {
                Err(FrameError::Incomplete) if greeting.rx.len() < MAX_HELLO_BYTES => {}
                Ok((node, used)) if node != self.me => {
                    let mut rx = self.greetings.remove(&stream).expect("found above").rx;
                    rx.drain(..used);
                    let link =
                        Link { stream, rx, preamble: Vec::new(), up: true, since_ns: now_ns };
                    self.install(node, link, now_ns);
                    self.log.push(alloc::format!("stream to node {node} up"));
                    self.decode_link(node, now_ns, inbox);
                }
                _ => {
                    // Not a mesh node: refuse it.
                    self.greetings.remove(&stream);
                    self.to_close.push(stream);
                }
            }
            return;
        }
        let Some(node) = self.linked.get(&stream).copied() else { return };
        self.stats.bytes_received += bytes.len() as u64;
        self.link_mut(node).rx.extend_from_slice(bytes);
        self.decode_link(node, now_ns, inbox);
    }

    /// Gives up streams that took too long to set up.
    pub fn check_timeouts(&mut self, now_ns: u64) {
        let stale: Vec<StreamId> = self
            .greetings
            .iter()
            .filter(|(_, greeting)| now_ns - greeting.since_ns >= SETUP_TIMEOUT_NS)
            .map(|(stream, _)| *stream)
            .collect();
        for stream in stale {
            self.greetings.remove(&stream);
            self.to_close.push(stream);
        }
        let stuck: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, peer)| {
                peer.link
                    .as_ref()
                    .is_some_and(|link| !link.up && now_ns - link.since_ns >= SETUP_TIMEOUT_NS)
            })
            .map(|(node, _)| *node)
            .collect();
        for node in stuck {
            self.drop_link(node, now_ns);
        }
    }

    /// The bytes to write next on `stream` (the hello, then the queued frames), if any.
    pub fn next_write(&self, stream: StreamId) -> Option<&[u8]> {
        let peer = &self.peers[self.linked.get(&stream)?];
        let link = peer.link.as_ref().expect("linked streams have links");
        if !link.preamble.is_empty() {
            return Some(&link.preamble);
        }
        let frame = peer.queue.front()?;
        Some(&frame[peer.front_written_bytes..])
    }

    /// The adapter wrote the first `written` bytes of what [`MeshCore::next_write`] returned.
    pub fn wrote(&mut self, stream: StreamId, written: usize) {
        let Some(node) = self.linked.get(&stream).copied() else { return };
        let peer = self.peers.get_mut(&node).expect("linked peers exist");
        let link = peer.link.as_mut().expect("linked streams have links");
        if !link.preamble.is_empty() {
            link.preamble.drain(..written.min(link.preamble.len()));
            return;
        }
        let Some(frame) = peer.queue.front() else { return };
        self.stats.bytes_sent += written as u64;
        peer.front_written_bytes = (peer.front_written_bytes + written).min(frame.len());
        if peer.front_written_bytes == frame.len() {
            peer.queued_bytes -= frame.len();
            peer.queue.pop_front();
            peer.front_written_bytes = 0;
        }
    }

    /// Every stream the core knows: the adapter polls each.
    pub fn streams(&self) -> Vec<StreamId> {
        self.greetings.keys().chain(self.linked.keys()).copied().collect()
    }

    /// Streams the adapter must close now.
    pub fn take_closed(&mut self) -> Vec<StreamId> {
        core::mem::take(&mut self.to_close)
    }

    /// Console lines since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        core::mem::take(&mut self.log)
    }

    /// When the core next wants a poll without network news (a redial or a setup timeout).
    pub fn wake_at_ns(&self) -> Option<u64> {
        let redials = self
            .peers
            .values()
            .filter(|peer| peer.dialled && peer.link.is_none())
            .map(|peer| peer.redial_at_ns);
        let setups = self
            .peers
            .values()
            .filter_map(|peer| peer.link.as_ref().filter(|link| !link.up))
            .map(|link| link.since_ns + SETUP_TIMEOUT_NS);
        let greetings =
            self.greetings.values().map(|greeting| greeting.since_ns + SETUP_TIMEOUT_NS);
        redials.chain(setups).chain(greetings).min()
    }

    fn link_mut(&mut self, node: NodeId) -> &mut Link {
        let peer = self.peers.get_mut(&node).expect("linked peers exist");
        peer.link.as_mut().expect("linked streams have links")
    }

    /// Makes `link` the stream to `node`, replacing an older one.
    fn install(&mut self, node: NodeId, link: Link, now_ns: u64) {
        self.drop_link(node, now_ns);
        self.linked.insert(link.stream, node);
        let peer = self.peers.entry(node).or_default();
        peer.link = Some(link);
        peer.front_written_bytes = 0;
        self.stats.streams_opened += 1;
    }

    /// Closes the stream to `node` (if any) and forgets its half-written frame.
    fn drop_link(&mut self, node: NodeId, now_ns: u64) {
        let Some(peer) = self.peers.get_mut(&node) else { return };
        let Some(link) = peer.link.take() else { return };
        self.linked.remove(&link.stream);
        self.to_close.push(link.stream);
        if peer.front_written_bytes > 0 {
            if let Some(frame) = peer.queue.pop_front() {
                peer.queued_bytes -= frame.len();
                self.stats.messages_dropped += 1;
            }
            peer.front_written_bytes = 0;
        }
        peer.redial_at_ns = now_ns + REDIAL_DELAY_NS;
        if link.up {
            self.stats.streams_broken += 1;
            self.log.push(alloc::format!("stream to node {node} lost"));
        }
    }

    /// Decodes every complete frame received from `node`; a bad one drops the stream.
    fn decode_link(&mut self, node: NodeId, now_ns: u64, inbox: &mut Vec<(NodeId, M)>) {
        let max_frame_bytes = self.max_frame_bytes;
        let peer = self.peers.get_mut(&node).expect("linked peers exist");
        let link = peer.link.as_mut().expect("linked streams have links");
        let mut start = 0;
        let mut broken = false;
        loop {
            let rest = &link.rx[start..];
            if rest.len() >= 4 {
                let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                if len.saturating_add(FRAME_HEADER_BYTES) > max_frame_bytes {
                    broken = true;
                    break;
                }
            }
            match (self.decode)(node, rest) {
                Ok((msg, used)) => {
                    inbox.push((node, msg));
                    self.stats.messages_received += 1;
                    start += used;
                }
                Err(FrameError::Incomplete) => break,
                Err(FrameError::Checksum | FrameError::Decode) => {
                    broken = true;
                    break;
                }
            }
        }
        link.rx.drain(..start);
        if broken {
            self.drop_link(node, now_ns);
        }
    }
}
