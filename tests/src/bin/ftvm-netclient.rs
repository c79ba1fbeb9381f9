//! Network tools the tests and benchmarks run inside a lab namespace (with
//! `ip netns exec`), compiled so that a fresh machine needs no `ping` and the
//! host reference is not bound by an interpreter:
//!
//! ```text
//! ftvm-netclient ping IP COUNT INTERVAL_MS     `ping RECEIVED COUNT MEDIAN_US`; exit 1 if any was lost
//! ftvm-netclient serve IP PORT                 a TCP echo server (thread per connection)
//! ftvm-netclient stream IP PORT CONNECTIONS BYTES_EACH
//!                                              `ok BYTES SECONDS MB/s`; exit 1 on any mismatch
//! ftvm-netclient rtt IP PORT COUNT             `rtt MEDIAN_US P99_US` of 1-byte echoes
//! ftvm-netclient wait IP PORT SECONDS          exit 0 once the service answers, 1 if it never does
//! ftvm-netclient watch IP PORT SECONDS BYTES_PER_S
//!                                              a paced stream and requests for SECONDS (across a
//!                                              failover): a `stream ...` and a `requests ...`
//!                                              line of findings (see `ftvm_tests::failover`)
//! ```
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use ftvm_tests::{echo, failover};

fn arg<T: std::str::FromStr>(args: &[String], index: usize, what: &str) -> T {
    args.get(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("argument {index}: expected {what}; see the module docs"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ip: Ipv4Addr = arg(&args, 1, "an IPv4 address");
    match args.first().map(String::as_str) {
        Some("ping") => {
            let count: u16 = arg(&args, 2, "a count");
            let interval = Duration::from_millis(arg(&args, 3, "an interval in ms"));
            let round_trips = ftvm_tests::icmp::ping(ip, count, interval, Duration::from_secs(2))
                .unwrap_or_else(|error| panic!("ICMP echo to {ip}: {error} (needs root)"));
            let mut micros: Vec<u128> = round_trips.iter().map(Duration::as_micros).collect();
            micros.sort_unstable();
            let median = micros.get(micros.len() / 2).copied().unwrap_or(0);
            println!("ping {} {count} {median}", micros.len());
            if micros.len() == usize::from(count) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("serve") => {
            echo::serve(ip, arg(&args, 2, "a port"));
            ExitCode::SUCCESS
        }
        Some("stream") => {
            let port = arg(&args, 2, "a port");
            match echo::stream(ip, port, arg(&args, 3, "connections"), arg(&args, 4, "bytes")) {
                Ok((bytes, seconds)) => {
                    println!("ok {bytes} {seconds:.3} {:.1}", bytes as f64 / seconds / 1e6);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    println!("failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("rtt") => match echo::round_trips(ip, arg(&args, 2, "a port"), arg(&args, 3, "count"))
        {
            Ok((median_us, p99_us)) => {
                println!("rtt {median_us:.1} {p99_us:.1}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("failed: {error}");
                ExitCode::FAILURE
            }
        },
        Some("wait") => {
            let limit = Duration::from_secs(arg(&args, 3, "seconds"));
            match failover::connect(ip, arg(&args, 2, "a port"), limit) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    println!("failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("watch") => {
            let port = arg(&args, 2, "a port");
            let duration = Duration::from_secs_f64(arg(&args, 3, "seconds"));
            let bytes_per_s = arg(&args, 4, "bytes per second");
            let connect = || failover::connect(ip, port, Duration::from_secs(30));
            let (streamed, requested) = match (connect(), connect()) {
                (Ok(streamed), Ok(requested)) => (streamed, requested),
                (Err(error), _) | (_, Err(error)) => {
                    println!("failed: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let requests = std::thread::spawn(move || failover::requests(requested, duration));
            println!("{}", failover::stream(streamed, bytes_per_s, duration).line());
            println!("{}", requests.join().expect("the request client").line());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: ftvm-netclient ping|serve|stream|rtt|wait|watch ... (see the source's docs)"
            );
            ExitCode::FAILURE
        }
    }
}
