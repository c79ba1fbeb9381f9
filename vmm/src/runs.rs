//! The three ways to run a guest — live, recorded to a log, replayed from a
//! log — as functions the CLI and the benchmark share, and the host
//! attachments (TAP, disk image) behind the guest's NIC and disk.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logchannel::{Entry, LogFileReader, LogFileWriter, RunStart};
use storage::{BlockStore, BlockStoreError};
use thiserror::Error;

use crate::devices::DeviceSet;
use crate::inputs::live::{Backends, LiveInputs};
use crate::inputs::record::RecordingInputs;
use crate::inputs::replay::ReplayInputs;
use crate::inputs::InputError;
use crate::outputs::{LiveOutputs, ReplayOutputs};
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
fn open(attachments: &Attachments) -> Result<(Backends, DeviceSet), RunError> {
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
    Ok((Backends { tap, disk }, devices))
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
    let start = RunStart {
        mem_bytes: config.mem_bytes,
        cmdline: config.cmdline.clone(),
        entry_level: config.entry_mode.into(),
        kernel: config.kernel.clone(),
        net_mac: devices.net_mac,
        disk_bytes: devices.disk_bytes,
    };
    let outputs = live_outputs(console, &backends);
    let inputs = RecordingInputs::new(LogFileWriter::<Entry>::create(log)?, &start, backends)?;
    Ok(Vm::new(config, devices, Box::new(inputs), outputs)?.run()?)
}

/// Replays the run recorded in `log`, from the log alone: no TAP, no disk
/// image; the guest's network and disk output is counted, not sent.
pub fn replay(log: &Path, console: Box<dyn Write + Send>) -> Result<RunReport, RunError> {
    let mut inputs = ReplayInputs::new(LogFileReader::<Entry>::open(log)?);
    let start = inputs.read_start()?;
    let config = VmConfig {
        mem_bytes: start.mem_bytes,
        kernel: start.kernel,
        cmdline: start.cmdline,
        entry_mode: start.entry_level.into(),
    };
    let devices = DeviceSet { net_mac: start.net_mac, disk_bytes: start.disk_bytes };
    let outputs = Box::new(ReplayOutputs::new(console));
    Ok(Vm::new(&config, devices, Box::new(inputs), outputs)?.run()?)
}
