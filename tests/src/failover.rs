//! What a client sees across a failover of the FT pair (run by `ftvm-netclient watch` in the
//! client namespace): a stream paced at a steady rate through the echo guest, audited byte by
//! byte afterwards (lost, duplicated, reordered, corrupt), and a request/response exchange on
//! a second connection; for each, the longest time without a byte coming back and when it was
//! (Unix ns, to line up with the VMMs' timelines), and whether the connection was reset.
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Odd, so multiplying by it is a bijection on u64: every 8-byte word of the stream is distinct
/// and tells its own position (see [`locate`]).
const WORD_MIX: u64 = 0x9e37_79b9_7f4a_7c15;
/// How often the stream's writer sends its next chunk.
const PACE: Duration = Duration::from_millis(10);
/// How long the clients wait for the last echoes once they stop sending.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// How many bytes after a jump must match the stream for the jump to be trusted.
const LOCATE_CHECK_BYTES: usize = 64;

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

/// The stream's byte at `offset`: word `offset / 8` is `(offset / 8) * WORD_MIX`, little-endian.
fn stream_byte(offset: usize) -> u8 {
    ((offset / 8) as u64).wrapping_mul(WORD_MIX).to_le_bytes()[offset % 8]
}

/// The inverse of [`WORD_MIX`] modulo 2^64 (Newton's iteration doubles the correct bits).
fn word_unmix() -> u64 {
    let mut inverse = WORD_MIX;
    for _ in 0..6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(WORD_MIX.wrapping_mul(inverse)));
    }
    inverse
}

/// The stream offset `bytes` were taken from, if they are stream bytes of `[0, sent)`.
fn locate(bytes: &[u8], sent: usize) -> Option<usize> {
    let check = bytes.len().min(LOCATE_CHECK_BYTES);
    (0..8).filter(|shift| shift + 8 <= bytes.len()).find_map(|shift| {
        let word = u64::from_le_bytes(bytes[shift..shift + 8].try_into().expect("8 bytes"));
        let start =
            (word.wrapping_mul(word_unmix()) as usize).checked_mul(8)?.checked_sub(shift)?;
        let fits = start.checked_add(check).is_some_and(|end| end <= sent);
        (fits && (0..check).all(|index| bytes[index] == stream_byte(start + index)))
            .then_some(start)
    })
}

/// How the echoed stream differed from what was sent, in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Sent and never echoed.
    pub lost: u64,
    /// Echoed more than once (each extra copy counts).
    pub duplicated: u64,
    /// Echoed for the first time after a later part of the stream.
    pub reordered: u64,
    /// Echoed bytes that are no part of what was sent.
    pub corrupt: u64,
}

/// Compares the echoed bytes with the `sent` bytes of the stream.
pub fn audit(echoed: &[u8], sent: usize) -> Audit {
    let mut audit = Audit::default();
    let mut copies = vec![0u8; sent];
    let (mut position, mut offset, mut highest_end) = (0, 0, 0);
    while position < echoed.len() {
        if offset < sent && echoed[position] == stream_byte(offset) {
            if copies[offset] > 0 {
                audit.duplicated += 1;
            } else if offset < highest_end {
                audit.reordered += 1;
            }
            copies[offset] = copies[offset].saturating_add(1);
            highest_end = highest_end.max(offset + 1);
            position += 1;
            offset += 1;
            continue;
        }
        match locate(&echoed[position..], sent) {
            Some(start) if start != offset => offset = start,
            _ => {
                audit.corrupt = (echoed.len() - position) as u64;
                break;
            }
        }
    }
    audit.lost = copies.iter().filter(|count| **count == 0).count() as u64;
    audit
}

/// The longest silence a client saw: its length and when it started and ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gap {
    pub ms: f64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

impl Gap {
    /// `gap_ms=... gap_start_unix_ns=... gap_end_unix_ns=...`.
    fn words(&self) -> String {
        format!(
            "gap_ms={:.3} gap_start_unix_ns={} gap_end_unix_ns={}",
            self.ms, self.start_unix_ns, self.end_unix_ns
        )
    }

    /// Counts the time since `last` (the previous arrival) if it is the longest so far.
    fn note(&mut self, last: &mut (Instant, u64)) {
        let (now, now_unix_ns) = (Instant::now(), unix_ns());
        let ms = (now - last.0).as_secs_f64() * 1e3;
        if ms > self.ms {
            *self = Gap { ms, start_unix_ns: last.1, end_unix_ns: now_unix_ns };
        }
        *last = (now, now_unix_ns);
    }
}

/// The stream client's findings.
#[derive(Debug, Default)]
pub struct StreamReport {
    pub gap: Gap,
    pub sent_bytes: u64,
    pub echoed_bytes: u64,
    pub audit: Audit,
    /// The connection failed (reset, closed, or no echo for [`DRAIN_LIMIT`]): what happened.
    pub failure: Option<String>,
    /// When the client's TCP retransmitted (Unix ns).
    pub retransmits_unix_ns: Vec<u64>,
}

/// The request/response client's findings.
#[derive(Debug, Default)]
pub struct RequestReport {
    pub gap: Gap,
    pub replies: u64,
    /// Replies that were not the request's echo.
    pub wrong_replies: u64,
    pub failure: Option<String>,
    /// When the client's TCP retransmitted (Unix ns).
    pub retransmits_unix_ns: Vec<u64>,
}

/// Connects to `ip:port`, retrying while nothing answers, for up to `limit`.
pub fn connect(ip: Ipv4Addr, port: u16, limit: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(
            &SocketAddrV4::new(ip, port).into(),
            Duration::from_secs(1),
        ) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The client's own TCP retransmissions on one socket, timed: TCP_INFO's count, read every
/// millisecond by a thread of its own (reading it sends nothing, so the timing is the
/// kernel's), and the Unix ns at which each new retransmission was first seen.
struct RetransmitWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

fn total_retransmits(socket: &TcpStream) -> Option<u32> {
    // SAFETY: an all-zero tcp_info is a valid value to be overwritten.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a live local.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (done == 0).then_some(info.tcpi_total_retrans)
}

impl RetransmitWatch {
    fn start(socket: &TcpStream) -> RetransmitWatch {
        let socket = socket.try_clone().expect("a second handle on the socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut seen, mut times) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let Some(count) = total_retransmits(&socket) else { break };
                times.extend((seen..count).map(|_| unix_ns()));
                seen = seen.max(count);
                std::thread::sleep(Duration::from_millis(1));
            }
            times
        });
        RetransmitWatch { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the retransmission watch")
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// Streams at `bytes_per_s` through the echo service on `stream` for `duration`, then waits
/// for the rest of the echo, and audits it.
pub fn stream(stream: TcpStream, bytes_per_s: usize, duration: Duration) -> StreamReport {
    let chunk_bytes = (bytes_per_s as f64 * PACE.as_secs_f64()).max(1.0) as usize;
    let retransmits = RetransmitWatch::start(&stream);
    let mut writer = stream.try_clone().expect("a second handle on the socket");
    // A send blocked on a peer that vanished gives up too (the socket's buffer stays full).
    writer.set_write_timeout(Some(DRAIN_LIMIT)).expect("a write timeout");
    let sender = std::thread::spawn(move || -> (usize, Option<String>) {
        let (started, mut sent) = (Instant::now(), 0);
        let mut chunk = Vec::with_capacity(chunk_bytes);
        while started.elapsed() < duration {
            chunk.clear();
            chunk.extend((sent..sent + chunk_bytes).map(stream_byte));
            if let Err(error) = writer.write_all(&chunk) {
                return (sent, Some(format!("send: {error}")));
            }
            sent += chunk_bytes;
            std::thread::sleep(PACE);
        }
        (sent, None)
    });
    let mut report = StreamReport::default();
    let mut echoed = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut reader = stream;
    reader.set_read_timeout(Some(PACE)).expect("a read timeout");
    let mut last = (Instant::now(), unix_ns());
    let mut first = true;
    let (mut sender, mut sent) = (Some(sender), None);
    loop {
        if let Some(done) = sender.take_if(|sender| sender.is_finished()) {
            let (bytes, failure) = done.join().expect("the stream's sender");
            sent = Some(bytes);
            report.failure = failure;
        }
        if sent.is_some_and(|bytes| echoed.len() >= bytes) || report.failure.is_some() {
            break;
        }
        // A peer that vanished without a reset: nothing comes back, ever.
        if last.0.elapsed() > DRAIN_LIMIT {
            report.failure = Some(format!("no echo for {} s", DRAIN_LIMIT.as_secs()));
            break;
        }
        match reader.read(&mut buffer) {
            Ok(0) => {
                report.failure = Some("the guest closed the connection".into());
                break;
            }
            Ok(len) => {
                // The first echo starts the clock: connecting is not a gap.
                if first {
                    last = (Instant::now(), unix_ns());
                    first = false;
                } else {
                    report.gap.note(&mut last);
                }
                echoed.extend_from_slice(&buffer[..len]);
            }
            Err(error) if is_timeout(&error) => {}
            Err(error) => {
                report.failure = Some(format!("receive: {error}"));
                break;
            }
        }
    }
    // After a failed receive the sender ends too: its socket is dead, or its send times out.
    let sent = sent.unwrap_or_else(|| sender.map_or(0, |s| s.join().expect("the sender").0));
    report.retransmits_unix_ns = retransmits.finish();
    report.sent_bytes = sent as u64;
    report.echoed_bytes = echoed.len() as u64;
    report.audit = audit(&echoed, sent);
    report
}

/// Sends a 16-byte numbered request and waits for its echo, over and over, for `duration`.
pub fn requests(mut stream: TcpStream, duration: Duration) -> RequestReport {
    let mut report = RequestReport::default();
    let retransmits = RetransmitWatch::start(&stream);
    stream.set_read_timeout(Some(DRAIN_LIMIT)).expect("a read timeout");
    let started = Instant::now();
    let mut last = (Instant::now(), unix_ns());
    let mut reply = [0u8; 16];
    for number in 0u64.. {
        if started.elapsed() >= duration {
            break;
        }
        let mut request = [0u8; 16];
        request[..8].copy_from_slice(&number.to_le_bytes());
        request[8..].copy_from_slice(&WORD_MIX.wrapping_mul(number).to_le_bytes());
        let exchanged = stream.write_all(&request).and_then(|()| stream.read_exact(&mut reply));
        if let Err(error) = exchanged {
            report.failure = Some(format!("request {number}: {error}"));
            break;
        }
        if number > 0 {
            report.gap.note(&mut last);
        } else {
            last = (Instant::now(), unix_ns());
        }
        report.replies += 1;
        report.wrong_replies += u64::from(reply != request);
        // A request every millisecond or so: a client polling a service.
        std::thread::sleep(Duration::from_millis(1));
    }
    report.retransmits_unix_ns = retransmits.finish();
    report
}

/// `retransmits_unix_ns=A,B,...` (`-` for none) and `failure="..."`, the end of a report line.
fn tail_words(retransmits_unix_ns: &[u64], failure: &Option<String>) -> String {
    let times: Vec<String> = retransmits_unix_ns.iter().map(u64::to_string).collect();
    let times = if times.is_empty() { "-".to_string() } else { times.join(",") };
    let failure = failure.as_deref().unwrap_or("");
    format!(
        "resets={} retransmits_unix_ns={times} failure={failure:?}",
        u8::from(!failure.is_empty())
    )
}

impl StreamReport {
    /// One line of `key=value` words, for the benchmark to parse.
    pub fn line(&self) -> String {
        let Audit { lost, duplicated, reordered, corrupt } = self.audit;
        format!(
            "stream {} sent_bytes={} echoed_bytes={} lost_bytes={lost} duplicated_bytes={duplicated} reordered_bytes={reordered} corrupt_bytes={corrupt} {}",
            self.gap.words(),
            self.sent_bytes,
            self.echoed_bytes,
            tail_words(&self.retransmits_unix_ns, &self.failure)
        )
    }
}

impl RequestReport {
    /// One line of `key=value` words, for the benchmark to parse.
    pub fn line(&self) -> String {
        format!(
            "requests {} replies={} wrong_replies={} {}",
            self.gap.words(),
            self.replies,
            self.wrong_replies,
            tail_words(&self.retransmits_unix_ns, &self.failure)
        )
    }
}

/// The word after `key=` in the `client` line of `output` (`stream ...` or `requests ...`).
pub fn word<'a>(output: &'a str, client: &str, key: &str) -> Option<&'a str> {
    let line = output.lines().find(|line| line.starts_with(client))?;
    let prefix = format!("{key}=");
    line.split_whitespace().find_map(|word| word.strip_prefix(prefix.as_str()))
}

/// The number after `key=` in the `client` line of `output`.
pub fn field(output: &str, client: &str, key: &str) -> Option<f64> {
    word(output, client, key)?.parse().ok()
}

/// Asserts that the clients of `ftvm-netclient watch` (its `client_stdout`) got every byte
/// back exactly once, in order, on their first connections, and that the stream sent more
/// than `min_sent_bytes` (it ran on past the faults); `report` explains a failure.
pub fn assert_clients_intact(client_stdout: &str, min_sent_bytes: f64, report: &str) {
    let stream = |key: &str| {
        field(client_stdout, "stream", key).unwrap_or_else(|| panic!("no {key}: {report}"))
    };
    let requests = |key: &str| {
        field(client_stdout, "requests", key).unwrap_or_else(|| panic!("no {key}: {report}"))
    };
    assert!(stream("sent_bytes") > min_sent_bytes, "the stream stopped early: {report}");
    assert_eq!(stream("resets"), 0.0, "the stream's connection failed: {report}");
    for damage in ["lost_bytes", "duplicated_bytes", "reordered_bytes", "corrupt_bytes"] {
        assert_eq!(stream(damage), 0.0, "{damage}: {report}");
    }
    assert_eq!(stream("echoed_bytes"), stream("sent_bytes"), "{report}");
    assert_eq!(requests("resets"), 0.0, "the request connection failed: {report}");
    assert_eq!(requests("wrong_replies"), 0.0, "{report}");
    assert!(requests("replies") > 0.0, "{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(range: std::ops::Range<usize>) -> Vec<u8> {
        range.map(stream_byte).collect()
    }

    #[test]
    fn an_intact_stream_passes() {
        assert_eq!(audit(&sent(0..10_000), 10_000), Audit::default());
    }

    #[test]
    fn a_missing_stretch_is_lost() {
        let echoed = [sent(0..3_001), sent(3_500..10_000)].concat();
        assert_eq!(audit(&echoed, 10_000), Audit { lost: 499, ..Audit::default() });
    }

    #[test]
    fn a_stretch_echoed_twice_is_duplicated() {
        let echoed = [sent(0..5_000), sent(4_003..10_000)].concat();
        assert_eq!(audit(&echoed, 10_000), Audit { duplicated: 997, ..Audit::default() });
    }

    #[test]
    fn swapped_stretches_are_reordered() {
        let echoed = [sent(0..1_000), sent(2_000..3_000), sent(1_000..2_000)].concat();
        assert_eq!(audit(&echoed, 3_000), Audit { reordered: 1_000, ..Audit::default() });
    }

    #[test]
    fn foreign_bytes_are_corrupt_and_what_they_hide_is_lost() {
        let echoed = [sent(0..1_000), vec![0xee; 100]].concat();
        assert_eq!(audit(&echoed, 2_000), Audit { lost: 1_000, corrupt: 100, ..Audit::default() });
    }

    #[test]
    fn a_cut_short_stream_is_lost_at_its_end() {
        assert_eq!(audit(&sent(0..1_500), 2_000), Audit { lost: 500, ..Audit::default() });
    }
}
