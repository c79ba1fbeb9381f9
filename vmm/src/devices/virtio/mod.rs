//! virtio over MMIO (virtio 1.x, "modern", Version 2): the transport
//! registers, queue setup and the feature handshake, shared by every virtio
//! device; the split rings themselves are rust-vmm's `virtio-queue`.
//!
//! There are no interrupts on this platform (DESIGN §3): a queue notification
//! is processed synchronously during the guest's QueueNotify write, and when a
//! device puts buffers in a used ring it sets the device's bit in the
//! pending-event mask instead of raising an interrupt. Every address, size
//! and index the guest supplies is validated (virtio-queue checks descriptor
//! chains against guest RAM); a guest that misprograms a device gets the
//! DEVICE_NEEDS_RESET status, never a VMM crash.

pub mod block;
pub mod net;

use crate::memory::GuestRam;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::DeviceCtx;
use crate::misbehaviour::Offence;
use crate::outcome::RunOutcome;
use crate::snapshot::{Persist, SnapshotError};

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// "FTVM".
const VENDOR_ID: u32 = 0x4d56_5446;
/// virtio 1.x: the only feature set this transport speaks.
pub const FEATURE_VERSION_1: u64 = 1 << 32;

mod register {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

mod status {
    pub const FEATURES_OK: u32 = 8;
    pub const DRIVER_OK: u32 = 4;
    pub const NEEDS_RESET: u32 = 0x40;
}

/// What a virtio device model provides to the transport.
pub trait VirtioDevice {
    /// The virtio device type (1 net, 2 block).
    fn device_id(&self) -> u32;
    /// Feature bits offered (VERSION_1 included).
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &'static [u16];
    /// The features the driver accepted (0 after a reset).
    fn set_driver_features(&mut self, _features: u64) {}
    /// The device-specific configuration space.
    fn config(&self) -> Vec<u8>;
    /// The pending-event bit this device raises when it uses buffers.
    fn event_bit(&self) -> u64;
    /// Processes queue `index` after the guest notified it. Returns whether
    /// buffers were used; `Err` ends the run (a failed input or output), and
    /// a misbehaving guest is recorded in `ctx` and answered with `Ok(false)`
    /// or a needs-reset status via [`QueueFault`].
    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        ctx: &mut DeviceCtx,
    ) -> Result<bool, QueueFault>;
}

/// Why a queue could not be processed.
#[derive(Debug)]
pub enum QueueFault {
    /// The guest broke the virtio contract; the device needs a reset.
    Guest,
    /// The run cannot go on.
    Fatal(RunOutcome),
}

impl From<RunOutcome> for QueueFault {
    fn from(outcome: RunOutcome) -> Self {
        QueueFault::Fatal(outcome)
    }
}

/// A queue's saved state (virtio-queue's `QueueState`, which has no serde).
#[derive(Serialize, Deserialize)]
pub struct SavedQueue {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// The transport's saved state, with its device's.
#[derive(Serialize, Deserialize)]
pub struct VirtioState<S> {
    device: S,
    queues: Vec<SavedQueue>,
    registers: Registers,
}

/// The transport's registers (also their saved state).
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
struct Registers {
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice + Persist> VirtioMmio<D> {
    /// The transport's and its device's state.
    pub fn save(&self) -> VirtioState<D::State> {
        let queues = self
            .queues
            .iter()
            .map(|queue| {
                let state = queue.state();
                SavedQueue {
                    max_size: state.max_size,
                    next_avail: state.next_avail,
                    next_used: state.next_used,
                    event_idx_enabled: state.event_idx_enabled,
                    size: state.size,
                    ready: state.ready,
                    desc_table: state.desc_table,
                    avail_ring: state.avail_ring,
                    used_ring: state.used_ring,
                }
            })
            .collect();
        VirtioState { device: self.device.save(), queues, registers: self.registers }
    }

    /// The transport in `state`, at `base`; queues are checked as virtio-queue checks them.
    pub fn restore(state: VirtioState<D::State>, base: u64) -> Result<Self, SnapshotError> {
        let device = D::restore(state.device)?;
        if state.queues.len() != device.queue_max_sizes().len() {
            return Err(SnapshotError::State(format!(
                "{} queues saved for a device with {}",
                state.queues.len(),
                device.queue_max_sizes().len()
            )));
        }
        let queues = state
            .queues
            .into_iter()
            .map(|saved| {
                Queue::try_from(virtio_queue::QueueState {
                    max_size: saved.max_size,
                    next_avail: saved.next_avail,
                    next_used: saved.next_used,
                    event_idx_enabled: saved.event_idx_enabled,
                    size: saved.size,
                    ready: saved.ready,
                    desc_table: saved.desc_table,
                    avail_ring: saved.avail_ring,
                    used_ring: saved.used_ring,
                })
                .map_err(|error| SnapshotError::State(format!("a saved queue: {error:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(VirtioMmio { device, queues, base, registers: state.registers })
    }
}

/// A virtio device behind the MMIO transport.
pub struct VirtioMmio<D: VirtioDevice> {
    device: D,
    queues: Vec<Queue>,
    base: u64,
    registers: Registers,
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// The transport for `device`, whose window starts at `base`.
    pub fn new(device: D, base: u64) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue sizes are powers of two"))
            .collect();
        VirtioMmio { device, queues, base, registers: Registers::default() }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model and its queues, for work the VMM starts (frame delivery).
    pub fn device_and_queues(&mut self) -> (&mut D, &mut [Queue]) {
        (&mut self.device, &mut self.queues)
    }

    /// Whether the driver finished setup and the device has not failed.
    pub fn is_live(&self) -> bool {
        self.registers.status & status::DRIVER_OK != 0
            && self.registers.status & status::NEEDS_RESET == 0
    }

    fn reset(&mut self) {
        self.registers.status = 0;
        self.registers.driver_features = 0;
        self.registers.queue_select = 0;
        self.registers.interrupt_status = 0;
        self.queues.iter_mut().for_each(QueueT::reset);
        self.device.set_driver_features(0);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.registers.queue_select as usize)
    }

    /// Marks the device failed after the guest broke the contract.
    pub fn needs_reset(&mut self, ctx: &mut DeviceCtx) {
        ctx.misbehaviour.record(Offence::BadVirtioUse, self.base, 0);
        self.registers.status |= status::NEEDS_RESET;
    }

    /// Records that buffers were used: the guest learns it from the event mask.
    pub fn signal_used(&mut self, ctx: &mut DeviceCtx) {
        self.registers.interrupt_status |= 1;
        ctx.events.pending |= self.device.event_bit();
    }

    fn notify(&mut self, index: u64, ctx: &mut DeviceCtx) -> Result<(), RunOutcome> {
        let index = index as usize;
        if !self.is_live() || self.queues.get(index).is_none_or(|queue| !queue.ready()) {
            ctx.misbehaviour.record(
                Offence::BadVirtioUse,
                self.base + register::QUEUE_NOTIFY,
                index as u64,
            );
            return Ok(());
        }
        match self.device.process(index, &mut self.queues, ctx) {
            Ok(true) => self.signal_used(ctx),
            Ok(false) => {}
            Err(QueueFault::Guest) => self.needs_reset(ctx),
            Err(QueueFault::Fatal(outcome)) => return Err(outcome),
        }
        Ok(())
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        let features = self.device.features();
        Some(match offset {
            register::MAGIC => MAGIC,
            register::VERSION => VERSION,
            register::DEVICE_ID => self.device.device_id(),
            register::VENDOR_ID => VENDOR_ID,
            register::DEVICE_FEATURES => match self.registers.device_features_select {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            register::QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |queue| u32::from(queue.max_size()))
            }
            register::QUEUE_READY => {
                self.selected_queue().map_or(0, |queue| u32::from(queue.ready()))
            }
            register::INTERRUPT_STATUS => self.registers.interrupt_status,
            register::STATUS => self.registers.status,
            register::CONFIG_GENERATION => 0,
            _ => return None,
        })
    }

    fn write_register(&mut self, offset: u64, value: u32, memory: &GuestRam) -> bool {
        let set_queue_address = |queue: &mut Queue, offset: u64, value: u32| match offset {
            register::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            register::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            register::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            register::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            register::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            _ => queue.set_used_ring_address(None, Some(value)),
        };
        match offset {
            register::DEVICE_FEATURES_SEL => self.registers.device_features_select = value,
            register::DRIVER_FEATURES_SEL => self.registers.driver_features_select = value,
            register::DRIVER_FEATURES => match self.registers.driver_features_select {
                0 => {
                    self.registers.driver_features =
                        (self.registers.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.registers.driver_features =
                        (self.registers.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => return false,
            },
            register::QUEUE_SEL => self.registers.queue_select = value,
            register::QUEUE_NUM => match self.selected_queue() {
                Some(queue) => queue.set_size(value as u16),
                None => return false,
            },
            register::QUEUE_READY => match self.selected_queue() {
                Some(queue) => {
                    queue.set_ready(value == 1);
                    // virtio-queue checks size, alignment and that the rings lie in RAM.
                    if value == 1 && !queue.is_valid(memory) {
                        queue.set_ready(false);
                        return false;
                    }
                }
                None => return false,
            },
            register::QUEUE_DESC_LOW..=register::QUEUE_DEVICE_HIGH
                if matches!(
                    offset,
                    register::QUEUE_DESC_LOW
                        | register::QUEUE_DESC_HIGH
                        | register::QUEUE_DRIVER_LOW
                        | register::QUEUE_DRIVER_HIGH
                        | register::QUEUE_DEVICE_LOW
                        | register::QUEUE_DEVICE_HIGH
                ) =>
            {
                match self.selected_queue() {
                    Some(queue) => set_queue_address(queue, offset, value),
                    None => return false,
                }
            }
            register::INTERRUPT_ACK => self.registers.interrupt_status &= !value,
            register::STATUS => return self.write_status(value),
            _ => return false,
        }
        true
    }

    fn write_status(&mut self, value: u32) -> bool {
        if value == 0 {
            self.reset();
            return true;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.registers.driver_features & !offered == 0
                && self.registers.driver_features & FEATURE_VERSION_1 != 0;
            if acceptable {
                self.device.set_driver_features(self.registers.driver_features);
            } else {
                // The spec's answer: FEATURES_OK does not stick.
                value &= !status::FEATURES_OK;
            }
        }
        self.registers.status = value | (self.registers.status & status::NEEDS_RESET);
        true
    }
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// One MMIO access at `offset` in the window; `write` is `Some` for writes.
    pub fn access(
        &mut self,
        offset: u64,
        size: usize,
        write: Option<u64>,
        ctx: &mut DeviceCtx,
    ) -> Result<u64, RunOutcome> {
        if offset >= register::CONFIG {
            return Ok(self.config_access(offset - register::CONFIG, size, write, ctx));
        }
        if size != 4 || !offset.is_multiple_of(4) {
            ctx.misbehaviour.record(Offence::BadAccessSize, self.base + offset, size as u64);
            return Ok(u64::MAX);
        }
        match write {
            None => Ok(self.read_register(offset).map_or_else(
                || {
                    ctx.misbehaviour.record(Offence::NoSuchRegister, self.base + offset, 0);
                    0
                },
                u64::from,
            )),
            Some(value) if offset == register::QUEUE_NOTIFY => {
                self.notify(value & 0xffff_ffff, ctx).map(|()| 0)
            }
            Some(value) => {
                if !self.write_register(offset, value as u32, ctx.memory) {
                    ctx.misbehaviour.record(Offence::NoSuchRegister, self.base + offset, value);
                }
                Ok(0)
            }
        }
    }

    fn config_access(
        &mut self,
        offset: u64,
        size: usize,
        write: Option<u64>,
        ctx: &mut DeviceCtx,
    ) -> u64 {
        let config = self.device.config();
        let in_range = (offset as usize).checked_add(size).is_some_and(|end| end <= config.len());
        if write.is_some() || !in_range || size > 8 {
            // The configuration of both devices is read-only to the driver.
            ctx.misbehaviour.record(
                Offence::NoSuchRegister,
                self.base + register::CONFIG + offset,
                write.unwrap_or(0),
            );
            return 0;
        }
        let mut bytes = [0u8; 8];
        bytes[..size].copy_from_slice(&config[offset as usize..offset as usize + size]);
        u64::from_le_bytes(bytes)
    }
}
#[cfg(test)]
mod tests;
