//! virtio over virtio-mmio: the `Hal` that virtio-drivers needs and the
//! transport setup for the network and block windows (ftvm_abi::mmio::virtio).
//!
//! Memory is identity-mapped (physical == virtual) and the device reads guest
//! RAM directly, so DMA memory is plain zeroed heap pages and sharing a buffer
//! is just naming its address. There are no interrupts: the VMM completes
//! requests during the QueueNotify exit and publishes new used-ring entries
//! through the event register's NET/BLOCK bits.
use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

pub mod block;
pub mod net;

/// The virtio-drivers platform layer for ftvm guests.
pub struct KernelHal;

fn dma_layout(pages: usize) -> Layout {
    let bytes = pages.checked_mul(PAGE_SIZE).expect("DMA allocation size overflows");
    Layout::from_size_align(bytes.max(PAGE_SIZE), PAGE_SIZE).expect("page-aligned DMA layout")
}

// SAFETY: allocations are page aligned, zeroed, exclusively owned until
// `dma_dealloc`, and their physical address equals their virtual address
// because the VMM identity-maps all of RAM.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = dma_layout(pages);
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc_zeroed(layout) };
        let pointer = NonNull::new(pointer).unwrap_or_else(|| handle_alloc_error(layout));
        (pointer.as_ptr() as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back an allocation from `dma_alloc` with
        // the same page count, so the layout matches.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Why a virtio device could not be brought up.
#[derive(Debug)]
pub enum VirtioError {
    /// The window does not hold a usable virtio-mmio header.
    Transport(MmioError),
    /// The window holds a device of another type.
    WrongDevice { expected: DeviceType, found: DeviceType },
    /// The driver failed while negotiating or setting up queues.
    Driver(virtio_drivers::Error),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            VirtioError::Transport(error) => write!(f, "virtio-mmio transport: {error}"),
            VirtioError::WrongDevice { expected, found } => {
                write!(f, "expected a {expected:?} device, found {found:?}")
            }
            VirtioError::Driver(error) => write!(f, "virtio driver: {error}"),
        }
    }
}

impl From<virtio_drivers::Error> for VirtioError {
    fn from(error: virtio_drivers::Error) -> Self {
        VirtioError::Driver(error)
    }
}

/// Opens the virtio-mmio window at `base` and checks it holds a `expected` device.
///
/// Reading the header costs a few exits; this happens once per device.
pub fn open_transport(
    base: u64,
    expected: DeviceType,
) -> Result<MmioTransport<'static>, VirtioError> {
    let header = NonNull::new(base as *mut VirtIOHeader).expect("device windows are not at 0");
    // SAFETY: `base` is a device window from ftvm_abi::mmio::virtio: 4 KiB of
    // MMIO with no memory behind it, identity-mapped, used by nothing else.
    let transport = unsafe {
        MmioTransport::new(header, ftvm_abi::mmio::WINDOW_BYTES as usize)
            .map_err(VirtioError::Transport)?
    };
    let found = transport.device_type();
    if found != expected {
        return Err(VirtioError::WrongDevice { expected, found });
    }
    Ok(transport)
}
