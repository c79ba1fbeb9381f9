//! The directory backend of the arbiter (DESIGN §5): on a directory both hosts see, one record
//! per FT generation, `DIR/generation-<N>`, and the pair's identity in files beside them
//! ([`crate::pair::PairDir`]). The first side to create the record holds the generation and goes live
//! (the backup) or solo (the primary); the other learns who holds it and halts.
//!
//! # The atomic primitive: `link(2)` of a complete, unique file
//!
//! A side sets the record in three steps:
//!
//! 1. It creates a temporary file under a name no one else uses
//!    (`DIR/.generation-<N>.<token>.tmp`, created with `O_CREAT | O_EXCL`, so even a token
//!    collision cannot make two sides share one), writes the record into it (its holder
//!    identity and the token) and `fsync`s it.
//! 2. It hard-links that file to the record name with `link(2)`. `link` creates a directory
//!    entry only if the name does not exist, and fails with `EEXIST` otherwise; the check and the
//!    creation are one operation of the filesystem (on a local filesystem under the directory's
//!    lock; over NFS one LINK procedure that the server executes against its own directory), so
//!    of any number of concurrent callers exactly one succeeds. Because the name is bound to a
//!    file that was already complete and synced, the record is whole from the instant it exists:
//!    a reader never sees it half-written, and a side that crashes before `link` leaves only a
//!    temporary file, which never counts.
//! 3. It `fsync`s the directory, so that the record outlives a crash of the storage, and removes
//!    its temporary name.
//!
//! `rename(2)` would not do: it replaces an existing name, so two sides could both "win".
//! `O_EXCL` on the record name itself would be atomic too, but the record would then exist before
//! its content is written, and a side that crashed in between would leave a record naming no one.
//!
//! # Knowing whether one won
//!
//! A side wins exactly when the record carries its own token. That is how the answer is decided
//! whenever `link` does not plainly succeed: over NFS a LINK whose reply was lost is retransmitted
//! and then fails with `EEXIST` although the first transmission created the record (the case
//! `open(2)` documents for lock files), and an I/O error may hide a link that happened. The
//! record is then read back: if it carries a token of one of this side's attempts, this side won;
//! if it names another side, it lost; if it cannot be read, the outcome is unknown and is
//! reported as an error, never as a win. [`ArbiterBackend::set_with_retry`] remembers the tokens of its
//! earlier attempts, so a win hidden by an error is recognised on the next try instead of being
//! turned into a loss.
//!
//! # Unreachable storage
//!
//! Every I/O error (the directory missing, `EIO`, `ESTALE`, a timeout, permissions) is reported as
//! [`ArbiterError::Io`], naming the directory and the step. [`ArbiterBackend::set_with_retry`] waits and
//! retries on those until it gets an answer or its caller gives up; it never reports a win it did
//! not get. A record that exists but is not one this arbiter wrote ([`ArbiterError::CorruptRecord`])
//! is not retried: no side may go live on it, and an operator has to look.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{
    check_holder, new_token, ArbiterBackend, ArbiterError, Record, Verdict, MAX_RECORD_LEN_BYTES,
    RECORD_MAGIC_LINE,
};
use crate::pair::{PairDir, PairError, PairIdentity};

/// What an operator should do about an I/O error on the directory, when it is one of
/// configuration (see [`ArbiterError::fix`]).
pub(super) fn fix(source: &io::Error) -> Option<&'static str> {
    Some(match source.kind() {
        ErrorKind::NotFound => "create the directory (mkdir -p) or mount the shared storage",
        ErrorKind::NotADirectory => "name a directory (on storage both hosts reach)",
        ErrorKind::ReadOnlyFilesystem => "mount the shared storage read-write",
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "free some space (or quota) on the shared storage"
        }
        ErrorKind::PermissionDenied => "give this user write access to the directory",
        _ => return None,
    })
}

/// A test-and-set on a shared directory, one record per FT generation.
#[derive(Clone, Debug)]
pub struct DirArbiter {
    dir: PathBuf,
}

impl DirArbiter {
    /// An arbiter on `dir`. Nothing is touched yet: the directory need not exist until a
    /// test-and-set is attempted.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirArbiter { dir: dir.into() }
    }

    /// The shared directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the record of `generation` lives.
    pub fn record_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("generation-{generation}"))
    }

    /// One test-and-set of `generation`'s record for `holder` (a name for this side that the
    /// other side's report can show, e.g. `"backup@host-b pid 4242"`); see
    /// [`ArbiterBackend::try_set`]. Here so that callers need not import the trait.
    pub fn try_set(&self, generation: u64, holder: &str) -> Result<Verdict, ArbiterError> {
        ArbiterBackend::try_set(self, generation, holder)
    }

    /// Creates a probe file, hard-links it (the test-and-set's own primitive), and removes both.
    fn probe_dir(&self) -> Result<(), ArbiterError> {
        let token = new_token("probe");
        let probe = self.dir.join(format!(".probe.{token}.tmp"));
        let linked = self.dir.join(format!(".probe.{token}.link"));
        let outcome = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
                .map_err(|error| self.io_error("create a file in", &self.dir, error))?;
            file.write_all(RECORD_MAGIC_LINE.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|error| self.io_error("write and sync", &probe, error))?;
            fs::hard_link(&probe, &linked)
                .map_err(|error| self.io_error("hard-link a file in", &self.dir, error))?;
            fs::remove_file(&linked)
                .and_then(|()| fs::remove_file(&probe))
                .map_err(|error| self.io_error("remove a file in", &self.dir, error))
        })();
        let _ = fs::remove_file(&linked);
        let _ = fs::remove_file(&probe);
        outcome.map_err(|error| match error {
            // A missing or non-directory path reads better as "reach" than "create a file in".
            ArbiterError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                self.reach_error()
            }
            other => other,
        })
    }

    fn reach_error(&self) -> ArbiterError {
        match fs::metadata(&self.dir) {
            Ok(meta) if !meta.is_dir() => self.io_error(
                "use",
                &self.dir,
                io::Error::new(ErrorKind::NotADirectory, "not a directory"),
            ),
            Ok(_) => self.io_error("use", &self.dir, io::Error::from(ErrorKind::NotFound)),
            Err(error) => self.io_error("reach", &self.dir, error),
        }
    }

    fn io_error(&self, action: &'static str, path: &Path, source: io::Error) -> ArbiterError {
        ArbiterError::Io { dir: self.dir.clone(), action, path: path.to_owned(), source }
    }

    /// Creates, fills and syncs a fresh temporary file; returns its path.
    fn write_temp(
        &self,
        generation: u64,
        holder: &str,
        my_tokens: &mut Vec<String>,
    ) -> Result<PathBuf, ArbiterError> {
        // A few tries in case a temporary name is already taken (a token collision, or a
        // leftover): O_EXCL refuses it rather than share it.
        let mut tries_left = 4;
        loop {
            let token = new_token(holder);
            let temp_path = self.dir.join(format!(".generation-{generation}.{token}.tmp"));
            let file = OpenOptions::new().write(true).create_new(true).open(&temp_path);
            let mut file = match file {
                Ok(file) => file,
                Err(error) if error.kind() == ErrorKind::AlreadyExists && tries_left > 0 => {
                    tries_left -= 1;
                    continue;
                }
                Err(error) => {
                    return Err(self.io_error("create the temporary file", &temp_path, error))
                }
            };
            my_tokens.push(token.clone());
            let record = Record {
                generation,
                holder: holder.to_owned(),
                token: token.clone(),
                pair_id: None,
            };
            let written =
                file.write_all(record.to_text().as_bytes()).and_then(|()| file.sync_all());
            if let Err(error) = written {
                let _ = fs::remove_file(&temp_path);
                return Err(self.io_error("write and sync the temporary file", &temp_path, error));
            }
            return Ok(temp_path);
        }
    }

    fn sync_dir(&self) -> Result<(), ArbiterError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| self.io_error("sync the directory", &self.dir, error))
    }

    fn read_record(&self, generation: u64) -> Result<Option<Record>, ArbiterError> {
        let path = self.record_path(generation);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                // Distinguish "no record yet" from "no directory": the latter is unreachable
                // storage, not an empty generation.
                return match fs::metadata(&self.dir) {
                    Ok(meta) if meta.is_dir() => Ok(None),
                    Ok(_) => Err(self.io_error(
                        "use",
                        &self.dir,
                        io::Error::new(ErrorKind::NotADirectory, "not a directory"),
                    )),
                    Err(error) => Err(self.io_error("reach", &self.dir, error)),
                };
            }
            Err(error) => return Err(self.io_error("open the record", &path, error)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_LEN_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| self.io_error("read the record", &path, error))?;
        let record = Record::from_bytes(&bytes, generation, &path.display().to_string())?;
        Ok(Some(record))
    }
}

impl ArbiterBackend for DirArbiter {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn probe(&self) -> Result<(), ArbiterError> {
        self.probe_dir()
    }

    /// One attempt. Its token is added to `my_tokens` before anything is written, so that a
    /// later attempt recognises a record this one created.
    fn attempt(
        &self,
        generation: u64,
        holder: &str,
        my_tokens: &mut Vec<String>,
    ) -> Result<Verdict, ArbiterError> {
        check_holder(holder)?;
        let record_path = self.record_path(generation);
        // Already decided (possibly by an earlier attempt of ours): no need to write anything.
        if let Some(record) = self.read_record(generation)? {
            return Ok(record.verdict(my_tokens));
        }
        let temp_path = self.write_temp(generation, holder, my_tokens)?;
        let linked = fs::hard_link(&temp_path, &record_path);
        let outcome = match linked {
            Ok(()) => self.sync_dir().map(|()| Verdict::Won),
            Err(link_error) => match self.read_record(generation) {
                Ok(Some(record)) => Ok(record.verdict(my_tokens)),
                // The link failed and left no record: the storage is misbehaving.
                Ok(None) => Err(self.io_error("link the record", &record_path, link_error)),
                Err(read_error) => Err(read_error),
            },
        };
        // Best effort: a leftover temporary file costs a directory entry, never a verdict.
        let _ = fs::remove_file(&temp_path);
        outcome
    }

    fn holder(&self, generation: u64) -> Result<Option<String>, ArbiterError> {
        Ok(self.read_record(generation)?.map(|record| record.holder))
    }

    fn init_pair(&self) -> Result<PairIdentity, PairError> {
        PairDir::new(&self.dir).init()
    }

    fn load_pair(&self, key_file: Option<&Path>) -> Result<PairIdentity, PairError> {
        PairDir::new(&self.dir).load(key_file)
    }

    fn next_pair(&self) -> Result<PairIdentity, PairError> {
        PairDir::new(&self.dir).next()
    }
}
