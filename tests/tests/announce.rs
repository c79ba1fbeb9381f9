//! A VM announces its MAC when its NIC comes up (a gratuitous ARP), so a
//! switch learns its port before anyone talks to it: an echo server, which
//! sends nothing unasked, shows up in its bridge's forwarding table on its
//! own TAP.
use std::time::{Duration, Instant};

use ftvm_tests::netns::Lab;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

#[test]
fn a_vm_announces_its_mac_when_its_nic_comes_up() {
    let lab = Lab::new(1);
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let vm = lab.spawn_in_host(FTVM, &["run", "--net", &lab.net_flag(0), "--cmdline", &cmdline]);
    let mac = "52:54:00:10:00:02";
    let deadline = Instant::now() + Duration::from_secs(20);
    let learned = loop {
        let output = lab.host_command("bridge", &["fdb", "show", "dev", "tap0"]).output().unwrap();
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        // The learned entry (not the TAP's own permanent address).
        if table.lines().any(|line| line.starts_with(mac) && !line.contains("permanent")) {
            break Ok(table);
        }
        if Instant::now() >= deadline {
            break Err(table);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (finished, _) = ftvm_tests::stop_all([vm]);
    assert!(
        learned.is_ok(),
        "the bridge never learned {mac} on tap0: {learned:?}\n{}{}",
        finished[0].stdout,
        finished[0].stderr
    );
}
