//! The fault-tolerant pair (DESIGN §5, after VMware FT): a primary runs the
//! guest and streams every input it consumes to a backup over the log
//! channel; the backup replays the same guest just behind it. Output waits
//! for the backup's acknowledgement (the output rule). When one side is
//! presumed dead, the survivor must win the test-and-set on shared storage
//! (the arbiter) before it runs alone: the backup goes live, the primary goes
//! solo; the loser halts, so there is never split brain.
//!
//! [`primary`] holds the primary's side (log sink over the channel, held
//! outputs and their release under the lease), [`backup`] the backup's (entry
//! source over the channel, go-live), [`prepare`] the checks both make at
//! start, [`arbitrate`] the one decision both make on failure.

pub mod backup;
pub mod primary;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use logchannel::{ChannelConfig, Credentials};
use storage::arbiter::{ArbiterError, ArbiterLocation, Verdict};
use storage::pair::{PairError, PairIdentity};
use thiserror::Error;

use crate::inputs::live::{deadline_after, sleep_until, unix_time_ns};
use crate::signals;

/// Settings of one side of a pair. What both sides must agree on (the pair,
/// its key and generation) is not here: it is read from the arbiter.
#[derive(Clone, Debug)]
pub struct FtConfig {
    /// Where the pair's identity and the arbiter's records live: a directory on shared
    /// storage, or an etcd cluster and prefix.
    pub arbiter: ArbiterLocation,
    /// The pair's key from this file instead of the arbiter.
    pub key_file: Option<PathBuf>,
    /// Heartbeats and the failure timeout of the log channel.
    pub channel: ChannelConfig,
    /// Lag bound: the most log bytes the backup may have left to replay before the primary waits.
    pub max_lag_bytes: u64,
    /// Lag bound: the oldest an entry the backup has not replayed may get before the primary
    /// waits, in ms. Going live after a failure takes at most this plus the failure timeout.
    pub max_lag_ms: u64,
    /// The most bytes of output the primary holds for acknowledgement before its vCPU waits.
    pub max_held_bytes: u64,
    /// Testing only: the primary sends its Nth clock reading to the backup
    /// off by one ns (its own guest gets the true value), so the backup must
    /// detect the divergence.
    pub inject_divergence_at: Option<u64>,
}

impl FtConfig {
    /// Defaults for a pair using `arbiter`.
    pub fn new(arbiter: ArbiterLocation) -> Self {
        FtConfig {
            arbiter,
            key_file: None,
            channel: ChannelConfig::default(),
            max_lag_bytes: 32 << 20,
            max_lag_ms: 200,
            max_held_bytes: 256 << 20,
            inject_divergence_at: None,
        }
    }
}

/// What the primary saw of its pair, for `--stats`, the API socket and the benchmark.
#[derive(Clone, Debug, Default, serde::Serialize)]
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
    /// Backup replay lag in entries, sampled at every entry sent: (median, p99).
    pub lag_entries: (u64, u64),
    /// Backup lag in bytes: (median, p99).
    pub lag_bytes: (u64, u64),
    /// Backup lag in ms (age of the oldest unacknowledged entry): (median, p99).
    pub lag_ms: (u64, u64),
    /// Outputs released under the lease (not solo).
    pub released_under_lease: u64,
    /// Time spent between a lease check and the call that performs the output it allowed,
    /// summed: the window in which a pause could still let an output out after the backup
    /// went live.
    pub fence_window_ns: u64,
    /// The longest output call (a disk write or flush, a TAP write) released under the lease:
    /// storage slower than the lease's margin could land a write late too.
    pub longest_output_call_ns: u64,
    /// How long the pair ran, for the window's share of it.
    pub wall_ns: u64,
}

impl std::fmt::Display for PairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "role {} generation {} sent seq {} acked seq {} log {} bytes lag entries {}/{} bytes {}/{} ms {}/{} (median/p99) fence window {} ns over {} releases ({:.2} ppm of the run), longest output call {} us",
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
            self.lag_ms.1,
            self.fence_window_ns,
            self.released_under_lease,
            self.fence_window_ns as f64 * 1e6 / self.wall_ns.max(1) as f64,
            self.longest_output_call_ns / 1_000
        )
    }
}

/// The packet that announces the guest's MAC from this side: a gratuitous RARP (what VMware
/// FT sends), so every bridge on the way learns the guest's port without the VMM knowing its
/// IP address. Ready for the TAP (with its virtio-net header).
pub fn mac_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x80, 0x35]); // EtherType: RARP
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 3]); // Ethernet/IPv4, "request reverse"
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.resize(60, 0);
    crate::devices::virtio::net::plain_packet(&frame)
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

/// Why a side cannot take part in its pair at start (exit status 119): each
/// names the arbiter or setting at fault and the fix.
#[derive(Debug, Error)]
pub enum PairSetupError {
    /// The arbiter cannot hold records.
    #[error("the arbiter cannot be used: {error}; {fix}")]
    Arbiter {
        /// What failed.
        error: ArbiterError,
        /// What to do.
        fix: &'static str,
    },
    /// The pair's identity is missing or unreadable.
    #[error(transparent)]
    Identity(#[from] PairError),
    /// The current generation was already decided: a failover happened in it.
    #[error(
        "generation {generation} of pair {pair_id} is over: the arbiter gave it to {holder}. If \
         that side still runs, it owns the guest. To start the pair again, run `ftvm pair next \
         {dir}` once, then start both sides"
    )]
    GenerationDecided {
        /// The pair.
        pair_id: String,
        /// Its current generation.
        generation: u64,
        /// Who won it.
        holder: String,
        /// The arbiter (a directory or an etcd URL).
        dir: String,
    },
    /// The peer and this side cannot form a pair (key, pair, generation, version, devices).
    #[error("{0}")]
    Refused(String),
}

/// The checks a side makes before it joins its pair: the arbiter (a directory
/// or an etcd cluster) can hold records (a configuration error stops the
/// side; storage that does not answer is retried, visibly, until a stop
/// signal), the pair's identity is there, and its current generation is not
/// decided yet.
pub fn prepare(config: &FtConfig) -> Result<Credentials, PairSetupError> {
    prepare_in(config, false)
}

/// [`prepare`] for a spare: a backup that waits to be added to a running guest
/// (`add-backup`), which moves the pair to the generation after the one it won. Started
/// after the failover: before it, the current generation is the running pair's own.
pub fn prepare_spare(config: &FtConfig) -> Result<Credentials, PairSetupError> {
    prepare_in(config, true)
}

fn prepare_in(config: &FtConfig, spare: bool) -> Result<Credentials, PairSetupError> {
    let arbiter = config.arbiter.open();
    let mut last_report = String::new();
    // Each step is retried while the storage does not answer (an etcd member restarting
    // between two of them, say); a configuration error stops the side.
    let mut until_answered = |error: ArbiterError| -> Result<(), PairSetupError> {
        if let Some(fix) = error.fix() {
            return Err(PairSetupError::Arbiter { error, fix });
        }
        if !error.is_transient() {
            let fix = "check the shared storage or the etcd cluster";
            return Err(PairSetupError::Arbiter { error, fix });
        }
        report_retry(&mut last_report, &error);
        sleep_until(deadline_after(ARBITER_RETRY)).map_err(|_| {
            PairSetupError::Refused(format!(
                "stopped while waiting for the arbiter {}",
                config.arbiter
            ))
        })
    };
    while let Err(error) = arbiter.probe() {
        until_answered(error)?;
    }
    let identity: PairIdentity = loop {
        match arbiter.load_pair(config.key_file.as_deref()) {
            Err(PairError::Arbiter(error)) => until_answered(error)?,
            outcome => break outcome?,
        }
    };
    let holder = loop {
        match arbiter.holder(identity.generation) {
            Err(error) => until_answered(error)?,
            Ok(holder) => break holder,
        }
    };
    if let Some(holder) = holder.clone().filter(|_| !spare) {
        return Err(PairSetupError::GenerationDecided {
            pair_id: identity.id,
            generation: identity.generation,
            holder,
            dir: config.arbiter.to_string(),
        });
    }
    let generation = if spare {
        spare_generation(identity.generation, holder.is_some())
    } else {
        identity.generation
    };
    if spare {
        eprintln!(
            "ftvm: a spare of pair {}: waits to be added to the running guest (by `ftvm remote \
             --api-socket PATH add-backup ADDR` on the side that runs it, or its --restore-to)",
            identity.id
        );
    }
    Ok(Credentials { pair_id: identity.id, key: identity.key, generation })
}

/// The generation a spare joins: the one after a decided generation (its winner runs the
/// guest alone and will move the pair on when it adds the spare), or an undecided one (the
/// side adding the spare moved the pair there).
fn spare_generation(generation: u64, decided: bool) -> u64 {
    generation + u64::from(decided)
}

/// The credentials a spare proves at a primary's handshake: the pair as it stands then (the
/// side adding it moves the pair on just before it connects); `known` when the arbiter cannot
/// be read now.
pub fn spare_credentials(config: &FtConfig, known: &Credentials) -> Credentials {
    let arbiter = config.arbiter.open();
    let Ok(identity) = arbiter.load_pair(config.key_file.as_deref()) else { return known.clone() };
    let Ok(holder) = arbiter.holder(identity.generation) else { return known.clone() };
    let generation = spare_generation(identity.generation, holder.is_some());
    Credentials { pair_id: identity.id, key: identity.key, generation }
}

/// Prints a retry message once per distinct error.
fn report_retry(last_report: &mut String, error: &ArbiterError) {
    let report = error.to_string();
    if report != *last_report {
        eprintln!("ftvm: arbiter unreachable ({report}); retrying until it answers (Ctrl-C stops)");
        *last_report = report;
    }
}

/// How an arbitration ended for a side that did not win.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotWon {
    /// The other side holds the generation: this side halts (status 127).
    Lost(String),
    /// A stop signal came while the storage did not answer (status 130).
    Stopped,
}

/// This side's name in an arbiter record: role, host, pid and the time.
fn holder_name(side: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let unix_s = unix_time_ns() / 1_000_000_000;
    format!("{side} on host {host} pid {} at unix time {unix_s}", std::process::id())
}

/// Asks the arbiter whether `side` may run the guest alone in `generation`.
/// While the storage does not answer it retries, saying so, until a stop
/// signal: a side never goes on without winning.
pub fn arbitrate(config: &FtConfig, generation: u64, side: &str, why: &str) -> Result<(), NotWon> {
    eprintln!(
        "ftvm: {why}; asking the arbiter in {} (generation {generation}) at unix ns {}",
        config.arbiter,
        unix_time_ns()
    );
    let arbiter = config.arbiter.open();
    let mut last_report = String::new();
    let mut stopped = false;
    let verdict =
        arbiter.set_with_retry(generation, &holder_name(side), ARBITER_RETRY, &mut |error| {
            report_retry(&mut last_report, error);
            stopped = signals::stop_requested();
            stopped
        });
    match verdict {
        Ok(Verdict::Won) => Ok(()),
        Ok(Verdict::Lost { holder }) => Err(NotWon::Lost(format!(
            "the arbiter gave generation {generation} to {holder}: this {side} halts"
        ))),
        Err(_) if stopped => Err(NotWon::Stopped),
        Err(error) => Err(NotWon::Lost(format!("the arbiter failed ({error}): this {side} halts"))),
    }
}
