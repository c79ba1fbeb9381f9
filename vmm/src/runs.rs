//! The three ways to run a guest — live, recorded to a log, replayed from a
//! log — as functions the CLI and the benchmark share.
use std::io::Write;
use std::path::Path;

use logchannel::{Entry, LogFileReader, LogFileWriter, RunStart};
use thiserror::Error;

use crate::inputs::live::LiveInputs;
use crate::inputs::record::RecordingInputs;
use crate::inputs::replay::ReplayInputs;
use crate::inputs::InputError;
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
}

/// Runs `config` with live inputs.
pub fn live(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<RunReport, RunError> {
    Ok(Vm::new(config, console, Box::new(LiveInputs::new()))?.run()?)
}

/// Runs `config` with live inputs, recording every one of them to `log`.
pub fn record(
    config: &VmConfig,
    console: Box<dyn Write + Send>,
    log: &Path,
) -> Result<RunReport, RunError> {
    let start = RunStart {
        mem_bytes: config.mem_bytes,
        cmdline: config.cmdline.clone(),
        entry_level: config.entry_mode.into(),
        kernel: config.kernel.clone(),
    };
    let inputs = RecordingInputs::new(LogFileWriter::<Entry>::create(log)?, &start)?;
    Ok(Vm::new(config, console, Box::new(inputs))?.run()?)
}

/// Replays the run recorded in `log`, from the log alone.
pub fn replay(log: &Path, console: Box<dyn Write + Send>) -> Result<RunReport, RunError> {
    let mut inputs = ReplayInputs::new(LogFileReader::<Entry>::open(log)?);
    let start = inputs.read_start()?;
    let config = VmConfig {
        mem_bytes: start.mem_bytes,
        kernel: start.kernel,
        cmdline: start.cmdline,
        entry_mode: start.entry_level.into(),
    };
    Ok(Vm::new(&config, console, Box::new(inputs))?.run()?)
}
