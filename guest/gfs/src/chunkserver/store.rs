//! On-disk layout of a chunkserver: fixed slots, each a header (metadata and per-block CRC32C)
//! followed by the chunk's data sectors.

use alloc::vec;
use alloc::vec::Vec;

use crate::config::Config;
use crate::disk::{sectors_for, SECTOR_BYTES};
use crate::wire::{crc32c, ChunkHandle, Version};

const HEADER_MAGIC: u32 = 0x4746_5343; // "GFSC"
const HEADER_FIXED_BYTES: usize = 4 + 8 + 8 + 4 + 4 + 4;

/// Persistent metadata of one replica: what its slot header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMeta {
    pub handle: ChunkHandle,
    pub version: Version,
    /// Bytes written so far (everything past it reads as zeros).
    pub len_bytes: u32,
    /// CRC32C of each checksum block (zero-filled past `len_bytes`).
    pub block_crcs: Vec<u32>,
}

/// Where slots live on the disk.
#[derive(Clone, Debug)]
pub struct Layout {
    pub header_sectors: u64,
    pub data_sectors: u64,
    pub slot_count: u32,
    pub block_bytes: usize,
    pub blocks_per_chunk: usize,
    zero_block_crc: u32,
}

impl Layout {
    /// The layout of a disk of `disk_sectors` for `config`'s chunk and block sizes.
    pub fn new(config: &Config, disk_sectors: u64) -> Self {
        let blocks_per_chunk = config.blocks_per_chunk() as usize;
        let header_sectors = sectors_for(HEADER_FIXED_BYTES + 4 * blocks_per_chunk);
        let data_sectors = sectors_for(config.chunk_size_bytes as usize);
        let slot_count = (disk_sectors / (header_sectors + data_sectors)) as u32;
        Layout {
            header_sectors,
            data_sectors,
            slot_count,
            block_bytes: config.checksum_block_bytes as usize,
            blocks_per_chunk,
            zero_block_crc: crc32c(&vec![0u8; config.checksum_block_bytes as usize]),
        }
    }

    /// First sector of `slot`'s header.
    pub fn header_sector(&self, slot: u32) -> u64 {
        u64::from(slot) * (self.header_sectors + self.data_sectors)
    }

    /// Sector holding byte `offset` of `slot`'s data (offset is sector-aligned).
    pub fn data_sector(&self, slot: u32, offset: usize) -> u64 {
        self.header_sector(slot) + self.header_sectors + (offset / SECTOR_BYTES) as u64
    }

    /// Encodes `meta` as a whole number of header sectors.
    pub fn encode_header(&self, meta: &ReplicaMeta) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.header_sectors as usize * SECTOR_BYTES);
        bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&meta.handle.to_le_bytes());
        bytes.extend_from_slice(&meta.version.to_le_bytes());
        bytes.extend_from_slice(&meta.len_bytes.to_le_bytes());
        bytes.extend_from_slice(&(meta.block_crcs.len() as u32).to_le_bytes());
        for crc in &meta.block_crcs {
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.resize(self.header_sectors as usize * SECTOR_BYTES, 0);
        bytes
    }

    /// An all-zero header: the slot is free.
    pub fn empty_header(&self) -> Vec<u8> {
        vec![0; self.header_sectors as usize * SECTOR_BYTES]
    }

    /// Decodes a header; `None` for a free slot or a header whose checksum fails.
    pub fn decode_header(&self, bytes: &[u8]) -> Option<ReplicaMeta> {
        if read_u32(bytes, 0)? != HEADER_MAGIC {
            return None;
        }
        let block_count = read_u32(bytes, 24)? as usize;
        if block_count != self.blocks_per_chunk {
            return None;
        }
        let crc_at = 28 + 4 * block_count;
        if crc32c(bytes.get(..crc_at)?) != read_u32(bytes, crc_at)? {
            return None;
        }
        let block_crcs =
            (0..block_count).map(|i| read_u32(bytes, 28 + 4 * i)).collect::<Option<Vec<u32>>>()?;
        Some(ReplicaMeta {
            handle: read_u64(bytes, 4)?,
            version: read_u64(bytes, 12)?,
            len_bytes: read_u32(bytes, 20)?,
            block_crcs,
        })
    }

    /// CRC32C of a block of zeros (the CRC of every block of a fresh chunk).
    pub fn zero_block_crc(&self) -> u32 {
        self.zero_block_crc
    }

    /// Metadata of a fresh, empty replica.
    pub fn fresh_meta(&self, handle: ChunkHandle, version: Version) -> ReplicaMeta {
        ReplicaMeta {
            handle,
            version,
            len_bytes: 0,
            block_crcs: vec![self.zero_block_crc(); self.blocks_per_chunk],
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_layout() -> Layout {
        let config =
            Config { chunk_size_bytes: 8192, checksum_block_bytes: 1024, ..Config::default() };
        Layout::new(&config, 1000)
    }

    #[test]
    fn header_round_trips_and_rejects_a_flipped_bit() {
        let layout = small_layout();
        let mut meta = layout.fresh_meta(0xABCD, 17);
        meta.len_bytes = 3000;
        meta.block_crcs[2] = 99;
        let mut bytes = layout.encode_header(&meta);
        assert_eq!(bytes.len() % SECTOR_BYTES, 0);
        assert_eq!(layout.decode_header(&bytes), Some(meta));
        bytes[13] ^= 1;
        assert_eq!(layout.decode_header(&bytes), None);
        assert_eq!(layout.decode_header(&layout.empty_header()), None);
    }

    #[test]
    fn slots_do_not_overlap_and_fit_the_disk() {
        let layout = small_layout();
        assert_eq!(layout.header_sectors, 1);
        assert_eq!(layout.data_sectors, 16);
        assert_eq!(layout.slot_count, 1000 / 17);
        assert_eq!(layout.header_sector(1), 17);
        assert_eq!(layout.data_sector(1, 1024), 17 + 1 + 2);
    }
}
