//! A TAP device: the guest NIC's door to a host bridge. Opened by name
//! (created if it does not exist, in the caller's network namespace),
//! without the packet-info header, non-blocking, and with the virtio-net
//! header in front of every packet (`IFF_VNET_HDR`, 12 bytes as in virtio
//! 1.x), so that a large TCP segment crosses the host stack once, not as 45
//! frames. The host accepts offloaded packets from the guest at once; what
//! it may hand the guest (`TUNSETOFFLOAD`: partial checksums, TCP/IPv4
//! segments up to 64 KiB) follows what the guest's driver accepted.
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use thiserror::Error;

use crate::devices::virtio::net::{feature, HEADER_BYTES, MAX_PACKET_BYTES};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;

/// Why a TAP device could not be opened.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("TAP name `{0}` is empty or longer than 15 bytes")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun ({0}): is the tun module loaded, and are you root or CAP_NET_ADMIN?")]
    Open(std::io::Error),
    /// TUNSETVNETHDRSZ or TUNSETOFFLOAD failed.
    #[error("cannot set up the virtio-net header offloads of TAP `{name}`: {source} (the kernel's tun driver must support IFF_VNET_HDR)")]
    Offload {
        /// The TAP name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
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
    /// Where packets are read before they are copied out at their size.
    read_buffer: Mutex<Vec<u8>>,
    /// The guest's receive offloads the TAP was last set to.
    receive_offloads: AtomicU64,
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
        let mut request =
            IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, padding: [0; 22] };
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
        let offload_error = |source| TapError::Offload { name: name.to_string(), source };
        let header_bytes = HEADER_BYTES as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &header_bytes) } < 0 {
            return Err(offload_error(std::io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            read_buffer: Mutex::new(vec![0u8; MAX_PACKET_BYTES]),
            receive_offloads: AtomicU64::new(u64::MAX),
        };
        // Plain frames with complete checksums until a driver accepts more.
        tap.set_receive_offloads(0).map_err(offload_error)?;
        Ok(tap)
    }

    /// Lets the host hand over what the guest's driver accepted: partial
    /// checksums with `GUEST_CSUM`, large TCP/IPv4 segments with
    /// `GUEST_TSO4` as well (virtio-net feature bits). Cheap when unchanged.
    pub fn set_receive_offloads(&self, guest_features: u64) -> std::io::Result<()> {
        let guest_features = guest_features & (feature::GUEST_CSUM | feature::GUEST_TSO4);
        if self.receive_offloads.load(Ordering::Relaxed) == guest_features {
            return Ok(());
        }
        let mut flags: libc::c_ulong = 0;
        if guest_features & feature::GUEST_CSUM != 0 {
            flags |= TUN_F_CSUM;
            if guest_features & feature::GUEST_TSO4 != 0 {
                flags |= TUN_F_TSO4;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.receive_offloads.store(guest_features, Ordering::Relaxed);
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next packet (virtio-net header, then the frame) the host sent,
    /// or `None` when none is waiting.
    pub fn read_packet(&self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buffer = self.read_buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match (&self.file).read(&mut buffer) {
            Ok(len) => Ok(Some(buffer[..len].to_vec())),
            Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sends one packet (virtio-net header, then the frame) to the host.
    pub fn write_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        (&self.file).write(packet).map(|_| ())
    }

    /// Waits until a packet is waiting or `timeout` has passed (a signal ends the wait early);
    /// whether one is waiting.
    pub fn wait_readable(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        let mut poll_fd = libc::pollfd { fd: self.raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd that lives across the call, for the TAP's open fd.
        match unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) } {
            ready if ready >= 0 => Ok(ready > 0),
            _ => match std::io::Error::last_os_error() {
                error if error.kind() == ErrorKind::Interrupted => Ok(false),
                error => Err(error),
            },
        }
    }

    /// The file descriptor, for poll(2).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
