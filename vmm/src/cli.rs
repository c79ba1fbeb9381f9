//! The `ftvm` command line (clap): run a guest, benchmark the platform. It
//! lives in the library so the end-to-end tests can build the same CLI as a
//! binary of their own. See `ftvm --help`.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crate::inputs::live::LiveInputs;
use crate::outcome::status;
use crate::vm::{RunReport, Vm, VmConfig};
use crate::x86::EntryMode;

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
        nothing armed)."
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
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses the process arguments, runs the command, returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
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

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let kernel = match &args.kernel {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the kernel image {}", path.display()))?,
        None => crate::kernel::KERNEL_ELF.to_vec(),
    };
    let console: Box<dyn Write + Send> = match &args.console {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create console file {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let config = VmConfig { mem_bytes: args.mem, kernel, cmdline: args.cmdline, entry_mode: args.entry };
    let mut vm = Vm::new(&config, console, Box::new(LiveInputs::new()))?;
    let report = vm.run()?;
    print_summary(&report);
    Ok(report.outcome.exit_status())
}

fn print_summary(report: &RunReport) {
    eprintln!("ftvm: {}", report.outcome);
    if report.misbehaviour.total() > 0 {
        eprint!("ftvm: guest misbehaviour ({} accesses refused):\n{}", report.misbehaviour.total(), report.misbehaviour);
    }
    eprintln!(
        "ftvm: landmarks {} console {:016x} ({} bytes) memory {:016x} vcpu {:016x}",
        report.landmarks, report.console_hash, report.console_bytes, report.memory_hash, report.regs_hash
    );
}
