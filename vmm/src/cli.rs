//! The `ftvm` command line (clap): run a guest, benchmark the platform. It
//! lives in the library so the end-to-end tests can build the same CLI as a
//! binary of their own. See `ftvm --help`.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::outcome::status;
use crate::runs::{self, RunError};
use crate::vm::{RunReport, VmConfig};
use crate::x86::EntryMode;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "Fault-tolerant virtual machines on Linux/KVM",
    long_about = "ftvm runs our own small guest kernel on KVM. Every non-deterministic \
        input the guest sees (time, timers, randomness) passes through one interface, \
        which record/replay and the primary/backup pair build on.",
    after_help = "Exit status of `ftvm run`: the guest's own power-off code (0-255; larger \
        codes become 255), or 120 VMM error (bad kernel, no KVM, ...), 121 guest CPU \
        exception, 122 guest triple fault, 123 KVM error, 124 guest stuck (waits with \
        nothing armed), 125 replay diverged from the log, 126 log unreadable, cut short or \
        unwritable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest and run it until it powers off.
    ///
    /// Examples:
    ///   ftvm run                                  # the built-in kernel's self-test
    ///   ftvm run --cmdline "role=compute rounds=50"
    ///   ftvm run --mem 256M --console guest.log
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Run a guest like `run`, and record every input it consumes to a log file.
    ///
    /// Example:
    ///   ftvm record --log stress.ftlog --cmdline "role=stress seed=7"
    #[command(verbatim_doc_comment)]
    Record {
        /// The log file to write (replaced if it exists).
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Replay a recorded run from its log alone; prints the same summary as
    /// `record`, and stops with a report if the guest diverges from the log.
    ///
    /// Example:
    ///   ftvm replay --log stress.ftlog --stats
    #[command(verbatim_doc_comment)]
    Replay {
        /// The log file written by `ftvm record`.
        #[arg(long)]
        log: PathBuf,
        /// Write the guest console here instead of stdout.
        #[arg(long)]
        console: Option<PathBuf>,
        /// Also print entries by kind, bytes, landmarks per second and the
        /// longest landmark-free stretch.
        #[arg(long)]
        stats: bool,
    },
    /// Measure the platform: boot time, exit costs, timer latency and guest
    /// compute speed next to the host's, as a table of medians.
    Bench {
        /// Fresh runs per measurement (the table shows medians).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Guest RAM: bytes, or with a K/M/G suffix (8M .. 3G).
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// The guest command line: `role=NAME key=value ...`. Roles of the built-in
    /// kernel: selftest, compute, hostile, fault, panic, bench.
    #[arg(long, default_value = "role=selftest")]
    cmdline: String,
    /// A guest kernel ELF to boot instead of the built-in one.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Write the guest console here instead of stdout.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Privilege level at entry: cpl3 (direct, default) or cpl0 (the guest drops
    /// to CPL3 with iretq).
    #[arg(long, value_enum, default_value_t = EntryMode::Cpl3)]
    entry: EntryMode,
}

/// Parses `128M`, `1G`, `65536`, `64K` into bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((index, 'K' | 'k')) => (&text[..index], 10),
        Some((index, 'M' | 'm')) => (&text[..index], 20),
        Some((index, 'G' | 'g')) => (&text[..index], 30),
        _ => (text, 0),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size: use bytes or a number with K, M or G"))?;
    number.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses the process arguments, runs the command, returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Record { log, run: args } => record(log, args),
        Command::Replay { log, console, stats } => replay(log, console, stats),
        Command::Bench { runs } => crate::bench::run(runs.max(1)).map(|table| {
            print!("{table}");
            0
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("ftvm: error: {error:#}");
            ExitCode::from(status::VMM_ERROR)
        }
    }
}

fn console_sink(path: Option<&PathBuf>) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(path) => Box::new(BufWriter::new(
            File::create(path)
                .with_context(|| format!("cannot create console file {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    })
}

fn vm_config(args: &RunArgs) -> anyhow::Result<VmConfig> {
    let kernel = match &args.kernel {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the kernel image {}", path.display()))?,
        None => crate::kernel::KERNEL_ELF.to_vec(),
    };
    Ok(VmConfig {
        mem_bytes: args.mem,
        kernel,
        cmdline: args.cmdline.clone(),
        entry_mode: args.entry,
    })
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let report = runs::live(&vm_config(&args)?, console_sink(args.console.as_ref())?)?;
    print_summary(&report);
    Ok(report.outcome.exit_status())
}

fn record(log: PathBuf, args: RunArgs) -> anyhow::Result<u8> {
    let report = runs::record(&vm_config(&args)?, console_sink(args.console.as_ref())?, &log)?;
    print_summary(&report);
    eprintln!(
        "ftvm: recorded {} entries ({} bytes) to {}",
        report.log_stats.entries(),
        report.log_stats.bytes(),
        log.display()
    );
    Ok(report.outcome.exit_status())
}

fn replay(log: PathBuf, console: Option<PathBuf>, stats: bool) -> anyhow::Result<u8> {
    let report = match runs::replay(&log, console_sink(console.as_ref())?) {
        Ok(report) => report,
        Err(error @ (RunError::LogFile(_) | RunError::Log(_))) => {
            return Ok(log_error(&log, &error))
        }
        Err(error) => return Err(error.into()),
    };
    print_summary(&report);
    if stats {
        print_stats(&report);
    }
    Ok(report.outcome.exit_status())
}

/// Reports a log that cannot be replayed at all; returns the exit status.
fn log_error(log: &std::path::Path, error: &dyn std::fmt::Display) -> u8 {
    eprintln!("ftvm: cannot replay {}: {error}", log.display());
    status::LOG_ERROR
}

fn print_summary(report: &RunReport) {
    eprintln!("ftvm: {}", report.outcome);
    if report.misbehaviour.total() > 0 {
        eprint!(
            "ftvm: guest misbehaviour ({} accesses refused):\n{}",
            report.misbehaviour.total(),
            report.misbehaviour
        );
    }
    eprintln!(
        "ftvm: exit {} landmarks {} console {:016x} ({} bytes) memory {:016x} vcpu {:016x}",
        report.outcome.exit_status(),
        report.landmarks,
        report.console_hash,
        report.console_bytes,
        report.memory_hash,
        report.regs_hash
    );
}

fn print_stats(report: &RunReport) {
    let seconds = report.wall_ns as f64 / 1e9;
    eprintln!("ftvm: log entries by kind:");
    for (kind, (count, bytes)) in &report.log_stats.by_kind {
        eprintln!("  {count:>10} {kind:<18} {bytes:>12} bytes");
    }
    eprintln!(
        "  {:>10} {:<18} {:>12} bytes",
        report.log_stats.entries(),
        "in all",
        report.log_stats.bytes()
    );
    eprintln!(
        "ftvm: {:.3} s, {:.0} landmarks/s, {:.0} entries/s, {:.0} log bytes/s, longest landmark-free stretch {:.3} ms",
        seconds,
        report.landmarks as f64 / seconds,
        report.log_stats.entries() as f64 / seconds,
        report.log_stats.bytes() as f64 / seconds,
        report.longest_stretch_ns as f64 / 1e6
    );
}
