//! The FT simulation in the test suite: a fixed range of seeds keeps every invariant, and the
//! broken lease rule (renewed by anything heard) is caught within the same range, so the
//! simulation has teeth. Longer sweeps are a command: `cargo run --release -p ft-sim -- --seeds A..B`.

use ft_sim::{run_seed, Fault, Settings};
use logchannel::LeaseRule;

const SEEDS: std::ops::Range<u64> = 0..2_500;

#[test]
fn a_default_seed_range_keeps_every_invariant() {
    let (mut live, mut solo) = (0, 0);
    for seed in SEEDS {
        match run_seed(seed, LeaseRule::AckOfEntrySent) {
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

#[test]
fn the_lease_renewed_by_anything_heard_is_caught() {
    let caught: Vec<String> = SEEDS
        .filter_map(|seed| run_seed(seed, LeaseRule::AnythingHeard).err())
        .map(|failure| failure.to_string())
        .collect();
    assert!(
        caught.iter().any(|report| report.contains("fencing")),
        "the broken rule went unnoticed over seeds {SEEDS:?}"
    );
}

#[test]
fn a_killed_primary_is_replaced_by_its_backup() {
    let killed: Vec<u64> = SEEDS
        .filter(|seed| {
            matches!(
                Settings::from_seed(*seed, LeaseRule::AckOfEntrySent).fault,
                Fault::KillPrimary | Fault::CrashPrimary
            )
        })
        .collect();
    assert!(killed.len() > 100, "{}", killed.len());
    for seed in killed {
        let outcome = run_seed(seed, LeaseRule::AckOfEntrySent).unwrap();
        assert!(outcome.live_at_ms.is_some() && !outcome.solo, "seed {seed}: {outcome:?}");
    }
}
