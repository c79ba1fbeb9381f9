//! `ftvm bench`: the platform's costs, as medians of several fresh runs,
//! printed as a table. Guest-side figures are timed by the guest with the
//! clock device (role=bench); host-side ones with [`HostClock`], the inputs
//! module's clock, so nothing here reads the host clock on its own.
use std::fmt::Write as _;

use anyhow::{bail, Context};

use crate::devices::console::SharedBuffer;
use crate::devices::DeviceSet;
use crate::inputs::live::{Backends, HostClock, LiveInputs};
use crate::kernel::KERNEL_ELF;
use crate::outcome::RunOutcome;
use crate::outputs::LiveOutputs;
use crate::runs;
use crate::runs::Attachments;
use crate::vm::{Vm, VmConfig, DEFAULT_MEM_BYTES};
use crate::x86::EntryMode;

/// One row of the table: a name, a unit, and a sample per run.
struct Row {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn config(cmdline: &str, entry_mode: EntryMode) -> VmConfig {
    VmConfig {
        mem_bytes: DEFAULT_MEM_BYTES,
        kernel: KERNEL_ELF.to_vec(),
        cmdline: cmdline.to_string(),
        entry_mode,
    }
}

/// Boots `cmdline`, runs it to power-off; returns the console text and the
/// host ns from `Vm::new` to the first exit and to the end.
fn boot(cmdline: &str, entry_mode: EntryMode) -> anyhow::Result<(String, u64, u64)> {
    let console = SharedBuffer::default();
    let clock = HostClock::start();
    let mut vm = Vm::new(
        &config(cmdline, entry_mode),
        DeviceSet::default(),
        Box::new(LiveInputs::new(Backends::default())),
        Box::new(LiveOutputs::new(Box::new(console.clone()), None, None)),
    )?;
    let mut first_exit_ns = None;
    let outcome = loop {
        let done = vm.step()?;
        first_exit_ns.get_or_insert_with(|| clock.elapsed_ns());
        if let Some(outcome) = done {
            break outcome;
        }
    };
    let total_ns = clock.elapsed_ns();
    if outcome != (RunOutcome::PowerOff { code: 0 }) {
        bail!("`{cmdline}` ended with: {outcome}\n{}", console.text());
    }
    Ok((console.text(), first_exit_ns.unwrap_or(total_ns), total_ns))
}

/// Runs `role=bench op=OP n=N` and returns the guest-measured ns per operation.
fn guest_ns_per_op(op: &str, count: u64) -> anyhow::Result<f64> {
    let (text, _, _) = boot(&format!("role=bench op={op} n={count}"), EntryMode::Cpl3)?;
    let line = text
        .lines()
        .find(|line| line.starts_with("bench op="))
        .with_context(|| format!("the guest printed no result for op={op}:\n{text}"))?;
    let ns: f64 = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("ns="))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("unreadable bench line `{line}`"))?;
    Ok(ns / count as f64)
}

/// Adds a sample to the row `name`, creating the row on first use.
fn add(rows: &mut Vec<Row>, name: &str, unit: &'static str, sample: f64) {
    match rows.iter_mut().find(|row| row.name == name) {
        Some(row) => row.samples.push(sample),
        None => rows.push(Row { name: name.to_string(), unit, samples: vec![sample] }),
    }
}

/// The same work-bounded stress guest run live, recorded and replayed; the
/// replay must reproduce the recording exactly.
fn replay_samples(rows: &mut Vec<Row>, log: &std::path::Path) -> anyhow::Result<()> {
    const CMDLINE: &str = "role=stress seed=1 ops=1500";
    const HASHES: u64 = 1_000_000;
    let config = config(CMDLINE, EntryMode::Cpl3);
    let live = runs::live(&config, &Attachments::default(), Box::new(SharedBuffer::default()))?;
    let recorded =
        runs::record(&config, &Attachments::default(), Box::new(SharedBuffer::default()), log)?;
    let replayed = runs::replay(log, Box::new(SharedBuffer::default()))?;
    for report in [&live, &recorded, &replayed] {
        if report.outcome != (RunOutcome::PowerOff { code: 0 }) {
            bail!("`{CMDLINE}` ended with: {}", report.outcome);
        }
    }
    if (recorded.memory_hash, recorded.regs_hash) != (replayed.memory_hash, replayed.regs_hash) {
        bail!("the replay did not reproduce the recording");
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let per_second = |count: u64, ns: u64| count as f64 / (ns as f64 / 1e9);
    add(rows, "stress ops=1500: run (live) wall time", "ms", ms(live.wall_ns));
    add(rows, "stress ops=1500: record wall time", "ms", ms(recorded.wall_ns));
    add(rows, "stress ops=1500: replay wall time", "ms", ms(replayed.wall_ns));
    add(rows, "record / run", "x", recorded.wall_ns as f64 / live.wall_ns as f64);
    add(rows, "replay / run", "x", replayed.wall_ns as f64 / live.wall_ns as f64);
    add(
        rows,
        "record: log entries per second",
        "entries/s",
        per_second(recorded.log_stats.entries(), recorded.wall_ns),
    );
    add(
        rows,
        "record: log bytes per second",
        "KB/s",
        per_second(recorded.log_stats.bytes(), recorded.wall_ns) / 1e3,
    );
    add(
        rows,
        "replay: log entries per second",
        "entries/s",
        per_second(replayed.log_stats.entries(), replayed.wall_ns),
    );
    add(rows, "landmarks per second (run)", "1/s", per_second(live.landmarks, live.wall_ns));
    add(
        rows,
        "landmarks per second (replay)",
        "1/s",
        per_second(replayed.landmarks, replayed.wall_ns),
    );
    add(rows, "longest landmark-free stretch (replay)", "ms", ms(replayed.longest_stretch_ns));

    let regs = kvm_bindings::kvm_regs { rip: 0x20_0000, rax: 7, ..Default::default() };
    let clock = HostClock::start();
    let mut folded = 0u64;
    for round in 0..HASHES {
        let regs = kvm_bindings::kvm_regs { rcx: round, ..regs };
        folded ^= crate::vcpu::regs_hash(std::hint::black_box(&regs));
    }
    std::hint::black_box(folded);
    add(rows, "register hash per log entry", "ns", clock.elapsed_ns() as f64 / HASHES as f64);
    Ok(())
}

/// Runs every measurement `runs` times and returns the tables.
pub fn run(runs: usize) -> anyhow::Result<String> {
    let platform = platform_table(runs)?;
    let log = std::env::temp_dir().join(format!("ftvm-bench-{}.ftlog", std::process::id()));
    let mut rows = Vec::new();
    let mut outcome = Ok(());
    for run in 0..runs {
        eprintln!("ftvm bench: record/replay run {}/{runs}", run + 1);
        outcome = replay_samples(&mut rows, &log);
        if outcome.is_err() {
            break;
        }
    }
    let _ = std::fs::remove_file(&log);
    outcome?;
    Ok(format!("{platform}\n{}", table(&rows, runs)?))
}

fn table(rows: &[Row], runs: usize) -> anyhow::Result<String> {
    let mut table = String::new();
    writeln!(table, "| measurement ({runs} runs) | median | unit | min | max |")?;
    writeln!(table, "|---|---:|---|---:|---:|")?;
    for row in rows {
        let min = row.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = row.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        writeln!(
            table,
            "| {} | {:.2} | {} | {:.2} | {:.2} |",
            row.name,
            median(&row.samples),
            row.unit,
            min,
            max
        )?;
    }
    Ok(table)
}

/// The platform's costs: boot, exits, timers, compute.
fn platform_table(runs: usize) -> anyhow::Result<String> {
    const YIELDS: u64 = 5_000;
    const WAITS: u64 = 2_000;
    const SLEEPS: u64 = 300;
    const HASH_MIB: u64 = 64;
    const KVM_RUNS: u64 = 20_000;
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |name: &str, unit: &'static str, sample: f64| match rows
        .iter_mut()
        .find(|row| row.name == name)
    {
        Some(row) => row.samples.push(sample),
        None => rows.push(Row { name: name.to_string(), unit, samples: vec![sample] }),
    };
    for run in 0..runs {
        eprintln!("ftvm bench: run {}/{runs}", run + 1);
        for (mode, label) in
            [(EntryMode::Cpl3, "cpl3 entry"), (EntryMode::Cpl0, "cpl0 entry + iretq")]
        {
            let (_, first_exit_ns, total_ns) = boot("role=bench op=noop n=0", mode)?;
            add(
                &format!("VM create -> first guest exit ({label})"),
                "ms",
                first_exit_ns as f64 / 1e6,
            );
            add(
                &format!("VM create -> power off, empty role ({label})"),
                "ms",
                total_ns as f64 / 1e6,
            );
        }
        let (_, _, selftest_ns) = boot("role=selftest", EntryMode::Cpl3)?;
        add("boot -> `selftest ok` -> power off", "ms", selftest_ns as f64 / 1e6);

        let mut vm = Vm::new(
            &config("role=bench op=noop", EntryMode::Cpl3),
            DeviceSet::default(),
            Box::new(LiveInputs::new(Backends::default())),
            Box::new(LiveOutputs::new(Box::new(SharedBuffer::default()), None, None)),
        )?;
        let clock = HostClock::start();
        for _ in 0..KVM_RUNS {
            vm.vcpu_mut().immediate_exit_round_trip()?;
        }
        add(
            "bare KVM_RUN, immediate_exit (floor)",
            "us",
            clock.elapsed_ns() as f64 / KVM_RUNS as f64 / 1e3,
        );
        add("yield (1 MMIO read exit)", "us", guest_ns_per_op("yield", YIELDS)? / 1e3);
        add(
            "wait returning at once (arm past deadline + wait: 2 exits)",
            "us",
            guest_ns_per_op("wait", WAITS)? / 1e3,
        );
        add(
            "timer round trip: sleep 100 us (arm + wait + clock)",
            "us",
            guest_ns_per_op("timer", SLEEPS)? / 1e3,
        );
        let guest_ns_per_mib = guest_ns_per_op("hash", HASH_MIB)?;
        add(
            "guest FNV-1a hash at CPL3 (yield per 64 KiB)",
            "MB/s",
            (1 << 20) as f64 / guest_ns_per_mib * 1e3,
        );

        let data = vec![0x5au8; 64 * 1024];
        let clock = HostClock::start();
        let mut digest = 0;
        for _ in 0..HASH_MIB * 16 {
            digest = ftvm_abi::fnv1a64(digest, std::hint::black_box(&data));
        }
        std::hint::black_box(digest);
        add(
            "host FNV-1a hash, same loop",
            "MB/s",
            (HASH_MIB << 20) as f64 / clock.elapsed_ns() as f64 * 1e3,
        );
    }
    table(&rows, runs)
}
