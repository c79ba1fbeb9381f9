//! `role=bench op=yield|wait|timer|hash|noop n=N`: the guest side of
//! `ftvm bench`. It times N operations with the clock device and prints one
//! line `bench op=... n=... ns=...`, which the host parses.
use alloc::vec;

use super::{number, RoleError};
use crate::cmdline::Cmdline;
use crate::drivers::{clock, events, timer};
use crate::{println, runtime};

pub fn run(args: &Cmdline) -> Result<(), RoleError> {
    let op = args.get("op").unwrap_or("noop");
    let count = number(args, "n", 1000)?;
    let start = clock::monotonic_ns();
    match op {
        "noop" => {}
        // One exit: the cheap landmark long loops use.
        "yield" => (0..count).for_each(|_| runtime::yield_now()),
        // Arm a deadline already past, then wait: returns at once (two exits).
        "wait" => (0..count).for_each(|_| {
            timer::set_deadline_ns(1);
            let _ = events::wait();
        }),
        // A 100 us sleep on the timer, end to end.
        "timer" => (0..count).for_each(|_| runtime::sleep_ns(100_000)),
        // n MiB through the FNV-1a hash, yielding every 64 KiB.
        "hash" => {
            let data = vec![0x5au8; 64 * 1024];
            let mut digest = 0;
            for _ in 0..count * 16 {
                digest = ftvm_abi::fnv1a64(digest, &data);
                runtime::yield_now();
            }
            println!("bench digest {digest:016x}");
        }
        _ => {
            return Err(RoleError::BadCmdline(alloc::format!(
                "op={op}: expected noop, yield, wait, timer or hash"
            )))
        }
    }
    let elapsed = clock::monotonic_ns() - start;
    println!("bench op={op} n={count} ns={elapsed}");
    Ok(())
}
