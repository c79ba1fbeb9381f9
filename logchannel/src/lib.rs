//! Log entries and the primary -> backup log channel (framing, acks, progress).
//!
//! [`frame`] turns entries into checksummed, sequence-numbered frames on any byte stream and
//! back; [`file`] stores such a stream in a versioned log file for record and replay; [`entry`]
//! is what the frames carry: the inputs a guest consumed and where; [`channel`] carries the
//! frames from a primary to its backup over TCP, with acks, heartbeats and failure detection;
//! [`pair`] holds the pair's decisions over those channels (release, arbitrate, go live).

pub mod channel;
pub mod entry;
pub mod file;
pub mod frame;
pub mod pair;

pub use channel::{
    AcceptedPrimary, BackupCore, BackupLink, BackupListener, BackupMessage, ChannelConfig,
    ChannelError, Credentials, Devices, HandshakeError, Hello, LeaseRule, Peer, PrimaryCore,
    PrimaryLink, PrimaryStats, Received, Sent, SessionKey, PROTOCOL_VERSION,
};
pub use entry::{AsyncEvent, Entry, EntryLevel, ExecPoint, Input, InputEntry, RunEnd, RunStart};
pub use file::{LogFileError, LogFileReader, LogFileWriter, FIRST_SEQ, FORMAT_VERSION};
pub use frame::{
    FrameDecoder, FrameEncoder, FrameError, FrameReader, FrameWriter, MAX_PAYLOAD_LEN_BYTES,
};
