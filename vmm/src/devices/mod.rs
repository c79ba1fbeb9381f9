//! The platform devices (ftvm_abi::mmio), one per file, and the bus that
//! routes an MMIO access to the device whose window it falls in.
//!
//! A device is a deterministic function of the guest's accesses and the
//! values it gets from [`Inputs`]: it never reads the host clock or
//! randomness itself, so the same accesses and inputs give the same results
//! in live, record and replay runs.

pub mod clock;
pub mod console;
pub mod entropy;
pub mod events;
pub mod power;
pub mod timer;

use std::io::Write;

use ftvm_abi::mmio;
use vm_memory::GuestMemoryMmap;

use crate::inputs::{AsyncEvent, At, Inputs};
use crate::misbehaviour::{Misbehaviour, Offence};
use crate::outcome::RunOutcome;

/// Event state shared by the timer and event devices: what is pending for the
/// guest and what is armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventState {
    /// Bits of `ftvm_abi::mmio::events` the guest has not read yet.
    pub pending: u64,
    /// The timer deadline in guest monotonic ns, if armed.
    pub timer_deadline_ns: Option<u64>,
}

impl EventState {
    /// Applies an asynchronous event: the one place events change guest-visible state.
    pub fn apply(&mut self, event: AsyncEvent) {
        match event {
            AsyncEvent::TimerExpired => {
                self.pending |= mmio::events::TIMER;
                self.timer_deadline_ns = None;
            }
        }
    }

    /// What is armed, for the inputs to decide what can fire.
    pub fn armed(&self) -> crate::inputs::Armed {
        crate::inputs::Armed { timer_deadline_ns: self.timer_deadline_ns }
    }
}

/// Everything a device may touch while it handles one access.
pub struct DeviceCtx<'a> {
    /// Guest RAM (every access is bounds-checked by vm-memory).
    pub memory: &'a GuestMemoryMmap,
    /// The source of every non-deterministic value.
    pub inputs: &'a mut dyn Inputs,
    /// Where the guest is.
    pub at: At,
    /// Pending events and armed timer.
    pub events: &'a mut EventState,
    /// Where guest misbehaviour is counted.
    pub misbehaviour: &'a mut Misbehaviour,
}

/// A 64-bit register access the bus has already checked for size and alignment.
pub type RegisterResult<T> = Result<T, RunOutcome>;

/// A device behind one MMIO window. Offsets are 8-aligned register offsets.
pub trait MmioDevice {
    /// A read of the register at `offset`; `Err` ends the run.
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64>;
    /// A write of `value` to the register at `offset`; `Err` ends the run.
    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()>;
}

/// The fixed platform devices.
pub struct Devices {
    /// Text output.
    pub console: console::Console,
    /// Shutdown and fault reports.
    pub power: power::Power,
    /// Guest time.
    pub clock: clock::Clock,
    /// One-shot timer.
    pub timer: timer::Timer,
    /// Random bytes.
    pub entropy: entropy::Entropy,
    /// Pending-event mask, yield and wait.
    pub events: events::Events,
}

impl Devices {
    /// The platform with console output going to `console`.
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        Devices {
            console: console::Console::new(console),
            power: power::Power::default(),
            clock: clock::Clock,
            timer: timer::Timer,
            entropy: entropy::Entropy,
            events: events::Events::default(),
        }
    }

    fn device_at(&mut self, window_base: u64) -> Option<&mut dyn MmioDevice> {
        Some(match window_base {
            mmio::console::BASE => &mut self.console,
            mmio::power::BASE => &mut self.power,
            mmio::clock::BASE => &mut self.clock,
            mmio::timer::BASE => &mut self.timer,
            mmio::entropy::BASE => &mut self.entropy,
            mmio::events::BASE => &mut self.events,
            _ => return None,
        })
    }

    /// Routes one MMIO access. `write` is `Some(value)` for a write. Returns
    /// the value a read yields (0 for writes); an access that is not a 64-bit
    /// aligned access to a device register is counted as misbehaviour and has
    /// no effect (reads yield all ones, as on a bus with nothing behind it).
    pub fn access(
        &mut self,
        addr: u64,
        size: usize,
        write: Option<u64>,
        ctx: &mut DeviceCtx,
    ) -> RegisterResult<u64> {
        const NOTHING: u64 = u64::MAX;
        let window_base = addr & !(mmio::WINDOW_BYTES - 1);
        let offset = addr - window_base;
        let Some(device) = self.device_at(window_base) else {
            ctx.misbehaviour.record(Offence::UnknownMmio, addr, write.unwrap_or(0));
            return Ok(NOTHING);
        };
        if size != 8 || !offset.is_multiple_of(8) {
            ctx.misbehaviour.record(Offence::BadAccessSize, addr, size as u64);
            return Ok(NOTHING);
        }
        match write {
            Some(value) => device.write(offset, value, ctx).map(|()| 0),
            None => device.read(offset, ctx),
        }
    }
}

/// The common answer to an access of an offset a device does not define.
pub(crate) fn no_such_register(ctx: &mut DeviceCtx, base: u64, offset: u64, value: u64) -> u64 {
    ctx.misbehaviour.record(Offence::NoSuchRegister, base + offset, value);
    0
}
