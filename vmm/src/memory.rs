//! Guest RAM: one anonymous mapping from guest-physical address 0, and the
//! checks that turn guest-supplied addresses into ranges inside it.
use ftvm_abi::layout::{MAX_RAM_BYTES, MIN_RAM_BYTES, PAGE_BYTES};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use xxhash_rust::xxh3::Xxh3;

/// Why guest RAM could not be set up.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The requested size is outside what the platform supports.
    #[error("guest RAM of {bytes} bytes is not supported: it must be a multiple of 4 KiB between {} MiB and {} MiB", MIN_RAM_BYTES >> 20, MAX_RAM_BYTES >> 20)]
    BadSize {
        /// The requested size.
        bytes: u64,
    },
    /// The host could not map the memory.
    #[error("could not map {bytes} bytes of guest RAM: {source}")]
    Map {
        /// The requested size.
        bytes: u64,
        /// What mmap said.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `bytes` of zeroed guest RAM at guest-physical 0.
pub fn create(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&bytes) || !bytes.is_multiple_of(PAGE_BYTES) {
        return Err(MemoryError::BadSize { bytes });
    }
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|source| MemoryError::Map { bytes, source })
}

/// Bytes of guest RAM.
pub fn ram_bytes(memory: &GuestMemoryMmap) -> u64 {
    memory.iter().map(|region| region.len()).sum()
}

/// `(addr, len)` of a packed buffer descriptor if the whole range is RAM.
pub fn guest_range(memory: &GuestMemoryMmap, descriptor: u64) -> Option<(u64, usize)> {
    let (addr, len) = ftvm_abi::buf::unpack(descriptor);
    guest_range_of(memory, addr, len as u64).map(|addr| (addr, len))
}

/// `addr` if `[addr, addr + len)` lies inside guest RAM (no overflow).
pub fn guest_range_of(memory: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let end = addr.checked_add(len)?;
    (end <= ram_bytes(memory)).then_some(addr)
}

/// A hash of all of guest RAM (xxh3), for comparing runs.
pub fn hash(memory: &GuestMemoryMmap) -> u64 {
    let mut hasher = Xxh3::new();
    let mut chunk = vec![0u8; 1 << 20];
    for region in memory.iter() {
        let mut offset = 0u64;
        while offset < region.len() {
            let len = chunk.len().min((region.len() - offset) as usize);
            let addr = region.start_addr().0 + offset;
            vm_memory::Bytes::read_slice(memory, &mut chunk[..len], GuestAddress(addr))
                .expect("reading inside a region we just iterated");
            hasher.update(&chunk[..len]);
            offset += len as u64;
        }
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(create(1 << 20), Err(MemoryError::BadSize { .. })));
        assert!(matches!(create((16 << 20) + 1), Err(MemoryError::BadSize { .. })));
        assert!(matches!(create(MAX_RAM_BYTES + PAGE_BYTES), Err(MemoryError::BadSize { .. })));
        assert_eq!(ram_bytes(&create(16 << 20).unwrap()), 16 << 20);
    }

    #[test]
    fn ranges_are_checked() {
        let memory = create(16 << 20).unwrap();
        let ram = 16u64 << 20;
        assert_eq!(guest_range_of(&memory, 0, ram), Some(0));
        assert_eq!(guest_range_of(&memory, ram - 8, 8), Some(ram - 8));
        assert_eq!(guest_range_of(&memory, ram - 8, 9), None);
        assert_eq!(guest_range_of(&memory, u64::MAX, 2), None);
        assert_eq!(guest_range(&memory, ftvm_abi::buf::pack(ram, 1).unwrap()), None);
    }
}
