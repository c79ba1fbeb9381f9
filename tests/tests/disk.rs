//! The guest's disk: the self-test on a fresh image and on the same image
//! reopened (data persisted across runs), record/replay of disk reads from
//! the log alone, and clear errors for bad images.
use ftvm_tests::{ftvm, summary_field};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

#[test]
fn disk_selftest_fresh_then_reopened_then_replayed() {
    let dir = std::env::temp_dir().join(format!("ftvm-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    let image = image.to_str().unwrap();
    let fresh = ftvm(
        FTVM,
        &["run", "--cmdline", "role=disk-selftest", "--disk", &format!("{image},size=8M,create")],
    );
    assert_eq!(fresh.status, Some(0), "{fresh:?}");
    assert!(fresh.stdout.contains("disk ok: generation 1"), "{}", fresh.stdout);
    let log = dir.join("disk.ftlog");
    let log = log.to_str().unwrap();
    let reopened =
        ftvm(FTVM, &["record", "--log", log, "--cmdline", "role=disk-selftest", "--disk", image]);
    assert_eq!(reopened.status, Some(0), "{reopened:?}");
    assert!(
        reopened.stdout.contains("disk ok: generation 2, generation 1 verified"),
        "{}",
        reopened.stdout
    );
    // The replay reads from the log alone: remove the image first.
    std::fs::remove_file(image).unwrap();
    let replayed = ftvm(FTVM, &["replay", "--log", log]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(replayed.status, Some(0), "{replayed:?}");
    for key in ["exit", "landmarks", "console", "memory", "vcpu"] {
        assert_eq!(
            summary_field(&replayed.stderr, key),
            summary_field(&reopened.stderr, key),
            "{key}"
        );
    }
}

#[test]
fn bad_disk_images_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("ftvm-baddisk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.img");
    let run = ftvm(FTVM, &["run", "--disk", missing.to_str().unwrap()]);
    assert_eq!(run.status, Some(120), "{run:?}");
    assert!(
        run.stderr.contains("does not exist") && run.stderr.contains("create"),
        "{}",
        run.stderr
    );
    let odd = dir.join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let run = ftvm(FTVM, &["run", "--disk", odd.to_str().unwrap()]);
    assert_eq!(run.status, Some(120));
    assert!(run.stderr.contains("not a non-zero multiple of 512"), "{}", run.stderr);
    let run = ftvm(FTVM, &["run", "--disk", &format!("{},create", dir.join("x.img").display())]);
    assert_eq!(run.status, Some(2), "clap refuses create without size: {run:?}");
    assert!(run.stderr.contains("needs size="), "{}", run.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}
