//! The FT pair on two simulated hosts (namespaces with their own bridges, the log channel on
//! its own link, a LAN switch, the client on the LAN): a client streaming through the echo
//! guest, and another exchanging requests with it, keep their connections across a host crash
//! of the primary (its links go down, then it is SIGKILLed: no FIN reaches anyone), and get
//! every byte back exactly once, in order; and across a pause of the primary shorter than the
//! failure timeout but longer than half of it, which makes the backup take the guest's
//! traffic and the primary take it back, without a failover. How long they waited is the
//! benchmark's business (`cargo bench -p ftvm-tests --bench ft`), not asserted here. Needs
//! root and /dev/kvm.
use std::time::Duration;

use ftvm_tests::failover::assert_clients_intact;
use ftvm_tests::hosts::{TwoHosts, PRIMARY_HOST};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");

/// How long the clients run, and when in that time the host crashes.
const WATCH_SECONDS: f64 = 5.0;
const CRASH_AFTER: Duration = Duration::from_millis(1500);
const STREAM_BYTES_PER_S: u64 = 200_000;

/// What the stream sends at its pace after `event_after`, if it runs to the end.
fn bytes_after(event_after: Duration) -> f64 {
    STREAM_BYTES_PER_S as f64 * (WATCH_SECONDS - event_after.as_secs_f64())
}

#[test]
fn a_stream_crosses_a_host_crash_of_the_primary_intact() {
    let hosts = TwoHosts::new(FTVM);
    let (mut primary, backup) = hosts.start_pair(FTVM, &[]);
    hosts.wait_for_echo(NETCLIENT);
    let watch = hosts.watch(NETCLIENT, WATCH_SECONDS, STREAM_BYTES_PER_S);
    std::thread::sleep(CRASH_AFTER);
    hosts.cut_host(PRIMARY_HOST);
    primary.kill();
    let watched = watch.finish_within(Duration::from_secs(90));
    let backup = backup.stop();
    let primary = primary.finish();
    let report = format!(
        "client: {}{}\n--- primary\n{}\n--- backup\n{}",
        watched.stdout, watched.stderr, primary.stderr, backup.stderr
    );
    assert!(backup.stderr.contains("role: backup -> live"), "the backup never went live: {report}");
    assert_clients_intact(&watched.stdout, bytes_after(CRASH_AFTER), &report);
}

#[test]
fn a_pause_of_the_primary_shorter_than_the_timeout_moves_no_guest() {
    // A long timeout keeps the pause clear of both thresholds on a loaded machine.
    const TIMEOUT_MS: &str = "1000";
    const PAUSE: Duration = Duration::from_millis(750);
    let hosts = TwoHosts::new(FTVM);
    let (primary, backup) = hosts.start_pair(FTVM, &["--failure-timeout-ms", TIMEOUT_MS]);
    hosts.wait_for_echo(NETCLIENT);
    let watch = hosts.watch(NETCLIENT, WATCH_SECONDS, STREAM_BYTES_PER_S);
    std::thread::sleep(CRASH_AFTER);
    primary.signal(libc::SIGSTOP);
    std::thread::sleep(PAUSE);
    primary.signal(libc::SIGCONT);
    let watched = watch.finish_within(Duration::from_secs(90));
    // The primary first: the end of its run reaches the backup, which ends with it. A backup
    // stopped first would leave the primary alone, and it would rightly go solo.
    let (primary, backup) = (primary.stop(), backup.stop());
    let report = format!(
        "client: {}{}\n--- primary\n{}\n--- backup\n{}",
        watched.stdout, watched.stderr, primary.stderr, backup.stderr
    );
    for side in [&primary.stderr, &backup.stderr] {
        assert!(
            !side.contains("role: primary -> ") && !side.contains("role: backup -> "),
            "a failover: {report}"
        );
    }
    assert!(
        backup.stderr.contains("the guest's MAC is announced here"),
        "the backup did not take the traffic at half the timeout: {report}"
    );
    assert!(backup.stderr.contains("the primary is heard again"), "{report}");
    assert!(
        primary.stderr.contains("announcing it again"),
        "the primary did not take its traffic back: {report}"
    );
    assert_clients_intact(&watched.stdout, bytes_after(CRASH_AFTER + PAUSE), &report);
}
