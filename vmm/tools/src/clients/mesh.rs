//! The host side of the guests' mesh: a thin `std::net` adapter around the sans-IO
//! [`mesh::MeshCore`] (connection table, hello, redial, setup timeouts, framing; see that crate),
//! the core the guest kernel runs over smoltcp (`guest/kernel/src/mesh.rs`). The client's node
//! id is above every lab node's, so the core dials every node and nothing is accepted. Frames
//! from GFS nodes are GFS messages, all others MapReduce messages.
//!
//! Each dial runs on a thread of its own (a dead host costs the caller no waiting) and each
//! stream has a reader thread; they only report, tagged with the core's stream id, what
//! happened (connected, dial failed, bytes, end) into one channel. The caller's thread feeds
//! the core, closes what it gives up and writes what it queued (blocking, up to
//! [`WRITE_TIMEOUT`]). [`HostMesh::problems`] keeps why each node was last unreachable.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gfs::wire::{self, NodeId};
use mapreduce::wire::MrMessage;
use mesh::{Decoder, Entropy, MeshCore, StreamId, SETUP_TIMEOUT_NS};

/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write blocked this long breaks the stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one read of a stream takes at once.
const READ_BYTES: usize = 256 * 1024;

/// A message from a lab node.
#[derive(Debug)]
pub enum Packet {
    Gfs(wire::Message),
    Mr(MrMessage),
}

/// What a dial or reader thread saw.
enum Report {
    Connected(StreamId, TcpStream),
    Bytes(StreamId, Vec<u8>),
    /// The dial failed, or the stream ended or broke: why.
    Gone(StreamId, String),
}

/// The core's randomness (it only starts its local ports at random; see [`HostMesh::poll`]).
struct ClockEntropy;

impl Entropy for ClockEntropy {
    fn random_u64(&mut self) -> u64 {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
        nanos as u64 ^ u64::from(std::process::id()) << 32
    }
}

/// Streams from this client to the lab's nodes.
pub struct HostMesh {
    core: MeshCore<Packet>,
    port: u16,
    addresses: BTreeMap<NodeId, Ipv4Addr>,
    /// The node each stream the core knows was dialled to.
    node_of: BTreeMap<StreamId, NodeId>,
    /// The sockets of the connected streams.
    sockets: BTreeMap<StreamId, TcpStream>,
    next_stream: StreamId,
    /// The zero of the core's clock.
    origin: Instant,
    /// Messages decoded and not yet taken.
    inbox: VecDeque<(NodeId, Packet)>,
    tx: Sender<Report>,
    rx: Receiver<Report>,
    /// Why the last dial of, write to or stream from a node failed (cleared by a new stream).
    pub problems: BTreeMap<NodeId, String>,
}

impl HostMesh {
    /// A mesh for client `me` to the nodes at `addresses` (all on `port`); frames from
    /// `gfs_ids` are GFS messages, and frames larger than `max_frame_bytes` break a stream.
    pub fn new(
        me: NodeId,
        port: u16,
        addresses: BTreeMap<NodeId, Ipv4Addr>,
        gfs_ids: BTreeSet<NodeId>,
        max_frame_bytes: usize,
    ) -> HostMesh {
        let decode: Decoder<Packet> = Box::new(move |node, bytes| {
            if gfs_ids.contains(&node) {
                wire::decode_frame(bytes).map(|(msg, used)| (Packet::Gfs(msg), used))
            } else {
                mapreduce::wire::decode_frame(bytes).map(|(msg, used)| (Packet::Mr(msg), used))
            }
        });
        let nodes: Vec<NodeId> = addresses.keys().copied().collect();
        let (tx, rx) = channel();
        HostMesh {
            core: MeshCore::new(me, &nodes, max_frame_bytes, decode, &mut ClockEntropy),
            port,
            addresses,
            node_of: BTreeMap::new(),
            sockets: BTreeMap::new(),
            next_stream: 1,
            origin: Instant::now(),
            inbox: VecDeque::new(),
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
        if !self.addresses.contains_key(&node) {
            self.problems.insert(node, "no address known".into());
            return;
        }
        self.core.send(node, frame.to_vec());
        self.poll();
    }

    /// The next message, waiting until `deadline` at most; dials and writes meanwhile.
    pub fn receive(&mut self, deadline: Instant) -> Option<(NodeId, Packet)> {
        loop {
            self.poll();
            if let Some(message) = self.inbox.pop_front() {
                return Some(message);
            }
            let wake = self.core.wake_at_ns().map(|ns| self.origin + Duration::from_nanos(ns));
            let until = wake.map_or(deadline, |wake| wake.min(deadline));
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(report) => self.take(report),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Tells the core what a thread reported.
    fn take(&mut self, report: Report) {
        let now_ns = self.now_ns();
        match report {
            Report::Connected(stream, socket) => {
                let Some(node) = self.node_of.get(&stream).copied() else {
                    // The core gave the dial up meanwhile.
                    let _ = socket.shutdown(Shutdown::Both);
                    return;
                };
                match socket.try_clone() {
                    Ok(reader) => {
                        let tx = self.tx.clone();
                        std::thread::spawn(move || read_stream(reader, stream, tx));
                        self.sockets.insert(stream, socket);
                        self.core.established(stream);
                        self.problems.remove(&node);
                    }
                    Err(error) => {
                        let _ = socket.shutdown(Shutdown::Both);
                        self.core.gone(stream, now_ns);
                        self.close(&format!("socket: {error}"));
                    }
                }
            }
            Report::Bytes(stream, bytes) => {
                let mut inbox = Vec::new();
                self.core.received(stream, &bytes, now_ns, &mut inbox);
                self.inbox.extend(inbox);
                self.close("the node sent bytes that are not mesh frames (corrupt or oversized)");
            }
            Report::Gone(stream, why) => {
                self.core.gone(stream, now_ns);
                self.close(&why);
            }
        }
    }

    /// Gives up stuck dials, dials what is due and writes what is queued. The core's local
    /// port is not used: a `std::net` dial takes an ephemeral port from the host kernel, which
    /// avoids reusing a recent 4-tuple just as well.
    fn poll(&mut self) {
        let now_ns = self.now_ns();
        self.core.check_timeouts(now_ns);
        self.close(&format!("not connected within {} s", SETUP_TIMEOUT_NS / 1_000_000_000));
        for dial in self.core.dials_due(now_ns) {
            let Some(address) = self.address(dial.node) else { continue };
            let stream = self.next_stream;
            self.next_stream += 1;
            self.node_of.insert(stream, dial.node);
            self.core.dialled(dial.node, stream, now_ns);
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let report = match connect(address) {
                    Ok(socket) => Report::Connected(stream, socket),
                    Err(error) => Report::Gone(stream, format!("connect to {address}: {error}")),
                };
                let _ = tx.send(report);
            });
        }
        self.flush();
    }

    /// Writes what the core queued on every connected stream; a failed write breaks it.
    fn flush(&mut self) {
        let streams: Vec<StreamId> = self.sockets.keys().copied().collect();
        for stream in streams {
            if let Err(error) = self.write_stream(stream) {
                self.core.gone(stream, self.now_ns());
                self.close(&format!("write: {error}"));
            }
        }
    }

    fn write_stream(&mut self, stream: StreamId) -> std::io::Result<()> {
        let Some(mut socket) = self.sockets.get(&stream) else { return Ok(()) };
        while let Some(bytes) = self.core.next_write(stream) {
            match socket.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(written) => self.core.wrote(stream, written),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Shuts the streams the core gave up; `why` becomes their nodes' problem.
    fn close(&mut self, why: &str) {
        for stream in self.core.take_closed() {
            if let Some(socket) = self.sockets.remove(&stream) {
                // Ends its reader thread too.
                let _ = socket.shutdown(Shutdown::Both);
            }
            if let Some(node) = self.node_of.remove(&stream) {
                self.problems.insert(node, why.to_string());
            }
        }
        // Streams up and lost: `problems` says what matters to the CLI.
        self.core.take_log();
    }
}

impl Drop for HostMesh {
    fn drop(&mut self) {
        // Ends the reader threads too.
        for socket in self.sockets.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Dials `address` (the core writes the hello).
fn connect(address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    socket.set_nodelay(true)?;
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(socket)
}

/// Forwards what arrives on `stream` into `tx` until it ends.
fn read_stream(mut socket: TcpStream, stream: StreamId, tx: Sender<Report>) {
    let mut piece = vec![0u8; READ_BYTES];
    let why = loop {
        match socket.read(&mut piece) {
            Ok(0) => break "the node closed the stream".to_string(),
            Ok(read) => {
                if tx.send(Report::Bytes(stream, piece[..read].to_vec())).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => break format!("read: {error}"),
        }
    };
    let _ = tx.send(Report::Gone(stream, why));
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use gfs::wire::{FrameError, Message};

    use super::*;

    const NODE: NodeId = 3;
    const ME: NodeId = 1000;

    /// A mesh to one GFS node on this host's `port`.
    fn mesh(port: u16) -> HostMesh {
        let addresses = BTreeMap::from([(NODE, Ipv4Addr::LOCALHOST)]);
        HostMesh::new(ME, port, addresses, BTreeSet::from([NODE]), 1 << 20)
    }

    /// Reads `socket` into `buf` until `decode` finds a whole frame at its front; takes it.
    fn read_frame<T>(
        socket: &mut TcpStream,
        buf: &mut Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<(T, usize), FrameError>,
    ) -> T {
        let mut piece = [0u8; 4096];
        loop {
            match decode(buf) {
                Ok((value, used)) => {
                    buf.drain(..used);
                    return value;
                }
                Err(FrameError::Incomplete) => {}
                Err(error) => panic!("the mesh sent a bad frame: {error:?}"),
            }
            let read = socket.read(&mut piece).unwrap();
            assert!(read > 0, "the mesh closed the stream");
            buf.extend_from_slice(&piece[..read]);
        }
    }

    /// What the mesh receives before `within` passes.
    fn next(mesh: &mut HostMesh, within: Duration) -> (NodeId, Message) {
        match mesh.receive(Instant::now() + within) {
            Some((from, Packet::Gfs(msg))) => (from, msg),
            other => panic!("expected a GFS message, got {other:?}"),
        }
    }

    #[test]
    fn frames_split_across_writes_decode_and_garbage_closes_the_stream_which_is_redialled() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut mesh = mesh(listener.local_addr().unwrap().port());
        let node = std::thread::spawn(move || {
            // The first stream: the hello, a frame in two writes, then garbage.
            let (mut first, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            assert_eq!(read_frame(&mut first, &mut buf, wire::decode_hello), ME);
            let frame = wire::encode_frame(&Message::ReportCorrupt { handle: 77 });
            first.write_all(&frame[..5]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            first.write_all(&frame[5..]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            first.write_all(b"certainly not a mesh frame").unwrap();
            // The redialled stream: the hello, then a frame that is echoed.
            let (mut second, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            assert_eq!(read_frame(&mut second, &mut buf, wire::decode_hello), ME);
            let msg = read_frame(&mut second, &mut buf, wire::decode_frame);
            second.write_all(&wire::encode_frame(&msg)).unwrap();
            // Until the mesh goes away.
            let _ = second.read(&mut [0u8; 1]);
        });

        let got = next(&mut mesh, Duration::from_secs(10));
        assert_eq!(got, (NODE, Message::ReportCorrupt { handle: 77 }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mesh.problems.contains_key(&NODE) {
            assert!(Instant::now() < deadline, "the garbage did not close the stream");
            assert!(mesh.receive(Instant::now() + Duration::from_millis(10)).is_none());
        }
        assert!(mesh.problems[&NODE].contains("not mesh frames"), "{:?}", mesh.problems);
        mesh.send(NODE, &wire::encode_frame(&Message::PushAck { data_id: 9 }));
        let got = next(&mut mesh, Duration::from_secs(10));
        assert_eq!(got, (NODE, Message::PushAck { data_id: 9 }));
        assert!(mesh.problems.is_empty(), "{:?}", mesh.problems);
        drop(mesh);
        node.join().unwrap();
    }

    #[test]
    fn a_refused_dial_is_a_problem_of_its_node() {
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let mut mesh = mesh(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mesh.problems.contains_key(&NODE) {
            assert!(Instant::now() < deadline, "the dial did not fail");
            assert!(mesh.receive(Instant::now() + Duration::from_millis(10)).is_none());
        }
        assert!(mesh.problems[&NODE].starts_with("connect to 127.0.0.1:"), "{:?}", mesh.problems);
        mesh.send(7, b"to a node without an address");
        assert_eq!(mesh.problems[&7], "no address known");
    }
}
