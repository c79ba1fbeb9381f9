//! The boot-info block the VMM writes at [`crate::layout::BOOT_INFO_ADDR`]
//! and passes (its address) to the guest entry point in RDI.
//!
//! Fixed little-endian offsets, so host and guest share one encoder/decoder
//! and neither depends on struct layout.

use crate::layout::PAGE_BYTES;

/// `b"FTVMBOOT"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FTVMBOOT");
/// Version of this layout; bumped on any incompatible change.
pub const VERSION: u32 = 1;
/// Size of the block.
pub const BYTES: usize = PAGE_BYTES as usize;
/// Offset of the command line bytes.
pub const CMDLINE_OFFSET: usize = 64;
/// The longest command line the block holds.
pub const CMDLINE_MAX: usize = BYTES - CMDLINE_OFFSET;

/// Device bits in [`BootInfo::devices`].
pub mod device {
    /// A virtio-net device is present at its window.
    pub const NET: u64 = 1 << 0;
    /// A virtio-blk device is present at its window.
    pub const BLOCK: u64 = 1 << 1;
}

/// What the guest learns at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo<'a> {
    /// Bytes of RAM from physical address 0.
    pub ram_bytes: u64,
    /// First byte after the loaded kernel image (BSS included), page aligned.
    pub image_end: u64,
    /// Devices present beyond the fixed ones ([`device`] bits).
    pub devices: u64,
    /// The guest command line (`role=... key=value ...`), UTF-8.
    pub cmdline: &'a str,
}

/// Why a boot-info block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The block is shorter than [`BYTES`].
    TooShort,
    /// The magic number is wrong: this is not a boot-info block.
    BadMagic,
    /// The block was written for another layout version.
    Version(u32),
    /// The command line length exceeds [`CMDLINE_MAX`] or is not UTF-8.
    BadCmdline,
    /// The command line given to `encode` is longer than [`CMDLINE_MAX`].
    CmdlineTooLong,
}

fn read_u64(block: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[offset..offset + 8]);
    u64::from_le_bytes(bytes)
}

impl<'a> BootInfo<'a> {
    /// Writes the block into `out` (which must be [`BYTES`] long).
    pub fn encode(&self, out: &mut [u8; BYTES]) -> Result<(), BootInfoError> {
        let cmdline = self.cmdline.as_bytes();
        if cmdline.len() > CMDLINE_MAX {
            return Err(BootInfoError::CmdlineTooLong);
        }
        out.fill(0);
        out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.ram_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.image_end.to_le_bytes());
        out[32..40].copy_from_slice(&self.devices.to_le_bytes());
        out[40..48].copy_from_slice(&(cmdline.len() as u64).to_le_bytes());
        out[CMDLINE_OFFSET..CMDLINE_OFFSET + cmdline.len()].copy_from_slice(cmdline);
        Ok(())
    }

    /// Reads a block written by [`BootInfo::encode`].
    pub fn decode(block: &'a [u8]) -> Result<Self, BootInfoError> {
        if block.len() < BYTES {
            return Err(BootInfoError::TooShort);
        }
        if read_u64(block, 0) != MAGIC {
            return Err(BootInfoError::BadMagic);
        }
        let version = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
        if version != VERSION {
            return Err(BootInfoError::Version(version));
        }
        let cmdline_len = read_u64(block, 40);
        if cmdline_len > CMDLINE_MAX as u64 {
            return Err(BootInfoError::BadCmdline);
        }
        let cmdline_bytes = &block[CMDLINE_OFFSET..CMDLINE_OFFSET + cmdline_len as usize];
        let cmdline = core::str::from_utf8(cmdline_bytes).map_err(|_| BootInfoError::BadCmdline)?;
        Ok(BootInfo {
            ram_bytes: read_u64(block, 16),
            image_end: read_u64(block, 24),
            devices: read_u64(block, 32),
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let info = BootInfo {
            ram_bytes: 128 << 20,
            image_end: 0x30_0000,
            devices: device::NET,
            cmdline: "role=selftest x=1",
        };
        let mut block = [0u8; BYTES];
        info.encode(&mut block).unwrap();
        assert_eq!(BootInfo::decode(&block).unwrap(), info);
    }

    #[test]
    fn rejects_garbage() {
        let mut block = [0u8; BYTES];
        assert_eq!(BootInfo::decode(&block), Err(BootInfoError::BadMagic));
        assert_eq!(BootInfo::decode(&block[..10]), Err(BootInfoError::TooShort));
        let info = BootInfo { ram_bytes: 1, image_end: 2, devices: 0, cmdline: "" };
        info.encode(&mut block).unwrap();
        block[8] = 9;
        assert_eq!(BootInfo::decode(&block), Err(BootInfoError::Version(9)));
        block[8] = VERSION as u8;
        block[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(BootInfo::decode(&block), Err(BootInfoError::BadCmdline));
        let long = "x".repeat(CMDLINE_MAX + 1);
        let too_long = BootInfo { cmdline: &long, ..info };
        assert_eq!(too_long.encode(&mut block), Err(BootInfoError::CmdlineTooLong));
    }
}
