//! Guest roles, chosen by `role=` on the command line.
use crate::cmdline::Cmdline;
use crate::println;
use ftvm_abi::boot::BootInfo;
use ftvm_abi::exit;

mod bench;
mod compute;
mod disk;
mod echo;
mod fault;
mod gfs;
mod hostile;
mod mr;
mod node;
mod selftest;
mod stress;

/// Runs the role the command line names; returns the exit code.
pub fn run(args: &Cmdline, info: &BootInfo) -> u32 {
    let result = match args.get("role") {
        Some("selftest") => selftest::run(info),
        Some("hostile") => hostile::run(info),
        Some("fault") => fault::run(args),
        Some("panic") => panic!("the panic role panics on purpose"),
        Some("compute") => compute::run(args),
        Some("stress") => stress::run(args),
        Some("bench") => bench::run(args),
        Some("echo") => echo::run(args, info),
        Some("disk-selftest") => disk::run(args, info),
        Some("gfs-master") => gfs::run(gfs::Kind::Master, args, info),
        Some("gfs-chunkserver") => gfs::run(gfs::Kind::Chunkserver, args, info),
        Some("gfs-client") => gfs::run(gfs::Kind::Client, args, info),
        Some("mr-coordinator") => mr::run(mr::Kind::Coordinator, args, info),
        Some("mr-worker") => mr::run(mr::Kind::Worker, args, info),
        Some("mr-job") => mr::run(mr::Kind::Job, args, info),
        Some(other) => Err(RoleError::BadCmdline(alloc::format!("role={other}: unknown role"))),
        None => Err(RoleError::BadCmdline("missing role=...".into())),
    };
    match result {
        Ok(()) => exit::OK,
        Err(RoleError::Check(message)) => {
            println!("check failed: {message}");
            exit::FAILURE
        }
        Err(RoleError::BadCmdline(problem)) => {
            println!("bad command line: {problem} (roles: selftest, stress, compute, hostile, fault, panic, bench, echo, disk-selftest, gfs-master, gfs-chunkserver, gfs-client, mr-coordinator, mr-worker, mr-job)");
            exit::BAD_CMDLINE
        }
    }
}

/// Why a role failed.
pub enum RoleError {
    /// A self-check failed; the message says which.
    Check(alloc::string::String),
    /// A command-line value is unusable; the message says which and why.
    BadCmdline(alloc::string::String),
}

/// Fails the role with a formatted message when `condition` is false.
#[macro_export]
macro_rules! check {
    ($condition:expr, $($arg:tt)*) => {
        if !$condition {
            return Err($crate::roles::RoleError::Check(alloc::format!($($arg)*)));
        }
    };
}

/// Reads a numeric command-line value with a default, as a role error.
fn number(args: &Cmdline, key: &'static str, default: u64) -> Result<u64, RoleError> {
    args.get_u64(key, default)
        .map_err(|value| RoleError::BadCmdline(alloc::format!("{key}={value}: expected a number")))
}

/// Maps a network bring-up failure to a role error.
fn net_error(error: crate::net::NetError) -> RoleError {
    match error {
        crate::net::NetError::BadCmdline(message) => RoleError::BadCmdline(message),
        crate::net::NetError::Device(message) => RoleError::Check(message),
    }
}
