//! The three ways to run a guest — live, recorded to a log, replayed from a
//! log — as functions the CLI and the benchmark share, and the host
//! attachments (TAP, disk image) behind the guest's NIC and disk.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::net::TcpListener;
use std::time::Duration;

use logchannel::{
    BackupLink, BackupListener, ChannelError, Devices, Entry, LogFileReader, LogFileWriter,
    PrimaryLink, RunStart,
};
use serde_json::json;
use storage::{BlockStore, BlockStoreError};
use thiserror::Error;

use crate::api::{AddBackupFn, ApiError, ApiServer, Handlers};
use crate::devices::DeviceSet;
use crate::ft::backup::{backup_io, BackupPairLink, BackupStatus};
use crate::ft::primary::{HeldOutputs, LinkSink, PrimarySide};
use crate::ft::transfer::{Promoted, Promotion};
use crate::ft::{self, FtConfig, PairSetupError};
use crate::inputs::live::{deadline_after, sleep_until, Backends, LiveInputs};
use crate::inputs::record::RecordingInputs;
use crate::inputs::replay::{LogStart, ReplayInputs};
use crate::inputs::InputError;
use crate::outputs::{LiveOutputs, ReplayOutputs, SharedWriter};
use crate::signals;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::tap::{Tap, TapError};
use crate::tasks::VmTasks;
use crate::vm::{RunReport, Vm, VmConfig, VmError};

/// Why a run could not start (or a log could not be opened).
#[derive(Debug, Error)]
pub enum RunError {
    /// The VM could not be created or run.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The log file could not be created or opened.
    #[error("{0}")]
    LogFile(#[from] logchannel::LogFileError),
    /// The log could not be started or its first entry read.
    #[error("{0}")]
    Log(#[from] InputError),
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] BlockStoreError),
    /// The log channel could not be set up.
    #[error("log channel: {0}")]
    Channel(#[from] logchannel::ChannelError),
    /// This side cannot take part in its pair (exit status 119).
    #[error(transparent)]
    PairSetup(#[from] PairSetupError),
    /// A snapshot could not be read or does not fit this host.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Stopped by the host (SIGINT/SIGTERM) before the guest ran.
    #[error("stopped by the host")]
    Stopped,
    /// The backup could not listen for its primary.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A NIC attached to a host TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetAttachment {
    /// The TAP device's name (opened, or created, in the current network namespace).
    pub tap: String,
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
}

/// A disk backed by an image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskAttachment {
    /// The image file.
    pub path: PathBuf,
    /// Its size: required with `create`, checked against an existing image otherwise.
    pub size_bytes: Option<u64>,
    /// Create the image if it is missing.
    pub create: bool,
    /// In an FT pair, this side's own image (`mode=own`): the backup applies the guest's
    /// writes to its own image as it replays and reads its own image, so disk writes are not
    /// held for acknowledgement and disk reads do not travel in the log. Both images must
    /// start the same (two empty ones: `create` on both sides). Otherwise one image both
    /// sides share (the default), written only by the side that runs the guest.
    pub own: bool,
}

/// What the host attaches to the guest, and the API socket it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    /// The NIC, if any.
    pub net: Option<NetAttachment>,
    /// The disk, if any.
    pub disk: Option<DiskAttachment>,
    /// Where to answer API requests ([`crate::api`]), if anywhere.
    pub api_socket: Option<PathBuf>,
}

/// Serves the API socket of `attachments`, if it names one, with `status` (plus the landmark
/// count published in `landmarks`) as the answer to `status`.
fn serve_api(
    attachments: &Attachments,
    landmarks: &Arc<AtomicU64>,
    snapshots: Option<Arc<VmTasks>>,
    add_backup: Option<AddBackupFn>,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) -> Result<Option<ApiServer>, RunError> {
    let Some(path) = attachments.api_socket.as_ref() else { return Ok(None) };
    let landmarks = landmarks.clone();
    let status = Arc::new(move || {
        let mut answer = status();
        answer["landmarks"] = landmarks.load(Ordering::Relaxed).into();
        answer["pid"] = std::process::id().into();
        answer
    });
    let handlers = Handlers { status, snapshots, add_backup };
    Ok(Some(signals::spawning_helpers(|| ApiServer::start(path, handlers))?))
}

/// Opens the host side of `attachments`.
pub fn open(attachments: &Attachments) -> Result<(Backends, DeviceSet), RunError> {
    let tap = attachments.net.as_ref().map(|net| Tap::open(&net.tap)).transpose()?.map(Arc::new);
    let disk = attachments
        .disk
        .as_ref()
        .map(|disk| BlockStore::open(&disk.path, disk.size_bytes, disk.create))
        .transpose()?
        .map(Arc::new);
    let devices = DeviceSet {
        net_mac: attachments.net.as_ref().map(|net| net.mac),
        disk_bytes: disk.as_ref().map(|disk| disk.capacity_bytes()),
    };
    let disk_own = attachments.disk.as_ref().is_some_and(|disk| disk.own);
    Ok((Backends { tap, disk, disk_reader: None, disk_own }, devices))
}

fn live_outputs(console: Box<dyn Write + Send>, backends: &Backends) -> Box<LiveOutputs> {
    Box::new(LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone()))
}

/// Runs `config` with live inputs.
pub fn live(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
) -> Result<RunReport, RunError> {
    let (backends, devices) = open(attachments)?;
    let outputs = live_outputs(console, &backends);
    let vm = Vm::new(config, devices, Box::new(LiveInputs::new(backends)), outputs)?;
    run_standalone(vm, attachments)
}

/// Runs a standalone guest, its API socket answering status, stop and snapshot.
fn run_standalone(vm: Vm, attachments: &Attachments) -> Result<RunReport, RunError> {
    let landmarks = Arc::new(AtomicU64::new(0));
    let snapshots = Arc::new(VmTasks::default());
    let status = || json!({ "role": "standalone" });
    let _api = serve_api(attachments, &landmarks, Some(snapshots.clone()), None, status)?;
    Ok(vm.with_landmark_counter(landmarks).with_tasks(snapshots).run()?)
}

/// Runs on from the snapshot in `snapshot_file` with live inputs (the guest's clock going on
/// from where it stood) on this host's `attachments`, which must give the guest the same
/// devices.
pub fn restore(
    snapshot_file: &Path,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
) -> Result<RunReport, RunError> {
    let snapshot = Snapshot::read(snapshot_file)?;
    let (backends, devices) = open(attachments)?;
    if devices != snapshot.devices {
        return Err(RunError::Snapshot(SnapshotError::State(format!(
            "the snapshot's guest has {:?}, --net/--disk give {devices:?}: name the same NIC and \
             disk image",
            snapshot.devices
        ))));
    }
    let inputs = LiveInputs::continuing_at(snapshot.monotonic_ns, backends.clone());
    let outputs = live_outputs(console, &backends);
    let vm = Vm::restore(snapshot, Box::new(inputs), outputs)?;
    run_standalone(vm, attachments)
}

/// Runs `config` with live inputs, recording every one of them to `log`.
pub fn record(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    log: &Path,
) -> Result<RunReport, RunError> {
    let (backends, devices) = open(attachments)?;
    let landmarks = Arc::new(AtomicU64::new(0));
    let _api = serve_api(attachments, &landmarks, None, None, || json!({ "role": "recording" }))?;
    let outputs = live_outputs(console, &backends);
    let inputs = RecordingInputs::new(
        LogFileWriter::<Entry>::create(log)?,
        &run_start(config, devices),
        backends,
    )?;
    let vm = Vm::new(config, devices, Box::new(inputs), outputs)?;
    Ok(vm.with_landmark_counter(landmarks).run()?)
}

fn run_start(config: &VmConfig, devices: DeviceSet) -> RunStart {
    RunStart {
        mem_bytes: config.mem_bytes,
        cmdline: config.cmdline.clone(),
        entry_level: config.entry_mode.into(),
        kernel: config.kernel.clone(),
        net_mac: devices.net_mac,
        disk_bytes: devices.disk_bytes,
    }
}

fn config_of(start: RunStart) -> (VmConfig, DeviceSet) {
    let devices = DeviceSet { net_mac: start.net_mac, disk_bytes: start.disk_bytes };
    let config = VmConfig {
        mem_bytes: start.mem_bytes,
        kernel: start.kernel,
        cmdline: start.cmdline,
        entry_mode: start.entry_level.into(),
    };
    (config, devices)
}

fn channel_devices(devices: DeviceSet, backends: &Backends) -> Devices {
    Devices {
        net_mac: devices.net_mac,
        disk_bytes: devices.disk_bytes,
        disk_own: backends.disk_own,
    }
}

/// Runs `config` as the primary of an FT pair whose backup listens at `backup_addr`.
pub fn primary(
    config: &VmConfig,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    ft: &FtConfig,
    backup_addr: &str,
) -> Result<RunReport, RunError> {
    let credentials = ft::prepare(ft)?;
    let (mut backends, devices) = open(attachments)?;
    eprintln!(
        "ftvm: role: primary, generation {}, pair {}, connecting to the backup at {backup_addr}",
        credentials.generation, credentials.pair_id
    );
    signals::block_stats_signal();
    let hello_devices = channel_devices(devices, &backends);
    let promotion = Promotion::new(ft, &backends, hello_devices, SharedWriter::new(console));
    let (side, held) = signals::spawning_helpers(|| {
        let link = PrimaryLink::connect(backup_addr, &ft.channel, &credentials, hello_devices)
            .map_err(|error| match error {
                ChannelError::Refused { .. } => {
                    RunError::PairSetup(PairSetupError::Refused(error.to_string()))
                }
                other => RunError::Channel(other),
            })?;
        let generation = credentials.generation;
        let side =
            PrimarySide::new(link, ft.clone(), generation, promotion.running_alone_in.clone());
        let console = Box::new(promotion.console.clone());
        let live = LiveOutputs::new(console, backends.tap.clone(), backends.disk.clone());
        let own_disk = backends.disk.clone().filter(|_| backends.disk_own);
        let (held, releaser) = HeldOutputs::start(side.clone(), live, own_disk, devices.net_mac);
        *lock(&promotion.promoted) = Some(Promoted { side: side.clone(), releaser });
        Ok::<_, RunError>((side, held))
    })?;
    let landmarks = Arc::new(AtomicU64::new(0));
    let _api = serve_pair_api(attachments, &landmarks, &promotion, || json!({}))?;
    if !backends.disk_own {
        // The shared image: the guest reads it through the writes still held.
        let reader = side.clone();
        backends.disk_reader =
            Some(Arc::new(move |disk, offset, buf| reader.read_disk(disk, offset, buf)));
    }
    let inputs = RecordingInputs::new(LinkSink::new(side), &run_start(config, devices), backends)?;
    let result = Vm::new(config, devices, Box::new(inputs), Box::new(held)).and_then(|vm| {
        vm.with_landmark_counter(landmarks).with_tasks(promotion.tasks.clone()).run()
    });
    finish_pair(&promotion, result)
}

/// Serves the API socket of a side of a pair and its SIGUSR1 report: the status of its
/// primary side while it is one, `other_status()` otherwise; `add-backup` through
/// `promotion`.
fn serve_pair_api(
    attachments: &Attachments,
    landmarks: &Arc<AtomicU64>,
    promotion: &Arc<Promotion>,
    other_status: impl Fn() -> serde_json::Value + Send + Sync + Clone + 'static,
) -> Result<Option<ApiServer>, RunError> {
    let (stats_promotion, stats_other) = (promotion.clone(), other_status.clone());
    signals::serve_stats_signal(move || match &*lock(&stats_promotion.promoted) {
        Some(promoted) => eprintln!("ftvm: pair: {}", promoted.side.report()),
        None => eprintln!("ftvm: pair: {}", stats_other()),
    });
    let adding = promotion.clone();
    let add_backup: AddBackupFn = Arc::new(move |addr| {
        let report = adding.add_backup(addr).map_err(|error| error.to_string())?;
        Ok(serde_json::to_value(report).unwrap_or_default())
    });
    let api_promotion = promotion.clone();
    serve_api(attachments, landmarks, None, Some(add_backup), move || {
        match &*lock(&api_promotion.promoted) {
            Some(promoted) => serde_json::to_value(promoted.side.report()).unwrap_or_default(),
            None => other_status(),
        }
    })
}

/// Ends the run of a side of a pair: if it is a primary (from the start, or made one by a
/// transfer), as [`finish_primary`] says.
fn finish_pair(
    promotion: &Promotion,
    result: Result<RunReport, VmError>,
) -> Result<RunReport, RunError> {
    let promoted = lock(&promotion.promoted).take();
    match promoted {
        Some(Promoted { side, releaser }) => finish_primary(&side, releaser, result),
        None => Ok(result?),
    }
}

/// Ends a primary's run: whatever the guest produced is released (or dropped by a halt)
/// before the process ends, and a halt or an output failure decided after the guest's last
/// landmark still decides how the run ended.
fn finish_primary(
    side: &PrimarySide,
    releaser: std::thread::JoinHandle<()>,
    result: Result<RunReport, VmError>,
) -> Result<RunReport, RunError> {
    side.close_and_drain(result.as_ref().map_or(0, |report| report.landmarks));
    let _ = releaser.join();
    let mut report = result?;
    if let Some(end) = side.end() {
        report.outcome = end;
    }
    report.pair = Some(side.report());
    Ok(report)
}

/// What a backup does besides replaying.
#[derive(Clone, Debug, Default)]
pub struct BackupRoles {
    /// Waits to be added to a running guest (the next generation) rather than for a primary
    /// starting in the current one.
    pub spare: bool,
    /// Once live, adds the first spare of these that takes it.
    pub restore_to: Vec<String>,
}

/// How often a backup waiting for its primary looks for a stop signal.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Runs as the backup of an FT pair: opens and checks this host's
/// attachments, waits on `listen` for a primary that proves the pair's key
/// and matches them (refusing and naming everyone else), replays its guest,
/// and goes live if the primary dies and the arbiter agrees.
pub fn backup(
    listen: &str,
    roles: &BackupRoles,
    attachments: &Attachments,
    console: Box<dyn Write + Send>,
    ft: &FtConfig,
) -> Result<RunReport, RunError> {
    let credentials = if roles.spare { ft::prepare_spare(ft)? } else { ft::prepare(ft)? };
    let (backends, own_devices) = open(attachments)?;
    let listener = TcpListener::bind(listen)
        .map_err(|source| RunError::Listen { addr: listen.to_string(), source })?;
    eprintln!(
        "ftvm: role: backup, generation {}, pair {}, waiting for the primary on {listen}",
        credentials.generation, credentials.pair_id
    );
    signals::block_stats_signal();
    let own = channel_devices(own_devices, &backends);
    let check = move |hello: &logchannel::Hello| devices_match(own, hello.devices);
    let report = |line: String| eprintln!("ftvm: log channel: {line}");
    let known = credentials.clone();
    let (spare, spare_config) = (roles.spare, ft.clone());
    let credentials_now = move || match spare {
        true => ft::spare_credentials(&spare_config, &known),
        false => known.clone(),
    };
    let listener = signals::spawning_helpers(|| {
        BackupListener::start_with(listener, &ft.channel, credentials_now, check, report)
    })?;
    // Waits here, with stop signals unblocked, so Ctrl-C and SIGTERM end the wait.
    let accepted = loop {
        if let Some(accepted) = listener.next(STOP_POLL) {
            break accepted;
        }
        if signals::stop_requested() {
            return Err(RunError::Stopped);
        }
    };
    eprintln!(
        "ftvm: log channel: paired with the primary at {} (generation {})",
        accepted.peer_addr, accepted.hello.generation
    );
    let link = Arc::new(signals::spawning_helpers(|| {
        BackupLink::from_stream(accepted.stream, &ft.channel, &accepted.session)
    })?);
    let status = Arc::new(BackupStatus::default());
    // The handshake proved it: a spare's generation is the one it was added in.
    let generation = accepted.hello.generation;
    // Once live, this side may take a new backup and become a primary (`add-backup`).
    let console = SharedWriter::new(console);
    let promotion = Promotion::new(ft, &backends, own, console.clone());
    if !roles.restore_to.is_empty() {
        let (promotion, addrs) = (promotion.clone(), roles.restore_to.clone());
        signals::spawning_helpers(|| {
            std::thread::Builder::new()
                .name("ftvm-restore-to".into())
                .spawn(move || restore_redundancy(&promotion, &addrs))
                .expect("spawning the restore-to thread")
        });
    }
    let landmarks = Arc::new(AtomicU64::new(0));
    let (status_link, backup_status) = (link.clone(), status.clone());
    let _api = serve_pair_api(attachments, &landmarks, &promotion, move || {
        backup_status.to_json(&status_link, generation)
    })?;
    let pair = BackupPairLink { config: ft.clone(), generation, link };
    let own_disk = backends.disk.clone().filter(|_| backends.disk_own);
    let (source, outputs, takeover) = backup_io(
        status,
        pair,
        backends,
        own_devices.net_mac,
        Box::new(console),
        promotion.running_alone_in.clone(),
    );
    let mut replay = ReplayInputs::new(source).reading_own_disk(own_disk);
    let check_devices = |devices: DeviceSet| {
        let named =
            channel_devices(devices, &Backends { disk_own: own.disk_own, ..Backends::default() });
        if named == accepted.hello.devices {
            return Ok(());
        }
        Err(RunError::Log(InputError::LogCorrupt(format!(
            "the primary's log names devices {devices:?}, its handshake {:?}",
            accepted.hello.devices
        ))))
    };
    let vm = match replay.read_log_start()? {
        LogStart::Boot(start) => {
            let (config, devices) = config_of(start);
            check_devices(devices)?;
            eprintln!("ftvm: role: backup, replaying `{}`", config.cmdline);
            Vm::new(&config, devices, Box::new(replay), Box::new(outputs))?
        }
        LogStart::Resume { pages, state } => {
            let mut snapshot: Snapshot = postcard::from_bytes(&state).map_err(|error| {
                RunError::Log(InputError::LogCorrupt(format!(
                    "the running guest's state could not be decoded: {error}"
                )))
            })?;
            check_devices(snapshot.devices)?;
            snapshot.pages = pages;
            let landmark = snapshot.landmarks;
            eprintln!(
                "ftvm: role: backup, added to the running guest `{}` at landmark {landmark}, \
                 replaying from there",
                snapshot.cmdline
            );
            Vm::restore(snapshot, Box::new(replay.resuming_at(landmark)), Box::new(outputs))?
        }
    };
    let result = vm
        .with_takeover(Box::new(takeover))
        .with_landmark_counter(landmarks)
        .with_tasks(promotion.tasks.clone())
        .run();
    // Strangers are refused (and named) until the end.
    drop(listener);
    finish_pair(&promotion, result)
}

/// How often `--restore-to` tries again.
const RESTORE_RETRY: Duration = Duration::from_secs(1);

/// `--restore-to`: once this side runs the guest alone, adds the first spare of `addrs` that
/// takes it, trying each in turn every [`RESTORE_RETRY`]; says why each attempt failed, once
/// per distinct reason.
fn restore_redundancy(promotion: &Promotion, addrs: &[String]) {
    let mut last_failure = String::new();
    loop {
        if signals::stop_requested() {
            return;
        }
        if lock(&promotion.running_alone_in).is_some() {
            for addr in addrs {
                match promotion.add_backup(addr) {
                    Ok(_) => return,
                    Err(error) => {
                        let failure = error.to_string();
                        if failure != last_failure {
                            eprintln!("ftvm: --restore-to {addr}: {failure}; trying again");
                            last_failure = failure;
                        }
                    }
                }
            }
        }
        // A stop signal ends the wait early; the loop then ends.
        let _ = sleep_until(deadline_after(RESTORE_RETRY));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a primary's guest devices fit this backup's attachments: the same
/// NIC (by MAC) or none, and a disk image of the same size or none.
fn devices_match(own: Devices, primary: Devices) -> Result<(), String> {
    let show_mac = |mac: Option<[u8; 6]>| match mac {
        Some(mac) => mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":"),
        None => "no NIC".into(),
    };
    let show_disk = |bytes: Option<u64>| match bytes {
        Some(bytes) => format!("a {bytes}-byte disk"),
        None => "no disk".into(),
    };
    if own.net_mac != primary.net_mac {
        return Err(format!(
            "the primary's guest has {}, this backup's --net gives {}: give both sides the same \
             MAC",
            show_mac(primary.net_mac),
            show_mac(own.net_mac)
        ));
    }
    if own.disk_own != primary.disk_own {
        let mode = |own: bool| if own { "mode=own" } else { "a shared image" };
        return Err(format!(
            "the primary's disk is {}, this backup's --disk is {}: give both sides the same mode",
            mode(primary.disk_own),
            mode(own.disk_own)
        ));
    }
    if own.disk_bytes != primary.disk_bytes {
        return Err(format!(
            "the primary's guest has {}, this backup's --disk gives {}: both sides must name the \
             same image",
            show_disk(primary.disk_bytes),
            show_disk(own.disk_bytes)
        ));
    }
    Ok(())
}

/// Replays the run recorded in `log`, from the log alone: no TAP, no disk
/// image; the guest's network and disk output is counted, not sent.
pub fn replay(log: &Path, console: Box<dyn Write + Send>) -> Result<RunReport, RunError> {
    let mut inputs = ReplayInputs::new(LogFileReader::<Entry>::open(log)?);
    let (config, devices) = config_of(inputs.read_start()?);
    let outputs = Box::new(ReplayOutputs::new(console));
    Ok(Vm::new(&config, devices, Box::new(inputs), outputs)?.run()?)
}
