//! The three ways to run a guest — live, recorded to a log, replayed from a
//! log — as functions the CLI and the benchmark share, and the host
//! attachments (TAP, disk image) behind the guest's NIC and disk.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use logchannel::{BackupLink, Entry, LogFileReader, LogFileWriter, PrimaryLink, RunStart};
use storage::{BlockStore, BlockStoreError};
use thiserror::Error;

use crate::devices::DeviceSet;
use crate::ft::backup::{backup_io, BackupStatus, LinkSource};
use crate::ft::primary::{HeldOutputs, LinkSink, PrimarySide};
use crate::ft::FtConfig;
use crate::inputs::live::{Backends, LiveInputs};
use crate::inputs::record::RecordingInputs;
use crate::inputs::replay::ReplayInputs;
use crate::inputs::InputError;
use crate::outputs::{LiveOutputs, ReplayOutputs};
use crate::signals;
use crate::tap::{Tap, TapError};
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// Why a run could not start (or a log could not be opened).
#[derive(Debug, Error)]
pub enum RunError {
    /// The VM could not be created or run.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The log file could not be created or opened.
    #[error("{0}")]
    LogFile(#[from] logchannel::LogFileError),
    /// The log could not be started or its first entry read.
    #[error("{0}")]
    Log(#[from] InputError),
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] BlockStoreError),
    /// The log channel could not be set up.
    #[error("log channel: {0}")]
    Channel(#[from] logchannel::ChannelError),
    /// The backup could not listen for its primary.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A NIC attached to a host TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetAttachment {
    /// The TAP device's name (opened, or created, in the current network namespace).
    pub tap: String,
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
}

/// A disk backed by an image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskAttachment {
    /// The image file.
    pub path: PathBuf,
    /// Its size: required with `create`, checked against an existing image otherwise.
    pub size_bytes: Option<u64>,
    /// Create the image if it is missing.
    pub create: bool,
}

/// What the host attaches to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    /// The NIC, if any.
    pub net: Option<NetAttachment>,
    /// The disk, if any.
    pub disk: Option<DiskAttachment>,
}

/// Opens the host side of `attachments`.
pub fn open(attachments: &Attachments) -> Result<(Backends, DeviceSet), RunError> {
    let tap = attachments.net.as_ref().map(|net| Tap::open(&net.tap)).transpose()?.map(Arc::new);
    let disk = attachments
        .disk
        .as_ref()
        .map(|disk| BlockStore::open(&disk.path, disk.size_bytes, disk.create))
        .transpose()?
        .map(Arc::new);
    let devices = DeviceSet {
        net_mac: attachments.net.as_ref().map(|net| net.mac),
        disk_bytes: disk.as_ref().map(|disk| disk.capacity_bytes()),
    };
    Ok((Backends { tap, disk, before_disk_read: None }, devices))
}

fn live_outputs(console: Box<dyn Write + Send>, backends: &Backends) -> Box<LiveOutputs> {
    Box::new(LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone()))
}

/// Runs `config` with live inputs.
pub fn live(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
) -> Result<RunReport, RunError> {
    let (backends, devices) = open(attachments)?;
    let outputs = live_outputs(console, &backends);
    Ok(Vm::new(config, devices, Box::new(LiveInputs::new(backends)), outputs)?.run()?)
}

/// Runs `config` with live inputs, recording every one of them to `log`.
pub fn record(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    log: &Path,
) -> Result<RunReport, RunError> {
    let (backends, devices) = open(attachments)?;
    let outputs = live_outputs(console, &backends);
    let inputs = RecordingInputs::new(
        LogFileWriter::<Entry>::create(log)?,
        &run_start(config, devices),
        backends,
    )?;
    Ok(Vm::new(config, devices, Box::new(inputs), outputs)?.run()?)
}

fn run_start(config: &VmConfig, devices: DeviceSet) -> RunStart {
    RunStart {
        mem_bytes: config.mem_bytes,
        cmdline: config.cmdline.clone(),
        entry_level: config.entry_mode.into(),
        kernel: config.kernel.clone(),
        net_mac: devices.net_mac,
        disk_bytes: devices.disk_bytes,
    }
}

fn config_of(start: RunStart) -> (VmConfig, DeviceSet) {
    let devices = DeviceSet { net_mac: start.net_mac, disk_bytes: start.disk_bytes };
    let config = VmConfig {
        mem_bytes: start.mem_bytes,
        kernel: start.kernel,
        cmdline: start.cmdline,
        entry_mode: start.entry_level.into(),
    };
    (config, devices)
}

/// Runs `config` as the primary of an FT pair whose backup listens at `backup_addr`.
pub fn primary(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    ft: &FtConfig,
    backup_addr: &str,
) -> Result<RunReport, RunError> {
    let (mut backends, devices) = open(attachments)?;
    eprintln!(
        "ftvm: role: primary, generation {}, connecting to the backup at {backup_addr}",
        ft.generation
    );
    signals::block_stats_signal();
    let (side, held, queue, releaser) = signals::spawning_helpers(|| {
        let link = PrimaryLink::connect(backup_addr, &ft.channel)?;
        let side = PrimarySide::new(link, ft.clone());
        let live = LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone());
        let (held, queue, releaser) = HeldOutputs::start(side.clone(), live);
        Ok::<_, RunError>((side, held, queue, releaser))
    })?;
    let stats_side = side.clone();
    signals::serve_stats_signal(move || eprintln!("ftvm: pair: {}", stats_side.report()));
    let barrier = queue.clone();
    backends.before_disk_read = Some(Arc::new(move || barrier.wait_disk_drained()));
    let inputs =
        RecordingInputs::new(LinkSink::new(side.clone()), &run_start(config, devices), backends)?;
    let result =
        Vm::new(config, devices, Box::new(inputs), Box::new(held)).and_then(|mut vm| vm.run());
    // Whatever the guest produced is released (or dropped by a halt) before the process ends.
    queue.close_and_drain();
    let _ = releaser.join();
    let mut report = result?;
    report.pair = Some(side.report());
    Ok(report)
}

/// Waits for the primary's connection; a stop signal ends the wait.
fn accept_primary(listener: &TcpListener, listen: &str) -> Result<std::net::TcpStream, RunError> {
    let io_error = |source| RunError::Listen { addr: listen.to_string(), source };
    listener.set_nonblocking(true).map_err(io_error)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(io_error)?;
                return Ok(stream);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if crate::signals::stop_requested() {
                    return Err(RunError::Log(InputError::Stopped));
                }
                // Until a connection is pending; a stop signal interrupts the wait (EINTR).
                let mut poll_fd =
                    libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd on the listener, which outlives the call.
                unsafe { libc::poll(&mut poll_fd, 1, -1) };
            }
            Err(error) => return Err(io_error(error)),
        }
    }
}

/// Runs as the backup of an FT pair: waits for the primary on `listen`,
/// replays its guest, and goes live if the primary dies and the arbiter agrees.
pub fn backup(
    listen: &str,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    ft: &FtConfig,
) -> Result<RunReport, RunError> {
    let listener = TcpListener::bind(listen)
        .map_err(|source| RunError::Listen { addr: listen.to_string(), source })?;
    eprintln!(
        "ftvm: role: backup, generation {}, waiting for the primary on {listen}",
        ft.generation
    );
    signals::block_stats_signal();
    let stream = accept_primary(&listener, listen)?;
    let link =
        Arc::new(signals::spawning_helpers(|| BackupLink::from_stream(stream, &ft.channel))?);
    let status = Arc::new(BackupStatus::default());
    let (stats_link, stats_status, generation) = (link.clone(), status.clone(), ft.generation);
    signals::serve_stats_signal(move || {
        eprintln!("ftvm: pair: {}", stats_status.describe(&stats_link, generation))
    });
    let mut replay = ReplayInputs::new(LinkSource::new(link, status.clone()));
    let (config, devices) = config_of(replay.read_start()?);
    eprintln!("ftvm: role: backup, replaying `{}`", config.cmdline);
    let (inputs, outputs) =
        backup_io(replay, status, ft.clone(), attachments.clone(), devices, console);
    Ok(Vm::new(&config, devices, Box::new(inputs), Box::new(outputs))?.run()?)
}

/// Replays the run recorded in `log`, from the log alone: no TAP, no disk
/// image; the guest's network and disk output is counted, not sent.
pub fn replay(log: &Path, console: Box<dyn Write + Send>) -> Result<RunReport, RunError> {
    let mut inputs = ReplayInputs::new(LogFileReader::<Entry>::open(log)?);
    let (config, devices) = config_of(inputs.read_start()?);
    let outputs = Box::new(ReplayOutputs::new(console));
    Ok(Vm::new(&config, devices, Box::new(inputs), outputs)?.run()?)
}
