//! The virtio-net driver and its smoltcp `phy::Device`.
//!
//! Built on virtio-drivers' split-ring `VirtQueue` and MMIO transport, with its
//! own buffer management so exits are batched: frames smoltcp transmits are
//! only queued, and [`NetDevice::flush`] notifies the device once for all of
//! them (the VMM sends them during that exit). Receive buffers are posted
//! once and re-posted as frames are consumed; the VMM fills them at landmarks
//! without being asked, so the receive queue is only notified when it ran low.
use alloc::boxed::Box;
use alloc::vec::Vec;

use bitflags::bitflags;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceType, Transport};

use super::{open_transport, KernelHal, VirtioError};

/// Descriptors per queue (the VMM offers up to 256).
pub const QUEUE_SIZE: usize = 256;
/// The largest Ethernet frame (no FCS) exchanged with the device.
pub const MAX_FRAME_BYTES: usize = 1514;
/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (num_buffers included).
const HEADER_BYTES: usize = 12;
/// One receive or transmit buffer: header plus the largest frame, rounded up.
const BUFFER_BYTES: usize = 2048;
const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;
/// Notify the receive queue after re-posting only when the device filled this
/// many buffers since the last notify: it may have been left with too few.
/// (The VMM reads the available ring at every landmark, so this is a hint.)
const RECEIVE_NOTIFY_AFTER_FILLED: usize = QUEUE_SIZE * 3 / 4;

bitflags! {
    /// The feature bits this driver accepts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct NetFeatures: u64 {
        /// The device has a MAC address in its config space.
        const MAC = 1 << 5;
        /// Modern (virtio 1.x) device.
        const VERSION_1 = 1 << 32;
    }
}

/// Counters for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub frames_received: u64,
    pub frames_sent: u64,
    /// Frames smoltcp produced while the transmit queue was stuck.
    pub frames_dropped: u64,
    /// Used receive entries that were malformed (shorter than the header).
    pub bad_receives: u64,
    pub transmit_notifies: u64,
    pub receive_notifies: u64,
}

/// A fixed set of equal buffers in one heap allocation.
struct BufferPool {
    memory: Box<[u8]>,
}

impl BufferPool {
    fn new(count: usize) -> Self {
        BufferPool { memory: alloc::vec![0u8; count * BUFFER_BYTES].into_boxed_slice() }
    }

    fn slot(&mut self, slot: usize) -> &mut [u8] {
        &mut self.memory[slot * BUFFER_BYTES..(slot + 1) * BUFFER_BYTES]
    }
}

/// The receive queue and its buffers.
struct ReceiveRing {
    queue: VirtQueue<KernelHal, QUEUE_SIZE>,
    buffers: BufferPool,
    slot_of_token: [u16; QUEUE_SIZE],
    /// Buffers the device filled since the last receive notify.
    filled_since_notify: usize,
}

impl ReceiveRing {
    fn post(&mut self, slot: usize) {
        let buffer = self.buffers.slot(slot);
        // SAFETY: the buffer belongs to this ring and is not touched again
        // until `pop` hands it out after the device returned it.
        let token = unsafe { self.queue.add(&[], &mut [buffer]) }
            .expect("a receive slot always has a free descriptor");
        self.slot_of_token[usize::from(token)] = slot as u16;
    }

    /// The next filled buffer: `(slot, frame_bytes)`; the frame starts after the header.
    fn pop(&mut self, stats: &mut NetStats) -> Option<(usize, usize)> {
        loop {
            let token = self.queue.peek_used()?;
            let slot = usize::from(self.slot_of_token[usize::from(token)]);
            let buffer = self.buffers.slot(slot);
            // SAFETY: `token` was returned by `add` for exactly this buffer.
            let used_bytes = unsafe { self.queue.pop_used(token, &[], &mut [buffer]) }
                .expect("the peeked token is next in the used ring");
            self.filled_since_notify += 1;
            let used_bytes = used_bytes as usize;
            if (HEADER_BYTES..=BUFFER_BYTES).contains(&used_bytes) {
                stats.frames_received += 1;
                return Some((slot, used_bytes - HEADER_BYTES));
            }
            stats.bad_receives += 1;
            self.post(slot);
        }
    }
}

/// The transmit queue and its buffers.
struct TransmitRing {
    queue: VirtQueue<KernelHal, QUEUE_SIZE>,
    buffers: BufferPool,
    slot_of_token: [u16; QUEUE_SIZE],
    length_of_slot: [u16; QUEUE_SIZE],
    free_slots: Vec<u16>,
    /// Frames queued since the last notify.
    unnotified: usize,
}

impl TransmitRing {
    /// Notifies the device of queued frames (one exit) and takes back every
    /// buffer it has finished with.
    fn flush(&mut self, transport: &mut MmioTransport<'static>, stats: &mut NetStats) {
        if self.unnotified > 0 {
            if self.queue.should_notify() {
                transport.notify(QUEUE_TRANSMIT);
                stats.transmit_notifies += 1;
            }
            self.unnotified = 0;
        }
        while let Some(token) = self.queue.peek_used() {
            let slot = usize::from(self.slot_of_token[usize::from(token)]);
            let length = usize::from(self.length_of_slot[slot]);
            let buffer = &self.buffers.slot(slot)[..length];
            // SAFETY: `token` was returned by `add` for exactly this buffer.
            unsafe { self.queue.pop_used(token, &[buffer], &mut []) }
                .expect("the peeked token is next in the used ring");
            self.free_slots.push(slot as u16);
        }
    }

    /// Fills a free buffer with `header + frame` through `fill` and queues it.
    fn queue_frame<R>(
        &mut self,
        transport: &mut MmioTransport<'static>,
        stats: &mut NetStats,
        frame_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        assert!(frame_bytes <= BUFFER_BYTES - HEADER_BYTES, "frame of {frame_bytes} bytes");
        if self.free_slots.is_empty() {
            self.flush(transport, stats);
        }
        let Some(slot) = self.free_slots.pop() else {
            // The device kept every buffer: build the frame and drop it.
            stats.frames_dropped += 1;
            let mut scratch = alloc::vec![0u8; frame_bytes];
            return fill(&mut scratch);
        };
        let slot = usize::from(slot);
        let length = HEADER_BYTES + frame_bytes;
        let buffer = &mut self.buffers.slot(slot)[..length];
        buffer[..HEADER_BYTES].fill(0);
        let result = fill(&mut buffer[HEADER_BYTES..]);
        self.length_of_slot[slot] = length as u16;
        let buffer = &self.buffers.slot(slot)[..length];
        // SAFETY: the slot was free, so nothing else uses the buffer until the
        // device returns it and `flush` takes it back.
        let token = unsafe { self.queue.add(&[buffer], &mut []) }
            .expect("a free transmit slot always has a free descriptor");
        self.slot_of_token[usize::from(token)] = slot as u16;
        self.unnotified += 1;
        stats.frames_sent += 1;
        result
    }
}

/// The virtio-net device.
pub struct NetDevice {
    transport: MmioTransport<'static>,
    receive: ReceiveRing,
    transmit: TransmitRing,
    mac: [u8; 6],
    stats: NetStats,
}

impl NetDevice {
    /// Brings up the NIC at its window. Call only when the boot info lists it.
    pub fn open() -> Result<Box<Self>, VirtioError> {
        let mut transport = open_transport(ftvm_abi::mmio::virtio::NET_BASE, DeviceType::Network)?;
        let negotiated = transport.begin_init(NetFeatures::MAC | NetFeatures::VERSION_1);
        if !negotiated.contains(NetFeatures::VERSION_1) {
            transport.set_status(virtio_drivers::transport::DeviceStatus::FAILED);
            return Err(VirtioError::Driver(virtio_drivers::Error::Unsupported));
        }
        let mut mac = [0u8; 6];
        if negotiated.contains(NetFeatures::MAC) {
            for (offset, byte) in mac.iter_mut().enumerate() {
                *byte = transport.read_config_space::<u8>(offset)?;
            }
        }
        let receive_queue = VirtQueue::new(&mut transport, QUEUE_RECEIVE, false, false)?;
        let transmit_queue = VirtQueue::new(&mut transport, QUEUE_TRANSMIT, false, false)?;
        transport.finish_init();

        let mut device = Box::new(NetDevice {
            transport,
            receive: ReceiveRing {
                queue: receive_queue,
                buffers: BufferPool::new(QUEUE_SIZE),
                slot_of_token: [0; QUEUE_SIZE],
                filled_since_notify: 0,
            },
            transmit: TransmitRing {
                queue: transmit_queue,
                buffers: BufferPool::new(QUEUE_SIZE),
                slot_of_token: [0; QUEUE_SIZE],
                length_of_slot: [0; QUEUE_SIZE],
                free_slots: (0..QUEUE_SIZE as u16).rev().collect(),
                unnotified: 0,
            },
            mac,
            stats: NetStats::default(),
        });
        for slot in 0..QUEUE_SIZE {
            device.receive.post(slot);
        }
        device.transport.notify(QUEUE_RECEIVE);
        Ok(device)
    }

    /// The MAC address from the device's config space (zero if it has none).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters since the device came up.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Hands queued frames to the device (one exit when there are any) and
    /// tells it about re-posted receive buffers if it may have run low.
    pub fn flush(&mut self) {
        self.transmit.flush(&mut self.transport, &mut self.stats);
        let receive = &mut self.receive;
        if receive.filled_since_notify >= RECEIVE_NOTIFY_AFTER_FILLED {
            if receive.queue.should_notify() {
                self.transport.notify(QUEUE_RECEIVE);
                self.stats.receive_notifies += 1;
            }
            receive.filled_since_notify = 0;
        }
    }
}

/// A received frame, lent to smoltcp; its buffer is re-posted when dropped.
pub struct RxToken<'a> {
    ring: &'a mut ReceiveRing,
    slot: usize,
    frame_bytes: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let buffer = self.ring.buffers.slot(self.slot);
        f(&buffer[HEADER_BYTES..HEADER_BYTES + self.frame_bytes])
    }
}

impl Drop for RxToken<'_> {
    fn drop(&mut self) {
        self.ring.post(self.slot);
    }
}

/// Permission to queue one frame for transmission.
pub struct TxToken<'a> {
    ring: &'a mut TransmitRing,
    transport: &'a mut MmioTransport<'static>,
    stats: &'a mut NetStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.ring.queue_frame(self.transport, self.stats, len, f)
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (slot, frame_bytes) = self.receive.pop(&mut self.stats)?;
        Some((
            RxToken { ring: &mut self.receive, slot, frame_bytes },
            TxToken {
                ring: &mut self.transmit,
                transport: &mut self.transport,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.transmit.free_slots.is_empty() {
            self.transmit.flush(&mut self.transport, &mut self.stats);
            if self.transmit.free_slots.is_empty() {
                return None;
            }
        }
        Some(TxToken {
            ring: &mut self.transmit,
            transport: &mut self.transport,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = MAX_FRAME_BYTES;
        capabilities
    }
}
