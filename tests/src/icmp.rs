//! ICMP echo from Rust (what `ping` does), so the tests need no `iputils-ping`
//! on a fresh machine: a raw ICMP socket (root, as the network tests are),
//! echo requests with our own identifier, replies matched by identifier and
//! sequence number. Run inside a namespace through the `ftvm-netclient`
//! helper binary (`ip netns exec NS ftvm-netclient ping ...`).
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const PAYLOAD_BYTES: usize = 56;

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(identifier: u16, sequence: u16) -> Vec<u8> {
    let mut packet = vec![0u8; 8 + PAYLOAD_BYTES];
    packet[0] = ECHO_REQUEST;
    packet[4..6].copy_from_slice(&identifier.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    for (index, byte) in packet[8..].iter_mut().enumerate() {
        *byte = index as u8;
    }
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

fn raw_icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_to(socket: &OwnedFd, packet: &[u8], target: Ipv4Addr) -> io::Result<()> {
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(target).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `address` are valid for the lengths passed and
    // outlive the call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&address as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `deadline` for the reply to (`identifier`, `sequence`) from `target`.
fn await_reply(
    socket: &OwnedFd,
    target: Ipv4Addr,
    identifier: u16,
    sequence: u16,
    deadline: Instant,
) -> io::Result<bool> {
    let mut buffer = [0u8; 1500];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(false);
        };
        let mut poll_fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout_ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd that lives across the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if ready == 0 {
            continue;
        }
        // SAFETY: `buffer` is writable for its whole length.
        let read =
            unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        // A raw IPv4 socket hands over the IP header too.
        let packet = &buffer[..read as usize];
        let Some(header_bytes) = packet.first().map(|byte| usize::from(byte & 0x0f) * 4) else {
            continue;
        };
        if packet.len() < header_bytes + 8 || packet[12..16] != target.octets() {
            continue;
        }
        let icmp = &packet[header_bytes..];
        let is_ours = icmp[0] == ECHO_REPLY
            && icmp[4..6] == identifier.to_be_bytes()
            && icmp[6..8] == sequence.to_be_bytes()
            && internet_checksum(icmp) == 0;
        if is_ours {
            return Ok(true);
        }
    }
}

/// Sends `count` echo requests to `target`, `interval` apart, each waiting
/// up to `timeout` for its reply. Returns the round trips of the replies
/// (a lost one is missing from the list).
pub fn ping(
    target: Ipv4Addr,
    count: u16,
    interval: Duration,
    timeout: Duration,
) -> io::Result<Vec<Duration>> {
    let socket = raw_icmp_socket()?;
    let identifier = std::process::id() as u16;
    let mut round_trips = Vec::new();
    for sequence in 0..count {
        if sequence > 0 {
            std::thread::sleep(interval);
        }
        let sent_at = Instant::now();
        send_to(&socket, &echo_request(identifier, sequence), target)?;
        if await_reply(&socket, target, identifier, sequence, sent_at + timeout)? {
            round_trips.push(sent_at.elapsed());
        }
    }
    Ok(round_trips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_a_checksum_that_verifies() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(internet_checksum(&packet), 0);
        assert_eq!(packet[0], ECHO_REQUEST);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn the_checksum_of_an_odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2]), !(0x0001 + 0xf200));
    }
}
