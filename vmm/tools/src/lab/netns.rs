//! The lab's network, built with iproute2 inside namespaces of its own: a
//! LAN switch namespace (bridge `lan0`), an FT switch namespace (bridge
//! `ft0`), a client namespace where the host clients sit, and per host a
//! namespace with its own bridge `br0` (the VMs' TAPs), an `uplink` veth to
//! the LAN switch and an `ftlink` veth to the FT switch (the logging link of
//! FT pairs, addressed on the FT network). Only private addresses inside
//! these namespaces are used.
//!
//! ```text
//!  client ns: eth0 10.77.0.250 ─┐
//!  LAN ns:    lan0 ── client, h1, h2, ...         FT ns: ft0 ── h1, h2, ...
//!  host ns h1: br0 ── uplink, vm1, vm2 ...;  ftlink 10.78.0.1 ──┘
//! ```
use std::process::Command;

use super::spec::{HostPlan, CLIENT_IP};

/// An iproute2 command that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run `ip` ({0}): install iproute2 (apt-get install iproute2)")]
    NoIproute(std::io::Error),
    #[error("`ip {args}` failed: {stderr}(the lab needs root for network namespaces)")]
    Failed { args: String, stderr: String },
}

/// The namespace names of one lab (a prefix unique to its state directory).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn lan(&self) -> String {
        format!("{}-lan", self.prefix)
    }
    pub fn ft(&self) -> String {
        format!("{}-ft", self.prefix)
    }
    pub fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }
    pub fn host(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let output = Command::new("ip").args(args).output().map_err(NetError::NoIproute)?;
    if output.status.success() {
        return Ok(());
    }
    Err(NetError::Failed {
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `ip -n NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> Result<(), NetError> {
    ip(&[&["-n", ns], args].concat())
}

/// Makes namespace `ns` with its loopback up.
fn add_namespace(ns: &str) -> Result<(), NetError> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])
}

/// A bridge named `name` in `ns`, up.
fn add_bridge(ns: &str, name: &str) -> Result<(), NetError> {
    ip_in(ns, &["link", "add", name, "type", "bridge"])?;
    ip_in(ns, &["link", "set", name, "up"])
}

/// A veth `inner` in `ns` whose peer `outer` is a port of `bridge` in `switch`.
fn add_uplink(
    ns: &str,
    inner: &str,
    switch: &str,
    outer: &str,
    bridge: &str,
) -> Result<(), NetError> {
    ip_in(ns, &["link", "add", inner, "type", "veth", "peer", "name", outer, "netns", switch])?;
    ip_in(switch, &["link", "set", outer, "master", bridge])?;
    ip_in(switch, &["link", "set", outer, "up"])
}

/// The two switches and the client namespace.
pub fn add_switches(names: &Names) -> Result<(), NetError> {
    for (ns, bridge) in [(names.lan(), "lan0"), (names.ft(), "ft0")] {
        add_namespace(&ns)?;
        add_bridge(&ns, bridge)?;
    }
    let client = names.client();
    add_namespace(&client)?;
    add_uplink(&client, "eth0", &names.lan(), "client", "lan0")?;
    ip_in(&client, &["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])?;
    ip_in(&client, &["link", "set", "eth0", "up"])
}

/// One simulated host: its namespace, bridge, LAN uplink and FT link.
pub fn add_host(names: &Names, host: &HostPlan) -> Result<(), NetError> {
    let ns = names.host(&host.name);
    add_namespace(&ns)?;
    add_bridge(&ns, "br0")?;
    add_uplink(&ns, "uplink", &names.lan(), &host.name, "lan0")?;
    ip_in(&ns, &["link", "set", "uplink", "master", "br0"])?;
    ip_in(&ns, &["link", "set", "uplink", "up"])?;
    add_uplink(&ns, "ftlink", &names.ft(), &host.name, "ft0")?;
    ip_in(&ns, &["addr", "add", &format!("{}/24", host.ft_ip), "dev", "ftlink"])?;
    ip_in(&ns, &["link", "set", "ftlink", "up"])
}

/// A TAP `tap` on host `host`'s bridge.
pub fn add_tap(names: &Names, host: &str, tap: &str) -> Result<(), NetError> {
    let ns = names.host(host);
    ip_in(&ns, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    ip_in(&ns, &["link", "set", tap, "master", "br0"])?;
    ip_in(&ns, &["link", "set", tap, "up"])
}

/// Cuts host `host` off both networks (the first half of a crash).
pub fn cut_host(names: &Names, host: &str) -> Result<(), NetError> {
    set_link(names, host, "uplink", false)?;
    set_link(names, host, "ftlink", false)
}

/// Sets host `host`'s link `link` (`uplink`, `ftlink`) up or down: down cuts it both ways.
pub fn set_link(names: &Names, host: &str, link: &str, up: bool) -> Result<(), NetError> {
    ip_in(&names.host(host), &["link", "set", link, if up { "up" } else { "down" }])
}

/// The lab's namespaces that exist now (found by prefix, so a lab whose
/// state was lost half-way is still found).
pub fn existing(names: &Names) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let prefix = format!("{}-", names.prefix);
    let mut found: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    found.sort();
    found
}

/// Deletes namespace `ns` (and with it its interfaces and veth peers).
pub fn delete(ns: &str) -> Result<(), NetError> {
    ip(&["netns", "del", ns])
}
