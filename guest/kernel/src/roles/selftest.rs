//! `role=selftest`: exercises every platform device and prints `selftest ok`.
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::RoleError;
use crate::drivers::{clock, entropy, events};
use crate::{check, heap, println, runtime};
use ftvm_abi::boot::BootInfo;

const SLEEP_NS: u64 = 10_000_000;
const TIMER_ROUNDS: u64 = 300;
/// 2020-01-01 in ns since the epoch: a wall clock before it is not believable.
const WALL_FLOOR_NS: u64 = 1_577_836_800_000_000_000;

pub fn run(info: &BootInfo) -> Result<(), RoleError> {
    println!("selftest: {} MiB RAM, cmdline `{}`", info.ram_bytes >> 20, info.cmdline);

    let wall = clock::wall_ns();
    check!(wall > WALL_FLOOR_NS, "wall clock {wall} ns is before 2020");
    let before = clock::monotonic_ns();
    runtime::sleep_ns(SLEEP_NS);
    let after = clock::monotonic_ns();
    check!(after >= before + SLEEP_NS, "slept 10 ms but the clock moved {} ns", after - before);
    println!("selftest: clock and timer ok (10 ms sleep took {} us)", (after - before) / 1000);

    let first = entropy::random_u64();
    let second = entropy::random_u64();
    check!(first != second, "entropy returned {first:#x} twice");
    let mut buf_a = [0u8; 64];
    let mut buf_b = [0u8; 64];
    entropy::fill(&mut buf_a);
    entropy::fill(&mut buf_b);
    check!(buf_a != buf_b, "two entropy fills returned the same bytes");
    check!(buf_a.iter().any(|b| *b != 0), "entropy fill left the buffer zero");
    println!("selftest: entropy ok");

    let used_before = heap::used_bytes();
    {
        let big: Vec<u64> = (0..(1u64 << 17)).collect();
        check!(big.iter().sum::<u64>() == (1u64 << 17) * ((1u64 << 17) - 1) / 2, "heap sum");
        let mut map = BTreeMap::new();
        for key in 0..10_000u64 {
            map.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), key);
        }
        check!(map.len() == 10_000, "BTreeMap lost entries");
    }
    check!(
        heap::used_bytes() == used_before,
        "heap leaked {} bytes",
        heap::used_bytes() - used_before
    );
    println!("selftest: heap ok");

    // Many short deadlines, some already past, each waited on through the event register.
    for round in 0..TIMER_ROUNDS {
        let now = clock::monotonic_ns();
        let deadline = match round % 3 {
            0 => now.saturating_sub(1_000),
            1 => now + 20_000,
            _ => now + (entropy::random_u64() % 200_000),
        };
        runtime::sleep_until_ns(deadline);
        let woke = runtime::time_at_last_wait_ns();
        check!(woke >= deadline, "timer round {round}: woke at {woke} before deadline {deadline}");
    }
    println!("selftest: {TIMER_ROUNDS} timer waits ok");

    let _ = events::poll();
    println!("selftest ok");
    Ok(())
}
