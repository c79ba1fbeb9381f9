//! The handshake that opens a log channel: both sides prove they hold the pair's key, agree on
//! the protocol version, the pair and its generation, and derive the key of the session that
//! binds every later frame ([`super::session`]).
//!
//! # Why HMAC-SHA256 challenge-response, not TLS
//!
//! The pair already shares a secret (the key in its arbiter directory), and what the channel
//! needs is authenticity: only the real primary may feed the backup a log, only the real backup
//! may acknowledge it. A challenge-response over HMAC-SHA256 (the `hmac` and `sha2` crates) gives
//! that in two round trips with no certificates to issue, rotate or pin, and keeps the link's
//! plain `TcpStream` with one reader and one writer thread. TLS would add confidentiality, which
//! the log does not get here, as in VMware FT: run it on a link of its own (DESIGN §5).
//!
//! # Messages
//!
//! Each side first sends a preamble, [`MAGIC`] and its protocol version (u16 LE), so a peer that
//! is not an ftvm log channel, or speaks another version, is told apart from a wrong key before
//! anything version-specific is parsed. Then length-prefixed (u32 LE, at most
//! [`MAX_MESSAGE_LEN_BYTES`]) postcard messages:
//!
//! ```text
//! primary                                   backup
//!   preamble, Hello{pair, generation,
//!                   devices, nonce_p}  ->
//!                                      <-  preamble, Challenge{pair, generation, nonce_b,
//!                                                              proof_b} | Refused{reason}
//!   Proof{proof_p} | Refused{reason}   ->
//!                                      <-  Accepted | Refused{reason}
//! ```
//!
//! `proof_b` and `proof_p` are HMACs under the pair key of both nonces, the pair id and the
//! generation, with a label per side (so one side's proof is never valid as the other's). The
//! nonces are fresh random bytes, so a recorded handshake is worth nothing later. The session key
//! is an HMAC of both nonces under the pair key. A side that refuses says why in `Refused`, so
//! both ends can report the same reason.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::session::SessionKey;

/// The first bytes either side sends.
pub const MAGIC: [u8; 6] = *b"FTVMLC";

/// The version of the channel protocol (handshake, framing, messages) this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The largest handshake message accepted.
pub const MAX_MESSAGE_LEN_BYTES: u32 = 4096;

const NONCE_LEN_BYTES: usize = 32;

/// What a side knows of its pair (from the pair's arbiter directory).
#[derive(Clone)]
pub struct Credentials {
    /// The pair's id.
    pub pair_id: String,
    /// The pair's secret key.
    pub key: [u8; 32],
    /// The generation this side runs in.
    pub generation: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("pair_id", &self.pair_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The guest devices the primary runs with; the backup checks them against its own attachments
/// before it accepts the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// The guest NIC's MAC, if it has one.
    pub net_mac: Option<[u8; 6]>,
    /// The guest disk's size, if it has one.
    pub disk_bytes: Option<u64>,
    /// Each side has its own image of the disk (`mode=own`), rather than one shared image.
    pub disk_own: bool,
}

/// The primary's opening message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The pair the primary belongs to.
    pub pair_id: String,
    /// The generation it runs in.
    pub generation: u64,
    /// Its guest's devices.
    pub devices: Devices,
    nonce: [u8; NONCE_LEN_BYTES],
}

#[derive(Serialize, Deserialize)]
enum BackupReply {
    Challenge { pair_id: String, generation: u64, nonce: [u8; NONCE_LEN_BYTES], proof: [u8; 32] },
    Refused { reason: String },
}

#[derive(Serialize, Deserialize)]
enum PrimaryReply {
    Proof { proof: [u8; 32] },
    Refused { reason: String },
}

#[derive(Serialize, Deserialize)]
enum Verdict {
    Accepted,
    Refused { reason: String },
}

/// Why a handshake did not open a session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer is not an ftvm log channel, or broke off, or sent something malformed.
    #[error("{0}")]
    Peer(String),
    /// The peer is an ftvm log channel of this pair's kind but cannot be paired with this side;
    /// the reason says which setting differs. `said_by_peer` tells whose check refused.
    #[error("{reason}")]
    Refused {
        /// What differs, naming both sides' values.
        reason: String,
        /// True when the peer refused this side (and said why), false when this side refused.
        said_by_peer: bool,
    },
}

fn peer_error(what: &str, error: &std::io::Error) -> HandshakeError {
    let detail = match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            "no answer within the handshake timeout".into()
        }
        ErrorKind::UnexpectedEof => "the connection ended".into(),
        _ => error.to_string(),
    };
    HandshakeError::Peer(format!("{what}: {detail}"))
}

fn random_nonce() -> [u8; NONCE_LEN_BYTES] {
    let mut nonce = [0; NONCE_LEN_BYTES];
    getrandom::fill(&mut nonce).expect("the kernel's random source is available");
    nonce
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The HMAC over everything both sides must agree on, under `label`.
fn proof_mac(
    credentials: &Credentials,
    label: &[u8],
    primary_nonce: &[u8],
    backup_nonce: &[u8],
) -> Hmac<Sha256> {
    let mut mac = keyed(&credentials.key);
    for part in [label, primary_nonce, backup_nonce, credentials.pair_id.as_bytes()] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac.update(&credentials.generation.to_le_bytes());
    mac
}

const BACKUP_LABEL: &[u8] = b"ftvm log channel: backup proof";
const PRIMARY_LABEL: &[u8] = b"ftvm log channel: primary proof";
const SESSION_LABEL: &[u8] = b"ftvm log channel: session key";

fn session_key(credentials: &Credentials, primary_nonce: &[u8], backup_nonce: &[u8]) -> SessionKey {
    let bytes = proof_mac(credentials, SESSION_LABEL, primary_nonce, backup_nonce).finalize();
    SessionKey::from_bytes(bytes.into_bytes().into())
}

fn proof(credentials: &Credentials, label: &[u8], primary: &[u8], backup: &[u8]) -> [u8; 32] {
    proof_mac(credentials, label, primary, backup).finalize().into_bytes().into()
}

fn proof_holds(
    credentials: &Credentials,
    label: &[u8],
    primary: &[u8],
    backup: &[u8],
    claimed: &[u8; 32],
) -> bool {
    // Constant time: a forger learns nothing from how long the check took.
    proof_mac(credentials, label, primary, backup).verify_slice(claimed).is_ok()
}

fn send_preamble(stream: &mut TcpStream) -> Result<(), HandshakeError> {
    let mut preamble = MAGIC.to_vec();
    preamble.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    stream.write_all(&preamble).map_err(|error| peer_error("sending the preamble", &error))
}

/// Reads the peer's preamble; `Refused` if it speaks another protocol version.
fn read_preamble(stream: &mut TcpStream, peer: &str) -> Result<(), HandshakeError> {
    let mut preamble = [0u8; MAGIC.len() + 2];
    stream.read_exact(&mut preamble).map_err(|error| peer_error("reading the preamble", &error))?;
    if preamble[..MAGIC.len()] != MAGIC {
        return Err(HandshakeError::Peer(format!(
            "it is not an ftvm log channel {peer} (its first bytes are {:02x?})",
            &preamble
        )));
    }
    let version = u16::from_le_bytes([preamble[6], preamble[7]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Refused {
            reason: format!(
                "the {peer} speaks log channel protocol version {version}, this side speaks \
                 version {PROTOCOL_VERSION}: run the same ftvm release on both hosts"
            ),
            said_by_peer: false,
        });
    }
    Ok(())
}

fn send_message(stream: &mut TcpStream, message: &impl Serialize) -> Result<(), HandshakeError> {
    let body = postcard::to_stdvec(message).expect("handshake messages always encode");
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    stream.write_all(&bytes).map_err(|error| peer_error("sending a handshake message", &error))
}

fn read_message<T: DeserializeOwned>(stream: &mut TcpStream) -> Result<T, HandshakeError> {
    let mut len_field = [0u8; 4];
    stream.read_exact(&mut len_field).map_err(|error| peer_error("reading a message", &error))?;
    let len_bytes = u32::from_le_bytes(len_field);
    if len_bytes > MAX_MESSAGE_LEN_BYTES {
        return Err(HandshakeError::Peer(format!(
            "it announced a {len_bytes}-byte handshake message (the limit is \
             {MAX_MESSAGE_LEN_BYTES})"
        )));
    }
    let mut body = vec![0u8; len_bytes as usize];
    stream.read_exact(&mut body).map_err(|error| peer_error("reading a message", &error))?;
    postcard::from_bytes(&body).map_err(|error| {
        HandshakeError::Peer(format!("it sent a malformed handshake message: {error}"))
    })
}

/// Sends `Refused` (best effort: the peer may be gone) and returns the error for this side.
fn refuse<T>(
    stream: &mut TcpStream,
    refusal: impl Serialize,
    reason: String,
) -> Result<T, HandshakeError> {
    let _ = send_message(stream, &refusal);
    Err(HandshakeError::Refused { reason, said_by_peer: false })
}

fn refused_by_peer<T>(peer: &str, reason: String) -> Result<T, HandshakeError> {
    Err(HandshakeError::Refused {
        reason: format!("the {peer} refused: {reason}"),
        said_by_peer: true,
    })
}

/// Compares the pair and generation a peer named with this side's.
fn same_pair(mine: &Credentials, pair_id: &str, generation: u64, peer: &str) -> Result<(), String> {
    if pair_id != mine.pair_id {
        return Err(format!(
            "the {peer} belongs to pair {pair_id}, this side to pair {}: the two sides name \
             different arbiter directories (or pair files)",
            mine.pair_id
        ));
    }
    if generation != mine.generation {
        return Err(format!(
            "the {peer} runs generation {generation}, this side generation {}: start both sides \
             from the same pair directory after `ftvm pair next`",
            mine.generation
        ));
    }
    Ok(())
}

fn with_timeout(stream: &TcpStream, timeout: Duration) -> Result<(), HandshakeError> {
    let timeout = Some(timeout.max(Duration::from_millis(1)));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|error| peer_error("setting up the connection", &error))
}

/// The primary's half, on a freshly connected stream. Returns the session key.
pub fn primary(
    stream: &mut TcpStream,
    credentials: &Credentials,
    devices: Devices,
    timeout: Duration,
) -> Result<SessionKey, HandshakeError> {
    with_timeout(stream, timeout)?;
    let hello = Hello {
        pair_id: credentials.pair_id.clone(),
        generation: credentials.generation,
        devices,
        nonce: random_nonce(),
    };
    send_preamble(stream)?;
    send_message(stream, &hello)?;
    read_preamble(stream, "backup")?;
    let (pair_id, generation, backup_nonce, backup_proof) = match read_message(stream)? {
        BackupReply::Refused { reason } => return refused_by_peer("backup", reason),
        BackupReply::Challenge { pair_id, generation, nonce, proof } => {
            (pair_id, generation, nonce, proof)
        }
    };
    if let Err(reason) = same_pair(credentials, &pair_id, generation, "backup") {
        return refuse(stream, PrimaryReply::Refused { reason: reason.clone() }, reason);
    }
    if !proof_holds(credentials, BACKUP_LABEL, &hello.nonce, &backup_nonce, &backup_proof) {
        let reason = "the backup could not prove it holds the pair's key: the two sides have \
                      different keys (check --key, or the key file in the arbiter directory)"
            .to_string();
        return refuse(stream, PrimaryReply::Refused { reason: reason.clone() }, reason);
    }
    let proof = proof(credentials, PRIMARY_LABEL, &hello.nonce, &backup_nonce);
    send_message(stream, &PrimaryReply::Proof { proof })?;
    match read_message(stream)? {
        Verdict::Accepted => Ok(session_key(credentials, &hello.nonce, &backup_nonce)),
        Verdict::Refused { reason } => refused_by_peer("backup", reason),
    }
}

/// A primary whose handshake went through, waiting for the backup's verdict.
pub struct Proven {
    /// What the primary said of itself.
    pub hello: Hello,
    session: SessionKey,
}

impl Proven {
    /// Tells the primary it is accepted; returns the session key.
    pub fn accept(self, stream: &mut TcpStream) -> Result<(Hello, SessionKey), HandshakeError> {
        send_message(stream, &Verdict::Accepted)?;
        Ok((self.hello, self.session))
    }

    /// Tells the primary it is refused, and why.
    pub fn refuse(self, stream: &mut TcpStream, reason: String) -> HandshakeError {
        let _ = send_message(stream, &Verdict::Refused { reason: reason.clone() });
        HandshakeError::Refused { reason, said_by_peer: false }
    }
}

/// The backup's half, on a freshly accepted stream, up to the verdict: `check` judges the
/// primary's hello (its devices against this side's attachments) before any challenge is sent;
/// the caller then accepts or refuses the proven primary.
pub fn backup(
    stream: &mut TcpStream,
    credentials: &Credentials,
    check: impl FnOnce(&Hello) -> Result<(), String>,
    timeout: Duration,
) -> Result<Proven, HandshakeError> {
    with_timeout(stream, timeout)?;
    match read_preamble(stream, "primary") {
        Ok(()) => send_preamble(stream)?,
        Err(error @ HandshakeError::Refused { .. }) => {
            // Another version: our preamble tells it which one we speak.
            let _ = send_preamble(stream);
            return Err(error);
        }
        Err(error) => return Err(error),
    }
    let hello: Hello = read_message(stream)?;
    if let Err(reason) = same_pair(credentials, &hello.pair_id, hello.generation, "primary")
        .and_then(|()| check(&hello))
    {
        return refuse(stream, BackupReply::Refused { reason: reason.clone() }, reason);
    }
    let nonce = random_nonce();
    let proof = proof(credentials, BACKUP_LABEL, &hello.nonce, &nonce);
    send_message(
        stream,
        &BackupReply::Challenge {
            pair_id: credentials.pair_id.clone(),
            generation: credentials.generation,
            nonce,
            proof,
        },
    )?;
    let primary_proof = match read_message(stream)? {
        PrimaryReply::Refused { reason } => return refused_by_peer("primary", reason),
        PrimaryReply::Proof { proof } => proof,
    };
    if !proof_holds(credentials, PRIMARY_LABEL, &hello.nonce, &nonce, &primary_proof) {
        let reason = "the primary could not prove it holds the pair's key (a stranger, or a \
                      primary with another key)"
            .to_string();
        return refuse(stream, Verdict::Refused { reason: reason.clone() }, reason);
    }
    let session = session_key(credentials, &hello.nonce, &nonce);
    Ok(Proven { hello, session })
}
