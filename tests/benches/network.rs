//! `cargo bench -p ftvm-tests --bench network -- --runs N`: the guest's
//! network and disk, as medians of several runs, next to the same Python
//! client talking to a Python echo server on the host side of the same
//! namespace link. Needs root (namespaces), /dev/kvm and python3.
use ftvm_tests::bench::{measure_echo, ping, runs_arg, Table, CLIENT};
use ftvm_tests::netns::{Lab, BRIDGE_IP};
use ftvm_tests::{ftvm, summary_field, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const STREAM_BYTES: usize = 8 << 20;
const CONNECTIONS: usize = 4;

const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");

fn ping_median_ms(lab: &Lab, ip: &str) -> f64 {
    let (replies, median_us) = ping(lab, NETCLIENT, ip, 20, 50);
    assert!(replies > 0, "no ICMP echo replies from {ip}");
    median_us / 1000.0
}

fn main() {
    let runs = runs_arg(5);
    let mut table = Table::default();
    for run in 0..runs {
        eprintln!("network bench: run {}/{runs}", run + 1);
        let lab = Lab::new(1);
        let ip = Lab::guest_ip(0);
        let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
        let vm =
            lab.spawn_in_host(FTVM, &["run", "--net", &lab.net_flag(0), "--cmdline", &cmdline]);
        let (mb_per_s, rtt_us, rtt_p99_us) =
            measure_echo(&lab, &ip, CONNECTIONS, STREAM_BYTES / CONNECTIONS);
        table.add("guest echo: TCP throughput host -> guest -> host", "MB/s", mb_per_s);
        table.add("guest echo: 1-byte round trip, median", "us", rtt_us);
        table.add("guest echo: 1-byte round trip, p99", "us", rtt_p99_us);
        table.add("guest: ping round trip, median", "ms", ping_median_ms(&lab, &ip));
        let finished = vm.stop();
        let landmarks: f64 = summary_field(&finished.stderr, "landmarks")
            .and_then(|v| v.parse().ok())
            .expect("summary");
        // Each stream byte crosses the NIC twice; the rtt loop moves little.
        let moved_mb = (2 * STREAM_BYTES) as f64 / 1e6;
        table.add(
            "guest echo: VM exits per MB moved (whole session)",
            "exits/MB",
            landmarks / moved_mb,
        );

        let server = Reaped::spawn(lab.host_command("python3", &[CLIENT, "serve", BRIDGE_IP, "7"]));
        let (ref_mb_per_s, ref_rtt_us, ref_rtt_p99_us) =
            measure_echo(&lab, BRIDGE_IP, CONNECTIONS, STREAM_BYTES / CONNECTIONS);
        drop(server);
        table.add("reference host echo (same link): TCP throughput", "MB/s", ref_mb_per_s);
        table.add("reference host echo: 1-byte round trip, median", "us", ref_rtt_us);
        table.add("reference host echo: 1-byte round trip, p99", "us", ref_rtt_p99_us);
        table.add("reference host: ping round trip, median", "ms", ping_median_ms(&lab, BRIDGE_IP));
        table.add("guest / reference throughput", "x", mb_per_s / ref_mb_per_s);

        let dir = std::env::temp_dir().join(format!("ftvm-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = format!("{},size=64M,create", dir.join("disk.img").display());
        let disk = ftvm(FTVM, &["run", "--cmdline", "role=disk-selftest mib=32", "--disk", &image]);
        std::fs::remove_dir_all(&dir).unwrap();
        // "wrote B bytes in U us (W MB/s, flush included), read B bytes in U us (R MB/s)"
        let line = disk
            .stdout
            .lines()
            .find(|line| line.contains(" wrote "))
            .expect("disk-selftest timing line");
        let rates: Vec<f64> = line
            .split('(')
            .skip(1)
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(rates.len(), 2, "write and read rates in `{line}`");
        table.add("guest disk: sequential write, flush included", "MB/s", rates[0]);
        table.add("guest disk: sequential read", "MB/s", rates[1]);
    }
    table.print(runs);
}
