//! Snapshots end to end: a guest snapshotted mid-run through its API socket and restored
//! with `ftvm restore` ends exactly as an uninterrupted run of it does (same result, same
//! final memory and registers); files and settings that cannot be restored are refused with
//! a clear error. Every VM and file is reaped even when a test fails.
use std::process::Command;
use std::time::{Duration, Instant};

use ftvm_tests::{summary_field, Reaped, Scratch};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
/// A compute guest that runs a few seconds, with an exit per round.
const CMDLINE: &str = "role=compute rounds=12000";

fn remote(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(FTVM)
        .args(["remote", "--api-socket", socket.to_str().unwrap()])
        .args(args)
        .output()
        .expect("ftvm remote runs")
}

#[test]
fn a_restored_guest_ends_exactly_as_an_uninterrupted_one() {
    ftvm_tests::require_kvm();
    let scratch = Scratch::new("snapshot");
    let (socket, snapshot) = (scratch.0.join("vm.sock"), scratch.0.join("vm.snap"));
    let whole = ftvm_tests::ftvm(FTVM, &["run", "--cmdline", CMDLINE]);
    assert_eq!(whole.status, Some(0), "{whole:?}");

    let mut first = Command::new(FTVM);
    first.args(["run", "--cmdline", CMDLINE, "--api-socket"]).arg(&socket);
    let first = Reaped::spawn(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        std::thread::sleep(Duration::from_millis(300));
        let taken = remote(&socket, &["snapshot", snapshot.to_str().unwrap()]);
        if taken.status.success() || Instant::now() > deadline {
            break taken;
        }
    };
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    assert!(remote(&socket, &["stop"]).status.success());
    let first = first.finish_within(Duration::from_secs(30));
    assert_eq!(first.status, Some(130), "the snapshotted run was stopped mid-way: {first:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&snapshot.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a snapshot holds the guest's memory");

    let restored = ftvm_tests::ftvm(FTVM, &["restore", "--snapshot", snapshot.to_str().unwrap()]);
    assert_eq!(restored.status, Some(0), "{restored:?}");
    let digest =
        |stdout: &str| stdout.lines().find(|line| line.starts_with("compute:")).map(str::to_owned);
    assert!(digest(&whole.stdout).is_some(), "{}", whole.stdout);
    assert_eq!(digest(&restored.stdout), digest(&whole.stdout), "the same result");
    for field in ["memory", "vcpu", "landmarks"] {
        assert_eq!(
            summary_field(&restored.stderr, field),
            summary_field(&whole.stderr, field),
            "{field}: {}\n{}",
            restored.stderr,
            whole.stderr
        );
    }
}

#[test]
fn files_and_devices_that_cannot_be_restored_are_refused_clearly() {
    ftvm_tests::require_kvm();
    let scratch = Scratch::new("snapshot-bad");
    let not_a_snapshot = scratch.0.join("notes.txt");
    std::fs::write(&not_a_snapshot, "hello").unwrap();
    let refused =
        ftvm_tests::ftvm(FTVM, &["restore", "--snapshot", not_a_snapshot.to_str().unwrap()]);
    assert_eq!(refused.status, Some(120), "{refused:?}");
    assert!(refused.stderr.contains("is not an ftvm snapshot"), "{}", refused.stderr);

    // A snapshot of a guest without a disk, restored with one.
    let (socket, snapshot) = (scratch.0.join("vm.sock"), scratch.0.join("vm.snap"));
    let mut run = Command::new(FTVM);
    run.args(["run", "--cmdline", CMDLINE, "--api-socket"]).arg(&socket);
    let run = Reaped::spawn(run);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remote(&socket, &["snapshot", snapshot.to_str().unwrap()]).status.success() {
        assert!(Instant::now() < deadline, "no snapshot taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(run.stop());
    let image = scratch.0.join("disk.img");
    let disk = format!("{},size=1M,create", image.display());
    let args = ["restore", "--snapshot", snapshot.to_str().unwrap(), "--disk", &disk];
    let mismatched = ftvm_tests::ftvm(FTVM, &args);
    assert_eq!(mismatched.status, Some(120), "{mismatched:?}");
    assert!(
        mismatched.stderr.contains("name the same NIC and disk image"),
        "{}",
        mismatched.stderr
    );
}
