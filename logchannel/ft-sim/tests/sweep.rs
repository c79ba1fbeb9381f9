//! The FT simulation in the test suite: a fixed range of seeds keeps every invariant, and each
//! deliberately broken rule (a lease renewed by anything heard; no lag bound) is caught within
//! the same range, so the simulation has teeth. Longer sweeps are a command: `cargo run --release -p ft-sim -- --seeds A..B`.

use ft_sim::{run_seed, Fault, Mutation, Settings};

const SEEDS: std::ops::Range<u64> = 0..2_000;

#[test]
fn a_default_seed_range_keeps_every_invariant() {
    let (mut live, mut solo) = (0, 0);
    for seed in SEEDS {
        match run_seed(seed, Mutation::None) {
            Ok(outcome) => {
                live += u64::from(outcome.live_at_ms.is_some());
                solo += u64::from(outcome.solo);
            }
            Err(failure) => {
                panic!("{failure}\n  rerun: cargo run --release -p ft-sim -- --seed {seed}")
            }
        }
    }
    // Not vacuous: both ways of going on happen across the range.
    assert!(live > 100 && solo > 100, "live {live} solo {solo}");
}

/// The reports of the seeds `mutation` fails.
fn caught(mutation: Mutation) -> Vec<String> {
    SEEDS
        .filter_map(|seed| run_seed(seed, mutation).err())
        .map(|failure| failure.to_string())
        .collect()
}

#[test]
fn a_lease_renewed_by_anything_heard_is_caught() {
    let reports = caught(Mutation::LeaseFromAnythingHeard);
    assert!(reports.iter().any(|report| report.contains("fencing")), "unnoticed: {reports:?}");
}

#[test]
fn a_missing_lag_bound_is_caught() {
    let reports = caught(Mutation::NoLagBound);
    assert!(reports.iter().any(|report| report.contains("liveness")), "unnoticed: {reports:?}");
}

#[test]
fn a_killed_primary_is_replaced_by_its_backup() {
    let killed: Vec<u64> = SEEDS
        .filter(|seed| {
            matches!(
                Settings::from_seed(*seed, Mutation::None).fault,
                Fault::KillPrimary | Fault::CrashPrimary
            )
        })
        .collect();
    assert!(killed.len() > 100, "{}", killed.len());
    for seed in killed {
        let outcome = run_seed(seed, Mutation::None).unwrap();
        assert!(outcome.live_at_ms.is_some() && !outcome.solo, "seed {seed}: {outcome:?}");
    }
}
