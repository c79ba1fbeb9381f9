//! GFS (Ghemawat, Gobioff, Leung, SOSP 2003) as sans-IO state machines.
//!
//! Every role — [`master::Master`], [`chunkserver::Chunkserver`] and [`client::Client`] — is a
//! [`node::StateMachine`]: it takes `(now_ms, input)` where the input is a message, a disk
//! completion or a tick, and appends what it wants done to an [`node::Outputs`] (messages to
//! send, disk requests to issue, client completions). It reports when it next wants a tick. It
//! does no I/O, reads no clock and draws randomness only from a seeded [`pcg::Pcg32`].
//!
//! The same code runs in the guest kernel (driven by an adapter over smoltcp and virtio-blk)
//! and in the host-side seeded simulator (`gfs-sim`).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chunkserver;
pub mod client;
pub mod config;
pub mod disk;
pub mod master;
pub mod node;
pub mod pcg;
pub mod wire;

pub use config::Config;
pub use node::{Input, Outputs, StateMachine};
