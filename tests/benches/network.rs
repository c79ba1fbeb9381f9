//! `cargo bench -p ftvm-tests --bench network -- --runs N [--baseline PATH]`:
//! the guest's network and disk, as medians of several runs, next to host
//! references on the same namespace link: a compiled echo server
//! (`ftvm-netclient serve`) and a Python one, each driven by the client of
//! its kind. For the guest echo it shows where the time goes: VM exits,
//! packets through the VMM and CPU time per MB moved, standalone and while
//! recording. `--baseline PATH` runs another build of the `ftvm` binary (its
//! guest is embedded) through the same rows in the same run, for a
//! before/after table. Needs root (namespaces), /dev/kvm and python3.
use ftvm_tests::bench::{
    client, cpu_seconds, netclient, ping, runs_arg, thread_cpu_seconds, ChildrenCpu, MachineCpu,
    Table, CLIENT,
};
use ftvm_tests::netns::{Lab, BRIDGE_IP};
use ftvm_tests::{ftvm, net_packets, summary_field, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");
const CONNECTIONS: usize = 4;
/// Per connection: the compiled client's stream, and the Python client's.
const COMPILED_BYTES_EACH: usize = 8 << 20;
const PYTHON_BYTES_EACH: usize = 8 << 20;
const RTT_COUNT: &str = "500";

fn ping_median_ms(lab: &Lab, ip: &str) -> f64 {
    let (replies, median_us) = ping(lab, NETCLIENT, ip, 20, 50);
    assert!(replies > 0, "no ICMP echo replies from {ip}");
    median_us / 1000.0
}

/// `ok BYTES SECONDS MB/s` -> MB/s.
fn stream_rate(line: &str) -> f64 {
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("ok BYTES SECONDS MB/s")
}

/// `rtt MEDIAN_US P99_US` -> (median, p99).
fn rtt_pair(line: &str) -> (f64, f64) {
    let mut fields = line.split_whitespace().skip(1).map(|v| v.parse::<f64>().expect("rtt"));
    (fields.next().expect("median"), fields.next().expect("p99"))
}

fn compiled_stream(lab: &Lab, ip: &str) -> String {
    let each = COMPILED_BYTES_EACH.to_string();
    netclient(lab, NETCLIENT, &["stream", ip, "7", &CONNECTIONS.to_string(), &each])
}

fn field(stderr: &str, key: &str) -> f64 {
    summary_field(stderr, key).and_then(|v| v.parse().ok()).expect("summary field")
}

/// Packets through the VMM, both ways.
fn packets(stderr: &str) -> f64 {
    let (sent, received) = net_packets(stderr).expect("the VMM's net-tx line");
    (sent + received) as f64
}

/// One echo guest under `exe` (`run`, or `record` to a log): the echo
/// streams, the round trip, and the costs per MB moved.
fn guest_rows(table: &mut Table, label: &str, exe: &str, record: bool) {
    let lab = Lab::new(1);
    let ip = Lab::guest_ip(0);
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let log = std::env::temp_dir().join(format!("ftvm-bench-net-{}.ftlog", std::process::id()));
    let log = log.to_str().unwrap().to_string();
    let net = lab.net_flag(0);
    let mut args = vec!["run", "--net", &net, "--cmdline", &cmdline];
    if record {
        args.splice(0..1, ["record", "--log", &log]);
    }
    let vm = lab.spawn_in_host(exe, &args);
    client(&lab, &["wait", &ip, "7", "20"]);
    let (process_before, vcpu_before) = (cpu_seconds(vm.pid()), thread_cpu_seconds(vm.pid()));
    let (children, machine) = (ChildrenCpu::start(), MachineCpu::start());
    let mb_per_s = stream_rate(&compiled_stream(&lab, &ip));
    let (client_cpu, (machine_cpu, machine_busy)) = (children.seconds(), machine.busy());
    let (process_cpu, vcpu_cpu) =
        (cpu_seconds(vm.pid()) - process_before, thread_cpu_seconds(vm.pid()) - vcpu_before);
    let stream_mb = (2 * CONNECTIONS * COMPILED_BYTES_EACH) as f64 / 1e6;
    let mut moved_mb = stream_mb;
    let mode = if record { "recording" } else { "standalone" };
    table.add(&format!("{label} {mode}: echo throughput (compiled client)"), "MB/s", mb_per_s);
    if !record {
        let python = client(
            &lab,
            &["stream", &ip, "7", &CONNECTIONS.to_string(), &PYTHON_BYTES_EACH.to_string()],
        );
        moved_mb += (2 * CONNECTIONS * PYTHON_BYTES_EACH) as f64 / 1e6;
        table.add(&format!("{label} standalone: echo throughput (Python client)"), "MB/s", {
            stream_rate(&python)
        });
        let (rtt_us, rtt_p99_us) =
            rtt_pair(&netclient(&lab, NETCLIENT, &["rtt", &ip, "7", RTT_COUNT]));
        table.add(&format!("{label} standalone: 1-byte round trip, median"), "us", rtt_us);
        table.add(&format!("{label} standalone: 1-byte round trip, p99"), "us", rtt_p99_us);
        table.add(&format!("{label} standalone: ping, median"), "ms", ping_median_ms(&lab, &ip));
    }
    table.add(&format!("{label} {mode}: VMM CPU per MB moved"), "ms/MB", {
        process_cpu * 1e3 / stream_mb
    });
    table.add(&format!("{label} {mode}: vCPU thread CPU per MB moved"), "ms/MB", {
        vcpu_cpu * 1e3 / stream_mb
    });
    table.add(&format!("{label} {mode}: client CPU per MB moved"), "ms/MB", {
        client_cpu * 1e3 / stream_mb
    });
    table.add(
        &format!("{label} {mode}: whole machine busy CPU per MB (shared machine)"),
        "ms/MB",
        machine_cpu * 1e3 / stream_mb,
    );
    table.add(&format!("{label} {mode}: machine busy during the stream"), "%", {
        machine_busy * 100.0
    });
    let finished = vm.stop();
    // Each stream byte crosses the NIC twice; the wait and rtt loops move little.
    table.add(&format!("{label} {mode}: VM exits per MB moved"), "exits/MB", {
        field(&finished.stderr, "landmarks") / moved_mb
    });
    table.add(&format!("{label} {mode}: packets through the VMM per MB"), "packets/MB", {
        packets(&finished.stderr) / moved_mb
    });
    if record {
        let log_bytes = std::fs::metadata(&log).map(|meta| meta.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&log);
        table.add(&format!("{label} recording: log bytes per MB moved"), "KB/MB", {
            log_bytes as f64 / 1e3 / moved_mb
        });
    }
}

fn host_rows(table: &mut Table) {
    let lab = Lab::new(1);
    let server = Reaped::spawn(lab.host_command(NETCLIENT, &["serve", BRIDGE_IP, "7"]));
    client(&lab, &["wait", BRIDGE_IP, "7", "20"]);
    let (children, machine) = (ChildrenCpu::start(), MachineCpu::start());
    let mb_per_s = stream_rate(&compiled_stream(&lab, BRIDGE_IP));
    let (client_cpu, (machine_cpu, machine_busy)) = (children.seconds(), machine.busy());
    let stream_mb = (2 * CONNECTIONS * COMPILED_BYTES_EACH) as f64 / 1e6;
    table.add("host compiled echo (same link): throughput (compiled client)", "MB/s", mb_per_s);
    table.add("host compiled echo: client CPU per MB moved", "ms/MB", {
        client_cpu * 1e3 / stream_mb
    });
    table.add("host compiled echo: whole machine busy CPU per MB (shared machine)", "ms/MB", {
        machine_cpu * 1e3 / stream_mb
    });
    table.add("host compiled echo: machine busy during the stream", "%", machine_busy * 100.0);
    let (rtt_us, _) = rtt_pair(&netclient(&lab, NETCLIENT, &["rtt", BRIDGE_IP, "7", RTT_COUNT]));
    table.add("host compiled echo: 1-byte round trip, median", "us", rtt_us);
    drop(server);

    let server = Reaped::spawn(lab.host_command("python3", &[CLIENT, "serve", BRIDGE_IP, "7"]));
    client(&lab, &["wait", BRIDGE_IP, "7", "20"]);
    let python = client(
        &lab,
        &["stream", BRIDGE_IP, "7", &CONNECTIONS.to_string(), &PYTHON_BYTES_EACH.to_string()],
    );
    table.add("host Python echo (same link): throughput (Python client)", "MB/s", {
        stream_rate(&python)
    });
    let (rtt_us, _) = rtt_pair(&client(&lab, &["rtt", BRIDGE_IP, "7", RTT_COUNT]));
    table.add("host Python echo: 1-byte round trip, median (Python client)", "us", rtt_us);
    drop(server);
    table.add("host: ping, median", "ms", ping_median_ms(&lab, BRIDGE_IP));
}

fn disk_rows(table: &mut Table) {
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

fn main() {
    let runs = runs_arg(5);
    let baseline = std::env::args().skip_while(|arg| arg != "--baseline").nth(1);
    let mut builds = Vec::new();
    if let Some(path) = &baseline {
        builds.push(("before: guest", path.as_str()));
    }
    builds.push(("guest", FTVM));
    let mut table = Table::default();
    for run in 0..runs {
        eprintln!("network bench: run {}/{runs}", run + 1);
        for (label, exe) in &builds {
            guest_rows(&mut table, label, exe, false);
            guest_rows(&mut table, label, exe, true);
        }
        host_rows(&mut table);
        disk_rows(&mut table);
    }
    for (label, _) in &builds {
        let compiled =
            table.median(&format!("{label} standalone: echo throughput (compiled client)"));
        let python = table.median(&format!("{label} standalone: echo throughput (Python client)"));
        let recording =
            table.median(&format!("{label} recording: echo throughput (compiled client)"));
        let host_compiled =
            table.median("host compiled echo (same link): throughput (compiled client)");
        let host_python = table.median("host Python echo (same link): throughput (Python client)");
        let ratios = [
            ("/ host compiled echo throughput (compiled clients)", compiled, host_compiled),
            ("/ host Python echo throughput (Python clients)", python, host_python),
            ("(compiled client) / host Python echo throughput", compiled, host_python),
            ("recording / standalone throughput", recording, compiled),
        ];
        for (name, numerator, denominator) in ratios {
            if let (Some(numerator), Some(denominator)) = (numerator, denominator) {
                table.add(&format!("{label} {name}, of medians"), "x", numerator / denominator);
            }
        }
    }
    table.print(runs);
}
