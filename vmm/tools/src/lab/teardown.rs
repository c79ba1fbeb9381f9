//! `ftvm lab kill` (a host crashes: its links go down, then its VMMs are
//! SIGKILLed; or one VM's VMM dies) and `ftvm lab down` (everything goes:
//! processes, namespaces, the state directory), which also works on a lab
//! whose `up` or whose state file was lost half-way: it finds the lab's
//! namespaces by name and the processes inside them with `ip netns pids`.
use std::process::Command;
use std::time::{Duration, Instant};

use super::launch::kill;
use super::netns;
use super::state::{alive, LabState, Side, StateDir, StateError};
use super::LabError;

/// How long `down` waits for killed VMMs to exit before removing namespaces.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// What `lab kill` did, for the caller to print.
pub struct Killed {
    /// `host h1` or `VM cs1`.
    pub target: String,
    /// `VM (side)` of each VMM killed.
    pub vmms: Vec<String>,
}

/// Crashes host `target`, or kills the live VMM of VM `target`.
pub fn kill_target(dir: &StateDir, target: &str) -> Result<Killed, LabError> {
    let mut state = dir.load()?;
    let is_host = state.plan.hosts.iter().any(|host| host.name == target);
    let pids: Vec<(u32, String)> = if is_host {
        if state.dead_hosts.iter().any(|host| host == target) {
            return Err(LabError::Usage(format!("host {target} is already dead")));
        }
        netns::cut_host(&state.names, target)?;
        state.dead_hosts.push(target.to_string());
        state
            .procs
            .iter()
            .filter(|proc| proc.host == target && alive(proc.pid))
            .map(|proc| (proc.pid, format!("{} ({})", proc.vm, proc.side.label())))
            .collect()
    } else if state.plan.vm(target).is_some() {
        let running = |side: Side| {
            state
                .procs
                .iter()
                .find(|proc| proc.vm == target && proc.side == side && alive(proc.pid))
        };
        // The side that runs the guest live: the primary while it lives.
        let proc = running(Side::Plain)
            .or_else(|| running(Side::Primary))
            .or_else(|| running(Side::Backup))
            .ok_or_else(|| LabError::Usage(format!("VM {target} is not running")))?;
        vec![(proc.pid, format!("{} ({}) on {}", proc.vm, proc.side.label(), proc.host))]
    } else {
        return Err(LabError::Usage(format!(
            "`{target}` is neither a host ({}) nor a VM ({}) of the lab",
            names(state.plan.hosts.iter().map(|host| host.name.as_str())),
            names(state.plan.vms.iter().map(|vm| vm.name.as_str()))
        )));
    };
    for (pid, _) in &pids {
        kill(*pid);
        state.killed.push(*pid);
    }
    let kind = if is_host { "host" } else { "VM" };
    let vmms: Vec<&str> = pids.iter().map(|(_, what)| what.as_str()).collect();
    state.record(format!("killed {kind} {target}: {}", vmms.join(", ")));
    dir.save(&state)?;
    Ok(Killed {
        target: format!("{kind} {target}"),
        vmms: pids.into_iter().map(|(_, what)| what).collect(),
    })
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Removes the lab kept in `dir`; `Ok(false)` when there was nothing to remove.
pub fn down(dir: &StateDir) -> Result<bool, LabError> {
    let state: Option<LabState> = match dir.load() {
        Ok(state) => Some(state),
        Err(StateError::NoLab(_) | StateError::Corrupt { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    let names = state.as_ref().map_or_else(|| dir.names(), |state| state.names.clone());
    let namespaces = netns::existing(&names);
    if state.is_none() && namespaces.is_empty() && !dir.dir.exists() {
        return Ok(false);
    }
    let mut pids: Vec<u32> =
        state.iter().flat_map(|state| state.procs.iter().map(|proc| proc.pid)).collect();
    // Whatever runs inside the lab's namespaces is the lab's, recorded or not.
    for ns in &namespaces {
        pids.extend(pids_in(ns));
    }
    // A client (or the demo) inside the lab's client namespace is not the lab's.
    pids.retain(|pid| *pid != std::process::id());
    for pid in &pids {
        kill(*pid);
    }
    let deadline = Instant::now() + EXIT_WAIT;
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for ns in &namespaces {
        netns::delete(ns)?;
    }
    dir.remove()?;
    Ok(true)
}

/// The processes in namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}
