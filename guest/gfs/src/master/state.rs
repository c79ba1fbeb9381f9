//! The master's persistent state (namespace, file -> chunk map, versions, reference counts) and
//! the operation-log records that change it. Replaying the records from a checkpoint rebuilds
//! exactly the state the master had.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::wire::{ChunkHandle, GfsError, Version};

/// Deleted files are renamed under this prefix until garbage collection removes them.
pub const TRASH_PREFIX: &str = "/.trash/";

/// What the master must never forget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// Incremented at every master start; high bits of new handles and versions.
    pub boot_epoch: u64,
    /// Full path -> file.
    pub files: BTreeMap<String, FileMeta>,
    /// Every chunk referenced by some file.
    pub chunks: BTreeMap<ChunkHandle, ChunkMeta>,
}

/// A file: its chunks by index (`None`: a hole that reads as zeros).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub chunks: Vec<Option<ChunkHandle>>,
}

/// A chunk's persistent facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// Replicas with a lower version are stale.
    pub version: Version,
    /// Number of files referring to the chunk (more than one after a snapshot).
    pub refcount: u32,
}

/// One change to the persistent state, as written to the operation log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    Boot {
        epoch: u64,
    },
    CreateFile {
        path: String,
    },
    /// Rename (used by delete to hide a file under the trash prefix).
    RenameFile {
        from: String,
        to: String,
    },
    /// Forget a file for good; chunks nobody refers to any more are forgotten too.
    RemoveFile {
        path: String,
    },
    AddChunk {
        path: String,
        index: u64,
        handle: ChunkHandle,
        version: Version,
    },
    SetVersion {
        handle: ChunkHandle,
        version: Version,
    },
    /// Copy-on-write: chunk `index` of `path` now refers to a private copy.
    ReplaceChunk {
        path: String,
        index: u64,
        new_handle: ChunkHandle,
        version: Version,
    },
    Snapshot {
        source: String,
        target: String,
    },
}

/// The hidden name a file deleted at `now_ms` gets.
pub fn trash_name(path: &str, now_ms: u64) -> String {
    format!("{TRASH_PREFIX}{now_ms:020}{path}")
}

/// When a hidden file was deleted, from its name.
pub fn deleted_at_ms(trash_path: &str) -> Option<u64> {
    let rest = trash_path.strip_prefix(TRASH_PREFIX)?;
    rest.get(..20)?.parse().ok()
}

/// A path clients may use: absolute, not in the trash, no empty components.
pub fn valid_user_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.starts_with(TRASH_PREFIX)
        && !path.ends_with('/')
        && !path.contains("//")
}

impl PersistentState {
    /// Applies one record. Records are validated before they are logged, so a failure here
    /// means the log and the state disagree.
    pub fn apply(&mut self, record: &LogRecord) -> Result<(), GfsError> {
        match record {
            LogRecord::Boot { epoch } => self.boot_epoch = *epoch,
            LogRecord::CreateFile { path } => {
                if self.files.contains_key(path) {
                    return Err(GfsError::AlreadyExists);
                }
                self.files.insert(path.clone(), FileMeta::default());
            }
            LogRecord::RenameFile { from, to } => {
                if self.files.contains_key(to) {
                    return Err(GfsError::AlreadyExists);
                }
                let file = self.files.remove(from).ok_or(GfsError::NotFound)?;
                self.files.insert(to.clone(), file);
            }
            LogRecord::RemoveFile { path } => {
                let file = self.files.remove(path).ok_or(GfsError::NotFound)?;
                for handle in file.chunks.into_iter().flatten() {
                    self.release_chunk(handle);
                }
            }
            LogRecord::AddChunk { path, index, handle, version } => {
                let file = self.files.get_mut(path).ok_or(GfsError::NotFound)?;
                let index = *index as usize;
                if file.chunks.len() <= index {
                    file.chunks.resize(index + 1, None);
                }
                if file.chunks[index].is_some() {
                    return Err(GfsError::AlreadyExists);
                }
                file.chunks[index] = Some(*handle);
                let meta = ChunkMeta { version: *version, refcount: 1 };
                self.chunks.insert(*handle, meta);
            }
            LogRecord::SetVersion { handle, version } => {
                let chunk = self.chunks.get_mut(handle).ok_or(GfsError::NoSuchChunk)?;
                chunk.version = chunk.version.max(*version);
            }
            LogRecord::ReplaceChunk { path, index, new_handle, version } => {
                let file = self.files.get_mut(path).ok_or(GfsError::NotFound)?;
                let slot = file.chunks.get_mut(*index as usize).ok_or(GfsError::NoSuchChunk)?;
                let old = slot.replace(*new_handle).ok_or(GfsError::NoSuchChunk)?;
                let meta = ChunkMeta { version: *version, refcount: 1 };
                self.chunks.insert(*new_handle, meta);
                self.release_chunk(old);
            }
            LogRecord::Snapshot { source, target } => {
                if self.files.contains_key(target) {
                    return Err(GfsError::AlreadyExists);
                }
                let file = self.files.get(source).ok_or(GfsError::NotFound)?.clone();
                for handle in file.chunks.iter().flatten() {
                    if let Some(chunk) = self.chunks.get_mut(handle) {
                        chunk.refcount += 1;
                    }
                }
                self.files.insert(target.clone(), file);
            }
        }
        Ok(())
    }

    fn release_chunk(&mut self, handle: ChunkHandle) {
        if let Some(chunk) = self.chunks.get_mut(&handle) {
            chunk.refcount -= 1;
            if chunk.refcount == 0 {
                self.chunks.remove(&handle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn path(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn snapshot_shares_chunks_and_copy_on_write_releases_them() {
        let mut state = PersistentState::default();
        state.apply(&LogRecord::CreateFile { path: path("/a") }).unwrap();
        let add = LogRecord::AddChunk { path: path("/a"), index: 1, handle: 5, version: 1 };
        state.apply(&add).unwrap();
        assert_eq!(state.files["/a"].chunks, [None, Some(5)]);
        let snapshot = LogRecord::Snapshot { source: path("/a"), target: path("/b") };
        state.apply(&snapshot).unwrap();
        assert_eq!(state.chunks[&5].refcount, 2);
        let replace =
            LogRecord::ReplaceChunk { path: path("/a"), index: 1, new_handle: 6, version: 1 };
        state.apply(&replace).unwrap();
        assert_eq!(state.chunks[&5].refcount, 1);
        assert_eq!(state.files["/b"].chunks[1], Some(5));
        state.apply(&LogRecord::RemoveFile { path: path("/b") }).unwrap();
        assert!(!state.chunks.contains_key(&5), "unreferenced chunk forgotten");
        assert!(state.chunks.contains_key(&6));
    }

    #[test]
    fn invalid_records_are_refused() {
        let mut state = PersistentState::default();
        let create = LogRecord::CreateFile { path: path("/a") };
        state.apply(&create).unwrap();
        assert_eq!(state.apply(&create), Err(GfsError::AlreadyExists));
        let rename = LogRecord::RenameFile { from: path("/missing"), to: path("/x") };
        assert_eq!(state.apply(&rename), Err(GfsError::NotFound));
        let bump = LogRecord::SetVersion { handle: 9, version: 2 };
        assert_eq!(state.apply(&bump), Err(GfsError::NoSuchChunk));
    }

    #[test]
    fn trash_names_keep_the_deletion_time_and_paths_are_checked() {
        let hidden = trash_name("/dir/f", 1234);
        assert_eq!(deleted_at_ms(&hidden), Some(1234));
        assert!(hidden.ends_with("/dir/f"));
        assert!(valid_user_path("/dir/f"));
        assert!(!valid_user_path(&hidden));
        assert!(!valid_user_path("relative"));
        assert!(!valid_user_path("/a//b"));
        assert!(!valid_user_path("/"));
    }
}
