//! The API socket (`--api-socket PATH`), after Firecracker's and cloud-hypervisor's: a Unix
//! socket on which the VMM answers one JSON request per line with one JSON line, and
//! `ftvm remote` as its client (like `ch-remote`). Requests: `{"command":"status"}` (what
//! SIGUSR1 prints, as JSON: role, generation, landmarks, lag, log bytes, ...),
//! `{"command":"stop"}` (an orderly stop, as SIGTERM), for a standalone guest
//! `{"command":"snapshot","path":"FILE"}` ([`crate::snapshot`]; answered once written), and for
//! a backup gone live `{"command":"add-backup","addr":"HOST:PORT"}` ([`crate::ft::transfer`];
//! answered once the new backup replays).
//!
//! The socket is created mode 0600 (only its owner may drive the VMM); a socket left by a
//! VMM that died is replaced, one that answers is refused. Requests are served one at a time
//! by a thread of their own; a client that sends no complete line within
//! [`REQUEST_TIMEOUT`] or more than [`MAX_REQUEST_BYTES`] is answered with an error and
//! dropped.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use crate::tasks::VmTasks;

/// The longest a request may take to arrive.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// What the VMM reports for `status`.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;
/// Adds the backup waiting at an address; the answer, or why not.
pub type AddBackupFn = Arc<dyn Fn(&str) -> Result<Value, String> + Send + Sync>;

/// What a VMM offers on its API socket.
pub struct Handlers {
    /// The answer to `status`.
    pub status: StatusFn,
    /// Snapshots are taken through these tasks (a standalone guest only).
    pub snapshots: Option<Arc<VmTasks>>,
    /// `add-backup`, where this side can take one.
    pub add_backup: Option<AddBackupFn>,
}

/// A request on the API socket.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VMM's state, as JSON.
    Status,
    /// Stop the guest in an orderly way (as SIGTERM does).
    Stop,
    /// Write a snapshot of the guest to `path` (a standalone guest only).
    Snapshot {
        /// The file to write.
        path: PathBuf,
    },
    /// Add the backup waiting at `addr` (`ftvm backup --listen ADDR`) to this guest.
    AddBackup {
        /// Its log channel address.
        addr: String,
    },
}

/// How long a snapshot or a transfer may take before the API gives up waiting for it.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the API socket could not be served or reached.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Another VMM answers on the path.
    #[error("{path} is the API socket of a running VMM; choose another path")]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// The socket could not be created.
    #[error("cannot create the API socket {path}: {error}")]
    Create {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// No VMM answers on the path.
    #[error("no VMM answers on {path}: {error} (is it running with --api-socket {path}?)")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The VMM did not answer properly.
    #[error("the VMM on {path} did not answer: {detail}")]
    Answer {
        /// The socket's path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// A served API socket; removed when dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Serves `path` with `handlers`.
    pub fn start(path: &Path, handlers: Handlers) -> Result<ApiServer, ApiError> {
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse { path: path.into() });
        }
        let create = |error| ApiError::Create { path: path.into(), error };
        // A socket file nobody answers on is what a VMM that died left behind.
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path).map_err(create)?;
        }
        let listener = UnixListener::bind(path).map_err(create)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(create)?;
        std::thread::Builder::new()
            .name("ftvm-api".into())
            .spawn(move || serve(listener, &handlers))
            .map_err(create)?;
        Ok(ApiServer { path: path.into() })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, handlers: &Handlers) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let answer = read_request(&stream).map_or_else(error_answer, |request| match request {
            Request::Snapshot { path } => snapshot(handlers.snapshots.as_deref(), path),
            Request::AddBackup { addr } => match &handlers.add_backup {
                Some(add_backup) => add_backup(&addr).unwrap_or_else(error_answer),
                None => error_answer(
                    "a backup is added by a backup that went live after a failover; this VMM \
                     is not one"
                        .into(),
                ),
            },
            Request::Status => (handlers.status)(),
            Request::Stop => {
                // The same path as SIGTERM: the vCPU thread takes it (every other thread
                // blocks it), which ends KVM_RUN or a wait, and stops at the next landmark.
                // SAFETY: kill with this process's own pid and a valid signal number.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                json!({ "stopping": true })
            }
        });
        let _ = writeln!(stream, "{answer}");
    }
}

/// Asks the vCPU thread for a snapshot and waits for it to be written.
fn snapshot(snapshots: Option<&VmTasks>, path: PathBuf) -> Value {
    let Some(snapshots) = snapshots else {
        return error_answer("snapshots are taken of standalone guests (`ftvm run`) only".into());
    };
    let shown = path.display().to_string();
    let (answer, answered) = std::sync::mpsc::channel();
    snapshots.push(Box::new(move |vm| {
        let written =
            vm.snapshot().and_then(|snapshot| snapshot.write(&path).map_err(|e| e.to_string()));
        let _ = answer.send(written);
    }));
    match answered.recv_timeout(LONG_REQUEST_TIMEOUT) {
        Ok(Ok(())) => json!({ "snapshot": shown }),
        Ok(Err(error)) => error_answer(format!("the snapshot failed: {error}")),
        Err(_) => error_answer(format!(
            "no snapshot within {} s: the guest ran no exit (or the VMM is ending)",
            LONG_REQUEST_TIMEOUT.as_secs()
        )),
    }
}

fn error_answer(detail: String) -> Value {
    json!({ "error": detail })
}

fn read_request(stream: &UnixStream) -> Result<Request, String> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|error| error.to_string())?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .map_err(|error| format!("reading the request: {error}"))?;
    if !line.ends_with('\n') {
        return Err(format!(
            "a request is one JSON line of at most {MAX_REQUEST_BYTES} bytes, ended by a newline"
        ));
    }
    serde_json::from_str(&line).map_err(|error| {
        format!(
            "{error}; requests are {{\"command\":\"status\"}}, {{\"command\":\"stop\"}}, \
             {{\"command\":\"snapshot\",\"path\":\"FILE\"}} or \
             {{\"command\":\"add-backup\",\"addr\":\"HOST:PORT\"}}"
        )
    })
}

/// Sends `request` (a JSON object) to the VMM on `path` and returns its answer; an answer
/// holding `error` is an error.
pub fn call(path: &Path, request: &Value) -> Result<Value, ApiError> {
    let mut stream = UnixStream::connect(path)
        .map_err(|error| ApiError::Connect { path: path.into(), error })?;
    let answer_error = |detail: String| ApiError::Answer { path: path.into(), detail };
    // A snapshot or a transfer answers when it is done.
    let long = matches!(request["command"].as_str(), Some("snapshot" | "add-backup"));
    let timeout = if long { LONG_REQUEST_TIMEOUT + REQUEST_TIMEOUT } else { REQUEST_TIMEOUT * 2 };
    stream.set_read_timeout(Some(timeout)).map_err(|e| answer_error(e.to_string()))?;
    writeln!(stream, "{request}").map_err(|error| answer_error(error.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|error| answer_error(error.to_string()))?;
    let answer: Value = serde_json::from_str(&line)
        .map_err(|error| answer_error(format!("{error} in {line:?}")))?;
    match answer.get("error") {
        Some(detail) => Err(answer_error(detail.as_str().unwrap_or_default().to_owned())),
        None => Ok(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers(status: StatusFn) -> Handlers {
        Handlers { status, snapshots: None, add_backup: None }
    }

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ftvm-api-test-{name}-{}", std::process::id()))
    }

    #[test]
    fn status_is_answered_and_bad_requests_are_explained() {
        let path = socket_path("status");
        let server =
            ApiServer::start(&path, handlers(Arc::new(|| json!({ "role": "test" })))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(call(&path, &json!({ "command": "status" })).unwrap()["role"], "test");
        let error = call(&path, &json!({ "command": "explode" })).unwrap_err().to_string();
        assert!(error.contains("unknown variant") && error.contains("status"), "{error}");
        // A second VMM may not take the socket of a running one.
        let taken = ApiServer::start(&path, handlers(Arc::new(|| json!({})))).err().unwrap();
        assert!(matches!(taken, ApiError::InUse { .. }), "{taken}");
        drop(server);
        assert!(!path.exists(), "removed when the VMM ends");
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_missing_vmm_is_named() {
        let path = socket_path("stale");
        drop(UnixListener::bind(&path).unwrap());
        let _server = ApiServer::start(&path, handlers(Arc::new(|| json!({ "ok": 1 })))).unwrap();
        assert_eq!(call(&path, &json!({ "command": "status" })).unwrap()["ok"], 1);
        let missing = socket_path("missing");
        let error = call(&missing, &json!({ "command": "status" })).unwrap_err().to_string();
        assert!(error.contains("no VMM answers") && error.contains("--api-socket"), "{error}");
    }

    #[test]
    fn a_request_without_its_newline_is_refused() {
        let path = socket_path("partial");
        let _server = ApiServer::start(&path, handlers(Arc::new(|| json!({})))).unwrap();
        let mut stream = UnixStream::connect(&path).unwrap();
        write!(stream, "{{\"command\":\"status\"}}").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        assert!(answer.contains("one JSON line"), "{answer}");
    }
}
