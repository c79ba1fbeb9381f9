//! The wire format shared by every role: message types, postcard encoding and CRC32C framing.
//!
//! A frame on a byte stream is `len: u32 LE | crc32c(payload): u32 LE | payload`, where the
//! payload is the postcard encoding of one [`Envelope`]'s message.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A node in the cluster (master, chunkserver or client).
pub type NodeId = u32;
/// Names one chunk for its whole life.
pub type ChunkHandle = u64;
/// A chunk's version; a replica with a lower version than the master's is stale.
pub type Version = u64;
/// Matches a reply to its request (unique per sender).
pub type RequestId = u64;
/// Names pushed data in a chunkserver's buffer (unique per client).
pub type DataId = u64;

/// CRC32C (Castagnoli), as used for chunk blocks, log records and frames. Slice-by-16 tables
/// (16 KiB): checksums are the hottest code on the data path.
pub const CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The CRC32C of `bytes` ([`CRC32C`]'s checksum). With the `hardware-crc` feature (the host
/// simulators: the table took a third of gfs-sim's time) it is computed by the CPU's CRC32C
/// instruction where there is one; the guest kernel uses the table.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(feature = "hardware-crc")]
    {
        crc32c::crc32c(bytes)
    }
    #[cfg(not(feature = "hardware-crc"))]
    {
        CRC32C.checksum(bytes)
    }
}

/// Why an operation failed. Shared by every role so errors travel unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GfsError {
    /// No such file.
    NotFound,
    /// The file already exists.
    AlreadyExists,
    /// The path is not absolute or names the hidden trash.
    InvalidPath,
    /// The master is recovering or the chunk is in the middle of another change: retry.
    Busy,
    /// Not enough chunkservers are alive to place a chunk.
    NoChunkservers,
    /// No replica of the chunk is available.
    NoReplica,
    /// The receiver does not hold a lease for the chunk.
    NotPrimary,
    /// The replica's version does not match the request's.
    StaleVersion,
    /// The receiver does not hold the chunk.
    NoSuchChunk,
    /// A checksum did not match: the replica is corrupt.
    Checksum,
    /// The pushed data for a mutation is not in the buffer.
    DataMissing,
    /// A record is larger than a quarter chunk, or a write leaves the chunk.
    TooLarge,
    /// The record does not fit: the chunk was padded, append to the next one.
    ChunkFull,
    /// A secondary replica failed to apply a mutation.
    ReplicaFailed,
    /// No reply in time.
    Timeout,
    /// The local disk failed.
    Disk,
    /// The chunkserver has no room for another chunk.
    DiskFull,
}

/// A message with its addressee, as a role emits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Where it goes.
    pub to: NodeId,
    /// What it says.
    pub msg: Message,
}

/// Every message any role sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client -> master.
    MasterRequest { req: RequestId, op: MasterOp },
    /// Master -> client.
    MasterReply { req: RequestId, result: Result<MasterAnswer, GfsError> },
    /// Chunkserver -> master: the chunks it holds and the leases it wants extended.
    Heartbeat { chunks: Vec<ChunkReport>, extend_leases: Vec<ChunkHandle> },
    /// Master -> chunkserver: replicas to delete (each only if the local version is below the
    /// one given, so a delayed heartbeat never costs a current replica) and leases extended.
    HeartbeatReply { delete: Vec<ChunkReport>, extended: Vec<LeaseExtension> },
    /// Master -> chunkserver: a command that is acknowledged with `CommandReply`.
    Command { req: RequestId, cmd: ChunkCommand },
    /// Chunkserver -> master.
    CommandReply { req: RequestId, result: Result<(), GfsError> },
    /// Chunkserver -> master: a replica failed its checksum and was dropped.
    ReportCorrupt { handle: ChunkHandle },
    /// Client -> chunkserver (and along the chain): data for a later mutation.
    PushData {
        data_id: DataId,
        client: NodeId,
        #[serde(with = "byte_vec")]
        bytes: Vec<u8>,
        chain: Vec<NodeId>,
    },
    /// Chunkserver -> client: the pushed data is buffered here.
    PushAck { data_id: DataId },
    /// Client -> chunkserver.
    ReadChunk { req: RequestId, handle: ChunkHandle, version: Version, offset: u32, len: u32 },
    /// Chunkserver -> client: `bytes` holds the data when `result` is `Ok`.
    ReadReply {
        req: RequestId,
        result: Result<(), GfsError>,
        #[serde(with = "byte_vec")]
        bytes: Vec<u8>,
    },
    /// Client -> primary: apply buffered data.
    Mutate {
        req: RequestId,
        handle: ChunkHandle,
        version: Version,
        data_id: DataId,
        kind: MutationKind,
    },
    /// Primary -> client: the offset written within the chunk.
    MutateReply { req: RequestId, result: Result<u32, GfsError> },
    /// Primary -> secondary: apply mutation `serial` in the primary's order.
    Apply {
        handle: ChunkHandle,
        version: Version,
        serial: u64,
        lease_expiry_ms: u64,
        offset: u32,
        data: ApplyData,
    },
    /// Secondary -> primary.
    ApplyAck { handle: ChunkHandle, serial: u64, result: Result<(), GfsError> },
    /// Chunkserver -> chunkserver: read a piece of a chunk for re-replication.
    CopyRead { req: RequestId, handle: ChunkHandle, offset: u32, len: u32 },
    /// The answer to `CopyRead`.
    CopyReply { req: RequestId, result: Result<CopyPiece, GfsError> },
}

/// What a client asks the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterOp {
    Create {
        path: String,
    },
    Delete {
        path: String,
    },
    List {
        prefix: String,
    },
    FileInfo {
        path: String,
    },
    /// Locations of chunk `index` of `path` (for reads).
    Lookup {
        path: String,
        index: u64,
    },
    /// The lease holder of chunk `index` of `path`, creating the chunk if needed (for writes).
    GetLease {
        path: String,
        index: u64,
    },
    Snapshot {
        source: String,
        target: String,
    },
}

/// The master's successful answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterAnswer {
    Done,
    Listing(Vec<String>),
    FileInfo {
        chunk_count: u64,
    },
    /// `None`: the chunk was never written (a hole or past the end): it reads as zeros.
    Chunk(Option<ChunkLocation>),
    Lease(LeaseInfo),
}

/// Where a chunk's current replicas are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocation {
    pub handle: ChunkHandle,
    pub version: Version,
    pub replicas: Vec<NodeId>,
}

/// Who may order mutations of a chunk, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub handle: ChunkHandle,
    pub version: Version,
    pub primary: NodeId,
    pub secondaries: Vec<NodeId>,
    pub expiry_ms: u64,
}

/// One replica in a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReport {
    pub handle: ChunkHandle,
    pub version: Version,
}

/// A lease the master extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseExtension {
    pub handle: ChunkHandle,
    pub version: Version,
    pub expiry_ms: u64,
}

/// Master -> chunkserver commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkCommand {
    /// Create an empty replica.
    Create { handle: ChunkHandle, version: Version },
    /// Raise the replica's version (only from `from`, or from any lower version).
    SetVersion { handle: ChunkHandle, from: Version, to: Version },
    /// Become primary for the chunk until `expiry_ms`.
    GrantLease { handle: ChunkHandle, version: Version, expiry_ms: u64, secondaries: Vec<NodeId> },
    /// Give up the lease now (before a snapshot).
    RevokeLease { handle: ChunkHandle },
    /// Copy the replica from `source` (re-replication).
    CloneFrom { handle: ChunkHandle, version: Version, source: NodeId },
    /// Copy a local replica into a new chunk (copy-on-write after a snapshot).
    LocalCopy {
        source: ChunkHandle,
        source_version: Version,
        target: ChunkHandle,
        target_version: Version,
    },
}

/// What a client mutation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutationKind {
    /// Write at `offset` within the chunk.
    Write { offset: u32 },
    /// Append at an offset the primary chooses.
    Append,
}

/// The data of an `Apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyData {
    /// Pushed data from the buffer.
    Pushed(DataId),
    /// Zeros up to the end of the chunk (record-append padding).
    PadToEnd,
}

/// A piece of a replica copied for re-replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPiece {
    pub version: Version,
    pub chunk_len: u32,
    #[serde(with = "byte_vec")]
    pub bytes: Vec<u8>,
}

/// Encodes byte vectors as one length-prefixed run (serde's default is element by element).
/// Public so other wire formats (MapReduce) can use it with `#[serde(with = "gfs::wire::byte_vec")]`.
pub mod byte_vec {
    use alloc::vec::Vec;
    use core::fmt;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteVecVisitor)
    }

    struct ByteVecVisitor;

    impl<'de> Visitor<'de> for ByteVecVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::new();
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header announces: wait for more.
    Incomplete,
    /// The checksum does not match.
    Checksum,
    /// The payload is not a valid message.
    Decode,
}

/// Bytes of `len` and `crc` ahead of every frame's payload.
pub const FRAME_HEADER_BYTES: usize = 8;

/// First field of the hello frame ("GFSH").
pub const HELLO_MAGIC: u32 = 0x4746_5348;

/// The hello frame the dialler of a mesh stream sends first: which node is on this end. The
/// guests' mesh and the host clients both speak it.
pub fn encode_hello(me: NodeId) -> Vec<u8> {
    encode_frame_of(&(HELLO_MAGIC, me))
}

/// Decodes a hello frame at the front of `bytes`: the dialler's node id and the bytes used.
/// A frame that is not a hello is [`FrameError::Decode`].
pub fn decode_hello(bytes: &[u8]) -> Result<(NodeId, usize), FrameError> {
    match decode_frame_of::<(u32, NodeId)>(bytes)? {
        ((HELLO_MAGIC, node), used) => Ok((node, used)),
        _ => Err(FrameError::Decode),
    }
}

/// A message type that crosses the mesh as one frame of this format (GFS's messages, and other
/// services' that share the mesh), so a transport can carry any of them.
pub trait FramedMessage {
    /// Encodes the message as one frame.
    fn to_frame(&self) -> Vec<u8>;
}

impl FramedMessage for Message {
    fn to_frame(&self) -> Vec<u8> {
        encode_frame(self)
    }
}

/// Encodes `msg` as one frame.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    encode_frame_of(msg)
}

/// Decodes the first frame in `bytes`, returning the message and the bytes it used.
pub fn decode_frame(bytes: &[u8]) -> Result<(Message, usize), FrameError> {
    decode_frame_of(bytes)
}

/// Encodes any serializable value in the same frame format (used by other services' wire
/// formats, e.g. MapReduce).
pub fn encode_frame_of<T: Serialize>(value: &T) -> Vec<u8> {
    // The payload is serialized in place behind room for the header (no second buffer).
    let mut frame = Vec::with_capacity(64);
    frame.resize(FRAME_HEADER_BYTES, 0);
    let mut frame = postcard::to_extend(value, frame).expect("messages always serialize");
    let payload = &frame[FRAME_HEADER_BYTES..];
    let header = [(payload.len() as u32).to_le_bytes(), crc32c(payload).to_le_bytes()];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(header.as_flattened());
    frame
}

/// Decodes the first frame in `bytes` as a `T`, returning it and the bytes it used.
pub fn decode_frame_of<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let end = FRAME_HEADER_BYTES + len;
    if bytes.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if crc32c(payload) != crc {
        return Err(FrameError::Checksum);
    }
    let msg = postcard::from_bytes(payload).map_err(|_| FrameError::Decode)?;
    Ok((msg, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Message {
        Message::Apply {
            handle: 7,
            version: 3,
            serial: 9,
            lease_expiry_ms: 1000,
            offset: 512,
            data: ApplyData::Pushed(42),
        }
    }

    #[test]
    fn frame_round_trips_two_messages_back_to_back() {
        let second =
            Message::PushData { data_id: 1, client: 100, bytes: vec![1, 2, 3], chain: vec![2, 3] };
        let mut stream = encode_frame(&sample());
        stream.extend_from_slice(&encode_frame(&second));
        let (first_msg, used) = decode_frame(&stream).unwrap();
        assert_eq!(first_msg, sample());
        let (second_msg, used_second) = decode_frame(&stream[used..]).unwrap();
        assert_eq!(second_msg, second);
        assert_eq!(used + used_second, stream.len());
    }

    #[test]
    fn frame_rejects_corruption_and_truncation() {
        let frame = encode_frame(&sample());
        let mut corrupt = frame.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x40;
        assert_eq!(decode_frame(&corrupt), Err(FrameError::Checksum));
        assert_eq!(decode_frame(&frame[..frame.len() - 1]), Err(FrameError::Incomplete));
        assert_eq!(decode_frame(&frame[..3]), Err(FrameError::Incomplete));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 1000] {
            assert_eq!(crc32c(&bytes[..len]), CRC32C.checksum(&bytes[..len]), "{len} bytes");
        }
    }
}
