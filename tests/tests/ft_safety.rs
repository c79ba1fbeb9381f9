//! The FT pair's promises outside the clean kill (with `ft.rs`, which holds the network cases:
//! a paused primary's frames, one-way link cuts): a paused primary writes nothing to the shared
//! disk after the backup went live; strangers on the backup's port change nothing; sides of different generations or keys refuse each other; an
//! unusable arbiter directory stops a side at start, and storage that stops answering mid-run
//! is retried until a stop signal. Every VM and directory is reaped even when a test fails.
//!
//! `FTVM_FT_TRIALS=N` runs N random pause points instead of 2.
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ftvm_tests::proxy::Proxy;
use ftvm_tests::{Finished, Reaped, Scratch};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
/// Long enough for any single VM in these tests.
const LIMIT: Duration = Duration::from_secs(90);

fn trials() -> u64 {
    std::env::var("FTVM_FT_TRIALS").ok().and_then(|value| value.parse().ok()).unwrap_or(2)
}

fn pair_dir(name: &str) -> Scratch {
    let dir = Scratch::new(&format!("safety-{name}"));
    ftvm_tests::init_pair(FTVM, &dir.0);
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `unshare` (util-linux), which runs a side in a mount namespace of its own; fails naming
/// the package when it is missing.
fn unshare() -> Command {
    let found =
        Command::new("unshare").arg("--version").output().is_ok_and(|out| out.status.success());
    assert!(found, "`unshare` is not installed; these tests need it: apt-get install util-linux");
    Command::new("unshare")
}

fn ftvm(args: &[&str]) -> Command {
    let mut command = Command::new(FTVM);
    command.args(args);
    command
}

fn signal(process: &Reaped, signal: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(process.pid() as i32, signal) };
}

fn image_hash(path: &std::path::Path) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(&std::fs::read(path).expect("the image"));
    hasher.finish()
}

/// A plain run of the disk test on `image`: verifies the last generation, writes the next.
fn disk_selftest(image: &str) -> Finished {
    let command = ftvm(&["run", "--cmdline", "role=disk-selftest mib=192", "--disk", image]);
    Reaped::spawn(command).finish_within(LIMIT)
}

/// A seeded pause point in ms (printed by the caller, so a failure reruns).
fn pause_delay_ms(seed: u64) -> u64 {
    let mixed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23) ^ 0x2545_f491_4f6c_dd1d;
    150 + mixed % 700
}

#[test]
fn a_paused_primary_writes_nothing_to_the_shared_disk_after_the_backup_went_live() {
    ftvm_tests::require_kvm();
    for trial in 0..trials() {
        let delay_ms = pause_delay_ms(trial);
        eprintln!("pause trial {trial}: SIGSTOP of the primary {delay_ms} ms into the disk test");
        let dir = pair_dir("pause");
        let image = dir.0.join("shared.img");
        let image_arg = image.to_str().unwrap();
        let create = ftvm(&["run", "--cmdline", "role=compute rounds=1", "--disk"]);
        let mut create = create;
        create.arg(format!("{image_arg},size=256M,create"));
        assert_eq!(Reaped::spawn(create).finish().status, Some(0));
        let listen = format!("127.0.0.1:{}", free_port());
        let backup = Reaped::spawn(ftvm(&[
            "backup",
            "--listen",
            &listen,
            "--arbiter",
            dir.path(),
            "--disk",
            image_arg,
        ]));
        let primary = Reaped::spawn(ftvm(&[
            "primary",
            "--backup",
            &listen,
            "--arbiter",
            dir.path(),
            "--disk",
            image_arg,
            "--cmdline",
            "role=disk-selftest mib=192",
        ]));
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(&primary, libc::SIGSTOP);
        let backup = backup.finish_within(LIMIT);
        assert_eq!(backup.status, Some(0), "trial {trial}: the backup finished: {backup:?}");
        assert!(backup.stderr.contains("role: backup -> live"), "trial {trial}: {}", backup.stderr);
        // A later run writes the image (generation 2 of the disk test's data).
        let later = disk_selftest(image_arg);
        assert!(later.stdout.contains("disk ok: generation 2"), "trial {trial}: {later:?}");
        let written = image_hash(&image);
        // The old primary wakes: it must find its lease gone, lose the arbiter and halt
        // without performing a single write it still held.
        signal(&primary, libc::SIGCONT);
        let primary = primary.finish_within(LIMIT);
        assert_eq!(primary.status, Some(127), "trial {trial}: the old primary halts: {primary:?}");
        assert_eq!(image_hash(&image), written, "trial {trial}: the old primary wrote the image");
        let verify = disk_selftest(image_arg);
        assert!(verify.stdout.contains("generation 2 verified"), "trial {trial}: {verify:?}");
    }
}

/// A pair over a proxy running the stress guest, with pair directory `dir`.
fn proxied_pair(dir: &Scratch) -> (Reaped, Reaped, Proxy) {
    ftvm_tests::require_kvm();
    let listen = format!("127.0.0.1:{}", free_port());
    let timeout = ["--failure-timeout-ms", "200"];
    let backup = Reaped::spawn({
        let mut command = ftvm(&["backup", "--listen", &listen, "--arbiter", dir.path()]);
        command.args(timeout);
        command
    });
    let proxy = Proxy::start(&listen);
    let primary = Reaped::spawn({
        let mut command = ftvm(&["primary", "--backup", &proxy.addr, "--arbiter", dir.path()]);
        command.args(timeout).args(["--cmdline", "role=stress seed=5 ms=600000"]);
        command
    });
    (primary, backup, proxy)
}

#[test]
fn strangers_on_the_backups_port_change_nothing() {
    ftvm_tests::require_kvm();
    let dir = pair_dir("strangers");
    // A recorded log: its first frames are a valid-looking RunStart of some guest.
    let log = dir.0.join("recorded.ftlog");
    let record = Reaped::spawn(ftvm(&[
        "record",
        "--log",
        log.to_str().unwrap(),
        "--cmdline",
        "role=compute rounds=1",
    ]))
    .finish_within(LIMIT);
    assert_eq!(record.status, Some(0), "{record:?}");
    let recorded = std::fs::read(&log).unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let backup = Reaped::spawn(ftvm(&["backup", "--listen", &listen, "--arbiter", dir.path()]));
    let connect = || {
        let start = Instant::now();
        loop {
            match TcpStream::connect(&listen) {
                Ok(stream) => return stream,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => panic!("the backup never listened on {listen}: {error}"),
            }
        }
    };
    let silent = connect();
    let mut garbage = connect();
    garbage.write_all(&[0x5a; 256]).unwrap();
    let mut replayed_log = connect();
    let _ = replayed_log.write_all(&recorded);
    let mut replayed_frames = connect();
    let _ = replayed_frames.write_all(&recorded[recorded.len().min(64)..]);
    std::thread::sleep(Duration::from_millis(300));

    let primary = Reaped::spawn(ftvm(&[
        "primary",
        "--backup",
        &listen,
        "--arbiter",
        dir.path(),
        "--cmdline",
        "role=stress seed=9 ms=3000",
    ]));
    std::thread::sleep(Duration::from_millis(1500));
    let late = connect();
    let primary = primary.finish_within(LIMIT);
    let backup = backup.finish_within(LIMIT);
    assert_eq!(primary.status, Some(0), "{primary:?}");
    assert_eq!(backup.status, Some(0), "the backup replayed the real guest to its end: {backup:?}");
    assert!(!backup.stderr.contains("-> live"), "{}", backup.stderr);
    assert!(!primary.stderr.contains("-> solo"), "{}", primary.stderr);
    assert!(backup.stderr.contains("replaying `role=stress seed=9 ms=3000`"), "{}", backup.stderr);
    for stranger in [&silent, &garbage, &replayed_log, &replayed_frames, &late] {
        let addr = stranger.local_addr().unwrap().to_string();
        assert!(
            backup.stderr.contains(&format!("refused a connection from {addr}")),
            "stranger {addr} not named: {}",
            backup.stderr
        );
    }
    assert!(backup.stderr.contains("already paired"), "{}", backup.stderr);
}

/// Copies the pair files of `from` into a fresh directory.
fn copy_pair(from: &Scratch, name: &str) -> Scratch {
    let to = Scratch::new(name);
    for file in ["pair", "pair.key"] {
        std::fs::copy(from.0.join(file), to.0.join(file)).unwrap();
    }
    to
}

#[test]
fn sides_of_different_generations_or_keys_refuse_each_other_and_neither_goes_live() {
    ftvm_tests::require_kvm();
    let pair = pair_dir("mismatch");
    // The same pair one generation on: a failover decided generation 1 there.
    let next = copy_pair(&pair, "mismatch-next");
    storage::arbiter::Arbiter::new(&next.0).try_set(1, "backup on host elsewhere").unwrap();
    let advanced = ftvm_tests::ftvm(FTVM, &["pair", "next", next.path()]);
    assert!(advanced.stdout.contains("generation 2"), "{advanced:?}");
    // The same pair id and generation with another key.
    let rekeyed = copy_pair(&pair, "mismatch-key");
    let other = pair_dir("mismatch-other");
    std::fs::copy(other.0.join("pair.key"), rekeyed.0.join("pair.key")).unwrap();

    for (primary_dir, why) in
        [(&next, "runs generation 2, this side generation 1"), (&rekeyed, "different keys")]
    {
        let listen = format!("127.0.0.1:{}", free_port());
        let backup =
            Reaped::spawn(ftvm(&["backup", "--listen", &listen, "--arbiter", pair.path()]));
        let primary = Reaped::spawn(ftvm(&[
            "primary",
            "--backup",
            &listen,
            "--arbiter",
            primary_dir.path(),
            "--cmdline",
            "role=stress seed=1 ms=60000",
        ]))
        .finish_within(LIMIT);
        std::thread::sleep(Duration::from_millis(300));
        let backup = backup.stop();
        let check = |side: &Finished, name: &str| {
            assert!(
                side.stderr.contains(why.split(',').next().unwrap()) || side.stderr.contains(why),
                "{name} does not say why ({why}): {}",
                side.stderr
            );
            assert!(
                !side.stderr.contains("-> live") && !side.stderr.contains("-> solo"),
                "{name}: {}",
                side.stderr
            );
        };
        assert_eq!(primary.status, Some(119), "{primary:?}");
        check(&primary, "primary");
        assert_eq!(backup.status, Some(130), "the backup kept waiting: {backup:?}");
        check(&backup, "backup");
    }
}

#[test]
fn an_unusable_arbiter_directory_or_attachment_stops_a_side_at_start() {
    let scratch = Scratch::new("arbiter-dirs");
    let listen = format!("127.0.0.1:{}", free_port());
    let missing = scratch.0.join("missing");
    let file = scratch.0.join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let empty = scratch.0.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let decided = pair_dir("decided");
    storage::arbiter::Arbiter::new(&decided.0).try_set(1, "backup on host b").unwrap();
    let backup_in =
        |dir: &str| ftvm_tests::ftvm(FTVM, &["backup", "--listen", &listen, "--arbiter", dir]);
    for (dir, fix) in [
        (missing.to_str().unwrap(), "create the directory"),
        (file.to_str().unwrap(), "name a directory"),
        (empty.to_str().unwrap(), "ftvm pair init"),
        (decided.path(), "ftvm pair next"),
    ] {
        let side = backup_in(dir);
        assert_eq!(side.status, Some(119), "{dir}: {side:?}");
        assert!(side.stderr.contains(fix) && side.stderr.contains(dir), "{dir}: {}", side.stderr);
    }
    // The backup opens its attachments before it waits, so a missing image is found now, not
    // after it won the arbiter with no guest to run.
    let pair = pair_dir("attachments");
    let image = scratch.0.join("absent.img");
    let side = ftvm_tests::ftvm(
        FTVM,
        &[
            "backup",
            "--listen",
            &listen,
            "--arbiter",
            pair.path(),
            "--disk",
            image.to_str().unwrap(),
        ],
    );
    assert_eq!(side.status, Some(120), "{side:?}");
    assert!(side.stderr.contains("absent.img"), "{}", side.stderr);
    // Read-only and full storage, each a tmpfs in a mount namespace of its own (root).
    let mounted = scratch.0.join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    let mounted = mounted.to_str().unwrap();
    for (setup, fix) in [
        (format!("mount -t tmpfs -o ro none {mounted}"), "read-write"),
        (
            format!(
                "mount -t tmpfs -o size=64k none {mounted} && \
                 (dd if=/dev/zero of={mounted}/fill bs=4k count=64 2>/dev/null || true)"
            ),
            "free some space",
        ),
    ] {
        let script = format!("{setup} && exec {FTVM} backup --listen {listen} --arbiter {mounted}");
        let output = unshare()
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .expect("unshare (util-linux) runs the side in a mount namespace of its own");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(119), "{setup}: {stderr}");
        assert!(stderr.contains(fix), "{setup}: {stderr}");
    }
}

#[test]
fn arbiter_storage_that_stops_answering_is_retried_and_a_stop_signal_still_ends_the_side() {
    let dir = pair_dir("unreachable");
    let (primary, backup, proxy) = proxied_pair(&dir);
    std::thread::sleep(Duration::from_millis(700));
    // The shared storage goes away (an unmounted or unreachable share), then the link fails.
    let away = dir.0.with_extension("away");
    std::fs::rename(&dir.0, &away).unwrap();
    proxy.cut();
    std::thread::sleep(Duration::from_millis(1500));
    let (primary, backup) = (primary.stop(), backup.stop());
    std::fs::rename(&away, &dir.0).unwrap();
    for (side, name) in [(&primary, "primary"), (&backup, "backup")] {
        assert!(side.stderr.contains("arbiter unreachable"), "{name}: {}", side.stderr);
        assert!(side.stderr.contains("retrying"), "{name}: {}", side.stderr);
        assert_eq!(side.status, Some(130), "{name} stopped on SIGTERM: {side:?}");
        assert!(!side.stderr.contains("-> live") && !side.stderr.contains("-> solo"), "{name}");
    }
}

#[test]
fn a_write_the_shared_disk_refuses_stops_the_primarys_output_and_halts_it() {
    ftvm_tests::require_kvm();
    let dir = pair_dir("diskfull");
    let mounted = dir.0.join("mnt");
    std::fs::create_dir(&mounted).unwrap();
    let (mounted, pair) = (mounted.to_str().unwrap(), dir.path());
    let listen = format!("127.0.0.1:{}", free_port());
    // A sparse 64 MiB image on a 44 MiB tmpfs (in a mount namespace of its own): the guest's
    // writes past 44 MiB of its 48 fail on the host with ENOSPC.
    let script = format!(
        "mount -t tmpfs -o size=44m none {mounted} && \
         {FTVM} run --cmdline 'role=compute rounds=1' --disk {mounted}/img,size=64M,create \
           >/dev/null 2>&1 && \
         {{ {FTVM} backup --listen {listen} --arbiter {pair} --disk {mounted}/img \
             >{pair}/backup.out 2>{pair}/backup.err & backup=$!; }} && \
         {FTVM} primary --backup {listen} --arbiter {pair} --disk {mounted}/img \
           --cmdline 'role=disk-selftest mib=48' >{pair}/primary.out 2>{pair}/primary.err; \
         status=$?; kill -TERM $backup; wait $backup; exit $status"
    );
    let mut command = unshare();
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let finished = Reaped::spawn(command).finish_within(LIMIT);
    let read = |name: &str| std::fs::read_to_string(dir.0.join(name)).unwrap_or_default();
    let (stdout, stderr) = (read("primary.out"), read("primary.err"));
    assert_eq!(finished.status, Some(120), "the primary halts: {stderr}\n{finished:?}");
    assert!(stderr.contains("the shared disk refused a write"), "{stderr}");
    // Nothing the guest printed after the failed write reached the console: neither success
    // nor the error the guest met on its next request.
    assert!(!stdout.contains("disk ok") && !stdout.contains("write"), "{stdout}");
}

#[test]
fn a_backup_stopped_mid_replay_exits_130_and_its_primary_goes_on_solo() {
    let dir = pair_dir("stop-backup");
    let (primary, backup, _proxy) = proxied_pair(&dir);
    std::thread::sleep(Duration::from_millis(800));
    let backup = backup.stop();
    assert_eq!(backup.status, Some(130), "an operator's stop, not a divergence: {backup:?}");
    assert!(!backup.stderr.contains("diverged"), "{}", backup.stderr);
    std::thread::sleep(Duration::from_millis(1000));
    let primary = primary.stop();
    assert!(primary.stderr.contains("role: primary -> solo"), "{}", primary.stderr);
}
