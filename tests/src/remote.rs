//! `ftvm remote` from the tests and benchmarks: a request to a VMM's API socket, and waiting
//! for a VMM to reach a role.
use std::time::{Duration, Instant};

/// The JSON answer of `exe remote --api-socket socket args...`, or why there is none.
pub fn remote(exe: &str, socket: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut command = std::process::Command::new(exe);
    command.args(["remote", "--api-socket", socket]).args(args);
    let output = command.output().map_err(|error| format!("{exe}: {error}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())
}

/// Waits until the VMM on `socket` says its role is `role`.
pub fn wait_for_role(exe: &str, socket: &str, role: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match remote(exe, socket, &["status"]) {
            Ok(status) if status["role"] == role => return Ok(()),
            Ok(status) => last = status.to_string(),
            Err(error) => last = error,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no role {role} within {limit:?}; last status: {last}"))
}
