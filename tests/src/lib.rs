//! Helpers shared by the end-to-end tests: run the ftvm CLI as a child
//! process that is killed if the test fails (kill on drop), and collect what
//! it printed.
pub mod bench;
pub mod echo;
/// A real single-member etcd for the tests (the storage crate's tests share this file).
#[path = "../../storage/tests/support/etcd_server.rs"]
pub mod etcd;
pub mod failover;
pub mod hosts;
pub mod icmp;
pub mod lab;
pub mod netns;
pub mod proxy;
pub mod remote;

use std::io::Read;
use std::process::{Child, Command, Stdio};

/// What a finished `ftvm` process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit status (None if killed by a signal).
    pub status: Option<i32>,
    /// Guest console (stdout).
    pub stdout: String,
    /// VMM messages (stderr).
    pub stderr: String,
}

/// A child process that is killed and reaped when dropped, so a failing test
/// never leaves a VM behind.
pub struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Reaped {
    /// Spawns `command` with piped output.
    pub fn spawn(mut command: Command) -> Reaped {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        Reaped(Some(child))
    }

    /// Waits for the process and collects its output.
    pub fn finish(mut self) -> Finished {
        let mut child = self.0.take().expect("finish is called once");
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let _ = out.read_to_string(&mut stdout);
        stderr.push_str(&reader.join().expect("reader thread"));
        let status = child.wait().expect("wait for ftvm").code();
        Finished { status, stdout, stderr }
    }
}

impl Reaped {
    /// The process id (for /proc measurements), while it runs.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits for the process like [`Reaped::finish`], but kills it first if
    /// it is still running after `limit` (a hung VM must not hang the test).
    pub fn finish_within(self, limit: std::time::Duration) -> Finished {
        let pid = self.pid() as i32;
        let (done, finished_signal) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished_signal.recv_timeout(limit).is_err() {
                // SAFETY: kill(2) on the pid of our child, which is reaped
                // only after this thread is told (or gives up).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let finished = self.finish();
        let _ = done.send(());
        let _ = watchdog.join();
        finished
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the process, while it has not been reaped.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = self.0.as_ref() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Kills the process with SIGKILL (a host crash, as far as the peer can tell).
    pub fn kill(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
        }
    }

    /// Sends SIGTERM (an orderly stop: ftvm finishes its log) and collects the output.
    pub fn stop(mut self) -> Finished {
        if let Some(child) = self.0.as_ref() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        Reaped(self.0.take()).finish()
    }
}

/// Stops every VM (SIGTERM) and returns what each left behind, plus all of
/// it as one text for assertion messages.
pub fn stop_all(vms: impl IntoIterator<Item = Reaped>) -> (Vec<Finished>, String) {
    let finished: Vec<Finished> = vms.into_iter().map(Reaped::stop).collect();
    let consoles = finished
        .iter()
        .map(|vm| format!("--- exit {:?}\n{}{}", vm.status, vm.stdout, vm.stderr))
        .collect();
    (finished, consoles)
}

/// Runs the ftvm CLI (`exe` is `env!("CARGO_BIN_EXE_ftvm-e2e")`) with `args`.
pub fn ftvm(exe: &str, args: &[&str]) -> Finished {
    require_kvm();
    let mut command = Command::new(exe);
    command.args(args);
    Reaped::spawn(command).finish()
}

/// A scratch directory under the system's temporary directory, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// A fresh directory whose name starts with `name`.
    pub fn new(name: &str) -> Scratch {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ftvm-{name}-{}-{count}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }

    /// The directory as a string, for command lines.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("scratch paths are UTF-8")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates an FT pair's identity in `dir` (`ftvm pair init`), as a user does
/// once before a pair's first start.
pub fn init_pair(exe: &str, dir: &std::path::Path) {
    let output = Command::new(exe)
        .args(["pair", "init"])
        .arg(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {exe}: {error}"));
    assert!(
        output.status.success(),
        "ftvm pair init {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fails loudly (never skips) when this machine cannot run VMs.
pub fn require_kvm() {
    if let Err(error) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests boot VMs and need read-write /dev/kvm: {error}");
    }
}

/// The value after `key ` in ftvm's summary line (`ftvm: exit N landmarks N console H ...`).
pub fn summary_field<'a>(stderr: &'a str, key: &str) -> Option<&'a str> {
    let line = stderr.lines().find(|line| line.starts_with("ftvm: exit "))?;
    let mut words = line.split_whitespace();
    words.find(|word| *word == key)?;
    words.next()
}

/// Packets sent and received by the guest's NIC, from the VMM's
/// `ftvm: net-tx N frames HASH net-rx M frames ...` line.
pub fn net_packets(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|line| line.starts_with("ftvm: net-tx"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some((words.get(2)?.parse().ok()?, words.get(6)?.parse().ok()?))
}
