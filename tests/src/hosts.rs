//! An FT pair on two simulated hosts, as a user would set it up across two machines: the lab's
//! network (`ftvm lab`'s namespaces, built with its own helpers) with hosts h1 (the primary)
//! and h2 (the backup), each with its bridge, a TAP for the guest and an uplink to the LAN
//! switch, the log channel on the separate FT link, and the client namespace on the LAN.
//! Everything it made (namespaces, TAPs, veths and the processes inside) is removed on drop,
//! even when a test or benchmark panics.
//!
//! ```text
//!  client ns 10.77.0.250 ── LAN switch ── h1: br0 ── uplink, vm1 (primary's TAP)
//!                                     └── h2: br0 ── uplink, vm1 (backup's TAP)
//!  FT switch ── h1 ftlink 10.78.0.1, h2 ftlink 10.78.0.2 (the log channel)
//! ```
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ftvm_tools::lab::netns::{self, Names};
use ftvm_tools::lab::spec::HostPlan;

use crate::{Reaped, Scratch};

static PAIRS: AtomicU32 = AtomicU32::new(0);

/// The primary's host.
pub const PRIMARY_HOST: &str = "h1";
/// The backup's host.
pub const BACKUP_HOST: &str = "h2";
/// The guest's address on the LAN.
pub const GUEST_IP: &str = "10.77.0.10";
/// The echo service's port in the guest.
pub const ECHO_PORT: &str = "7";
const GUEST_MAC: &str = "52:54:00:77:00:0a";
const TAP: &str = "vm1";
const BACKUP_LISTEN: &str = "10.78.0.2:7000";

/// The two hosts' network, and the pair's arbiter directory.
pub struct TwoHosts {
    names: Names,
    /// The pair's identity and arbiter records (shared storage).
    pub arbiter: Scratch,
}

fn net_error(error: netns::NetError) -> String {
    format!("{error} (the FT lab needs root and iproute2)")
}

impl TwoHosts {
    /// Builds the network and the pair's identity with `exe pair init` (`exe`: the ftvm binary).
    pub fn new(exe: &str) -> TwoHosts {
        crate::require_kvm();
        let id = PAIRS.fetch_add(1, Ordering::SeqCst);
        let hosts = TwoHosts {
            names: Names { prefix: format!("ftvm2h-{}-{id}", std::process::id()) },
            arbiter: Scratch::new("two-hosts-arbiter"),
        };
        // From here on, Drop removes whatever was made.
        netns::add_switches(&hosts.names).unwrap_or_else(|error| panic!("{}", net_error(error)));
        for (name, ft_ip) in [(PRIMARY_HOST, [10, 78, 0, 1]), (BACKUP_HOST, [10, 78, 0, 2])] {
            let plan = HostPlan { name: name.into(), spare: false, ft_ip: Ipv4Addr::from(ft_ip) };
            netns::add_host(&hosts.names, &plan).unwrap_or_else(|e| panic!("{}", net_error(e)));
            netns::add_tap(&hosts.names, name, TAP).unwrap_or_else(|e| panic!("{}", net_error(e)));
        }
        crate::init_pair(exe, &hosts.arbiter.0);
        hosts
    }

    /// Starts the pair of `exe` running the echo guest: the backup on h2, then the primary on
    /// h1; `extra` goes to both (e.g. `--failure-timeout-ms`). Returns (primary, backup).
    pub fn start_pair(&self, exe: &str, extra: &[&str]) -> (Reaped, Reaped) {
        let backup = self.start_backup(BACKUP_HOST, exe, extra);
        (self.start_primary(exe, extra), backup)
    }

    /// Starts the primary of `exe` on h1, running the echo guest, for the backup on h2.
    pub fn start_primary(&self, exe: &str, extra: &[&str]) -> Reaped {
        let net = format!("tap={TAP},mac={GUEST_MAC}");
        let cmdline = format!("role=echo port={ECHO_PORT} ip={GUEST_IP}/24");
        let mut args = vec!["primary", "--backup", BACKUP_LISTEN, "--arbiter", self.arbiter.path()];
        args.extend_from_slice(&["--net", &net, "--cmdline", &cmdline]);
        args.extend_from_slice(extra);
        self.spawn_on(PRIMARY_HOST, exe, &args)
    }

    /// Starts a backup of `exe` on `host` (h1 or h2), listening on that host's FT link; after
    /// a failover, one that waits as a spare to be added (`add-backup`).
    pub fn start_backup(&self, host: &str, exe: &str, extra: &[&str]) -> Reaped {
        let net = format!("tap={TAP},mac={GUEST_MAC}");
        let listen = Self::listen_addr(host);
        let mut args = vec!["backup", "--listen", &listen, "--arbiter", self.arbiter.path()];
        args.extend_from_slice(&["--net", &net]);
        args.extend_from_slice(extra);
        self.spawn_on(host, exe, &args)
    }

    /// Where a backup on `host` listens for its primary.
    pub fn listen_addr(host: &str) -> String {
        match host {
            PRIMARY_HOST => "10.78.0.1:7000".into(),
            _ => BACKUP_LISTEN.into(),
        }
    }

    /// Starts `exe args...` inside host `host`'s namespace (`ip netns exec` execs it in
    /// place: the process is the program's own, for signals).
    fn spawn_on(&self, host: &str, exe: &str, args: &[&str]) -> Reaped {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names.host(host), exe]).args(args);
        Reaped::spawn(command)
    }

    /// A command that runs `program args...` in the client namespace on the LAN.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names.client(), program]).args(args);
        command
    }

    /// Waits until the guest's echo service answers a client on the LAN (`netclient`: the
    /// `ftvm-netclient` binary); panics with `vmms` (their output so far) if it never does.
    pub fn wait_for_echo(&self, netclient: &str) {
        let output = self
            .client_command(netclient, &["wait", GUEST_IP, ECHO_PORT, "60"])
            .output()
            .unwrap_or_else(|error| panic!("{netclient}: {error}"));
        assert!(
            output.status.success(),
            "the echo guest never answered on {GUEST_IP}:{ECHO_PORT}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    /// Starts the stream and request/response clients (`netclient watch`) for `seconds`, the
    /// stream paced at `bytes_per_s`; their findings are the output's two lines.
    pub fn watch(&self, netclient: &str, seconds: f64, bytes_per_s: u64) -> Reaped {
        let (seconds, rate) = (seconds.to_string(), bytes_per_s.to_string());
        Reaped::spawn(
            self.client_command(netclient, &["watch", GUEST_IP, ECHO_PORT, &seconds, &rate]),
        )
    }

    /// The first half of a host crash: both of `host`'s links go down (no FIN leaves it).
    pub fn cut_host(&self, host: &str) {
        netns::cut_host(&self.names, host).unwrap_or_else(|error| panic!("{}", net_error(error)));
    }

    /// Cuts (`up` false) or heals the FT link of `host`: the log channel, both ways.
    pub fn set_log_link(&self, host: &str, up: bool) {
        netns::set_link(&self.names, host, "ftlink", up)
            .unwrap_or_else(|error| panic!("{}", net_error(error)));
    }

    /// Frames the VMM on `host` has written to its TAP so far (the kernel counts a TAP's
    /// writes from user space as received).
    pub fn frames_sent_by_vmm_on(&self, host: &str) -> u64 {
        self.packets(host, TAP, "rx")
    }

    /// Frames `host` has sent to the LAN switch so far (out of its uplink).
    pub fn frames_sent_to_lan_from(&self, host: &str) -> u64 {
        self.packets(host, "uplink", "tx")
    }

    /// The packet count of `device` on `host` in `direction` (`rx`, `tx`).
    fn packets(&self, host: &str, device: &str, direction: &str) -> u64 {
        let output = Command::new("ip")
            .args(["-n", &self.names.host(host), "-s", "-j", "link", "show", "dev", device])
            .output()
            .expect("iproute2's `ip`");
        let links: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("`ip -j` prints JSON");
        links[0]["stats64"][direction]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {direction} packet count of {device} on {host}"))
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in netns::existing(&self.names) {
            // Whatever still runs inside goes first (a VMM the caller did not reap).
            if let Ok(output) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) takes no pointers; the pid runs in our namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            // Deleting a namespace deletes its interfaces, TAPs and veth peers.
            let _ = netns::delete(&ns);
        }
    }
}
