//! Log files: round trip, header checks (magic, version), and frame errors at file offsets.

mod common;

use std::fs;

use common::{numbered, read_until_end, test_entry, TestEntry};
use logchannel::file::{LOG_FILE_HEADER_LEN_BYTES, LOG_FILE_MAGIC};
use logchannel::{
    FrameError, LogFileError, LogFileReader, LogFileWriter, FIRST_SEQ, FORMAT_VERSION,
};
use proptest::prelude::*;

fn read_log(path: &std::path::Path) -> (Vec<(u64, TestEntry)>, Result<(), FrameError>) {
    let mut reader = LogFileReader::<TestEntry>::open(path).expect("header is valid");
    read_until_end(|| reader.read_entry())
}

fn write_log(path: &std::path::Path, entries: &[TestEntry]) -> u64 {
    let mut writer = LogFileWriter::create(path).unwrap();
    for entry in entries {
        writer.write_entry(entry).unwrap();
    }
    let len_bytes = writer.len_bytes();
    writer.finish().unwrap();
    len_bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn log_files_round_trip(entries in proptest::collection::vec(test_entry(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.ftvmlog");
        let len_bytes = write_log(&path, &entries);
        prop_assert_eq!(fs::metadata(&path).unwrap().len(), len_bytes);
        let (decoded, end) = read_log(&path);
        prop_assert!(end.is_ok(), "{end:?}");
        prop_assert_eq!(decoded, numbered(&entries, FIRST_SEQ));
    }
}

#[test]
fn the_header_is_magic_then_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.ftvmlog");
    assert_eq!(write_log(&path, &[]), LOG_FILE_HEADER_LEN_BYTES);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes[..8], *b"FTVMLOG\0");
    assert_eq!(bytes[8..], FORMAT_VERSION.to_le_bytes());
    let (decoded, end) = read_log(&path);
    assert!(decoded.is_empty() && end.is_ok());
}

#[test]
fn other_versions_are_refused_saying_which() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versioned.ftvmlog");
    for (file_version, relation) in [(FORMAT_VERSION + 1, "newer"), (FORMAT_VERSION - 1, "older")] {
        let mut bytes = LOG_FILE_MAGIC.to_vec();
        bytes.extend_from_slice(&file_version.to_le_bytes());
        fs::write(&path, bytes).unwrap();
        let error = LogFileReader::<TestEntry>::open(&path).unwrap_err();
        assert!(
            matches!(error, LogFileError::UnsupportedVersion { file_version: v, .. } if v == file_version)
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "format version {file_version}, {relation} than version {FORMAT_VERSION}"
            )),
            "{message}"
        );
    }
}

#[test]
fn files_without_the_magic_are_not_ftvm_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other");
    for contents in [&b""[..], b"FTVMLOG", b"FTVMLOG\0\x01", b"ELF\x7f and more than twelve"] {
        fs::write(&path, contents).unwrap();
        let error = LogFileReader::<TestEntry>::open(&path).unwrap_err();
        assert!(matches!(error, LogFileError::NotAnFtvmLog { .. }), "{error:?}");
        assert!(error.to_string().contains("not an ftvm log"), "{error}");
    }
}

#[test]
fn every_bit_flip_in_the_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.ftvmlog");
    write_log(&path, &[TestEntry::Halt]);
    let intact = fs::read(&path).unwrap();
    for bit_index in 0..LOG_FILE_HEADER_LEN_BYTES as usize * 8 {
        let mut bytes = intact.clone();
        bytes[bit_index / 8] ^= 1 << (bit_index % 8);
        fs::write(&path, &bytes).unwrap();
        let error = LogFileReader::<TestEntry>::open(&path).unwrap_err();
        let in_magic = bit_index < LOG_FILE_MAGIC.len() * 8;
        assert_eq!(
            matches!(error, LogFileError::NotAnFtvmLog { .. }),
            in_magic,
            "bit {bit_index}: {error:?}"
        );
    }
}

#[test]
fn frame_errors_give_file_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.ftvmlog");
    let len_bytes = write_log(&path, &[TestEntry::ClockRead(1), TestEntry::ClockRead(2)]);
    let second_frame_offset_bytes =
        LOG_FILE_HEADER_LEN_BYTES + (len_bytes - LOG_FILE_HEADER_LEN_BYTES) / 2;
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let (decoded, end) = read_log(&path);
    assert_eq!(decoded, vec![(FIRST_SEQ, TestEntry::ClockRead(1))]);
    match end {
        Err(FrameError::Truncated { expected_seq, offset_bytes, .. }) => {
            assert_eq!(expected_seq, FIRST_SEQ + 1);
            assert_eq!(offset_bytes, second_frame_offset_bytes);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_file_names_its_path() {
    let error = LogFileReader::<TestEntry>::open("/nonexistent/ftvm/run.log").unwrap_err();
    assert!(error.to_string().starts_with("/nonexistent/ftvm/run.log: "), "{error}");
}
