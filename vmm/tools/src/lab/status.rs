//! `ftvm lab status`: each VM's host, role, node, address, and for FT pairs
//! which side runs the guest and under which generation, as a table for
//! people or JSON for scripts. A side's pair role comes from the role lines
//! its VMM prints (`ftvm: role: backup -> live, generation 1, ...`).
use serde::Serialize;

use super::spec::Role;
use super::state::{alive, LabState, Proc, Side};

/// One VMM process as status shows it.
#[derive(Debug, Serialize)]
pub struct SideStatus {
    pub side: Side,
    pub host: String,
    pub pid: u32,
    pub alive: bool,
    /// What the VMM last said it is: `primary`, `backup`, `live`, `solo`,
    /// `halted`, `exited`, `killed`.
    pub state: String,
    pub generation: Option<u64>,
}

/// One VM.
#[derive(Debug, Serialize)]
pub struct VmStatus {
    pub name: String,
    pub role: Role,
    pub node: u32,
    pub ip: String,
    pub ft_pair: bool,
    /// The host whose VMM runs the guest live now, if any.
    pub live_on: Option<String>,
    pub sides: Vec<SideStatus>,
}

/// One host.
#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub spare: bool,
    pub dead: bool,
}

/// The whole lab.
#[derive(Debug, Serialize)]
pub struct Status {
    pub namespaces_prefix: String,
    pub hosts: Vec<HostStatus>,
    pub vms: Vec<VmStatus>,
}

/// The last role and generation a VMM reported in its log.
fn reported_role(proc: &Proc) -> (String, Option<u64>) {
    let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
    let mut role = match proc.side {
        Side::Plain => "running".to_string(),
        side => side.label().to_string(),
    };
    let mut generation = None;
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("ftvm: role: ") else { continue };
        let head = rest.split(',').next().unwrap_or("");
        role = head.rsplit(' ').next().unwrap_or(head).to_string();
        let said = rest
            .split("generation ")
            .nth(1)
            .and_then(|text| text.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
        generation = said.or(generation);
    }
    if log.contains("halts") {
        role = "halted".into();
    }
    (role, generation)
}

/// The status of the lab in `state`.
pub fn status(state: &LabState) -> Status {
    let hosts = state
        .plan
        .hosts
        .iter()
        .map(|host| HostStatus {
            name: host.name.clone(),
            spare: host.spare,
            dead: state.dead_hosts.contains(&host.name),
        })
        .collect();
    let vms = state
        .plan
        .vms
        .iter()
        .map(|vm| {
            let sides: Vec<SideStatus> = state
                .procs
                .iter()
                .filter(|proc| proc.vm == vm.name)
                .map(|proc| {
                    let alive = alive(proc.pid);
                    let (mut reported, generation) = reported_role(proc);
                    if !alive {
                        reported =
                            if state.killed.contains(&proc.pid) { "killed" } else { "exited" }
                                .into();
                    }
                    SideStatus {
                        side: proc.side,
                        host: proc.host.clone(),
                        pid: proc.pid,
                        alive,
                        state: reported,
                        generation,
                    }
                })
                .collect();
            let live_on = sides
                .iter()
                .find(|side| {
                    side.alive
                        && matches!(side.state.as_str(), "running" | "primary" | "live" | "solo")
                })
                .map(|side| side.host.clone());
            VmStatus {
                name: vm.name.clone(),
                role: vm.role,
                node: vm.node,
                ip: vm.ip.to_string(),
                ft_pair: vm.backup.is_some(),
                live_on,
                sides,
            }
        })
        .collect();
    Status { namespaces_prefix: state.names.prefix.clone(), hosts, vms }
}

/// The status as a table.
pub fn table(status: &Status) -> String {
    let mut out = String::new();
    let hosts: Vec<String> = status
        .hosts
        .iter()
        .map(|host| {
            let note = if host.dead {
                " (dead)"
            } else if host.spare {
                " (spare)"
            } else {
                ""
            };
            format!("{}{note}", host.name)
        })
        .collect();
    out.push_str(&format!("hosts: {}\n", hosts.join(", ")));
    out.push_str(&format!(
        "{:<16} {:<16} {:>4} {:<12} {:<8} {}\n",
        "VM", "ROLE", "NODE", "ADDRESS", "LIVE ON", "VMMS (side@host: state, generation)"
    ));
    for vm in &status.vms {
        let sides: Vec<String> = vm
            .sides
            .iter()
            .map(|side| {
                let generation = side.generation.map(|g| format!(" gen {g}")).unwrap_or_default();
                format!("{}@{}: {}{generation}", side.side.label(), side.host, side.state)
            })
            .collect();
        out.push_str(&format!(
            "{:<16} {:<16} {:>4} {:<12} {:<8} {}\n",
            vm.name,
            vm.role.guest_role(),
            vm.node,
            vm.ip,
            vm.live_on.as_deref().unwrap_or("-"),
            sides.join("; ")
        ));
    }
    out
}
