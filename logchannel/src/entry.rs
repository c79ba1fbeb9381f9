//! The log entry: every non-deterministic input a primary (or a recording)
//! consumed, where it consumed it, and the control entries around them.
//!
//! Inputs appear in the log in exactly the order the guest consumed them; a
//! replayer consumes them in the same order and checks each against where the
//! guest is (DESIGN §4).
use serde::{Deserialize, Serialize};

/// A point in the guest's execution: the landmark count (guest-caused exits
/// so far, the current one included) and the guest RIP there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecPoint {
    /// Guest-caused exits so far, counting the current one.
    pub landmark: u64,
    /// Guest instruction pointer at the exit.
    pub rip: u64,
}

/// An asynchronous event: it arrives when the host decides, and is applied
/// at a landmark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsyncEvent {
    /// The armed timer deadline has passed.
    TimerExpired,
    /// A packet arrived from the network and was delivered into the guest's
    /// next receive buffer: the virtio-net header the TAP gave it (its
    /// offloads: a large segment is one entry), then the Ethernet frame.
    FrameReceived(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One non-deterministic value the guest consumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A read of the monotonic clock (ns since boot).
    MonotonicNs(u64),
    /// A read of the wall clock (ns since the Unix epoch).
    WallNs(u64),
    /// Random bytes.
    Entropy(Vec<u8>),
    /// Events found pending at a landmark without waiting.
    Polled(Vec<AsyncEvent>),
    /// Events a blocking wait returned.
    Waited(Vec<AsyncEvent>),
    /// Bytes read from the shared disk (shared-disk mode: the backup never
    /// reads the disk itself).
    DiskRead(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Input {
    /// A short name for reports and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::MonotonicNs(_) => "monotonic clock",
            Input::WallNs(_) => "wall clock",
            Input::Entropy(_) => "entropy",
            Input::Polled(_) => "events (polled)",
            Input::Waited(_) => "events (waited)",
            Input::DiskRead(_) => "disk read",
        }
    }
}

/// An input with where it was consumed and the vCPU state there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    /// Where the guest consumed it.
    pub point: ExecPoint,
    /// Hash of the general registers at that point (divergence detection).
    pub regs_hash: u64,
    /// The value.
    pub input: Input,
}

/// The privilege level the guest was entered at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryLevel {
    /// Directly at CPL3.
    Cpl3,
    /// At CPL0, dropping to CPL3 with iretq.
    Cpl0,
}

/// Everything needed to boot the same guest again: replay needs the log alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The guest command line.
    pub cmdline: String,
    /// The privilege level at entry.
    pub entry_level: EntryLevel,
    /// The kernel ELF image itself.
    pub kernel: Vec<u8>,
    /// The NIC's MAC address, if the guest had a NIC.
    pub net_mac: Option<[u8; 6]>,
    /// The disk's size in bytes, if the guest had a disk.
    pub disk_bytes: Option<u64>,
}

/// How the recorded run ended, for the replay to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    /// Landmarks the guest reached.
    pub landmarks: u64,
    /// How the run ended, as text.
    pub outcome: String,
    /// The process exit status the run gave.
    pub exit_status: u8,
    /// Hash of the console output.
    pub console_hash: u64,
    /// Hash of all guest RAM.
    pub memory_hash: u64,
    /// Hash of the final general registers.
    pub regs_hash: u64,
    /// The host stopped the run (SIGINT/SIGTERM) at landmark `landmarks`,
    /// before handling it; a replay stops at the same point.
    pub stopped: bool,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// The first entry: what was booted.
    RunStart(RunStart),
    /// A consumed input.
    Input(InputEntry),
    /// Every exit up to and including `landmark` is complete: each input
    /// consumed there (synchronous or an event) precedes this entry, so a
    /// replayer may run the guest that far. An FT primary logs one at the end
    /// of an exit that produced output (the output is tied to it) and with its
    /// heartbeats.
    Progress {
        /// The landmark the primary has run through.
        landmark: u64,
    },
    /// The last entry: how the run ended.
    RunEnd(RunEnd),
    /// How much of the guest's output the primary has released, counted per kind since boot
    /// (each `Outputs` call is one output). Sent by the primary's output thread, never
    /// replayed: a backup that goes live re-emits what its own guest produced beyond these
    /// counts, since the world may not have seen it (duplicates are absorbed by TCP).
    Released {
        /// Network packets sent.
        packets: u64,
        /// Console writes shown.
        console_writes: u64,
        /// Disk writes performed.
        disk_writes: u64,
    },
    /// Pages of a running guest's RAM, sent to a backup being added to it, before the rest of
    /// its state (pre-copy): (page index, its 4 KiB). A later copy of a page replaces an
    /// earlier one; a page never sent is all zeros.
    Pages(Vec<(u64, serde_bytes::ByteBuf)>),
    /// Blocks of a running guest's own disk image (`mode=own`), sent to a backup being added
    /// with the pages: (byte offset, data). The backup's image is zeroed first; a later copy
    /// of a block replaces an earlier one.
    DiskBlocks(Vec<(u64, serde_bytes::ByteBuf)>),
    /// Where a backup being added starts: the running guest's state apart from its RAM (an
    /// encoded snapshot, which the VMM defines), after the pages. The backup restores it and
    /// replays the entries that follow; a log begins with this or with a run start.
    ResumeFrom(serde_bytes::ByteBuf),
}

impl Entry {
    /// A short name for reports and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStart(_) => "run start",
            Entry::Input(entry) => entry.input.kind(),
            Entry::Progress { .. } => "progress",
            Entry::RunEnd(_) => "run end",
            Entry::Released { .. } => "released",
            Entry::Pages(_) => "pages",
            Entry::DiskBlocks(_) => "disk blocks",
            Entry::ResumeFrom(_) => "resume from",
        }
    }

    /// The landmark of the exit that consumed this entry's input, if it is an input.
    pub fn exit_landmark(&self) -> Option<u64> {
        match self {
            Entry::Input(entry) => Some(entry.point.landmark),
            _ => None,
        }
    }

    /// How far this entry proves the recorded guest's exits complete (every input consumed
    /// there precedes it): an input at landmark L is consumed only after every earlier exit
    /// finished, a progress entry says so of its landmark, and the run's end of all of them.
    pub fn exits_complete_through(&self) -> Option<u64> {
        match self {
            Entry::Input(entry) => Some(entry.point.landmark.saturating_sub(1)),
            Entry::Progress { landmark } => Some(*landmark),
            Entry::RunEnd(_) => Some(u64::MAX),
            Entry::RunStart(_)
            | Entry::Released { .. }
            | Entry::Pages(_)
            | Entry::DiskBlocks(_)
            | Entry::ResumeFrom(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameReader, FrameWriter};

    #[test]
    fn entries_round_trip_through_frames() {
        let entries = vec![
            Entry::RunStart(RunStart {
                mem_bytes: 1 << 27,
                cmdline: "role=stress seed=3".into(),
                entry_level: EntryLevel::Cpl3,
                kernel: vec![0x7f, b'E', b'L', b'F'],
                net_mac: Some([0x52, 0x54, 0, 0, 0, 1]),
                disk_bytes: None,
            }),
            Entry::Input(InputEntry {
                point: ExecPoint { landmark: 9, rip: 0x20_1000 },
                regs_hash: 42,
                input: Input::Waited(vec![
                    AsyncEvent::TimerExpired,
                    AsyncEvent::FrameReceived(vec![1; 60]),
                ]),
            }),
            Entry::Input(InputEntry {
                point: ExecPoint { landmark: 10, rip: 0x20_1004 },
                regs_hash: 43,
                input: Input::Entropy(vec![1, 2, 3]),
            }),
            Entry::Progress { landmark: 11 },
            Entry::RunEnd(RunEnd {
                landmarks: 12,
                outcome: "guest powered off with exit code 0".into(),
                exit_status: 0,
                console_hash: 1,
                memory_hash: 2,
                regs_hash: 3,
                stopped: false,
            }),
        ];
        let mut writer = FrameWriter::new(Vec::new(), 1, 0);
        for entry in &entries {
            writer.write_entry(entry).unwrap();
        }
        let bytes = writer.into_inner();
        let mut reader = FrameReader::<_, Entry>::new(bytes.as_slice(), 1, 0);
        for (index, entry) in entries.iter().enumerate() {
            assert_eq!(reader.read_entry().unwrap(), Some((index as u64 + 1, entry.clone())));
        }
        assert_eq!(reader.read_entry().unwrap(), None);
    }

    /// The byte strings encode exactly as the sequences of u8 they replaced
    /// (logs written before decode after, and the other way round).
    #[test]
    fn byte_strings_keep_the_sequence_encoding() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum AsSequence {
            TimerExpired,
            FrameReceived(Vec<u8>),
        }
        let frame: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let new = postcard::to_allocvec(&AsyncEvent::FrameReceived(frame.clone())).unwrap();
        let old = postcard::to_allocvec(&AsSequence::FrameReceived(frame.clone())).unwrap();
        assert_eq!(new, old);
        assert_eq!(
            postcard::from_bytes::<AsyncEvent>(&old).unwrap(),
            AsyncEvent::FrameReceived(frame.clone())
        );
        assert_eq!(
            postcard::from_bytes::<AsSequence>(&new).unwrap(),
            AsSequence::FrameReceived(frame)
        );
    }
}
