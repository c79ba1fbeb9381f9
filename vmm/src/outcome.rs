//! How a run ends, and the process exit status each ending maps to.
use std::fmt;

use crate::inputs::InputError;

/// Process exit statuses of `ftvm run` that are not the guest's own code.
/// A guest's power-off code passes through (0..=255; larger codes become 255).
pub mod status {
    /// The VMM could not start or continue (bad ELF, no KVM, ...).
    pub const VMM_ERROR: u8 = 120;
    /// The guest took a fatal CPU exception (its stub reported it).
    pub const GUEST_EXCEPTION: u8 = 121;
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    pub const TRIPLE_FAULT: u8 = 122;
    /// KVM reported an internal error or failed to enter the guest.
    pub const KVM_ERROR: u8 = 123;
    /// The guest waited with nothing that could ever wake it.
    pub const GUEST_STUCK: u8 = 124;
    /// A replay found the guest somewhere other than the log says.
    pub const DIVERGED: u8 = 125;
    /// The log is unreadable, cut short, or could not be written.
    pub const LOG_ERROR: u8 = 126;
    /// This side of an FT pair lost the arbiter and halted (the other side runs the guest).
    pub const HALTED: u8 = 127;
    /// The host stopped the VM (SIGINT/SIGTERM), as shells report 128 + SIGINT.
    pub const STOPPED: u8 = 130;
    /// This side of an FT pair cannot take part: a configuration error (the
    /// arbiter directory, the pair identity, a decided generation) or a peer
    /// that cannot be its partner. Nothing ran.
    pub const PAIR_REFUSED: u8 = 119;
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest powered off with this code.
    PowerOff {
        /// The guest's exit code.
        code: u32,
    },
    /// The guest's fault stub reported a CPU exception.
    GuestException {
        /// Exception vector.
        vector: u64,
        /// Error code (0 when the vector has none).
        error_code: u64,
        /// RIP of the faulting instruction.
        rip: u64,
    },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault {
        /// RIP when KVM gave up.
        rip: u64,
    },
    /// KVM could not run the guest (internal error, failed entry, unexpected exit).
    KvmError {
        /// What KVM said.
        detail: String,
    },
    /// An output could not be carried out (the disk image failed).
    OutputFailed(String),
    /// The host stopped the VM (SIGINT/SIGTERM), or the recording being replayed was stopped
    /// at this point.
    Stopped,
    /// This side of an FT pair lost the arbiter (the other side runs the guest) and halted.
    Halted(String),
    /// The inputs could not go on: the guest waits for nothing, a replay
    /// diverged, or the log failed.
    InputsFailed(InputError),
}

impl RunOutcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunOutcome::PowerOff { code } => u8::try_from(*code).unwrap_or(u8::MAX),
            RunOutcome::GuestException { .. } => status::GUEST_EXCEPTION,
            RunOutcome::TripleFault { .. } => status::TRIPLE_FAULT,
            RunOutcome::KvmError { .. } => status::KVM_ERROR,
            RunOutcome::OutputFailed(_) => status::VMM_ERROR,
            RunOutcome::Stopped => status::STOPPED,
            RunOutcome::Halted(_) => status::HALTED,
            RunOutcome::InputsFailed(InputError::NothingToWaitFor) => status::GUEST_STUCK,
            RunOutcome::InputsFailed(InputError::Diverged(_)) => status::DIVERGED,
            // A host device (a disk image, a TAP) failed: the VMM's error, not the log's.
            RunOutcome::InputsFailed(InputError::Host(_)) => status::VMM_ERROR,
            RunOutcome::InputsFailed(_) => status::LOG_ERROR,
        }
    }
}

impl From<InputError> for RunOutcome {
    fn from(error: InputError) -> Self {
        RunOutcome::InputsFailed(error)
    }
}

/// The x86 name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization",
        "#CP control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved",
    ];
    usize::try_from(vector).ok().and_then(|v| NAMES.get(v)).copied().unwrap_or("not an exception")
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::PowerOff { code } => write!(f, "guest powered off with exit code {code}"),
            RunOutcome::GuestException { vector, error_code, rip } => write!(
                f,
                "guest exception: vector {vector} ({}) at rip {rip:#x}, error code {error_code:#x}",
                vector_name(*vector)
            ),
            RunOutcome::TripleFault { rip } => {
                write!(f, "guest triple fault (KVM shutdown exit) near rip {rip:#x}")
            }
            RunOutcome::KvmError { detail } => write!(f, "KVM could not run the guest: {detail}"),
            RunOutcome::OutputFailed(detail) => write!(f, "guest output failed: {detail}"),
            RunOutcome::Stopped => write!(f, "stopped by the host"),
            RunOutcome::Halted(reason) => write!(f, "{reason}"),
            RunOutcome::InputsFailed(InputError::NothingToWaitFor) => {
                write!(f, "guest stuck: {}", InputError::NothingToWaitFor)
            }
            RunOutcome::InputsFailed(error) => write!(f, "{error}"),
        }
    }
}
