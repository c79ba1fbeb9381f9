//! The primary -> backup log channel over TCP (DESIGN §5).
//!
//! # Opening: an authenticated, versioned handshake
//!
//! A connection becomes a channel only through [`handshake`]: both sides prove they hold the
//! pair's key (HMAC-SHA256 challenge-response over fresh nonces), and agree on the protocol
//! version, the pair id and its generation; the backup also checks the primary's guest devices
//! against its own attachments. Any mismatch is refused with a reason both sides report. The
//! backup's [`BackupListener`] runs each connection's handshake on a thread of its own, hands out
//! the first primary that passes, and refuses (and names) every other connection, before and
//! after.
//!
//! # Wire format
//!
//! Primary -> backup: the log itself, frames of [`Entry`] exactly as in a log file
//! ([`crate::frame`]: length, CRC32C, postcard `(seq, entry)`), sequence numbers from
//! [`FIRST_SEQ`](crate::FIRST_SEQ). Backup -> primary: frames of [`BackupMessage`] in the same
//! framing with their own sequence numbers. Every frame, both ways, is followed by a tag under
//! the session key ([`session`]), so a frame from a stranger, another session or another
//! position is refused before it is decoded.
//!
//! # Acks, heartbeats and failure detection
//!
//! The backup acknowledges the highest contiguous sequence number it has received, as soon as a
//! read from the socket has been decoded (before anything is replayed), one ack per read however
//! many frames it held. When it has sent nothing for `heartbeat_interval_ms` it repeats its ack:
//! that is its heartbeat. Each ack says whether the backup is reading (it stops while its replay
//! is behind, which stalls acks without the backup being dead).
//!
//! The primary's heartbeat is an ordinary log entry, [`Entry::Progress`] carrying the highest
//! landmark through which the VMM said its guest's exits are complete (in a progress entry, or
//! with [`PrimaryCore::note_exits_complete`]; 0 before any), sent when nothing
//! was sent for `heartbeat_interval_ms`. Chosen over a separate message because (1) the
//! primary -> backup stream stays exactly the log format, one decoder and one set of checks, and
//! the contiguity check covers heartbeats too; (2) its ack is a round trip that proves the whole
//! path, backup included, alive; (3) it tells the replayer nothing false (progress never moves
//! backwards, the replayer keeps the maximum) and costs ~12 bytes per interval, sent only while
//! the VMM is idle, since the VMM already logs progress about every millisecond while it runs.
//!
//! Either side presumes its peer dead when it has received nothing for `failure_timeout_ms`
//! ([`ChannelError::PeerSilent`]), or at once when the connection ends or fails
//! ([`ChannelError::Disconnected`]); the primary also when the backup, while reading, has
//! acknowledged nothing new for that long ([`ChannelError::Unacknowledged`]: the link is cut
//! towards the backup only). All are peer failures ([`ChannelError::is_peer_failure`]): the side
//! should go to the arbiter. Bad data ([`ChannelError::Corrupt`],
//! [`ChannelError::Unauthenticated`], [`ChannelError::Protocol`]) is not: it is reported, and
//! nothing after it is delivered.
//!
//! # Fencing
//!
//! The primary may release output only under its lease ([`PrimaryCore::lease_valid`]), renewed
//! by acks of entries sent within the failure timeout minus a margin; the backup goes live no
//! earlier than the failure timeout after it last heard the primary
//! ([`crate::pair::backup::BackupPair::replay_ran_out`]). So the two never release output for
//! the same stretch of time, whichever way the link fails.
//!
//! # Layers
//!
//! [`PrimaryCore`] and [`BackupCore`] are sans-IO: they take received bytes and the current time
//! in ns and hand back bytes to send and what happened; no sockets, clock or threads. They are
//! what the property tests drive. [`PrimaryLink`] and [`BackupLink`] run them over a `TcpStream`
//! with a reader thread per side (and a writer thread on the primary, so that `send` never
//! blocks).

pub mod handshake;
mod link;
mod sans_io;
pub mod session;

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::frame::FrameError;

pub use self::handshake::{Credentials, Devices, HandshakeError, Hello, PROTOCOL_VERSION};
pub use self::link::{AcceptedPrimary, BackupLink, BackupListener, PrimaryLink, PrimaryStats};
pub use self::sans_io::{BackupCore, PrimaryCore, Received, Sent};
pub use self::session::{Direction, SessionKey};

/// Timing and buffering of a channel endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat_interval_ms: u64,
    /// Presume the peer dead when nothing was received from it for this long.
    pub failure_timeout_ms: u64,
    /// How long [`PrimaryLink::connect`] tries to reach the backup.
    pub connect_timeout_ms: u64,
    /// How long each step of the handshake may wait for the peer.
    pub handshake_timeout_ms: u64,
    /// The backup stops reading from the socket while this many bytes of received entries wait
    /// to be taken by `recv`; the primary's unacknowledged log then grows until its lag bound
    /// slows it down.
    pub max_received_bytes: u64,
    /// What renews the primary's lease. Always [`LeaseRule::AckOfEntrySent`] in ftvm; the
    /// other rule exists so the FT simulator can show it catches that classic mistake.
    pub lease_rule: LeaseRule,
}

/// What renews the primary's lease (see [`PrimaryCore`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseRule {
    /// An ack of an entry sent at T renews it to T + failure timeout - margin: safe whichever
    /// way the link fails.
    #[default]
    AckOfEntrySent,
    /// Broken, for the simulator only: anything heard from the backup (its heartbeats too)
    /// renews it from the time of receipt. With the link cut towards the backup only, or a
    /// primary that wakes from a pause to find old heartbeats, it releases output after the
    /// backup went live.
    AnythingHeard,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            heartbeat_interval_ms: 20,
            failure_timeout_ms: 300,
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 3_000,
            max_received_bytes: 32 << 20,
            lease_rule: LeaseRule::AckOfEntrySent,
        }
    }
}

impl ChannelConfig {
    /// How often the link threads wake to send heartbeats and check the peer, in ms.
    fn tick_ms(&self) -> u64 {
        self.heartbeat_interval_ms.min(self.failure_timeout_ms / 4).clamp(1, 50)
    }

    /// How much shorter than the failure timeout the primary's lease is, in ms: it covers a
    /// difference in clock rate between the two hosts and the scheduling delay between the
    /// lease check and the write it allows. A tenth of the timeout, at least 1 ms.
    pub fn lease_margin_ms(&self) -> u64 {
        (self.failure_timeout_ms / 10).max(1)
    }

    /// How long the backup waits, after it last heard the primary, before it takes the guest's
    /// inbound traffic and keeps it for go-live, in ms: half the failure timeout. A client
    /// whose packets were lost with the primary resends them when its retransmission timer
    /// fires (Linux: 200 ms, doubling); one of those resends falls between half the timeout
    /// and the timeout for every timeout of 300 ms and more, so it reaches the live guest at
    /// go-live instead of a backed-off timer later.
    pub fn capture_after_ms(&self) -> u64 {
        self.failure_timeout_ms / 2
    }

    /// How long a primary that lost its backup lets the backup ask the arbiter first, in ms: a
    /// sixth of the failure timeout. With the log link cut both sides lose each other at once;
    /// the backup has taken the guest's inbound traffic by then, so it is the side that goes on
    /// without losing a client's packets.
    pub fn primary_defers_ms(&self) -> u64 {
        self.failure_timeout_ms / 6
    }
}

/// Which end of the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The side that runs the guest and sends the log.
    Primary,
    /// The side that replays the log.
    Backup,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Peer::Primary => "primary",
            Peer::Backup => "backup",
        })
    }
}

/// What the backup sends the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupMessage {
    /// Every log entry up to and including `acked_seq` has been received (0: none yet). Sent on
    /// receipt, and repeated as the backup's heartbeat.
    Ack {
        /// The highest contiguous sequence number received.
        acked_seq: u64,
        /// The highest sequence number handed to the replay (never above `acked_seq`): the
        /// primary's lag bound holds the guest back on this, so going live after a failure
        /// never has more than the bound left to replay.
        replayed_seq: u64,
        /// False while the backup has stopped reading the log because its replay is behind
        /// (backpressure): acks then stall although the backup is alive, and it cannot go live
        /// while it does not read, so the primary waits instead of presuming it dead.
        receiving: bool,
        /// How many times the backup has announced the guest's MAC on its own network, having
        /// not heard the primary for half the failure timeout: the LAN then sends the guest's
        /// traffic to the backup, so a primary that hears this count grow announces again.
        announced: u64,
    },
}

/// Why the channel cannot go on (or, for [`ChannelError::Encode`], why one entry was refused).
///
/// Cloneable so that every caller waiting on a failed link gets the same report; the sources are
/// shared behind `Arc`s for that.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ChannelError {
    /// Nothing arrived from the peer within the failure timeout: it is presumed dead.
    #[error(
        "log channel: nothing from the {peer} for {silent_ms} ms (failure timeout \
         {failure_timeout_ms} ms): the {peer} is presumed dead"
    )]
    PeerSilent {
        /// Who went silent.
        peer: Peer,
        /// How long it has been silent.
        silent_ms: u64,
        /// The configured failure timeout.
        failure_timeout_ms: u64,
    },
    /// The connection ended or failed (EOF, reset, a send that failed).
    #[error("log channel: the connection to the {peer} ended: {detail}")]
    Disconnected {
        /// The other end.
        peer: Peer,
        /// What happened.
        detail: String,
    },
    /// The peer sent bytes that are not the next valid frame: corrupted, duplicated, out of
    /// order. Nothing from that frame on is delivered.
    #[error("log channel: bad data from the {peer}: {source}")]
    Corrupt {
        /// Who sent it.
        peer: Peer,
        /// The frame check that failed.
        #[source]
        source: Arc<FrameError>,
    },
    /// A well-formed message that makes no sense (an ack of entries never sent, an ack that
    /// moves backwards).
    #[error("log channel: protocol violation by the {peer}: {detail}")]
    Protocol {
        /// Who sent it.
        peer: Peer,
        /// What was wrong.
        detail: String,
    },
    /// The backup has received nothing new for the failure timeout while it said it was
    /// reading: its acks (and so the primary's lease) stopped although its heartbeats may still
    /// arrive, as when the link fails in one direction only.
    #[error(
        "log channel: the backup acknowledged nothing new for {silent_ms} ms (failure timeout \
         {failure_timeout_ms} ms) although it is reading: it no longer hears the primary"
    )]
    Unacknowledged {
        /// How long no new ack came.
        silent_ms: u64,
        /// The configured failure timeout.
        failure_timeout_ms: u64,
    },
    /// A frame failed its session tag: corrupted on the wire, forged, or from another session.
    #[error("log channel: bad data from the {peer}: {source}")]
    Unauthenticated {
        /// Who sent it.
        peer: Peer,
        /// Which frame and why.
        #[source]
        source: session::OpenError,
    },
    /// The handshake failed: the peer is not an ftvm log channel, broke off, or timed out.
    #[error("log channel: handshake with {addr} failed: {detail}")]
    Handshake {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        detail: String,
    },
    /// The two sides cannot form a pair: another pair, generation, key, protocol version or
    /// guest devices. Retrying does not help.
    #[error("log channel: {addr}: {reason}")]
    Refused {
        /// The peer's address.
        addr: String,
        /// What differs, naming both sides' values.
        reason: String,
    },
    /// This entry cannot be framed (too large); the channel itself is unharmed.
    #[error("log channel: cannot send this entry: {source}")]
    Encode {
        /// Why.
        #[source]
        source: Arc<FrameError>,
    },
    /// The primary could not connect to the backup.
    #[error("log channel: cannot connect to the backup at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// The backup could not accept or set up the primary's connection.
    #[error("log channel: cannot accept the primary on {addr}: {source}")]
    Accept {
        /// The listening address.
        addr: String,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// This side's link was closed.
    #[error("log channel: closed by this side")]
    Closed,
}

impl ChannelError {
    /// True when the peer is gone or unreachable (silent past the timeout, or the connection
    /// ended): the side should ask the arbiter whether to go on alone.
    pub fn is_peer_failure(&self) -> bool {
        matches!(
            self,
            ChannelError::PeerSilent { .. }
                | ChannelError::Disconnected { .. }
                | ChannelError::Unacknowledged { .. }
        )
    }
}

/// Heartbeats of the primary are progress entries; see the module documentation.
fn heartbeat_entry(progress_landmark: u64) -> Entry {
    Entry::Progress { landmark: progress_landmark }
}
