//! The one interface every role implements: `(now, input) -> outputs`, plus when to poll next.

use alloc::vec::Vec;

use crate::disk::{DiskCompletion, DiskOp, DiskRequest};
use crate::wire::{Envelope, Message, NodeId};

/// Something that happened to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message arrived.
    Message { from: NodeId, msg: Message },
    /// A disk request completed.
    Disk(DiskCompletion),
    /// The time the node asked for in [`StateMachine::next_poll_ms`] has come (or any time:
    /// ticks are always safe).
    Tick,
}

/// What a node wants done, filled in by [`StateMachine::step`].
#[derive(Debug, Default)]
pub struct Outputs {
    /// Messages to send.
    pub messages: Vec<Envelope>,
    /// Disk requests to issue on the node's own disk.
    pub disk: Vec<DiskRequest>,
}

impl Outputs {
    /// Queues `msg` for `to`.
    pub fn send(&mut self, to: NodeId, msg: Message) {
        self.messages.push(Envelope { to, msg });
    }

    /// Queues a disk request.
    pub fn disk(&mut self, id: u64, op: DiskOp) {
        self.disk.push(DiskRequest { id, op });
    }

    /// True when nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.disk.is_empty()
    }
}

/// A sans-IO role: no I/O, no clock, no hidden randomness.
pub trait StateMachine {
    /// Handles `input` at time `now_ms`, appending what must be done to `out`.
    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs);

    /// The earliest time the node wants a [`Input::Tick`], if any.
    fn next_poll_ms(&self) -> Option<u64>;
}
