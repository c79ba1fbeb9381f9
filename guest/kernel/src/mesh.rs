//! The mesh between GFS and MapReduce nodes over smoltcp: a thin adapter around the sans-IO
//! [`mesh::MeshCore`] (connection table, hello, redial, framing; see that crate for the rules
//! and its host tests). The adapter owns the TCP sockets: it names each with a stream id,
//! tells the core what happened to it (accepted, established, bytes, gone), dials and closes
//! what the core asks, and writes what the core has queued as far as the send buffers allow.
//! The core's randomness comes from the entropy device through [`mesh::Entropy`].
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use gfs::driver::Transport;
use gfs::wire::{FramedMessage, NodeId};
use mesh::{MeshCore, StreamId};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, Ipv4Address};

pub use mesh::{Decoder, MeshStats};

use crate::net::listeners::ListenerPool;
use crate::println;

/// Receive and send buffer of each stream.
const SOCKET_BUFFER_BYTES: usize = 256 * 1024;
/// Unacknowledged data (or an unanswered SYN) for this long aborts a stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive probes on idle streams, so a vanished peer trips the timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(1000);

/// The streams of one node to its peers, carrying messages of type `M`.
pub struct Mesh<M> {
    core: MeshCore<M>,
    port: u16,
    addresses: BTreeMap<NodeId, Ipv4Address>,
    listeners: ListenerPool,
    sockets_of: BTreeMap<StreamId, SocketHandle>,
    /// Accepted sockets not yet told to the core (the listener hook runs between frames).
    accepted: Vec<SocketHandle>,
    next_stream: StreamId,
    /// Console prefix, e.g. `gfs-master`.
    label: &'static str,
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
    /// A mesh for node `me` listening on `port`; `addresses` are the peers it knows (it dials
    /// those with lower ids); `decode` turns received frames into messages.
    pub fn new(
        label: &'static str,
        me: NodeId,
        port: u16,
        addresses: &[(NodeId, Ipv4Address)],
        max_frame_bytes: usize,
        decode: Decoder<M>,
        entropy: &mut impl mesh::Entropy,
    ) -> Self {
        let nodes: Vec<NodeId> = addresses.iter().map(|(node, _)| *node).collect();
        Mesh {
            core: MeshCore::new(me, &nodes, max_frame_bytes, decode, entropy),
            port,
            addresses: addresses.iter().copied().collect(),
            listeners: ListenerPool::new(port),
            sockets_of: BTreeMap::new(),
            accepted: Vec::new(),
            next_stream: 1,
            label,
        }
    }

    pub fn stats(&self) -> &MeshStats {
        &self.core.stats
    }

    /// Hands streams that took a SYN to the core and keeps listeners ready. Cheap; call after
    /// every frame.
    pub fn refill_listeners(&mut self, sockets: &mut SocketSet<'static>) {
        let accepted = &mut self.accepted;
        self.listeners.refill(sockets, new_socket, |handle| accepted.push(handle));
    }

    fn add_stream(&mut self, handle: SocketHandle) -> StreamId {
        let stream = self.next_stream;
        self.next_stream += 1;
        self.sockets_of.insert(stream, handle);
        stream
    }

    /// Accepts, dials and reads: every complete message received is appended to `inbox` with
    /// its sender.
    pub fn poll(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        inbox: &mut Vec<(NodeId, M)>,
    ) {
        self.refill_listeners(sockets);
        for handle in core::mem::take(&mut self.accepted) {
            let stream = self.add_stream(handle);
            self.core.accepted(stream, now_ns);
        }
        let mut buf = Vec::new();
        for stream in self.core.streams() {
            let socket = sockets.get_mut::<tcp::Socket>(self.sockets_of[&stream]);
            let state = socket.state();
            receive_into(socket, &mut buf);
            if state == State::Established {
                self.core.established(stream);
            }
            if !buf.is_empty() {
                self.core.received(stream, &buf, now_ns, inbox);
                buf.clear();
            }
            if !usable(state) {
                self.core.gone(stream, now_ns);
            }
        }
        self.core.check_timeouts(now_ns);
        for dial in self.core.dials_due(now_ns) {
            let address = self.addresses[&dial.node];
            let mut socket = new_socket();
            let remote = (IpAddress::Ipv4(address), self.port);
            match socket.connect(iface.context(), remote, dial.local_port) {
                Ok(()) => {
                    let stream = self.add_stream(sockets.add(socket));
                    self.core.dialled(dial.node, stream, now_ns);
                }
                Err(error) => {
                    println!(
                        "{}: cannot dial node {} at {address}: {error:?}",
                        self.label, dial.node
                    )
                }
            }
        }
        self.close(sockets);
    }

    /// Aborts the streams the core gave up.
    fn close(&mut self, sockets: &mut SocketSet<'static>) {
        for stream in self.core.take_closed() {
            if let Some(handle) = self.sockets_of.remove(&stream) {
                sockets.get_mut::<tcp::Socket>(handle).abort();
                sockets.remove(handle);
            }
        }
        for line in self.core.take_log() {
            println!("{}: {line}", self.label);
        }
    }

    /// Writes queued frames into the sockets of streams that can send, as far as their send
    /// buffers have room.
    pub fn flush(&mut self, sockets: &mut SocketSet<'static>) {
        for (stream, handle) in &self.sockets_of {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if !socket.may_send() {
                continue;
            }
            while let Some(bytes) = self.core.next_write(*stream) {
                let written = socket.send_slice(bytes).unwrap_or(0);
                if written == 0 {
                    break;
                }
                self.core.wrote(*stream, written);
            }
        }
    }

    /// When the mesh next wants to be polled without network news (a redial or a timeout).
    pub fn wake_at_ns(&self) -> Option<u64> {
        self.core.wake_at_ns()
    }
}

impl<M: FramedMessage> Transport<M> for Mesh<M> {
    fn send(&mut self, to: NodeId, msg: M) {
        self.core.send(to, msg.to_frame());
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
