//! `role=stress seed=N ms=M ops=K`: for M ms of guest time (default 3000),
//! or for exactly K operations when `ops` is given (same work every run), a
//! seeded mix of everything non-deterministic the platform offers — timer
//! deadlines (some already past), clock reads, entropy, heap churn, and long
//! compute loops that yield — folding every value it consumes into a digest
//! it prints. Any input the VMM fails to record shows up as a replay that
//! diverges or prints another digest.
use alloc::vec;
use alloc::vec::Vec;

use super::{number, RoleError};
use crate::cmdline::Cmdline;
use crate::drivers::{clock, entropy};
use crate::{check, println, runtime};
use gfs::pcg::Pcg32;

const COMPUTE_CHUNK_BYTES: usize = 64 * 1024;
const MAX_LIVE_ALLOCATIONS: usize = 64;

/// Everything the role consumed, folded into one value.
struct Digest(u64);

impl Digest {
    fn fold(&mut self, value: u64) {
        self.0 = ftvm_abi::fnv1a64(self.0, &value.to_le_bytes());
    }
}

pub fn run(args: &Cmdline) -> Result<(), RoleError> {
    let seed = number(args, "seed", 1)?;
    let duration_ns = number(args, "ms", 3000)? * 1_000_000;
    let op_limit = number(args, "ops", u64::MAX)?;
    let mut rng = Pcg32::new(seed, 0);
    let mut digest = Digest(seed);
    let mut live_allocations: Vec<Vec<u8>> = Vec::new();
    let mut compute_buffer = vec![0u8; COMPUTE_CHUNK_BYTES];
    let start_ns = clock::monotonic_ns();
    let mut ops = 0u64;
    let mut counts = [0u64; 6];
    loop {
        let now_ns = clock::monotonic_ns();
        digest.fold(now_ns);
        let done =
            if op_limit == u64::MAX { now_ns - start_ns >= duration_ns } else { ops >= op_limit };
        if done {
            break;
        }
        let op = rng.below(6) as usize;
        counts[op] += 1;
        match op {
            0 => {
                // A deadline between 0.5 ms in the past and 1.5 ms ahead.
                let deadline = (now_ns + rng.below(2_000_000)).saturating_sub(500_000);
                runtime::sleep_until_ns(deadline);
                let woke = runtime::time_at_last_wait_ns();
                check!(woke >= deadline, "woke at {woke} before deadline {deadline}");
                digest.fold(woke);
            }
            1 => {
                digest.fold(clock::wall_ns());
                digest.fold(clock::monotonic_ns());
            }
            2 => {
                let mut bytes = vec![0u8; 1 + rng.below(512) as usize];
                entropy::fill(&mut bytes);
                digest.fold(ftvm_abi::fnv1a64(0, &bytes));
                digest.fold(entropy::random_u64());
            }
            3 => {
                if live_allocations.len() >= MAX_LIVE_ALLOCATIONS
                    || (rng.below(3) == 0 && !live_allocations.is_empty())
                {
                    let victim = rng.below(live_allocations.len() as u64) as usize;
                    let freed = live_allocations.swap_remove(victim);
                    digest
                        .fold(freed.len() as u64 ^ u64::from(freed.first().copied().unwrap_or(0)));
                } else {
                    let len = 1 + rng.below(64 * 1024) as usize;
                    live_allocations.push(vec![(digest.0 & 0xff) as u8; len]);
                }
            }
            4 => {
                for round in 0..rng.below(40) {
                    for (index, byte) in compute_buffer.iter_mut().enumerate() {
                        *byte = (index as u64 ^ round ^ digest.0) as u8;
                    }
                    digest.fold(ftvm_abi::fnv1a64(digest.0, &compute_buffer));
                    runtime::yield_now();
                }
            }
            _ => {
                for _ in 0..rng.below(50) {
                    runtime::yield_now();
                }
            }
        }
        ops += 1;
        if ops.is_multiple_of(500) {
            println!("stress: {ops} ops, digest {:016x}", digest.0);
        }
    }
    println!(
        "stress seed={seed} ops={ops} (timer {} clock {} entropy {} heap {} compute {} yield {}) digest {:016x}",
        counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], digest.0
    );
    Ok(())
}
