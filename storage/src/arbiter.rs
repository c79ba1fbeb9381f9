//! The test-and-set arbiter an FT pair uses to decide who goes on when the two sides lose each
//! other (DESIGN §5): on a directory both hosts see, one record per FT generation,
//! `DIR/generation-<N>`. The first side to create the record holds the generation and goes live
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
//! reported as an error, never as a win. [`Arbiter::set_with_retry`] remembers the tokens of its
//! earlier attempts, so a win hidden by an error is recognised on the next try instead of being
//! turned into a loss.
//!
//! # Unreachable storage
//!
//! Every I/O error (the directory missing, `EIO`, `ESTALE`, a timeout, permissions) is reported as
//! [`ArbiterError::Io`], naming the directory and the step. [`Arbiter::set_with_retry`] waits and
//! retries on those until it gets an answer or its caller gives up; it never reports a win it did
//! not get. A record that exists but is not one this arbiter wrote ([`ArbiterError::CorruptRecord`])
//! is not retried: no side may go live on it, and an operator has to look.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// The first line of every record: what wrote it, in which format.
const RECORD_MAGIC_LINE: &str = "ftvm-arbiter 1";

/// The longest holder identity accepted, in bytes.
pub const MAX_HOLDER_LEN_BYTES: usize = 256;

/// The largest record read back; a bigger file is not a record this arbiter wrote.
const MAX_RECORD_LEN_BYTES: u64 = 4096;

/// Makes temporary names and tokens unique among the attempts of one process.
static ATTEMPT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The outcome of a test-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This side set the record: it holds the generation.
    Won,
    /// Another side set the record first.
    Lost {
        /// The identity the winner wrote.
        holder: String,
    },
}

/// Why the arbiter could not give a verdict.
#[derive(Debug, Error)]
pub enum ArbiterError {
    /// The holder identity cannot be written into a record.
    #[error("arbiter: invalid holder identity {holder:?}: {reason}")]
    InvalidHolder {
        /// The identity as given.
        holder: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The shared storage could not be reached or used; worth retrying.
    #[error("arbiter directory {}: cannot {action} {}: {source}", dir.display(), path.display())]
    Io {
        /// The arbiter directory.
        dir: PathBuf,
        /// The step that failed, e.g. "create the temporary file".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The record exists but is not one this arbiter writes: no one may go live on it.
    #[error(
        "arbiter record {} exists but is not a valid arbiter record ({reason}); no side can go \
         live on it: inspect or remove it by hand",
        path.display()
    )]
    CorruptRecord {
        /// The record.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Arbiter::set_with_retry`] was told to give up before the storage answered.
    #[error(
        "arbiter directory {}: gave up on generation {generation} after {attempts} attempts; \
         last error: {last_error}",
        dir.display()
    )]
    GaveUp {
        /// The arbiter directory.
        dir: PathBuf,
        /// The generation asked for.
        generation: u64,
        /// How many attempts were made.
        attempts: u64,
        /// Why the last attempt failed.
        #[source]
        last_error: Box<ArbiterError>,
    },
}

impl ArbiterError {
    /// Whether retrying may help (the storage could not be reached), as opposed to a problem
    /// retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, ArbiterError::Io { .. })
    }

    /// What an operator should do, when the error is one of configuration rather than of
    /// storage that does not answer: the directory is missing or not a directory, read-only,
    /// full, or not writable by this user. `None` for errors worth retrying (EIO, ESTALE, a
    /// timeout, ...). At start a side stops on these; once running it retries everything, since
    /// a side must not go on without a verdict and an operator can still fix the storage.
    pub fn fix(&self) -> Option<&'static str> {
        let ArbiterError::Io { source, .. } = self else { return None };
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
}

/// A record as stored.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    generation: u64,
    holder: String,
    token: String,
}

impl Record {
    fn to_text(&self) -> String {
        format!(
            "{RECORD_MAGIC_LINE}\ngeneration {}\nholder {}\ntoken {}\n",
            self.generation, self.holder, self.token
        )
    }

    fn parse(text: &str) -> Result<Record, String> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err("it does not end with a newline".into());
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let [magic, generation, holder, token] = lines[..] else {
            return Err(format!("it has {} lines instead of 4", lines.len()));
        };
        if magic != RECORD_MAGIC_LINE {
            return Err(format!("its first line is {magic:?}, not {RECORD_MAGIC_LINE:?}"));
        }
        let field = |line: &'static str, text: &str| -> Result<String, String> {
            text.strip_prefix(line)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("expected a {line:?} line, found {text:?}"))
        };
        let generation = field("generation", generation)?
            .parse()
            .map_err(|error| format!("bad generation: {error}"))?;
        let holder = field("holder", holder)?;
        let token = field("token", token)?;
        if holder.is_empty() || token.is_empty() {
            return Err("empty holder or token".into());
        }
        Ok(Record { generation, holder, token })
    }
}

/// A test-and-set on a shared directory, one record per FT generation.
#[derive(Clone, Debug)]
pub struct Arbiter {
    dir: PathBuf,
}

impl Arbiter {
    /// An arbiter on `dir`. Nothing is touched yet: the directory need not exist until a
    /// test-and-set is attempted.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Arbiter { dir: dir.into() }
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
    /// other side's report can show, e.g. `"backup@host-b pid 4242"`).
    ///
    /// An error means the outcome is unknown; in the rare case an I/O error hid a link that did
    /// happen, a later `try_set` reports `Lost` with this side's own holder name.
    /// [`Arbiter::set_with_retry`] does not have that ambiguity.
    pub fn try_set(&self, generation: u64, holder: &str) -> Result<Verdict, ArbiterError> {
        let mut my_tokens = Vec::new();
        self.attempt(generation, holder, &mut my_tokens)
    }

    /// Test-and-set until the storage answers: while it cannot be reached (an
    /// [`ArbiterError::Io`]), sleeps `retry_interval` and tries again. Before each wait,
    /// `give_up` is shown the error; if it returns true, the result is
    /// [`ArbiterError::GaveUp`]. Never returns `Won` unless the record carries this call's own
    /// token. Errors that retrying cannot fix are returned at once.
    pub fn set_with_retry(
        &self,
        generation: u64,
        holder: &str,
        retry_interval: Duration,
        mut give_up: impl FnMut(&ArbiterError) -> bool,
    ) -> Result<Verdict, ArbiterError> {
        let mut my_tokens = Vec::new();
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            match self.attempt(generation, holder, &mut my_tokens) {
                Err(error) if error.is_transient() => {
                    if give_up(&error) {
                        return Err(ArbiterError::GaveUp {
                            dir: self.dir.clone(),
                            generation,
                            attempts,
                            last_error: Box::new(error),
                        });
                    }
                    thread::sleep(retry_interval);
                }
                outcome => return outcome,
            }
        }
    }

    /// Checks that records can be set here, before a side depends on it: creates a probe file,
    /// hard-links it (the test-and-set's own primitive), and removes both. Errors name the
    /// directory and the step; [`ArbiterError::fix`] says whether it is a configuration error.
    pub fn probe(&self) -> Result<(), ArbiterError> {
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

    /// Who holds `generation`, if anyone yet.
    pub fn holder(&self, generation: u64) -> Result<Option<String>, ArbiterError> {
        Ok(self.read_record(generation)?.map(|record| record.holder))
    }

    fn io_error(&self, action: &'static str, path: &Path, source: io::Error) -> ArbiterError {
        ArbiterError::Io { dir: self.dir.clone(), action, path: path.to_owned(), source }
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
            return Ok(self.verdict(record, my_tokens));
        }
        let temp_path = self.write_temp(generation, holder, my_tokens)?;
        let linked = fs::hard_link(&temp_path, &record_path);
        let outcome = match linked {
            Ok(()) => self.sync_dir().map(|()| Verdict::Won),
            Err(link_error) => match self.read_record(generation) {
                Ok(Some(record)) => Ok(self.verdict(record, my_tokens)),
                // The link failed and left no record: the storage is misbehaving.
                Ok(None) => Err(self.io_error("link the record", &record_path, link_error)),
                Err(read_error) => Err(read_error),
            },
        };
        // Best effort: a leftover temporary file costs a directory entry, never a verdict.
        let _ = fs::remove_file(&temp_path);
        outcome
    }

    fn verdict(&self, record: Record, my_tokens: &[String]) -> Verdict {
        if my_tokens.contains(&record.token) {
            Verdict::Won
        } else {
            Verdict::Lost { holder: record.holder }
        }
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
            let record = Record { generation, holder: holder.to_owned(), token: token.clone() };
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
        file.take(MAX_RECORD_LEN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| self.io_error("read the record", &path, error))?;
        let corrupt = |reason: String| ArbiterError::CorruptRecord { path: path.clone(), reason };
        if bytes.len() as u64 > MAX_RECORD_LEN_BYTES {
            return Err(corrupt(format!("it is over {MAX_RECORD_LEN_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| corrupt("it is not UTF-8".into()))?;
        let record = Record::parse(&text).map_err(corrupt)?;
        if record.generation != generation {
            return Err(corrupt(format!("it is for generation {}", record.generation)));
        }
        Ok(Some(record))
    }
}

fn check_holder(holder: &str) -> Result<(), ArbiterError> {
    let reason = if holder.is_empty() {
        "it is empty"
    } else if holder.len() > MAX_HOLDER_LEN_BYTES {
        "it is over 256 bytes"
    } else if holder.chars().any(char::is_control) {
        "it contains a control character (newline, NUL, ...)"
    } else {
        return Ok(());
    };
    Err(ArbiterError::InvalidHolder { holder: holder.to_owned(), reason })
}

/// A token no other attempt uses: this process's id and attempt count, the time, and a hash of
/// the holder name and host (two hosts can share a pid and, in principle, a clock reading).
fn new_token(holder: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let count = ATTEMPT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    // RandomState is seeded randomly per process: different on the two hosts.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(holder.as_bytes());
    if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
        hasher.write(host.as_bytes());
    }
    format!("{:x}-{count:x}-{nanos:x}-{:016x}", std::process::id(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_partial_text() {
        let record = Record { generation: 7, holder: "backup@b".into(), token: "t1".into() };
        let text = record.to_text();
        assert_eq!(Record::parse(&text).unwrap(), record);
        for cut in 0..text.len() {
            assert!(Record::parse(&text[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
    }

    #[test]
    fn holder_identity_is_checked() {
        assert!(check_holder("primary@a pid 1").is_ok());
        for bad in ["", "a\nb", "nul\0", &"x".repeat(MAX_HOLDER_LEN_BYTES + 1)] {
            assert!(matches!(check_holder(bad), Err(ArbiterError::InvalidHolder { .. })));
        }
    }
}
