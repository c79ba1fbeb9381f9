//! The chunkserver's buffer of pushed data, waiting for the mutation that uses it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::wire::DataId;

struct Buffered {
    bytes: Vec<u8>,
    expires_ms: u64,
}

/// Pushed data by id, bounded in bytes and age (oldest evicted first).
pub struct DataBuffer {
    entries: BTreeMap<DataId, Buffered>,
    total_bytes: usize,
    max_bytes: usize,
    ttl_ms: u64,
}

impl DataBuffer {
    /// An empty buffer holding at most `max_bytes`, each entry for at most `ttl_ms`.
    pub fn new(max_bytes: usize, ttl_ms: u64) -> Self {
        DataBuffer { entries: BTreeMap::new(), total_bytes: 0, max_bytes, ttl_ms }
    }

    /// Stores `bytes` under `data_id` (a repeated push keeps the first copy).
    pub fn insert(&mut self, now_ms: u64, data_id: DataId, bytes: Vec<u8>) {
        self.expire(now_ms);
        if self.entries.contains_key(&data_id) {
            return;
        }
        while self.total_bytes + bytes.len() > self.max_bytes {
            let Some(oldest) =
                self.entries.iter().min_by_key(|(_, entry)| entry.expires_ms).map(|(id, _)| *id)
            else {
                break;
            };
            self.remove(oldest);
        }
        self.total_bytes += bytes.len();
        let expires_ms = now_ms + self.ttl_ms;
        self.entries.insert(data_id, Buffered { bytes, expires_ms });
    }

    /// The data pushed under `data_id`, if still buffered.
    pub fn get(&self, data_id: DataId) -> Option<&[u8]> {
        self.entries.get(&data_id).map(|entry| entry.bytes.as_slice())
    }

    /// Forgets `data_id`.
    pub fn remove(&mut self, data_id: DataId) {
        if let Some(entry) = self.entries.remove(&data_id) {
            self.total_bytes -= entry.bytes.len();
        }
    }

    /// Drops entries older than the time to live.
    pub fn expire(&mut self, now_ms: u64) {
        let expired: Vec<DataId> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove(id);
        }
    }

    /// Bytes held now.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn evicts_oldest_when_full_and_expires_by_age() {
        let mut buffer = DataBuffer::new(10, 100);
        buffer.insert(0, 1, vec![1; 6]);
        buffer.insert(5, 2, vec![2; 6]);
        assert!(buffer.get(1).is_none(), "oldest entry evicted to make room");
        assert_eq!(buffer.get(2), Some(&[2u8; 6][..]));
        assert_eq!(buffer.total_bytes(), 6);
        buffer.expire(105);
        assert!(buffer.get(2).is_none());
        assert_eq!(buffer.total_bytes(), 0);
    }

    #[test]
    fn repeated_push_keeps_the_first_copy() {
        let mut buffer = DataBuffer::new(100, 100);
        buffer.insert(0, 1, vec![1; 3]);
        buffer.insert(1, 1, vec![9; 3]);
        assert_eq!(buffer.get(1), Some(&[1u8; 3][..]));
        assert_eq!(buffer.total_bytes(), 3);
    }
}
