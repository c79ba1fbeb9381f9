//! Log files: what `ftvm record` writes and `ftvm replay` reads.
//!
//! A log file is a header, [`LOG_FILE_MAGIC`] then the format version as a u32 LE, followed by
//! frames (see [`crate::frame`]) whose sequence numbers start at [`FIRST_SEQ`]. The version lets
//! a later ftvm refuse, with a clear message, a log it would otherwise misread.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{FrameError, FrameReader, FrameWriter};

/// The first bytes of every ftvm log file.
pub const LOG_FILE_MAGIC: [u8; 8] = *b"FTVMLOG\0";

/// The log format this ftvm writes and the only one it reads. Bump it whenever the framing or
/// the encoding of any entry changes. 2: a received frame starts with its virtio-net header
/// (the offloads the TAP delivered it with).
pub const FORMAT_VERSION: u32 = 2;

/// Magic plus version.
pub const LOG_FILE_HEADER_LEN_BYTES: u64 = LOG_FILE_MAGIC.len() as u64 + 4;

/// The sequence number of a log's first entry. Zero is never used, so that "acknowledged up to
/// 0" can mean "nothing received yet".
pub const FIRST_SEQ: u64 = 1;

/// Why a log file could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not an ftvm log (it does not start with the ftvm log magic)", path.display())]
    NotAnFtvmLog { path: PathBuf },
    #[error(
        "{}: this log has format version {file_version}, {} than version {FORMAT_VERSION}, the \
         only one this ftvm reads; replay it with the ftvm that recorded it",
        path.display(),
        if *file_version > FORMAT_VERSION { "newer" } else { "older" }
    )]
    UnsupportedVersion { path: PathBuf, file_version: u32 },
}

/// Writes a log file: the header, then one frame per entry.
#[derive(Debug)]
pub struct LogFileWriter<T> {
    frames: FrameWriter<BufWriter<File>, T>,
}

impl<T: Serialize> LogFileWriter<T> {
    /// Creates (or truncates) the file at `path` and writes the header.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, LogFileError> {
        let path = path.as_ref();
        let io_error = |source| LogFileError::Io { path: path.to_owned(), source };
        let mut sink = BufWriter::new(File::create(path).map_err(io_error)?);
        sink.write_all(&LOG_FILE_MAGIC).map_err(io_error)?;
        sink.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io_error)?;
        Ok(LogFileWriter { frames: FrameWriter::new(sink, FIRST_SEQ, LOG_FILE_HEADER_LEN_BYTES) })
    }

    /// Appends one entry and returns its sequence number. Buffered: call [`Self::finish`] (or
    /// at least [`Self::flush`]) before relying on it being in the file.
    pub fn write_entry(&mut self, entry: &T) -> Result<u64, FrameError> {
        self.frames.write_entry(entry)
    }

    /// Hands buffered frames to the operating system.
    pub fn flush(&mut self) -> Result<(), FrameError> {
        self.frames.flush()
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.frames.next_seq()
    }

    /// The file's length once buffered frames are written.
    pub fn len_bytes(&self) -> u64 {
        self.frames.offset_bytes()
    }

    /// Flushes and syncs the file to its storage, then closes it. Dropping the writer instead
    /// also flushes, but silently ignores errors.
    pub fn finish(mut self) -> Result<(), FrameError> {
        self.frames.flush()?;
        let (expected_seq, offset_bytes) = (self.frames.next_seq(), self.frames.offset_bytes());
        self.frames.get_mut().get_ref().sync_all().map_err(|source| FrameError::Io {
            expected_seq,
            offset_bytes,
            source,
        })
    }
}

/// Reads a log file written by [`LogFileWriter`].
#[derive(Debug)]
pub struct LogFileReader<T> {
    frames: FrameReader<File, T>,
}

impl<T: DeserializeOwned> LogFileReader<T> {
    /// Opens the file at `path` and checks its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogFileError> {
        let path = path.as_ref();
        let mut file = File::open(path)
            .map_err(|source| LogFileError::Io { path: path.to_owned(), source })?;
        let mut header = [0u8; LOG_FILE_HEADER_LEN_BYTES as usize];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            // Too short to hold a header: whatever it is, it is not a log this ftvm wrote.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(LogFileError::NotAnFtvmLog { path: path.to_owned() })
            }
            Err(source) => return Err(LogFileError::Io { path: path.to_owned(), source }),
        }
        let (magic, version_field) = header.split_at(LOG_FILE_MAGIC.len());
        if magic != LOG_FILE_MAGIC {
            return Err(LogFileError::NotAnFtvmLog { path: path.to_owned() });
        }
        let file_version = u32::from_le_bytes(version_field.try_into().expect("4 bytes"));
        if file_version != FORMAT_VERSION {
            return Err(LogFileError::UnsupportedVersion { path: path.to_owned(), file_version });
        }
        Ok(LogFileReader { frames: FrameReader::new(file, FIRST_SEQ, LOG_FILE_HEADER_LEN_BYTES) })
    }

    /// The next entry with its sequence number; `Ok(None)` at the clean end of the log.
    /// Error offsets count from the start of the file.
    pub fn read_entry(&mut self) -> Result<Option<(u64, T)>, FrameError> {
        self.frames.read_entry()
    }

    /// The sequence number the next entry must carry.
    pub fn next_seq(&self) -> u64 {
        self.frames.next_seq()
    }

    /// The file offset of the next frame's first byte.
    pub fn offset_bytes(&self) -> u64 {
        self.frames.offset_bytes()
    }
}
