//! Counts what a guest did wrong to its devices, so a hostile or buggy guest
//! is reported, not silently tolerated. Nothing here affects the guest.
use std::collections::BTreeMap;
use std::fmt;

/// A kind of guest misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Offence {
    /// An MMIO access where no device lives.
    UnknownMmio,
    /// A device register accessed with a size other than 8 bytes, or unaligned.
    BadAccessSize,
    /// A device offset that names no register.
    NoSuchRegister,
    /// A write to a read-only register.
    ReadOnlyRegister,
    /// A read of a write-only register.
    WriteOnlyRegister,
    /// A guest buffer (or event page) not entirely inside guest RAM.
    BufferOutsideRam,
    /// Port IO (there are no port devices).
    PortIo,
    /// HLT (the guest must idle on the event register instead).
    Halt,
    /// A virtio device misprogrammed: bad descriptors, queue setup or notify.
    BadVirtioUse,
    /// A virtio-net transmit header with nonsense offload fields (refused).
    BadNetHeader,
}

impl Offence {
    fn describe(self) -> &'static str {
        match self {
            Offence::UnknownMmio => "MMIO accesses where no device lives",
            Offence::BadAccessSize => "device accesses not 8 bytes wide and aligned",
            Offence::NoSuchRegister => "accesses to offsets that name no register",
            Offence::ReadOnlyRegister => "writes to read-only registers",
            Offence::WriteOnlyRegister => "reads of write-only registers",
            Offence::BufferOutsideRam => "buffers not inside guest RAM",
            Offence::PortIo => "port IO accesses",
            Offence::Halt => "HLT instructions",
            Offence::BadVirtioUse => "virtio misuses (bad descriptors, queue setup or notify)",
            Offence::BadNetHeader => "virtio-net packets refused for nonsense offload headers",
        }
    }
}

/// One kind's count and its first example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    count: u64,
    first_addr: u64,
    first_value: u64,
}

/// All misbehaviour seen in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Misbehaviour {
    tallies: BTreeMap<Offence, Tally>,
}

impl Misbehaviour {
    /// Counts one offence at `addr` (or port) with the value involved.
    pub fn record(&mut self, offence: Offence, addr: u64, value: u64) {
        self.tallies
            .entry(offence)
            .or_insert(Tally { count: 0, first_addr: addr, first_value: value })
            .count += 1;
    }

    /// How many offences of `offence` were seen.
    pub fn count(&self, offence: Offence) -> u64 {
        self.tallies.get(&offence).map_or(0, |tally| tally.count)
    }

    /// Offences of every kind.
    pub fn total(&self) -> u64 {
        self.tallies.values().map(|tally| tally.count).sum()
    }
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (offence, tally) in &self.tallies {
            writeln!(
                f,
                "  {:>8} {} (first at {:#x}, value {:#x})",
                tally.count,
                offence.describe(),
                tally.first_addr,
                tally.first_value
            )?;
        }
        Ok(())
    }
}
