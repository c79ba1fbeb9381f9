//! A role's embedded GFS client: forwards its messages into [`Outputs`] and hands its
//! completions back to the role.

use alloc::collections::VecDeque;

use gfs::client::{Client, ClientEvent, ClientOp, OpId};
use gfs::wire::NodeId;
use gfs::StateMachine as _;

use crate::node::Outputs;

/// A GFS client plus the completions the role has not handled yet.
pub(crate) struct GfsLink {
    client: Client,
    scratch: gfs::Outputs,
    /// Completed operations, oldest first.
    pub(crate) events: VecDeque<ClientEvent>,
}

impl GfsLink {
    pub(crate) fn new(id: NodeId, config: gfs::Config, seed: u64) -> Self {
        GfsLink {
            client: Client::new(id, config, seed),
            scratch: gfs::Outputs::default(),
            events: VecDeque::new(),
        }
    }

    fn collect(&mut self, out: &mut Outputs) {
        out.gfs_messages.append(&mut self.scratch.messages);
        self.events.extend(self.scratch.client_events.drain(..));
        self.scratch.disk.clear();
    }

    /// Starts `op`; its completion shows up in `events`.
    pub(crate) fn submit(&mut self, now_ms: u64, op: ClientOp, out: &mut Outputs) -> OpId {
        let id = self.client.submit(now_ms, op, &mut self.scratch);
        self.collect(out);
        id
    }

    /// Feeds the client a GFS message or a tick.
    pub(crate) fn step(&mut self, now_ms: u64, input: gfs::Input, out: &mut Outputs) {
        self.client.step(now_ms, input, &mut self.scratch);
        self.collect(out);
    }

    pub(crate) fn next_poll_ms(&self) -> Option<u64> {
        self.client.next_poll_ms()
    }
}
