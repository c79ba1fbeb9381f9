//! The fault-tolerant pair end to end: a client that is not ftvm code
//! streams through the guest's echo service while the primary is SIGKILLed
//! (or the backup is); the log channel is cut with both sides alive; a frame
//! is corrupted on the channel; a divergence is injected. Every VM and
//! namespace is reaped even when a test fails.
//!
//! `FTVM_FT_TRIALS=N` runs N kill points (and N channel cuts) instead of 3.
use std::process::Command;
use std::time::Duration;

use ftvm_tests::netns::Lab;
use ftvm_tests::proxy::Proxy;
use ftvm_tests::{Finished, Reaped, Scratch};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const PROXY: &str = env!("CARGO_BIN_EXE_ftvm-proxy");
const CAPTURE: &str = env!("CARGO_BIN_EXE_ftvm-capture");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/echo_client.py");
const CHANNEL: &str = "127.0.0.1:7000";

fn trials() -> u64 {
    std::env::var("FTVM_FT_TRIALS").ok().and_then(|value| value.parse().ok()).unwrap_or(3)
}

/// A scratch directory holding a fresh pair's identity (its arbiter directory).
fn pair_dir(name: &str) -> Scratch {
    let dir = Scratch::new(&format!("ft-{name}"));
    ftvm_tests::init_pair(FTVM, &dir.0);
    dir
}

/// A small seeded generator for kill points (printed, so a failure reruns).
fn kill_delay_ms(seed: u64) -> u64 {
    let mixed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5851_f42d_4c95_7f2d;
    150 + mixed % 900
}

struct Pair {
    lab: Lab,
    _arbiter: Scratch,
    primary: Reaped,
    backup: Reaped,
}

fn echo_pair(name: &str) -> Pair {
    echo_pair_with(name, CHANNEL, |_| ()).0
}

/// An echo pair whose primary connects to `primary_channel`; `between` runs
/// after the backup started and before the primary does (to put a proxy or a
/// capture in place), and its result is returned with the pair.
fn echo_pair_with<T>(
    name: &str,
    primary_channel: &str,
    between: impl FnOnce(&Lab) -> T,
) -> (Pair, T) {
    let lab = Lab::new(2);
    let arbiter = pair_dir(name);
    let backup = lab.spawn_in_host(
        FTVM,
        &[
            "backup",
            "--listen",
            CHANNEL,
            "--arbiter",
            arbiter.path(),
            "--net",
            &lab.net_flag_for(1, 0),
        ],
    );
    let extra = between(&lab);
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let primary = lab.spawn_in_host(
        FTVM,
        &[
            "primary",
            "--backup",
            primary_channel,
            "--arbiter",
            arbiter.path(),
            "--net",
            &lab.net_flag_for(0, 0),
            "--cmdline",
            &cmdline,
        ],
    );
    let pair = Pair { lab, _arbiter: arbiter, primary, backup };
    let up = pair.client(&["wait", &Lab::guest_ip(0), "7", "20"]).output().expect("python3");
    if !up.status.success() {
        let (primary, backup) = (pair.primary.stop(), pair.backup.stop());
        panic!(
            "the echo service never answered: {}\nprimary: {primary:?}\nbackup: {backup:?}",
            String::from_utf8_lossy(&up.stdout)
        );
    }
    (pair, extra)
}

impl Pair {
    fn client(&self, args: &[&str]) -> Command {
        self.lab.client_command("python3", &[&[CLIENT][..], args].concat())
    }

    fn stream(&self, connections: usize, bytes_each: usize) -> Reaped {
        Reaped::spawn(self.client(&[
            "stream",
            &Lab::guest_ip(0),
            "7",
            &connections.to_string(),
            &bytes_each.to_string(),
        ]))
    }
}

fn assert_stream_ok(client: Finished, context: &str) {
    assert_eq!(
        client.status,
        Some(0),
        "{context}: the client saw a lost, duplicated or reordered byte, or a reset: {}{}",
        client.stdout,
        client.stderr
    );
    assert!(client.stdout.starts_with("ok "), "{context}: {}", client.stdout);
}

#[test]
fn killing_the_primary_mid_stream_loses_no_byte() {
    for trial in 0..trials() {
        let delay_ms = kill_delay_ms(trial);
        eprintln!("ft kill trial {trial}: SIGKILL of the primary {delay_ms} ms into the stream");
        let mut pair = echo_pair("kill");
        // Long enough to outlast the latest kill at today's speeds (with
        // offloads the pair echoes tens of MB/s).
        let client = pair.stream(2, 40_000_000);
        std::thread::sleep(Duration::from_millis(delay_ms));
        pair.primary.kill();
        let client = client.finish();
        let backup = pair.backup.stop();
        let Pair { primary, .. } = pair;
        let primary = primary.finish();
        assert_stream_ok(client, &format!("trial {trial} (kill at {delay_ms} ms)"));
        assert!(
            backup.stderr.contains("role: backup -> live, generation 1"),
            "trial {trial}: {}",
            backup.stderr
        );
        // The console line is output too: released by the primary before it
        // died, or by the backup after it went live.
        assert!(
            format!("{}{}", primary.stdout, backup.stdout)
                .contains("closed (40000000 bytes echoed)"),
            "trial {trial}: primary: {}\nbackup: {}",
            primary.stdout,
            backup.stdout
        );
    }
}

/// Frames the VMM on `tap` wrote into it (the kernel counts them as the TAP's rx).
fn frames_written_to(lab: &Lab, tap: &str) -> u64 {
    let path = format!("/sys/class/net/{tap}/statistics/rx_packets");
    let output = lab.host_command("cat", &[&path]).output().expect("cat");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("a packet count")
}

#[test]
fn a_paused_primary_sends_no_frame_after_the_backup_went_live() {
    for trial in 0..trials() {
        let delay_ms = kill_delay_ms(trial + 100);
        eprintln!("ft pause trial {trial}: SIGSTOP of the primary {delay_ms} ms into the stream");
        let pair = echo_pair("pause");
        let client = pair.stream(2, 12_000_000);
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pair.primary.pid() as i32, libc::SIGSTOP) };
        // Past the failure timeout (300 ms) and the backup's go-live.
        std::thread::sleep(Duration::from_millis(1500));
        let frames_before_wake = frames_written_to(&pair.lab, "tap0");
        // SAFETY: as above.
        unsafe { libc::kill(pair.primary.pid() as i32, libc::SIGCONT) };
        let Pair { lab, _arbiter: arbiter, primary, backup } = pair;
        let primary = primary.finish_within(Duration::from_secs(30));
        assert_eq!(primary.status, Some(127), "trial {trial}: the old primary halts: {primary:?}");
        assert_eq!(
            frames_written_to(&lab, "tap0"),
            frames_before_wake,
            "trial {trial}: the old primary sent frames after the backup went live"
        );
        let client = Reaped::finish_within(client, Duration::from_secs(60));
        let backup = backup.stop();
        assert_stream_ok(client, &format!("trial {trial} (pause at {delay_ms} ms)"));
        assert!(backup.stderr.contains("role: backup -> live"), "trial {trial}: {}", backup.stderr);
        let record = ftvm_tests::ftvm(FTVM, &["pair", "show", arbiter.path()]);
        assert!(
            record.stdout.contains("won by backup on host") && record.stdout.contains(" pid "),
            "trial {trial}: the record names the winner: {record:?}"
        );
    }
}

/// The `at unix ns N` of a role-change line.
fn role_change_unix_ns(stderr: &str, change: &str) -> Option<u128> {
    let line = stderr.lines().find(|line| line.contains(change))?;
    line.rsplit("at unix ns ").next()?.trim().parse().ok()
}

/// What a capture saw of a TAP: the guest's frames (count, time of the last) and the VMM's MAC
/// announcements (time of the last; 0: none), which are not output of the guest.
#[derive(Debug)]
struct Captured {
    frames: u64,
    last_frame_unix_ns: u128,
    last_announcement_unix_ns: u128,
}

/// `frames N last_unix_ns T announcements A last_announcement_unix_ns U` from a stopped capture.
fn captured(capture: Finished) -> Captured {
    let line =
        capture.stdout.lines().find(|line| line.starts_with("frames ")).unwrap_or_else(|| {
            panic!("the capture printed no count: {capture:?}");
        });
    let words: Vec<&str> = line.split_whitespace().collect();
    Captured {
        frames: words[1].parse().unwrap(),
        last_frame_unix_ns: words[3].parse().unwrap(),
        last_announcement_unix_ns: words[7].parse().unwrap(),
    }
}

#[test]
fn a_one_way_link_cut_releases_nothing_from_the_loser_after_the_winner_went_on() {
    for to_backup in [true, false] {
        let context = format!("cut towards the {}", if to_backup { "backup" } else { "primary" });
        let (pair, (proxy, captures)) = echo_pair_with("oneway", "127.0.0.1:7001", |lab| {
            let proxy = lab.spawn_in_host(PROXY, &["127.0.0.1:7001", CHANNEL]);
            (proxy, [lab.spawn_in_host(CAPTURE, &["tap0"]), lab.spawn_in_host(CAPTURE, &["tap1"])])
        });
        let client = pair.stream(2, 8_000_000);
        std::thread::sleep(Duration::from_millis(600));
        let signal = if to_backup { libc::SIGUSR1 } else { libc::SIGUSR2 };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(proxy.pid() as i32, signal) };
        let client = client.finish_within(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        let [tap0, tap1] = captures.map(|capture| captured(capture.stop()));
        let Pair { primary, backup, .. } = pair;
        let (primary, backup) = (primary.stop(), backup.stop());
        assert_stream_ok(client, &context);
        let solo = role_change_unix_ns(&primary.stderr, "role: primary -> solo");
        let live = role_change_unix_ns(&backup.stderr, "role: backup -> live");
        let (went_on_ns, loser, loser_tap, winner_tap) = match (solo, live) {
            (Some(at), None) => (at, &backup, tap1, tap0),
            (None, Some(at)) => (at, &primary, tap0, tap1),
            _ => panic!(
                "{context}: exactly one side goes on:\nprimary {primary:?}\nbackup {backup:?}"
            ),
        };
        eprintln!(
            "{context}: went on at {went_on_ns} ns; loser {loser_tap:?}; winner {winner_tap:?}"
        );
        assert_eq!(loser.status, Some(127), "{context}: the loser halts: {loser:?}");
        assert!(
            loser_tap.frames == 0 || loser_tap.last_frame_unix_ns < went_on_ns,
            "{context}: the loser's last frame ({} ns) came after the winner went on ({went_on_ns} ns)",
            loser_tap.last_frame_unix_ns
        );
        // A backup that stopped hearing its primary announces the guest's MAC whether or not the
        // primary went on: the winner's word must come last, or the LAN keeps sending the
        // guest's traffic to the loser.
        assert!(
            loser_tap.last_announcement_unix_ns < winner_tap.last_announcement_unix_ns,
            "{context}: the loser announced the guest's MAC last ({loser_tap:?}, winner \
             {winner_tap:?})"
        );
    }
}

#[test]
fn killing_the_backup_leaves_the_primary_solo() {
    let mut pair = echo_pair("solo");
    let client = pair.stream(2, 8_000_000);
    std::thread::sleep(Duration::from_millis(300));
    pair.backup.kill();
    let client = client.finish();
    let primary = pair.primary.stop();
    assert_stream_ok(client, "backup killed");
    assert!(primary.stderr.contains("role: primary -> solo, generation 1"), "{}", primary.stderr);
    assert_eq!(primary.status, Some(130), "{primary:?}");
}

/// A pair over a proxy (no network: the guest is the stress role), in this namespace.
fn proxied_pair(arbiter: &Scratch, backup_port: u16, extra: &[&str]) -> (Reaped, Reaped, Proxy) {
    ftvm_tests::require_kvm();
    let listen = format!("127.0.0.1:{backup_port}");
    let mut backup = Command::new(FTVM);
    backup.args([
        "backup",
        "--listen",
        &listen,
        "--arbiter",
        arbiter.path(),
        "--failure-timeout-ms",
        "200",
    ]);
    let backup = Reaped::spawn(backup);
    let proxy = Proxy::start(&listen);
    let mut primary = Command::new(FTVM);
    primary
        .args([
            "primary",
            "--backup",
            &proxy.addr,
            "--arbiter",
            arbiter.path(),
            "--failure-timeout-ms",
            "200",
        ])
        .args(["--cmdline", "role=stress seed=3 ms=600000"])
        .args(extra);
    (Reaped::spawn(primary), backup, proxy)
}

/// Frees a loopback port number for a backup to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn cutting_the_channel_lets_exactly_one_side_go_on() {
    for trial in 0..trials() {
        let arbiter = pair_dir("cut");
        let (primary, backup, proxy) = proxied_pair(&arbiter, free_port(), &[]);
        std::thread::sleep(Duration::from_millis(600 + 100 * trial));
        proxy.cut();
        // Both sides notice within the failure timeout and ask the arbiter;
        // the loser halts on its own (127), the winner runs until stopped.
        std::thread::sleep(Duration::from_millis(1500));
        let (primary, backup) = (primary.stop(), backup.stop());
        let primary_solo = primary.stderr.contains("role: primary -> solo");
        let backup_live = backup.stderr.contains("role: backup -> live");
        assert!(
            primary_solo != backup_live,
            "trial {trial}: exactly one side goes on:\nprimary {primary:?}\nbackup {backup:?}"
        );
        let (winner, loser) = if primary_solo { (&primary, &backup) } else { (&backup, &primary) };
        assert_eq!(loser.status, Some(127), "trial {trial}: the loser halts: {loser:?}");
        assert!(loser.stderr.contains("halts"), "trial {trial}: {}", loser.stderr);
        assert_eq!(
            winner.status,
            Some(130),
            "trial {trial}: the winner ran until stopped: {winner:?}"
        );
    }
}

#[test]
fn a_corrupted_frame_is_reported_and_never_replayed() {
    let arbiter = pair_dir("corrupt");
    let (primary, backup, proxy) = proxied_pair(&arbiter, free_port(), &[]);
    // Past the run-start entry (the kernel image, ~170 KB), inside the input stream.
    proxy.corrupt_at(300_000);
    std::thread::sleep(Duration::from_millis(2500));
    let (primary, backup) = (primary.stop(), backup.stop());
    assert!(
        backup.stderr.contains("the log channel failed")
            && backup.stderr.contains("authentication checksum"),
        "{}",
        backup.stderr
    );
    assert!(!backup.stderr.contains("diverged"), "garbage was never replayed: {}", backup.stderr);
    let primary_solo = primary.stderr.contains("role: primary -> solo");
    let backup_live = backup.stderr.contains("role: backup -> live");
    assert!(
        primary_solo != backup_live,
        "exactly one side goes on:\nprimary {primary:?}\nbackup {backup:?}"
    );
}

#[test]
fn an_injected_divergence_stops_the_backup_which_never_goes_live() {
    let arbiter = pair_dir("diverge");
    let (primary, backup, _proxy) =
        proxied_pair(&arbiter, free_port(), &["--inject-divergence-at", "500"]);
    let backup = backup.finish();
    std::thread::sleep(Duration::from_millis(800));
    let primary = primary.stop();
    assert_eq!(backup.status, Some(125), "{backup:?}");
    assert!(backup.stderr.contains("replay diverged at log entry"), "{}", backup.stderr);
    assert!(!backup.stderr.contains("-> live"), "{}", backup.stderr);
    assert!(primary.stderr.contains("role: primary -> solo"), "{}", primary.stderr);
}

#[test]
fn killing_the_primary_mid_disk_test_keeps_the_shared_disk_whole() {
    // Shared-disk mode: only the live side writes the image; writes are held
    // until acknowledged; the backup re-applies its recent writes at go-live.
    let arbiter = pair_dir("disk");
    let image = arbiter.0.join("shared.img");
    let image = image.to_str().unwrap();
    let mut create = Command::new(FTVM);
    create.args([
        "run",
        "--cmdline",
        "role=compute rounds=1",
        "--disk",
        &format!("{image},size=256M,create"),
    ]);
    assert_eq!(Reaped::spawn(create).finish().status, Some(0));
    kill_the_primary_mid_disk_test(&arbiter, image, image);
}

#[test]
fn killing_the_primary_mid_disk_test_keeps_the_backups_own_disk_whole() {
    // Own-disk mode: each side its own image, both created empty; the backup writes the
    // guest's writes to its image as it replays and reads its own image.
    let arbiter = pair_dir("own-disk");
    let own_image = |side: &str| {
        let image = arbiter.0.join(format!("{side}.img"));
        format!("{},size=256M,create,mode=own", image.display())
    };
    kill_the_primary_mid_disk_test(&arbiter, &own_image("primary"), &own_image("backup"));
}

/// Runs the disk self-test on a pair with these `--disk` arguments, kills the primary during
/// it, and checks that the backup finished it and left its image whole.
fn kill_the_primary_mid_disk_test(arbiter: &Scratch, primary_disk: &str, backup_disk: &str) {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut backup = Command::new(FTVM);
    backup.args([
        "backup",
        "--listen",
        &listen,
        "--arbiter",
        arbiter.path(),
        "--disk",
        backup_disk,
    ]);
    let backup = Reaped::spawn(backup);
    let mut primary = Command::new(FTVM);
    primary
        .args(["primary", "--backup", &listen, "--arbiter", arbiter.path(), "--disk", primary_disk])
        .args(["--cmdline", "role=disk-selftest mib=192"]);
    let mut primary = Reaped::spawn(primary);
    std::thread::sleep(Duration::from_millis(400));
    primary.kill();
    let backup = backup.finish();
    assert!(backup.stderr.contains("role: backup -> live"), "{}", backup.stderr);
    assert_eq!(backup.status, Some(0), "the backup finished the disk test: {backup:?}");
    assert!(backup.stdout.contains("disk ok: generation 1"), "{}", backup.stdout);
    // The image holds what the guest believes it wrote: a second run verifies it.
    let image = backup_disk.split(',').next().unwrap();
    let mut verify = Command::new(FTVM);
    verify.args(["run", "--cmdline", "role=disk-selftest mib=192", "--disk", image]);
    let verify = Reaped::spawn(verify).finish();
    assert!(verify.stdout.contains("generation 1 verified"), "{verify:?}");
}
