//! Counts the frames a VMM writes into a TAP device, with the wall-clock time of the last one:
//! `ftvm-capture IFACE` (run in the TAP's network namespace) until SIGTERM, then prints
//! `frames N last_unix_ns T announcements A last_announcement_unix_ns U`. An AF_PACKET socket sees what the VMM writes as
//! frames the interface received, independently of the VMM's own account. The VMM's own MAC
//! announcements (RARP, which no guest sends) are counted apart from the guest's frames: they
//! carry nothing of the guest's.
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The EtherType of the VMM's MAC announcements (`vmm::ft::mac_announcement`).
const RARP_ETHERTYPE: [u8; 2] = [0x80, 0x35];

extern "C" fn on_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let Some(iface) = std::env::args().nth(1) else {
        eprintln!("usage: ftvm-capture IFACE");
        std::process::exit(2);
    };
    let name = std::ffi::CString::new(iface.clone()).expect("an interface name");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {iface} here");
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked.
    let socket = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(socket >= 0, "AF_PACKET needs root: {}", std::io::Error::last_os_error());
    // SAFETY: a zeroed sockaddr_ll filled with the family, protocol and interface is valid.
    let bound = unsafe {
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        libc::bind(
            socket,
            &address as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert!(bound == 0, "bind to {iface}: {}", std::io::Error::last_os_error());
    // A timeout, so SIGTERM is noticed while no frame comes.
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: setsockopt reads a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
    println!("capturing on {iface}");
    let (mut frames, mut last_unix_ns) = (0u64, 0u128);
    let (mut announcements, mut last_announcement_unix_ns) = (0u64, 0u128);
    let mut buffer = vec![0u8; 65536];
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    while !STOP.load(Ordering::SeqCst) {
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: recvfrom writes at most the buffer's length and the address's size given.
        let len = unsafe {
            libc::recvfrom(
                socket,
                buffer.as_mut_ptr() as *mut libc::c_void,
                buffer.len(),
                0,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut from_len,
            )
        };
        // Frames the VMM wrote arrive on the TAP (not PACKET_OUTGOING, which the host sent it).
        if len > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
            let now_unix_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos());
            if buffer.get(12..14) == Some(&RARP_ETHERTYPE) {
                announcements += 1;
                last_announcement_unix_ns = now_unix_ns;
            } else {
                frames += 1;
                last_unix_ns = now_unix_ns;
            }
        }
    }
    println!(
        "frames {frames} last_unix_ns {last_unix_ns} announcements {announcements} \
         last_announcement_unix_ns {last_announcement_unix_ns}"
    );
}
