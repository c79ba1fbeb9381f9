//! The etcd backend of the arbiter: for two hosts that share nothing but an etcd cluster
//! (DESIGN §5). Named `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`; everything of one pair lives
//! under `PREFIX`:
//!
//! - `PREFIX/pair`: the pair's id and current generation (the same text as the directory's
//!   `pair` file), `PREFIX/pair.key`: its secret key (same text as `pair.key`; `--key FILE`
//!   keeps it off the cluster);
//! - `PREFIX/generation-<N>`: the record of generation N: the winner's holder string (role,
//!   host, pid, time), a token of the attempt, and the pair id.
//!
//! # The atomic primitive: a create-if-absent transaction
//!
//! A record is set by one transaction: *if* the key's create revision is 0 (it does not exist),
//! put the record, *else* read it. etcd applies transactions in one total order through Raft, so
//! of any number of concurrent callers, on any members, exactly one sees the key absent; the
//! others read the winner's record in the same transaction. The value is written whole, so a
//! reader never sees half a record. Creating a pair is the same transaction over `pair` and
//! `pair.key` together; advancing its generation compares `pair`'s mod revision with the one it
//! read, so it never undoes another change.
//!
//! # Knowing whether one won
//!
//! As on the directory, a side wins exactly when the record carries one of its own tokens. A
//! transaction whose reply was lost (a timeout, a member that died after committing) may have
//! put the record: the next attempt, on the same or another member, finds it and sees its token.
//!
//! # The client: etcd's v3 JSON gateway over `ureq`
//!
//! Every etcd since 3.4 serves its v3 API as JSON on the client port (`/v3/kv/txn`,
//! `/v3/kv/range`, keys and values in base64). This backend speaks that over `ureq`, a small,
//! well-kept blocking HTTP client, with plain HTTP only (no TLS: its features are off). The
//! `etcd-client` crate was not used: it is gRPC over tonic, needs an async runtime (the FT code
//! here is threads) and its build compiles etcd's `.proto` files, which wants `protoc` on a
//! fresh machine. Five requests cover what the pair needs; the gateway keeps the dependency
//! small.
//!
//! # Timeouts, endpoints and errors
//!
//! Each request has a connect timeout of [`CONNECT_TIMEOUT`] and an overall one of
//! [`REQUEST_TIMEOUT`]. It goes to the member that answered last, then to each other listed
//! endpoint in turn; only when none answers is it [`EtcdError::Unreachable`] (transient: the
//! callers retry it visibly, and stop signals still work between attempts). A cluster that
//! answers but refuses (authentication on, permission denied), an endpoint that is not etcd, a
//! malformed URL or a prefix that holds no pair are configuration errors with a
//! [`EtcdError::fix`]: a side stops on them at start.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use thiserror::Error;

use super::{check_holder, new_token, ArbiterBackend, ArbiterError, Record, Verdict};
use crate::pair::{
    key_text, new_identity, pair_text, parse_key_text, parse_pair_text, read_key_file, PairError,
    PairIdentity,
};

/// How an etcd arbiter is named: `etcd://`.
pub const SCHEME: &str = "etcd://";

/// The longest a TCP connect to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest one request to one member may take, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest reply read from etcd, in bytes (the replies here hold a few small keys).
const MAX_REPLY_BYTES: u64 = 1 << 20;

/// Why the etcd arbiter could not give an answer.
#[derive(Debug, Error)]
pub enum EtcdError {
    /// The `--arbiter etcd://...` URL does not parse.
    #[error(
        "bad etcd arbiter URL {url:?}: {reason}; write it as \
         etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No listed member answered.
    #[error("etcd cluster {url} unreachable: {}", tried.join("; "))]
    Unreachable {
        /// The arbiter URL.
        url: String,
        /// Each endpoint tried and why it failed.
        tried: Vec<String>,
    },
    /// The cluster answered but refused this client (authentication on, permission denied).
    #[error("etcd at {endpoint} refused to {action} (HTTP {status}: {message})")]
    Refused {
        /// The member that answered.
        endpoint: String,
        /// What was asked.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The endpoint answered, but not as etcd's v3 JSON gateway.
    #[error("{endpoint} does not answer as etcd's v3 API when asked to {action} ({detail})")]
    NotEtcd {
        /// The endpoint.
        endpoint: String,
        /// What was asked.
        action: &'static str,
        /// What came back.
        detail: String,
    },
    /// etcd rejected the request for another reason.
    #[error("etcd at {endpoint} failed to {action} (HTTP {status}: {message})")]
    Failed {
        /// The member that answered.
        endpoint: String,
        /// What was asked.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// A record was asked for, but the prefix holds no pair (a wrong prefix, or a pair removed).
    #[error("etcd prefix {url} holds no FT pair, so no record can name it")]
    NoPair {
        /// The arbiter URL.
        url: String,
    },
}

impl EtcdError {
    /// Whether retrying may help. Everything but a malformed URL: a cluster that refuses now
    /// may be fixed by an operator while a side waits for a verdict.
    pub fn is_transient(&self) -> bool {
        !matches!(self, EtcdError::BadUrl { .. })
    }

    /// What an operator should do when this is a configuration error (a side stops at start);
    /// `None` when the cluster just does not answer (retried).
    pub fn fix(&self) -> Option<&'static str> {
        Some(match self {
            EtcdError::BadUrl { .. } => {
                "write it as etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. \
                 etcd://10.0.0.5:2379,10.0.0.6:2379/ftvm/pair-a"
            }
            EtcdError::Refused { .. } => {
                "this client does not log in to etcd: give the pair a cluster (or a prefix) that \
                 needs no authentication, or grant anonymous access to PREFIX"
            }
            EtcdError::NotEtcd { .. } => {
                "name etcd's client endpoints (port 2379 by default), etcd 3.4 or newer"
            }
            EtcdError::Failed { status, .. } if *status < 500 => {
                "read etcd's message above; the request was refused as invalid"
            }
            EtcdError::NoPair { .. } => {
                "check the prefix, or create the pair with `ftvm pair init etcd://.../PREFIX`"
            }
            EtcdError::Unreachable { .. } | EtcdError::Failed { .. } => return None,
        })
    }
}

/// An etcd arbiter's URL: the cluster's client endpoints and the pair's key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` of each member, in the order given.
    pub endpoints: Vec<String>,
    /// The key prefix, starting with `/` and not ending with one.
    pub prefix: String,
}

impl FromStr for EtcdUrl {
    type Err = EtcdError;

    fn from_str(url: &str) -> Result<Self, EtcdError> {
        let bad = |reason: &str| EtcdError::BadUrl { url: url.to_owned(), reason: reason.into() };
        let rest = url.strip_prefix(SCHEME).ok_or_else(|| bad("it does not start with etcd://"))?;
        let (hosts, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => return Err(bad("it names no key prefix after the hosts")),
        };
        if hosts.contains('@') {
            return Err(bad("user:password@ is not supported (this client does not log in)"));
        }
        let endpoints = hosts
            .split(',')
            .map(|endpoint| {
                let (host, port) = endpoint
                    .rsplit_once(':')
                    .ok_or_else(|| bad(&format!("endpoint {endpoint:?} is not HOST:PORT")))?;
                let port_ok = port.parse::<u16>().is_ok_and(|port| port > 0);
                let host_ok = !host.is_empty()
                    && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
                if !port_ok || !host_ok {
                    return Err(bad(&format!("endpoint {endpoint:?} is not HOST:PORT")));
                }
                Ok(endpoint.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = path.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(bad("its key prefix is empty; name one, e.g. /ftvm/pair-a"));
        }
        if prefix.contains("//") || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("its key prefix has an empty segment, a space or a control character"));
        }
        if prefix.contains(['?', '#']) {
            return Err(bad("its key prefix has a '?' or '#' (a URL query is not supported)"));
        }
        Ok(EtcdUrl { endpoints, prefix: prefix.to_owned() })
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{SCHEME}{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// A test-and-set on an etcd cluster, one key per FT generation under the pair's prefix.
pub struct EtcdArbiter {
    url: EtcdUrl,
    agent: ureq::Agent,
    /// The index of the endpoint that answered last: the first one tried next time.
    preferred: AtomicUsize,
}

impl fmt::Debug for EtcdArbiter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "EtcdArbiter({})", self.url)
    }
}

/// How one endpoint's reply counts.
enum Reply {
    /// The member answered: here is the JSON.
    Answer(Value),
    /// This member cannot answer now; another may.
    TryNext(String),
    /// The cluster answered with an error another member would repeat (or, for
    /// [`EtcdError::NotEtcd`], the endpoint is not a member at all).
    Stop(EtcdError),
}

impl EtcdArbiter {
    /// An arbiter on the cluster and prefix of `url`. Nothing is contacted yet.
    pub fn new(url: EtcdUrl) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // The cluster is reached directly: an HTTP proxy from the environment (ureq's
            // default) would put a stranger between a side and its arbiter.
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        EtcdArbiter { url, agent, preferred: AtomicUsize::new(0) }
    }

    /// The URL this arbiter was opened on.
    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.url.prefix)
    }

    fn record_key(&self, generation: u64) -> String {
        self.key(&format!("generation-{generation}"))
    }

    /// The key and the URL, for messages about one key.
    fn describe(&self, key: &str) -> String {
        format!("etcd key {key} at {}", self.url)
    }

    /// POSTs `body` to `path` on the members in turn until one answers.
    fn call(&self, path: &str, action: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let count = self.url.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        // An endpoint that is not etcd does not speak for the cluster: the others are tried,
        // but if none answers, the misconfigured one is what to report (a fix, not a retry).
        let mut not_etcd = None;
        for step in 0..count {
            let index = (first + step) % count;
            let endpoint = &self.url.endpoints[index];
            match self.post(endpoint, path, action, &body) {
                Reply::Answer(value) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Reply::TryNext(reason) => tried.push(format!("{endpoint}: {reason}")),
                Reply::Stop(error @ EtcdError::NotEtcd { .. }) => {
                    tried.push(format!("{endpoint}: not etcd"));
                    not_etcd.get_or_insert(error);
                }
                Reply::Stop(error) => return Err(error),
            }
        }
        Err(not_etcd.unwrap_or(EtcdError::Unreachable { url: self.url.to_string(), tried }))
    }

    fn post(&self, endpoint: &str, path: &str, action: &'static str, body: &str) -> Reply {
        let response = self
            .agent
            .post(&format!("http://{endpoint}{path}"))
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match response {
            Ok(response) => response,
            Err(error) => return Reply::TryNext(error.to_string()),
        };
        let status = response.status().as_u16();
        let text = match response.body_mut().with_config().limit(MAX_REPLY_BYTES).read_to_string() {
            Ok(text) => text,
            Err(error) => return Reply::TryNext(format!("reading the reply: {error}")),
        };
        let not_etcd = |detail: String| {
            Reply::Stop(EtcdError::NotEtcd { endpoint: endpoint.to_owned(), action, detail })
        };
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if status == 200 {
            return match json {
                Some(value) if value.get("header").is_some() => Reply::Answer(value),
                _ => not_etcd(format!("HTTP 200 with {:?}", excerpt(&text))),
            };
        }
        // grpc-gateway errors: {"error": ..., "code": <gRPC code>, "message": ...}.
        let Some((code, message)) = json.as_ref().and_then(|value| {
            Some((value.get("code")?.as_u64()?, value.get("message")?.as_str()?.to_owned()))
        }) else {
            return match status {
                502..=504 => Reply::TryNext(format!("HTTP {status}")),
                _ => not_etcd(format!("HTTP {status} with {:?}", excerpt(&text))),
            };
        };
        const UNKNOWN: u64 = 2;
        const DEADLINE_EXCEEDED: u64 = 4;
        const PERMISSION_DENIED: u64 = 7;
        const RESOURCE_EXHAUSTED: u64 = 8;
        const ABORTED: u64 = 10;
        const INTERNAL: u64 = 13;
        const UNAVAILABLE: u64 = 14;
        const UNAUTHENTICATED: u64 = 16;
        let auth_words = ["user name", "auth", "permission denied"];
        let endpoint = endpoint.to_owned();
        match code {
            PERMISSION_DENIED | UNAUTHENTICATED => {
                Reply::Stop(EtcdError::Refused { endpoint, action, status, message })
            }
            _ if auth_words.iter().any(|word| message.contains(word)) => {
                Reply::Stop(EtcdError::Refused { endpoint, action, status, message })
            }
            // No leader, a member being stopped, a timed-out proposal: another may answer.
            UNKNOWN | DEADLINE_EXCEEDED | RESOURCE_EXHAUSTED | ABORTED | INTERNAL | UNAVAILABLE => {
                Reply::TryNext(format!("HTTP {status}: {message}"))
            }
            _ => Reply::Stop(EtcdError::Failed { endpoint, action, status, message }),
        }
    }

    /// A transaction: `compare` all hold, then `success`, else `failure`. Returns whether it
    /// succeeded and its responses.
    fn txn(
        &self,
        action: &'static str,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Vec<Value>), EtcdError> {
        let body = json!({ "compare": compare, "success": success, "failure": failure });
        let reply = self.call("/v3/kv/txn", action, &body)?;
        // proto3 JSON leaves out false and empty fields.
        let succeeded = reply.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let responses = reply.get("responses").and_then(Value::as_array).cloned();
        Ok((succeeded, responses.unwrap_or_default()))
    }

    /// The value and mod revision of `key`, read linearizably.
    fn get(&self, key: &str, action: &'static str) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let reply = self.call("/v3/kv/range", action, &json!({ "key": b64(key.as_bytes()) }))?;
        self.first_kv(&reply, action)
    }

    /// The first key-value of a range response, if any.
    fn first_kv(
        &self,
        range: &Value,
        action: &'static str,
    ) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let Some(kv) = range.get("kvs").and_then(|kvs| kvs.get(0)) else { return Ok(None) };
        let bad = |detail: &str| EtcdError::NotEtcd {
            endpoint: self.url.endpoints.join(","),
            action,
            detail: detail.to_owned(),
        };
        let value = match kv.get("value").and_then(Value::as_str) {
            Some(text) => BASE64.decode(text).map_err(|_| bad("a value that is not base64"))?,
            None => Vec::new(),
        };
        let mod_revision = kv
            .get("mod_revision")
            .and_then(Value::as_str)
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| bad("a key-value without a mod revision"))?;
        Ok(Some((value, mod_revision)))
    }

    /// The range response at `index` of a transaction's responses.
    fn range_in(responses: &[Value], index: usize) -> &Value {
        static EMPTY: Value = Value::Null;
        responses.get(index).and_then(|response| response.get("response_range")).unwrap_or(&EMPTY)
    }

    /// Puts `key = value` only if `key` does not exist; else returns what is there.
    fn create(
        &self,
        action: &'static str,
        key: &str,
        value: &str,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        let (created, responses) =
            self.txn(action, vec![absent(key)], vec![put(key, value)], vec![range(key)])?;
        if created {
            return Ok(None);
        }
        let existing = self.first_kv(Self::range_in(&responses, 0), action)?;
        // The failure branch ran because the key existed; it may have been deleted since only
        // if someone removes records by hand.
        Ok(Some(existing.map(|(value, _)| value).unwrap_or_default()))
    }

    fn record(&self, generation: u64, bytes: &[u8]) -> Result<Record, ArbiterError> {
        let name = self.describe(&self.record_key(generation));
        let record = Record::from_bytes(bytes, generation, &name)?;
        if record.pair_id.is_none() {
            return Err(ArbiterError::CorruptRecord {
                record: name,
                reason: "no pair line".into(),
            });
        }
        Ok(record)
    }

    fn pair_error(&self, key: &str) -> impl Fn(String) -> PairError {
        let what = self.describe(key);
        move |reason| PairError::Corrupt { what: what.clone(), reason }
    }

    /// The pair's id and generation and `pair`'s mod revision, if there is a pair.
    fn read_pair(&self) -> Result<Option<(String, u64, i64)>, PairError> {
        let key = self.key("pair");
        let Some((bytes, mod_revision)) =
            self.get(&key, "read the pair").map_err(ArbiterError::from)?
        else {
            return Ok(None);
        };
        let text =
            String::from_utf8(bytes).map_err(|_| self.pair_error(&key)("not UTF-8".into()))?;
        let (id, generation) = parse_pair_text(&text).map_err(self.pair_error(&key))?;
        Ok(Some((id, generation, mod_revision)))
    }
}

impl ArbiterBackend for EtcdArbiter {
    fn location(&self) -> String {
        self.url.to_string()
    }

    /// Creates a scratch key with the record's own transaction and deletes it.
    fn probe(&self) -> Result<(), ArbiterError> {
        let key = self.key(&format!(".probe.{}", new_token("probe")));
        self.create("create a probe key", &key, "probe")?;
        self.call(
            "/v3/kv/deleterange",
            "delete a probe key",
            &json!({ "key": b64(key.as_bytes()) }),
        )?;
        Ok(())
    }

    fn attempt(
        &self,
        generation: u64,
        holder: &str,
        my_tokens: &mut Vec<String>,
    ) -> Result<Verdict, ArbiterError> {
        check_holder(holder)?;
        let record_key = self.record_key(generation);
        // One read of the record and the pair: already decided (possibly by an earlier attempt
        // of ours), or the pair id to write into the record.
        let action = "read the record and the pair";
        let (_, responses) =
            self.txn(action, vec![], vec![range(&record_key), range(&self.key("pair"))], vec![])?;
        if let Some((bytes, _)) = self.first_kv(Self::range_in(&responses, 0), action)? {
            return Ok(self.record(generation, &bytes)?.verdict(my_tokens));
        }
        let Some((pair_bytes, _)) = self.first_kv(Self::range_in(&responses, 1), action)? else {
            return Err(EtcdError::NoPair { url: self.url.to_string() }.into());
        };
        let pair_text = String::from_utf8_lossy(&pair_bytes);
        let (pair_id, _) = parse_pair_text(&pair_text).map_err(|reason| {
            ArbiterError::CorruptRecord { record: self.describe(&self.key("pair")), reason }
        })?;
        let token = new_token(holder);
        my_tokens.push(token.clone());
        let record =
            Record { generation, holder: holder.to_owned(), token, pair_id: Some(pair_id) };
        match self.create("create the record", &record_key, &record.to_text())? {
            None => Ok(Verdict::Won),
            Some(existing) => Ok(self.record(generation, &existing)?.verdict(my_tokens)),
        }
    }

    fn holder(&self, generation: u64) -> Result<Option<String>, ArbiterError> {
        match self.get(&self.record_key(generation), "read the record")? {
            None => Ok(None),
            Some((bytes, _)) => Ok(Some(self.record(generation, &bytes)?.holder)),
        }
    }

    /// Puts `pair` and `pair.key` in one transaction, only if neither exists.
    fn init_pair(&self) -> Result<PairIdentity, PairError> {
        let identity = new_identity().map_err(|source| PairError::Io {
            action: "draw random bytes for",
            path: "a new pair".into(),
            source,
        })?;
        let (pair_key, key_key) = (self.key("pair"), self.key("pair.key"));
        let (created, _) = self
            .txn(
                "create the pair",
                vec![absent(&pair_key), absent(&key_key)],
                vec![
                    put(&pair_key, &pair_text(&identity)),
                    put(&key_key, &key_text(&identity.key)),
                ],
                vec![],
            )
            .map_err(ArbiterError::from)?;
        if created {
            return Ok(identity);
        }
        Err(match self.read_pair()? {
            Some((id, generation, _)) => {
                PairError::Exists { location: self.location(), id, generation }
            }
            None => PairError::Corrupt {
                what: self.describe(&key_key),
                reason: "a key without its pair: remove it by hand or run `ftvm pair init` on \
                         another prefix"
                    .into(),
            },
        })
    }

    fn load_pair(&self, key_file: Option<&Path>) -> Result<PairIdentity, PairError> {
        let Some((id, generation, _)) = self.read_pair()? else {
            return Err(PairError::Missing { location: self.location() });
        };
        let key = match key_file {
            Some(path) => read_key_file(path)?,
            None => {
                let key_key = self.key("pair.key");
                let bytes = self
                    .get(&key_key, "read the pair's key")
                    .map_err(ArbiterError::from)?
                    .map(|(bytes, _)| bytes)
                    .ok_or_else(|| self.pair_error(&key_key)("it is missing".into()))?;
                let text = String::from_utf8_lossy(&bytes);
                parse_key_text(&text).map_err(self.pair_error(&key_key))?
            }
        };
        Ok(PairIdentity { id, generation, key })
    }

    /// Advances `pair` if no one changed it since it was read.
    fn next_pair(&self) -> Result<PairIdentity, PairError> {
        let mut identity = self.load_pair(None)?;
        let Some((_, _, mod_revision)) = self.read_pair()? else {
            return Err(PairError::Missing { location: self.location() });
        };
        if self.holder(identity.generation)?.is_none() {
            return Err(PairError::Undecided { id: identity.id, generation: identity.generation });
        }
        let read_generation = identity.generation;
        identity.generation += 1;
        let pair_key = self.key("pair");
        let unchanged = json!({
            "key": b64(pair_key.as_bytes()),
            "result": "EQUAL",
            "target": "MOD",
            "mod_revision": mod_revision.to_string(),
        });
        let (advanced, _) = self
            .txn(
                "advance the pair",
                vec![unchanged],
                vec![put(&pair_key, &pair_text(&identity))],
                vec![],
            )
            .map_err(ArbiterError::from)?;
        if advanced {
            return Ok(identity);
        }
        // Someone else changed the pair meanwhile (a racing `next`): report where it is now.
        let now = self.load_pair(None)?;
        if now.generation > read_generation {
            Ok(now)
        } else {
            Err(PairError::Undecided { id: now.id, generation: now.generation })
        }
    }
}

/// A compare that holds while `key` does not exist.
fn absent(key: &str) -> Value {
    json!({
        "key": b64(key.as_bytes()),
        "result": "EQUAL",
        "target": "CREATE",
        "create_revision": "0",
    })
}

/// A range request of a transaction, for one key.
fn range(key: &str) -> Value {
    json!({ "request_range": { "key": b64(key.as_bytes()) } })
}

/// A put request of a transaction.
fn put(key: &str, value: &str) -> Value {
    json!({ "request_put": { "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) } })
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The start of a reply, for messages.
fn excerpt(text: &str) -> String {
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        let url: EtcdUrl =
            "etcd://127.0.0.1:2379,[::1]:2379,etcd-b.lan:2379/ftvm/pair-a/".parse().unwrap();
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "[::1]:2379", "etcd-b.lan:2379"]);
        assert_eq!(url.prefix, "/ftvm/pair-a");
        assert_eq!(url.to_string(), "etcd://127.0.0.1:2379,[::1]:2379,etcd-b.lan:2379/ftvm/pair-a");
        for (bad, why) in [
            ("etcd://127.0.0.1:2379", "no key prefix"),
            ("etcd://127.0.0.1:2379/", "prefix is empty"),
            ("etcd://127.0.0.1/ftvm", "not HOST:PORT"),
            ("etcd://127.0.0.1:0/ftvm", "not HOST:PORT"),
            ("etcd://a:1,,b:2/ftvm", "not HOST:PORT"),
            ("etcd://root:pw@a:2379/ftvm", "not supported"),
            ("etcd://a:2379/ftvm//x", "empty segment"),
            ("etcd://a:2379/ftvm?x=1", "query"),
        ] {
            let error = bad.parse::<EtcdUrl>().unwrap_err();
            assert!(error.to_string().contains(why), "{bad}: {error}");
            assert!(error.fix().is_some() && !error.is_transient(), "{bad}");
        }
    }
}
