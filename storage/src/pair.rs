//! A pair's identity, kept beside its arbiter's records so that both sides read it from one
//! place and never from flags that could differ (DESIGN §5): the pair id, the current generation
//! (`pair`) and the secret key both sides prove in the log channel's handshake (`pair.key`).
//! This module holds the identity, its text forms (the same on every backend) and the directory
//! backend's files, `DIR/pair` and `DIR/pair.key` (mode 0600); the etcd backend keeps the same
//! texts under its prefix ([`crate::arbiter::etcd`]).
//!
//! `ftvm pair init DIR` creates them (generation 1). A generation is over once the arbiter holds
//! a record for it (a failover happened); a pair started again takes the next one with
//! `ftvm pair next DIR`, which advances only a decided generation, so the user never counts.
//!
//! The files are replaced as a whole: written to a temporary name, synced, then `link(2)`ed
//! (creation: exactly one of two racing `init`s wins and the other reads its identity) or
//! `rename(2)`d (advancing the generation) into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::arbiter::{ArbiterBackend, ArbiterError, DirArbiter};

const PAIR_MAGIC_LINE: &str = "ftvm-pair 1";
const KEY_MAGIC_LINE: &str = "ftvm-pair-key 1";
/// The pair file's name in the arbiter directory.
pub const PAIR_FILE: &str = "pair";
/// The key file's name in the arbiter directory.
pub const KEY_FILE: &str = "pair.key";

/// A pair's identity as both sides read it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairIdentity {
    /// A random id naming the pair (hex).
    pub id: String,
    /// The generation the pair runs in now.
    pub generation: u64,
    /// The secret both sides prove in the handshake.
    pub key: [u8; 32],
}

impl std::fmt::Debug for PairIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "PairIdentity {{ id: {}, generation: {}, key: .. }}",
            self.id, self.generation
        )
    }
}

/// Why a pair's identity could not be read or changed.
#[derive(Debug, Error)]
pub enum PairError {
    /// The arbiter holds no pair yet.
    #[error(
        "{location} holds no FT pair: create one with `ftvm pair init {location}` (once, on \
         either host)"
    )]
    Missing {
        /// The arbiter (a directory or an etcd URL).
        location: String,
    },
    /// `init` found a pair already there.
    #[error("{location} already holds pair {id} (generation {generation}); nothing was changed")]
    Exists {
        /// The arbiter (a directory or an etcd URL).
        location: String,
        /// The pair there.
        id: String,
        /// Its generation.
        generation: u64,
    },
    /// A file or key is not what this module writes.
    #[error("{what} is not a valid ftvm pair file ({reason}); restore it, or remove the pair's files (or keys) and run `ftvm pair init` on both hosts' behalf again")]
    Corrupt {
        /// The file or etcd key.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// `next` was asked to leave a generation the arbiter has not decided.
    #[error(
        "generation {generation} of pair {id} is not over (the arbiter holds no record for it), \
         so a pair may still be running in it: nothing was changed"
    )]
    Undecided {
        /// The pair.
        id: String,
        /// Its current generation.
        generation: u64,
    },
    /// The arbiter could not be reached or refused (the etcd backend; the directory's record).
    #[error(transparent)]
    Arbiter(#[from] ArbiterError),
    /// The files could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PairError + 'a {
    move |source| PairError::Io { action, path: path.to_owned(), source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

/// Lines after a magic line, with `key value` pairs checked in order.
fn fields<'a>(text: &'a str, magic: &str, keys: &[&str]) -> Result<Vec<&'a str>, String> {
    let body = text.strip_suffix('\n').ok_or("it does not end with a newline")?;
    let mut lines = body.split('\n');
    if lines.next() != Some(magic) {
        return Err(format!("its first line is not {magic:?}"));
    }
    let values: Vec<&str> = keys
        .iter()
        .map(|key| {
            lines
                .next()
                .and_then(|line| line.strip_prefix(key))
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| format!("expected a {key:?} line"))
        })
        .collect::<Result<_, _>>()?;
    match lines.next() {
        None => Ok(values),
        Some(extra) => Err(format!("unexpected line {extra:?}")),
    }
}

/// The pair file's text.
pub(crate) fn pair_text(identity: &PairIdentity) -> String {
    format!("{PAIR_MAGIC_LINE}\nid {}\ngeneration {}\n", identity.id, identity.generation)
}

/// The id and generation in a pair file's text.
pub(crate) fn parse_pair_text(text: &str) -> Result<(String, u64), String> {
    let values = fields(text, PAIR_MAGIC_LINE, &["id", "generation"])?;
    let generation = values[1]
        .parse()
        .ok()
        .filter(|generation| *generation > 0)
        .ok_or_else(|| format!("bad generation {:?}", values[1]))?;
    Ok((values[0].to_owned(), generation))
}

/// The key file's text.
pub(crate) fn key_text(key: &[u8; 32]) -> String {
    format!("{KEY_MAGIC_LINE}\n{}\n", hex(key))
}

/// The key in a key file's text.
pub(crate) fn parse_key_text(text: &str) -> Result<[u8; 32], String> {
    let key_hex = text
        .strip_prefix(KEY_MAGIC_LINE)
        .and_then(|rest| rest.strip_prefix('\n'))
        .and_then(|rest| rest.strip_suffix('\n'))
        .ok_or_else(|| format!("it is not a {KEY_MAGIC_LINE:?} file"))?;
    parse_hex::<32>(key_hex).ok_or_else(|| "the key is not 64 hex digits".into())
}

/// Reads a key kept in a file of its own (`--key FILE`, or `DIR/pair.key`).
pub(crate) fn read_key_file(key_path: &Path) -> Result<[u8; 32], PairError> {
    let key_text = fs::read_to_string(key_path).map_err(io_error("read the key file", key_path))?;
    parse_key_text(&key_text)
        .map_err(|reason| PairError::Corrupt { what: key_path.display().to_string(), reason })
}

/// A new pair: random id and key, generation 1.
pub(crate) fn new_identity() -> io::Result<PairIdentity> {
    let mut id_bytes = [0u8; 8];
    let mut key = [0u8; 32];
    random(&mut id_bytes)?;
    random(&mut key)?;
    Ok(PairIdentity { id: hex(&id_bytes), generation: 1, key })
}

/// The pair files of one arbiter directory.
#[derive(Clone, Debug)]
pub struct PairDir {
    dir: PathBuf,
}

impl PairDir {
    /// The pair files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PairDir { dir: dir.into() }
    }

    fn pair_path(&self) -> PathBuf {
        self.dir.join(PAIR_FILE)
    }

    /// Where the key is kept unless a side names another key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// Creates a new pair (random id and key, generation 1). Refuses if one exists.
    pub fn init(&self) -> Result<PairIdentity, PairError> {
        let identity = new_identity().map_err(io_error("draw random bytes for", &self.dir))?;
        // The key first: a pair file never exists without its key.
        let key_linked =
            self.publish(&self.key_path(), &key_text(&identity.key), Publish::Create)?;
        if !key_linked {
            return Err(self.exists_error());
        }
        if !self.publish(&self.pair_path(), &pair_text(&identity), Publish::Create)? {
            let _ = fs::remove_file(self.key_path());
            return Err(self.exists_error());
        }
        Ok(identity)
    }

    fn exists_error(&self) -> PairError {
        // A racing `init` links its key before its pair file: give it a moment to finish, so
        // the loser reports the winner's pair rather than none.
        let mut loaded = self.load(None);
        for _ in 0..100 {
            if !matches!(loaded, Err(PairError::Missing { .. })) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            loaded = self.load(None);
        }
        match loaded {
            Ok(existing) => PairError::Exists {
                location: self.dir.display().to_string(),
                id: existing.id,
                generation: existing.generation,
            },
            Err(error) => error,
        }
    }

    /// Reads the pair, with the key from `key_file` if given, else from the directory.
    pub fn load(&self, key_file: Option<&Path>) -> Result<PairIdentity, PairError> {
        let pair_path = self.pair_path();
        let text = match fs::read_to_string(&pair_path) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(PairError::Missing { location: self.dir.display().to_string() })
            }
            Err(error) => return Err(io_error("read", &pair_path)(error)),
        };
        let (id, generation) = parse_pair_text(&text).map_err(|reason| PairError::Corrupt {
            what: pair_path.display().to_string(),
            reason,
        })?;
        let key_path = key_file.map_or_else(|| self.key_path(), Path::to_owned);
        let key = read_key_file(&key_path)?;
        Ok(PairIdentity { id, generation, key })
    }

    /// Moves the pair to the next generation, once the arbiter has decided the current one.
    pub fn next(&self) -> Result<PairIdentity, PairError> {
        let mut identity = self.load(None)?;
        let decided = DirArbiter::new(&self.dir).holder(identity.generation)?;
        if decided.is_none() {
            return Err(PairError::Undecided { id: identity.id, generation: identity.generation });
        }
        identity.generation += 1;
        self.publish(&self.pair_path(), &pair_text(&identity), Publish::Replace)?;
        Ok(identity)
    }

    /// Writes `text` to a fresh temporary file, syncs it, and puts it at `path`: with
    /// `Create`, only if nothing is there (returns false otherwise); with `Replace`, over it.
    fn publish(&self, path: &Path, text: &str, mode: Publish) -> Result<bool, PairError> {
        let temp = self.dir.join(format!(".pair.{}.{}.tmp", std::process::id(), unique()));
        let written =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).and_then(
                |mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()),
            );
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error("write a temporary file in", &self.dir)(error));
        }
        let placed = match mode {
            Publish::Create => match fs::hard_link(&temp, path) {
                Ok(()) => Ok(true),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(error) => Err(error),
            },
            Publish::Replace => fs::rename(&temp, path).map(|()| true),
        };
        let _ = fs::remove_file(&temp);
        let placed = placed.map_err(io_error("write", path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("sync", &self.dir))?;
        Ok(placed)
    }
}

enum Publish {
    Create,
    Replace,
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    COUNT.fetch_add(1, Ordering::Relaxed)
}

/// Random bytes from the kernel.
fn random(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_and_next() {
        let dir = tempfile::tempdir().unwrap();
        let pair = PairDir::new(dir.path());
        assert!(matches!(pair.load(None), Err(PairError::Missing { .. })));
        let created = pair.init().unwrap();
        assert_eq!(created.generation, 1);
        assert_eq!(pair.load(None).unwrap(), created);
        assert!(matches!(pair.init(), Err(PairError::Exists { generation: 1, .. })));
        assert!(matches!(pair.next(), Err(PairError::Undecided { generation: 1, .. })));
        DirArbiter::new(dir.path()).try_set(1, "backup@b").unwrap();
        let next = pair.next().unwrap();
        assert_eq!((next.id.clone(), next.generation, next.key), (created.id, 2, created.key));
        assert_eq!(pair.load(None).unwrap(), next);
        let mode = fs::metadata(pair.key_path()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn a_key_file_elsewhere_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair = PairDir::new(dir.path());
        let identity = pair.init().unwrap();
        let elsewhere = dir.path().join("other.key");
        fs::copy(pair.key_path(), &elsewhere).unwrap();
        fs::write(pair.key_path(), "garbage\n").unwrap();
        assert_eq!(pair.load(Some(&elsewhere)).unwrap(), identity);
        let error = pair.load(None).unwrap_err().to_string();
        assert!(error.contains("pair.key") && error.contains("not a"), "{error}");
        fs::write(dir.path().join(PAIR_FILE), "ftvm-pair 1\nid x\ngeneration 0\n").unwrap();
        let error = pair.load(Some(&elsewhere)).unwrap_err().to_string();
        assert!(error.contains("bad generation"), "{error}");
    }
}
