//! Device windows and their register layouts.
//!
//! Every device sits in its own 4 KiB window above RAM; there is no memory
//! behind the windows, so every access is an MMIO exit: a landmark (DESIGN §4).
//! Registers are 64 bits wide, little endian, at 8-byte offsets. Reads of a
//! write-only register return 0; writes to a read-only register are ignored and
//! counted as guest misbehaviour by the VMM.

/// Guest-physical base of the first device window.
pub const MMIO_BASE: u64 = 0xfe00_0000;
/// Size of each device window.
pub const WINDOW_BYTES: u64 = 0x1000;
/// End (exclusive) of the device window region.
pub const MMIO_END: u64 = MMIO_BASE + 16 * WINDOW_BYTES;

/// Window base of the device with window index `index`.
pub const fn window(index: u64) -> u64 {
    MMIO_BASE + index * WINDOW_BYTES
}

/// Console: text output.
pub mod console {
    /// Window base.
    pub const BASE: u64 = super::window(0);
    /// Write: a packed buffer (see [`crate::buf`]) of UTF-8 text to print.
    pub const WRITE: u64 = 0x00;
}

/// Power: orderly shutdown and the fatal-exception report.
pub mod power {
    /// Window base.
    pub const BASE: u64 = super::window(1);
    /// Write: power off with this exit code (low 32 bits).
    pub const SHUTDOWN: u64 = 0x00;
    /// Write: exception vector, for the fault report.
    pub const FAULT_VECTOR: u64 = 0x08;
    /// Write: exception error code (0 when the vector has none).
    pub const FAULT_ERROR: u64 = 0x10;
    /// Write: RIP of the faulting instruction.
    pub const FAULT_RIP: u64 = 0x18;
    /// Write (any value): report the fault given above and power off.
    pub const FAULT_REPORT: u64 = 0x20;
}

/// Clock: guest time. Both reads are inputs (logged on record).
pub mod clock {
    /// Window base.
    pub const BASE: u64 = super::window(2);
    /// Read: monotonic nanoseconds since the VM booted.
    pub const MONOTONIC_NS: u64 = 0x00;
    /// Read: wall-clock nanoseconds since the Unix epoch.
    pub const WALL_NS: u64 = 0x08;
}

/// One-shot timer against the monotonic clock.
pub mod timer {
    /// Window base.
    pub const BASE: u64 = super::window(3);
    /// Write: arm for this monotonic deadline in ns (0 disarms). When the
    /// deadline passes, [`super::events::TIMER`] becomes pending and the timer
    /// disarms. Read: the armed deadline, 0 when disarmed.
    pub const DEADLINE_NS: u64 = 0x00;
}

/// Entropy: random bytes from the host (inputs, logged on record).
pub mod entropy {
    /// Window base.
    pub const BASE: u64 = super::window(4);
    /// Read: 8 random bytes.
    pub const RANDOM_U64: u64 = 0x00;
    /// Write: a packed buffer (see [`crate::buf`]) to fill with random bytes.
    pub const FILL: u64 = 0x08;
}

/// The event register: how the guest learns what is pending, and how it idles.
pub mod events {
    /// Window base.
    pub const BASE: u64 = super::window(5);
    /// Read: the pending-event mask, cleared by the read; returns at once.
    pub const YIELD: u64 = 0x00;
    /// Read: block until an event is pending, then return the mask and clear
    /// it. Before returning, the VMM stores the monotonic time in the event
    /// page, if one is registered.
    pub const WAIT: u64 = 0x08;
    /// Write: guest-physical address of an [`EventPage`]-sized, 8-aligned
    /// area the VMM refreshes on every `WAIT` (0 unregisters).
    pub const EVENT_PAGE: u64 = 0x10;

    /// Pending bit: the timer deadline passed.
    pub const TIMER: u64 = 1 << 0;
    /// Pending bit: the network device has work (frames received / sent).
    pub const NET: u64 = 1 << 1;
    /// Pending bit: the block device completed requests.
    pub const BLOCK: u64 = 1 << 2;
    /// Every bit the VMM may set.
    pub const ALL: u64 = TIMER | NET | BLOCK;

    /// Byte offsets in the event page.
    pub mod page {
        /// u64: monotonic ns at the last `WAIT` return.
        pub const MONOTONIC_NS: u64 = 0x00;
        /// Size of the area the VMM writes.
        pub const BYTES: u64 = 8;
    }
}

/// Window indices of the virtio-mmio devices (network, block).
pub mod virtio {
    /// virtio-net window base.
    pub const NET_BASE: u64 = super::window(8);
    /// virtio-blk window base.
    pub const BLOCK_BASE: u64 = super::window(9);
}
