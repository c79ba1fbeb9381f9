//! A whole VM: opens KVM, maps RAM, loads the kernel, sets up the vCPU and
//! runs the one vCPU loop (KVM_RUN -> [`Machine::handle_exit`] -> repeat).
//! No in-kernel irqchip, PIT or LAPIC timer: KVM is never a source of
//! asynchrony (DESIGN §3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ftvm_abi::boot::{BootInfo, BootInfoError, BYTES as BOOT_INFO_BYTES};
use ftvm_abi::layout::BOOT_INFO_ADDR;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VmFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::DeviceSet;
use crate::devices::Devices;
use crate::inputs::live::HostClock;
use crate::inputs::{InputError, Inputs, LogStats, RunEnd};
use crate::loader::{self, LoaderError};
use crate::machine::{Action, Machine};
use crate::memory::{self, MemoryError};
use crate::misbehaviour::Misbehaviour;
use crate::outcome::RunOutcome;
use crate::outputs::Outputs;
use crate::snapshot::{Snapshot, SnapshotError, PAGE_BYTES};
use crate::tasks::VmTasks;
use crate::vcpu::{self, Exit, RunError, Vcpu};
use crate::x86::{self, EntryMode};

/// Default guest RAM.
pub const DEFAULT_MEM_BYTES: u64 = 128 << 20;

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The kernel ELF image.
    pub kernel: Vec<u8>,
    /// The guest command line.
    pub cmdline: String,
    /// Privilege level at entry.
    pub entry_mode: EntryMode,
}

/// Why a VM could not be created or run.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm is absent.
    #[error("/dev/kvm does not exist: this host has no KVM. Load kvm_intel or kvm_amd (or kvm_pvm), or run on a host with virtualization enabled")]
    NoKvm,
    /// /dev/kvm is not accessible.
    #[error("permission denied opening /dev/kvm: run as root or add your user to the `kvm` group")]
    KvmPermission,
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// KVM lacks a capability ftvm needs.
    #[error("this KVM lacks {0}, which ftvm needs")]
    MissingCapability(&'static str),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel image is unusable.
    #[error("bad kernel image: {0}")]
    Kernel(#[from] LoaderError),
    /// The command line does not fit the boot-info block.
    #[error("the guest command line is too long (at most {} bytes)", ftvm_abi::boot::CMDLINE_MAX)]
    Cmdline(BootInfoError),
    /// Writing the boot structures into guest RAM failed.
    #[error("writing boot structures into guest RAM failed: {0}")]
    BootWrite(#[from] vm_memory::GuestMemoryError),
    /// KVM_RUN failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A snapshot could not be restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Everything a finished run reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Guest-caused exits.
    pub landmarks: u64,
    /// Hash of the console output.
    pub console_hash: u64,
    /// Bytes of console output.
    pub console_bytes: u64,
    /// Hash of all guest RAM at the end.
    pub memory_hash: u64,
    /// Hash of the general registers at the end.
    pub regs_hash: u64,
    /// What the guest did wrong to its devices.
    pub misbehaviour: Misbehaviour,
    /// Host ns the vCPU spent in KVM_RUN.
    pub guest_ns: u64,
    /// Host ns from creating the VM to the end of the run.
    pub wall_ns: u64,
    /// The longest host time the guest ran between two landmarks (DESIGN §4:
    /// the guest promises one at least every ~1-2 ms).
    pub longest_stretch_ns: u64,
    /// Entries and bytes of the log written or read.
    pub log_stats: LogStats,
    /// Frames the guest transmitted and a hash of them, in order.
    pub net_tx: (u64, u64),
    /// Frames delivered to the guest.
    pub net_rx_frames: u64,
    /// Disk requests served.
    pub disk_requests: u64,
    /// The FT pair as the primary saw it (primary runs only).
    pub pair: Option<crate::ft::PairReport>,
}

/// A booted VM, ready to run.
pub struct Vm {
    // Field order is drop order: the vCPU before the VM before /dev/kvm.
    vcpu: Vcpu,
    machine: Machine,
    takeover: Option<Box<dyn Takeover>>,
    /// Work other threads hand the vCPU thread, done between exits.
    tasks: Option<Arc<VmTasks>>,
    /// The guest's command line (for snapshots).
    cmdline: String,
    /// Landmarks so far, published for the API socket's status.
    landmark_counter: Option<Arc<AtomicU64>>,
    /// The statistics of the log replayed before a takeover.
    replayed_stats: Option<LogStats>,
    timing: Timing,
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
}

/// The inputs and outputs a run goes on with after a takeover.
pub type LiveIo = (Box<dyn Inputs>, Box<dyn Outputs>);

/// What a backup does when the log it replays ends (its primary is gone): wait out the
/// primary's lease, win the arbiter, and hand back live inputs and outputs for the guest to go
/// on with from the exit at `landmark`; or the outcome that ends the run (halted, stopped).
pub trait Takeover {
    /// Goes live at the exit at `landmark`.
    fn take_over(&mut self, landmark: u64) -> Result<LiveIo, RunOutcome>;
}

/// Host-time measurements of a run (never seen by the guest).
struct Timing {
    clock: HostClock,
    guest_ns: u64,
    stretch_ns: u64,
    longest_stretch_ns: u64,
}

/// What failing to open /dev/kvm means for the user.
fn kvm_open_error(error: kvm_ioctls::Error) -> VmError {
    match error.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::Kvm { what: "open /dev/kvm", source: error },
    }
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(kvm_open_error)
}

impl Vm {
    /// Creates the VM with the platform devices plus `devices`, loads the
    /// kernel and prepares the vCPU at its entry.
    pub fn new(
        config: &VmConfig,
        devices: DeviceSet,
        inputs: Box<dyn Inputs>,
        outputs: Box<dyn Outputs>,
    ) -> Result<Vm, VmError> {
        let clock = HostClock::start();
        let guest_memory = memory::create(config.mem_bytes)?;
        let kernel = loader::load(&guest_memory, &config.kernel)?;
        let info = BootInfo {
            ram_bytes: config.mem_bytes,
            image_end: kernel.image_end,
            devices: devices.boot_info_bits(),
            cmdline: &config.cmdline,
        };
        let mut block = [0u8; BOOT_INFO_BYTES];
        info.encode(&mut block).map_err(VmError::Cmdline)?;
        guest_memory.write_slice(&block, GuestAddress(BOOT_INFO_ADDR))?;
        x86::write_tables(&guest_memory)?;
        let (kvm, vm, vcpu_fd) = create_kvm_vm(&guest_memory)?;
        let sregs = vcpu_fd.get_sregs().map_err(kvm_error("get sregs"))?;
        vcpu_fd.set_sregs(&x86::sregs(sregs, config.entry_mode)).map_err(kvm_error("set sregs"))?;
        vcpu_fd
            .set_regs(&x86::regs(kernel.entry, config.entry_mode))
            .map_err(kvm_error("set regs"))?;
        let machine = Machine::new(guest_memory, devices, inputs, outputs);
        Ok(Vm::assemble(Vcpu::new(vcpu_fd), machine, config.cmdline.clone(), clock, (vm, kvm)))
    }

    fn assemble(
        vcpu: Vcpu,
        machine: Machine,
        cmdline: String,
        clock: HostClock,
        (vm, kvm): (VmFd, Kvm),
    ) -> Vm {
        let timing = Timing { clock, guest_ns: 0, stretch_ns: 0, longest_stretch_ns: 0 };
        Vm {
            vcpu,
            machine,
            takeover: None,
            landmark_counter: None,
            tasks: None,
            cmdline,
            replayed_stats: None,
            timing,
            vm_fd: Arc::new(vm),
            _kvm: kvm,
        }
    }

    /// The VM `snapshot` describes, ready to run on from there with `inputs` and `outputs`
    /// (whose clock should go on from [`Snapshot::monotonic_ns`]).
    pub fn restore(
        snapshot: Snapshot,
        inputs: Box<dyn Inputs>,
        outputs: Box<dyn Outputs>,
    ) -> Result<Vm, VmError> {
        let clock = HostClock::start();
        let guest_memory = memory::create(snapshot.mem_bytes)?;
        for (index, bytes) in &snapshot.pages {
            let addr = index
                .checked_mul(PAGE_BYTES as u64)
                .filter(|addr| addr + bytes.len() as u64 <= snapshot.mem_bytes)
                .ok_or_else(|| {
                    SnapshotError::State(format!("page {index} lies outside guest RAM"))
                })?;
            guest_memory.write_slice(bytes, GuestAddress(addr))?;
        }
        let (kvm, vm, vcpu_fd) = create_kvm_vm(&guest_memory)?;
        let refused = |what| move |error| SnapshotError::Kvm { what, error };
        vcpu_fd.set_sregs(&snapshot.sregs).map_err(refused("segment registers"))?;
        vcpu_fd.set_regs(&snapshot.regs).map_err(refused("general registers"))?;
        let devices = Devices::restore(snapshot.device_state)?;
        if devices.set() != snapshot.devices {
            return Err(SnapshotError::State("the saved devices contradict the VM's".into()).into());
        }
        let machine = Machine::restore(
            guest_memory,
            devices,
            snapshot.events,
            snapshot.landmarks,
            inputs,
            outputs,
        );
        Ok(Vm::assemble(Vcpu::new(vcpu_fd), machine, snapshot.cmdline, clock, (vm, kvm)))
    }

    /// Does the tasks pushed to `tasks` between two exits.
    pub fn with_tasks(mut self, tasks: Arc<VmTasks>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// The guest as it stands, between two exits, RAM included.
    pub fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut snapshot = self.snapshot_without_ram()?;
        let memory = &self.machine.memory;
        let every_page = 0..snapshot.mem_bytes / PAGE_BYTES as u64;
        snapshot.pages = memory::read_pages(memory, every_page, true).map_err(|e| e.to_string())?;
        Ok(snapshot)
    }

    /// The guest as it stands, between two exits, without its RAM: the last exit's MMIO read
    /// is completed first (KVM_RUN with immediate_exit finishes the instruction without
    /// entering the guest), so the registers are those after it.
    pub fn snapshot_without_ram(&mut self) -> Result<Snapshot, String> {
        self.vcpu.immediate_exit_round_trip().map_err(|error| error.to_string())?;
        let (regs, sregs) = self.vcpu.full_state().map_err(|error| error.to_string())?;
        let monotonic_ns = self
            .machine
            .inputs_mut()
            .clock_now_ns()
            .ok_or("only a guest running on live inputs (`ftvm run`) can be snapshotted")?;
        let mem_bytes = memory::ram_bytes(&self.machine.memory);
        let (device_state, events, landmarks) = self.machine.save();
        Ok(Snapshot {
            mem_bytes,
            cmdline: self.cmdline.clone(),
            devices: self.machine.devices.set(),
            landmarks,
            monotonic_ns,
            regs,
            sregs,
            device_state,
            events,
            pages: Vec::new(),
        })
    }

    /// The VM (for its dirty log) and guest RAM, which a transfer reads while the guest runs.
    pub fn ram_handles(&self) -> (Arc<VmFd>, memory::GuestRam) {
        (self.vm_fd.clone(), self.machine.memory.clone())
    }

    /// Landmarks (guest exits) so far.
    pub fn landmarks(&self) -> u64 {
        self.machine.landmarks()
    }

    /// The guest's clock now, if it runs on live inputs.
    pub fn clock_now_ns(&mut self) -> Option<u64> {
        self.machine.inputs_mut().clock_now_ns()
    }

    /// Goes on with other inputs and outputs from the next exit (a side that becomes a
    /// primary); the old ones are dropped.
    pub fn switch_io(&mut self, inputs: Box<dyn Inputs>, outputs: Box<dyn Outputs>) {
        drop(self.machine.switch_io(inputs, outputs));
    }

    /// Does the tasks other threads asked for, if any.
    fn serve_tasks(&mut self) {
        let Some(tasks) = self.tasks.clone() else { return };
        while let Some(task) = tasks.take() {
            task(self);
        }
    }
}

/// Opens KVM, creates a VM over `guest_memory` and its one vCPU with the host's CPUID.
fn create_kvm_vm(
    guest_memory: &crate::memory::GuestRam,
) -> Result<(Kvm, VmFd, kvm_ioctls::VcpuFd), VmError> {
    {
        let kvm = open_kvm()?;
        if !kvm.check_extension(Cap::SyncRegs) {
            return Err(VmError::MissingCapability("KVM_CAP_SYNC_REGS"));
        }
        let vm = kvm.create_vm().map_err(kvm_error("create VM"))?;
        memory::map_into(&vm, guest_memory, false).map_err(kvm_error("set memory region"))?;

        let vcpu_fd = vm.create_vcpu(0).map_err(kvm_error("create vCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("get supported CPUID"))?;
        vcpu_fd.set_cpuid2(&cpuid).map_err(kvm_error("set CPUID"))?;
        Ok((kvm, vm, vcpu_fd))
    }
}

impl Vm {
    /// Publishes the landmark count to `counter` after every exit (for status reports).
    pub fn with_landmark_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.landmark_counter = Some(counter);
        self
    }

    /// Goes live with `takeover` when the replayed log ends (an FT backup).
    pub fn with_takeover(mut self, takeover: Box<dyn Takeover>) -> Self {
        self.takeover = Some(takeover);
        self
    }

    /// Runs the guest to its next exit and handles it; `Some` when the run is over.
    pub fn step(&mut self) -> Result<Option<RunOutcome>, VmError> {
        let entered_ns = self.timing.clock.elapsed_ns();
        let exit = self.vcpu.run()?;
        let ran_ns = self.timing.clock.elapsed_ns() - entered_ns;
        self.timing.guest_ns += ran_ns;
        self.timing.stretch_ns += ran_ns;
        if exit != Exit::Interrupted {
            self.timing.longest_stretch_ns =
                self.timing.longest_stretch_ns.max(self.timing.stretch_ns);
            self.timing.stretch_ns = 0;
        }
        let regs = self.vcpu.regs();
        let mut action = self.machine.handle_exit(exit.clone(), &regs);
        // The log ends before this exit: a backup goes live and handles it again; without a
        // takeover the run ends (below).
        if let Action::LogEnded { landmark, .. } = action {
            if let Some(mut takeover) = self.takeover.take() {
                action = match takeover.take_over(landmark) {
                    Ok((inputs, outputs)) => {
                        let (replayed, _) = self.machine.switch_io(inputs, outputs);
                        self.replayed_stats = Some(replayed.log_stats());
                        self.machine.handle_exit(exit, &regs)
                    }
                    Err(outcome) => Action::Stop(outcome),
                };
            }
        }
        if let Some(counter) = &self.landmark_counter {
            counter.store(self.machine.landmarks(), Ordering::Relaxed);
        }
        match action {
            Action::Resume { read_value } => {
                if let Some(value) = read_value {
                    self.vcpu.complete_mmio_read(value);
                }
                self.serve_tasks();
                Ok(None)
            }
            Action::Stop(outcome) => Ok(Some(outcome)),
            Action::LogEnded { covered_landmark, landmark } => {
                Ok(Some(InputError::LogEnded { covered_landmark, landmark }.into()))
            }
        }
    }

    /// Runs the guest until it powers off, faults or gets stuck.
    pub fn run(&mut self) -> Result<RunReport, VmError> {
        loop {
            if let Some(outcome) = self.step()? {
                return Ok(self.finish(outcome));
            }
        }
    }

    /// Ends the run: reports it, and records its end in (or checks it
    /// against) the log. A run the inputs already stopped is not checked again.
    pub fn finish(&mut self, outcome: RunOutcome) -> RunReport {
        let mut report = self.report(outcome);
        let stopped = report.outcome == RunOutcome::Stopped;
        // A halted side's run is the other side's now: nothing to record or compare.
        if !matches!(report.outcome, RunOutcome::InputsFailed(_) | RunOutcome::Halted(_)) {
            let end = RunEnd {
                landmarks: report.landmarks,
                outcome: report.outcome.to_string(),
                exit_status: report.outcome.exit_status(),
                console_hash: report.console_hash,
                memory_hash: report.memory_hash,
                regs_hash: report.regs_hash,
                stopped,
            };
            if let Err(error) = self.machine.inputs_mut().end_of_run(&end) {
                report.outcome = RunOutcome::InputsFailed(error);
            }
        }
        report.log_stats =
            self.replayed_stats.take().unwrap_or_else(|| self.machine.inputs_mut().log_stats());
        report
    }

    /// The report for a run that ended with `outcome`.
    fn report(&mut self, outcome: RunOutcome) -> RunReport {
        let wall_ns = self.timing.clock.elapsed_ns();
        RunReport {
            outcome,
            landmarks: self.machine.landmarks(),
            console_hash: self.machine.devices.console.output_hash(),
            console_bytes: self.machine.devices.console.bytes_written(),
            memory_hash: memory::hash(&self.machine.memory),
            regs_hash: vcpu::regs_hash(&self.vcpu.regs()),
            misbehaviour: self.machine.misbehaviour.clone(),
            guest_ns: self.timing.guest_ns,
            wall_ns,
            longest_stretch_ns: self.timing.longest_stretch_ns,
            log_stats: LogStats::default(),
            net_tx: self
                .machine
                .devices
                .net
                .as_ref()
                .map_or((0, 0), |net| net.device().transmitted()),
            net_rx_frames: self
                .machine
                .devices
                .net
                .as_ref()
                .map_or(0, |net| net.device().received()),
            disk_requests: self
                .machine
                .devices
                .block
                .as_ref()
                .map_or(0, |block| block.device().requests()),
            pair: None,
        }
    }

    /// The vCPU, for the benchmark's bare KVM_RUN measurement.
    pub fn vcpu_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_failures_say_what_to_do() {
        let missing = kvm_open_error(kvm_ioctls::Error::new(libc::ENOENT)).to_string();
        assert!(
            missing.contains("/dev/kvm does not exist") && missing.contains("kvm_intel"),
            "{missing}"
        );
        let denied = kvm_open_error(kvm_ioctls::Error::new(libc::EACCES)).to_string();
        assert!(denied.contains("permission denied") && denied.contains("kvm` group"), "{denied}");
        let other = kvm_open_error(kvm_ioctls::Error::new(libc::EMFILE)).to_string();
        assert!(other.contains("open /dev/kvm failed"), "{other}");
    }
}
