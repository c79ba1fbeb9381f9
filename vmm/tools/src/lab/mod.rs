//! `ftvm lab`: a cluster of VMs on simulated hosts on this machine (DESIGN
//! §7). A host is a network namespace with its own bridge, joined to a LAN
//! switch namespace by a veth, plus a separate FT logging link; the arbiter
//! directories are shared. A lab file ([`spec`]) says which VMs run where,
//! which as FT pairs; [`up`] starts it, [`status`] shows it, [`teardown`]
//! kills hosts and VMs and removes it all. The lab's [`state`] lives in a
//! directory, where the host clients (`ftvm gfs`, `ftvm mr`) find it.
pub mod launch;
pub mod netns;
pub mod spec;
pub mod state;
pub mod status;
pub mod teardown;
pub mod up;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use state::StateDir;

/// Why a lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Net(#[from] netns::NetError),
    #[error(transparent)]
    Launch(#[from] launch::LaunchError),
    #[error("{vm} does not serve: {detail}\n(the lab was taken down again)")]
    NotServing { vm: String, detail: String },
    #[error(
        "namespaces of a lab in {0} exist but its state does not: remove them with `ftvm lab down`"
    )]
    Leftovers(PathBuf),
    #[error("{0}")]
    Usage(String),
}

/// Where the lab keeps its state (every lab and client command takes it).
#[derive(Args, Clone, Debug)]
pub struct StateArgs {
    /// The lab's state directory (namespaces, logs, disks and arbiter
    /// directories are found from it).
    #[arg(long = "state", env = "FTVM_LAB_STATE", value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
}

impl StateArgs {
    pub fn state_dir(&self) -> StateDir {
        StateDir::new(self.dir.clone())
    }
}

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab's network, start its VMs, and return once every service answers.
    ///
    /// Without FILE: the built-in lab (the GFS master and the MapReduce
    /// coordinator as FT pairs, three chunkservers, three workers, on hosts
    /// h1-h4 plus the spare h5). See `ftvm lab example` for the file format.
    ///
    /// Examples:
    ///   ftvm lab up
    ///   ftvm lab up my-lab.toml --state /tmp/lab2
    #[command(verbatim_doc_comment)]
    Up {
        /// A TOML lab file.
        file: Option<PathBuf>,
        /// Give up (and take the lab down again) if it does not serve within this long.
        #[arg(long, default_value_t = 90, value_name = "SECONDS")]
        timeout_s: u64,
    },
    /// Show each VM's host, role and pair state.
    ///
    /// Examples:
    ///   ftvm lab status
    ///   ftvm lab status --json | jq '.vms[] | {name, live_on}'
    ///   ftvm lab status --watch      # live: lag, log rate, a timeline of crashes and failovers
    #[command(verbatim_doc_comment)]
    Status {
        /// JSON for scripts instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// A live view in the terminal, refreshed every second (q quits).
        #[arg(long)]
        watch: bool,
    },
    /// Crash a host (its links go down, then its VMMs are SIGKILLed) or kill
    /// one VM's live VMM (a pair's primary).
    ///
    /// Examples:
    ///   ftvm lab kill h1          # the host of the GFS master's primary
    ///   ftvm lab kill worker2
    #[command(verbatim_doc_comment)]
    Kill {
        /// A host or VM name (see `ftvm lab status`).
        target: String,
    },
    /// Remove everything the lab made: VMMs, namespaces, state, disks, logs.
    /// Works after a crash of the lab itself too.
    Down,
    /// Print the built-in lab file (a starting point for your own).
    Example,
}

/// Runs `ftvm lab ...`; returns the exit status.
pub fn run(args: LabArgs) -> anyhow::Result<u8> {
    let dir = args.state.state_dir();
    match args.command {
        LabCommand::Up { file, timeout_s } => {
            let started = std::time::Instant::now();
            let state = up::up(&dir, file.as_deref(), Duration::from_secs(timeout_s))?;
            print!("{}", status::table(&status::status(&state)));
            println!(
                "lab up in {:.1} s: {} VMs on {} hosts; state in {}",
                started.elapsed().as_secs_f64(),
                state.plan.vms.len(),
                state.plan.hosts.len(),
                dir.dir.display()
            );
        }
        LabCommand::Status { watch: true, .. } => watch::watch(&dir, Duration::from_secs(1))?,
        LabCommand::Status { json, .. } => {
            let status = status::status(&dir.load()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::table(&status));
            }
        }
        LabCommand::Kill { target } => {
            let killed = teardown::kill_target(&dir, &target)?;
            println!("killed {}: {}", killed.target, killed.vmms.join(", "));
        }
        LabCommand::Down => {
            if teardown::down(&dir)? {
                println!("lab in {} removed", dir.dir.display());
            } else {
                println!("no lab in {}: nothing to remove", dir.dir.display());
            }
        }
        LabCommand::Example => print!("{}", spec::DEFAULT_LAB.trim_start()),
    }
    Ok(0)
}
