//! A network lab in its own namespaces, removed on drop (even when a test
//! panics): a "host" namespace with a bridge, one TAP per VM and the VMMs
//! inside it, and a "client" namespace joined to the bridge by a veth pair,
//! where client programs run. Only addresses inside 10.10.0.0/24 are used.
//!
//! ```text
//!  client ns: veth-c 10.10.0.100 ──┐
//!  host ns:   br0 10.10.0.1 ── veth-h, tap0 (VM 10.10.0.2), tap1 (VM 10.10.0.3), ...
//! ```
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Reaped;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Address of the client namespace's end of the veth.
pub const CLIENT_IP: &str = "10.10.0.100";
/// Address of the bridge in the host namespace.
pub const BRIDGE_IP: &str = "10.10.0.1";

/// The namespaces, bridge, TAPs and veth of one test.
pub struct Lab {
    host_ns: String,
    client_ns: String,
    taps: usize,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` is needed (apt-get install iproute2)");
    assert!(
        output.status.success(),
        "ip {} failed: {} (these tests need root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Panics, naming the package to install, when `program` (a bare name) is
/// not on the PATH: `ip netns exec` would only say that its exec failed.
fn require_program(program: &str) {
    if program.contains('/') {
        return;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
        return;
    }
    let package = match program {
        "python3" => "python3",
        "ip" | "bridge" => "iproute2",
        "cat" => "coreutils",
        other => other,
    };
    panic!("`{program}` is not installed; these tests need it: apt-get install {package}");
}

impl Lab {
    /// A lab with `taps` TAP devices (tap0, tap1, ...) on the bridge.
    pub fn new(taps: usize) -> Lab {
        let id = format!("{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::SeqCst));
        let lab = Lab { host_ns: format!("ftvm-h-{id}"), client_ns: format!("ftvm-c-{id}"), taps };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &lab.host_ns]);
        ip(&["netns", "add", &lab.client_ns]);
        let host = ["-n", lab.host_ns.as_str()];
        let in_host = |args: &[&str]| ip(&[&host[..], args].concat());
        in_host(&["link", "set", "lo", "up"]);
        in_host(&["link", "add", "br0", "type", "bridge"]);
        in_host(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "br0"]);
        in_host(&["link", "set", "br0", "up"]);
        for index in 0..taps {
            let tap = format!("tap{index}");
            in_host(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            in_host(&["link", "set", &tap, "master", "br0"]);
            in_host(&["link", "set", &tap, "up"]);
        }
        in_host(&[
            "link",
            "add",
            "veth-h",
            "type",
            "veth",
            "peer",
            "name",
            "veth-c",
            "netns",
            &lab.client_ns,
        ]);
        in_host(&["link", "set", "veth-h", "master", "br0"]);
        in_host(&["link", "set", "veth-h", "up"]);
        let client = ["-n", lab.client_ns.as_str()];
        let in_client = |args: &[&str]| ip(&[&client[..], args].concat());
        in_client(&["link", "set", "lo", "up"]);
        in_client(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "veth-c"]);
        in_client(&["link", "set", "veth-c", "up"]);
        lab
    }

    /// The guest address of the VM on `tapN`.
    pub fn guest_ip(index: usize) -> String {
        format!("10.10.0.{}", index + 2)
    }

    /// Guest command-line network settings for the VM on `tapN`.
    pub fn guest_net_args(index: usize) -> String {
        format!("ip={}/24 gw={BRIDGE_IP}", Lab::guest_ip(index))
    }

    /// `--net` value for the VM on `tapN` (a MAC of its own).
    pub fn net_flag(&self, index: usize) -> String {
        assert!(index < self.taps, "the lab has {} TAPs", self.taps);
        format!("tap=tap{index},mac=52:54:00:10:00:{:02x}", index + 2)
    }

    /// `--net` value for a NIC on `tapN` carrying the MAC of the guest on
    /// `tapG` (the two halves of an FT pair run one guest, one MAC).
    pub fn net_flag_for(&self, tap: usize, guest: usize) -> String {
        assert!(tap < self.taps, "the lab has {} TAPs", self.taps);
        format!("tap=tap{tap},mac=52:54:00:10:00:{:02x}", guest + 2)
    }

    /// Starts `exe args...` inside the host namespace; killed on drop.
    pub fn spawn_in_host(&self, exe: &str, args: &[&str]) -> Reaped {
        crate::require_kvm();
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.host_ns, exe]).args(args);
        Reaped::spawn(command)
    }

    /// A command that runs `program args...` in the host namespace.
    pub fn host_command(&self, program: &str, args: &[&str]) -> Command {
        require_program(program);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.host_ns, program]).args(args);
        command
    }

    /// A command that runs `program args...` in the client namespace.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Command {
        require_program(program);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.client_ns, program]).args(args);
        command
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces (and the veth peer).
        for ns in [&self.host_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::require_program;

    #[test]
    #[should_panic(expected = "apt-get install ftvm-no-such-program")]
    fn a_missing_program_names_what_to_install() {
        require_program("ftvm-no-such-program");
    }
}
