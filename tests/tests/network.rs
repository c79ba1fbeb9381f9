//! The guest on a real network: a host client in its own namespace (a Python
//! program, not ftvm code) pushes 10 MiB through the guest's TCP echo service
//! over several connections; ICMP echo (from Rust, no `ping` needed); record
//! and replay of an echo session.
use ftvm_tests::bench::{client, ping};
use ftvm_tests::netns::Lab;
use ftvm_tests::{ftvm, net_packets, summary_field, Finished};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");
const PORT: &str = "7";

fn echo_cmdline() -> String {
    format!("role=echo port={PORT} {}", Lab::guest_net_args(0))
}

#[test]
fn ten_mib_through_the_echo_service_and_ping() {
    let lab = Lab::new(1);
    let vm =
        lab.spawn_in_host(FTVM, &["run", "--net", &lab.net_flag(0), "--cmdline", &echo_cmdline()]);
    let ip = Lab::guest_ip(0);
    client(&lab, &["wait", &ip, PORT, "20"]);
    let result = client(&lab, &["stream", &ip, PORT, "4", &(10 * 1024 * 1024 / 4).to_string()]);
    assert!(result.starts_with("ok 10485760 "), "{result}");
    // A burst of simultaneous connects: every one is accepted.
    let burst = client(&lab, &["stream", &ip, PORT, "100", "10000"]);
    assert!(burst.starts_with("ok 1000000 "), "{burst}");
    let (replies, _) = ping(&lab, NETCLIENT, &ip, 3, 200);
    assert_eq!(replies, 3, "the guest answers every ICMP echo request");
    let finished = vm.stop();
    assert_eq!(finished.status, Some(130), "an orderly stop: {finished:?}");
    assert!(finished.stdout.contains("connection 104 closed"), "{}", finished.stdout);
    assert!(finished.stderr.contains("net-rx"), "{}", finished.stderr);
}

#[test]
fn an_echo_session_replays_exactly() {
    let lab = Lab::new(1);
    let dir = std::env::temp_dir().join(format!("ftvm-echo-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("echo.ftlog");
    let log = log.to_str().unwrap();
    let vm = lab.spawn_in_host(
        FTVM,
        &["record", "--log", log, "--net", &lab.net_flag(0), "--cmdline", &echo_cmdline()],
    );
    let ip = Lab::guest_ip(0);
    client(&lab, &["wait", &ip, PORT, "20"]);
    client(&lab, &["stream", &ip, PORT, "3", "200000"]);
    client(&lab, &["rtt", &ip, PORT, "50"]);
    let recorded = vm.stop();
    assert_eq!(recorded.status, Some(130), "{recorded:?}");
    let replayed: Finished = ftvm(FTVM, &["replay", "--log", log]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        replayed.status,
        Some(130),
        "the replay stops where the recording was stopped: {replayed:?}"
    );
    for key in ["exit", "landmarks", "console", "memory", "vcpu"] {
        assert_eq!(
            summary_field(&replayed.stderr, key),
            summary_field(&recorded.stderr, key),
            "{key}"
        );
    }
    let net_line = |stderr: &str| {
        stderr.lines().find(|line| line.starts_with("ftvm: net-tx")).map(str::to_owned)
    };
    assert!(
        net_line(&recorded.stderr).is_some_and(|line| !line.contains("net-tx 0 ")),
        "{}",
        recorded.stderr
    );
    assert_eq!(
        net_line(&replayed.stderr),
        net_line(&recorded.stderr),
        "the same frames transmitted, in order"
    );
    // 600 kB each way in fewer packets than 1500-byte frames could carry:
    // large segments crossed the recording whole (one log entry each).
    let (sent, received) = net_packets(&recorded.stderr).expect("the net-tx line");
    assert!(
        sent < 600_000 / 1460 && received < 600_000 / 1460,
        "no large segments: {sent} packets sent, {received} received"
    );
    assert_eq!(replayed.stdout, recorded.stdout);
}

#[test]
fn a_hostile_guest_attacking_its_nic_and_disk_leaves_the_vmm_alive() {
    let lab = Lab::new(1);
    let dir = std::env::temp_dir().join(format!("ftvm-hostile-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = format!("{},size=1M,create", dir.join("disk.img").display());
    let vm = lab.spawn_in_host(
        FTVM,
        &["run", "--net", &lab.net_flag(0), "--disk", &disk, "--cmdline", "role=hostile"],
    );
    let finished = vm.finish();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        finished.status,
        Some(122),
        "the guest's own triple fault ends the run: {finished:?}"
    );
    for step in [
        "virtio-net: nonsense offload headers",
        "virtio-net: garbage descriptor tables",
        "virtio-blk: garbage descriptor tables",
        "expect a triple fault",
    ] {
        assert!(finished.stdout.contains(step), "the guest reached `{step}`: {}", finished.stdout);
    }
    assert!(finished.stderr.contains("virtio misuses"), "{}", finished.stderr);
    // Every nonsense header was refused (the report counts them, first example first).
    let refused = finished
        .stderr
        .lines()
        .find(|line| line.contains("refused for nonsense offload headers"))
        .unwrap_or_else(|| panic!("no refused headers reported: {}", finished.stderr));
    assert!(refused.contains(" 8 "), "all 8 refused: {refused}");
}
