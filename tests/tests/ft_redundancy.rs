//! Redundancy restored (DESIGN §5): a pair survives two host failures in a row because the side
//! left alone takes a new backup. The primary on h1 is killed; the backup on h2 goes live; a
//! spare started on h1 is added through h2's API socket (`ftvm remote ... add-backup`), which
//! sends it the running guest and makes h2 its primary in generation 2; h2 is killed; the
//! spare goes live. A client streaming through the echo guest, and another exchanging
//! requests, keep their connections across both failovers and get every byte back exactly
//! once, in order. Needs root and /dev/kvm.
use std::time::Duration;

use ftvm_tests::failover::assert_clients_intact;
use ftvm_tests::hosts::{TwoHosts, BACKUP_HOST, PRIMARY_HOST};
use ftvm_tests::Scratch;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");

const WATCH_SECONDS: f64 = 12.0;
/// Long enough (seconds of writes, then of reads) for a backup to be added while it runs.
const DISK_TEST: &str = "role=disk-selftest mib=500";
/// With own disks the image is copied too: the test writes for longer than that takes.
const OWN_DISK_TEST: &str = "role=disk-selftest mib=1000";

/// The tests here each run two or three VMMs through two failovers: one at a time, so that
/// on a small machine they do not slow each other into timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
const STREAM_BYTES_PER_S: u64 = 200_000;

fn remote(socket: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    ftvm_tests::remote::remote(FTVM, socket, args)
}

fn wait_for_role(socket: &str, role: &str, limit: Duration) -> Result<(), String> {
    ftvm_tests::remote::wait_for_role(FTVM, socket, role, limit)
}

#[test]
fn a_stream_survives_two_failovers_with_a_backup_added_between_them() {
    let _one_at_a_time = one_at_a_time();
    let hosts = TwoHosts::new(FTVM);
    let sockets = Scratch::new("redundancy-api");
    let socket_of = |name: &str| format!("{}/{name}.sock", sockets.path());
    let (backup_socket, spare_socket) = (socket_of("h2"), socket_of("spare"));
    let mut backup = hosts.start_backup(BACKUP_HOST, FTVM, &["--api-socket", &backup_socket]);
    let mut primary = hosts.start_primary(FTVM, &[]);
    hosts.wait_for_echo(NETCLIENT);
    let watch = hosts.watch(NETCLIENT, WATCH_SECONDS, STREAM_BYTES_PER_S);
    std::thread::sleep(Duration::from_millis(1500));
    primary.kill();
    // Dead, so its TAP is free for the spare (an exit can take seconds on a loaded host).
    let primary = primary.finish();
    let first_live = wait_for_role(&backup_socket, "live", Duration::from_secs(30));
    // The live side's connect retries while the spare starts listening.
    let spare = hosts.start_backup(PRIMARY_HOST, FTVM, &["--spare", "--api-socket", &spare_socket]);
    let added = first_live.and_then(|()| {
        remote(&backup_socket, &["add-backup", &TwoHosts::listen_addr(PRIMARY_HOST)])
    });
    let spare_paired = wait_for_role(&spare_socket, "backup", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2000));
    backup.kill();
    let watched = watch.finish_within(Duration::from_secs(90));
    let spare = spare.stop();
    let backup = backup.finish();
    let report = format!(
        "add-backup: {added:?}\nspare: {spare_paired:?}\nclient: {}{}\n--- primary (h1)\n{}\n--- backup (h2)\n{}\n--- spare (h1)\n{}",
        watched.stdout, watched.stderr, primary.stderr, backup.stderr, spare.stderr
    );
    let added = added.unwrap_or_else(|error| panic!("adding the backup failed: {error}\n{report}"));
    spare_paired.unwrap_or_else(|error| panic!("the spare: {error}\n{report}"));
    assert_eq!(added["generation"], 2, "{report}");
    assert!(
        added["pause_us"].as_u64().is_some() && added["sent_bytes"].as_u64() > Some(0),
        "{report}"
    );
    assert!(backup.stderr.contains("role: backup -> live, generation 1"), "{report}");
    assert!(backup.stderr.contains("role: live -> primary, generation 2"), "{report}");
    assert!(spare.stderr.contains("added to the running guest"), "{report}");
    assert!(
        spare.stderr.contains("role: backup -> live, generation 2"),
        "the added backup did not take over: {report}"
    );
    assert_clients_intact(&watched.stdout, STREAM_BYTES_PER_S as f64 * 6.0, &report);
    if std::env::var_os("FTVM_TEST_VERBOSE").is_some() {
        eprintln!("{report}");
    }
}

#[test]
fn a_primary_gone_solo_takes_a_new_backup_that_survives_its_death() {
    let _one_at_a_time = one_at_a_time();
    let hosts = TwoHosts::new(FTVM);
    let sockets = Scratch::new("redundancy-solo-api");
    let primary_socket = format!("{}/primary.sock", sockets.path());
    let mut backup = hosts.start_backup(BACKUP_HOST, FTVM, &[]);
    let mut primary = hosts.start_primary(FTVM, &["--api-socket", &primary_socket]);
    hosts.wait_for_echo(NETCLIENT);
    let watch = hosts.watch(NETCLIENT, WATCH_SECONDS, STREAM_BYTES_PER_S);
    std::thread::sleep(Duration::from_millis(1500));
    backup.kill();
    // Dead, so its TAP is free for the spare (an exit can take seconds on a loaded host).
    let backup = backup.finish();
    let solo = wait_for_role(&primary_socket, "solo", Duration::from_secs(30));
    // The spare takes the dead backup's place on its host.
    let spare = hosts.start_backup(BACKUP_HOST, FTVM, &["--spare"]);
    let added = solo.and_then(|()| {
        remote(&primary_socket, &["add-backup", &TwoHosts::listen_addr(BACKUP_HOST)])
    });
    std::thread::sleep(Duration::from_millis(2000));
    primary.kill();
    let watched = watch.finish_within(Duration::from_secs(90));
    let spare = spare.stop();
    let primary = primary.finish();
    let report = format!(
        "add-backup: {added:?}\nclient: {}{}\n--- primary (h1)\n{}\n--- backup (h2)\n{}\n--- spare (h2)\n{}",
        watched.stdout, watched.stderr, primary.stderr, backup.stderr, spare.stderr
    );
    let added = added.unwrap_or_else(|error| panic!("adding the backup failed: {error}\n{report}"));
    assert_eq!(added["generation"], 2, "{report}");
    assert!(primary.stderr.contains("role: primary -> solo, generation 1"), "{report}");
    assert!(primary.stderr.contains("role: solo -> primary, generation 2"), "{report}");
    assert!(
        spare.stderr.contains("role: backup -> live, generation 2"),
        "the added backup did not take over: {report}"
    );
    assert_clients_intact(&watched.stdout, STREAM_BYTES_PER_S as f64 * 6.0, &report);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `ftvm args...`.
fn spawn(args: &[&str]) -> ftvm_tests::Reaped {
    let mut command = std::process::Command::new(FTVM);
    command.args(args);
    ftvm_tests::Reaped::spawn(command)
}

/// Runs the disk self-test on a pair with these `--disk` arguments (primary, backup, spare),
/// kills the primary, lets the backup add the spare by itself once live (`--restore-to`),
/// kills the backup once it is the spare's primary, and checks that the spare finished the
/// test and left `image_to_verify` whole.
fn disk_test_across_two_failovers(
    scratch: &Scratch,
    disks: [&str; 3],
    image_to_verify: &str,
    disk_test: &str,
) {
    let arbiter = scratch.path();
    let socket = format!("{arbiter}/live.sock");
    let (first, second) =
        (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut backup = spawn(&[
        "backup",
        "--listen",
        &first,
        "--arbiter",
        arbiter,
        "--disk",
        disks[1],
        "--api-socket",
        &socket,
        "--restore-to",
        &second,
    ]);
    let mut primary = spawn(&[
        "primary",
        "--backup",
        &first,
        "--arbiter",
        arbiter,
        "--disk",
        disks[0],
        "--cmdline",
        disk_test,
    ]);
    std::thread::sleep(Duration::from_millis(400));
    primary.kill();
    let spare = spawn(&[
        "backup",
        "--listen",
        &second,
        "--arbiter",
        arbiter,
        "--disk",
        disks[2],
        "--spare",
    ]);
    let added = wait_for_role(&socket, "primary", Duration::from_secs(60));
    backup.kill();
    let spare = spare.finish_within(Duration::from_secs(120));
    let (backup, primary) = (backup.finish(), primary.finish());
    let report = format!(
        "added: {added:?}\n--- primary\n{}\n--- backup\n{}\n--- spare\n{}{}",
        primary.stderr, backup.stderr, spare.stdout, spare.stderr
    );
    // The live side's API said it became the primary (it may be killed before it logs so).
    assert!(added.is_ok(), "{report}");
    assert!(spare.stderr.contains("role: backup -> live, generation 2"), "{report}");
    assert_eq!(spare.status, Some(0), "the spare finished the disk test: {report}");
    assert!(spare.stdout.contains("disk ok: generation 1"), "{report}");
    // The image holds what the guest believes it wrote: a second run verifies it.
    let verify = spawn(&["run", "--cmdline", disk_test, "--disk", image_to_verify]);
    let verify = verify.finish();
    assert!(verify.stdout.contains("generation 1 verified"), "{verify:?}\n{report}");
}

#[test]
fn the_disk_test_survives_two_failovers_on_a_shared_image() {
    let _one_at_a_time = one_at_a_time();
    let scratch = Scratch::new("redundancy-disk");
    ftvm_tests::init_pair(FTVM, &scratch.0);
    let image = format!("{}/shared.img", scratch.path());
    let created = spawn(&[
        "run",
        "--cmdline",
        "role=compute rounds=1",
        "--disk",
        &format!("{image},size=512M,create"),
    ]);
    assert_eq!(created.finish().status, Some(0));
    disk_test_across_two_failovers(&scratch, [&image, &image, &image], &image, DISK_TEST);
}

#[test]
fn the_disk_test_survives_two_failovers_on_own_disks_the_last_one_copied_from_empty() {
    let _one_at_a_time = one_at_a_time();
    let scratch = Scratch::new("redundancy-own-disk");
    ftvm_tests::init_pair(FTVM, &scratch.0);
    let own = |side: &str| format!("{}/{side}.img,size=1G,create,mode=own", scratch.path());
    let spare_image = format!("{}/spare.img", scratch.path());
    disk_test_across_two_failovers(
        &scratch,
        [&own("primary"), &own("backup"), &own("spare")],
        &spare_image,
        OWN_DISK_TEST,
    );
}
