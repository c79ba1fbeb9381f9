//! The command line shared by the seeded simulators (`gfs-sim` and layers on it such as
//! `mapreduce-sim`), VOPR style: one seed drives a run and is printed first; a sweep with no
//! `--seeds` starts at a random seed (printed first, so it can be run again); every failure
//! prints the command that reruns it with its trace. Also parallel seed sweeps and medians.

use std::fmt::Display;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The options every simulator takes (its own come through `extra` in [`Command::parse`]).
pub const SHARED_USAGE: &str = "[--seeds A..B | --count N | --seed N [--trace]] [--threads N] \
    [--stop-after N] [--digests] | --bench";

/// What a simulator's command line asks for.
pub struct Command {
    pub seeds: Range<u64>,
    /// The range starts at a random seed (no `--seeds` and no `--seed`).
    pub random_start: bool,
    /// One run (`--seed`), with its settings and, on failure or with `--trace`, its trace.
    pub single: bool,
    pub trace: bool,
    pub threads: usize,
    pub stop_after_failures: usize,
    /// Print every seed's digest (`digest SEED HEX`): two builds that simulate the same thing
    /// print the same lines (sorted, as threads finish seeds in any order).
    pub digests: bool,
    /// The simulator's own options as given (a rerun command repeats them).
    pub own_options: Vec<String>,
    /// Run the simulator's benchmark instead.
    pub bench: bool,
}

/// Seeds a sweep without `--seeds` runs.
const DEFAULT_COUNT: u64 = 1000;

impl Command {
    /// Parses the shared options from `args`; `extra(option, args)` takes a simulator's own
    /// option (and its value from `args`) and says whether it knew it.
    pub fn parse(
        args: impl Iterator<Item = String>,
        usage: &str,
        mut extra: impl FnMut(&str, &mut dyn Iterator<Item = String>) -> Result<bool, String>,
    ) -> Result<Command, String> {
        let mut command = Command {
            seeds: 0..0,
            random_start: true,
            single: false,
            trace: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_after_failures: usize::MAX,
            digests: false,
            own_options: Vec::new(),
            bench: false,
        };
        let mut count = DEFAULT_COUNT;
        let mut args = args;
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> Result<u64, String> {
                let text = args.next().ok_or_else(|| format!("{name} needs a value"))?;
                text.parse().map_err(|error| format!("bad {name} {text:?}: {error}"))
            };
            match arg.as_str() {
                "--seeds" => {
                    let text = args.next().ok_or("--seeds needs a value")?;
                    command.seeds = parse_seed_range(&text)?;
                    command.random_start = false;
                }
                "--count" => count = number("--count")?,
                "--seed" => {
                    let seed = number("--seed")?;
                    command.seeds = seed..seed + 1;
                    command.random_start = false;
                    command.single = true;
                }
                "--trace" => command.trace = true,
                "--bench" => command.bench = true,
                "--digests" => command.digests = true,
                "--threads" => command.threads = number("--threads")? as usize,
                "--stop-after" => command.stop_after_failures = number("--stop-after")? as usize,
                "--help" | "-h" => return Err(usage.into()),
                other => {
                    // Whatever the simulator's option takes is recorded with it.
                    let mut taken = Vec::new();
                    let mut recording = std::iter::from_fn(|| {
                        let next = args.next()?;
                        taken.push(next.clone());
                        Some(next)
                    });
                    if !extra(other, &mut recording)? {
                        return Err(format!("unknown argument {other:?} (try --help)"));
                    }
                    command.own_options.push(other.to_string());
                    command.own_options.append(&mut taken);
                }
            }
        }
        if command.random_start {
            let start = random_seed();
            command.seeds = start..start.saturating_add(count);
        }
        Ok(command)
    }
}

/// A seed from the operating system's randomness (std's hasher keys), below 2^48 so it is
/// short to type.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id()) >> 16
}

/// One finished run, as the shared command line reports it.
pub trait Report {
    /// What failed, with its details, or `None`.
    fn failure(&self) -> Option<String>;
    /// The trace lines (when the run was traced).
    fn trace(&self) -> &[String];
    /// A line of figures for a passing single run.
    fn summary(&self) -> String;
    /// A fingerprint of what the run simulated (events in order, final figures).
    fn simulated_digest(&self) -> u64;

    /// The run's digest: what it simulated and how it ended.
    fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same in every build and process.
        let mut hasher = std::hash::DefaultHasher::new();
        self.failure().hash(&mut hasher);
        crate::world::mix_digest(self.simulated_digest(), &[hasher.finish()])
    }
}

/// Runs what the parsed `command` asks for: one seed (`--seed`), a sweep, or `bench`; a
/// command line that did not parse exits 2 with its message. `settings(seed)` describes a
/// seed's settings; `run(seed, trace)` runs it.
pub fn run_command<R: Report>(
    name: &str,
    command: Result<Command, String>,
    bench: impl FnOnce() -> ExitCode,
    settings: impl Fn(u64) -> String + Sync,
    run: impl Fn(u64, bool) -> R + Sync,
) -> ExitCode {
    let command = match command {
        Ok(command) if command.bench => return bench(),
        Ok(command) => command,
        Err(message) => {
            eprintln!("{name}: {message}");
            return ExitCode::from(2);
        }
    };
    let rerun = |seed: u64| {
        let own: String = command.own_options.iter().map(|option| format!(" {option}")).collect();
        format!("  rerun: cargo run --release -p {name} -- --seed {seed} --trace{own}")
    };
    if command.single {
        let seed = command.seeds.start;
        println!("{name}: {}", settings(seed));
        let outcome = run(seed, true);
        let failure = outcome.failure();
        if command.trace || failure.is_some() {
            let trace = outcome.trace();
            let tail = trace.len().saturating_sub(if command.trace { usize::MAX } else { 400 });
            println!("trace ({} lines, last {}):", trace.len(), trace.len() - tail);
            for line in &trace[tail..] {
                println!("{line}");
            }
        }
        return match failure {
            Some(failure) => {
                println!("FAIL seed {seed}: {failure}");
                println!("{}", rerun(seed));
                ExitCode::FAILURE
            }
            None => {
                println!("ok: {}", outcome.summary());
                ExitCode::SUCCESS
            }
        };
    }
    let (start, end) = (command.seeds.start, command.seeds.end);
    if command.random_start {
        println!("{name}: random start seed {start}");
    }
    println!(
        "{name}: seeds {start}..{end} on {} threads; settings drawn per seed (e.g. {})",
        command.threads,
        settings(start)
    );
    // The seeds' digests summed (so the order in which threads finish them does not count).
    let combined_digest = AtomicU64::new(0);
    let result =
        sweep_seeds(command.seeds.clone(), command.threads, command.stop_after_failures, |seed| {
            let outcome = run(seed, false);
            if command.digests {
                let digest = outcome.digest();
                println!("digest {seed} {digest:016x}");
                let keyed = crate::world::mix_digest(seed, &[digest]);
                combined_digest.fetch_add(keyed, Ordering::Relaxed);
            }
            let failure = outcome.failure();
            if let Some(failure) = &failure {
                println!(
                    "FAIL seed {seed}: {failure}\n  settings: {}\n{}",
                    settings(seed),
                    rerun(seed)
                );
            }
            failure.is_none()
        });
    let failed = result.failing_seeds.len() as u64;
    println!(
        "{name}: {} seeds ({start}..{end}) in {:.2}s; {} passed, {failed} failed; failing seeds: {:?}",
        result.ran,
        result.elapsed_s,
        result.ran - failed,
        result.failing_seeds
    );
    if command.digests {
        let combined = combined_digest.load(Ordering::Relaxed);
        println!(
            "{name}: combined digest of {} seeds ({start}..{end}): {combined:016x}",
            result.ran
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The seeds of `pinned` (seed, digest) whose run by `run` no longer has the pinned digest,
/// each with the digest it has now (the simulators' tests pin a few).
pub fn changed_digests<R: Report>(
    pinned: &[(u64, u64)],
    run: impl Fn(u64) -> R,
) -> Vec<(u64, String)> {
    pinned
        .iter()
        .filter_map(|&(seed, digest)| {
            let now = run(seed).digest();
            (now != digest).then(|| (seed, format!("{now:#018x}")))
        })
        .collect()
}

/// Formats a failure's check, time and details for [`Report::failure`].
pub fn failure_text(check: &str, at_ms: u64, detail: &dyn Display) -> String {
    format!("{check} at {at_ms}ms\n  {detail}")
}

/// Parses `START..END`.
pub fn parse_seed_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) =
        text.split_once("..").ok_or_else(|| format!("--seeds wants START..END, got {text:?}"))?;
    let start = start.parse().map_err(|e| format!("bad seed range start {start:?}: {e}"))?;
    let end = end.parse().map_err(|e| format!("bad seed range end {end:?}: {e}"))?;
    Ok(start..end)
}

/// The median of `values` (sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Seeds between progress lines: often enough that a sweep stopped by a signal tells how far
/// it got (a minute or less of sweeping at one thread's pace).
pub const PROGRESS_EVERY: u64 = 2000;

/// The result of a sweep.
#[derive(Debug, Default)]
pub struct SweepResult {
    /// Seeds that ran.
    pub ran: u64,
    /// Seeds that failed, in order.
    pub failing_seeds: Vec<u64>,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

/// Runs `passes(seed)` for every seed on `threads` threads (the closure reports its own
/// failures), stops after `stop_after_failures` failures, and prints progress every
/// [`PROGRESS_EVERY`] seeds.
pub fn sweep_seeds(
    seeds: Range<u64>,
    threads: usize,
    stop_after_failures: usize,
    passes: impl Fn(u64) -> bool + Sync,
) -> SweepResult {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let done = AtomicU64::new(0);
    let failures: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                if failures.lock().expect("lock").len() >= stop_after_failures {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                // A panic is a failure of that seed, not the end of the sweep.
                let passed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| passes(seed)))
                        .unwrap_or_else(|_| {
                            println!("FAIL seed {seed}: panicked (message above)");
                            false
                        });
                if !passed {
                    let elapsed = started.elapsed().as_secs_f64();
                    println!("  (found after {elapsed:.2}s of sweeping)");
                    failures.lock().expect("lock").push(seed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished.is_multiple_of(PROGRESS_EVERY) {
                    eprintln!("  {finished} seeds done, {:.1}s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let mut failing_seeds = failures.into_inner().expect("lock");
    failing_seeds.sort_unstable();
    SweepResult {
        ran: done.load(Ordering::Relaxed),
        failing_seeds,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}
