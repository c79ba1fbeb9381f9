//! A real single-member etcd for tests: started on loopback with free ports and a data
//! directory of its own, stopped (and reaped) when dropped, even when a test fails. It can be
//! stopped and started again on the same ports and data, to play an etcd outage.
//!
//! Std and libc only: the storage crate's tests and benchmark and the end-to-end tests
//! (`ftvm_tests::etcd`) include this file. A test process that is killed (a timeout) runs no
//! destructor, so etcd is also told to die with the thread that started it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary the tests start (Debian's `etcd-server` package installs it).
const ETCD: &str = "etcd";

/// How long a starting etcd may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) test etcd.
pub struct EtcdServer {
    child: Option<Child>,
    /// Holds the data directory and the log.
    scratch: PathBuf,
    /// The client port on 127.0.0.1.
    pub client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl EtcdServer {
    /// Starts a fresh single-member cluster and waits until it serves requests. Panics, naming
    /// the Debian package, if the `etcd` binary is missing.
    pub fn start() -> EtcdServer {
        if Command::new(ETCD).arg("--version").output().is_err() {
            panic!(
                "this test needs a real etcd: the `etcd` binary is missing from PATH; install \
                 Debian's `etcd-server` package (apt-get install etcd-server; .ci/run does)"
            );
        }
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "ftvm-etcd-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let mut server =
            EtcdServer { child: None, scratch, client_port: free_port(), peer_port: free_port() };
        server.restart();
        server
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// An arbiter URL for `prefix` (which starts with `/`).
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoint())
    }

    /// Stops etcd (SIGKILL, then reaps it); its data stays for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd (again) on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.join("etcd.log"))
            .unwrap();
        let mut command = Command::new(ETCD);
        // SAFETY: prctl(2) is async-signal-safe and touches only the child's own attributes;
        // nothing else runs between fork and exec. PR_SET_PDEATHSIG kills etcd with SIGKILL
        // when the thread that spawned it ends, so a killed test leaves no etcd behind.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.scratch.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start etcd: {error}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.healthy() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.scratch.join("etcd.log")).unwrap_or_default();
                self.stop();
                panic!("the test etcd did not come up ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Turns authentication on (a root user with a password), so that requests without a
    /// token are refused.
    pub fn enable_auth(&self) {
        for (path, body) in [
            ("/v3/auth/role/add", r#"{"name":"root"}"#),
            ("/v3/auth/user/add", r#"{"name":"root","password":"test-only"}"#),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
            ("/v3/auth/enable", "{}"),
        ] {
            let reply = self.http("POST", path, body).unwrap_or_default();
            assert!(reply.contains(" 200 "), "etcd {path}: {reply}");
        }
    }

    /// One HTTP/1.0 request to the client port; the whole reply, or None if it cannot connect.
    fn http(&self, method: &str, path: &str, body: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        Some(reply)
    }

    /// Whether etcd answers `GET /health` with a healthy member.
    fn healthy(&self) -> bool {
        self.http("GET", "/health", "").is_some_and(|reply| {
            reply.lines().next().is_some_and(|status| status.contains(" 200 "))
                && reply.contains("\"health\":\"true\"")
        })
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
