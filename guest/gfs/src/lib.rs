//! GFS (Ghemawat, Gobioff, Leung, SOSP 2003) as sans-IO state machines.
//!
//! Every role — [`master::Master`], [`chunkserver::Chunkserver`] and [`client::Client`] — is a
//! [`node::StateMachine`]: it takes `(now_ms, input)` where the input is a message, a disk
//! completion or a tick, and appends what it wants done to an [`node::Outputs`] (messages to
//! send, disk requests to issue, client completions). It reports when it next wants a tick. It
//! does no I/O, reads no clock and draws randomness only from a seeded [`pcg::Pcg32`].
//!
//! The same code runs in the guest kernel and in the host-side seeded simulator (`gfs-sim`),
//! and so does what runs it: a [`driver::Driver`] steps one node ([`service::GfsNode`]) over a
//! transport and a disk the world supplies (smoltcp and virtio-blk in the guest, faulty
//! simulated ones in `gfs-sim`) and runs its scripted workload ([`script`]).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chunkserver;
pub mod client;
pub mod config;
pub mod disk;
pub mod driver;
pub mod master;
pub mod node;
pub mod pcg;
pub mod script;
pub mod service;
pub mod wire;

pub use config::Config;
pub use node::{Input, Outputs, StateMachine};
