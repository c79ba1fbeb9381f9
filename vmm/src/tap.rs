//! A TAP device: the guest NIC's door to a host bridge. Opened by name
//! (created if it does not exist, in the caller's network namespace),
//! without the packet-info header, non-blocking.
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// The largest frame we read: an Ethernet frame without jumbo support, with room to spare.
pub const MAX_FRAME_BYTES: usize = 65_536;

/// Why a TAP device could not be opened.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("TAP name `{0}` is empty or longer than 15 bytes")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun ({0}): is the tun module loaded, and are you root or CAP_NET_ADMIN?")]
    Open(std::io::Error),
    /// TUNSETIFF failed.
    #[error("cannot attach to TAP `{name}`: {source} (is it owned by another user, or a TUN rather than TAP device?)")]
    Attach {
        /// The TAP name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    padding: [u8; 22],
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the TAP device `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > 15 {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut request = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, padding: [0; 22] };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update) a struct ifreq; `request`
        // is a properly sized, initialised ifreq that outlives the call.
        let result =
            unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request as *mut IfReq) };
        if result < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap { file, name: name.to_string() })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next frame the host sent, or `None` when none is waiting.
    pub fn read_frame(&self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; MAX_FRAME_BYTES];
        match (&self.file).read(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                Ok(Some(buf))
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sends one frame to the host.
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<()> {
        (&self.file).write(frame).map(|_| ())
    }

    /// The file descriptor, for poll(2).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
