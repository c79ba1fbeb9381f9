//! The fault-tolerant pair (DESIGN §5, after VMware FT): a primary runs the
//! guest and streams every input it consumes to a backup over the log
//! channel; the backup replays the same guest just behind it. Output waits
//! for the backup's acknowledgement (the output rule). When one side is
//! presumed dead, the survivor must win the test-and-set on shared storage
//! (the arbiter) before it runs alone: the backup goes live, the primary goes
//! solo; the loser halts, so there is never split brain.
//!
//! [`primary`] holds the primary's side (log sink over the channel, held
//! outputs and their release), [`backup`] the backup's (entry source over the
//! channel, go-live), [`arbitrate`] the one decision both make.

pub mod backup;
pub mod primary;

use std::path::PathBuf;
use std::time::Duration;

use logchannel::ChannelConfig;
use storage::arbiter::{Arbiter, Verdict};

/// Settings both sides of a pair share.
#[derive(Clone, Debug)]
pub struct FtConfig {
    /// The directory on shared storage holding the arbiter's records.
    pub arbiter_dir: PathBuf,
    /// The pair's generation: one arbiter record per generation.
    pub generation: u64,
    /// Heartbeats and the failure timeout of the log channel.
    pub channel: ChannelConfig,
    /// Lag bound: the most unacknowledged log bytes before the primary waits.
    pub max_unacked_bytes: u64,
    /// Lag bound: the oldest an unacknowledged entry may get before the primary waits, in ms.
    pub max_unacked_age_ms: u64,
    /// Testing only: the primary sends its Nth clock reading to the backup
    /// off by one ns (its own guest gets the true value), so the backup must
    /// detect the divergence.
    pub inject_divergence_at: Option<u64>,
}

impl FtConfig {
    /// Defaults for a pair using `arbiter_dir`.
    pub fn new(arbiter_dir: PathBuf) -> Self {
        FtConfig {
            arbiter_dir,
            generation: 1,
            channel: ChannelConfig::default(),
            max_unacked_bytes: 4 << 20,
            max_unacked_age_ms: 200,
            inject_divergence_at: None,
        }
    }
}

/// What the primary saw of its pair, for `--stats` and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct PairReport {
    /// The primary's role at the end: `primary` or `solo`.
    pub role: String,
    /// The pair's generation.
    pub generation: u64,
    /// The highest sequence number sent.
    pub sent_seq: u64,
    /// The highest sequence number the backup acknowledged.
    pub acked_seq: u64,
    /// Bytes of log sent.
    pub sent_bytes: u64,
    /// Backup lag in entries, sampled at every entry sent: (median, p99).
    pub lag_entries: (u64, u64),
    /// Backup lag in bytes: (median, p99).
    pub lag_bytes: (u64, u64),
    /// Backup lag in ms (age of the oldest unacknowledged entry): (median, p99).
    pub lag_ms: (u64, u64),
}

impl std::fmt::Display for PairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "role {} generation {} sent seq {} acked seq {} log {} bytes lag entries {}/{} bytes {}/{} ms {}/{} (median/p99)",
            self.role,
            self.generation,
            self.sent_seq,
            self.acked_seq,
            self.sent_bytes,
            self.lag_entries.0,
            self.lag_entries.1,
            self.lag_bytes.0,
            self.lag_bytes.1,
            self.lag_ms.0,
            self.lag_ms.1
        )
    }
}

/// (median, p99) of `samples`.
pub fn median_p99(samples: &mut [u64]) -> (u64, u64) {
    if samples.is_empty() {
        return (0, 0);
    }
    samples.sort_unstable();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize];
    (at(0.5), at(0.99))
}

/// How often an unreachable arbiter is tried again.
const ARBITER_RETRY: Duration = Duration::from_millis(50);

/// Asks the arbiter whether `side` may run the guest alone for this
/// generation. Waits (and says so) while the storage cannot be reached: a
/// side never goes on without winning. `Err` carries the message a loser halts with.
pub fn arbitrate(config: &FtConfig, side: &str, why: &str) -> Result<(), String> {
    eprintln!(
        "ftvm: {why}; asking the arbiter in {} (generation {})",
        config.arbiter_dir.display(),
        config.generation
    );
    let arbiter = Arbiter::new(&config.arbiter_dir);
    let mut reported = false;
    let verdict = arbiter.set_with_retry(config.generation, side, ARBITER_RETRY, |error| {
        if !reported {
            eprintln!("ftvm: arbiter unreachable ({error}); retrying until it answers");
            reported = true;
        }
        false
    });
    match verdict {
        Ok(Verdict::Won) => Ok(()),
        Ok(Verdict::Lost { holder }) => Err(format!(
            "the arbiter already names `{holder}` for generation {}: this {side} halts",
            config.generation
        )),
        Err(error) => Err(format!("the arbiter failed ({error}): this {side} halts")),
    }
}
