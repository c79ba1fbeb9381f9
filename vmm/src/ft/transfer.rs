//! Adding a backup to a running guest (DESIGN §5; VMware FT restores redundancy the same way):
//! a backup gone live, told `add-backup ADDR` on its API socket, moves the pair to the next
//! generation, connects to a backup waiting at ADDR (`ftvm backup --listen ADDR`) and sends it
//! the guest's RAM while the guest runs (pre-copy: KVM's dirty log and the RAM's own bitmap,
//! which marks the VMM's writes, name the pages written since; they are sent again, round
//! after round, until few are left). Then, with the vCPU paused between two exits, it sends
//! the last dirty pages and the rest of the state (a snapshot without RAM: registers, every
//! device's `persist`, pending events, the clock), and the guest goes on as the primary of the
//! new generation on the same link: from its next exit its inputs are logged and its outputs
//! wait for the new backup's acks. The new backup restores the state and replays what
//! follows (`runs::backup`).
//!
//! Not yet: a solo primary (its outputs live in its releaser, which would have to hand them
//! back) and own disks (`mode=own`: the image would have to be copied with dirty-block
//! tracking); both are refused with a reason.
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use logchannel::{ChannelError, Credentials, Devices, Entry, PrimaryLink};
use serde::Serialize;
use thiserror::Error;

use super::primary::{HeldOutputs, LinkSink, PrimarySide};
use super::FtConfig;
use crate::inputs::live::{Backends, LiveInputs};
use crate::inputs::record::RecordingInputs;
use crate::memory::{self, GuestRam};
use crate::outputs::{LiveOutputs, SharedWriter};
use crate::tasks::VmTasks;
use crate::vm::Vm;

/// Pages per log entry (1 MiB of RAM: well under the frame limit).
const PAGES_PER_ENTRY: usize = 256;
/// Pre-copy ends when a round finds at most this many dirty pages (the pause then sends them).
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
    /// The generation this side runs in, once it runs the guest alone (a backup gone live).
    pub running_alone_in: Arc<Mutex<Option<u64>>>,
    /// Set when the transfer made this side a primary.
    pub promoted: Arc<Mutex<Option<Promoted>>>,
    /// Held during a transfer: one at a time (the API and `--restore-to` may both ask).
    pub transferring: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Promotion {
    /// Adds the backup waiting at `addr`: pre-copy, pause, hand-over, as the module says.
    pub fn add_backup(&self, addr: &str) -> Result<TransferReport, TransferError> {
        let started = Instant::now();
        let Ok(_one_at_a_time) = self.transferring.try_lock() else {
            return Err(TransferError::NotHere("a backup is being added already".into()));
        };
        let generation = self.generation_alone()?;
        if self.backends.disk_own {
            return Err(TransferError::NotHere(
                "adding a backup to a guest with its own disk (mode=own) is not built yet: the \
                 image would have to be copied too"
                    .into(),
            ));
        }
        let credentials = self.next_generation(generation)?;
        let new_generation = credentials.generation;
        eprintln!("ftvm: adding the backup at {addr} in generation {new_generation}");
        let link = PrimaryLink::connect(addr, &self.config.channel, &credentials, self.devices)
            .map_err(|error| TransferError::Connect { addr: addr.into(), error })?;
        let (vm_fd, ram) = self.on_vcpu_thread(|vm| Ok(vm.ram_handles()))?;
        let memory_error = |error: kvm_ioctls::Error| TransferError::Memory(error.to_string());
        memory::map_into(&vm_fd, &ram, true).map_err(memory_error)?;
        let precopy = precopy(&link, &self.config, &vm_fd, &ram);
        let (rounds, precopy_pages) = match precopy {
            Ok(done) => done,
            Err(error) => {
                let _ = memory::map_into(&vm_fd, &ram, false);
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
            vm_fd,
            ram,
            promoted: self.promoted.clone(),
        };
        let (paused_pages, sent_bytes, pause_us) =
            self.on_vcpu_thread(move |vm| hand_over.run(vm))?;
        *lock(&self.running_alone_in) = None;
        let report = TransferReport {
            generation: new_generation,
            rounds,
            precopy_pages,
            paused_pages,
            sent_bytes,
            pause_us,
            total_ms: started.elapsed().as_millis() as u64,
        };
        eprintln!(
            "ftvm: role: live -> primary, generation {new_generation}, the backup at {addr} added: \
             {} pre-copy rounds, {} pages while running, {} paused, {} bytes, paused {} us",
            report.rounds, report.precopy_pages, report.paused_pages, report.sent_bytes, pause_us
        );
        Ok(report)
    }

    /// The generation this side runs the guest alone in, if it does.
    fn generation_alone(&self) -> Result<u64, TransferError> {
        (*lock(&self.running_alone_in)).ok_or_else(|| {
            TransferError::NotHere(
                "this side does not run the guest alone: a backup is added by a backup that went \
                 live (a solo primary cannot take one yet)"
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

/// Sends `pages` in entries of [`PAGES_PER_ENTRY`], waiting for the backup to take them (so
/// memory stays bounded on both sides); the bytes sent.
fn send_pages(
    link: &PrimaryLink,
    config: &FtConfig,
    pages: Vec<(u64, serde_bytes::ByteBuf)>,
) -> Result<u64, TransferError> {
    let mut sent_bytes = 0;
    let mut pages = pages.into_iter().peekable();
    while pages.peek().is_some() {
        let chunk: Vec<_> = pages.by_ref().take(PAGES_PER_ENTRY).collect();
        sent_bytes += link.send(&Entry::Pages(chunk))?.frame_len_bytes;
        link.wait_for_room_after(config.max_lag_bytes, u64::MAX / 1_000_000, None)?;
    }
    Ok(sent_bytes)
}

/// The pre-copy rounds while the guest runs: (rounds, pages sent).
fn precopy(
    link: &PrimaryLink,
    config: &FtConfig,
    vm_fd: &VmFd,
    ram: &GuestRam,
) -> Result<(u32, u64), TransferError> {
    let memory_error = |error: String| TransferError::Memory(error);
    // What was written before the logging began is in the first round's full pass.
    memory::take_dirty_pages(vm_fd, ram).map_err(|error| memory_error(error.to_string()))?;
    let every_page = 0..memory::ram_bytes(ram) / crate::snapshot::PAGE_BYTES as u64;
    let first =
        memory::read_pages(ram, every_page, true).map_err(|e| memory_error(e.to_string()))?;
    let mut sent_pages = first.len() as u64;
    send_pages(link, config, first)?;
    let mut rounds = 1;
    let mut last_dirty = usize::MAX;
    loop {
        let dirty = memory::take_dirty_pages(vm_fd, ram)
            .map_err(|error| memory_error(error.to_string()))?;
        let count = dirty.len();
        let pages =
            memory::read_pages(ram, dirty, false).map_err(|e| memory_error(e.to_string()))?;
        sent_pages += count as u64;
        send_pages(link, config, pages)?;
        rounds += 1;
        let shrinking = count < last_dirty - last_dirty / 10;
        if count <= FEW_DIRTY_PAGES || rounds >= MAX_ROUNDS || !shrinking {
            return Ok((rounds, sent_pages));
        }
        last_dirty = count;
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
    vm_fd: Arc<VmFd>,
    ram: GuestRam,
    promoted: Arc<Mutex<Option<Promoted>>>,
}

impl HandOver {
    /// Sends the last dirty pages and the state, then makes the guest's inputs and outputs
    /// the primary's: (pages sent, bytes sent in all, the pause in us).
    fn run(self, vm: &mut Vm) -> Result<(u64, u64, u64), TransferError> {
        let paused = Instant::now();
        let result = self.send_state(vm);
        let _ = memory::map_into(&self.vm_fd, &self.ram, false);
        let pages = result?;
        let sent_bytes = self.link.stats().sent_bytes;
        self.become_primary(vm);
        Ok((pages, sent_bytes, paused.elapsed().as_micros() as u64))
    }

    /// The pages sent while paused.
    fn send_state(&self, vm: &mut Vm) -> Result<u64, TransferError> {
        let mut state = vm.snapshot_without_ram().map_err(TransferError::Pause)?;
        let dirty = memory::take_dirty_pages(&self.vm_fd, &self.ram)
            .map_err(|error| TransferError::Memory(error.to_string()))?;
        let count = dirty.len() as u64;
        let pages = memory::read_pages(&self.ram, dirty, false)
            .map_err(|error| TransferError::Memory(error.to_string()))?;
        send_pages(&self.link, &self.config, pages)?;
        state.pages = Vec::new();
        let encoded = postcard::to_allocvec(&state)
            .map_err(|error| TransferError::Pause(format!("encoding the state: {error}")))?;
        self.link.send(&Entry::ResumeFrom(serde_bytes::ByteBuf::from(encoded)))?;
        Ok(count)
    }

    /// From the next exit the guest's inputs are logged to the new backup and its outputs
    /// wait for its acks; the clock goes on from where it stands.
    fn become_primary(self, vm: &mut Vm) {
        let monotonic_ns = vm.clock_now_ns().unwrap_or_default();
        let side = PrimarySide::new(self.link, self.config, self.generation);
        let backends = self.backends;
        let live =
            LiveOutputs::new(Box::new(self.console), backends.tap.clone(), backends.disk.clone());
        let (held, releaser) = HeldOutputs::start(side.clone(), live, None, self.net_mac);
        let mut inputs_backends = backends;
        // The shared image: the guest reads it through the writes still held.
        let reader = side.clone();
        inputs_backends.disk_reader =
            Some(Arc::new(move |disk, offset, buf| reader.read_disk(disk, offset, buf)));
        let inputs = RecordingInputs::continuing(
            LinkSink::new(side.clone()),
            LiveInputs::continuing_at(monotonic_ns, inputs_backends),
        );
        vm.switch_io(Box::new(inputs), Box::new(held));
        *lock(&self.promoted) = Some(Promoted { side, releaser });
    }
}
