//! The arbiter under races and unreachable storage: exactly one winner per generation, the
//! loser learns the winner's name, a missing directory is waited for, and nothing but a
//! complete record ever counts.

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use storage::arbiter::{Arbiter, ArbiterError, Verdict};

/// Races `sides` threads on each of `trials` generations; checks every generation has exactly
/// one winner and that every loser names it.
fn race(sides: usize, trials: u64) {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = Arbiter::new(dir.path());
    for generation in 1..=trials {
        let barrier = Arc::new(Barrier::new(sides));
        let handles: Vec<_> = (0..sides)
            .map(|side| {
                let (arbiter, barrier) = (arbiter.clone(), Arc::clone(&barrier));
                thread::spawn(move || {
                    let holder = format!("side-{side}");
                    barrier.wait();
                    (holder.clone(), arbiter.try_set(generation, &holder).unwrap())
                })
            })
            .collect();
        let outcomes: Vec<(String, Verdict)> =
            handles.into_iter().map(|handle| handle.join().unwrap()).collect();
        let winners: Vec<&String> = outcomes
            .iter()
            .filter(|(_, verdict)| *verdict == Verdict::Won)
            .map(|(holder, _)| holder)
            .collect();
        assert_eq!(winners.len(), 1, "generation {generation}: winners {winners:?}");
        for (holder, verdict) in &outcomes {
            if let Verdict::Lost { holder: winner } = verdict {
                assert_eq!(winner, winners[0], "{holder} was told the wrong winner");
            }
        }
        assert_eq!(arbiter.holder(generation).unwrap().as_ref(), Some(winners[0]));
        // Asking again gives the same answers, and temporary files are cleaned up.
        assert_eq!(
            arbiter.try_set(generation, "late").unwrap(),
            Verdict::Lost { holder: winners[0].clone() }
        );
    }
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with("generation-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn two_sides_racing_have_exactly_one_winner() {
    race(2, 300);
}

#[test]
fn many_sides_racing_have_exactly_one_winner() {
    race(8, 60);
}

#[test]
fn missing_directory_is_retried_until_it_appears() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("shared");
    let arbiter = Arbiter::new(&dir);
    let failures = Arc::new(AtomicU64::new(0));
    let waiter = {
        let (arbiter, failures) = (arbiter.clone(), Arc::clone(&failures));
        thread::spawn(move || {
            arbiter.set_with_retry(1, "backup", Duration::from_millis(5), |error| {
                assert!(error.is_transient());
                assert!(error.to_string().contains("shared"), "{error}");
                failures.fetch_add(1, Ordering::SeqCst);
                false
            })
        })
    };
    while failures.load(Ordering::SeqCst) < 3 {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!waiter.is_finished(), "returned while the directory was missing");
    fs::create_dir(&dir).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), Verdict::Won);
    assert_eq!(arbiter.holder(1).unwrap().as_deref(), Some("backup"));
}

#[test]
fn giving_up_reports_the_directory_and_never_a_win() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("not-mounted");
    let arbiter = Arbiter::new(&dir);
    let mut calls = 0;
    let error = arbiter
        .set_with_retry(4, "primary", Duration::from_millis(1), |_| {
            calls += 1;
            calls == 3
        })
        .unwrap_err();
    let ArbiterError::GaveUp { attempts, generation, .. } = &error else {
        panic!("expected GaveUp, got {error}");
    };
    assert_eq!((*attempts, *generation), (3, 4));
    let message = error.to_string();
    assert!(message.contains("not-mounted") && message.contains("generation 4"), "{message}");
    // The direct call names the directory too.
    let message = arbiter.try_set(4, "primary").unwrap_err().to_string();
    assert!(message.contains("not-mounted"), "{message}");
}

#[test]
fn half_written_temporary_file_never_counts() {
    let dir = tempfile::tempdir().unwrap();
    // What a side that crashed before link(2) leaves behind: a temporary file, cut short.
    fs::write(dir.path().join(".generation-1.deadbeef-0-0-0.tmp"), "ftvm-arbiter 1\ngenera")
        .unwrap();
    let arbiter = Arbiter::new(dir.path());
    assert_eq!(arbiter.holder(1).unwrap(), None);
    assert_eq!(arbiter.try_set(1, "backup").unwrap(), Verdict::Won);
    assert_eq!(arbiter.try_set(1, "primary").unwrap(), Verdict::Lost { holder: "backup".into() });
}

#[test]
fn foreign_record_is_an_error_not_a_win() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = Arbiter::new(dir.path());
    fs::write(arbiter.record_path(2), "someone else's file").unwrap();
    for _ in 0..2 {
        let error = arbiter
            .set_with_retry(2, "backup", Duration::from_millis(1), |_| panic!("retried"))
            .unwrap_err();
        assert!(matches!(error, ArbiterError::CorruptRecord { .. }), "{error}");
        assert!(!error.is_transient());
    }
}

#[test]
fn generations_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = Arbiter::new(dir.path());
    assert_eq!(arbiter.try_set(1, "primary").unwrap(), Verdict::Won);
    assert_eq!(arbiter.try_set(2, "backup").unwrap(), Verdict::Won);
    assert_eq!(arbiter.try_set(1, "backup").unwrap(), Verdict::Lost { holder: "primary".into() });
    assert!(matches!(arbiter.try_set(3, "two\nlines"), Err(ArbiterError::InvalidHolder { .. })));
}
