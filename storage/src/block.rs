//! A disk image: a raw file of whole sectors, read and written at byte
//! offsets with positioned I/O (so one store can be shared by threads), and
//! flushed with fsync. Opening checks what a user gets wrong: a missing image,
//! a size that is not whole sectors, a read-only file. While a transfer copies the image to a
//! new backup, the blocks written are tracked so they can be copied again.
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;

/// The sector size virtio-blk speaks.
pub const SECTOR_BYTES: u64 = 512;
/// Writes are tracked in blocks of this size (a transfer copies whole blocks).
pub const TRACKED_BLOCK_BYTES: u64 = 64 * 1024;

/// What went wrong with a disk image.
#[derive(Debug, Error)]
pub enum BlockStoreError {
    /// The image does not exist (and `create` was not asked for).
    #[error("disk image {path} does not exist (add `,create,size=SIZE` to make one)")]
    Missing {
        /// The image path.
        path: PathBuf,
    },
    /// The image cannot be opened for writing.
    #[error("disk image {path} is read-only (check its permissions)")]
    ReadOnly {
        /// The image path.
        path: PathBuf,
    },
    /// The image is not a whole number of sectors, or empty.
    #[error("disk image {path} is {bytes} bytes, not a non-zero multiple of {SECTOR_BYTES}")]
    BadSize {
        /// The image path.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The image exists with another size than the one asked for.
    #[error("disk image {path} is {actual} bytes but size={requested} was asked for (drop `size=` to use it as it is)")]
    SizeMismatch {
        /// The image path.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The requested size.
        requested: u64,
    },
    /// An access outside the image.
    #[error("access of {len} bytes at offset {offset} is outside the {capacity}-byte disk")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length.
        len: u64,
        /// Disk size.
        capacity: u64,
    },
    /// Any other I/O error.
    #[error("disk image {path}: {source}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A file-backed disk of `capacity_bytes`.
#[derive(Debug)]
pub struct BlockStore {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
    /// The blocks written since tracking began, while it is on.
    written: Mutex<Option<BTreeSet<u64>>>,
}

impl BlockStore {
    /// Opens `path`; with `create`, makes a zero-filled image of
    /// `size_bytes` if it is missing. An existing image keeps its data; a
    /// given size must then match it.
    pub fn open(
        path: &Path,
        size_bytes: Option<u64>,
        create: bool,
    ) -> Result<Self, BlockStoreError> {
        let io = |source| BlockStoreError::Io { path: path.to_path_buf(), source };
        let exists = path.exists();
        if !exists && !create {
            return Err(BlockStoreError::Missing { path: path.to_path_buf() });
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::PermissionDenied => {
                return Err(BlockStoreError::ReadOnly { path: path.to_path_buf() })
            }
            Err(error) => return Err(io(error)),
        };
        if !exists {
            let size = size_bytes.unwrap_or(0);
            if size == 0 || !size.is_multiple_of(SECTOR_BYTES) {
                let _ = std::fs::remove_file(path);
                return Err(BlockStoreError::BadSize { path: path.to_path_buf(), bytes: size });
            }
            file.set_len(size).map_err(io)?;
        }
        let capacity_bytes = file.metadata().map_err(io)?.len();
        if capacity_bytes == 0 || capacity_bytes % SECTOR_BYTES != 0 {
            return Err(BlockStoreError::BadSize {
                path: path.to_path_buf(),
                bytes: capacity_bytes,
            });
        }
        if let Some(requested) =
            size_bytes.filter(|&requested| exists && requested != capacity_bytes)
        {
            return Err(BlockStoreError::SizeMismatch {
                path: path.to_path_buf(),
                actual: capacity_bytes,
                requested,
            });
        }
        Ok(BlockStore { file, path: path.to_path_buf(), capacity_bytes, written: Mutex::new(None) })
    }

    /// Size of the disk.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), BlockStoreError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity_bytes => Ok(()),
            _ => Err(BlockStoreError::OutOfRange { offset, len, capacity: self.capacity_bytes }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockStoreError> {
        self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| BlockStoreError::Io { path: self.path.clone(), source })
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), BlockStoreError> {
        self.check(offset, data.len())?;
        // Marked before the write: a copy that reads the block meanwhile copies it again.
        if let Some(written) = self.written().as_mut() {
            let end = offset + data.len() as u64;
            let blocks = offset / TRACKED_BLOCK_BYTES..end.div_ceil(TRACKED_BLOCK_BYTES);
            written.extend(blocks);
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|source| BlockStoreError::Io { path: self.path.clone(), source })
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<u64>>> {
        self.written.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts (`true`, with nothing written yet) or stops tracking the blocks written.
    pub fn track_writes(&self, on: bool) {
        *self.written() = on.then(BTreeSet::new);
    }

    /// The blocks (of [`TRACKED_BLOCK_BYTES`]) written since tracking began or the last call,
    /// in order.
    pub fn take_written_blocks(&self) -> Vec<u64> {
        self.written().as_mut().map(std::mem::take).unwrap_or_default().into_iter().collect()
    }

    /// Makes every byte zero (a new backup's image, before the guest's is copied in).
    pub fn zero_all(&self) -> Result<(), BlockStoreError> {
        let io = |source| BlockStoreError::Io { path: self.path.clone(), source };
        self.file.set_len(0).map_err(io)?;
        self.file.set_len(self.capacity_bytes).map_err(io)
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> Result<(), BlockStoreError> {
        self.file
            .sync_data()
            .map_err(|source| BlockStoreError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_blocks_are_tracked_while_asked_and_zeroing_clears_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(&dir.path().join("disk.img"), Some(1 << 20), true).unwrap();
        store.write_at(0, &[1; 512]).unwrap();
        assert!(store.take_written_blocks().is_empty(), "not tracking yet");
        store.track_writes(true);
        store.write_at(TRACKED_BLOCK_BYTES - 512, &[2; 1024]).unwrap();
        store.write_at(5 * TRACKED_BLOCK_BYTES, &[3; 512]).unwrap();
        assert_eq!(store.take_written_blocks(), vec![0, 1, 5]);
        assert!(store.take_written_blocks().is_empty(), "taken once");
        store.track_writes(false);
        store.zero_all().unwrap();
        let mut read = [9u8; 512];
        store.read_at(0, &mut read).unwrap();
        assert_eq!(read, [0; 512]);
        assert_eq!(store.capacity_bytes(), 1 << 20);
    }

    #[test]
    fn create_write_reopen_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let store = BlockStore::open(&path, Some(1 << 20), true).unwrap();
        assert_eq!(store.capacity_bytes(), 1 << 20);
        store.write_at(4096, b"persisted").unwrap();
        store.flush().unwrap();
        drop(store);
        let store = BlockStore::open(&path, None, false).unwrap();
        let mut buf = [0u8; 9];
        store.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"persisted");
    }

    #[test]
    fn user_errors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        assert!(matches!(
            BlockStore::open(&path, None, false),
            Err(BlockStoreError::Missing { .. })
        ));
        assert!(matches!(
            BlockStore::open(&path, Some(1000), true),
            Err(BlockStoreError::BadSize { .. })
        ));
        assert!(!path.exists(), "a refused create leaves nothing behind");
        BlockStore::open(&path, Some(4096), true).unwrap();
        assert!(matches!(
            BlockStore::open(&path, Some(8192), false),
            Err(BlockStoreError::SizeMismatch { .. })
        ));
        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, [0u8; 700]).unwrap();
        assert!(matches!(
            BlockStore::open(&odd, None, false),
            Err(BlockStoreError::BadSize { .. })
        ));
        let store = BlockStore::open(&path, None, false).unwrap();
        assert!(matches!(
            store.read_at(4000, &mut [0u8; 200]),
            Err(BlockStoreError::OutOfRange { .. })
        ));
        assert!(matches!(store.write_at(u64::MAX, &[1]), Err(BlockStoreError::OutOfRange { .. })));
    }
}
