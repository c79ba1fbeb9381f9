//! The FT pair with its arbiter on etcd (`--arbiter etcd://...`), end to end: each test starts
//! its own single-member etcd on loopback (Debian's `etcd-server`; the test fails naming it if
//! the binary is missing) and a pair whose log channel runs through a proxy. A cut channel lets
//! exactly one side go on; a killed primary makes the backup go live; an etcd that stops while
//! the pair runs stalls nothing until a failover needs it, then the sides wait (saying so) and
//! exactly one goes on once etcd is back; a side started while etcd is down waits for it (saying
//! so) and then joins its pair; a bad URL, a prefix without a pair or a cluster that refuses this
//! client stop a side at start. Every VM and etcd is reaped even when a test fails.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftvm_tests::etcd::EtcdServer;
use ftvm_tests::proxy::Proxy;
use ftvm_tests::{Finished, Reaped, Scratch};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh pair under `prefix` of `etcd`; returns its `--arbiter` URL.
fn etcd_pair_url(etcd: &EtcdServer, prefix: &str) -> String {
    let url = etcd.url(prefix);
    let init = ftvm_tests::ftvm(FTVM, &["pair", "init", &url]);
    assert_eq!(init.status, Some(0), "ftvm pair init {url}: {init:?}");
    url
}

/// A pair over a proxy (no network: the guest is the stress role) using the arbiter at `url`;
/// the primary's console goes to `console` if given.
fn proxied_pair(url: &str, console: Option<&Path>) -> (Reaped, Reaped, Proxy) {
    ftvm_tests::require_kvm();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut backup = Command::new(FTVM);
    backup.args(["backup", "--listen", &listen, "--arbiter", url, "--failure-timeout-ms", "200"]);
    let backup = Reaped::spawn(backup);
    let proxy = Proxy::start(&listen);
    let mut primary = Command::new(FTVM);
    primary
        .args(["primary", "--backup", &proxy.addr, "--arbiter", url, "--failure-timeout-ms", "200"])
        .args(["--cmdline", "role=stress seed=3 ms=600000"]);
    if let Some(console) = console {
        primary.arg("--console").arg(console);
    }
    (Reaped::spawn(primary), backup, proxy)
}

/// Which side went on; checks exactly one did and the other halted (127).
fn the_one_that_went_on<'a>(
    primary: &'a Finished,
    backup: &'a Finished,
    context: &str,
) -> (&'a Finished, &'a Finished) {
    let primary_solo = primary.stderr.contains("role: primary -> solo");
    let backup_live = backup.stderr.contains("role: backup -> live");
    assert!(
        primary_solo != backup_live,
        "{context}: exactly one side goes on:\nprimary {primary:?}\nbackup {backup:?}"
    );
    let (winner, loser) = if primary_solo { (primary, backup) } else { (backup, primary) };
    assert_eq!(loser.status, Some(127), "{context}: the loser halts: {loser:?}");
    assert!(loser.stderr.contains("halts"), "{context}: {}", loser.stderr);
    assert_eq!(winner.status, Some(130), "{context}: the winner ran until stopped: {winner:?}");
    (winner, loser)
}

/// `ftvm pair show` names the winner of generation 1.
fn assert_record_names(url: &str, role: &str) {
    let show = ftvm_tests::ftvm(FTVM, &["pair", "show", url]);
    assert!(
        show.stdout.contains(&format!("generation 1: decided: won by {role} on host")),
        "the etcd record names the winner: {show:?}"
    );
}

#[test]
fn cutting_the_channel_lets_exactly_one_side_go_on_with_an_etcd_arbiter() {
    let etcd = EtcdServer::start();
    let url = etcd_pair_url(&etcd, "/ftvm/cut");
    let (primary, backup, proxy) = proxied_pair(&url, None);
    std::thread::sleep(Duration::from_millis(700));
    proxy.cut();
    // Both sides notice within the failure timeout and ask etcd; the loser halts on its own.
    std::thread::sleep(Duration::from_millis(1500));
    let (primary, backup) = (primary.stop(), backup.stop());
    let (winner, _) = the_one_that_went_on(&primary, &backup, "channel cut");
    let role = if std::ptr::eq(winner, &primary) { "primary" } else { "backup" };
    assert_record_names(&url, role);
}

#[test]
fn killing_the_primary_makes_the_backup_go_live_with_an_etcd_arbiter() {
    let etcd = EtcdServer::start();
    let url = etcd_pair_url(&etcd, "/ftvm/kill");
    let (mut primary, backup, _proxy) = proxied_pair(&url, None);
    std::thread::sleep(Duration::from_millis(700));
    primary.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let backup = backup.stop();
    assert!(backup.stderr.contains("role: backup -> live, generation 1"), "{}", backup.stderr);
    assert_eq!(backup.status, Some(130), "the live backup ran until stopped: {backup:?}");
    assert_record_names(&url, "backup");
    // The generation is over: a side started in it again is refused until `pair next`.
    let again = ftvm_tests::ftvm(FTVM, &["backup", "--listen", "127.0.0.1:1", "--arbiter", &url]);
    assert_eq!(again.status, Some(119), "{again:?}");
    assert!(again.stderr.contains(&format!("ftvm pair next {url}")), "{}", again.stderr);
    let next = ftvm_tests::ftvm(FTVM, &["pair", "next", &url]);
    assert!(next.stdout.contains("now at generation 2"), "{next:?}");
}

/// The `at unix ns N` of a role-change line.
fn role_change_unix_ns(stderr: &str, change: &str) -> Option<u128> {
    let line = stderr.lines().find(|line| line.contains(change))?;
    line.rsplit("at unix ns ").next()?.trim().parse().ok()
}

/// How many progress lines the stress guest's console shows.
fn console_lines(console: &Path) -> usize {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    text.lines().filter(|line| line.starts_with("stress: ")).count()
}

#[test]
fn an_etcd_outage_stalls_nothing_until_a_failover_needs_it_then_the_sides_wait_for_it() {
    let mut etcd = EtcdServer::start();
    let url = etcd_pair_url(&etcd, "/ftvm/outage");
    let scratch = Scratch::new("etcd-outage");
    let console = scratch.0.join("primary-console.txt");
    let (primary, backup, proxy) = proxied_pair(&url, Some(&console));
    std::thread::sleep(Duration::from_millis(1000));
    // etcd goes away while the pair runs: the pair needs it only to decide a failover, so the
    // guest's output (released under the output rule, so acknowledged by the backup) goes on.
    etcd.stop();
    let before_outage = console_lines(&console);
    std::thread::sleep(Duration::from_millis(3000));
    let during_outage = console_lines(&console);
    eprintln!("progress lines: {before_outage} when etcd stopped, {during_outage} 3 s later");
    assert!(
        during_outage > before_outage,
        "the pair stalled while etcd was down: {before_outage} progress lines before, \
         {during_outage} after 3 s"
    );
    // Now a failover needs the arbiter: both sides wait for etcd.
    proxy.cut();
    std::thread::sleep(Duration::from_millis(1500));
    let back_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    etcd.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let (primary, backup) = (primary.stop(), backup.stop());
    for (side, name) in [(&primary, "primary"), (&backup, "backup")] {
        assert!(
            side.stderr.contains("arbiter unreachable") && side.stderr.contains("retrying"),
            "{name} says it waits for etcd: {}",
            side.stderr
        );
    }
    let (winner, _) = the_one_that_went_on(&primary, &backup, "etcd outage");
    let went_on_ns = role_change_unix_ns(&winner.stderr, "role: primary -> solo")
        .or_else(|| role_change_unix_ns(&winner.stderr, "role: backup -> live"))
        .unwrap_or_else(|| panic!("the winner's role change has a time: {}", winner.stderr));
    eprintln!("etcd back at {back_unix_ns} ns, the winner went on at {went_on_ns} ns");
    assert!(
        went_on_ns > back_unix_ns,
        "the winner went on ({went_on_ns} ns) before etcd was back ({back_unix_ns} ns)"
    );
}

#[test]
fn a_bad_etcd_url_a_prefix_without_a_pair_or_a_refusing_cluster_stops_a_side_at_start() {
    let etcd = EtcdServer::start();
    let backup_with = |url: &str| {
        ftvm_tests::ftvm(FTVM, &["backup", "--listen", "127.0.0.1:1", "--arbiter", url])
    };
    // A URL that does not parse: a usage error, with the form to write.
    let bad = backup_with(&format!("etcd://{}", etcd.endpoint()));
    assert_eq!(bad.status, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("write it as etcd://HOST:PORT"), "{}", bad.stderr);
    // A prefix that holds no pair (a wrong prefix): 119, naming the command that creates one.
    let empty = etcd.url("/ftvm/no-such-pair");
    let side = backup_with(&empty);
    assert_eq!(side.status, Some(119), "{side:?}");
    assert!(side.stderr.contains(&format!("ftvm pair init {empty}")), "{}", side.stderr);
    // A cluster that refuses this client: 119 with the fix, not an endless retry.
    let url = etcd_pair_url(&etcd, "/ftvm/auth");
    etcd.enable_auth();
    let side = backup_with(&url);
    assert_eq!(side.status, Some(119), "{side:?}");
    assert!(
        side.stderr.contains("refused") && side.stderr.contains("authentication"),
        "{}",
        side.stderr
    );
}

#[test]
fn a_side_started_while_etcd_is_down_waits_for_it_then_joins_its_pair() {
    let mut etcd = EtcdServer::start();
    let url = etcd_pair_url(&etcd, "/ftvm/late");
    etcd.stop();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut backup = Command::new(FTVM);
    backup.args(["backup", "--listen", &listen, "--arbiter", &url]);
    let backup = Reaped::spawn(backup);
    std::thread::sleep(Duration::from_millis(1000));
    etcd.restart();
    let mut primary = Command::new(FTVM);
    primary
        .args(["primary", "--backup", &listen, "--arbiter", &url])
        .args(["--cmdline", "role=stress seed=3 ms=600000"]);
    let primary = Reaped::spawn(primary);
    std::thread::sleep(Duration::from_millis(1500));
    // An orderly stop of the primary ends the pair's log; the backup replays to its end.
    let primary = primary.stop();
    let backup = backup.finish_within(Duration::from_secs(30));
    assert!(
        backup.stderr.contains("arbiter unreachable") && backup.stderr.contains("retrying"),
        "the backup says it waits for etcd: {}",
        backup.stderr
    );
    for (side, name) in [(&primary, "primary"), (&backup, "backup")] {
        assert_eq!(side.status, Some(130), "{name} ran in its pair until stopped: {side:?}");
        assert!(!side.stderr.contains("-> live") && !side.stderr.contains("-> solo"), "{name}");
    }
}
