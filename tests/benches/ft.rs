//! `cargo bench -p ftvm-tests --bench ft -- --runs N [--baseline PATH]`: the
//! FT pair against a standalone VM, in one run: echo throughput and 1-byte round trip (and
//! their ratios), log bandwidth, backup lag, the backup's CPU time relative
//! to the primary's, and the failover time a client sees (SIGKILL of the
//! primary to the next echoed byte; at least 10 trials). Throughput and
//! round trips come from the compiled client (`ftvm-netclient`), so the
//! ratio is not bounded by an interpreter; whole-machine CPU per MB shows
//! what the pair costs the host. `--baseline PATH` adds the throughput rows
//! of another build of the `ftvm` binary (prefixed `before:`). Needs root,
//! /dev/kvm and python3.
use std::time::Duration;

use ftvm_tests::bench::{client, cpu_seconds, measure_echo, runs_arg, MachineCpu, Table};
use ftvm_tests::netns::Lab;
use ftvm_tests::{net_packets, summary_field, Reaped};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");
const NETCLIENT: &str = env!("CARGO_BIN_EXE_ftvm-netclient");
const CHANNEL: &str = "127.0.0.1:7000";
const CONNECTIONS: usize = 2;
const BYTES_EACH: usize = 16 << 20;

fn arbiter_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ftvm-bench-ft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ftvm_tests::init_pair(FTVM, &dir);
    dir
}

/// A pair of the `ftvm` binary at `exe` running the echo guest in `lab` (tap0: primary, tap1:
/// backup).
fn pair_of(exe: &str, lab: &Lab, arbiter: &std::path::Path) -> (Reaped, Reaped) {
    let arbiter = arbiter.to_str().unwrap();
    let backup = lab.spawn_in_host(
        exe,
        &["backup", "--listen", CHANNEL, "--arbiter", arbiter, "--net", &lab.net_flag_for(1, 0)],
    );
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let primary = lab.spawn_in_host(
        exe,
        &[
            "primary",
            "--stats",
            "--backup",
            CHANNEL,
            "--arbiter",
            arbiter,
            "--net",
            &lab.net_flag_for(0, 0),
            "--cmdline",
            &cmdline,
        ],
    );
    (primary, backup)
}

/// The numbers after `key` in the primary's `ftvm: pair:` line.
fn pair_field(stderr: &str, key: &str) -> Vec<f64> {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("ftvm: pair:"))
        .expect("the primary's --stats line");
    let rest = line.split(key).nth(1).unwrap_or("");
    let first = rest.split_whitespace().next().unwrap_or("");
    first.trim_start_matches('(').split('/').filter_map(|part| part.parse().ok()).collect()
}

/// Standalone and FT pair echo under the `ftvm` binary at `exe`, rows
/// prefixed with `label`.
fn throughput_rows(table: &mut Table, label: &str, exe: &str) {
    let ip = Lab::guest_ip(0);
    let lab = Lab::new(1);
    let cmdline = format!("role=echo port=7 {}", Lab::guest_net_args(0));
    let vm = lab.spawn_in_host(exe, &["run", "--net", &lab.net_flag(0), "--cmdline", &cmdline]);
    let machine = MachineCpu::start();
    let (solo_mb_per_s, solo_rtt_us, solo_rtt_p99_us) =
        measure_echo(&lab, NETCLIENT, &ip, CONNECTIONS, BYTES_EACH);
    let solo_machine_cpu = machine.busy().0;
    let solo = vm.stop();
    drop(lab);

    let lab = Lab::new(2);
    let arbiter = arbiter_dir("pair");
    let (primary, backup) = pair_of(exe, &lab, &arbiter);
    let machine = MachineCpu::start();
    let (ft_mb_per_s, ft_rtt_us, ft_rtt_p99_us) =
        measure_echo(&lab, NETCLIENT, &ip, CONNECTIONS, BYTES_EACH);
    let ft_machine_cpu = machine.busy().0;
    let (primary_cpu, backup_cpu) = (cpu_seconds(primary.pid()), cpu_seconds(backup.pid()));
    let primary_out = primary.stop();
    drop(backup);
    let _ = std::fs::remove_dir_all(&arbiter);

    table.add(&format!("{label}standalone echo: throughput"), "MB/s", solo_mb_per_s);
    table.add(&format!("{label}FT echo: throughput"), "MB/s", ft_mb_per_s);
    table.add(&format!("{label}FT / standalone throughput"), "x", ft_mb_per_s / solo_mb_per_s);
    table.add(&format!("{label}standalone echo: 1-byte round trip, median"), "us", solo_rtt_us);
    table.add(&format!("{label}FT echo: 1-byte round trip, median"), "us", ft_rtt_us);
    table.add(
        &format!("{label}FT / standalone round trip (output-rule cost)"),
        "x",
        ft_rtt_us / solo_rtt_us,
    );
    table.add(&format!("{label}standalone echo: 1-byte round trip, p99"), "us", solo_rtt_p99_us);
    table.add(&format!("{label}FT echo: 1-byte round trip, p99"), "us", ft_rtt_p99_us);
    let bandwidth = pair_field(&primary_out.stderr, "log bandwidth ");
    table.add(
        &format!("{label}log bandwidth, whole session"),
        "KB/s",
        bandwidth.first().copied().unwrap_or(0.0) / 1e3,
    );
    let lag_ms = pair_field(&primary_out.stderr, " ms ");
    table.add(&format!("{label}backup lag, median"), "ms", lag_ms[0]);
    table.add(&format!("{label}backup lag, p99"), "ms", lag_ms[1]);
    let lag_entries = pair_field(&primary_out.stderr, "lag entries ");
    table.add(&format!("{label}backup lag in entries, p99"), "entries", lag_entries[1]);
    table.add(&format!("{label}backup CPU time / primary CPU time"), "x", backup_cpu / primary_cpu);
    // Every stream byte crosses the NIC twice (in and echoed out).
    let moved_mb = (2 * CONNECTIONS * BYTES_EACH) as f64 / 1e6;
    table.add(&format!("{label}standalone: whole machine CPU per MB moved"), "ms/MB", {
        solo_machine_cpu * 1e3 / moved_mb
    });
    table.add(&format!("{label}FT: whole machine CPU per MB moved"), "ms/MB", {
        ft_machine_cpu * 1e3 / moved_mb
    });
    for (side, finished) in [("standalone", &solo), ("FT primary", &primary_out)] {
        let landmarks: f64 = summary_field(&finished.stderr, "landmarks")
            .and_then(|value| value.parse().ok())
            .expect("the VMM's summary");
        table.add(&format!("{label}{side}: VM exits per MB moved"), "exits/MB", {
            landmarks / moved_mb
        });
        let (sent, received) = net_packets(&finished.stderr).expect("the VMM's net-tx line");
        table.add(&format!("{label}{side}: packets through the VMM per MB"), "packets/MB", {
            (sent + received) as f64 / moved_mb
        });
    }
}

/// The longest pause a client echoing a byte every millisecond sees when the primary of a pair
/// of `exe` is SIGKILLed.
fn failover_gap_ms(exe: &str) -> f64 {
    let lab = Lab::new(2);
    let arbiter = arbiter_dir("failover");
    let (mut primary, backup) = pair_of(exe, &lab, &arbiter);
    let ip = Lab::guest_ip(0);
    client(&lab, &["wait", &ip, "7", "20"]);
    let probe = Reaped::spawn(
        lab.client_command("python3", &[ftvm_tests::bench::CLIENT, "probe", &ip, "7", "3"]),
    );
    std::thread::sleep(Duration::from_millis(1000));
    primary.kill();
    let probe = probe.finish();
    drop(backup);
    let _ = std::fs::remove_dir_all(&arbiter);
    assert_eq!(probe.status, Some(0), "the probe lost its connection: {probe:?}");
    probe.stdout.split_whitespace().nth(2).and_then(|v| v.parse().ok()).expect("probe ECHOES GAP")
}

fn main() {
    let runs = runs_arg(5);
    let failovers = runs.max(10);
    let mut table = Table::default();
    let baseline = std::env::args().skip_while(|arg| arg != "--baseline").nth(1);
    let mut builds = Vec::new();
    if let Some(path) = &baseline {
        builds.push(("before: ", path.as_str()));
    }
    builds.push(("", FTVM));
    for run in 0..runs {
        eprintln!("ft bench: run {}/{runs}", run + 1);
        for (label, exe) in &builds {
            throughput_rows(&mut table, label, exe);
        }
    }
    for trial in 0..failovers {
        for (label, exe) in &builds {
            eprintln!("ft bench: {label}failover {}/{failovers}", trial + 1);
            let gap_ms = failover_gap_ms(exe);
            table.add(
                &format!(
                    "{label}failover: SIGKILL of the primary -> next echoed byte (client's longest gap)"
                ),
                "ms",
                gap_ms,
            );
        }
    }
    table.print(runs);
}
