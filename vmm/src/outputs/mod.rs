//! Where the guest's output goes: console text, network frames, disk writes.
//!
//! The mirror of [`crate::inputs`]: devices hand every output to
//! [`Outputs`] and never know where it ends up. Live runs write to the real
//! console, TAP and disk image; replays discard network and disk output (a
//! replay must not talk to the world; the devices still count and hash what
//! the guest produced); an FT primary will hold output until the backup acks.

use std::io::Write;
use std::sync::{Arc, Mutex};

use storage::BlockStore;
use thiserror::Error;

use crate::tap::Tap;

/// An output that could not be carried out.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OutputError {
    /// The guest has a disk device but the run has no disk behind it.
    #[error("the guest wrote to a disk the VMM has no image for")]
    NoDisk,
    /// The disk image failed.
    #[error("{0}")]
    Disk(String),
}

/// The destination of every guest output.
pub trait Outputs {
    /// Console text.
    fn console(&mut self, bytes: &[u8]);
    /// A packet the guest transmitted: a virtio-net header (its offloads,
    /// e.g. a 64 KiB TCP segment to cut), then the Ethernet frame
    /// (`devices::virtio::net`). Networks drop frames; so may this.
    fn transmit(&mut self, frame: &[u8]);
    /// Data the guest wrote to its disk at byte `offset`.
    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError>;
    /// The guest asked for its writes to be made durable.
    fn disk_flush(&mut self) -> Result<(), OutputError>;
    /// The exit at `landmark` has been handled: every input and output of it is in. An FT
    /// primary ties the outputs of that exit to an entry sent now.
    fn exit_done(&mut self, _landmark: u64) {}
}

/// Console text goes to a writer; a failing writer (a closed pipe) is
/// reported once and then ignored, so the guest keeps running.
pub struct ConsoleSink {
    writer: Box<dyn Write + Send>,
    failed: bool,
}

impl ConsoleSink {
    /// Prints to `writer`.
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        ConsoleSink { writer, failed: false }
    }

    fn write(&mut self, bytes: &[u8]) {
        if !self.failed && self.writer.write_all(bytes).and_then(|()| self.writer.flush()).is_err()
        {
            self.failed = true;
            eprintln!("ftvm: console output could not be written; the guest keeps running");
        }
    }
}

/// A writer several owners share (the console of a backup that goes live, then becomes a
/// primary): each write takes it whole.
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedWriter {
    /// Shares `writer`.
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        SharedWriter(Arc::new(Mutex::new(writer)))
    }
}

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).flush()
    }
}

/// Outputs to the real world: console, TAP, disk image.
pub struct LiveOutputs {
    console: ConsoleSink,
    tap: Option<Arc<Tap>>,
    disk: Option<Arc<BlockStore>>,
    frames_dropped: u64,
    /// Print the time the first frame leaves (a backup gone live: the failover timeline).
    note_first_frame: bool,
}

impl LiveOutputs {
    /// Outputs to these backends.
    pub fn new(
        console: Box<dyn Write + Send>,
        tap: Option<Arc<Tap>>,
        disk: Option<Arc<BlockStore>>,
    ) -> Self {
        LiveOutputs {
            console: ConsoleSink::new(console),
            tap,
            disk,
            frames_dropped: 0,
            note_first_frame: false,
        }
    }

    /// Prints, once, when the guest's first frame leaves from now on.
    pub fn noting_first_frame(mut self) -> Self {
        self.note_first_frame = true;
        self
    }
}

impl From<storage::BlockStoreError> for OutputError {
    fn from(error: storage::BlockStoreError) -> Self {
        OutputError::Disk(error.to_string())
    }
}

impl Outputs for LiveOutputs {
    fn console(&mut self, bytes: &[u8]) {
        self.console.write(bytes);
    }

    fn transmit(&mut self, frame: &[u8]) {
        let sent = self.tap.as_ref().is_some_and(|tap| tap.write_packet(frame).is_ok());
        if !sent {
            self.frames_dropped += 1;
        }
        if std::mem::take(&mut self.note_first_frame) {
            let at_ns = crate::inputs::live::unix_time_ns();
            eprintln!("ftvm: live: first guest frame out at unix ns {at_ns}");
        }
    }

    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        self.disk
            .as_ref()
            .ok_or(OutputError::NoDisk)?
            .write_at(offset, data)
            .map_err(OutputError::from)
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        self.disk.as_ref().ok_or(OutputError::NoDisk)?.flush().map_err(OutputError::from)
    }
}

/// Outputs of a replay: console text is shown, network and disk output are
/// dropped (the replayed guest must not touch the world).
pub struct ReplayOutputs {
    console: ConsoleSink,
}

impl ReplayOutputs {
    /// Shows the console on `console`.
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        ReplayOutputs { console: ConsoleSink::new(console) }
    }
}

impl Outputs for ReplayOutputs {
    fn console(&mut self, bytes: &[u8]) {
        self.console.write(bytes);
    }

    fn transmit(&mut self, _frame: &[u8]) {}

    fn disk_write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), OutputError> {
        Ok(())
    }

    fn disk_flush(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}
