//! A compiled TCP echo server and client, the host reference of the network
//! benchmark that no interpreter slows down: the same measurements as the
//! Python client (`clients/echo_client.py`), `stream` and `rtt`.
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CHUNK_BYTES: usize = 256 * 1024;

/// Echoes every connection on `ip:port` until killed.
pub fn serve(ip: Ipv4Addr, port: u16) {
    let listener = TcpListener::bind(SocketAddrV4::new(ip, port))
        .unwrap_or_else(|error| panic!("bind {ip}:{port}: {error}"));
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut stream = stream;
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        if stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// A byte pattern that differs per connection and per position.
fn pattern(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn connect(ip: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(10))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

fn stream_one(ip: Ipv4Addr, port: u16, data: Vec<u8>, seed: u64) -> io::Result<()> {
    let bytes = data.len();
    let stream = connect(ip, port)?;
    let mut writer = stream.try_clone()?;
    let data = std::sync::Arc::new(data);
    let sent = std::sync::Arc::clone(&data);
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut received = Vec::with_capacity(bytes);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut reader = stream;
    while received.len() < bytes {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..read]);
    }
    sender.join().map_err(|_| io::Error::other("the sender thread panicked"))??;
    if received[..] != data[..] {
        let first_bad = received.iter().zip(data.iter()).position(|(a, b)| a != b);
        return Err(io::Error::other(format!(
            "connection {seed}: got {} of {bytes} bytes, first difference at {first_bad:?}",
            received.len()
        )));
    }
    Ok(())
}

/// Streams `bytes_each` over `connections` parallel connections to the echo
/// service at `ip:port` and checks every byte comes back in order. Returns
/// the bytes moved one way and the seconds it took.
pub fn stream(
    ip: Ipv4Addr,
    port: u16,
    connections: u64,
    bytes_each: usize,
) -> io::Result<(usize, f64)> {
    // The patterns are made before the clock starts.
    let patterns: Vec<Vec<u8>> = (0..connections).map(|seed| pattern(seed, bytes_each)).collect();
    let started = Instant::now();
    let workers: Vec<_> = patterns
        .into_iter()
        .zip(0..)
        .map(|(data, seed)| std::thread::spawn(move || stream_one(ip, port, data, seed)))
        .collect();
    for worker in workers {
        worker.join().map_err(|_| io::Error::other("a stream thread panicked"))??;
    }
    Ok((bytes_each * connections as usize, started.elapsed().as_secs_f64()))
}

/// `count` 1-byte echoes on one connection: (median, p99) round trip in us.
pub fn round_trips(ip: Ipv4Addr, port: u16, count: usize) -> io::Result<(f64, f64)> {
    let mut stream = connect(ip, port)?;
    let mut samples = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for index in 0..count.max(1) {
        let started = Instant::now();
        stream.write_all(&[index as u8])?;
        stream.read_exact(&mut byte)?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    Ok((samples[samples.len() / 2], p99))
}
