//! `role=echo port=P ip=A/N [gw=G] [mac=M] [exit_after=N]`: a TCP echo server.
//!
//! Any number of simultaneous connections: a pool of idle listening sockets is
//! topped up after every received frame, so even a burst of SYNs in one batch
//! finds a listener for each. Every byte
//! received is sent back in order; when the peer half-closes, the rest is
//! echoed and then the server closes its side too. One console line per
//! connection opened and closed. With `exit_after=N` the role ends after N
//! connections closed (tests and record/replay use it for a clean end).
use alloc::vec::Vec;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};

use super::{net_error, number, RoleError};
use crate::cmdline::Cmdline;
use crate::net::listeners::ListenerPool;
use crate::net::service::{Service, Step};
use crate::net::Network;
use crate::println;
use ftvm_abi::boot::BootInfo;

/// Receive and send buffer of each connection. Larger than the 64 KiB a TCP window holds
/// unscaled (smoltcp scales it): as an FT primary the guest's replies wait for the backup's
/// ack, so a window covers a longer round trip, and fewer, larger cycles wake the pair's
/// threads less often (FT echo stream: ~135 -> ~170 MB/s, context switches 185 -> 110 per MB
/// against 64 KiB). 100 connections at once take 50 MiB of the 128 MiB guest.
const SOCKET_BUFFER_BYTES: usize = 256 * 1024;

/// An accepted socket: handshaking (`id` 0) or carrying connection `id`.
struct Connection {
    handle: SocketHandle,
    id: u64,
    echoed_bytes: u64,
}

struct EchoService {
    /// Sockets in the Listen state, waiting for a SYN.
    listeners: ListenerPool,
    connections: Vec<Connection>,
    last_id: u64,
    closed_count: u64,
    exit_after_closed: Option<u64>,
    scratch: Vec<u8>,
}

/// A connection's socket: echo replies go out as soon as they are queued
/// (each loop iteration already batches them into one exit).
fn new_socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(alloc::vec![0u8; SOCKET_BUFFER_BYTES]),
        tcp::SocketBuffer::new(alloc::vec![0u8; SOCKET_BUFFER_BYTES]),
    );
    socket.set_nagle_enabled(false);
    socket
}

impl EchoService {
    /// Hands connections that took a SYN over and keeps listeners ready.
    fn refill_listeners(&mut self, sockets: &mut SocketSet<'static>) {
        let connections = &mut self.connections;
        self.listeners.refill(sockets, new_socket, |handle| {
            connections.push(Connection { handle, id: 0, echoed_bytes: 0 });
        });
    }

    /// Moves everything received into the send buffer, as far as it has room.
    fn echo(socket: &mut tcp::Socket, scratch: &mut [u8]) -> u64 {
        let mut moved_bytes = 0u64;
        while socket.can_recv() && socket.can_send() {
            let room = socket.send_capacity() - socket.send_queue();
            let limit = room.min(scratch.len());
            let received = socket.recv_slice(&mut scratch[..limit]).unwrap_or(0);
            if received == 0 {
                break;
            }
            // The send buffer had room for all of it (checked above).
            let sent = socket.send_slice(&scratch[..received]).unwrap_or(0);
            debug_assert_eq!(sent, received);
            moved_bytes += sent as u64;
        }
        moved_bytes
    }
}

impl Service for EchoService {
    type Output = Result<(), RoleError>;

    fn poll(
        &mut self,
        _iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        _now_ns: u64,
    ) -> Step<Self::Output> {
        self.refill_listeners(sockets);
        let mut index = 0;
        while index < self.connections.len() {
            let connection = &mut self.connections[index];
            let socket = sockets.get_mut::<tcp::Socket>(connection.handle);
            let state = socket.state();
            if connection.id == 0 {
                match state {
                    State::SynReceived => {}
                    State::Closed | State::Listen => {
                        // A handshake that never completed.
                        sockets.remove(connection.handle);
                        self.connections.swap_remove(index);
                        continue;
                    }
                    _ => {
                        self.last_id += 1;
                        connection.id = self.last_id;
                        match socket.remote_endpoint() {
                            Some(peer) => {
                                println!("echo: connection {} opened from {peer}", connection.id)
                            }
                            None => println!("echo: connection {} opened", connection.id),
                        }
                    }
                }
            }
            if connection.id != 0 {
                connection.echoed_bytes += Self::echo(socket, &mut self.scratch);
                if state == State::CloseWait && socket.recv_queue() == 0 {
                    // The peer finished sending and everything is echoed or
                    // queued: our FIN follows the queued data.
                    socket.close();
                }
                if matches!(socket.state(), State::Closed | State::TimeWait) {
                    println!(
                        "echo: connection {} closed ({} bytes echoed)",
                        connection.id, connection.echoed_bytes
                    );
                    sockets.remove(connection.handle);
                    self.connections.swap_remove(index);
                    self.closed_count += 1;
                    continue;
                }
            }
            index += 1;
        }
        if self.exit_after_closed.is_some_and(|limit| self.closed_count >= limit) {
            return Step::Done(Ok(()));
        }
        Step::Continue { wake_at_ns: None }
    }

    fn after_frame(&mut self, sockets: &mut SocketSet<'static>) {
        self.refill_listeners(sockets);
    }
}

pub fn run(args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let port = number(args, "port", 7)?;
    let port = u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| RoleError::BadCmdline(alloc::format!("port={port}: expected 1..65535")))?;
    let exit_after_closed = match args.get("exit_after") {
        None => None,
        Some(_) => Some(number(args, "exit_after", 0)?),
    };
    let mut network = Network::open(info, args).map_err(net_error)?;
    let address = network.address().expect("Network::open sets an address");
    println!("echo: listening on {address} port {port} (mac {})", network.mac);
    let mut service = EchoService {
        listeners: ListenerPool::new(port),
        connections: Vec::new(),
        last_id: 0,
        closed_count: 0,
        exit_after_closed,
        scratch: alloc::vec![0u8; SOCKET_BUFFER_BYTES],
    };
    service.refill_listeners(&mut network.sockets);
    let result = network.run(&mut service);
    let stats = network.device.stats();
    println!(
        "echo: done after {} connections; frames received {} sent {} dropped {}, notifies tx {} rx {}",
        service.closed_count,
        stats.frames_received,
        stats.frames_sent,
        stats.frames_dropped,
        stats.transmit_notifies,
        stats.receive_notifies
    );
    result
}
