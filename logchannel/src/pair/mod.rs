//! The pair's decisions (DESIGN §5), as sans-IO state machines in the style of the channel
//! cores: when a held output may be released or must be dropped, when a side asks the
//! arbiter, goes solo or live, or halts, and what a backup going live re-emits. They take
//! the channel cores' state, the arbiter's verdicts and the time as inputs and return steps
//! for a driver to perform; the VMM's threads (`vmm/src/ft`) and the FT simulator
//! (`logchannel/ft-sim`) are both thin drivers of them, so the simulator runs the rules
//! production runs.
//!
//! [`primary::PrimaryPair`] is the primary's side (the output rule, the fence, the held-output
//! bound, disk errors, release reports), [`backup::BackupPair`] the backup's (when it may go
//! live, and the outputs it keeps to re-emit).

pub mod backup;
pub mod primary;

use crate::entry::Entry;

/// The kinds of output a guest produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A network frame.
    Packet,
    /// Console text.
    Console,
    /// A write to the shared disk.
    DiskWrite,
    /// A flush of the shared disk.
    DiskFlush,
}

/// How many outputs of each kind were released since boot (each `Outputs` call is one): what
/// the primary reports to the backup in [`Entry::Released`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleasedCounts {
    /// Network frames sent.
    pub packets: u64,
    /// Console writes shown.
    pub console_writes: u64,
    /// Disk writes performed.
    pub disk_writes: u64,
}

impl ReleasedCounts {
    /// Counts one released output of `kind` (flushes are not counted: nothing to re-emit).
    fn count(&mut self, kind: OutputKind) -> bool {
        match kind {
            OutputKind::Packet => self.packets += 1,
            OutputKind::Console => self.console_writes += 1,
            OutputKind::DiskWrite => self.disk_writes += 1,
            OutputKind::DiskFlush => return false,
        }
        true
    }

    /// The entry that reports these counts.
    fn entry(&self) -> Entry {
        Entry::Released {
            packets: self.packets,
            console_writes: self.console_writes,
            disk_writes: self.disk_writes,
        }
    }

    /// The counts a report carries, if `entry` is one.
    pub fn from_entry(entry: &Entry) -> Option<ReleasedCounts> {
        match *entry {
            Entry::Released { packets, console_writes, disk_writes } => {
                Some(ReleasedCounts { packets, console_writes, disk_writes })
            }
            _ => None,
        }
    }

    /// The count of `kind`.
    pub fn of(&self, kind: OutputKind) -> u64 {
        match kind {
            OutputKind::Packet => self.packets,
            OutputKind::Console => self.console_writes,
            OutputKind::DiskWrite => self.disk_writes,
            OutputKind::DiskFlush => 0,
        }
    }
}
