//! Shared by the integration tests: an entry type standing in for the VMM's, its proptest
//! strategy, and helpers that encode and decode whole streams.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use logchannel::{FrameError, FrameReader, FrameWriter};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Variants of different shapes, so that frames differ in length and encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TestEntry {
    Landmark { landmark: u64, rip: u64 },
    ClockRead(i64),
    Entropy(Vec<u8>),
    Console(String),
    Halt,
}

pub fn test_entry() -> impl Strategy<Value = TestEntry> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(landmark, rip)| TestEntry::Landmark { landmark, rip }),
        any::<i64>().prop_map(TestEntry::ClockRead),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(TestEntry::Entropy),
        "[a-z ]{0,16}".prop_map(TestEntry::Console),
        Just(TestEntry::Halt),
    ]
}

/// A stream of frames and where each frame starts.
pub struct EncodedStream {
    pub bytes: Vec<u8>,
    pub frame_offsets_bytes: Vec<u64>,
}

impl EncodedStream {
    /// The bytes of frame `index`.
    pub fn frame(&self, index: usize) -> &[u8] {
        let start = self.frame_offsets_bytes[index] as usize;
        let end = self
            .frame_offsets_bytes
            .get(index + 1)
            .map_or(self.bytes.len(), |&offset| offset as usize);
        &self.bytes[start..end]
    }

    /// The index of the frame that holds byte `offset_bytes`.
    pub fn frame_holding(&self, offset_bytes: u64) -> usize {
        self.frame_offsets_bytes.partition_point(|&start| start <= offset_bytes) - 1
    }
}

pub fn encode_stream(entries: &[TestEntry], first_seq: u64) -> EncodedStream {
    let mut writer = FrameWriter::new(Vec::new(), first_seq, 0);
    let mut frame_offsets_bytes = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        frame_offsets_bytes.push(writer.offset_bytes());
        let seq = writer.write_entry(entry).expect("encoding into a Vec");
        assert_eq!(seq, first_seq + index as u64);
    }
    EncodedStream { bytes: writer.into_inner(), frame_offsets_bytes }
}

/// Everything a reader returns before its first error or the clean end, and how it stopped.
pub fn read_stream(
    bytes: &[u8],
    first_seq: u64,
) -> (Vec<(u64, TestEntry)>, Result<(), FrameError>) {
    let mut reader = FrameReader::new(bytes, first_seq, 0);
    read_until_end(|| reader.read_entry())
}

/// Calls `read_entry` until it reports the end or an error; returns the entries read before
/// and how it stopped.
pub fn read_until_end(
    mut read_entry: impl FnMut() -> Result<Option<(u64, TestEntry)>, FrameError>,
) -> (Vec<(u64, TestEntry)>, Result<(), FrameError>) {
    let mut entries = Vec::new();
    loop {
        match read_entry() {
            Ok(Some(frame)) => entries.push(frame),
            Ok(None) => return (entries, Ok(())),
            Err(error) => return (entries, Err(error)),
        }
    }
}

/// `entries` numbered from `first_seq`, as a reader returns them.
pub fn numbered(entries: &[TestEntry], first_seq: u64) -> Vec<(u64, TestEntry)> {
    (first_seq..).zip(entries.iter().cloned()).collect()
}
