//! The platform devices (ftvm_abi::mmio), one per file, the virtio devices
//! (network, block) behind the virtio-mmio transport, and the bus that routes
//! an MMIO access to the device whose window it falls in.
//!
//! A device is a deterministic function of the guest's accesses and the
//! values it gets from [`Inputs`]: it never reads the host clock, randomness,
//! network or disk itself, and it hands everything it produces to
//! [`Outputs`], so the same accesses and inputs give the same results in live,
//! record and replay runs.

pub mod clock;
pub mod console;
pub mod entropy;
pub mod events;
pub mod power;
pub mod timer;
pub mod virtio;

use crate::memory::GuestRam;
use ftvm_abi::mmio;

use crate::inputs::{Armed, At, Inputs};
use crate::misbehaviour::{Misbehaviour, Offence};
use crate::outcome::RunOutcome;
use crate::outputs::Outputs;
use virtio::block::Block;
use virtio::net::Net;
use virtio::{VirtioMmio, VirtioState};

use crate::snapshot::{Persist, SnapshotError};
use serde::{Deserialize, Serialize};

/// Event state shared by the timer and event devices: what is pending for the
/// guest and what is armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    /// Bits of `ftvm_abi::mmio::events` the guest has not read yet.
    pub pending: u64,
    /// The timer deadline in guest monotonic ns, if armed.
    pub timer_deadline_ns: Option<u64>,
}

/// Everything a device may touch while it handles one access.
pub struct DeviceCtx<'a> {
    /// Guest RAM (every access is bounds-checked by vm-memory).
    pub memory: &'a GuestRam,
    /// The source of every non-deterministic value.
    pub inputs: &'a mut dyn Inputs,
    /// The destination of every output.
    pub outputs: &'a mut dyn Outputs,
    /// Where the guest is.
    pub at: At,
    /// Pending events and armed timer.
    pub events: &'a mut EventState,
    /// Where guest misbehaviour is counted.
    pub misbehaviour: &'a mut Misbehaviour,
}

/// A 64-bit register access the bus has already checked for size and alignment.
pub type RegisterResult<T> = Result<T, RunOutcome>;

/// A platform device behind one MMIO window. Offsets are 8-aligned register offsets.
pub trait MmioDevice {
    /// A read of the register at `offset`; `Err` ends the run.
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64>;
    /// A write of `value` to the register at `offset`; `Err` ends the run.
    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()>;
}

/// The devices a VM has beyond the fixed platform ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSet {
    /// A NIC with this MAC.
    pub net_mac: Option<[u8; 6]>,
    /// A disk of this many bytes.
    pub disk_bytes: Option<u64>,
}

impl DeviceSet {
    /// The boot-info device bits for these devices.
    pub fn boot_info_bits(&self) -> u64 {
        let net = if self.net_mac.is_some() { ftvm_abi::boot::device::NET } else { 0 };
        let block = if self.disk_bytes.is_some() { ftvm_abi::boot::device::BLOCK } else { 0 };
        net | block
    }
}

/// All devices of a VM.
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
    /// The NIC, if any.
    pub net: Option<VirtioMmio<Net>>,
    /// The disk, if any.
    pub block: Option<VirtioMmio<Block>>,
}

/// Every device's saved state (the clock, timer and entropy devices have none).
#[derive(Serialize, Deserialize)]
pub struct DevicesState {
    console: console::ConsoleState,
    power: power::Power,
    events: events::Events,
    net: Option<VirtioState<virtio::net::NetState>>,
    block: Option<VirtioState<Block>>,
}

impl Devices {
    /// Every device's state.
    pub fn save(&self) -> DevicesState {
        DevicesState {
            console: self.console.save(),
            power: self.power.save(),
            events: self.events.save(),
            net: self.net.as_ref().map(VirtioMmio::save),
            block: self.block.as_ref().map(VirtioMmio::save),
        }
    }

    /// The devices in `state`.
    pub fn restore(state: DevicesState) -> Result<Self, SnapshotError> {
        Ok(Devices {
            console: console::Console::restore(state.console)?,
            power: power::Power::restore(state.power)?,
            clock: clock::Clock,
            timer: timer::Timer,
            entropy: entropy::Entropy,
            events: events::Events::restore(state.events)?,
            net: state
                .net
                .map(|net| VirtioMmio::restore(net, mmio::virtio::NET_BASE))
                .transpose()?,
            block: state
                .block
                .map(|block| VirtioMmio::restore(block, mmio::virtio::BLOCK_BASE))
                .transpose()?,
        })
    }

    /// The NIC and disk these devices have.
    pub fn set(&self) -> DeviceSet {
        DeviceSet {
            net_mac: self.net.as_ref().map(|net| net.device().mac()),
            disk_bytes: self.block.as_ref().map(|block| block.device().capacity_bytes()),
        }
    }

    /// The platform devices plus those in `set`.
    pub fn new(set: DeviceSet) -> Self {
        Devices {
            console: console::Console::default(),
            power: power::Power::default(),
            clock: clock::Clock,
            timer: timer::Timer,
            entropy: entropy::Entropy,
            events: events::Events::default(),
            net: set.net_mac.map(|mac| VirtioMmio::new(Net::new(mac), mmio::virtio::NET_BASE)),
            block: set
                .disk_bytes
                .map(|bytes| VirtioMmio::new(Block::new(bytes), mmio::virtio::BLOCK_BASE)),
        }
    }

    /// What could produce an asynchronous event now.
    pub fn armed(&self, events: &EventState, memory: &GuestRam) -> Armed {
        Armed {
            timer_deadline_ns: events.timer_deadline_ns,
            net_rx_capacity: self.net.as_ref().map_or(0, |net| net.rx_capacity(memory)),
            net_guest_offloads: self.net.as_ref().map_or(0, VirtioMmio::guest_offloads),
        }
    }

    /// Whether this access is a read of the event register's blocking `WAIT`.
    pub fn is_wait(addr: u64, size: usize, write: Option<u64>) -> bool {
        addr == mmio::events::BASE + mmio::events::WAIT && size == 8 && write.is_none()
    }

    fn platform_device_at(&mut self, window_base: u64) -> Option<&mut dyn MmioDevice> {
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
    /// the value a read yields (0 for writes). An access where no device
    /// lives, or a platform-device access that is not 8 bytes wide and
    /// aligned, is counted as misbehaviour and has no effect (reads yield all
    /// ones, as on a bus with nothing behind it).
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
        let virtio = match window_base {
            mmio::virtio::NET_BASE => {
                self.net.as_mut().map(|net| net.access(offset, size, write, ctx))
            }
            mmio::virtio::BLOCK_BASE => {
                self.block.as_mut().map(|block| block.access(offset, size, write, ctx))
            }
            _ => None,
        };
        if let Some(result) = virtio {
            return result;
        }
        let Some(device) = self.platform_device_at(window_base) else {
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
