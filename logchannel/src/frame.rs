//! Framing of log entries on a byte stream (a log file or the primary -> backup TCP channel).
//!
//! A frame is `[u32 LE payload length][u32 LE CRC32C][payload]`. The payload is the postcard
//! encoding of `(seq: u64, entry: T)`. The CRC32C covers the length field as well as the payload,
//! so a corrupted length is caught like any other corrupted byte. Sequence numbers are contiguous:
//! a receiver knows which one comes next and refuses a duplicate or a gap, because replaying an
//! input twice or skipping one would make the backup diverge.
//!
//! Encoding and decoding are sans-IO ([`FrameEncoder`], [`FrameDecoder`]) so that the blocking
//! file path ([`FrameWriter`], [`FrameReader`]) and the non-blocking TCP channel share one
//! implementation of the format and its checks.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes before the payload: the payload length and the CRC32C, each a u32 LE.
pub const FRAME_HEADER_LEN_BYTES: usize = 8;

/// The largest payload a frame may carry. A larger length field is refused before anything is
/// allocated for it: a corrupted or hostile length must not make the receiver reserve gigabytes.
pub const MAX_PAYLOAD_LEN_BYTES: u32 = 16 << 20;

/// How much [`FrameReader`] asks its source for at a time.
const READ_CHUNK_LEN_BYTES: usize = 64 * 1024;

/// Why a frame could not be written or read.
///
/// Every variant names `expected_seq`, the sequence number the stream was at (the next one to be
/// written or read), and `offset_bytes`, the stream offset of the first byte of the frame
/// concerned, so that a report points at the exact place in a log file or channel.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("I/O error at frame seq {expected_seq}, offset {offset_bytes}: {source}")]
    Io {
        expected_seq: u64,
        offset_bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "truncated frame seq {expected_seq} at offset {offset_bytes}: the stream ends after \
         {available_len_bytes} of its {needed_len_bytes} bytes"
    )]
    Truncated {
        expected_seq: u64,
        offset_bytes: u64,
        available_len_bytes: u64,
        /// The header length when the header itself is cut, else the whole frame's length.
        needed_len_bytes: u64,
    },
    #[error(
        "checksum mismatch in frame seq {expected_seq} at offset {offset_bytes}: stored \
         {stored_crc:#010x}, computed {computed_crc:#010x}"
    )]
    ChecksumMismatch { expected_seq: u64, offset_bytes: u64, stored_crc: u32, computed_crc: u32 },
    #[error(
        "frame seq {expected_seq} at offset {offset_bytes} has a payload of {payload_len_bytes} \
         bytes, over the maximum of {MAX_PAYLOAD_LEN_BYTES}"
    )]
    PayloadTooLong { expected_seq: u64, offset_bytes: u64, payload_len_bytes: u64 },
    #[error("cannot decode frame seq {expected_seq} at offset {offset_bytes}: {source}")]
    Decode {
        expected_seq: u64,
        offset_bytes: u64,
        #[source]
        source: postcard::Error,
    },
    /// The checksum held, so the writer put these bytes there: it and the reader disagree on the
    /// entry type.
    #[error(
        "frame seq {expected_seq} at offset {offset_bytes} has {trailing_len_bytes} bytes after \
         its entry"
    )]
    TrailingBytes { expected_seq: u64, offset_bytes: u64, trailing_len_bytes: u64 },
    #[error("cannot encode entry seq {expected_seq} at offset {offset_bytes}: {source}")]
    Encode {
        expected_seq: u64,
        offset_bytes: u64,
        #[source]
        source: postcard::Error,
    },
    #[error(
        "duplicate frame at offset {offset_bytes}: seq {found_seq} again, expected \
         seq {expected_seq}"
    )]
    Duplicate { expected_seq: u64, offset_bytes: u64, found_seq: u64 },
    #[error(
        "gap or reordering at offset {offset_bytes}: seq {found_seq} where seq {expected_seq} \
         was expected"
    )]
    Gap { expected_seq: u64, offset_bytes: u64, found_seq: u64 },
}

impl FrameError {
    /// The sequence number the stream was at when the error happened.
    pub fn expected_seq(&self) -> u64 {
        match *self {
            FrameError::Io { expected_seq, .. }
            | FrameError::Truncated { expected_seq, .. }
            | FrameError::ChecksumMismatch { expected_seq, .. }
            | FrameError::PayloadTooLong { expected_seq, .. }
            | FrameError::Decode { expected_seq, .. }
            | FrameError::TrailingBytes { expected_seq, .. }
            | FrameError::Encode { expected_seq, .. }
            | FrameError::Duplicate { expected_seq, .. }
            | FrameError::Gap { expected_seq, .. } => expected_seq,
        }
    }

    /// The stream offset of the first byte of the frame concerned.
    pub fn offset_bytes(&self) -> u64 {
        match *self {
            FrameError::Io { offset_bytes, .. }
            | FrameError::Truncated { offset_bytes, .. }
            | FrameError::ChecksumMismatch { offset_bytes, .. }
            | FrameError::PayloadTooLong { offset_bytes, .. }
            | FrameError::Decode { offset_bytes, .. }
            | FrameError::TrailingBytes { offset_bytes, .. }
            | FrameError::Encode { offset_bytes, .. }
            | FrameError::Duplicate { offset_bytes, .. }
            | FrameError::Gap { offset_bytes, .. } => offset_bytes,
        }
    }
}

/// CRC32C (Castagnoli, the iSCSI polynomial) of the length field and the payload: detects every
/// single-bit error and every burst of up to 32 bits in the covered bytes.
fn frame_crc(len_field: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_field), payload)
}

/// The length of the frame that starts `bytes`, if its header is there (the length field is
/// not checked here).
fn frame_len_bytes(bytes: &[u8]) -> Option<usize> {
    let len_field = bytes.first_chunk::<4>()?;
    Some(FRAME_HEADER_LEN_BYTES + u32::from_le_bytes(*len_field) as usize)
}

/// Lets postcard append to a caller's buffer it borrows, a byte string with one copy (its own
/// `Extend` flavor takes the buffer by value, dropping the bytes already in it on an error,
/// and appends through an iterator).
struct Appender<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Sans-IO encoder: turns entries into frames with contiguous sequence numbers.
#[derive(Debug)]
pub struct FrameEncoder<T> {
    next_seq: u64,
    offset_bytes: u64,
    entry_type: PhantomData<fn(&T)>,
}

impl<T: Serialize> FrameEncoder<T> {
    /// An encoder whose first frame gets `first_seq` and starts at stream offset
    /// `start_offset_bytes` (used only to report positions).
    pub fn new(first_seq: u64, start_offset_bytes: u64) -> Self {
        FrameEncoder {
            next_seq: first_seq,
            offset_bytes: start_offset_bytes,
            entry_type: PhantomData,
        }
    }

    /// Appends one frame carrying `entry` to `out` and returns its sequence number. On error
    /// nothing is appended and the sequence number is not used up.
    pub fn encode(&mut self, entry: &T, out: &mut Vec<u8>) -> Result<u64, FrameError> {
        let seq = self.next_seq;
        let frame_start = out.len();
        // The payload is encoded in place after a header filled in below: no copy of it.
        out.extend_from_slice(&[0; FRAME_HEADER_LEN_BYTES]);
        let encoded =
            postcard::serialize_with_flavor(&(seq, entry), Appender(out)).map_err(|source| {
                FrameError::Encode { expected_seq: seq, offset_bytes: self.offset_bytes, source }
            });
        let payload_len_bytes = (out.len() - frame_start - FRAME_HEADER_LEN_BYTES) as u64;
        let checked = encoded.and_then(|()| match payload_len_bytes {
            len if len > u64::from(MAX_PAYLOAD_LEN_BYTES) => Err(FrameError::PayloadTooLong {
                expected_seq: seq,
                offset_bytes: self.offset_bytes,
                payload_len_bytes,
            }),
            _ => Ok(()),
        });
        if let Err(error) = checked {
            out.truncate(frame_start);
            return Err(error);
        }
        let (header, payload) = out[frame_start..].split_at_mut(FRAME_HEADER_LEN_BYTES);
        let len_field = (payload.len() as u32).to_le_bytes();
        header[..4].copy_from_slice(&len_field);
        header[4..].copy_from_slice(&frame_crc(len_field, payload).to_le_bytes());
        self.next_seq += 1;
        self.offset_bytes += (out.len() - frame_start) as u64;
        Ok(seq)
    }

    /// The sequence number the next frame will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The stream offset at which the next frame will start.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }
}

/// Sans-IO decoder: bytes are pushed in as they arrive, complete frames come out in order.
///
/// A bad frame is never returned as an entry, and the decoder does not move past it: asking
/// again returns the same error, since nothing after a corrupted frame can be trusted.
#[derive(Debug)]
pub struct FrameDecoder<T> {
    /// Received bytes; those before `consumed` belong to frames already returned.
    buffer: Vec<u8>,
    consumed: usize,
    next_seq: u64,
    offset_bytes: u64,
    entry_type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> FrameDecoder<T> {
    /// A decoder that expects `first_seq` first, in a frame at stream offset
    /// `start_offset_bytes`.
    pub fn new(first_seq: u64, start_offset_bytes: u64) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            consumed: 0,
            next_seq: first_seq,
            offset_bytes: start_offset_bytes,
            entry_type: PhantomData,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop returned frames before growing, so the buffer stays about one frame plus one
        // push long, and the memmove is amortised over at least as many bytes as it moves.
        if self.consumed > 0 && self.consumed >= self.buffer.len() / 2 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed first.
    pub fn next_frame(&mut self) -> Result<Option<(u64, T)>, FrameError> {
        let pending = &self.buffer[self.consumed..];
        let Some(decoded) = self.check_frame(pending)? else { return Ok(None) };
        let frame_len_bytes = frame_len_bytes(pending).expect("a whole frame was checked");
        self.consumed += frame_len_bytes;
        self.offset_bytes += frame_len_bytes as u64;
        self.next_seq += 1;
        Ok(Some(decoded))
    }

    /// Like [`Self::push`] then [`Self::next_frame`], without copying `bytes` into the buffer
    /// when they are exactly one whole frame and nothing is buffered (a frame the session
    /// layer cut out of the stream already): the backup's path for every entry of the log.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Option<(u64, T)>, FrameError> {
        if self.buffered_len_bytes() > 0 || frame_len_bytes(bytes) != Some(bytes.len()) {
            self.push(bytes);
            return self.next_frame();
        }
        match self.check_frame(bytes) {
            Ok(decoded) => {
                self.offset_bytes += bytes.len() as u64;
                self.next_seq += 1;
                Ok(decoded)
            }
            Err(error) => {
                // Kept, so that asking again reports the same error, as `next_frame` does.
                self.push(bytes);
                Err(error)
            }
        }
    }

    /// The entry of the frame at the start of `pending`, checked (length, CRC, sequence
    /// number, nothing after the entry); `Ok(None)` if the frame is not all there yet.
    fn check_frame(&self, pending: &[u8]) -> Result<Option<(u64, T)>, FrameError> {
        let Some(header) = pending.first_chunk::<FRAME_HEADER_LEN_BYTES>() else {
            return Ok(None);
        };
        let len_field = [header[0], header[1], header[2], header[3]];
        let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload_len_bytes = u32::from_le_bytes(len_field);
        // Checked before waiting for the payload: the length is not yet known to be intact.
        if payload_len_bytes > MAX_PAYLOAD_LEN_BYTES {
            return Err(FrameError::PayloadTooLong {
                expected_seq: self.next_seq,
                offset_bytes: self.offset_bytes,
                payload_len_bytes: u64::from(payload_len_bytes),
            });
        }
        let frame_len_bytes = FRAME_HEADER_LEN_BYTES + payload_len_bytes as usize;
        let Some(payload) = pending.get(FRAME_HEADER_LEN_BYTES..frame_len_bytes) else {
            return Ok(None);
        };
        let computed_crc = frame_crc(len_field, payload);
        if computed_crc != stored_crc {
            return Err(FrameError::ChecksumMismatch {
                expected_seq: self.next_seq,
                offset_bytes: self.offset_bytes,
                stored_crc,
                computed_crc,
            });
        }
        let decode_error = |source| FrameError::Decode {
            expected_seq: self.next_seq,
            offset_bytes: self.offset_bytes,
            source,
        };
        // The sequence number is decoded and checked before the entry, so that a duplicate or
        // a gap is reported as such even if the entry would not decode either.
        let (seq, entry_bytes) = postcard::take_from_bytes::<u64>(payload).map_err(decode_error)?;
        if seq != self.next_seq {
            return Err(self.error_out_of_order(seq));
        }
        let (entry, trailing) =
            postcard::take_from_bytes::<T>(entry_bytes).map_err(decode_error)?;
        if !trailing.is_empty() {
            return Err(FrameError::TrailingBytes {
                expected_seq: self.next_seq,
                offset_bytes: self.offset_bytes,
                trailing_len_bytes: trailing.len() as u64,
            });
        }
        Ok(Some((seq, entry)))
    }

    /// Call when the stream has ended: `Ok` if it ended exactly on a frame boundary, else the
    /// truncation error for the frame that was cut.
    pub fn finish(&self) -> Result<(), FrameError> {
        let available_len_bytes = self.buffered_len_bytes();
        if available_len_bytes == 0 {
            return Ok(());
        }
        let pending = &self.buffer[self.consumed..];
        let needed_len_bytes = match pending.first_chunk::<4>() {
            Some(len_field) if available_len_bytes >= FRAME_HEADER_LEN_BYTES => {
                FRAME_HEADER_LEN_BYTES as u64 + u64::from(u32::from_le_bytes(*len_field))
            }
            _ => FRAME_HEADER_LEN_BYTES as u64,
        };
        Err(FrameError::Truncated {
            expected_seq: self.next_seq,
            offset_bytes: self.offset_bytes,
            available_len_bytes: available_len_bytes as u64,
            needed_len_bytes,
        })
    }

    /// The sequence number the next frame must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The stream offset of the next frame's first byte.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Bytes pushed but not yet returned as part of a frame.
    pub fn buffered_len_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    fn error_out_of_order(&self, found_seq: u64) -> FrameError {
        let (expected_seq, offset_bytes) = (self.next_seq, self.offset_bytes);
        if found_seq < expected_seq {
            FrameError::Duplicate { expected_seq, offset_bytes, found_seq }
        } else {
            FrameError::Gap { expected_seq, offset_bytes, found_seq }
        }
    }
}

/// Writes entries as frames to a byte sink.
///
/// Each frame goes to the sink in one `write_all`; wrap an unbuffered sink (a file) in a
/// `BufWriter`. After an I/O error the sink may end inside a frame, so the writer refuses any
/// further entry rather than append frames a reader could never reach.
#[derive(Debug)]
pub struct FrameWriter<W: Write, T> {
    sink: W,
    encoder: FrameEncoder<T>,
    frame_buffer: Vec<u8>,
    broken: bool,
}

impl<W: Write, T: Serialize> FrameWriter<W, T> {
    /// A writer whose first entry gets `first_seq`, with the sink at stream offset
    /// `start_offset_bytes` (nonzero when the frames follow a file header).
    pub fn new(sink: W, first_seq: u64, start_offset_bytes: u64) -> Self {
        FrameWriter {
            sink,
            encoder: FrameEncoder::new(first_seq, start_offset_bytes),
            frame_buffer: Vec::new(),
            broken: false,
        }
    }

    /// Writes one entry and returns the sequence number it was given.
    pub fn write_entry(&mut self, entry: &T) -> Result<u64, FrameError> {
        if self.broken {
            return Err(self.io_error(io::Error::other(
                "an earlier write failed, so the stream may end inside a frame",
            )));
        }
        let frame_offset_bytes = self.encoder.offset_bytes();
        self.frame_buffer.clear();
        let seq = self.encoder.encode(entry, &mut self.frame_buffer)?;
        self.sink.write_all(&self.frame_buffer).map_err(|source| {
            self.broken = true;
            FrameError::Io { expected_seq: seq, offset_bytes: frame_offset_bytes, source }
        })?;
        Ok(seq)
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> Result<(), FrameError> {
        self.sink.flush().map_err(|source| self.io_error(source))
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.encoder.next_seq()
    }

    /// The stream offset at which the next frame will start.
    pub fn offset_bytes(&self) -> u64 {
        self.encoder.offset_bytes()
    }

    /// The sink, for callers that need more than `flush` (for example `File::sync_all`).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.sink
    }

    /// The sink, unflushed.
    pub fn into_inner(self) -> W {
        self.sink
    }

    fn io_error(&self, source: io::Error) -> FrameError {
        FrameError::Io {
            expected_seq: self.encoder.next_seq(),
            offset_bytes: self.encoder.offset_bytes(),
            source,
        }
    }
}

/// Reads entries from frames on a byte source, through a [`FrameDecoder`].
///
/// Reads the source in large chunks, so it needs no `BufReader`.
#[derive(Debug)]
pub struct FrameReader<R: Read, T> {
    source: R,
    decoder: FrameDecoder<T>,
    chunk: Box<[u8]>,
    source_ended: bool,
}

impl<R: Read, T: DeserializeOwned> FrameReader<R, T> {
    /// A reader that expects `first_seq` first, with the source at stream offset
    /// `start_offset_bytes` (nonzero when the frames follow a file header).
    pub fn new(source: R, first_seq: u64, start_offset_bytes: u64) -> Self {
        FrameReader {
            source,
            decoder: FrameDecoder::new(first_seq, start_offset_bytes),
            chunk: vec![0; READ_CHUNK_LEN_BYTES].into_boxed_slice(),
            source_ended: false,
        }
    }

    /// The next entry with its sequence number; `Ok(None)` only when the source ended exactly
    /// on a frame boundary. After an error, calling again returns the same error (or a new
    /// I/O error).
    pub fn read_entry(&mut self) -> Result<Option<(u64, T)>, FrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if self.source_ended {
                return self.decoder.finish().map(|()| None);
            }
            match self.source.read(&mut self.chunk) {
                Ok(0) => self.source_ended = true,
                Ok(len_bytes) => self.decoder.push(&self.chunk[..len_bytes]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(FrameError::Io {
                        expected_seq: self.decoder.next_seq(),
                        offset_bytes: self.decoder.offset_bytes(),
                        source,
                    })
                }
            }
        }
    }

    /// The sequence number the next entry must carry.
    pub fn next_seq(&self) -> u64 {
        self.decoder.next_seq()
    }

    /// The stream offset of the next frame's first byte.
    pub fn offset_bytes(&self) -> u64 {
        self.decoder.offset_bytes()
    }

    /// The source. Bytes it already gave that are not yet returned as entries stay in the
    /// reader and are lost.
    pub fn into_inner(self) -> R {
        self.source
    }
}
