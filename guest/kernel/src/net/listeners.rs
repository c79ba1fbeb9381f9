//! A pool of idle listening TCP sockets on one port, so that any number of
//! simultaneous connects finds a listener: smoltcp sockets accept one
//! connection each. Refill it after every received frame.
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};

/// Idle listeners kept ready.
const IDLE_LISTENERS: usize = 4;

/// The listening sockets of one port.
pub struct ListenerPool {
    port: u16,
    listeners: Vec<SocketHandle>,
}

impl ListenerPool {
    /// An empty pool for `port` (the first `refill` opens the listeners).
    pub fn new(port: u16) -> Self {
        ListenerPool { port, listeners: Vec::new() }
    }

    /// Hands every listener that took a SYN to `accepted`, then opens
    /// sockets made by `new_socket` until enough listen again.
    pub fn refill(
        &mut self,
        sockets: &mut SocketSet<'static>,
        new_socket: impl Fn() -> tcp::Socket<'static>,
        mut accepted: impl FnMut(SocketHandle),
    ) {
        let mut index = 0;
        while index < self.listeners.len() {
            let handle = self.listeners[index];
            if sockets.get::<tcp::Socket>(handle).state() == State::Listen {
                index += 1;
            } else {
                self.listeners.swap_remove(index);
                accepted(handle);
            }
        }
        while self.listeners.len() < IDLE_LISTENERS {
            let mut socket = new_socket();
            socket.listen(self.port).expect("a fresh socket listens on a non-zero port");
            self.listeners.push(sockets.add(socket));
        }
    }
}
