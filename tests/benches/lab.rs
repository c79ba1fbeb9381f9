//! `cargo bench -p ftvm-tests --bench lab -- --runs N [--mib M]`: the lab
//! and its host clients, in one run. Word count over an M MiB input (64 by
//! default) with 3, 2 and 1 workers (workers are crashed away between the
//! rows), next to a plain host word count of the same bytes; GFS put and get
//! throughput of the host client, next to the lab network's own throughput:
//! TCP echo between the lab's client namespace and an echo VM on a lab host,
//! across the same veths and bridges. Needs root, /dev/kvm and python3.
use std::process::Command;
use std::time::{Duration, Instant};

use ftvm_tests::bench::{runs_arg, Table, CLIENT};
use ftvm_tests::lab::{text, word_count, TestLab, SPREAD_LAB};
use ftvm_tests::Reaped;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

/// `--mib M` from the arguments, or 64.
fn mib_arg() -> usize {
    std::env::args()
        .skip_while(|arg| arg != "--mib")
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(64)
}

/// Seconds from a client's `... in S s ...` line.
fn seconds_in(output: &str) -> f64 {
    let words: Vec<&str> = output.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "in").expect("`in S s`");
    words[at + 1].parse().expect("seconds")
}

/// Echo MB/s between the lab's client namespace and an echo VM on h2 (outside the lab file: it is no GFS or MapReduce node).
fn lab_network_mb_per_s(lab: &TestLab) -> f64 {
    let status: serde_json::Value =
        serde_json::from_str(&lab.ok(&["lab", "status", "--json"])).unwrap();
    let prefix = status["namespaces_prefix"].as_str().unwrap().to_string();
    let host = format!("{prefix}-h2");
    let ip = |args: &[&str]| {
        let done = Command::new("ip").args(["-n", &host]).args(args).status().unwrap();
        assert!(done.success(), "ip -n {host} {args:?}");
    };
    ip(&["tuntap", "add", "dev", "echo0", "mode", "tap"]);
    ip(&["link", "set", "echo0", "master", "br0"]);
    ip(&["link", "set", "echo0", "up"]);
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &host, FTVM, "run", "--net", "tap=echo0,mac=52:54:00:77:00:c8"]);
    command.args(["--cmdline", "role=echo port=7 ip=10.77.0.200/24"]);
    let echo = Reaped::spawn(command);
    let client = |args: &[&str]| {
        let output = Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}-client"), "python3", CLIENT])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    client(&["wait", "10.77.0.200", "7", "20"]);
    let stream = client(&["stream", "10.77.0.200", "7", "2", &(8 << 20).to_string()]);
    drop(echo);
    stream.split_whitespace().nth(3).and_then(|value| value.parse().ok()).expect("ok BYTES S MB/s")
}

fn main() {
    let runs = runs_arg(1);
    let mib = mib_arg();
    let mut table = Table::default();
    let lab = TestLab::up(FTVM, Some(SPREAD_LAB));
    let input = text(64, mib << 20);
    let local = lab.file("input.txt");
    std::fs::write(&local, &input).unwrap();

    let started = Instant::now();
    let expected = word_count(&input);
    table.add(&format!("plain host word count, {mib} MiB"), "s", started.elapsed().as_secs_f64());

    let put = lab.ok(&["gfs", "put", local.to_str().unwrap(), "/bench/input.txt"]);
    table.add(
        "gfs put (host client, 2 replicas)",
        "MB/s",
        (mib << 20) as f64 / seconds_in(&put) / 1e6,
    );
    let get = lab.ok(&["gfs", "get", "/bench/input.txt", lab.file("back.txt").to_str().unwrap()]);
    table.add("gfs get (host client)", "MB/s", (mib << 20) as f64 / seconds_in(&get) / 1e6);
    table.add(
        "lab network: TCP echo, client ns <-> VM, 2 streams",
        "MB/s",
        lab_network_mb_per_s(&lab),
    );

    for (workers, next_to_crash) in [(3, Some("worker-c")), (2, Some("worker-b")), (1, None)] {
        for run in 0..runs {
            let out = lab.file(&format!("out-{workers}-{run}"));
            let job = lab.ok(&[
                "mr",
                "run",
                "wc",
                "/bench/input.txt",
                "--out",
                out.to_str().unwrap(),
                "--reducers",
                "3",
            ]);
            assert_eq!(ftvm_tests::lab::counts_in(&out), expected, "{job}");
            table.add(
                &format!("word count on the lab, {mib} MiB, {workers} workers"),
                "s",
                seconds_in(&job),
            );
        }
        if let Some(worker) = next_to_crash {
            // The next row has one worker less: crash it, and let the coordinator notice.
            lab.ok(&["lab", "kill", worker]);
            std::thread::sleep(Duration::from_secs(7));
        }
    }
    table.print(runs);
}
