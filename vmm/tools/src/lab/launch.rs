//! Starting the lab's VMMs: each VM as an `ftvm run` (plain) or an `ftvm
//! backup` + `ftvm primary` pair, inside its host's namespace, on a TAP of
//! that host's bridge, detached from the terminal (its own process group),
//! with its console and VMM messages in log files of the state directory.
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use storage::pair::{PairDir, PairError};

use super::netns::{self, Names, NetError};
use super::spec::{Plan, VmPlan, BACKUP_PORT_BASE};
use super::state::{Proc, Side, StateDir};

/// Why a VMM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot create {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("cannot start the VMM of `{vm}` ({exe}): {source}")]
    Spawn { vm: String, exe: String, source: std::io::Error },
    #[error(transparent)]
    Pair(#[from] PairError),
}

/// Makes a pair's arbiter directory and its identity (`ftvm pair init DIR`):
/// the pair id, key and generation both sides read there.
fn init_pair(arbiter: &Path) -> Result<(), LaunchError> {
    std::fs::create_dir_all(arbiter)
        .map_err(|source| LaunchError::File { path: arbiter.to_path_buf(), source })?;
    match PairDir::new(arbiter).init() {
        Ok(_) | Err(PairError::Exists { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Starts the VMM(s) of `vm`; returns their processes (a pair: backup, then primary).
pub fn start_vm(
    dir: &StateDir,
    names: &Names,
    plan: &Plan,
    vm: &VmPlan,
) -> Result<Vec<Proc>, LaunchError> {
    let net = format!("tap={},mac={}", vm.tap(), vm.mac);
    let disk = vm.disk.as_ref().map(|size| {
        format!("{},size={size},create", dir.disks().join(format!("{}.img", vm.name)).display())
    });
    let mut run_args: Vec<String> = vec!["--mem".into(), vm.mem.clone()];
    run_args.extend(["--net".into(), net.clone()]);
    if let Some(disk) = &disk {
        run_args.extend(["--disk".into(), disk.clone()]);
    }
    run_args.extend(["--cmdline".into(), vm.cmdline.clone()]);
    let Some(backup_host) = &vm.backup else {
        netns::add_tap(names, &vm.host, &vm.tap())?;
        let args = [vec!["run".to_string()], run_args].concat();
        return Ok(vec![spawn(dir, names, vm, Side::Plain, &vm.host, &args)?]);
    };
    let arbiter = dir.arbiter(&vm.name);
    init_pair(&arbiter)?;
    let ft_ip = plan
        .hosts
        .iter()
        .find(|host| host.name == *backup_host)
        .expect("planned hosts exist")
        .ft_ip;
    let listen = format!("{ft_ip}:{}", BACKUP_PORT_BASE + vm.node as u16);
    let arbiter = arbiter.display().to_string();
    netns::add_tap(names, backup_host, &vm.tap())?;
    let mut backup_args: Vec<String> =
        ["backup", "--listen", &listen, "--arbiter", &arbiter, "--net", &net]
            .map(String::from)
            .to_vec();
    if let Some(disk) = &disk {
        backup_args.extend(["--disk".into(), disk.clone()]);
    }
    let backup = spawn(dir, names, vm, Side::Backup, backup_host, &backup_args)?;
    netns::add_tap(names, &vm.host, &vm.tap())?;
    let primary_args = [
        ["primary", "--backup", &listen, "--arbiter", &arbiter].map(String::from).to_vec(),
        run_args,
    ]
    .concat();
    let primary = spawn(dir, names, vm, Side::Primary, &vm.host, &primary_args)?;
    Ok(vec![backup, primary])
}

/// Starts `ftvm ARGS` in `host`'s namespace, detached, logging to files.
fn spawn(
    dir: &StateDir,
    names: &Names,
    vm: &VmPlan,
    side: Side,
    host: &str,
    args: &[String],
) -> Result<Proc, LaunchError> {
    let exe = std::env::current_exe().map_err(|source| LaunchError::Spawn {
        vm: vm.name.clone(),
        exe: "ftvm".into(),
        source,
    })?;
    let console = dir.logs().join(format!("{}.{}.console", vm.name, side.label()));
    let log = dir.logs().join(format!("{}.{}.vmm", vm.name, side.label()));
    let create = |path: &Path| {
        File::create(path).map_err(|source| LaunchError::File { path: path.to_path_buf(), source })
    };
    let child = Command::new("ip")
        .args(["netns", "exec", &names.host(host)])
        .arg(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(create(&console)?)
        .stderr(create(&log)?)
        // Its own process group: a Ctrl-C at `lab up` leaves the lab running.
        .process_group(0)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            vm: vm.name.clone(),
            exe: exe.display().to_string(),
            source,
        })?;
    // `ip netns exec` execs the VMM in place: the pid is the VMM's. The
    // child is not waited for: init reaps it once this process exits.
    Ok(Proc { vm: vm.name.clone(), side, host: host.to_string(), pid: child.id(), console, log })
}

/// SIGKILLs process `pid` if it is still one of the lab's VMMs.
pub fn kill(pid: u32) {
    if super::state::alive(pid) {
        // SAFETY: kill(2) takes no pointers; `pid` was checked to be a
        // running ftvm process the lab started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}
