//! The FT pair on two simulated hosts (namespaces with their own bridges, the log channel on
//! its own link, a LAN switch, the client on the LAN): a client streaming through the echo
//! guest, and another exchanging requests with it, keep their connections across a host crash
//! of the primary (its links go down, then it is SIGKILLed: no FIN reaches anyone), and get
//! every byte back exactly once, in order. How long they waited is the benchmark's business
//! (`cargo bench -p ftvm-tests --bench ft`), not asserted here. Needs root and /dev/kvm.
use std::time::Duration;

use ftvm_tests::failover::field;
use ftvm_tests::hosts::{TwoHosts, PRIMARY_HOST};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");

/// How long the clients run, and when in that time the host crashes.
const WATCH_SECONDS: f64 = 5.0;
const CRASH_AFTER: Duration = Duration::from_millis(1500);
const STREAM_BYTES_PER_S: u64 = 200_000;

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
    let stream = |key: &str| {
        field(&watched.stdout, "stream", key).unwrap_or_else(|| panic!("no {key}: {report}"))
    };
    let requests = |key: &str| {
        field(&watched.stdout, "requests", key).unwrap_or_else(|| panic!("no {key}: {report}"))
    };
    // The stream ran on well past the crash (its pace times the time after it), on one
    // connection, and came back whole.
    let after_crash_bytes = STREAM_BYTES_PER_S as f64 * (WATCH_SECONDS - CRASH_AFTER.as_secs_f64());
    assert!(stream("sent_bytes") > after_crash_bytes, "the stream stopped early: {report}");
    assert_eq!(stream("resets"), 0.0, "the stream's connection failed: {report}");
    for damage in ["lost_bytes", "duplicated_bytes", "reordered_bytes", "corrupt_bytes"] {
        assert_eq!(stream(damage), 0.0, "{damage}: {report}");
    }
    assert_eq!(stream("echoed_bytes"), stream("sent_bytes"), "{report}");
    assert_eq!(requests("resets"), 0.0, "the request connection failed: {report}");
    assert_eq!(requests("wrong_replies"), 0.0, "{report}");
    assert!(requests("replies") > 0.0, "{report}");
}
