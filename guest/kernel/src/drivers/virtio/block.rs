//! The block API over virtio-blk: read, write and flush whole 512-byte sectors.
//!
//! Each request is one QueueNotify exit; the VMM completes it before the exit
//! returns, so every call here is synchronous. Large transfers are split into
//! requests of at most [`MAX_REQUEST_BYTES`].
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::DeviceType;

use super::{open_transport, KernelHal, VirtioError};

/// Bytes per sector.
pub const SECTOR_BYTES: usize = 512;
/// The largest transfer sent to the device in one request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a block request failed.
#[derive(Debug)]
pub enum BlockError {
    /// The buffer length is zero or not a whole number of sectors.
    PartialSector { len_bytes: usize },
    /// The request reaches past the end of the disk.
    OutOfRange { sector: u64, sectors: u64, capacity_sectors: u64 },
    /// The disk is read-only and the request writes.
    ReadOnly,
    /// The device reported an error.
    Device(virtio_drivers::Error),
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            BlockError::PartialSector { len_bytes } => {
                write!(f, "{len_bytes} bytes is not a whole number of {SECTOR_BYTES}-byte sectors")
            }
            BlockError::OutOfRange { sector, sectors, capacity_sectors } => write!(
                f,
                "sectors {sector}..{} are past the end of the disk ({capacity_sectors} sectors)",
                sector + sectors
            ),
            BlockError::ReadOnly => write!(f, "the disk is read-only"),
            BlockError::Device(error) => write!(f, "device error: {error}"),
        }
    }
}

/// The virtio-blk disk.
pub struct BlockDevice {
    driver: VirtIOBlk<KernelHal, MmioTransport<'static>>,
    capacity_sectors: u64,
}

impl BlockDevice {
    /// Brings up the disk at its window. Call only when the boot info lists it.
    pub fn open() -> Result<Self, VirtioError> {
        let transport = open_transport(ftvm_abi::mmio::virtio::BLOCK_BASE, DeviceType::Block)?;
        let driver = VirtIOBlk::new(transport)?;
        let capacity_sectors = driver.capacity();
        Ok(BlockDevice { driver, capacity_sectors })
    }

    /// Disk size in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.driver.readonly()
    }

    fn check_range(&self, sector: u64, len_bytes: usize) -> Result<(), BlockError> {
        if len_bytes == 0 || !len_bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(BlockError::PartialSector { len_bytes });
        }
        let sectors = (len_bytes / SECTOR_BYTES) as u64;
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity_sectors => Ok(()),
            _ => Err(BlockError::OutOfRange {
                sector,
                sectors,
                capacity_sectors: self.capacity_sectors,
            }),
        }
    }

    /// Reads `buf.len() / 512` sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_range(sector, buf.len())?;
        let mut next_sector = sector;
        for chunk in buf.chunks_mut(MAX_REQUEST_BYTES) {
            self.driver.read_blocks(next_sector as usize, chunk).map_err(BlockError::Device)?;
            next_sector += (chunk.len() / SECTOR_BYTES) as u64;
        }
        Ok(())
    }

    /// Writes `buf` to the sectors starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.check_range(sector, buf.len())?;
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        let mut next_sector = sector;
        for chunk in buf.chunks(MAX_REQUEST_BYTES) {
            self.driver.write_blocks(next_sector as usize, chunk).map_err(BlockError::Device)?;
            next_sector += (chunk.len() / SECTOR_BYTES) as u64;
        }
        Ok(())
    }

    /// Makes every completed write durable on the host.
    pub fn flush(&mut self) -> Result<(), BlockError> {
        self.driver.flush().map_err(BlockError::Device)
    }
}
