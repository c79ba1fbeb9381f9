//! The block-device interface every role uses for its disk: requests out, completions in.
//!
//! Shaped like virtio-blk: a request names 512-byte sectors, may complete in any order, and is
//! matched to its completion by `id`. A completed write is durable (the device has no volatile
//! write cache, or the adapter flushes before completing).

use alloc::vec::Vec;

/// Bytes per sector.
pub const SECTOR_BYTES: usize = 512;

/// One request to the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRequest {
    /// Chosen by the issuer; echoed in the completion.
    pub id: u64,
    /// What to do.
    pub op: DiskOp,
}

/// A disk operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Read `count` sectors starting at `sector`.
    Read { sector: u64, count: u32 },
    /// Write `data` (a whole number of sectors) starting at `sector`.
    Write { sector: u64, data: Vec<u8> },
}

/// The answer to one [`DiskRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCompletion {
    /// The request's id.
    pub id: u64,
    /// Read data (empty for writes), or why the request failed.
    pub result: Result<Vec<u8>, DiskError>,
}

/// Why a disk request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The request reaches past the end of the disk.
    OutOfRange,
    /// The device reported an I/O error.
    Io,
}

/// Number of sectors needed to hold `bytes`.
pub fn sectors_for(bytes: usize) -> u64 {
    bytes.div_ceil(SECTOR_BYTES) as u64
}

/// Pads `data` with zeros to a whole number of sectors.
pub fn pad_to_sector(mut data: Vec<u8>) -> Vec<u8> {
    let padded = data.len().div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    data.resize(padded, 0);
    data
}
