//! A mesh of framed TCP streams between GFS and MapReduce nodes, over
//! smoltcp: one stream per pair of nodes, addressed by node id (GFS and
//! MapReduce nodes share one id space).
//!
//! Who dials: a node dials every peer it has an address for whose id is
//! *lower* than its own, and accepts streams from everyone else. So the
//! master (the lowest id) only accepts, chunkservers dial the master and the
//! chunkservers below them, and a client (the highest id) dials everyone it
//! knows. A stream carries frames in the `gfs::wire` format (length, CRC32C,
//! postcard); what a frame's payload is, the mesh's owner decides (its
//! decoder is told the sender: a MapReduce node tells GFS replies from
//! MapReduce messages by who sent them). The dialler's first frame is a hello, `(HELLO_MAGIC, node id)`,
//! which tells the acceptor who is on the other end. A hello from a node that
//! already has a stream replaces the old stream (the peer reconnected).
//!
//! Messages for a peer wait in a per-peer queue of whole frames until its
//! stream is up and the socket has room. When a stream breaks, the frame that
//! was partly written is dropped (the next stream starts on a frame boundary)
//! and so is whatever sat in the socket; GFS treats that as message loss and
//! retries. A broken dialled stream is redialled after a short delay; TCP
//! keep-alives and a retransmission timeout notice a peer that went away.
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use alloc::boxed::Box;

use gfs::wire::{self, FrameError, NodeId, FRAME_HEADER_BYTES};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, Ipv4Address};

use crate::drivers::entropy;
use crate::net::listeners::ListenerPool;
use crate::println;

/// Receive and send buffer of each stream.
const SOCKET_BUFFER_BYTES: usize = 256 * 1024;
/// How long after a dialled stream broke (or was refused) it is dialled again.
const REDIAL_DELAY_NS: u64 = 200_000_000;
/// Unacknowledged data (or an unanswered SYN) for this long aborts a stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive probes on idle streams, so a vanished peer trips the timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(1000);
/// Frames queued for one peer beyond this many bytes are dropped (lost messages).
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// A stream that has sent this much without a complete hello is not a GFS node.
const MAX_HELLO_BYTES: usize = 64;
/// A dialled stream not up, or an accepted one without its hello, this long
/// after it began is given up (and a dialled one redialled).
const SETUP_TIMEOUT_NS: u64 = 3_000_000_000;

/// Counters for the end-of-run line.
#[derive(Default)]
pub struct MeshStats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_dropped: u64,
    pub streams_opened: u64,
    pub streams_broken: u64,
}

/// One open stream to a known peer.
struct Link {
    handle: SocketHandle,
    /// Received bytes not yet decoded into frames.
    rx: Vec<u8>,
    /// The hello still to be written (dialled streams only), before any frame.
    preamble: Vec<u8>,
    /// Reported as up on the console.
    announced: bool,
    /// Monotonic time the stream was dialled or accepted.
    since_ns: u64,
}

/// Everything the mesh knows about one peer.
#[derive(Default)]
struct Peer {
    address: Option<Ipv4Address>,
    link: Option<Link>,
    /// Whole frames waiting to be written, oldest first.
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already written to the current stream.
    front_written_bytes: usize,
    queued_bytes: usize,
    /// Monotonic time before which the peer is not dialled again.
    redial_at_ns: u64,
}

/// An accepted stream whose hello has not arrived yet.
struct Greeting {
    handle: SocketHandle,
    rx: Vec<u8>,
    /// Monotonic time of the first poll that saw it (`None` before that).
    since_ns: Option<u64>,
}

/// Decodes the first frame of the bytes received from a node into a message
/// and the bytes it used.
pub type Decoder<M> = Box<dyn Fn(NodeId, &[u8]) -> Result<(M, usize), FrameError>>;

/// The streams of one node to its peers, carrying messages of type `M`.
pub struct Mesh<M> {
    me: NodeId,
    port: u16,
    /// Larger frames break the stream (a corrupt length or not a GFS peer).
    max_frame_bytes: usize,
    peers: BTreeMap<NodeId, Peer>,
    listeners: ListenerPool,
    greetings: Vec<Greeting>,
    next_local_port: u16,
    /// Console prefix, e.g. `gfs-master`.
    label: &'static str,
    decode: Decoder<M>,
    pub stats: MeshStats,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(alloc::vec![0u8; SOCKET_BUFFER_BYTES]),
        tcp::SocketBuffer::new(alloc::vec![0u8; SOCKET_BUFFER_BYTES]),
    );
    // Every loop iteration already batches what it queued into one exit.
    socket.set_nagle_enabled(false);
    socket.set_timeout(Some(STREAM_TIMEOUT));
    socket.set_keep_alive(Some(KEEP_ALIVE));
    socket
}

/// True while a stream may still carry data (or is being set up).
fn usable(state: State) -> bool {
    matches!(state, State::SynSent | State::SynReceived | State::Established)
}

impl<M> Mesh<M> {
    /// A mesh for node `me` listening on `port`; `addresses` are the peers it
    /// knows (it dials those with lower ids); `decode` turns received frames
    /// into messages.
    pub fn new(
        label: &'static str,
        me: NodeId,
        port: u16,
        addresses: &[(NodeId, Ipv4Address)],
        max_frame_bytes: usize,
        decode: Decoder<M>,
    ) -> Self {
        let mut peers = BTreeMap::new();
        for (node, address) in addresses {
            peers.insert(*node, Peer { address: Some(*address), ..Peer::default() });
        }
        // Ephemeral ports start at random so a restarted node does not reuse
        // the 4-tuple of a stream its peers may still remember.
        let next_local_port = 49152 + (entropy::random_u64() % 16000) as u16;
        Mesh {
            me,
            port,
            max_frame_bytes,
            peers,
            listeners: ListenerPool::new(port),
            greetings: Vec::new(),
            next_local_port,
            label,
            decode,
            stats: MeshStats::default(),
        }
    }

    /// Hands streams that took a SYN to the greetings and keeps listeners
    /// ready. Cheap; call after every frame.
    pub fn refill_listeners(&mut self, sockets: &mut SocketSet<'static>) {
        let greetings = &mut self.greetings;
        self.listeners.refill(sockets, new_socket, |handle| {
            greetings.push(Greeting { handle, rx: Vec::new(), since_ns: None });
        });
    }

    /// Queues a whole `frame` (as from [`wire::encode_frame_of`]) for `to`;
    /// it goes out once a stream to `to` is up.
    pub fn send_frame(&mut self, to: NodeId, frame: Vec<u8>) {
        let peer = self.peers.entry(to).or_default();
        if peer.queued_bytes >= MAX_QUEUED_BYTES {
            self.stats.messages_dropped += 1;
            return;
        }
        peer.queued_bytes += frame.len();
        peer.queue.push_back(frame);
        self.stats.messages_sent += 1;
    }

    /// Accepts, greets, dials and reads: every complete message received is
    /// appended to `inbox` with its sender.
    pub fn poll(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        inbox: &mut Vec<(NodeId, M)>,
    ) {
        self.refill_listeners(sockets);
        self.greet(sockets, now_ns);
        let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
        for node in nodes {
            self.poll_peer(iface, sockets, now_ns, node, inbox);
        }
    }

    /// Reads hellos on accepted streams and turns them into links.
    fn greet(&mut self, sockets: &mut SocketSet<'static>, now_ns: u64) {
        let mut index = 0;
        while index < self.greetings.len() {
            let greeting = &mut self.greetings[index];
            let socket = sockets.get_mut::<tcp::Socket>(greeting.handle);
            if !usable(socket.state()) {
                socket.abort();
                sockets.remove(greeting.handle);
                self.greetings.swap_remove(index);
                continue;
            }
            receive_into(socket, &mut greeting.rx);
            let since_ns = *greeting.since_ns.get_or_insert(now_ns);
            match wire::decode_hello(&greeting.rx) {
                Err(FrameError::Incomplete)
                    if greeting.rx.len() < MAX_HELLO_BYTES
                        && now_ns - since_ns < SETUP_TIMEOUT_NS =>
                {
                    index += 1;
                }
                Ok((node, used)) => {
                    let Greeting { handle, mut rx, .. } = self.greetings.swap_remove(index);
                    rx.drain(..used);
                    self.install(
                        sockets,
                        now_ns,
                        node,
                        Link {
                            handle,
                            rx,
                            preamble: Vec::new(),
                            announced: false,
                            since_ns: now_ns,
                        },
                    );
                }
                _ => {
                    // Not a GFS node: refuse it.
                    socket.abort();
                    sockets.remove(greeting.handle);
                    self.greetings.swap_remove(index);
                }
            }
        }
    }

    /// Makes `link` the stream to `node`, replacing an older one.
    fn install(&mut self, sockets: &mut SocketSet<'static>, now_ns: u64, node: NodeId, link: Link) {
        self.drop_link(sockets, now_ns, node);
        let peer = self.peers.entry(node).or_default();
        peer.link = Some(link);
        self.stats.streams_opened += 1;
    }

    /// Closes the stream to `node` (if any) and forgets its half-written frame.
    fn drop_link(&mut self, sockets: &mut SocketSet<'static>, now_ns: u64, node: NodeId) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let Some(link) = peer.link.take() else {
            return;
        };
        let socket = sockets.get_mut::<tcp::Socket>(link.handle);
        socket.abort();
        sockets.remove(link.handle);
        if peer.front_written_bytes > 0 {
            if let Some(frame) = peer.queue.pop_front() {
                peer.queued_bytes -= frame.len();
                self.stats.messages_dropped += 1;
            }
            peer.front_written_bytes = 0;
        }
        peer.redial_at_ns = now_ns + REDIAL_DELAY_NS;
        if link.announced {
            self.stats.streams_broken += 1;
            println!("{}: stream to node {node} lost", self.label);
        }
    }

    fn poll_peer(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        node: NodeId,
        inbox: &mut Vec<(NodeId, M)>,
    ) {
        let me = self.me;
        let max_frame_bytes = self.max_frame_bytes;
        let peer = self.peers.get_mut(&node).expect("polled peers exist");
        let Some(link) = peer.link.as_mut() else {
            if let Some(address) = peer.address.filter(|_| node < me) {
                if now_ns >= peer.redial_at_ns {
                    self.dial(iface, sockets, now_ns, node, address);
                }
            }
            return;
        };
        let socket = sockets.get_mut::<tcp::Socket>(link.handle);
        let state = socket.state();
        if state == State::Established && !link.announced {
            link.announced = true;
            println!("{}: stream to node {node} up", self.label);
        }
        let before = link.rx.len();
        receive_into(socket, &mut link.rx);
        self.stats.bytes_received += (link.rx.len() - before) as u64;
        let decoded = decode_frames(&mut link.rx, max_frame_bytes, node, &self.decode, inbox);
        self.stats.messages_received += decoded.count;
        let stuck = !link.announced && now_ns - link.since_ns >= SETUP_TIMEOUT_NS;
        if decoded.broken || !usable(state) || stuck {
            self.drop_link(sockets, now_ns, node);
        }
    }

    fn dial(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        node: NodeId,
        address: Ipv4Address,
    ) {
        let local_port = self.next_local_port;
        self.next_local_port = if local_port >= 65000 { 49152 } else { local_port + 1 };
        let mut socket = new_socket();
        let peer = self.peers.get_mut(&node).expect("dialled peers exist");
        peer.redial_at_ns = now_ns + REDIAL_DELAY_NS;
        let remote = (IpAddress::Ipv4(address), self.port);
        if let Err(error) = socket.connect(iface.context(), remote, local_port) {
            println!("{}: cannot dial node {node} at {address}: {error:?}", self.label);
            return;
        }
        let handle = sockets.add(socket);
        let preamble = wire::encode_hello(self.me);
        peer.link =
            Some(Link { handle, rx: Vec::new(), preamble, announced: false, since_ns: now_ns });
        peer.front_written_bytes = 0;
        self.stats.streams_opened += 1;
    }

    /// Writes queued frames into the sockets of established streams, as far
    /// as their send buffers have room.
    pub fn flush(&mut self, sockets: &mut SocketSet<'static>) {
        for peer in self.peers.values_mut() {
            let Some(link) = peer.link.as_mut() else {
                continue;
            };
            let socket = sockets.get_mut::<tcp::Socket>(link.handle);
            if !socket.may_send() {
                continue;
            }
            if !link.preamble.is_empty() {
                let written = socket.send_slice(&link.preamble).unwrap_or(0);
                link.preamble.drain(..written);
                if !link.preamble.is_empty() {
                    continue;
                }
            }
            while let Some(frame) = peer.queue.front() {
                let rest = &frame[peer.front_written_bytes..];
                let written = socket.send_slice(rest).unwrap_or(0);
                self.stats.bytes_sent += written as u64;
                if written < rest.len() {
                    peer.front_written_bytes += written;
                    break;
                }
                peer.queued_bytes -= frame.len();
                peer.queue.pop_front();
                peer.front_written_bytes = 0;
            }
        }
    }

    /// When the mesh next wants to be polled without network news (a redial).
    pub fn wake_at_ns(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter(|(node, peer)| {
                **node < self.me && peer.address.is_some() && peer.link.is_none()
            })
            .map(|(_, peer)| peer.redial_at_ns)
            .min()
    }
}

/// Moves everything the socket received into `rx`.
fn receive_into(socket: &mut tcp::Socket, rx: &mut Vec<u8>) {
    while socket.can_recv() {
        let taken = socket
            .recv(|buf| {
                rx.extend_from_slice(buf);
                (buf.len(), buf.len())
            })
            .unwrap_or(0);
        if taken == 0 {
            break;
        }
    }
}

/// What [`decode_frames`] found.
struct Decoded {
    count: u64,
    /// A corrupt, undecodable or oversized frame: the stream is unusable.
    broken: bool,
}

/// Decodes every complete frame at the front of `rx` into `inbox`.
fn decode_frames<M>(
    rx: &mut Vec<u8>,
    max_frame_bytes: usize,
    from: NodeId,
    decode: &Decoder<M>,
    inbox: &mut Vec<(NodeId, M)>,
) -> Decoded {
    let mut start = 0;
    let mut decoded = Decoded { count: 0, broken: false };
    loop {
        let rest = &rx[start..];
        if rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len + FRAME_HEADER_BYTES > max_frame_bytes {
                decoded.broken = true;
                break;
            }
        }
        match decode(from, rest) {
            Ok((msg, used)) => {
                inbox.push((from, msg));
                decoded.count += 1;
                start += used;
            }
            Err(FrameError::Incomplete) => break,
            Err(FrameError::Checksum | FrameError::Decode) => {
                decoded.broken = true;
                break;
            }
        }
    }
    rx.drain(..start);
    decoded
}
