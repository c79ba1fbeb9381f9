//! Clock device: monotonic time since boot and wall time.
use ftvm_abi::mmio::clock;

/// Monotonic nanoseconds since the VM booted.
pub fn monotonic_ns() -> u64 {
    super::read(clock::BASE, clock::MONOTONIC_NS)
}

/// Nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    super::read(clock::BASE, clock::WALL_NS)
}
