//! A TCP proxy for the log channel between a primary and a backup, so a test
//! can cut the channel while both sides live, or corrupt one byte on it.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the proxy does to the bytes flowing from the primary to the backup.
#[derive(Default)]
struct Faults {
    /// Stop forwarding in both directions, keeping the sockets open (a partition).
    cut: AtomicBool,
    /// Stop forwarding from the primary to the backup only.
    cut_to_backup: AtomicBool,
    /// Stop forwarding from the backup to the primary only.
    cut_to_primary: AtomicBool,
    /// Flip a bit in the byte at this offset of the primary's stream (0: never).
    corrupt_at: AtomicU64,
}

/// A proxy listening on loopback; forwards to `target`.
pub struct Proxy {
    /// The address the primary should connect to.
    pub addr: String,
    faults: Arc<Faults>,
}

/// Forwards `from` -> `to`; `to_backup` says which direction this is.
fn pump(mut from: TcpStream, mut to: TcpStream, faults: Arc<Faults>, to_backup: bool) {
    let mut offset = 0u64;
    let mut buf = [0u8; 16 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
    let one_way_cut = if to_backup { &faults.cut_to_backup } else { &faults.cut_to_primary };
    let corrupting = to_backup;
    loop {
        if faults.cut.load(Ordering::SeqCst) || one_way_cut.load(Ordering::SeqCst) {
            // Hold the sockets open and silent, like a network partition.
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let len = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(len) => len,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let target = faults.corrupt_at.load(Ordering::SeqCst);
        if corrupting && target > 0 && (offset..offset + len as u64).contains(&target) {
            buf[(target - offset) as usize] ^= 0x20;
        }
        offset += len as u64;
        if to.write_all(&buf[..len]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `target` (one connection).
    pub fn start(target: &str) -> Proxy {
        Self::start_on("127.0.0.1:0", target)
    }

    /// Starts a proxy listening on `listen` in front of `target` (one connection).
    pub fn start_on(listen: &str, target: &str) -> Proxy {
        let listener = TcpListener::bind(listen).expect("bind the proxy's port");
        let addr = listener.local_addr().expect("local addr").to_string();
        let faults = Arc::new(Faults::default());
        let target = target.to_string();
        let shared = faults.clone();
        thread::spawn(move || {
            let Ok((primary, _)) = listener.accept() else { return };
            let backup = loop {
                match TcpStream::connect(&target) {
                    Ok(stream) => break stream,
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            };
            let (p2, b2) =
                (primary.try_clone().expect("clone"), backup.try_clone().expect("clone"));
            let forward = shared.clone();
            thread::spawn(move || pump(primary, backup, forward, true));
            pump(b2, p2, shared, false);
        });
        Proxy { addr, faults }
    }

    /// Stops forwarding in both directions; both sides stay connected.
    pub fn cut(&self) {
        self.faults.cut.store(true, Ordering::SeqCst);
    }

    /// Stops forwarding one way only: towards the backup if `to_backup`, else towards the
    /// primary. The other direction goes on.
    pub fn cut_one_way(&self, to_backup: bool) {
        let flag = if to_backup { &self.faults.cut_to_backup } else { &self.faults.cut_to_primary };
        flag.store(true, Ordering::SeqCst);
    }

    /// Flips a bit of the primary's byte at `offset` (counted from the start).
    pub fn corrupt_at(&self, offset: u64) {
        self.faults.corrupt_at.store(offset, Ordering::SeqCst);
    }
}
