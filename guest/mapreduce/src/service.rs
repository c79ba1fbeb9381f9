//! The MapReduce node a [`gfs::driver::Driver`] runs: a coordinator, a worker, or a job node
//! (a job client plus the GFS client that loads its input and reads its output).

use alloc::boxed::Box;

use gfs::disk::DiskCompletion;
use gfs::driver::{Node, Taken};
use gfs::wire::NodeId;

use crate::coordinator::Coordinator;
use crate::gfs_link::GfsLink;
use crate::job_client::JobClient;
use crate::node::{Event, Input, Outputs, StateMachine};
use crate::wire::Packet;
use crate::worker::Worker;

/// One MapReduce role instance.
pub enum MrNode {
    Coordinator(Box<Coordinator>),
    Worker(Box<Worker>),
    /// The job client and its loader: GFS messages go to the loader.
    Job {
        job: Box<JobClient>,
        loader: Box<GfsLink>,
    },
}

impl MrNode {
    /// A job node: its job client and a GFS client seeded with `seed`.
    pub fn job(me: NodeId, config: crate::MrConfig, seed: u64) -> Self {
        let loader = Box::new(GfsLink::new(me, config.gfs.clone(), seed));
        MrNode::Job { job: Box::new(JobClient::new(me, config)), loader }
    }
}

impl Node for MrNode {
    type Message = Packet;
    type Input = Input;
    type Outputs = Outputs;
    type Event = Event;

    fn step(&mut self, now_ms: u64, input: Input, out: &mut Outputs) {
        match self {
            MrNode::Coordinator(coordinator) => coordinator.step(now_ms, input, out),
            MrNode::Worker(worker) => worker.step(now_ms, input, out),
            MrNode::Job { job, loader } => match input {
                Input::Gfs { from, msg } => {
                    loader.step(now_ms, gfs::Input::Message { from, msg }, out)
                }
                Input::Tick => {
                    loader.step(now_ms, gfs::Input::Tick, out);
                    job.step(now_ms, Input::Tick, out);
                }
                input => job.step(now_ms, input, out),
            },
        }
    }

    fn next_poll_ms(&self) -> Option<u64> {
        match self {
            MrNode::Coordinator(coordinator) => coordinator.next_poll_ms(),
            MrNode::Worker(worker) => worker.next_poll_ms(),
            MrNode::Job { job, loader } => {
                [job.next_poll_ms(), loader.next_poll_ms()].into_iter().flatten().min()
            }
        }
    }

    fn message_input(from: NodeId, msg: Packet) -> Input {
        match msg {
            Packet::Gfs(msg) => Input::Gfs { from, msg },
            Packet::Mr(msg) => Input::Mr { from, msg },
        }
    }

    fn disk_input(done: DiskCompletion) -> Input {
        Input::Disk(done)
    }

    fn tick_input() -> Input {
        Input::Tick
    }

    fn take_outputs(&mut self, out: &mut Outputs, taken: &mut Taken<Self>) {
        let mr = out.messages.drain(..).map(|envelope| (envelope.to, Packet::Mr(envelope.msg)));
        let gfs =
            out.gfs_messages.drain(..).map(|envelope| (envelope.to, Packet::Gfs(envelope.msg)));
        taken.messages.extend(mr.chain(gfs));
        taken.disk.append(&mut out.disk);
        taken.events.append(&mut out.events);
    }
}
