//! Guest RAM: one anonymous mapping from guest-physical address 0, and the
//! checks that turn guest-supplied addresses into ranges inside it.
use ftvm_abi::layout::{MAX_RAM_BYTES, MIN_RAM_BYTES, PAGE_BYTES};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
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

/// Guest RAM; the VMM's own writes to it (devices placing data in the guest's buffers) are
/// marked in a bitmap, since KVM's dirty log sees only the guest's ([`crate::ft::transfer`]).
pub type GuestRam = GuestMemoryMmap<AtomicBitmap>;
/// A view of the bitmap of part of guest RAM (what a virtio descriptor chain's reader and
/// writer carry).
pub type RamBitmapSlice<'a> = vm_memory::bitmap::RefSlice<'a, AtomicBitmap>;

/// Maps `bytes` of zeroed guest RAM at guest-physical 0.
pub fn create(bytes: u64) -> Result<GuestRam, MemoryError> {
    if !(MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&bytes) || !bytes.is_multiple_of(PAGE_BYTES) {
        return Err(MemoryError::BadSize { bytes });
    }
    GuestRam::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|source| MemoryError::Map { bytes, source })
}

/// Bytes of guest RAM.
pub fn ram_bytes(memory: &GuestRam) -> u64 {
    memory.iter().map(|region| region.len()).sum()
}

/// `(addr, len)` of a packed buffer descriptor if the whole range is RAM.
pub fn guest_range(memory: &GuestRam, descriptor: u64) -> Option<(u64, usize)> {
    let (addr, len) = ftvm_abi::buf::unpack(descriptor);
    guest_range_of(memory, addr, len as u64).map(|addr| (addr, len))
}

/// `addr` if `[addr, addr + len)` lies inside guest RAM (no overflow).
pub fn guest_range_of(memory: &GuestRam, addr: u64, len: u64) -> Option<u64> {
    let end = addr.checked_add(len)?;
    (end <= ram_bytes(memory)).then_some(addr)
}

/// The KVM memory slot that maps guest RAM.
pub const RAM_SLOT: u32 = 0;

/// The KVM memory region for guest RAM, with `flags` (`KVM_MEM_LOG_DIRTY_PAGES` or none).
fn ram_region(memory: &GuestRam, flags: u32) -> kvm_userspace_memory_region {
    let host_addr =
        memory.get_host_address(GuestAddress(0)).expect("RAM starts at guest address 0") as u64;
    kvm_userspace_memory_region {
        slot: RAM_SLOT,
        flags,
        guest_phys_addr: 0,
        memory_size: ram_bytes(memory),
        userspace_addr: host_addr,
    }
}

/// Maps guest RAM into `vm` at guest-physical 0, logging the guest's writes to it if
/// `log_dirty` (again on a mapped RAM: switches the logging on or off).
pub fn map_into(vm: &VmFd, memory: &GuestRam, log_dirty: bool) -> Result<(), kvm_ioctls::Error> {
    let flags = if log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
    // SAFETY: the region is the mapping owned by `memory`, which the caller keeps alive (the
    // VM holds it in its machine) for as long as the VM exists.
    unsafe { vm.set_user_memory_region(ram_region(memory, flags)) }
}

/// The pages written since the last call, by the guest (KVM's dirty log: [`map_into`] with
/// logging on) or by the VMM (the RAM's bitmap), in ascending order.
pub fn take_dirty_pages(vm: &VmFd, memory: &GuestRam) -> Result<Vec<u64>, kvm_ioctls::Error> {
    let mut words = vm.get_dirty_log(RAM_SLOT, ram_bytes(memory) as usize)?;
    for region in memory.iter() {
        let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
        for (word, vmm_word) in words.iter_mut().zip(mapping.bitmap().get_and_reset()) {
            *word |= vmm_word;
        }
    }
    Ok(words
        .iter()
        .enumerate()
        .flat_map(|(index, word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| index as u64 * 64 + bit)
        })
        .collect())
}

/// The pages at `indices` (4 KiB each), for a snapshot or a transfer; with `skip_zero`,
/// pages of all zeros are left out (fresh guest RAM is zeros).
pub fn read_pages(
    memory: &GuestRam,
    indices: impl IntoIterator<Item = u64>,
    skip_zero: bool,
) -> Result<Vec<(u64, serde_bytes::ByteBuf)>, vm_memory::GuestMemoryError> {
    let mut pages = Vec::new();
    let mut page = vec![0u8; PAGE_BYTES as usize];
    for index in indices {
        vm_memory::Bytes::read_slice(memory, &mut page, GuestAddress(index * PAGE_BYTES))?;
        if !skip_zero || page.iter().any(|byte| *byte != 0) {
            pages.push((index, serde_bytes::ByteBuf::from(page.clone())));
        }
    }
    Ok(pages)
}

/// A hash of all of guest RAM (xxh3), for comparing runs.
pub fn hash(memory: &GuestRam) -> u64 {
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
