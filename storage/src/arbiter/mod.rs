//! The test-and-set arbiter an FT pair uses to decide who goes on when the two sides lose each
//! other (DESIGN §5), and the home of the pair's identity. One record per FT generation: the
//! first side to set it holds the generation and goes live (the backup) or solo (the primary);
//! the other learns who holds it and halts.
//!
//! Two backends implement [`ArbiterBackend`]:
//!
//! - [`dir`]: a directory both hosts see (`link(2)` of a complete file; the pair's identity in
//!   files beside the records). Named by a plain path.
//! - [`etcd`]: an etcd cluster, for hosts that share nothing else (a create-if-absent
//!   transaction; the identity under a key prefix). Named by
//!   `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
//!
//! [`ArbiterLocation`] parses either form (the `--arbiter` flag and `ftvm pair ...`) and opens
//! the backend. The retry rules are the backends' common part, here: an attempt whose outcome is
//! unknown (the storage did not answer) is retried by [`ArbiterBackend::set_with_retry`], which
//! remembers the tokens of its earlier attempts so that a win hidden by a lost reply is
//! recognised as a win, never turned into a loss; [`ArbiterError::fix`] tells configuration
//! errors (a side stops at start) from storage that does not answer (retried, visibly).

pub mod dir;
pub mod etcd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::pair::{PairError, PairIdentity};

pub use dir::DirArbiter;
/// The directory backend under the name it had before there were backends.
pub use dir::DirArbiter as Arbiter;
pub use etcd::{EtcdArbiter, EtcdError};

/// The first line of every record: what wrote it, in which format.
const RECORD_MAGIC_LINE: &str = "ftvm-arbiter 1";

/// The longest holder identity accepted, in bytes.
pub const MAX_HOLDER_LEN_BYTES: usize = 256;

/// The largest record read back; a bigger one is not a record this arbiter wrote.
const MAX_RECORD_LEN_BYTES: usize = 4096;

/// Makes tokens unique among the attempts of one process.
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
    /// The shared directory could not be reached or used; worth retrying.
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
        source: std::io::Error,
    },
    /// The etcd cluster could not be reached or refused the request.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The record exists but is not one this arbiter writes: no one may go live on it.
    #[error(
        "arbiter record {record} exists but is not a valid arbiter record ({reason}); no side \
         can go live on it: inspect or remove it by hand"
    )]
    CorruptRecord {
        /// The record (a path or an etcd key).
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`ArbiterBackend::set_with_retry`] was told to give up before the storage answered.
    #[error(
        "arbiter {location}: gave up on generation {generation} after {attempts} attempts; \
         last error: {last_error}"
    )]
    GaveUp {
        /// The arbiter (a directory or an etcd URL).
        location: String,
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
    /// Whether retrying may help (the storage could not be reached or refused for now), as
    /// opposed to a problem retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ArbiterError::Io { .. } => true,
            ArbiterError::Etcd(error) => error.is_transient(),
            _ => false,
        }
    }

    /// What an operator should do, when the error is one of configuration rather than of
    /// storage that does not answer (a missing or read-only directory, an etcd that refuses this
    /// user, an endpoint that is not etcd). `None` for errors worth retrying (EIO, ESTALE, a
    /// timeout, an unreachable cluster, ...). At start a side stops on these; once running it
    /// retries everything transient, since a side must not go on without a verdict and an
    /// operator can still fix the storage.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            ArbiterError::Io { source, .. } => dir::fix(source),
            ArbiterError::Etcd(error) => error.fix(),
            _ => None,
        }
    }
}

/// One arbiter: the records of a pair's generations and the pair's identity, on one kind of
/// storage. Implementations decide one attempt ([`ArbiterBackend::attempt`]); the retrying is
/// common.
pub trait ArbiterBackend: fmt::Debug + Send + Sync {
    /// The arbiter as a user names it (the directory, or the etcd URL), for messages.
    fn location(&self) -> String;

    /// Checks that records can be set here, before a side depends on it, with the
    /// test-and-set's own primitive on a scratch name. Errors name the place and the step;
    /// [`ArbiterError::fix`] says whether it is a configuration error.
    fn probe(&self) -> Result<(), ArbiterError>;

    /// One test-and-set of `generation`'s record for `holder`. The attempt's token is pushed to
    /// `my_tokens` before anything is written; a record carrying any of `my_tokens` is a win
    /// (an earlier attempt of the same caller set it, and its reply was lost).
    fn attempt(
        &self,
        generation: u64,
        holder: &str,
        my_tokens: &mut Vec<String>,
    ) -> Result<Verdict, ArbiterError>;

    /// Who holds `generation`, if anyone yet.
    fn holder(&self, generation: u64) -> Result<Option<String>, ArbiterError>;

    /// Creates a new pair here (random id and key, generation 1). Refuses if one exists; of two
    /// racing `init`s exactly one creates the pair.
    fn init_pair(&self) -> Result<PairIdentity, PairError>;

    /// Reads the pair, with the key from `key_file` if given, else from beside the records.
    fn load_pair(&self, key_file: Option<&Path>) -> Result<PairIdentity, PairError>;

    /// Moves the pair to the next generation, only once the arbiter decided the current one.
    fn next_pair(&self) -> Result<PairIdentity, PairError>;

    /// One test-and-set. An error means the outcome is unknown; in the rare case a lost reply
    /// hid a win, a later `try_set` reports `Lost` with this side's own holder name.
    /// [`ArbiterBackend::set_with_retry`] does not have that ambiguity.
    fn try_set(&self, generation: u64, holder: &str) -> Result<Verdict, ArbiterError> {
        self.attempt(generation, holder, &mut Vec::new())
    }

    /// Test-and-set until the storage answers: while the error is transient, sleeps
    /// `retry_interval` and tries again. Before each wait, `give_up` is shown the error; if it
    /// returns true, the result is [`ArbiterError::GaveUp`]. Never returns `Won` unless the
    /// record carries this call's own token. Errors that retrying cannot fix are returned at
    /// once.
    fn set_with_retry(
        &self,
        generation: u64,
        holder: &str,
        retry_interval: Duration,
        give_up: &mut dyn FnMut(&ArbiterError) -> bool,
    ) -> Result<Verdict, ArbiterError> {
        let mut my_tokens = Vec::new();
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            match self.attempt(generation, holder, &mut my_tokens) {
                Err(error) if error.is_transient() => {
                    if give_up(&error) {
                        return Err(ArbiterError::GaveUp {
                            location: self.location(),
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
}

/// Where an arbiter lives, as the `--arbiter` flag names it: a directory (a bare path) or an
/// etcd cluster (`etcd://HOST:PORT[,HOST:PORT...]/PREFIX`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArbiterLocation {
    /// A directory both hosts see.
    Dir(PathBuf),
    /// An etcd cluster and the key prefix of this pair.
    Etcd(etcd::EtcdUrl),
}

impl ArbiterLocation {
    /// The backend at this location. Nothing is contacted yet.
    pub fn open(&self) -> Box<dyn ArbiterBackend> {
        match self {
            ArbiterLocation::Dir(dir) => Box::new(DirArbiter::new(dir)),
            ArbiterLocation::Etcd(url) => Box::new(EtcdArbiter::new(url.clone())),
        }
    }
}

impl FromStr for ArbiterLocation {
    type Err = EtcdError;

    /// `etcd://...` is an etcd URL (and must parse as one); anything else is a directory.
    fn from_str(text: &str) -> Result<Self, EtcdError> {
        if text.starts_with(etcd::SCHEME) {
            Ok(ArbiterLocation::Etcd(text.parse()?))
        } else {
            Ok(ArbiterLocation::Dir(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for ArbiterLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArbiterLocation::Dir(dir) => write!(formatter, "{}", dir.display()),
            ArbiterLocation::Etcd(url) => write!(formatter, "{url}"),
        }
    }
}

/// A record as stored: the same text on both backends. The etcd record also names the pair
/// (its keys are not inside a directory that is the pair's own).
#[derive(Debug, PartialEq, Eq)]
struct Record {
    generation: u64,
    holder: String,
    token: String,
    pair_id: Option<String>,
}

impl Record {
    fn to_text(&self) -> String {
        let pair = self.pair_id.as_ref().map(|id| format!("pair {id}\n")).unwrap_or_default();
        format!(
            "{RECORD_MAGIC_LINE}\ngeneration {}\nholder {}\ntoken {}\n{pair}",
            self.generation, self.holder, self.token
        )
    }

    fn parse(text: &str) -> Result<Record, String> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err("it does not end with a newline".into());
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let (magic, generation, holder, token, pair) = match lines[..] {
            [magic, generation, holder, token] => (magic, generation, holder, token, None),
            [magic, generation, holder, token, pair] => {
                (magic, generation, holder, token, Some(pair))
            }
            _ => return Err(format!("it has {} lines instead of 4 or 5", lines.len())),
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
        let pair_id = pair.map(|pair| field("pair", pair)).transpose()?;
        if holder.is_empty() || token.is_empty() {
            return Err("empty holder or token".into());
        }
        Ok(Record { generation, holder, token, pair_id })
    }

    /// Reads a stored record of `generation` found at `name`.
    fn from_bytes(bytes: &[u8], generation: u64, name: &str) -> Result<Record, ArbiterError> {
        let corrupt =
            |reason: String| ArbiterError::CorruptRecord { record: name.to_owned(), reason };
        if bytes.len() > MAX_RECORD_LEN_BYTES {
            return Err(corrupt(format!("it is over {MAX_RECORD_LEN_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("it is not UTF-8".into()))?;
        let record = Record::parse(text).map_err(corrupt)?;
        if record.generation != generation {
            return Err(corrupt(format!("it is for generation {}", record.generation)));
        }
        Ok(record)
    }

    /// Won if the record carries one of this caller's tokens.
    fn verdict(self, my_tokens: &[String]) -> Verdict {
        if my_tokens.contains(&self.token) {
            Verdict::Won
        } else {
            Verdict::Lost { holder: self.holder }
        }
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
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        hasher.write(host.as_bytes());
    }
    format!("{:x}-{count:x}-{nanos:x}-{:016x}", std::process::id(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_partial_text() {
        for pair_id in [None, Some("0123abcd".to_owned())] {
            let record =
                Record { generation: 7, holder: "backup@b".into(), token: "t1".into(), pair_id };
            let text = record.to_text();
            assert_eq!(Record::parse(&text).unwrap(), record);
            for cut in 0..text.len() {
                let parsed = Record::parse(&text[..cut]);
                // A 5-line record cut after its 4th line is a whole 4-line record: the etcd
                // backend never writes those (it checks the pair line), the directory never
                // writes 5.
                if text[..cut].lines().count() == 4 && text[..cut].ends_with('\n') {
                    continue;
                }
                assert!(parsed.is_err(), "prefix of {cut} bytes accepted: {parsed:?}");
            }
        }
    }

    #[test]
    fn holder_identity_is_checked() {
        assert!(check_holder("primary@a pid 1").is_ok());
        for bad in ["", "a\nb", "nul\0", &"x".repeat(MAX_HOLDER_LEN_BYTES + 1)] {
            assert!(matches!(check_holder(bad), Err(ArbiterError::InvalidHolder { .. })));
        }
    }

    #[test]
    fn locations_parse_as_directories_or_etcd_urls() {
        assert_eq!(
            "/shared/ftvm".parse::<ArbiterLocation>().unwrap(),
            ArbiterLocation::Dir("/shared/ftvm".into())
        );
        let etcd: ArbiterLocation =
            "etcd://10.0.0.1:2379,10.0.0.2:2379/ftvm/pair-a".parse().unwrap();
        assert_eq!(etcd.to_string(), "etcd://10.0.0.1:2379,10.0.0.2:2379/ftvm/pair-a");
        assert!("etcd://".parse::<ArbiterLocation>().is_err());
    }
}
