//! `ft-sim`: runs the FT pair simulation for one seed or a range of seeds.
//!
//! ```text
//! ft-sim --seeds 0..10000             # a sweep; each failure prints its rerun command
//! ft-sim --seed 42                    # one seed, its settings and outcome
//! ft-sim --seeds 0..10000 --broken lease  # the lease renewed by anything heard: caught
//! ft-sim --seeds 0..10000 --broken lag    # no lag bound: a slow backup goes live late: caught
//! ft-sim                              # a sweep of 2000 seeds from a random start (printed first)
//! ```
use std::process::ExitCode;
use std::time::Instant;

use ft_sim::{run_seed, Mutation, Settings};

fn usage() -> ExitCode {
    eprintln!("usage: ft-sim [--seed N | --seeds A..B] [--broken lease|lag]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut mutation = Mutation::None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seed" => {
                let Some(seed) = iter.next().and_then(|value| value.parse::<u64>().ok()) else {
                    return usage();
                };
                seeds = Some(seed..seed + 1);
            }
            "--seeds" => {
                let range = iter.next().and_then(|value| {
                    let (start, end) = value.split_once("..")?;
                    Some(start.parse::<u64>().ok()?..end.parse::<u64>().ok()?)
                });
                let Some(range) = range.filter(|range| range.start < range.end) else {
                    return usage();
                };
                seeds = Some(range);
            }
            "--broken" => {
                mutation = match iter.next().map(String::as_str) {
                    Some("lease") => Mutation::LeaseFromAnythingHeard,
                    Some("lag") => Mutation::NoLagBound,
                    _ => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let seeds = seeds.unwrap_or_else(|| {
        // A random start, printed first, so a sweep explores new seeds and a failure reruns.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
            % 1_000_000_000_000;
        start..start + 2000
    });
    let broken = match mutation {
        Mutation::None => "",
        Mutation::LeaseFromAnythingHeard => " --broken lease",
        Mutation::NoLagBound => " --broken lag",
    };
    println!("ft-sim: seeds {}..{} mutation {mutation:?}", seeds.start, seeds.end);
    if seeds.end - seeds.start == 1 {
        println!("ft-sim: {}", Settings::from_seed(seeds.start, mutation));
    }
    let started = Instant::now();
    let (mut failures, mut live, mut solo) = (0u64, 0u64, 0u64);
    for seed in seeds.clone() {
        match run_seed(seed, mutation) {
            Ok(outcome) => {
                live += u64::from(outcome.live_at_ms.is_some());
                solo += u64::from(outcome.solo);
                if seeds.end - seeds.start == 1 {
                    println!("ft-sim: ok: {outcome:?}");
                }
            }
            Err(failure) => {
                failures += 1;
                println!("ft-sim: FAILED {failure}");
                println!("  rerun: cargo run --release -p ft-sim -- --seed {seed}{broken}");
            }
        }
    }
    let count = seeds.end - seeds.start;
    println!(
        "ft-sim: {count} seeds in {:.1} s: {failures} failed; the backup went live in {live}, \
         the primary went solo in {solo}",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
