//! A node's embedded GFS client: forwards its messages into [`Outputs`] and hands its
//! completions back to the node (the coordinator's and the workers' own, and the job node's
//! loader).

use alloc::collections::VecDeque;

use gfs::client::{Client, ClientEvent, ClientOp, OpId};
use gfs::wire::NodeId;
use gfs::StateMachine as _;

use crate::node::Outputs;

/// A GFS client plus the completions the role has not handled yet.
pub struct GfsLink {
    client: Client,
    scratch: gfs::Outputs,
    /// Completed operations, oldest first.
    pub events: VecDeque<ClientEvent>,
}

impl GfsLink {
    pub fn new(id: NodeId, config: gfs::Config, seed: u64) -> Self {
        GfsLink {
            client: Client::new(id, config, seed),
            scratch: gfs::Outputs::default(),
            events: VecDeque::new(),
        }
    }

    fn collect(&mut self, out: &mut Outputs) {
        out.gfs_messages.append(&mut self.scratch.messages);
        while let Some(event) = self.client.take_event() {
            self.events.push_back(event);
        }
        self.scratch.disk.clear();
    }

    /// Starts `op`; its completion shows up in `events`.
    pub fn submit(&mut self, now_ms: u64, op: ClientOp, out: &mut Outputs) -> OpId {
        let id = self.client.submit(now_ms, op, &mut self.scratch);
        self.collect(out);
        id
    }

    /// Feeds the client a GFS message or a tick.
    pub fn step(&mut self, now_ms: u64, input: gfs::Input, out: &mut Outputs) {
        self.client.step(now_ms, input, &mut self.scratch);
        self.collect(out);
    }

    pub fn next_poll_ms(&self) -> Option<u64> {
        self.client.next_poll_ms()
    }
}
