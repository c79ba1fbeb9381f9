//! Host clients of the lab's services: `ftvm gfs ...` and `ftvm mr run`.
//! They drive the same sans-IO state machines as the guests (the GFS client
//! of `guest/gfs`, the job client of `guest/mapreduce`) over host sockets
//! ([`mesh`]), from inside the lab's client namespace ([`session`]).
pub mod gfs;
pub mod mesh;
pub mod mr;
pub mod session;

use std::path::PathBuf;

use ::gfs::wire::GfsError;

use crate::lab::state::StateError;

/// Why a client command failed; each names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Lab(#[from] StateError),
    #[error(
        "cannot enter the lab's network namespace {ns}: {source} (run as root; is the lab \
         up? see `ftvm lab status`)"
    )]
    Namespace { ns: String, source: std::io::Error },
    #[error(
        "{what} did not answer ({detail}): is the lab up and is it running? see `ftvm lab status`"
    )]
    Unreachable { what: String, detail: String },
    #[error(
        "{what} is down: none of its VMMs runs (killed or exited); see `ftvm lab status`, and \
         start the lab anew with `ftvm lab down` and `ftvm lab up`"
    )]
    Down { what: String },
    #[error("{op}: {problem}")]
    Gfs { op: String, problem: String },
    #[error("cannot {action} {path}: {source}")]
    Local { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("the job {0}")]
    Job(String),
    #[error("interrupted (SIGINT/SIGTERM)")]
    Interrupted,
}

/// The exit status of a lab, client or demo command: its own on success;
/// on failure the error is printed and the status is 1.
pub fn exit_status(result: anyhow::Result<u8>) -> anyhow::Result<u8> {
    Ok(result.unwrap_or_else(|error| {
        eprintln!("ftvm: error: {error:#}");
        1
    }))
}

/// What a GFS error means to a user, and what to do about it.
pub fn explain(error: GfsError, path: &str) -> String {
    match error {
        GfsError::NotFound => {
            format!("{path} does not exist in GFS (see `ftvm gfs ls`)")
        }
        GfsError::AlreadyExists => {
            format!("{path} already exists in GFS: remove it first with `ftvm gfs rm {path}`")
        }
        GfsError::InvalidPath => {
            format!("`{path}` is not a GFS path: use an absolute path such as /data/file.txt")
        }
        GfsError::NoChunkservers | GfsError::NoReplica => {
            format!("{error:?}: too few chunkservers are alive for {path} (see `ftvm lab status`)")
        }
        GfsError::TooLarge => format!(
            "the data is too large for one operation on {path} (a record append takes at most \
             a quarter chunk)"
        ),
        GfsError::DiskFull => {
            "the chunkservers' disks are full: remove files with `ftvm gfs rm`".into()
        }
        other => format!(
            "{other:?} after every retry: the master or a chunkserver is unreachable or busy \
             (see `ftvm lab status`)"
        ),
    }
}
