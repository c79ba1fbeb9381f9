//! Frames bound to one authenticated session: after the handshake, every frame on the channel,
//! in either direction, carries a tag that only the two ends of that session can compute.
//!
//! The tag is BLAKE3 in its keyed mode (a MAC by design) under the session key (derived in the
//! handshake from the pair key and both sides' fresh nonces), truncated to [`TAG_LEN_BYTES`],
//! over the direction, the frame's position in its stream and the frame's bytes (header and
//! payload). BLAKE3 rather than the handshake's HMAC-SHA256: every byte of the log is tagged,
//! and on hosts without SHA extensions software SHA-256 took half of the pair's CPU in the FT
//! benchmark; BLAKE3's SIMD code is several times faster. So a frame from another
//! session (a recorded log replayed at the backup), a frame moved to another position or the
//! other direction, and a byte corrupted or forged on the wire are all refused before the frame is
//! decoded: the CRC32C inside the frame still catches storage errors in log files, the tag is
//! what an attacker cannot forge.
//!
//! The stream is `[frame][tag]` repeated, where `frame` is exactly a [`crate::frame`] frame, so
//! the receiver knows each frame's length from its header; that length is checked against
//! [`MAX_PAYLOAD_LEN_BYTES`] before anything is buffered for it.

use crate::frame::{FRAME_HEADER_LEN_BYTES, MAX_PAYLOAD_LEN_BYTES};

/// Bytes of the BLAKE3 tag kept per frame: 128 bits, far beyond what an online forger can guess.
pub const TAG_LEN_BYTES: usize = 16;

/// Which way a stream flows; part of every tag, so a frame cannot be reflected back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The log, from the primary to the backup.
    PrimaryToBackup,
    /// Acks and heartbeats, from the backup to the primary.
    BackupToPrimary,
}

/// The key of one session, known only to the two sides that completed the handshake.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A session key from its bytes (the handshake derives them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SessionKey(bytes)
    }

    fn mac(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0)
    }

    /// Tags frames sent in `direction`.
    pub fn sealer(&self, direction: Direction) -> Sealer {
        Sealer { mac: self.mac(), direction, next_index: 0 }
    }

    /// Checks frames received in `direction`.
    pub fn opener(&self, direction: Direction) -> Opener {
        Opener { mac: self.mac(), direction, next_index: 0, buffer: Vec::new(), consumed: 0 }
    }
}

fn tag(
    mac: &blake3::Hasher,
    direction: Direction,
    index: u64,
    frame: &[u8],
) -> [u8; TAG_LEN_BYTES] {
    let mut mac = mac.clone();
    mac.update(&[direction as u8]);
    mac.update(&index.to_le_bytes());
    mac.update(frame);
    let full = mac.finalize();
    let mut tag = [0u8; TAG_LEN_BYTES];
    tag.copy_from_slice(&full.as_bytes()[..TAG_LEN_BYTES]);
    tag
}

/// Compares in time independent of where the tags differ: a forger learns nothing from timing.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The sending half: appends each frame's tag.
#[derive(Debug)]
pub struct Sealer {
    mac: blake3::Hasher,
    direction: Direction,
    next_index: u64,
}

impl Sealer {
    /// Appends the tag of the frame that occupies `out[frame_start..]`.
    pub fn seal(&mut self, out: &mut Vec<u8>, frame_start: usize) {
        let tag = tag(&self.mac, self.direction, self.next_index, &out[frame_start..]);
        out.extend_from_slice(&tag);
        self.next_index += 1;
    }
}

/// Why a received stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A frame header announces more than a frame may carry.
    #[error("frame {index} announces a {payload_len_bytes}-byte payload, over the limit")]
    TooLong {
        /// The frame's position in the stream (0 first).
        index: u64,
        /// The announced payload length.
        payload_len_bytes: u64,
    },
    /// The tag does not match: corrupted on the wire, forged, or from another session.
    #[error(
        "frame {index} failed its authentication checksum (keyed BLAKE3 session tag): it was \
         corrupted on the wire, forged, or belongs to another session"
    )]
    BadTag {
        /// The frame's position in the stream (0 first).
        index: u64,
    },
}

/// The receiving half: buffers bytes, checks each frame's tag, hands out the frame's bytes.
#[derive(Debug)]
pub struct Opener {
    mac: blake3::Hasher,
    direction: Direction,
    next_index: u64,
    buffer: Vec<u8>,
    consumed: usize,
}

impl Opener {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed >= self.buffer.len() / 2 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame whose tag is right (without its tag), `Ok(None)` if more bytes
    /// are needed. After an error, every later call returns an error too: nothing after a bad
    /// frame is trusted.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, OpenError> {
        let pending = &self.buffer[self.consumed..];
        let Some(len_field) = pending.first_chunk::<4>() else { return Ok(None) };
        let payload_len_bytes = u32::from_le_bytes(*len_field);
        if payload_len_bytes > MAX_PAYLOAD_LEN_BYTES {
            return Err(OpenError::TooLong {
                index: self.next_index,
                payload_len_bytes: u64::from(payload_len_bytes),
            });
        }
        let frame_len_bytes = FRAME_HEADER_LEN_BYTES + payload_len_bytes as usize;
        let Some(sealed) = pending.get(..frame_len_bytes + TAG_LEN_BYTES) else { return Ok(None) };
        let (frame, received_tag) = sealed.split_at(frame_len_bytes);
        if !tags_equal(&tag(&self.mac, self.direction, self.next_index, frame), received_tag) {
            return Err(OpenError::BadTag { index: self.next_index });
        }
        let start = self.consumed;
        self.consumed += frame_len_bytes + TAG_LEN_BYTES;
        self.next_index += 1;
        Ok(Some(&self.buffer[start..start + frame_len_bytes]))
    }

    /// Bytes received and not yet handed out as a frame (a stream that ends with some was cut).
    pub fn buffered_len_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameDecoder, FrameEncoder};

    fn sealed_stream(key: &SessionKey, entries: &[u64]) -> Vec<u8> {
        let (mut encoder, mut sealer) =
            (FrameEncoder::<u64>::new(1, 0), key.sealer(Direction::PrimaryToBackup));
        let mut out = Vec::new();
        for entry in entries {
            let start = out.len();
            encoder.encode(entry, &mut out).unwrap();
            sealer.seal(&mut out, start);
        }
        out
    }

    fn open_all(
        key: &SessionKey,
        direction: Direction,
        bytes: &[u8],
    ) -> Result<Vec<u64>, OpenError> {
        let (mut opener, mut decoder) = (key.opener(direction), FrameDecoder::<u64>::new(1, 0));
        let mut entries = Vec::new();
        // Byte by byte: frames split at every point still open.
        for byte in bytes {
            opener.push(std::slice::from_ref(byte));
            while let Some(frame) = opener.next_frame()? {
                decoder.push(frame);
                entries.push(decoder.next_frame().unwrap().unwrap().1);
            }
        }
        Ok(entries)
    }

    #[test]
    fn frames_open_in_their_session_and_direction_only() {
        let key = SessionKey::from_bytes([7; 32]);
        let bytes = sealed_stream(&key, &[1, 2, 300]);
        assert_eq!(open_all(&key, Direction::PrimaryToBackup, &bytes), Ok(vec![1, 2, 300]));
        let other = SessionKey::from_bytes([8; 32]);
        assert_eq!(
            open_all(&other, Direction::PrimaryToBackup, &bytes),
            Err(OpenError::BadTag { index: 0 })
        );
        assert_eq!(
            open_all(&key, Direction::BackupToPrimary, &bytes),
            Err(OpenError::BadTag { index: 0 })
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = SessionKey::from_bytes([1; 32]);
        let bytes = sealed_stream(&key, &[5, 6]);
        for position in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[position] ^= 0x10;
            let opened = open_all(&key, Direction::PrimaryToBackup, &bad);
            assert!(opened.as_ref().map_or(true, |entries| entries.len() < 2), "{position}");
            if let Ok(entries) = opened {
                // A corrupted length can only leave the stream waiting for more bytes.
                assert!(entries.iter().all(|entry| [5, 6].contains(entry)));
            }
        }
    }

    #[test]
    fn a_replayed_or_reordered_frame_is_refused() {
        let key = SessionKey::from_bytes([3; 32]);
        let one = sealed_stream(&key, &[9]);
        let twice = [one.clone(), one].concat();
        assert_eq!(
            open_all(&key, Direction::PrimaryToBackup, &twice),
            Err(OpenError::BadTag { index: 1 })
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let key = SessionKey::from_bytes([3; 32]);
        let mut opener = key.opener(Direction::PrimaryToBackup);
        opener.push(&u32::MAX.to_le_bytes());
        assert!(matches!(opener.next_frame(), Err(OpenError::TooLong { index: 0, .. })));
    }
}
