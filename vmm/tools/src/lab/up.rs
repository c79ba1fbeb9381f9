//! `ftvm lab up`: builds the lab's network, starts every VM, and returns
//! once every service answers (each VM reported ready on its console and the
//! GFS master answered a host client), showing progress. A lab that does not
//! come up is taken down again, and the error quotes the failing VM's log.
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::launch;
use super::netns;
use super::spec::{LabFile, Role, VmPlan};
use super::state::{alive, tail, LabState, Proc, Side, StateDir};
use super::LabError;

/// How often readiness is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The console line that says `vm` serves.
fn ready_marker(state: &LabState, vm: &VmPlan) -> String {
    match vm.role {
        Role::GfsMaster | Role::GfsChunkserver => {
            format!("{}: node {} ready", vm.role.guest_role(), vm.node)
        }
        // MapReduce nodes serve once their stream to the node they report to is up.
        Role::MrCoordinator => {
            format!("mr-coordinator: stream to node {} up", state.plan.master().node)
        }
        Role::MrWorker => {
            let coordinator = state.plan.coordinator().expect("workers have a coordinator");
            format!("mr-worker: stream to node {} up", coordinator.node)
        }
    }
}

/// The process that runs `vm`'s guest live: its plain VM or its primary.
pub fn live_proc<'a>(state: &'a LabState, vm: &str) -> Option<&'a Proc> {
    state.procs.iter().find(|proc| proc.vm == vm && proc.side != Side::Backup)
}

/// Brings the lab of `file` (the built-in one without) up in `dir`.
pub fn up(dir: &StateDir, file: Option<&Path>, timeout: Duration) -> Result<LabState, LabError> {
    let plan = LabFile::load(file)?.plan()?;
    let names = dir.names();
    if !netns::existing(&names).is_empty() && !dir.exists() {
        return Err(LabError::Leftovers(dir.dir.clone()));
    }
    dir.create()?;
    let mut state = LabState {
        names: names.clone(),
        plan,
        procs: Vec::new(),
        dead_hosts: Vec::new(),
        killed: Vec::new(),
        events: Vec::new(),
    };
    dir.save(&state)?;
    match start(dir, &mut state, timeout) {
        Ok(()) => Ok(state),
        Err(error) => {
            // Quote the logs before they go with the lab.
            let _ = super::teardown::down(dir);
            Err(error)
        }
    }
}

fn start(dir: &StateDir, state: &mut LabState, timeout: Duration) -> Result<(), LabError> {
    let vms = state.plan.vms.len() as u64;
    let steps = state.plan.hosts.len() as u64 + 2 * vms + 1;
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{spinner} lab up [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("switches");
    netns::add_switches(&state.names)?;
    for host in &state.plan.hosts {
        bar.set_message(format!("host {}", host.name));
        netns::add_host(&state.names, host)?;
        bar.inc(1);
    }
    for vm in state.plan.vms.clone() {
        bar.set_message(format!("starting {}", vm.name));
        let procs = launch::start_vm(dir, &state.names, &state.plan, &vm)?;
        state.procs.extend(procs);
        dir.save(state)?;
        bar.inc(1);
    }
    let deadline = Instant::now() + timeout;
    for vm in state.plan.vms.clone() {
        bar.set_message(format!("waiting for {} to serve", vm.name));
        wait_ready(state, &vm, deadline)?;
        bar.inc(1);
    }
    bar.set_message("asking the GFS master");
    crate::clients::session::probe_master(dir, deadline).map_err(|error| LabError::NotServing {
        vm: state.plan.master().name.clone(),
        detail: error.to_string(),
    })?;
    bar.inc(1);
    bar.finish_and_clear();
    state.record(format!("lab up: {} VMs on {} hosts", vms, state.plan.hosts.len()));
    dir.save(state)?;
    Ok(())
}

/// Waits until `vm`'s console shows it serves; fails when one of its
/// processes died or the deadline passed.
fn wait_ready(state: &LabState, vm: &VmPlan, deadline: Instant) -> Result<(), LabError> {
    let marker = ready_marker(state, vm);
    let live = live_proc(state, &vm.name).expect("every VM has a live process");
    loop {
        let console = std::fs::read_to_string(&live.console).unwrap_or_default();
        if console.contains(&marker) {
            return Ok(());
        }
        for proc in state.procs.iter().filter(|proc| proc.vm == vm.name) {
            if !alive(proc.pid) {
                return Err(LabError::NotServing {
                    vm: vm.name.clone(),
                    detail: format!(
                        "its {} VMM on {} exited:\n{}\n{}",
                        proc.side.label(),
                        proc.host,
                        tail(&proc.console, 10),
                        tail(&proc.log, 10)
                    ),
                });
            }
        }
        if crate::stop::stop_requested() {
            return Err(LabError::Usage(
                "interrupted (SIGINT/SIGTERM); the lab was taken down again".into(),
            ));
        }
        if Instant::now() >= deadline {
            return Err(LabError::NotServing {
                vm: vm.name.clone(),
                detail: format!(
                    "no `{marker}` on its console in time; its console ends:\n{}",
                    tail(&live.console, 10)
                ),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
