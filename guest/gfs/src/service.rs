//! The GFS node a [`crate::driver::Driver`] runs: a master, a chunkserver or a client, each
//! built with the checks its disk needs.

use alloc::boxed::Box;
use alloc::string::String;

use crate::chunkserver::store::Layout;
use crate::chunkserver::Chunkserver;
use crate::client::{Client, ClientEvent};
use crate::config::Config;
use crate::disk::DiskCompletion;
use crate::driver::{Node, Taken};
use crate::master::Master;
use crate::node::{Input, Outputs, StateMachine};
use crate::wire::{Message, NodeId};

/// One GFS role instance.
pub enum GfsNode {
    Master(Box<Master>),
    Chunkserver(Box<Chunkserver>),
    Client(Box<Client>),
}

impl GfsNode {
    /// A master on a disk of `disk_sectors`, or why the disk is too small.
    pub fn master(
        me: NodeId,
        config: Config,
        disk_sectors: u64,
        seed: u64,
    ) -> Result<Self, String> {
        // Boot record, two checkpoint slots and room for some log.
        let minimum_sectors = 2 + 2 * config.master_checkpoint_sectors + 64;
        if disk_sectors < minimum_sectors {
            return Err(alloc::format!(
                "the master's disk has {disk_sectors} sectors; it needs {minimum_sectors}"
            ));
        }
        Ok(GfsNode::Master(Box::new(Master::new(me, config, disk_sectors, seed))))
    }

    /// A chunkserver on a disk of `disk_sectors`, or why the disk holds no chunk.
    pub fn chunkserver(me: NodeId, config: Config, disk_sectors: u64) -> Result<Self, String> {
        if Layout::new(&config, disk_sectors).slot_count == 0 {
            return Err(alloc::format!(
                "the disk ({disk_sectors} sectors) holds no {} KiB chunk",
                config.chunk_size_bytes / 1024
            ));
        }
        Ok(GfsNode::Chunkserver(Box::new(Chunkserver::new(me, config, disk_sectors))))
    }

    /// A client (it needs no disk).
    pub fn client(me: NodeId, config: Config, seed: u64) -> Self {
        GfsNode::Client(Box::new(Client::new(me, config, seed)))
    }

    fn state_machine(&mut self) -> &mut dyn StateMachine {
        match self {
            GfsNode::Master(master) => &mut **master,
            GfsNode::Chunkserver(chunkserver) => &mut **chunkserver,
            GfsNode::Client(client) => &mut **client,
        }
    }

    /// True once the node serves (clients always do).
    pub fn is_ready(&self) -> bool {
        match self {
            GfsNode::Master(master) => master.is_ready(),
            GfsNode::Chunkserver(chunkserver) => chunkserver.is_ready(),
            GfsNode::Client(_) => true,
        }
    }
}

impl Node for GfsNode {
    type Message = Message;
    type Input = Input;
    type Outputs = Outputs;
    type Event = ClientEvent;

    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        self.state_machine().step(now_ms, input, out);
    }

    fn next_poll_ms(&self) -> Option<u64> {
        match self {
            GfsNode::Master(master) => master.next_poll_ms(),
            GfsNode::Chunkserver(chunkserver) => chunkserver.next_poll_ms(),
            GfsNode::Client(client) => client.next_poll_ms(),
        }
    }

    fn message_input(from: NodeId, msg: Message) -> Input {
        Input::Message { from, msg }
    }

    fn disk_input(done: DiskCompletion) -> Input {
        Input::Disk(done)
    }

    fn tick_input() -> Input {
        Input::Tick
    }

    fn take_outputs(&mut self, out: &mut Outputs, taken: &mut Taken<Self>) {
        taken.messages.extend(out.messages.drain(..).map(|envelope| (envelope.to, envelope.msg)));
        taken.disk.append(&mut out.disk);
        if let GfsNode::Client(client) = self {
            while let Some(event) = client.take_event() {
                taken.events.push(event);
            }
        }
    }
}
