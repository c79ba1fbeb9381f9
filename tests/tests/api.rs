//! The API socket end to end: `ftvm remote --api-socket PATH status` reports a running VMM's
//! state as JSON (a standalone guest, both sides of a pair), `... stop` stops it in an orderly
//! way (exit 130), and the socket goes with the VMM. Every VM and directory is reaped even
//! when a test fails.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ftvm_tests::{Reaped, Scratch};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

/// Asks the VMM on `socket` for `request`, retrying while it is still starting.
fn remote(socket: &Path, request: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(FTVM)
            .args(["remote", "--api-socket", socket.to_str().unwrap(), request])
            .output()
            .expect("ftvm remote runs");
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).expect("ftvm remote prints JSON");
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(Instant::now() < deadline, "no answer on {}: {stderr}", socket.display());
        assert!(stderr.contains("no VMM answers"), "{stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_standalone_vmm_reports_its_state_and_stops_when_asked() {
    ftvm_tests::require_kvm();
    let scratch = Scratch::new("api");
    let socket = scratch.0.join("vm.sock");
    let mut run = Command::new(FTVM);
    run.args(["run", "--cmdline", "role=stress seed=5 ms=600000", "--api-socket"]).arg(&socket);
    let run = Reaped::spawn(run);
    let first = remote(&socket, "status");
    assert_eq!(first["role"], "standalone", "{first}");
    assert_eq!(first["pid"], run.pid(), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    let second = remote(&socket, "status");
    assert!(second["landmarks"].as_u64() > first["landmarks"].as_u64(), "{first} {second}");
    assert_eq!(remote(&socket, "stop")["stopping"], true);
    let finished = run.finish_within(Duration::from_secs(30));
    assert_eq!(finished.status, Some(130), "{finished:?}");
    assert!(!socket.exists(), "the socket goes with the VMM");
    let gone = Command::new(FTVM)
        .args(["remote", "--api-socket", socket.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no VMM answers"));
}

#[test]
fn both_sides_of_a_pair_report_role_generation_and_replay() {
    ftvm_tests::require_kvm();
    let scratch = Scratch::new("api-pair");
    ftvm_tests::init_pair(FTVM, &scratch.0);
    let listen = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let (primary_socket, backup_socket) = (scratch.0.join("p.sock"), scratch.0.join("b.sock"));
    let mut backup = Command::new(FTVM);
    backup.args(["backup", "--listen", &listen, "--arbiter", scratch.path(), "--api-socket"]);
    backup.arg(&backup_socket);
    let backup = Reaped::spawn(backup);
    let mut primary = Command::new(FTVM);
    primary
        .args(["primary", "--backup", &listen, "--arbiter", scratch.path()])
        .args(["--cmdline", "role=stress seed=5 ms=600000", "--api-socket"])
        .arg(&primary_socket);
    let primary = Reaped::spawn(primary);
    std::thread::sleep(Duration::from_millis(500));
    let primary_status = remote(&primary_socket, "status");
    assert_eq!(primary_status["role"], "primary", "{primary_status}");
    assert_eq!(primary_status["generation"], 1, "{primary_status}");
    assert!(primary_status["sent_seq"].as_u64() > Some(1), "{primary_status}");
    let backup_status = remote(&backup_socket, "status");
    assert_eq!(backup_status["role"], "backup", "{backup_status}");
    assert!(backup_status["replayed_seq"].as_u64() > Some(1), "{backup_status}");
    assert!(backup_status["landmarks"].as_u64() > Some(0), "{backup_status}");
    // Stopping the primary through its socket ends the pair's log; the backup replays to its
    // end and stops there too.
    remote(&primary_socket, "stop");
    let primary = primary.finish_within(Duration::from_secs(30));
    let backup = backup.finish_within(Duration::from_secs(30));
    assert_eq!(primary.status, Some(130), "{primary:?}");
    assert_eq!(backup.status, Some(130), "{backup:?}");
    assert!(!backup.stderr.contains("-> live"), "{}", backup.stderr);
}
