//! The arbiter's decision time on both backends, as a table of medians:
//!
//! ```sh
//! cargo bench -p storage --bench arbiter -- --runs 50
//! ```
//!
//! Rows per backend: a side that wins an undecided generation (what a failover waits for), a
//! side that finds it decided (the loser), two sides racing for one generation (until both have
//! their verdict), and reading the holder. The directory is on this machine's temporary
//! directory; etcd is a single member on loopback started by the benchmark (the `etcd` binary of
//! Debian's `etcd-server`), with its default fsync on every write, so the numbers are those of
//! the storage under it, not of a network.

// The tests' etcd helper; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/etcd_server.rs"]
mod etcd_server;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use etcd_server::EtcdServer;
use storage::arbiter::{ArbiterBackend, ArbiterLocation, Verdict};

/// Samples of each row, in ms.
struct Row {
    name: String,
    samples_ms: Vec<f64>,
}

fn percentile(samples: &[f64], fraction: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Measures one backend at `location` (which holds no pair yet) over `runs` generations.
fn measure(backend: &str, location: &str, runs: u64) -> Vec<Row> {
    let location: ArbiterLocation = location.parse().expect("a valid arbiter location");
    let arbiter: Arc<dyn ArbiterBackend> = Arc::from(location.open());
    arbiter.probe().expect("the arbiter is usable");
    arbiter.init_pair().expect("a new pair");
    let mut rows: Vec<Row> = ["wins an undecided generation", "finds it decided (loses)"]
        .into_iter()
        .chain(["two sides race (both verdicts)", "reads the holder"])
        .map(|what| Row { name: format!("{backend}: {what}"), samples_ms: Vec::new() })
        .collect();
    for generation in 1..=runs {
        let start = Instant::now();
        assert_eq!(arbiter.try_set(generation, "backup").unwrap(), Verdict::Won);
        rows[0].samples_ms.push(elapsed_ms(start));
        let start = Instant::now();
        assert!(matches!(arbiter.try_set(generation, "primary").unwrap(), Verdict::Lost { .. }));
        rows[1].samples_ms.push(elapsed_ms(start));
        // Two sides, each with its own client (as on two hosts), released together.
        let raced = runs + generation;
        let barrier = Arc::new(Barrier::new(2));
        let start = Instant::now();
        let sides: Vec<_> = ["primary", "backup"]
            .into_iter()
            .map(|side| {
                let (location, barrier) = (location.clone(), Arc::clone(&barrier));
                thread::spawn(move || {
                    let arbiter = location.open();
                    barrier.wait();
                    arbiter.try_set(raced, side).unwrap()
                })
            })
            .collect();
        let verdicts: Vec<Verdict> = sides.into_iter().map(|side| side.join().unwrap()).collect();
        rows[2].samples_ms.push(elapsed_ms(start));
        assert_eq!(verdicts.iter().filter(|verdict| **verdict == Verdict::Won).count(), 1);
        let start = Instant::now();
        assert!(arbiter.holder(generation).unwrap().is_some());
        rows[3].samples_ms.push(elapsed_ms(start));
    }
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: u64 = args
        .iter()
        .position(|arg| arg == "--runs")
        .and_then(|index| args.get(index + 1))
        .map(|runs| runs.parse().expect("--runs N"))
        .unwrap_or(50);
    assert!(runs >= 20, "--runs must be at least 20 for a median worth quoting");
    let dir = std::env::temp_dir().join(format!("ftvm-arbiter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = measure("directory", dir.to_str().unwrap(), runs);
    let _ = std::fs::remove_dir_all(&dir);
    let etcd = EtcdServer::start();
    rows.extend(measure("etcd", &etcd.url("/ftvm-bench"), runs));
    drop(etcd);
    println!("| arbiter decision ({runs} runs) | median ms | p90 ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        let samples = &row.samples_ms;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            row.name,
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.0),
            percentile(samples, 1.0)
        );
    }
}
