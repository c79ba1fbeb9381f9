//! virtio-blk: one request queue over a disk of whole 512-byte sectors.
//! Requests are served synchronously while the guest's notify exit is in
//! progress: read data is an input (from the disk image live, from the log in
//! a replay), written data is an output. Requests outside the disk or with
//! odd lengths are answered with an I/O error status.
use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};

use super::{QueueFault, VirtioDevice, FEATURE_VERSION_1};
use crate::devices::DeviceCtx;
use crate::memory::RamBitmapSlice;
use crate::outcome::RunOutcome;
use crate::snapshot::SavedAsIs;
use ftvm_abi::mmio::events;
use serde::{Deserialize, Serialize};
use storage::SECTOR_BYTES;

const DEVICE_ID_BLOCK: u32 = 2;
const FEATURE_FLUSH: u64 = 1 << 9;
const QUEUE_SIZES: &[u16] = &[256];
const HEADER_BYTES: usize = 16;
/// The most data one request may move (bounds the VMM's buffer).
const MAX_REQUEST_BYTES: usize = 4 << 20;
const ID_BYTES: usize = 20;

mod request {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

mod status {
    pub const OK: u8 = 0;
    pub const IO_ERROR: u8 = 1;
    pub const UNSUPPORTED: u8 = 2;
}

/// The block device model (also its saved state).
#[derive(Clone, Serialize, Deserialize)]
pub struct Block {
    capacity_bytes: u64,
    requests: u64,
}

impl SavedAsIs for Block {}

impl Block {
    /// A disk of `capacity_bytes` (whole sectors).
    pub fn new(capacity_bytes: u64) -> Self {
        Block { capacity_bytes, requests: 0 }
    }

    /// Its size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Requests served.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn in_range(&self, offset: u64, len: usize) -> bool {
        len.is_multiple_of(SECTOR_BYTES as usize)
            && len <= MAX_REQUEST_BYTES
            && offset.checked_add(len as u64).is_some_and(|end| end <= self.capacity_bytes)
    }

    /// Serves one request; returns the bytes written into the guest's buffers.
    fn serve(
        &mut self,
        reader: &mut Reader<'_, RamBitmapSlice<'_>>,
        writer: &mut Writer<'_, RamBitmapSlice<'_>>,
        ctx: &mut DeviceCtx,
    ) -> Result<u32, QueueFault> {
        let mut header = [0u8; HEADER_BYTES];
        reader.read_exact(&mut header).map_err(|_| QueueFault::Guest)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let status_at = writer.available_bytes().checked_sub(1).ok_or(QueueFault::Guest)?;
        let mut status_writer = writer.split_at(status_at).map_err(|_| QueueFault::Guest)?;
        let offset = sector.saturating_mul(SECTOR_BYTES);
        let (status, data_bytes) = match kind {
            request::READ => {
                let len = writer.available_bytes();
                if self.in_range(offset, len) {
                    let mut data = vec![0u8; len];
                    ctx.inputs.disk_read(&ctx.at, offset, &mut data).map_err(RunOutcome::from)?;
                    writer.write_all(&data).map_err(|_| QueueFault::Guest)?;
                    (status::OK, len)
                } else {
                    (status::IO_ERROR, 0)
                }
            }
            request::WRITE => {
                let len = reader.available_bytes();
                if self.in_range(offset, len) {
                    let mut data = vec![0u8; len];
                    reader.read_exact(&mut data).map_err(|_| QueueFault::Guest)?;
                    ctx.outputs
                        .disk_write(offset, &data)
                        .map_err(|error| RunOutcome::OutputFailed(error.to_string()))?;
                    (status::OK, 0)
                } else {
                    (status::IO_ERROR, 0)
                }
            }
            request::FLUSH => {
                ctx.outputs
                    .disk_flush()
                    .map_err(|error| RunOutcome::OutputFailed(error.to_string()))?;
                (status::OK, 0)
            }
            request::GET_ID => {
                let mut id = [0u8; ID_BYTES];
                id[..9].copy_from_slice(b"ftvm-disk");
                let len = writer.available_bytes().min(ID_BYTES);
                writer.write_all(&id[..len]).map_err(|_| QueueFault::Guest)?;
                (status::OK, len)
            }
            _ => (status::UNSUPPORTED, 0),
        };
        status_writer.write_all(&[status]).map_err(|_| QueueFault::Guest)?;
        self.requests += 1;
        Ok((data_bytes + 1) as u32)
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn features(&self) -> u64 {
        FEATURE_VERSION_1 | FEATURE_FLUSH
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        QUEUE_SIZES
    }

    fn config(&self) -> Vec<u8> {
        // capacity, in 512-byte sectors, is the first field of virtio_blk_config.
        (self.capacity_bytes / SECTOR_BYTES).to_le_bytes().to_vec()
    }

    fn event_bit(&self) -> u64 {
        events::BLOCK
    }

    fn process(
        &mut self,
        _index: usize,
        queues: &mut [Queue],
        ctx: &mut DeviceCtx,
    ) -> Result<bool, QueueFault> {
        let memory = ctx.memory;
        let queue = &mut queues[0];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut reader = Reader::new(memory, chain.clone()).map_err(|_| QueueFault::Guest)?;
            let mut writer = Writer::new(memory, chain).map_err(|_| QueueFault::Guest)?;
            let written = self.serve(&mut reader, &mut writer, ctx)?;
            queue.add_used(memory, head, written).map_err(|_| QueueFault::Guest)?;
            used = true;
        }
        Ok(used)
    }
}
