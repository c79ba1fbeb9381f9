//! The host tools of the `ftvm` binary, apart from the VMM: [`lab`] (a
//! cluster of VMs on simulated hosts: `ftvm lab`), [`clients`] (the GFS and
//! MapReduce host clients: `ftvm gfs`, `ftvm mr`) and [`demo`] (`ftvm
//! demo`). They start VMMs as processes and talk to guests over the lab's
//! network; they share no code path with the VMM's guest inputs.
pub mod clients;
pub mod demo;
pub mod lab;
pub mod stop;

/// Runs a tool command for the `ftvm` binary; returns the exit status: the
/// command's own on success; on failure the error is printed and the status
/// is 1. (The binary hands over its stop flag with [`stop::set_check`].)
pub fn run(command: impl FnOnce() -> anyhow::Result<u8>) -> anyhow::Result<u8> {
    clients::exit_status(command())
}
