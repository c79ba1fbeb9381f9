//! Record then replay through the CLI: identical results for many seeds,
//! divergence detected when a logged value is altered, frame errors when the
//! log is cut or corrupted, other format versions refused.
use std::path::{Path, PathBuf};

use ftvm_tests::{ftvm, summary_field, Finished};
use logchannel::{Entry, Input, LogFileReader, LogFileWriter};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

/// A scratch directory removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ftvm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(log: &str, cmdline: &str) -> Finished {
    let run = ftvm(FTVM, &["record", "--log", log, "--cmdline", cmdline]);
    assert_eq!(run.status, Some(0), "record `{cmdline}`: {run:?}");
    run
}

fn replay(log: &str) -> Finished {
    ftvm(FTVM, &["replay", "--log", log])
}

const SUMMARY_KEYS: [&str; 5] = ["exit", "landmarks", "console", "memory", "vcpu"];

fn assert_same_run(recorded: &Finished, replayed: &Finished, what: &str) {
    assert_eq!(replayed.status, recorded.status, "{what}: {replayed:?}");
    for key in SUMMARY_KEYS {
        let expected = summary_field(&recorded.stderr, key).expect("summary line");
        assert_eq!(summary_field(&replayed.stderr, key), Some(expected), "{what}: {key} differs");
    }
    assert_eq!(replayed.stdout, recorded.stdout, "{what}: console differs");
}

#[test]
fn stress_seeds_and_selftest_replay_exactly() {
    let scratch = Scratch::new("replay-seeds");
    let mut cases: Vec<String> =
        (1..=5).map(|seed| format!("role=stress seed={seed} ms=1200")).collect();
    cases.push("role=selftest".into());
    for (index, cmdline) in cases.iter().enumerate() {
        let log = scratch.path(&format!("{index}.ftlog"));
        let recorded = record(&log, cmdline);
        assert!(recorded.stdout.contains("digest") || recorded.stdout.contains("selftest ok"));
        assert_same_run(&recorded, &replay(&log), cmdline);
    }
}

#[test]
fn two_recordings_of_one_seed_differ_and_each_replays() {
    let scratch = Scratch::new("replay-twice");
    let logs = [scratch.path("a.ftlog"), scratch.path("b.ftlog")];
    let recorded: Vec<Finished> =
        logs.iter().map(|log| record(log, "role=stress seed=9 ms=800")).collect();
    assert_ne!(
        summary_field(&recorded[0].stderr, "console"),
        summary_field(&recorded[1].stderr, "console"),
        "real time differs between recordings, so the digests printed must differ"
    );
    for (log, run) in logs.iter().zip(&recorded) {
        assert_same_run(run, &replay(log), log);
    }
}

/// Rewrites the log at `path`, changing its entries with `alter`.
fn rewrite(path: &str, alter: impl Fn(usize, &mut Entry) -> bool) {
    let mut reader = LogFileReader::<Entry>::open(path).unwrap();
    let mut entries = Vec::new();
    while let Some((_, entry)) = reader.read_entry().unwrap() {
        entries.push(entry);
    }
    let mut altered = false;
    for (index, entry) in entries.iter_mut().enumerate() {
        altered |= alter(index, entry);
    }
    assert!(altered, "the log had an entry to alter");
    let mut writer = LogFileWriter::<Entry>::create(path).unwrap();
    for entry in &entries {
        writer.write_entry(entry).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn an_altered_value_stops_replay_with_a_divergence_report() {
    let scratch = Scratch::new("replay-diverge");
    let log = scratch.path("clock.ftlog");
    record(&log, "role=stress seed=4 ms=500");
    // One clock value a little later than recorded: the guest folds it into
    // its digest, its registers change, and the next input gives it away.
    rewrite(&log, |index, entry| match entry {
        Entry::Input(input) if index > 50 => match &mut input.input {
            Input::MonotonicNs(value) => {
                *value += 12_345;
                true
            }
            _ => false,
        },
        _ => false,
    });
    // Only the first clock entry after index 50 matters; later ones are never reached.
    let run = replay(&log);
    assert_eq!(run.status, Some(125), "{run:?}");
    assert!(run.stderr.contains("replay diverged at log entry"), "{}", run.stderr);
    assert!(run.stderr.contains("guest registers: rip="), "{}", run.stderr);
    assert!(run.stderr.contains("landmark"));

    let log = scratch.path("event.ftlog");
    record(&log, "role=stress seed=4 ms=500");
    // A timer event delivered one landmark later than recorded.
    rewrite(&log, |_, entry| match entry {
        Entry::Input(input) if matches!(input.input, Input::Polled(_) | Input::Waited(_)) => {
            input.point.landmark += 1;
            true
        }
        _ => false,
    });
    let run = replay(&log);
    assert_eq!(run.status, Some(125), "{run:?}");
    assert!(run.stderr.contains("replay diverged"), "{}", run.stderr);
}

fn damage(path: &str, how: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    how(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cut_or_corrupted_logs_stop_with_the_frame_error() {
    let scratch = Scratch::new("replay-damage");
    let log = scratch.path("cut.ftlog");
    record(&log, "role=stress seed=2 ms=400");
    damage(&log, |bytes| bytes.truncate(bytes.len() * 2 / 3 + 5));
    let run = replay(&log);
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(
        run.stderr.contains("the log is unreadable") && run.stderr.contains("truncated"),
        "{}",
        run.stderr
    );

    let log = scratch.path("flipped.ftlog");
    record(&log, "role=stress seed=2 ms=400");
    damage(&log, |bytes| {
        let middle = bytes.len() * 2 / 3;
        bytes[middle] ^= 0x10;
    });
    let run = replay(&log);
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains("the log is unreadable"), "{}", run.stderr);
    assert!(
        run.stderr.contains("seq") || run.stderr.contains("offset"),
        "names where: {}",
        run.stderr
    );

    // Entries cut at a frame boundary: the replay stops where the log ends.
    let log = scratch.path("short.ftlog");
    record(&log, "role=stress seed=2 ms=400");
    let mut reader = LogFileReader::<Entry>::open(&log).unwrap();
    let mut kept = Vec::new();
    while let Some((_, entry)) = reader.read_entry().unwrap() {
        kept.push(entry);
    }
    kept.truncate(kept.len() / 2);
    let mut writer = LogFileWriter::<Entry>::create(&log).unwrap();
    kept.iter().for_each(|entry| {
        writer.write_entry(entry).unwrap();
    });
    writer.finish().unwrap();
    let run = replay(&log);
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains("the log ends at landmark"), "{}", run.stderr);
}

#[test]
fn other_format_versions_and_non_logs_are_refused() {
    let scratch = Scratch::new("replay-version");
    let log = scratch.path("v.ftlog");
    record(&log, "role=compute rounds=5");
    let other_version = logchannel::FORMAT_VERSION + 1;
    damage(&log, |bytes| bytes[8] = other_version as u8);
    let run = replay(&log);
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains(&format!("format version {other_version}")), "{}", run.stderr);
    let not_a_log = scratch.path("text.ftlog");
    std::fs::write(&not_a_log, "hello, world").unwrap();
    let run = replay(&not_a_log);
    assert_eq!(run.status, Some(126));
    assert!(run.stderr.contains("not an ftvm log"), "{}", run.stderr);
    let run = replay(Path::new(&scratch.path("absent.ftlog")).to_str().unwrap());
    assert_eq!(run.status, Some(126));
    assert!(run.stderr.contains("absent.ftlog"), "{}", run.stderr);
}
