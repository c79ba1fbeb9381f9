//! The kernel heap: every byte of RAM after the loaded image.
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the allocator `[image_end, ram_end)`.
pub fn init(image_end: u64, ram_end: u64) {
    assert!(ram_end > image_end, "no RAM left for the heap");
    // SAFETY: the VMM guarantees (boot info) that this range is RAM that the
    // loaded image does not use; nothing else in the kernel touches it.
    unsafe {
        HEAP.lock().init(image_end as *mut u8, (ram_end - image_end) as usize);
    }
}

/// Bytes currently allocated.
pub fn used_bytes() -> usize {
    HEAP.lock().used()
}
