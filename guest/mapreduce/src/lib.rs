//! MapReduce (Dean & Ghemawat, OSDI 2004) on GFS as sans-IO state machines.
//!
//! Three roles share one shape, [`node::StateMachine`]: `step(now_ms, input, &mut outputs)` and
//! `next_poll_ms()`. An [`node::Input`] is a MapReduce message, a GFS message (for the role's
//! embedded [`gfs::client::Client`]), a disk completion or a tick; [`node::Outputs`] collects
//! MapReduce messages, GFS messages, requests for the node's own disk and observable events.
//!
//! - [`coordinator::Coordinator`]: splits the input along GFS chunks, hands map and reduce tasks
//!   to workers (a map preferably to a worker beside a replica of its chunk), presumes a silent
//!   worker dead, re-executes its in-progress tasks and its completed maps, runs backup attempts
//!   of stragglers and reports the finished job to its client.
//! - [`worker::Worker`]: reads a split through GFS, maps, combines, partitions, sorts, writes
//!   the partitions to its own disk and serves them; reduces by fetching every mapper's
//!   partition, merging, reducing and committing the output to GFS by writing a temporary file
//!   and atomically renaming it (a GFS snapshot under the final name, then a delete).
//! - [`job_client::JobClient`]: submits a job and waits for its result.
//!
//! Applications implement [`app::App`]: word count, inverted index, distributed grep, sort.
//! No I/O, no clock, no hidden randomness: the same code runs in the guest and in the seeded
//! simulator (`mapreduce-sim`), each node run by GFS's [`gfs::driver::Driver`] as a
//! [`service::MrNode`]; [`script`] holds the job node's scripted workload.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod app;
pub mod config;
pub mod coordinator;
pub mod gfs_link;
pub mod job_client;
pub mod node;
pub mod records;
pub mod script;
pub mod service;
pub mod split;
pub mod wire;
pub mod worker;

pub use config::{MrConfig, MrTestKnobs};
pub use node::{Event, Input, Outputs, StateMachine};
