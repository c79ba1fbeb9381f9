//! The `ftvm` command line (clap): run a guest, benchmark the platform. It
//! lives in the library so the end-to-end tests can build the same CLI as a
//! binary of their own. See `ftvm --help`.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::ft::FtConfig;
use crate::outcome::status;
use crate::runs::{self, Attachments, DiskAttachment, NetAttachment, RunError};
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
        unwritable, 127 this side of an FT pair lost the arbiter and halted, 119 this side \
        of an FT pair cannot take part (arbiter directory missing, read-only, full or not \
        writable; no pair identity; its generation already decided; the peer has another \
        key, pair, generation, protocol version or devices), 130 stopped by SIGINT/SIGTERM. \
        Of `ftvm lab`, `gfs`, `mr` and `demo`: 0 done, 1 failed (the message names the \
        problem and the fix), 2 bad usage."
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
    ///   ftvm run --cmdline "role=disk-selftest" --disk disk.img,size=64M,create
    ///   ftvm run --cmdline "role=echo port=7 ip=10.10.0.2/24 gw=10.10.0.1" --net tap=tap0
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
    /// Run a guest as the primary of a fault-tolerant pair: every input goes
    /// to the backup, output waits for the backup's acknowledgement, and if
    /// the backup dies the primary goes on alone once the arbiter agrees.
    ///
    /// Example (start the backup first):
    ///   ftvm primary --backup 10.0.0.2:7000 --arbiter /shared/ftvm --net tap=tap0 --cmdline "role=echo port=7 ip=10.10.0.2/24 gw=10.10.0.1"
    #[command(verbatim_doc_comment)]
    Primary {
        /// The backup's address (host:port).
        #[arg(long)]
        backup: String,
        /// At the end, also print the pair's statistics: role, generation,
        /// sent/acked sequence, log bytes and bandwidth, backup lag. They are
        /// printed at any time on SIGUSR1 (`kill -USR1 PID`).
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Wait for a primary, replay its guest, and take over (go live) if the
    /// primary dies and the arbiter agrees. The guest's configuration comes
    /// from the primary; --net/--disk/--console name this host's attachments.
    ///
    /// With --spare it waits instead to be added to a running guest after a
    /// failover: the side that runs it sends it the guest (`ftvm remote
    /// --api-socket PATH add-backup ADDR`, or its --restore-to).
    ///
    /// Examples:
    ///   ftvm backup --listen 0.0.0.0:7000 --arbiter /shared/ftvm --net tap=tap1
    ///   ftvm backup --listen 0.0.0.0:7000 --arbiter /shared/ftvm --net tap=tap1 \
    ///       --restore-to 10.0.0.9:7000   # once live, add the spare there by itself
    ///   ftvm backup --listen 10.0.0.9:7000 --arbiter /shared/ftvm --net tap=tap1 --spare
    #[command(verbatim_doc_comment)]
    Backup {
        /// Where to listen for the primary (host:port).
        #[arg(long)]
        listen: String,
        /// Once this backup has gone live, add the backup waiting at ADDR
        /// (`ftvm backup --listen ADDR`), retrying each second until one of
        /// these addresses takes it, in the order given. Repeatable.
        #[arg(long, value_name = "ADDR")]
        restore_to: Vec<String>,
        /// Wait to be added to the running guest (the pair's next generation)
        /// instead of for a primary that starts in the current one.
        #[arg(long)]
        spare: bool,
        #[command(flatten)]
        pair: PairArgs,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Create or advance a fault-tolerant pair's identity in its arbiter (a
    /// directory both hosts see, or an etcd cluster and key prefix): the pair
    /// id, its secret key and its current generation, which both sides read
    /// from there.
    ///
    /// Examples:
    ///   ftvm pair init /shared/ftvm    # once, before the pair's first start
    ///   ftvm pair show /shared/ftvm    # id, generation, who won it (if decided)
    ///   ftvm pair next /shared/ftvm    # after a failover, before starting the pair again
    ///   ftvm pair init etcd://10.0.0.5:2379,10.0.0.6:2379/ftvm/pair-a
    #[command(verbatim_doc_comment, subcommand)]
    Pair(PairCommand),
    /// Talk to a running VMM through its API socket (`--api-socket PATH` on
    /// run, record, primary and backup); prints the answer as JSON.
    ///
    /// Examples:
    ///   ftvm remote --api-socket /run/vm1.sock status            # role, generation, landmarks, lag, ...
    ///   ftvm remote --api-socket /run/vm1.sock stop              # an orderly stop, like SIGTERM
    ///   ftvm remote --api-socket /run/vm1.sock snapshot vm1.snap # a standalone guest, to restore later
    ///   ftvm remote --api-socket /run/vm1.sock add-backup 10.0.0.7:7000
    ///       # after a failover: the live side sends the guest to a backup waiting there
    ///       # (`ftvm backup --listen 10.0.0.7:7000 ...` on a spare host) and becomes its primary
    #[command(verbatim_doc_comment)]
    Remote {
        /// The VMM's API socket.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        /// What to ask.
        #[command(subcommand)]
        request: RemoteRequest,
    },
    /// Run a guest on from a snapshot taken with `ftvm remote ... snapshot`:
    /// its memory, registers and devices as they were, its clock going on from
    /// where it stood. Name the same NIC (MAC) and disk image it had.
    ///
    /// Example:
    ///   ftvm restore --snapshot vm1.snap --console vm1.log
    #[command(verbatim_doc_comment)]
    Restore {
        /// The snapshot file.
        #[arg(long)]
        snapshot: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Measure the platform: boot time, exit costs, timer latency and guest
    /// compute speed next to the host's, as a table of medians.
    Bench {
        /// Fresh runs per measurement (the table shows medians).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// A cluster of VMs on simulated hosts: up, status, kill, down.
    Lab(ftvm_tools::lab::LabArgs),
    /// Files in the lab's GFS: put, get, ls, rm, append, snapshot.
    Gfs(ftvm_tools::clients::gfs::GfsArgs),
    /// MapReduce jobs on the lab: run.
    Mr(ftvm_tools::clients::mr::MrArgs),
    /// The whole story in under two minutes: a lab with FT pairs, a file put
    /// into GFS, word count on it while the hosts of the coordinator's and
    /// the master's primaries crash, the output checked, the lab removed.
    ///
    /// Example:
    ///   cargo run --release --bin ftvm -- demo
    #[command(verbatim_doc_comment)]
    Demo(ftvm_tools::demo::DemoArgs),
}

/// What `ftvm remote` asks.
#[derive(Clone, Subcommand)]
enum RemoteRequest {
    /// The VMM's state: role, generation, landmarks, lag, log bytes, ...
    Status,
    /// Stop the guest in an orderly way.
    Stop,
    /// Write a snapshot of a standalone guest (`ftvm run`) to FILE; the guest
    /// pauses while it is written, then runs on.
    Snapshot {
        /// The snapshot file to write (replaced if it exists).
        file: PathBuf,
    },
    /// Restore redundancy after a failover: a backup that went live sends its running guest
    /// (memory while it runs, then a pause of milliseconds for the rest) to the backup waiting
    /// at ADDR, and both go on as a pair in the next generation. Prints the pause, the bytes
    /// sent and the pre-copy rounds.
    AddBackup {
        /// The log channel address the new backup listens on (`ftvm backup --listen ADDR`).
        addr: String,
    },
}

/// `ftvm pair ...`.
#[derive(Subcommand)]
enum PairCommand {
    /// Create a new pair in ARBITER (a directory on storage both hosts
    /// reach, or etcd://HOST:PORT[,HOST:PORT...]/PREFIX): a random pair id
    /// and key, generation 1. Refuses if ARBITER holds a pair.
    Init {
        /// The arbiter: a directory or etcd://HOST:PORT[,...]/PREFIX.
        #[arg(value_name = "ARBITER")]
        dir: storage::arbiter::ArbiterLocation,
    },
    /// Print the pair in ARBITER: id, current generation, and who won it if
    /// a failover decided it.
    Show {
        /// The arbiter: a directory or etcd://HOST:PORT[,...]/PREFIX.
        #[arg(value_name = "ARBITER")]
        dir: storage::arbiter::ArbiterLocation,
    },
    /// Move the pair in ARBITER to its next generation; only once the
    /// current one is decided (a failover happened), so a running pair is
    /// never pulled from under its feet.
    Next {
        /// The arbiter: a directory or etcd://HOST:PORT[,...]/PREFIX.
        #[arg(value_name = "ARBITER")]
        dir: storage::arbiter::ArbiterLocation,
    },
}

/// What runs in the guest.
#[derive(Args)]
struct RunArgs {
    /// Guest RAM: bytes, or with a K/M/G suffix (8M .. 3G).
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// The guest command line: `role=NAME key=value ...`. Roles of the built-in
    /// kernel: selftest, stress, compute, echo, disk-selftest, hostile, fault,
    /// panic, bench.
    #[arg(long, default_value = "role=selftest")]
    cmdline: String,
    /// A guest kernel ELF to boot instead of the built-in one.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Privilege level at entry: cpl3 (direct, default) or cpl0 (the guest drops
    /// to CPL3 with iretq).
    #[arg(long, value_enum, default_value_t = EntryMode::Cpl3)]
    entry: EntryMode,
    #[command(flatten)]
    host: HostArgs,
}

/// What this host attaches to the guest.
#[derive(Args)]
struct HostArgs {
    /// Write the guest console here instead of stdout.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Give the guest a virtio-net NIC on a host TAP device:
    /// `tap=NAME[,mac=52:54:00:12:34:56]`. The TAP is opened (or created) in
    /// ftvm's network namespace; the default MAC is 52:54:00:12:34:56.
    #[arg(long, value_parser = parse_net, value_name = "tap=NAME[,mac=MAC]")]
    net: Option<NetAttachment>,
    /// Give the guest a virtio-blk disk backed by an image file:
    /// `PATH[,size=SIZE][,create][,mode=own|shared]`. `create` makes a
    /// zero-filled image of `size` bytes (K/M/G suffixes) if it is missing; an
    /// existing image keeps its data. In an FT pair, `mode=shared` (the
    /// default) is one image both hosts reach, written only by the side that
    /// runs the guest; `mode=own` gives each side its own image (both must
    /// start the same, e.g. both created empty): the backup applies the
    /// guest's writes to its image as it replays, so writes need no
    /// acknowledgement and reads do not travel in the log. Both sides must
    /// give the same mode.
    #[arg(
        long,
        value_parser = parse_disk,
        value_name = "PATH[,size=SIZE][,create][,mode=own|shared]"
    )]
    disk: Option<DiskAttachment>,
    /// Answer API requests on this Unix socket (created mode 0600, removed at
    /// exit): `ftvm remote --api-socket PATH status` prints the VMM's state as
    /// JSON, `... stop` stops it in an orderly way.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
}

/// Settings of the fault-tolerant pair, the same on both sides.
#[derive(Args)]
struct PairArgs {
    /// Where the pair lives: its identity (id, key, current generation; see
    /// `ftvm pair init`) and the arbiter's test-and-set records. A directory
    /// on storage both hosts reach, or an etcd cluster and key prefix,
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX, for hosts that share nothing
    /// else. Both sides must name the same one.
    #[arg(long, value_name = "DIR|etcd://HOST:PORT[,...]/PREFIX")]
    arbiter: storage::arbiter::ArbiterLocation,
    /// Read the pair's key from this file instead of the arbiter's
    /// (DIR/pair.key or PREFIX/pair.key), to keep the secret off the shared
    /// storage.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Presume the other side dead after this long without a word from it.
    /// The primary releases output only while the backup acknowledged an
    /// entry sent within this time (minus a tenth), and a backup goes live no
    /// earlier than this after it last heard the primary: a failover costs a
    /// client this pause plus a few ms (at half of it the backup takes the
    /// guest's traffic, so the client's resent packets wait for the guest
    /// there; a primary that lost its backup lets the backup ask the arbiter
    /// first, a sixth of it). Shorter risks false failovers on a loaded host:
    /// with both cores saturated, 150 ms gave one in 10 minutes, 200 and 300
    /// none (see the ft benchmark's --false-failovers). Below 200 ms a
    /// client still waits for its first resend (Linux: after 200 ms).
    #[arg(long, alias = "failure-timeout", default_value_t = 300, value_name = "MS")]
    failure_timeout_ms: u64,
    /// Lag bound: the most log the backup may have left to replay before the
    /// primary's guest waits for it (the backup also reads no further ahead).
    /// A guard on memory; the time bound (--max-lag-ms) is what bounds go-live.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    max_lag_bytes: u64,
    /// Lag bound: how far behind the backup's replay may fall, in time,
    /// before the primary's guest waits for it. After a failure, going live
    /// takes at most this plus the failure timeout.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    max_lag_ms: u64,
    /// The most output (network, console, shared-disk writes) the primary
    /// holds for the backup's acknowledgement before its guest waits. The
    /// default carries a 10 Gbit/s link over the 200 ms lag bound.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    max_held_bytes: u64,
    /// Testing only: send the backup a wrong Nth clock reading.
    #[arg(long, hide = true, value_name = "N")]
    inject_divergence_at: Option<u64>,
}

impl PairArgs {
    fn ft_config(&self) -> FtConfig {
        let mut ft = FtConfig::new(self.arbiter.clone());
        ft.key_file = self.key.clone();
        ft.channel.failure_timeout_ms = self.failure_timeout_ms;
        ft.channel.heartbeat_interval_ms = (self.failure_timeout_ms / 10).clamp(1, 50);
        ft.max_lag_bytes = self.max_lag_bytes;
        // The backup reads no further ahead of its replay than the lag bound allows.
        ft.channel.max_received_bytes = self.max_lag_bytes.max(1 << 20);
        ft.max_lag_ms = self.max_lag_ms;
        ft.max_held_bytes = self.max_held_bytes;
        ft.inject_divergence_at = self.inject_divergence_at;
        ft
    }
}

/// Default MAC of the guest NIC (a locally administered QEMU-style address).
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bytes: Result<Vec<u8>, _> = parts.iter().map(|part| u8::from_str_radix(part, 16)).collect();
    match bytes {
        Ok(bytes) if bytes.len() == 6 && parts.iter().all(|part| part.len() == 2) => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bytes);
            if mac[0] & 1 == 1 {
                return Err(format!(
                    "MAC `{text}` is a multicast address; a NIC needs a unicast one"
                ));
            }
            Ok(mac)
        }
        _ => Err(format!("`{text}` is not a MAC address like 52:54:00:12:34:56")),
    }
}

/// Parses `tap=NAME[,mac=MAC]`.
fn parse_net(text: &str) -> Result<NetAttachment, String> {
    let mut tap = None;
    let mut mac = DEFAULT_MAC;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
            Some(("mac", value)) => mac = parse_mac(value)?,
            _ => return Err(format!("unknown NIC option `{part}`: expected tap=NAME[,mac=MAC]")),
        }
    }
    let tap = tap.ok_or("a NIC needs tap=NAME")?;
    Ok(NetAttachment { tap, mac })
}

/// Parses `PATH[,size=SIZE][,create][,mode=own|shared]`.
fn parse_disk(text: &str) -> Result<DiskAttachment, String> {
    let mut parts = text.split(',');
    let path = parts.next().filter(|path| !path.is_empty()).ok_or("a disk needs an image path")?;
    let mut disk =
        DiskAttachment { path: PathBuf::from(path), size_bytes: None, create: false, own: false };
    for part in parts {
        match part.split_once('=') {
            Some(("size", size)) => disk.size_bytes = Some(parse_size(size)?),
            Some(("mode", "own")) => disk.own = true,
            Some(("mode", "shared")) => disk.own = false,
            Some(("mode", other)) => {
                return Err(format!("unknown disk mode `{other}`: expected own or shared"))
            }
            None if part == "create" => disk.create = true,
            _ => {
                return Err(format!(
                    "unknown disk option `{part}`: expected size=SIZE, create or mode=own|shared"
                ))
            }
        }
    }
    if disk.create && disk.size_bytes.is_none() {
        return Err("`create` needs size=SIZE (e.g. size=64M)".into());
    }
    Ok(disk)
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
    crate::signals::install_stop_handlers();
    ftvm_tools::stop::set_check(crate::signals::stop_requested);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Record { log, run: args } => record(log, args),
        Command::Primary { backup, stats, pair, run: args } => primary(&backup, stats, &pair, args),
        Command::Backup { listen, restore_to, spare, pair, host } => {
            backup(&listen, &runs::BackupRoles { spare, restore_to }, &pair, &host)
        }
        Command::Replay { log, console, stats } => replay(log, console, stats),
        Command::Pair(command) => pair(command),
        Command::Remote { api_socket, request } => remote(&api_socket, request),
        Command::Restore { snapshot, host } => restore(&snapshot, &host),
        Command::Bench { runs } => crate::bench::run(runs.max(1)).map(|table| {
            print!("{table}");
            0
        }),
        Command::Lab(args) => ftvm_tools::run(|| ftvm_tools::lab::run(args)),
        Command::Gfs(args) => ftvm_tools::run(|| ftvm_tools::clients::gfs::run(args)),
        Command::Mr(args) => ftvm_tools::run(|| ftvm_tools::clients::mr::run(args)),
        Command::Demo(args) => ftvm_tools::run(|| ftvm_tools::demo::run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("ftvm: error: {error:#}");
            ExitCode::from(error_status(&error))
        }
    }
}

/// The exit status of a run that could not start or go on.
fn error_status(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<RunError>() {
        Some(RunError::PairSetup(_)) => status::PAIR_REFUSED,
        Some(RunError::Stopped) => status::STOPPED,
        _ => status::VMM_ERROR,
    }
}

fn pair(command: PairCommand) -> anyhow::Result<u8> {
    match command {
        PairCommand::Init { dir } => {
            let identity = dir.open().init_pair()?;
            let key = match &dir {
                storage::arbiter::ArbiterLocation::Dir(dir) => {
                    storage::pair::PairDir::new(dir).key_path().display().to_string()
                }
                storage::arbiter::ArbiterLocation::Etcd(url) => {
                    format!("etcd key {}/pair.key", url.prefix)
                }
            };
            println!("pair {} created in {dir}: generation 1, key in {key}", identity.id);
        }
        PairCommand::Show { dir } => {
            let arbiter = dir.open();
            let identity = arbiter.load_pair(None)?;
            let holder = arbiter.holder(identity.generation)?;
            let state = match holder {
                Some(holder) => format!("decided: won by {holder}"),
                None => "undecided (a pair may be running in it)".into(),
            };
            println!("pair {} generation {}: {state}", identity.id, identity.generation);
        }
        PairCommand::Next { dir } => {
            let identity = dir.open().next_pair()?;
            println!("pair {} now at generation {}", identity.id, identity.generation);
        }
    }
    Ok(0)
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

fn attachments(host: &HostArgs) -> Attachments {
    Attachments {
        net: host.net.clone(),
        disk: host.disk.clone(),
        api_socket: host.api_socket.clone(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let report = runs::live(
        &vm_config(&args)?,
        &attachments(&args.host),
        console_sink(args.host.console.as_ref())?,
    )?;
    print_summary(&report);
    Ok(report.outcome.exit_status())
}

fn record(log: PathBuf, args: RunArgs) -> anyhow::Result<u8> {
    let report = runs::record(
        &vm_config(&args)?,
        &attachments(&args.host),
        console_sink(args.host.console.as_ref())?,
        &log,
    )?;
    print_summary(&report);
    eprintln!(
        "ftvm: recorded {} entries ({} bytes) to {}",
        report.log_stats.entries(),
        report.log_stats.bytes(),
        log.display()
    );
    Ok(report.outcome.exit_status())
}

fn primary(backup_addr: &str, stats: bool, pair: &PairArgs, args: RunArgs) -> anyhow::Result<u8> {
    let report = runs::primary(
        &vm_config(&args)?,
        &attachments(&args.host),
        console_sink(args.host.console.as_ref())?,
        &pair.ft_config(),
        backup_addr,
    )?;
    print_summary(&report);
    if let (true, Some(pair)) = (stats, report.pair.as_ref()) {
        let seconds = report.wall_ns as f64 / 1e9;
        eprintln!(
            "ftvm: pair: {pair} log bandwidth {:.0} bytes/s landmarks/s {:.0}",
            pair.sent_bytes as f64 / seconds,
            report.landmarks as f64 / seconds
        );
    }
    Ok(report.outcome.exit_status())
}

fn restore(snapshot: &std::path::Path, host: &HostArgs) -> anyhow::Result<u8> {
    let report = runs::restore(snapshot, &attachments(host), console_sink(host.console.as_ref())?)?;
    print_summary(&report);
    Ok(report.outcome.exit_status())
}

fn backup(
    listen: &str,
    roles: &runs::BackupRoles,
    pair: &PairArgs,
    host: &HostArgs,
) -> anyhow::Result<u8> {
    let report = runs::backup(
        listen,
        roles,
        &attachments(host),
        console_sink(host.console.as_ref())?,
        &pair.ft_config(),
    )?;
    print_summary(&report);
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

fn remote(api_socket: &std::path::Path, request: RemoteRequest) -> anyhow::Result<u8> {
    let request = match request {
        RemoteRequest::Status => serde_json::json!({ "command": "status" }),
        RemoteRequest::Stop => serde_json::json!({ "command": "stop" }),
        RemoteRequest::Snapshot { file } => {
            // The VMM writes the file: give it a path that does not depend on this directory.
            let file = std::path::absolute(&file)
                .with_context(|| format!("cannot resolve {}", file.display()))?;
            serde_json::json!({ "command": "snapshot", "path": file })
        }
        RemoteRequest::AddBackup { addr } => {
            serde_json::json!({ "command": "add-backup", "addr": addr })
        }
    };
    let answer = crate::api::call(api_socket, &request)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(0)
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
    if report.net_tx.0 + report.net_rx_frames + report.disk_requests > 0 {
        eprintln!(
            "ftvm: net-tx {} frames {:016x} net-rx {} frames disk {} requests",
            report.net_tx.0, report.net_tx.1, report.net_rx_frames, report.disk_requests
        );
    }
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
