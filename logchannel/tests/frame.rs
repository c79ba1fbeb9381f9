//! Properties of the frame format: round trips, and every corruption, truncation, duplicate or
//! reordering is reported with the right sequence number and offset, never returned as an entry.

mod common;

use common::{encode_stream, numbered, read_stream, test_entry, TestEntry};
use logchannel::frame::FRAME_HEADER_LEN_BYTES;
use logchannel::{FrameDecoder, FrameEncoder, FrameError, FrameWriter, MAX_PAYLOAD_LEN_BYTES};
use proptest::prelude::*;

/// Far from zero too, so that no code quietly assumes streams start at sequence number 0 or 1.
fn first_seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1u64), 0..u64::MAX / 2]
}

/// Feeds `bytes` to a decoder in chunks of the given lengths (cycled), draining frames after
/// each push, and returns what it yields in the shape of `read_stream`'s result.
fn decode_in_chunks(
    bytes: &[u8],
    first_seq: u64,
    chunk_lens_bytes: &[usize],
) -> (Vec<(u64, TestEntry)>, Result<(), FrameError>) {
    let mut decoder = FrameDecoder::<TestEntry>::new(first_seq, 0);
    let mut entries = Vec::new();
    let mut remaining = bytes;
    for &chunk_len_bytes in chunk_lens_bytes.iter().cycle() {
        if remaining.is_empty() {
            break;
        }
        let (chunk, rest) = remaining.split_at(chunk_len_bytes.min(remaining.len()));
        remaining = rest;
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => entries.push(frame),
                Ok(None) => break,
                Err(error) => return (entries, Err(error)),
            }
        }
    }
    (entries, decoder.finish())
}

fn flip_bit(bytes: &[u8], bit_index: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[bit_index / 8] ^= 1 << (bit_index % 8);
    flipped
}

proptest! {
    #[test]
    fn entries_round_trip(
        entries in proptest::collection::vec(test_entry(), 0..40),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        let (decoded, end) = read_stream(&stream.bytes, first_seq);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert_eq!(decoded, numbered(&entries, first_seq));
    }

    #[test]
    fn every_single_bit_flip_is_detected_at_its_frame(
        entries in proptest::collection::vec(test_entry(), 1..5),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        for bit_index in 0..stream.bytes.len() * 8 {
            let flipped = flip_bit(&stream.bytes, bit_index);
            let (decoded, end) = read_stream(&flipped, first_seq);
            let damaged_frame = stream.frame_holding((bit_index / 8) as u64);
            // Frames before the damaged one are intact and come out; nothing from it or after.
            prop_assert_eq!(&decoded, &numbered(&entries[..damaged_frame], first_seq));
            let error = end.expect_err("a flipped bit went undetected");
            prop_assert_eq!(error.expected_seq(), first_seq + damaged_frame as u64);
            prop_assert_eq!(error.offset_bytes(), stream.frame_offsets_bytes[damaged_frame]);
        }
    }

    #[test]
    fn every_truncation_is_detected(
        entries in proptest::collection::vec(test_entry(), 1..5),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        for cut_len_bytes in 0..stream.bytes.len() {
            let (decoded, end) = read_stream(&stream.bytes[..cut_len_bytes], first_seq);
            let cut_offset_bytes = cut_len_bytes as u64;
            let cut_frame = stream.frame_holding(cut_offset_bytes);
            prop_assert_eq!(&decoded, &numbered(&entries[..cut_frame], first_seq));
            let frame_offset_bytes = stream.frame_offsets_bytes[cut_frame];
            if frame_offset_bytes == cut_offset_bytes {
                prop_assert!(end.is_ok(), "cut on a frame boundary: {end:?}");
                continue;
            }
            match end {
                Err(FrameError::Truncated {
                    expected_seq,
                    offset_bytes,
                    available_len_bytes,
                    needed_len_bytes,
                }) => {
                    prop_assert_eq!(expected_seq, first_seq + cut_frame as u64);
                    prop_assert_eq!(offset_bytes, frame_offset_bytes);
                    prop_assert_eq!(available_len_bytes, cut_offset_bytes - frame_offset_bytes);
                    let frame_len_bytes = stream.frame(cut_frame).len() as u64;
                    let header_len_bytes = FRAME_HEADER_LEN_BYTES as u64;
                    let expected_needed_len_bytes = if available_len_bytes < header_len_bytes {
                        header_len_bytes
                    } else {
                        frame_len_bytes
                    };
                    prop_assert_eq!(needed_len_bytes, expected_needed_len_bytes);
                }
                other => prop_assert!(false, "cut at {cut_len_bytes}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_repeated_frame_is_a_duplicate(
        entries in proptest::collection::vec(test_entry(), 1..8),
        repeated_index in any::<prop::sample::Index>(),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        let repeated = repeated_index.index(entries.len());
        let mut bytes = stream.bytes.clone();
        let repeat_offset_bytes = stream.frame_offsets_bytes[repeated] as usize
            + stream.frame(repeated).len();
        bytes.splice(repeat_offset_bytes..repeat_offset_bytes, stream.frame(repeated).to_vec());
        let (decoded, end) = read_stream(&bytes, first_seq);
        prop_assert_eq!(&decoded, &numbered(&entries[..=repeated], first_seq));
        let expected = FrameError::Duplicate {
            expected_seq: first_seq + repeated as u64 + 1,
            offset_bytes: repeat_offset_bytes as u64,
            found_seq: first_seq + repeated as u64,
        };
        prop_assert_eq!(format!("{end:?}"), format!("{:?}", Err::<(), _>(expected)));
    }

    #[test]
    fn swapped_frames_are_a_gap(
        entries in proptest::collection::vec(test_entry(), 2..8),
        first_index in any::<prop::sample::Index>(),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        let early = first_index.index(entries.len() - 1);
        let late = early + 1;
        let start = stream.frame_offsets_bytes[early] as usize;
        let pair_end = start + stream.frame(early).len() + stream.frame(late).len();
        let mut bytes = stream.bytes.clone();
        bytes.splice(start..pair_end, [stream.frame(late), stream.frame(early)].concat());
        let (decoded, end) = read_stream(&bytes, first_seq);
        prop_assert_eq!(&decoded, &numbered(&entries[..early], first_seq));
        let expected = FrameError::Gap {
            expected_seq: first_seq + early as u64,
            offset_bytes: start as u64,
            found_seq: first_seq + late as u64,
        };
        prop_assert_eq!(format!("{end:?}"), format!("{:?}", Err::<(), _>(expected)));
    }

    #[test]
    fn a_missing_frame_is_a_gap(
        entries in proptest::collection::vec(test_entry(), 2..8),
        dropped_index in any::<prop::sample::Index>(),
        first_seq in first_seq(),
    ) {
        let stream = encode_stream(&entries, first_seq);
        // Not the last frame: dropping it leaves a shorter but valid stream.
        let dropped = dropped_index.index(entries.len() - 1);
        let start = stream.frame_offsets_bytes[dropped] as usize;
        let mut bytes = stream.bytes.clone();
        bytes.drain(start..start + stream.frame(dropped).len());
        let (decoded, end) = read_stream(&bytes, first_seq);
        prop_assert_eq!(&decoded, &numbered(&entries[..dropped], first_seq));
        let expected = FrameError::Gap {
            expected_seq: first_seq + dropped as u64,
            offset_bytes: start as u64,
            found_seq: first_seq + dropped as u64 + 1,
        };
        prop_assert_eq!(format!("{end:?}"), format!("{:?}", Err::<(), _>(expected)));
    }

    /// The decoder fed arbitrary chunks yields what the reader yields on the whole stream, for
    /// intact streams, damaged ones and cut ones alike.
    #[test]
    fn chunked_decoding_matches_whole_stream_reading(
        entries in proptest::collection::vec(test_entry(), 0..12),
        chunk_lens_bytes in proptest::collection::vec(1usize..40, 1..10),
        damage in prop_oneof![
            Just(None),
            any::<prop::sample::Index>().prop_map(|at| Some((at, true))),
            any::<prop::sample::Index>().prop_map(|at| Some((at, false))),
        ],
        first_seq in first_seq(),
    ) {
        let mut bytes = encode_stream(&entries, first_seq).bytes;
        match damage {
            Some((at, true)) if !bytes.is_empty() => {
                bytes = flip_bit(&bytes, at.index(bytes.len() * 8));
            }
            Some((at, false)) if !bytes.is_empty() => bytes.truncate(at.index(bytes.len())),
            _ => {}
        }
        let (whole_entries, whole_end) = read_stream(&bytes, first_seq);
        let (chunked_entries, chunked_end) = decode_in_chunks(&bytes, first_seq, &chunk_lens_bytes);
        prop_assert_eq!(chunked_entries, whole_entries);
        prop_assert_eq!(format!("{chunked_end:?}"), format!("{whole_end:?}"));
    }
}

#[test]
fn a_length_over_the_maximum_is_refused_before_the_payload_arrives() {
    for payload_len_bytes in [MAX_PAYLOAD_LEN_BYTES + 1, u32::MAX] {
        let mut decoder = FrameDecoder::<TestEntry>::new(7, 100);
        decoder.push(&payload_len_bytes.to_le_bytes());
        decoder.push(&[0; 4]);
        for _ in 0..2 {
            // Asked twice: the decoder stays on the bad frame and reports it again.
            match decoder.next_frame() {
                Err(FrameError::PayloadTooLong {
                    expected_seq: 7,
                    offset_bytes: 100,
                    payload_len_bytes: reported,
                }) => assert_eq!(reported, u64::from(payload_len_bytes)),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn the_writer_refuses_an_entry_over_the_maximum_and_keeps_its_seq() {
    let mut writer = FrameWriter::new(Vec::new(), 5, 0);
    let too_big = TestEntry::Entropy(vec![0; MAX_PAYLOAD_LEN_BYTES as usize]);
    match writer.write_entry(&too_big) {
        Err(FrameError::PayloadTooLong { expected_seq: 5, offset_bytes: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(writer.write_entry(&TestEntry::Halt).unwrap(), 5);
    let (decoded, end) = read_stream(&writer.into_inner(), 5);
    end.unwrap();
    assert_eq!(decoded, vec![(5, TestEntry::Halt)]);
}

#[test]
fn a_checksummed_frame_of_another_entry_type_is_a_decode_error_not_an_entry() {
    #[derive(serde::Serialize)]
    enum OtherEntry {
        #[allow(dead_code)]
        A,
        #[allow(dead_code)]
        B,
        Unknown(u8),
    }
    let mut encoder = FrameEncoder::new(3, 0);
    let mut bytes = Vec::new();
    encoder.encode(&OtherEntry::Unknown(1), &mut bytes).unwrap();
    let (decoded, end) = read_stream(&bytes, 3);
    assert!(decoded.is_empty());
    // Variant 2 of TestEntry is Entropy, whose length prefix 1 promises a byte that is missing.
    assert!(
        matches!(end, Err(FrameError::Decode { expected_seq: 3, offset_bytes: 0, .. })),
        "{end:?}"
    );
}

#[test]
fn bytes_after_the_entry_in_a_checksummed_frame_are_refused() {
    let mut encoder = FrameEncoder::new(0, 0);
    let mut bytes = Vec::new();
    // (seq 0, Halt = variant 4) followed by one extra byte that Halt does not account for.
    encoder.encode(&(4u8, 9u8), &mut bytes).unwrap();
    let (decoded, end) = read_stream(&bytes, 0);
    assert!(decoded.is_empty());
    assert!(matches!(end, Err(FrameError::TrailingBytes { trailing_len_bytes: 1, .. })), "{end:?}");
}

#[test]
fn errors_name_the_frame_in_words() {
    let stream = encode_stream(&[TestEntry::Halt, TestEntry::ClockRead(-3)], 10);
    let flipped = flip_bit(&stream.bytes, stream.bytes.len() * 8 - 1);
    let message = read_stream(&flipped, 10).1.unwrap_err().to_string();
    let second_offset_bytes = stream.frame_offsets_bytes[1];
    assert!(
        message.contains("checksum mismatch in frame seq 11")
            && message.contains(&format!("offset {second_offset_bytes}")),
        "{message}"
    );
}

#[test]
fn a_frame_is_appended_after_the_bytes_before_it_with_the_iscsi_crc_of_length_and_payload() {
    let mut encoder = FrameEncoder::new(0, 0);
    let mut bytes = vec![0xAA, 0xBB];
    encoder.encode(&(4u8, 9u8), &mut bytes).unwrap();
    // Payload: postcard (seq 0, 4, 9); CRC-32C (Castagnoli) of [3, 0, 0, 0, 0, 4, 9] is
    // 0x3503A525, as any implementation of the iSCSI polynomial computes it: log files written
    // before keep their checksums.
    assert_eq!(bytes, [0xAA, 0xBB, 3, 0, 0, 0, 0x25, 0xA5, 0x03, 0x35, 0, 4, 9]);
}

#[test]
fn an_entry_over_the_maximum_leaves_the_bytes_before_it_alone() {
    let mut encoder = FrameEncoder::new(7, 0);
    let mut bytes = vec![1, 2, 3];
    let too_big = TestEntry::Entropy(vec![0; MAX_PAYLOAD_LEN_BYTES as usize]);
    assert!(matches!(
        encoder.encode(&too_big, &mut bytes),
        Err(FrameError::PayloadTooLong { expected_seq: 7, .. })
    ));
    assert_eq!(bytes, [1, 2, 3]);
    assert_eq!(encoder.next_seq(), 7);
}

#[test]
fn whole_frames_decode_like_the_stream_and_a_bad_one_stays_an_error() {
    let entries = [TestEntry::Halt, TestEntry::ClockRead(-3), TestEntry::Entropy(vec![7; 300])];
    let stream = encode_stream(&entries, 20);
    let mut decoder = FrameDecoder::<TestEntry>::new(20, 0);
    for (index, entry) in entries.iter().enumerate() {
        let decoded = decoder.decode(stream.frame(index)).unwrap();
        assert_eq!(decoded, Some((20 + index as u64, entry.clone())));
    }
    assert_eq!(decoder.offset_bytes(), stream.bytes.len() as u64);

    let mut decoder = FrameDecoder::<TestEntry>::new(20, 0);
    let mut corrupted = stream.frame(0).to_vec();
    *corrupted.last_mut().unwrap() ^= 1;
    let first = decoder.decode(&corrupted).unwrap_err().to_string();
    assert!(first.contains("checksum mismatch in frame seq 20"), "{first}");
    assert_eq!(decoder.next_frame().unwrap_err().to_string(), first);
}
