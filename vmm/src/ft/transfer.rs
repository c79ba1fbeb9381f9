//! Adding a backup to a running guest (DESIGN §5; VMware FT restores redundancy the same way):
//! a side that runs the guest alone after a failover, told `add-backup ADDR` on its API
//! socket, moves the pair to the next generation, connects to a backup waiting at ADDR
//! (`ftvm backup --listen ADDR --spare`) and sends it the guest's RAM while the guest runs
//! (pre-copy: KVM's dirty log and the RAM's own bitmap, which marks the VMM's writes, name the
//! pages written since; they are sent again, round after round, until few are left or the
//! guest writes as fast as they go). Then, with the vCPU paused between two exits, it sends
//! the rest of what was written and the rest of the state (a snapshot without RAM: registers,
//! every device's `persist`, pending events, the clock), and the guest goes on as the primary
//! of the new generation on the same link: from its next exit its inputs are logged and its
//! outputs wait for the new backup's acks. The new backup restores the state and replays what
//! follows (`runs::backup`).
//!
//! A guest with its own disk (`mode=own`) has its image copied the same way, in blocks the
//! image marks as written; the new backup's image is zeroed first, so it may start empty.
//!
//! A primary gone solo takes a backup the same way: its solo side releases what it holds and
//! ends at the pause, and a paired side of the new generation takes its place.
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VmFd;
use logchannel::{ChannelError, Credentials, Devices, Entry, PrimaryLink};
use serde::Serialize;
use storage::{BlockStore, TRACKED_BLOCK_BYTES};
use thiserror::Error;

use super::primary::{HeldOutputs, LinkSink, PrimarySide};
use super::FtConfig;
use crate::inputs::live::{deadline_after, Backends, HostClock, LiveInputs};
use crate::inputs::record::RecordingInputs;
use crate::memory::{self, GuestRam};
use crate::outputs::{LiveOutputs, SharedWriter};
use crate::tasks::VmTasks;
use crate::vm::Vm;

/// Pages per log entry (1 MiB of RAM: well under the frame limit).
const PAGES_PER_ENTRY: usize = 256;
/// Disk blocks per log entry (1 MiB).
const BLOCKS_PER_ENTRY: usize = 16;
/// A disk block's size in pages, for comparing rounds.
const BLOCK_PAGES: u64 = TRACKED_BLOCK_BYTES / crate::snapshot::PAGE_BYTES as u64;
/// Pre-copy ends when a round finds at most this much written, in pages (the pause then
/// sends it).
const FEW_DIRTY_PAGES: usize = 1024;
/// Pre-copy ends after this many rounds, or as soon as a round does not shrink the dirty set
/// by a tenth (a guest that writes faster than the link carries).
const MAX_ROUNDS: u32 = 12;
/// How long the vCPU thread may take to reach a pause between two exits.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a backup could not be added; the guest runs on as before in every case.
#[derive(Debug, Error)]
pub enum TransferError {
    /// This side does not run the guest alone in a way that can take a backup yet.
    #[error("{0}")]
    NotHere(String),
    /// The pair could not move to the next generation.
    #[error("the arbiter {location}: {detail}")]
    Arbiter {
        /// The arbiter.
        location: String,
        /// What failed.
        detail: String,
    },
    /// The waiting backup could not be reached or refused the pair.
    #[error("connecting to the new backup at {addr}: {error}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        error: ChannelError,
    },
    /// The link failed during the transfer.
    #[error("the link to the new backup failed during the transfer: {0}")]
    Link(#[from] ChannelError),
    /// KVM's dirty log or guest RAM could not be read.
    #[error("reading the guest's memory: {0}")]
    Memory(String),
    /// The vCPU thread did not pause in time, or its state could not be taken.
    #[error("pausing the guest: {0}")]
    Pause(String),
}

/// What a transfer did, for the API's answer and the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    /// The generation the pair runs in now.
    pub generation: u64,
    /// Pre-copy rounds (the first sends every page that is not zeros).
    pub rounds: u32,
    /// Pages sent while the guest ran.
    pub precopy_pages: u64,
    /// Pages sent while it was paused.
    pub paused_pages: u64,
    /// Blocks of the own disk image sent while the guest ran.
    pub precopy_disk_blocks: u64,
    /// Blocks of the own disk image sent while it was paused.
    pub paused_disk_blocks: u64,
    /// Log bytes sent in all (pages, state, framing).
    pub sent_bytes: u64,
    /// How long the guest was paused, in microseconds.
    pub pause_us: u64,
    /// The whole transfer, in milliseconds.
    pub total_ms: u64,
}

/// The primary side a transfer made of this one, for the end of the run.
pub struct Promoted {
    /// The pair as the new primary sees it.
    pub side: Arc<PrimarySide>,
    /// Its output thread.
    pub releaser: JoinHandle<()>,
}

/// What a side that runs the guest alone needs to take a new backup.
pub struct Promotion {
    /// The pair's settings.
    pub config: FtConfig,
    /// The host's attachments (TAP, disk) the guest's outputs go to.
    pub backends: Backends,
    /// The guest's devices, as the new backup's handshake checks them.
    pub devices: Devices,
    /// The console the guest writes to.
    pub console: SharedWriter,
    /// The vCPU thread's task queue.
    pub tasks: Arc<VmTasks>,
    /// The generation this side runs in, once it runs the guest alone (a backup gone live, a
    /// primary gone solo).
    pub running_alone_in: Arc<Mutex<Option<u64>>>,
    /// This side's primary side while it is one (from the start, or since a transfer made it
    /// one): closed at the next hand-over, finished at the end of the run.
    pub promoted: Arc<Mutex<Option<Promoted>>>,
    /// Held during a transfer: one at a time (the API and `--restore-to` may both ask).
    pub transferring: Mutex<()>,
}

impl Promotion {
    /// A side of a pair with these settings, attachments, devices and console, not running
    /// alone yet.
    pub fn new(
        config: &FtConfig,
        backends: &Backends,
        devices: Devices,
        console: SharedWriter,
    ) -> Arc<Self> {
        Arc::new(Promotion {
            config: config.clone(),
            backends: backends.clone(),
            devices,
            console,
            tasks: Arc::new(VmTasks::default()),
            running_alone_in: Arc::new(Mutex::new(None)),
            promoted: Arc::new(Mutex::new(None)),
            transferring: Mutex::new(()),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Promotion {
    /// Adds the backup waiting at `addr`: pre-copy, pause, hand-over, as the module says.
    pub fn add_backup(&self, addr: &str) -> Result<TransferReport, TransferError> {
        let started = HostClock::start();
        let Ok(_one_at_a_time) = self.transferring.try_lock() else {
            return Err(TransferError::NotHere("a backup is being added already".into()));
        };
        let generation = self.generation_alone()?;
        let credentials = self.next_generation(generation)?;
        let new_generation = credentials.generation;
        eprintln!("ftvm: adding the backup at {addr} in generation {new_generation}");
        let link = PrimaryLink::connect(addr, &self.config.channel, &credentials, self.devices)
            .map_err(|error| TransferError::Connect { addr: addr.into(), error })?;
        let (vm_fd, ram) = self.on_vcpu_thread(|vm| Ok(vm.ram_handles()))?;
        let own_disk = self.backends.disk.clone().filter(|_| self.backends.disk_own);
        let stores = Stores { vm_fd, ram, own_disk };
        let precopied = stores.track_writes().and_then(|()| precopy(&link, &self.config, &stores));
        let (precopied, pending) = match precopied {
            Ok(done) => done,
            Err(error) => {
                stores.stop_tracking();
                return Err(error);
            }
        };
        let hand_over = HandOver {
            link,
            config: self.config.clone(),
            generation: new_generation,
            backends: self.backends.clone(),
            net_mac: self.devices.net_mac,
            console: self.console.clone(),
            stores,
            pending,
            promoted: self.promoted.clone(),
            running_alone_in: self.running_alone_in.clone(),
        };
        // A primary gone solo had a primary side already; a backup gone live did not.
        let from = if lock(&self.promoted).is_some() { "solo" } else { "live" };
        let paused = self.on_vcpu_thread(move |vm| hand_over.run(vm))?;
        *lock(&self.running_alone_in) = None;
        let report = TransferReport {
            generation: new_generation,
            rounds: precopied.rounds,
            precopy_pages: precopied.pages,
            paused_pages: paused.pages,
            precopy_disk_blocks: precopied.blocks,
            paused_disk_blocks: paused.blocks,
            sent_bytes: paused.sent_bytes,
            pause_us: paused.pause_us,
            total_ms: started.elapsed_ns() / 1_000_000,
        };
        eprintln!(
            "ftvm: role: {from} -> primary, generation {new_generation}, the backup at {addr} added: \
             {} pre-copy rounds, {} pages and {} disk blocks while running, {} and {} paused, {} \
             bytes, paused {} us",
            report.rounds,
            report.precopy_pages,
            report.precopy_disk_blocks,
            report.paused_pages,
            report.paused_disk_blocks,
            report.sent_bytes,
            report.pause_us
        );
        Ok(report)
    }

    /// The generation this side runs the guest alone in, if it does.
    fn generation_alone(&self) -> Result<u64, TransferError> {
        (*lock(&self.running_alone_in)).ok_or_else(|| {
            TransferError::NotHere(
                "this side does not run the guest alone: a backup is added after a failover, by \
                 the backup that went live or the primary that went solo"
                    .into(),
            )
        })
    }

    /// Moves the pair from `generation` (which this side won) to the next one, or finds it
    /// moved by an earlier attempt that did not finish.
    fn next_generation(&self, generation: u64) -> Result<Credentials, TransferError> {
        let arbiter = self.config.arbiter.open();
        let failed = |detail: String| TransferError::Arbiter {
            location: self.config.arbiter.to_string(),
            detail,
        };
        let mut identity = arbiter
            .load_pair(self.config.key_file.as_deref())
            .map_err(|e| failed(e.to_string()))?;
        if identity.generation == generation {
            identity = arbiter.next_pair().map_err(|error| failed(error.to_string()))?;
        }
        if identity.generation != generation + 1 {
            return Err(failed(format!(
                "the pair is at generation {}, while this side runs generation {generation}",
                identity.generation
            )));
        }
        if let Some(holder) =
            arbiter.holder(identity.generation).map_err(|e| failed(e.to_string()))?
        {
            return Err(failed(format!(
                "generation {} was already given to {holder}",
                identity.generation
            )));
        }
        Ok(Credentials { pair_id: identity.id, key: identity.key, generation: identity.generation })
    }

    /// Runs `work` on the vCPU thread between two exits and waits for its result.
    fn on_vcpu_thread<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vm) -> Result<R, TransferError> + Send + 'static,
    ) -> Result<R, TransferError> {
        let (answer, answered) = mpsc::channel();
        self.tasks.push(Box::new(move |vm| {
            let _ = answer.send(work(vm));
        }));
        answered.recv_timeout(PAUSE_TIMEOUT).map_err(|_| {
            TransferError::Pause(format!(
                "the guest reached no exit within {} s (or the run ended)",
                PAUSE_TIMEOUT.as_secs()
            ))
        })?
    }
}

/// What a transfer copies: guest RAM, and the guest's own disk image if it has one.
#[derive(Clone)]
struct Stores {
    vm_fd: Arc<VmFd>,
    ram: GuestRam,
    own_disk: Option<Arc<BlockStore>>,
}

/// What one round copies: RAM pages (index, 4 KiB) and disk blocks (offset, 64 KiB).
struct Round {
    pages: Vec<(u64, serde_bytes::ByteBuf)>,
    blocks: Vec<(u64, serde_bytes::ByteBuf)>,
}

impl Stores {
    /// Starts tracking what is written (KVM's dirty log, the RAM's and the image's own
    /// marks), with nothing written yet: what was written before is in the first full round.
    fn track_writes(&self) -> Result<(), TransferError> {
        let memory_error = |error: kvm_ioctls::Error| TransferError::Memory(error.to_string());
        memory::map_into(&self.vm_fd, &self.ram, true).map_err(memory_error)?;
        memory::take_dirty_pages(&self.vm_fd, &self.ram).map_err(memory_error)?;
        if let Some(disk) = &self.own_disk {
            disk.track_writes(true);
        }
        Ok(())
    }

    /// Stops tracking (a transfer that ended either way).
    fn stop_tracking(&self) {
        let _ = memory::map_into(&self.vm_fd, &self.ram, false);
        if let Some(disk) = &self.own_disk {
            disk.track_writes(false);
        }
    }

    /// Every page and block that is not all zeros (the new backup starts from zeros).
    fn everything(&self) -> Result<Round, TransferError> {
        let every_page = 0..memory::ram_bytes(&self.ram) / crate::snapshot::PAGE_BYTES as u64;
        let pages = memory::read_pages(&self.ram, every_page, true)
            .map_err(|error| TransferError::Memory(error.to_string()))?;
        let blocks = match &self.own_disk {
            Some(disk) => {
                let every_block = 0..disk.capacity_bytes().div_ceil(TRACKED_BLOCK_BYTES);
                read_blocks(disk, every_block, true)?
            }
            None => Vec::new(),
        };
        Ok(Round { pages, blocks })
    }

    /// The pages and blocks written since the last round.
    fn written(&self) -> Result<Round, TransferError> {
        let memory_error = |error: String| TransferError::Memory(error);
        let dirty = memory::take_dirty_pages(&self.vm_fd, &self.ram)
            .map_err(|error| memory_error(error.to_string()))?;
        let pages = memory::read_pages(&self.ram, dirty, false)
            .map_err(|error| memory_error(error.to_string()))?;
        let blocks = match &self.own_disk {
            Some(disk) => read_blocks(disk, disk.take_written_blocks(), false)?,
            None => Vec::new(),
        };
        Ok(Round { pages, blocks })
    }
}

/// The blocks at `indices` of `disk` (the last one cut at the image's end); with `skip_zero`,
/// blocks of all zeros are left out.
fn read_blocks(
    disk: &BlockStore,
    indices: impl IntoIterator<Item = u64>,
    skip_zero: bool,
) -> Result<Vec<(u64, serde_bytes::ByteBuf)>, TransferError> {
    let mut blocks = Vec::new();
    for index in indices {
        let offset = index * TRACKED_BLOCK_BYTES;
        let len = TRACKED_BLOCK_BYTES.min(disk.capacity_bytes().saturating_sub(offset)) as usize;
        let mut block = vec![0u8; len];
        disk.read_at(offset, &mut block)
            .map_err(|error| TransferError::Memory(format!("reading the own disk: {error}")))?;
        if !skip_zero || block.iter().any(|byte| *byte != 0) {
            blocks.push((offset, serde_bytes::ByteBuf::from(block)));
        }
    }
    Ok(blocks)
}

impl Round {
    /// Its size in 4 KiB pages (a block is [`BLOCK_PAGES`]).
    fn size_in_pages(&self) -> usize {
        self.pages.len() + self.blocks.len() * BLOCK_PAGES as usize
    }

    /// Sends it in entries of [`PAGES_PER_ENTRY`] pages or [`BLOCKS_PER_ENTRY`] blocks, waiting
    /// for the backup to take them (so memory stays bounded on both sides); (pages, blocks).
    fn send(self, link: &PrimaryLink, config: &FtConfig) -> Result<(u64, u64), TransferError> {
        let counts = (self.pages.len() as u64, self.blocks.len() as u64);
        let entries = chunks(self.pages, PAGES_PER_ENTRY, Entry::Pages).chain(chunks(
            self.blocks,
            BLOCKS_PER_ENTRY,
            Entry::DiskBlocks,
        ));
        for entry in entries {
            link.send(&entry)?;
            link.wait_for_room_after(config.max_lag_bytes, u64::MAX / 1_000_000, None)?;
        }
        Ok(counts)
    }
}

/// `items` in entries of at most `per_entry`, each made by `make`.
fn chunks<T>(
    items: Vec<T>,
    per_entry: usize,
    make: fn(Vec<T>) -> Entry,
) -> impl Iterator<Item = Entry> {
    let mut items = items.into_iter().peekable();
    std::iter::from_fn(move || {
        items.peek()?;
        Some(make(items.by_ref().take(per_entry).collect()))
    })
}

/// Progress of a long transfer, for the operator.
fn report_round(round: u32, pages: u64, blocks: u64, started: &HostClock) {
    eprintln!(
        "ftvm: add-backup: pre-copy round {round}: {} KiB of RAM and {} KiB of disk in {} ms",
        pages * 4,
        blocks * TRACKED_BLOCK_BYTES / 1024,
        started.elapsed_ns() / 1_000_000
    );
}

/// What the rounds while the guest ran sent.
#[derive(Default)]
struct Precopied {
    rounds: u32,
    pages: u64,
    blocks: u64,
}

/// The pre-copy rounds while the guest runs: everything, then what was written meanwhile,
/// until little is left or the rounds run out. A round found no smaller than nine tenths of
/// the last one is not sent now: the guest writes as fast as the link carries, so pre-copy
/// would never end, and that round goes with the pause instead (returned as pending).
fn precopy(
    link: &PrimaryLink,
    config: &FtConfig,
    stores: &Stores,
) -> Result<(Precopied, Option<Round>), TransferError> {
    let started = HostClock::start();
    let (pages, blocks) = stores.everything()?.send(link, config)?;
    report_round(1, pages, blocks, &started);
    let mut done = Precopied { rounds: 1, pages, blocks };
    let mut last_size = (pages + blocks * BLOCK_PAGES) as usize;
    loop {
        let started = HostClock::start();
        let round = stores.written()?;
        let size = round.size_in_pages();
        if size > last_size - last_size / 10 {
            return Ok((done, Some(round)));
        }
        let (pages, blocks) = round.send(link, config)?;
        report_round(done.rounds + 1, pages, blocks, &started);
        done.rounds += 1;
        done.pages += pages;
        done.blocks += blocks;
        if size <= FEW_DIRTY_PAGES || done.rounds >= MAX_ROUNDS {
            return Ok((done, None));
        }
        last_size = size;
    }
}

/// The last step, on the vCPU thread between two exits.
struct HandOver {
    link: PrimaryLink,
    config: FtConfig,
    generation: u64,
    backends: Backends,
    net_mac: Option<[u8; 6]>,
    console: SharedWriter,
    stores: Stores,
    /// A round pre-copy collected but left for the pause.
    pending: Option<Round>,
    promoted: Arc<Mutex<Option<Promoted>>>,
    running_alone_in: Arc<Mutex<Option<u64>>>,
}

/// What the pause sent, and how long it was.
struct Paused {
    pages: u64,
    blocks: u64,
    sent_bytes: u64,
    pause_us: u64,
}

impl HandOver {
    /// Sends what was written last and the state, then makes the guest's inputs and outputs
    /// the primary's.
    fn run(mut self, vm: &mut Vm) -> Result<Paused, TransferError> {
        let paused = HostClock::start();
        let result = self.send_state(vm);
        self.stores.stop_tracking();
        let (pages, blocks) = result?;
        let sent_bytes = self.link.stats().sent_bytes;
        self.become_primary(vm);
        Ok(Paused { pages, blocks, sent_bytes, pause_us: paused.elapsed_ns() / 1_000 })
    }

    /// The pages and blocks sent while paused: the round pre-copy left, then what was
    /// written since (sent after it, so a later copy replaces an earlier one).
    fn send_state(&mut self, vm: &mut Vm) -> Result<(u64, u64), TransferError> {
        let mut state = vm.snapshot_without_ram().map_err(TransferError::Pause)?;
        let (mut pages, mut blocks) = (0, 0);
        for round in [self.pending.take(), Some(self.stores.written()?)].into_iter().flatten() {
            let (round_pages, round_blocks) = round.send(&self.link, &self.config)?;
            pages += round_pages;
            blocks += round_blocks;
        }
        state.pages = Vec::new();
        let encoded = postcard::to_allocvec(&state)
            .map_err(|error| TransferError::Pause(format!("encoding the state: {error}")))?;
        let resume = self.link.send(&Entry::ResumeFrom(serde_bytes::ByteBuf::from(encoded)))?;
        // The hand-over is done only once the new backup holds the whole state: until then
        // it could not take over, and this side must not stop running the guest alone.
        match self.link.wait_releasable(resume.seq, deadline_after(PAUSE_TIMEOUT))? {
            true => Ok((pages, blocks)),
            false => Err(TransferError::Pause(format!(
                "the new backup did not acknowledge the state within {} s",
                PAUSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// From the next exit the guest's inputs are logged to the new backup and its outputs
    /// wait for its acks; the clock goes on from where it stands.
    fn become_primary(self, vm: &mut Vm) {
        let monotonic_ns = vm.clock_now_ns().unwrap_or_default();
        // A solo primary's side releases what it holds and ends before the new one starts.
        if let Some(old) = lock(&self.promoted).take() {
            old.side.close_and_drain(vm.landmarks());
            let _ = old.releaser.join();
        }
        let side = PrimarySide::new(self.link, self.config, self.generation, self.running_alone_in);
        let backends = self.backends;
        let live =
            LiveOutputs::new(Box::new(self.console), backends.tap.clone(), backends.disk.clone());
        let own_disk = self.stores.own_disk.clone();
        let (held, releaser) = HeldOutputs::start(side.clone(), live, own_disk, self.net_mac);
        let mut inputs_backends = backends;
        if !inputs_backends.disk_own {
            // The shared image: the guest reads it through the writes still held.
            let reader = side.clone();
            inputs_backends.disk_reader =
                Some(Arc::new(move |disk, offset, buf| reader.read_disk(disk, offset, buf)));
        }
        let inputs = RecordingInputs::continuing(
            LinkSink::new(side.clone()),
            LiveInputs::continuing_at(monotonic_ns, inputs_backends),
        );
        vm.switch_io(Box::new(inputs), Box::new(held));
        *lock(&self.promoted) = Some(Promoted { side, releaser });
    }
}
