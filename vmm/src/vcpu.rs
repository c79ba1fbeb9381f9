//! The one vCPU: KVM_RUN, and the translation of KVM's exits into [`Exit`],
//! an owned value the exit handler ([`crate::machine`]) can be tested with.
//! Registers come from KVM_CAP_SYNC_REGS (mirrored into kvm_run on every exit;
//! a separate KVM_GET_REGS costs 6-10 us here, PLATFORM.md).
use kvm_bindings::kvm_regs;
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

/// A vCPU exit, with the data it carries copied out of kvm_run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest read `size` bytes at an address with no memory behind it.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        size: usize,
    },
    /// The guest wrote `value` (`size` bytes, little endian) at an MMIO address.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        size: usize,
        /// The bytes written, zero-extended.
        value: u64,
    },
    /// Port input (only possible at CPL0 on hosts that trap it).
    IoIn {
        /// The port.
        port: u16,
    },
    /// Port output.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written, zero-extended.
        value: u64,
    },
    /// HLT (only possible at CPL0).
    Hlt,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR (e.g. an instruction KVM cannot emulate).
    InternalError {
        /// kvm_run.internal.suberror.
        suberror: u32,
    },
    /// KVM could not enter the guest.
    FailEntry {
        /// The hardware's entry failure reason.
        reason: u64,
    },
    /// KVM_RUN returned for the host's own reasons (signal, EINTR): not a landmark.
    Interrupted,
    /// Any other exit: the platform never causes one.
    Unexpected {
        /// KVM's name for it.
        name: String,
    },
}

/// A failure of the KVM_RUN ioctl itself.
#[derive(Debug, Error)]
#[error("KVM_RUN failed: {0}")]
pub struct RunError(#[from] pub kvm_ioctls::Error);

/// The vCPU file descriptor and its exit translation.
pub struct Vcpu {
    fd: VcpuFd,
}

fn zero_extend(bytes: &[u8]) -> u64 {
    let mut value = [0u8; 8];
    let len = bytes.len().min(8);
    value[..len].copy_from_slice(&bytes[..len]);
    u64::from_le_bytes(value)
}

impl Vcpu {
    /// Wraps a configured vCPU and asks KVM to mirror its registers on every exit.
    pub fn new(mut fd: VcpuFd) -> Self {
        fd.set_sync_valid_reg(SyncReg::Register);
        Vcpu { fd }
    }

    /// Runs the guest until its next exit.
    pub fn run(&mut self) -> Result<Exit, RunError> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead { addr, size: data.len() },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                Exit::MmioWrite { addr, size: data.len(), value: zero_extend(data) }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                // Nothing lives on any port: the guest reads all ones.
                data.fill(0xff);
                Exit::IoIn { port }
            }
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut { port, value: zero_extend(data) },
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the kernel
                // filled the `internal` member of the exit union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Exit::InternalError { suberror }
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Exit::FailEntry { reason },
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(other) => Exit::Unexpected { name: format!("{other:?}") },
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                Exit::Interrupted
            }
            Err(error) => return Err(RunError(error)),
        };
        Ok(exit)
    }

    /// Completes the MMIO read the last exit asked for with `value`.
    pub fn complete_mmio_read(&mut self, value: u64) {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only after `run` returned `Exit::MmioRead`, so
        // exit_reason is KVM_EXIT_MMIO and the `mmio` union member is live.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(8);
        mmio.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
    }

    /// The general registers at the last exit (from the synced kvm_run copy).
    pub fn regs(&self) -> kvm_regs {
        self.fd.sync_regs().regs
    }

    /// The general and segment registers, read with ioctls (for a snapshot).
    pub fn full_state(&self) -> Result<(kvm_regs, kvm_bindings::kvm_sregs), kvm_ioctls::Error> {
        Ok((self.fd.get_regs()?, self.fd.get_sregs()?))
    }

    /// A hash of the general registers at the last exit.
    pub fn regs_hash(&self) -> u64 {
        regs_hash(&self.regs())
    }

    /// One KVM_RUN with immediate_exit set: the cost floor of any exit
    /// (no guest entry). Used by the benchmark only.
    pub fn immediate_exit_round_trip(&mut self) -> Result<(), RunError> {
        self.fd.set_kvm_immediate_exit(1);
        let result = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match result {
            Err(error) if error.errno() == libc::EINTR => Ok(()),
            Err(error) => Err(RunError(error)),
            Ok(()) => Ok(()),
        }
    }
}

/// A hash of every general register, RIP and RFLAGS.
pub fn regs_hash(regs: &kvm_regs) -> u64 {
    let words = [
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rsp,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rip,
        regs.rflags,
    ];
    let mut bytes = [0u8; 18 * 8];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    xxh3_64(&bytes)
}
