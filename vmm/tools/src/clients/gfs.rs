//! `ftvm gfs put|get|ls|rm|append|snapshot`: file operations on the lab's
//! GFS through the GFS client state machine (`guest/gfs`), with progress
//! for large files. GFS keeps no file lengths (a chunk reads as zeros past
//! its end, as in the paper), so `get` drops the NUL bytes at the end of the
//! file's last chunk: text and other files that do not end in NUL bytes
//! round-trip exactly.
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use gfs::client::{ClientOp, OpOutput};
use gfs::wire::GfsError;
use indicatif::{ProgressBar, ProgressStyle};

use super::session::Session;
use super::{explain, ClientError};
use crate::lab::StateArgs;

#[derive(Args)]
pub struct GfsArgs {
    #[command(subcommand)]
    command: GfsCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Subcommand)]
enum GfsCommand {
    /// Copy a local file into GFS (PATH must not exist yet).
    ///
    /// Example:
    ///   ftvm gfs put book.txt /data/book.txt
    #[command(verbatim_doc_comment)]
    Put { local: PathBuf, path: String },
    /// Copy a GFS file to a local file. GFS keeps no file lengths (a chunk
    /// reads as zeros past its end), so NUL bytes at the very end are dropped.
    ///
    /// Example:
    ///   ftvm gfs get /data/book.txt copy.txt
    #[command(verbatim_doc_comment)]
    Get { path: String, local: PathBuf },
    /// List the files under PREFIX (default: all).
    Ls { prefix: Option<String> },
    /// Remove a file (its chunks are garbage-collected later).
    Rm { path: String },
    /// Append a local file to PATH as one record (at most a quarter chunk);
    /// PATH is created if missing. Prints the offset GFS chose.
    ///
    /// Example:
    ///   ftvm gfs append line.txt /logs/events
    #[command(verbatim_doc_comment)]
    Append { local: PathBuf, path: String },
    /// Snapshot SRC to DST (copy-on-write).
    Snapshot { source: String, target: String },
}

/// Runs `ftvm gfs ...`; returns the exit status.
pub fn run(args: GfsArgs) -> anyhow::Result<u8> {
    let mut session = Session::open(&args.state.state_dir())?;
    match args.command {
        GfsCommand::Put { local, path } => {
            let data = read_local(&local)?;
            let started = Instant::now();
            put(&mut session, &path, &data, true)?;
            println!("{}", rate_line("put", &path, data.len(), started));
        }
        GfsCommand::Get { path, local } => {
            let started = Instant::now();
            let data = get(&mut session, &path, true)?;
            std::fs::write(&local, &data).map_err(|source| ClientError::Local {
                action: "write",
                path: local.clone(),
                source,
            })?;
            println!("{}", rate_line("got", &path, data.len(), started));
        }
        GfsCommand::Ls { prefix } => {
            let prefix = prefix.unwrap_or_else(|| "/".into());
            for file in list(&mut session, &prefix)? {
                println!("{file}");
            }
        }
        GfsCommand::Rm { path } => {
            op(&mut session, ClientOp::Delete { path: path.clone() }, &path)?;
            println!("removed {path}");
        }
        GfsCommand::Append { local, path } => {
            let data = read_local(&local)?;
            let offset = append(&mut session, &path, data)?;
            println!(
                "appended {} bytes to {path} at offset {offset}",
                std::fs::metadata(&local).map_or(0, |m| m.len())
            );
        }
        GfsCommand::Snapshot { source, target } => {
            let what = format!("{source} -> {target}");
            op(&mut session, ClientOp::Snapshot { source, target }, &what)?;
            println!("snapshot {what} taken");
        }
    }
    Ok(0)
}

fn read_local(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Local {
        action: "read",
        path: path.into(),
        source,
    })
}

fn rate_line(verb: &str, path: &str, bytes: usize, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!(
        "{verb} {path}: {bytes} bytes in {seconds:.2} s ({:.1} MB/s)",
        bytes as f64 / seconds / 1e6
    )
}

/// Runs `op` on `path`; a failure becomes an error naming the fix.
pub fn op(session: &mut Session, op: ClientOp, path: &str) -> Result<OpOutput, ClientError> {
    let name = op_name(&op);
    session.gfs_op(op).map_err(|error| failure(session, name, path, error))
}

fn op_name(op: &ClientOp) -> &'static str {
    match op {
        ClientOp::Create { .. } => "create",
        ClientOp::Delete { .. } => "rm",
        ClientOp::List { .. } => "ls",
        ClientOp::Snapshot { .. } => "snapshot",
        ClientOp::ChunkCount { .. } | ClientOp::Locate { .. } => "lookup",
        ClientOp::Read { .. } => "read",
        ClientOp::Write { .. } => "write",
        ClientOp::Append { .. } => "append",
    }
}

/// The error for `error` of operation `name` on `path`: an unreachable
/// master is said so, with why the stream to it failed.
fn failure(session: &Session, name: &str, path: &str, error: GfsError) -> ClientError {
    if crate::stop::stop_requested() {
        return ClientError::Interrupted;
    }
    let master = session.plan.master();
    if error == GfsError::Timeout {
        if let Some(problem) = session.problem(master.node) {
            return ClientError::Unreachable {
                what: format!("the GFS master ({} at {})", master.name, master.ip),
                detail: problem.clone(),
            };
        }
    }
    ClientError::Gfs { op: format!("gfs {name} {path}"), problem: explain(error, path) }
}

fn bar(len: u64, verb: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ({{elapsed}})"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    )
}

/// Creates `path` and writes `data` into it chunk by chunk.
pub fn put(
    session: &mut Session,
    path: &str,
    data: &[u8],
    progress: bool,
) -> Result<(), ClientError> {
    op(session, ClientOp::Create { path: path.into() }, path)?;
    let chunk = session.chunk_bytes() as usize;
    let bar = if progress { bar(data.len() as u64, "put") } else { ProgressBar::hidden() };
    for (index, piece) in data.chunks(chunk).enumerate() {
        let write = ClientOp::Write {
            path: path.into(),
            offset: (index * chunk) as u64,
            data: piece.to_vec(),
        };
        op(session, write, path)?;
        bar.inc(piece.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Reads all of `path` (without the NUL bytes past its end).
pub fn get(session: &mut Session, path: &str, progress: bool) -> Result<Vec<u8>, ClientError> {
    let chunks = match op(session, ClientOp::ChunkCount { path: path.into() }, path)? {
        OpOutput::ChunkCount(chunks) => chunks,
        other => {
            return Err(ClientError::Gfs {
                op: format!("gfs get {path}"),
                problem: format!("unexpected answer {other:?}"),
            })
        }
    };
    let chunk = session.chunk_bytes();
    let bar = if progress { bar(chunks * chunk, "get") } else { ProgressBar::hidden() };
    let mut data = Vec::new();
    for index in 0..chunks {
        let read = ClientOp::Read { path: path.into(), offset: index * chunk, len: chunk };
        match op(session, read, path)? {
            OpOutput::Data(bytes) => data.extend_from_slice(&bytes),
            other => {
                return Err(ClientError::Gfs {
                    op: format!("gfs get {path}"),
                    problem: format!("unexpected answer {other:?}"),
                })
            }
        }
        bar.inc(chunk);
    }
    bar.finish_and_clear();
    let end = data.iter().rposition(|byte| *byte != 0).map_or(0, |at| at + 1);
    data.truncate(end);
    Ok(data)
}

/// The files under `prefix`.
pub fn list(session: &mut Session, prefix: &str) -> Result<Vec<String>, ClientError> {
    match op(session, ClientOp::List { prefix: prefix.into() }, prefix)? {
        OpOutput::Listing(files) => Ok(files),
        other => Err(ClientError::Gfs {
            op: format!("gfs ls {prefix}"),
            problem: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Appends `data` to `path` as one record (creating `path` if needed); the offset GFS chose.
pub fn append(session: &mut Session, path: &str, data: Vec<u8>) -> Result<u64, ClientError> {
    let limit = session.chunk_bytes() / 4;
    if data.is_empty() || data.len() as u64 > limit {
        return Err(ClientError::Usage(format!(
            "a record append takes 1 to {limit} bytes (a quarter chunk), not {}: use `ftvm gfs put` for whole files",
            data.len()
        )));
    }
    let attempt = |session: &mut Session, data: Vec<u8>| {
        session.gfs_op(ClientOp::Append { path: path.into(), data })
    };
    let result = match attempt(session, data.clone()) {
        Err(GfsError::NotFound) => {
            op(session, ClientOp::Create { path: path.into() }, path)?;
            attempt(session, data)
        }
        other => other,
    };
    match result.map_err(|error| failure(session, "append", path, error))? {
        OpOutput::Appended { offset } => Ok(offset),
        other => Err(ClientError::Gfs {
            op: format!("gfs append {path}"),
            problem: format!("unexpected answer {other:?}"),
        }),
    }
}
