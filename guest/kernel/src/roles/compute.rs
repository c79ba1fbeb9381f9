//! `role=compute rounds=N`: deterministic work (no clock, no entropy, no timer):
//! hashes a buffer N times, yielding between rounds, prints the digest. Two
//! runs must reach the same landmark count and final register state.
use alloc::vec;

use super::{number, RoleError};
use crate::{println, runtime};

pub fn run(args: &crate::cmdline::Cmdline) -> Result<(), RoleError> {
    let rounds = number(args, "rounds", 200)?;
    let mut data = vec![0u8; 64 * 1024];
    let mut digest = 0u64;
    for round in 0..rounds {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = (index as u64 ^ digest ^ round) as u8;
        }
        digest = ftvm_abi::fnv1a64(digest, &data);
        runtime::yield_now();
    }
    println!("compute: {rounds} rounds, digest {digest:016x}");
    Ok(())
}
