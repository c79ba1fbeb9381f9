//! A seeded simulation of the FT pair's fencing, in the style of TigerBeetle's VOPR: one seed
//! drives every choice (the fault and its moment, pauses, one-way and two-way cuts, one-way
//! stalls that heal (TCP delivering late), kills with and without a FIN, each side's clock rate and offset, network delays, slow replay and slow
//! output), and the simulation runs the channel cores production runs
//! ([`logchannel::PrimaryCore`], [`logchannel::BackupCore`]: framing, session tags, acks,
//! heartbeats, failure detection and the lease) and the pair's decision cores production runs
//! ([`logchannel::pair::primary::PrimaryPair`]: the output rule, the fence, arbitration;
//! [`logchannel::pair::backup::BackupPair`]: when to go live) over simulated pipes, a simulated
//! arbiter and simulated clocks.
//!
//! Checked at every step:
//! - **fencing**: the primary never releases an output under its lease once the backup is live;
//! - **one owner**: never a solo primary and a live backup;
//! - **reproducible**: every output the primary released is tied to an entry the backup had
//!   received when it went live, so the live side can produce it again;
//! - **liveness**: a side that loses its peer goes on or halts, never both halted, and after a
//!   kill the backup is live within the failure timeout plus the lag bound (with room for
//!   drift and delay; checked for kills after a warm-up in which the primary learns how fast
//!   the backup replays): the primary's guest waits while the backup's replay would take
//!   longer than the bound to catch up, and the backup replays all it received first.
//!
//! What is not simulated: the VMM's replay (entries are replayed at a seeded rate), TCP's own
//! retransmission (a pipe delivers in order, or is cut for good), a pause between the lease
//! check and the write (the fence's remaining window, measured by the VMM instead).

use std::collections::VecDeque;
use std::fmt;

use logchannel::pair::backup::{BackupPair, BackupRole, BackupStep};
use logchannel::pair::primary::{PrimaryPair, PrimaryRole, PrimaryStep};
use logchannel::pair::OutputKind;
use logchannel::{
    BackupCore, ChannelConfig, ChannelError, Entry, LeaseRule, PrimaryCore, SessionKey,
};

const MS: u64 = 1_000_000;

/// How long the pair runs before the go-live bound is checked: the primary learns how fast the
/// backup replays over its first few hundred ms.
const WARM_UP_MS: u64 = 600;

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// The one fault a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the primary: its kernel closes the connection (the backup sees EOF).
    KillPrimary,
    /// The primary's host dies: silence, no FIN.
    CrashPrimary,
    /// SIGKILL of the backup.
    KillBackup,
    /// The primary freezes (SIGSTOP, a stalled host) for this long, then goes on.
    PausePrimary {
        /// How long, in ms.
        pause_ms: u64,
    },
    /// The backup freezes for this long.
    PauseBackup {
        /// How long, in ms.
        pause_ms: u64,
    },
    /// Nothing reaches the backup any more; the backup's messages still arrive.
    CutTowardsBackup,
    /// Nothing reaches the primary any more.
    CutTowardsPrimary,
    /// A partition both ways.
    CutBoth,
    /// Nothing reaches the backup for this long, then everything does (TCP retransmits).
    StallTowardsBackup {
        /// How long, in ms.
        stall_ms: u64,
    },
    /// Nothing reaches the primary for this long, then everything does.
    StallTowardsPrimary {
        /// How long, in ms.
        stall_ms: u64,
    },
    /// The shared disk refuses the primary's next output (a failed write or flush).
    OutputFails,
}

/// A rule deliberately broken, to show the simulation catches it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    /// The rules as ftvm runs them.
    #[default]
    None,
    /// The primary's lease renewed by anything heard from the backup (its heartbeats too).
    LeaseFromAnythingHeard,
    /// No lag bound: the primary's guest never waits for a slow backup.
    NoLagBound,
}

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The seed.
    pub seed: u64,
    /// The fault, and when (ms).
    pub fault: Fault,
    /// When the fault happens, in ms of simulated time.
    pub fault_at_ms: u64,
    /// Each side's clock rate, in parts per million off true time.
    pub primary_drift_ppm: i64,
    /// The backup's.
    pub backup_drift_ppm: i64,
    /// The most a message is delayed, in ms.
    pub max_delay_ms: u64,
    /// How fast the backup replays, in per mille of the primary's speed (0: instantly): like
    /// the VMM, replaying an entry costs the primary work it stands for. A slow replay (a
    /// throttled host) falls behind unless the lag bound holds the primary back.
    pub replay_speed_per_mille: u64,
    /// The lag bound: the primary's guest waits while the backup would need longer than this
    /// to replay what it has not (ms).
    pub max_lag_ms: u64,
    /// The longest a single output takes to perform (a slow disk write), in ms.
    pub max_output_ms: u64,
    /// Probability per ms that the guest runs (and logs its progress) rather than idles (per
    /// mille).
    pub entry_per_mille: u64,
    /// Of those entries, how many carry an output (per mille).
    pub output_per_mille: u64,
    /// Simulated time, in ms.
    pub duration_ms: u64,
    /// The rule broken on purpose, if any.
    pub mutation: Mutation,
    /// The channel's timing.
    pub channel: ChannelConfig,
}

impl Settings {
    /// The settings seed `seed` chooses, with `mutation`.
    pub fn from_seed(seed: u64, mutation: Mutation) -> Settings {
        let lease_rule = match mutation {
            Mutation::LeaseFromAnythingHeard => LeaseRule::AnythingHeard,
            _ => LeaseRule::AckOfEntrySent,
        };
        let mut rng = Rng::new(seed);
        let pause_ms = rng.range(50, 1500);
        let fault = match rng.range(0, 10) {
            0 => Fault::KillPrimary,
            1 => Fault::CrashPrimary,
            2 => Fault::KillBackup,
            3 => Fault::PausePrimary { pause_ms },
            4 => Fault::PauseBackup { pause_ms },
            5 => Fault::CutTowardsBackup,
            6 => Fault::CutTowardsPrimary,
            7 => Fault::CutBoth,
            8 => Fault::StallTowardsBackup { stall_ms: pause_ms },
            9 => Fault::StallTowardsPrimary { stall_ms: pause_ms },
            _ => Fault::OutputFails,
        };
        let drift = |rng: &mut Rng| rng.range(0, 40_000) as i64 - 20_000;
        let channel = ChannelConfig {
            heartbeat_interval_ms: rng.range(10, 50),
            failure_timeout_ms: rng.range(150, 500),
            lease_rule,
            ..ChannelConfig::default()
        };
        Settings {
            seed,
            fault,
            fault_at_ms: rng.range(100, 1500),
            primary_drift_ppm: drift(&mut rng),
            backup_drift_ppm: drift(&mut rng),
            max_delay_ms: rng.range(0, 10),
            replay_speed_per_mille: [0, 1000, 500, 200, 100][rng.range(0, 4) as usize],
            max_lag_ms: rng.range(20, 300),
            max_output_ms: [0, 1, 5, 30][rng.range(0, 3) as usize],
            entry_per_mille: rng.range(100, 900),
            output_per_mille: rng.range(100, 900),
            duration_ms: 4_000,
            mutation,
            channel,
        }
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "seed {} fault {:?} at {} ms, drift primary {} ppm backup {} ppm, delay <= {} ms, \
             replay speed {}‰, lag bound {} ms, output <= {} ms, entries {}‰ outputs {}‰, heartbeat {} ms timeout {} ms, \
             mutation {:?}",
            self.seed,
            self.fault,
            self.fault_at_ms,
            self.primary_drift_ppm,
            self.backup_drift_ppm,
            self.max_delay_ms,
            self.replay_speed_per_mille,
            self.max_lag_ms,
            self.max_output_ms,
            self.entry_per_mille,
            self.output_per_mille,
            self.channel.heartbeat_interval_ms,
            self.channel.failure_timeout_ms,
            self.mutation
        )
    }
}

/// A broken invariant: what, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time, in ms.
    pub at_ms: u64,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "at {} ms: {}", self.at_ms, self.what)
    }
}

/// What a run that kept every invariant did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Outputs the primary released under its lease.
    pub released_under_lease: u64,
    /// Outputs released by a solo primary.
    pub released_solo: u64,
    /// When the backup went live, if it did (ms).
    pub live_at_ms: Option<u64>,
    /// Whether the primary went solo.
    pub solo: bool,
}

/// A side's clock: true time scaled by its drift, from an offset of its own.
#[derive(Clone, Copy)]
struct Clock {
    offset_ns: u64,
    drift_ppm: i64,
}

impl Clock {
    fn now_ns(&self, global_ms: u64) -> u64 {
        let true_ns = (global_ms * MS) as i128;
        (self.offset_ns as i128 + true_ns + true_ns * self.drift_ppm as i128 / 1_000_000) as u64
    }
}

/// One direction of the connection: bytes arrive in order after a delay, or never once cut.
#[derive(Default)]
struct Pipe {
    in_flight: VecDeque<(u64, Vec<u8>)>,
    /// The sender's end closed (its kernel sent a FIN) at this time.
    closed_at_ms: Option<u64>,
    cut: bool,
    /// Nothing is delivered before this time.
    stalled_until_ms: u64,
}

impl Pipe {
    fn send(&mut self, bytes: Vec<u8>, arrive_at_ms: u64) {
        if !self.cut && !bytes.is_empty() {
            let arrive_at_ms =
                arrive_at_ms.max(self.in_flight.back().map_or(0, |(arrive, _)| *arrive));
            self.in_flight.push_back((arrive_at_ms, bytes));
        }
    }

    fn arrived(&mut self, now_ms: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        if now_ms < self.stalled_until_ms {
            return bytes;
        }
        while self.in_flight.front().is_some_and(|(arrive, _)| *arrive <= now_ms) {
            bytes.extend(self.in_flight.pop_front().expect("front exists").1);
        }
        bytes
    }

    fn ended(&self, now_ms: u64) -> bool {
        now_ms >= self.stalled_until_ms
            && self.in_flight.is_empty()
            && self.closed_at_ms.is_some_and(|at| at <= now_ms)
    }

    fn cut(&mut self) {
        self.cut = true;
        self.in_flight.clear();
    }
}

/// The simulation of one seed.
pub struct Simulation {
    settings: Settings,
    rng: Rng,
    primary: PrimaryCore,
    backup: BackupCore,
    primary_clock: Clock,
    backup_clock: Clock,
    to_backup: Pipe,
    to_primary: Pipe,
    /// The primary's decisions: its held outputs carry the landmark of their exit.
    primary_pair: PrimaryPair<u64>,
    backup_pair: BackupPair,
    primary_alive: bool,
    backup_alive: bool,
    primary_paused_until_ms: u64,
    backup_paused_until_ms: u64,
    /// The primary's output thread is busy with a slow output until then.
    output_busy_until_ms: u64,
    /// The highest entry an output released under the lease was tied to.
    max_released_seq: u64,
    /// How long, up to now, the guest has been held back with nothing left to replay.
    needless_wait_ms: u64,
    /// The primary's next output fails on the host (the shared disk refuses it).
    next_output_fails: bool,
    /// When an output failed, if one did: nothing may be released after it.
    output_failed_at_ms: Option<u64>,
    backup_reading_paused: bool,
    lost_primary_at_ms: Option<u64>,
    arbiter: Option<&'static str>,
    outcome: Outcome,
    /// How long the primary's guest has run (ms); its entries carry it as their landmark.
    landmark: u64,
    /// The entry the backup is replaying, and how far its replay has got (ms of guest run).
    replaying: Option<logchannel::Received>,
    replay_cursor_ms: f64,
    replayed_landmark: u64,
}

impl Simulation {
    /// A simulation of `settings`.
    pub fn new(settings: Settings) -> Simulation {
        let mut rng = Rng::new(settings.seed.rotate_left(17) ^ 0xa076_1d64_78bd_642f);
        let key = SessionKey::from_bytes([settings.seed as u8; 32]);
        let primary_clock =
            Clock { offset_ns: rng.range(0, 1 << 40), drift_ppm: settings.primary_drift_ppm };
        let backup_clock =
            Clock { offset_ns: rng.range(0, 1 << 40), drift_ppm: settings.backup_drift_ppm };
        let channel = &settings.channel;
        Simulation {
            primary: PrimaryCore::new(channel, primary_clock.now_ns(0), &key),
            backup: BackupCore::new(channel, backup_clock.now_ns(0), &key),
            primary_clock,
            backup_clock,
            to_backup: Pipe::default(),
            to_primary: Pipe::default(),
            primary_pair: PrimaryPair::new(u64::MAX, channel.primary_defers_ms()),
            backup_pair: BackupPair::new(channel.failure_timeout_ms),
            primary_alive: true,
            backup_alive: true,
            primary_paused_until_ms: 0,
            backup_paused_until_ms: 0,
            output_busy_until_ms: 0,
            max_released_seq: 0,
            needless_wait_ms: 0,
            next_output_fails: false,
            output_failed_at_ms: None,
            backup_reading_paused: false,
            lost_primary_at_ms: None,
            arbiter: None,
            outcome: Outcome::default(),
            landmark: 0,
            replaying: None,
            replay_cursor_ms: 0.0,
            replayed_landmark: 0,
            rng,
            settings,
        }
    }

    /// Runs to the end, checking every invariant at every step.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        for now_ms in 0..self.settings.duration_ms {
            if now_ms == self.settings.fault_at_ms {
                self.inject(now_ms);
            }
            // Which side acts first in a step is part of the seed too.
            if self.rng.chance(500) {
                self.primary_step(now_ms)?;
                self.backup_step(now_ms)?;
            } else {
                self.backup_step(now_ms)?;
                self.primary_step(now_ms)?;
            }
            self.check_one_owner(now_ms)?;
        }
        self.check_liveness()?;
        Ok(self.outcome)
    }

    fn inject(&mut self, now_ms: u64) {
        let delay_ms = self.delay_ms();
        match self.settings.fault {
            Fault::KillPrimary => {
                self.primary_alive = false;
                self.lost_primary_at_ms = Some(now_ms);
                self.to_backup.closed_at_ms = Some(now_ms + delay_ms);
            }
            Fault::CrashPrimary => {
                self.primary_alive = false;
                self.lost_primary_at_ms = Some(now_ms);
            }
            Fault::KillBackup => {
                self.backup_alive = false;
                self.to_primary.closed_at_ms = Some(now_ms + delay_ms);
            }
            Fault::PausePrimary { pause_ms } => self.primary_paused_until_ms = now_ms + pause_ms,
            Fault::PauseBackup { pause_ms } => self.backup_paused_until_ms = now_ms + pause_ms,
            Fault::CutTowardsBackup => self.to_backup.cut(),
            Fault::CutTowardsPrimary => self.to_primary.cut(),
            Fault::CutBoth => {
                self.to_backup.cut();
                self.to_primary.cut();
            }
            Fault::StallTowardsBackup { stall_ms } => {
                self.to_backup.stalled_until_ms = now_ms + stall_ms
            }
            Fault::StallTowardsPrimary { stall_ms } => {
                self.to_primary.stalled_until_ms = now_ms + stall_ms
            }
            Fault::OutputFails => self.next_output_fails = true,
        }
    }

    fn delay_ms(&mut self) -> u64 {
        self.rng.range(0, self.settings.max_delay_ms)
    }

    fn violation<T>(&self, at_ms: u64, what: String) -> Result<T, Violation> {
        Err(Violation { at_ms, what })
    }

    fn primary_halted(&self) -> bool {
        matches!(self.primary_pair.role(), PrimaryRole::Halted(_))
    }

    fn primary_step(&mut self, now_ms: u64) -> Result<(), Violation> {
        if !self.primary_alive || now_ms < self.primary_paused_until_ms || self.primary_halted() {
            return Ok(());
        }
        let now_ns = self.primary_clock.now_ns(now_ms);
        if *self.primary_pair.role() == PrimaryRole::Paired {
            let bytes = self.to_primary.arrived(now_ms);
            let mut outcome = self.primary.handle_input(&bytes, now_ns).map(drop);
            if self.to_primary.ended(now_ms) && self.primary.error().is_none() {
                outcome = Err(self.primary.fail(ChannelError::Disconnected {
                    peer: logchannel::Peer::Backup,
                    detail: "simulated EOF".into(),
                }));
            }
            let _ = outcome.and_then(|()| self.primary.poll(now_ns));
            let lagging = self.settings.mutation != Mutation::NoLagBound
                && self.primary.replay_catch_up_ns(now_ns) > self.settings.max_lag_ms * MS;
            if lagging {
                // The guest is held back this ms, as `PrimaryLink::wait_for_room` does, measured
                // on the primary's own clock.
                let next_ns = self.primary_clock.now_ns(now_ms + 1);
                self.primary.add_blocked_ns(next_ns.saturating_sub(now_ns));
            }
            self.check_progress(now_ms, lagging)?;
            if self.primary.error().is_none()
                && !lagging
                && self.rng.chance(self.settings.entry_per_mille)
            {
                // The guest runs one exit this ms (else it idles), marked with how long it has
                // run (what the backup's replay must run again); some exits produce an output,
                // tied by the pair's core to the entry that ends the exit. Others end with a
                // plain progress entry, like the VMM's about once a millisecond.
                self.landmark += 1;
                if self.rng.chance(self.settings.output_per_mille) {
                    self.primary_pair.hold(self.landmark, OutputKind::Packet, 1);
                    self.primary_pair.exit_done(&mut self.primary, self.landmark, now_ns);
                } else {
                    let _ = self.primary.send(&Entry::Progress { landmark: self.landmark }, now_ns);
                }
            }
            if self.primary.error().is_some() {
                // Lost the backup: its link shuts the socket (the backup sees EOF).
                let closed_at_ms = now_ms + self.delay_ms();
                self.to_backup.closed_at_ms.get_or_insert(closed_at_ms);
            }
            let mut out = Vec::new();
            self.primary.take_output(&mut out);
            let arrive = now_ms + self.delay_ms();
            self.to_backup.send(out, arrive);
        }
        self.release(now_ms, now_ns)?;
        if self.primary_alive && self.primary_pair.end().is_some() && !self.primary_halted() {
            // The run ends (the VMM exits 120 after a failed output): its kernel closes the
            // connection, and the backup takes over.
            self.primary_alive = false;
            self.lost_primary_at_ms = Some(now_ms);
            let closed_at_ms = now_ms + self.delay_ms();
            self.to_backup.closed_at_ms.get_or_insert(closed_at_ms);
        }
        Ok(())
    }

    /// The output thread: performs what the primary's core releases, asks the arbiter when
    /// it says so.
    fn release(&mut self, now_ms: u64, now_ns: u64) -> Result<(), Violation> {
        while now_ms >= self.output_busy_until_ms {
            match self.primary_pair.next_step(&self.primary, now_ns) {
                PrimaryStep::Release { seq, under_lease, .. } => {
                    self.output_busy_until_ms =
                        now_ms + self.rng.range(0, self.settings.max_output_ms);
                    if let Some(failed_at_ms) = self.output_failed_at_ms {
                        return self.violation(
                            now_ms,
                            format!(
                                "disk error: the primary released an output (entry {seq}) after \
                                 one failed at {failed_at_ms} ms"
                            ),
                        );
                    }
                    if std::mem::take(&mut self.next_output_fails) {
                        self.output_failed_at_ms = Some(now_ms);
                        let failed = Some(Err("the shared disk refused a write".into()));
                        self.primary_pair.output_done(&mut self.primary, failed, now_ns);
                        continue;
                    }
                    if under_lease {
                        if self.backup_pair.role() == &BackupRole::Live {
                            return self.violation(
                                now_ms,
                                format!(
                                    "fencing: the primary released an output (entry {seq}) \
                                     under its lease after the backup went live at {} ms",
                                    self.outcome.live_at_ms.unwrap_or_default()
                                ),
                            );
                        }
                        self.outcome.released_under_lease += 1;
                        self.max_released_seq = self.max_released_seq.max(seq);
                    } else {
                        self.outcome.released_solo += 1;
                    }
                    self.primary_pair.output_done(&mut self.primary, Some(Ok(())), now_ns);
                }
                PrimaryStep::Drop(_) => {
                    self.primary_pair.output_done(&mut self.primary, None, now_ns)
                }
                PrimaryStep::AskArbiter(_) => {
                    let verdict = match self.arbiter.get_or_insert("primary") {
                        &mut "primary" => {
                            self.outcome.solo = true;
                            Ok(())
                        }
                        _ => Err("the backup holds the generation".into()),
                    };
                    self.primary_pair.arbiter_said(verdict);
                }
                PrimaryStep::WaitForAck(_)
                | PrimaryStep::WaitForExitEnd
                | PrimaryStep::Idle
                | PrimaryStep::WaitForVerdict
                | PrimaryStep::WaitUntil(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn backup_step(&mut self, now_ms: u64) -> Result<(), Violation> {
        if !self.backup_alive
            || now_ms < self.backup_paused_until_ms
            || matches!(self.backup_pair.role(), BackupRole::Halted(_) | BackupRole::Live)
        {
            return Ok(());
        }
        let now_ns = self.backup_clock.now_ns(now_ms);
        let reading = self.backup.error().is_none();
        if reading {
            let mut outcome = Ok(());
            if !self.backup_reading_paused {
                let bytes = self.to_backup.arrived(now_ms);
                outcome = self.backup.handle_input(&bytes, now_ns).map(drop);
                if outcome.is_ok() && self.to_backup.ended(now_ms) {
                    outcome = Err(self.backup.handle_eof());
                }
            }
            let _ = outcome.and_then(|()| self.backup.poll(now_ns));
            self.send_acks(now_ms);
        }
        self.replay();
        if reading {
            // Backpressure: the backup reads no further ahead than its receive buffer.
            self.backup_reading_paused = self.backup.queued_bytes() >= 2048;
            self.backup.set_paused(self.backup_reading_paused, now_ns);
            self.send_acks(now_ms);
            if self.backup.error().is_some() {
                let closed_at_ms = now_ms + self.delay_ms();
                self.to_primary.closed_at_ms.get_or_insert(closed_at_ms);
            }
        }
        // The replay has run out: every complete exit received is replayed first.
        if self.backup.error().is_some()
            && self.backup.queued_entries() == 0
            && self.replaying.is_none()
        {
            let mut step = self.backup_pair.replay_ran_out(&self.backup, now_ns);
            if let BackupStep::AskArbiter(_) = step {
                let verdict = match self.arbiter.get_or_insert("backup") {
                    &mut "backup" => Ok(()),
                    _ => Err("the primary holds the generation".into()),
                };
                step = self.backup_pair.arbiter_said(verdict);
            }
            if step == BackupStep::GoLive {
                self.go_live(now_ms)?;
            }
        }
        Ok(())
    }

    /// Replays at the seeded speed, also while waiting to go live: entries carry how long the
    /// primary's guest had run, and the replay cursor advances by the speed each ms.
    fn replay(&mut self) {
        let speed_ms = self.settings.replay_speed_per_mille as f64 / 1000.0;
        self.replay_cursor_ms += if speed_ms == 0.0 { f64::INFINITY } else { speed_ms };
        loop {
            let Some(received) = self.replaying.take().or_else(|| self.backup.next_entry()) else {
                // Idle: no credit is banked for entries that have not arrived.
                self.replay_cursor_ms = self.replay_cursor_ms.min(self.replayed_landmark as f64);
                return;
            };
            if !self.backup_pair.note_entry(&received.entry) {
                continue;
            }
            let Entry::Progress { landmark } = received.entry else { continue };
            if landmark as f64 > self.replay_cursor_ms {
                self.replaying = Some(received);
                return;
            }
            self.replayed_landmark = self.replayed_landmark.max(landmark);
        }
    }

    fn send_acks(&mut self, now_ms: u64) {
        let mut out = Vec::new();
        self.backup.take_output(&mut out);
        let arrive = now_ms + self.delay_ms();
        self.to_primary.send(out, arrive);
        self.backup.acks_sent();
    }

    fn go_live(&mut self, now_ms: u64) -> Result<(), Violation> {
        let received = self.backup.acked_seq();
        if self.max_released_seq > received {
            return self.violation(
                now_ms,
                format!(
                    "reproducible: the primary released an output tied to entry {}, but the \
                     backup going live received only up to {received}",
                    self.max_released_seq
                ),
            );
        }
        self.outcome.live_at_ms = Some(now_ms);
        Ok(())
    }

    /// Before any fault, the lag bound may hold the guest back only while the backup has
    /// something left to replay (and for the time its word takes to arrive).
    fn check_progress(&mut self, now_ms: u64, lagging: bool) -> Result<(), Violation> {
        let needless = lagging
            && now_ms < self.settings.fault_at_ms
            && self.replayed_landmark >= self.landmark
            && self.replaying.is_none();
        self.needless_wait_ms = if needless { self.needless_wait_ms + 1 } else { 0 };
        let settings = &self.settings;
        let allowed_ms = 2 * settings.max_delay_ms + settings.channel.heartbeat_interval_ms + 50;
        if self.needless_wait_ms > allowed_ms {
            return self.violation(
                now_ms,
                format!(
                    "progress: the lag bound held the guest back for {} ms while the backup had \
                     replayed everything it did",
                    self.needless_wait_ms
                ),
            );
        }
        Ok(())
    }

    fn check_one_owner(&self, now_ms: u64) -> Result<(), Violation> {
        if *self.primary_pair.role() == PrimaryRole::Solo
            && *self.backup_pair.role() == BackupRole::Live
        {
            return self.violation(now_ms, "one owner: a solo primary and a live backup".into());
        }
        Ok(())
    }

    fn check_liveness(&self) -> Result<(), Violation> {
        let end_ms = self.settings.duration_ms;
        let primary_runs = self.primary_alive && !self.primary_halted();
        let backup_runs =
            self.backup_alive && !matches!(self.backup_pair.role(), BackupRole::Halted(_));
        if !primary_runs && !backup_runs {
            return self.violation(end_ms, "liveness: neither side runs the guest".into());
        }
        // The lag bound holds once the backup's replay speed has been measured (a window of
        // replay progress): a primary that dies before that is only bound to be replaced.
        let Some(lost_at_ms) = self.lost_primary_at_ms else { return Ok(()) };
        // The backup's wait of one timeout from the primary's last word, then what is left to
        // replay (the lag bound), with room for drift (2% of each), the network delay and a
        // heartbeat.
        let settings = &self.settings;
        let waits_ms = settings.channel.failure_timeout_ms + settings.max_lag_ms;
        let bound_ms = lost_at_ms
            + waits_ms
            + waits_ms / 25
            + 2 * settings.max_delay_ms
            + settings.channel.heartbeat_interval_ms
            + 20;
        let Some(live_at_ms) = self.outcome.live_at_ms else {
            if bound_ms >= end_ms {
                // Died too close to the end of the run for the backup to be due yet.
                return Ok(());
            }
            return self.violation(
                end_ms,
                format!(
                    "liveness: the primary died at {lost_at_ms} ms, the backup never went live"
                ),
            );
        };
        if lost_at_ms >= WARM_UP_MS && live_at_ms > bound_ms {
            return self.violation(
                end_ms,
                format!(
                    "liveness: the primary died at {lost_at_ms} ms, the backup went live at \
                     {live_at_ms} ms (bound {bound_ms} ms)"
                ),
            );
        }
        Ok(())
    }
}

/// A seed that broke an invariant: its settings (to report) and the violation.
#[derive(Clone, Debug)]
pub struct Failure {
    /// What the seed chose.
    pub settings: Settings,
    /// What broke.
    pub violation: Violation,
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}\n  {}", self.settings, self.violation)
    }
}

/// Runs seed `seed` with `mutation`.
pub fn run_seed(seed: u64, mutation: Mutation) -> Result<Outcome, Box<Failure>> {
    let settings = Settings::from_seed(seed, mutation);
    Simulation::new(settings.clone())
        .run()
        .map_err(|violation| Box::new(Failure { settings, violation }))
}
