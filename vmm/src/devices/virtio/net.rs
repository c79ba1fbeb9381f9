//! virtio-net: one receive and one transmit queue, the MAC in config space,
//! no offloads. Transmitted frames go to the outputs (a TAP, or a replay's
//! sink) and are counted and hashed here; received frames are delivered by
//! the VMM at landmarks, one per posted receive buffer.
use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use xxhash_rust::xxh3::Xxh3;

use super::{QueueFault, VirtioDevice, VirtioMmio, FEATURE_VERSION_1};
use crate::devices::DeviceCtx;
use ftvm_abi::mmio::events;

const DEVICE_ID_NET: u32 = 1;
const FEATURE_MAC: u64 = 1 << 5;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
/// virtio_net_hdr with VERSION_1: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const HEADER_BYTES: usize = 12;
/// The largest frame (header included) accepted for transmission.
const MAX_TX_BYTES: usize = HEADER_BYTES + 65_535;

/// The network device model.
pub struct Net {
    mac: [u8; 6],
    tx_hash: Xxh3,
    tx_frames: u64,
    rx_frames: u64,
    rx_truncated: u64,
}

impl Net {
    /// A NIC with this MAC address.
    pub fn new(mac: [u8; 6]) -> Self {
        Net { mac, tx_hash: Xxh3::new(), tx_frames: 0, rx_frames: 0, rx_truncated: 0 }
    }

    /// Frames the guest transmitted, and a hash of all of them in order.
    pub fn transmitted(&self) -> (u64, u64) {
        (self.tx_frames, self.tx_hash.digest())
    }

    /// Frames delivered to the guest.
    pub fn received(&self) -> u64 {
        self.rx_frames
    }

    fn transmit_all(&mut self, queue: &mut Queue, ctx: &mut DeviceCtx) -> Result<bool, QueueFault> {
        let memory = ctx.memory;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut reader = Reader::new(memory, chain).map_err(|_| QueueFault::Guest)?;
            let len = reader.available_bytes();
            if !(HEADER_BYTES..=MAX_TX_BYTES).contains(&len) {
                return Err(QueueFault::Guest);
            }
            let mut bytes = vec![0u8; len];
            reader.read_exact(&mut bytes).map_err(|_| QueueFault::Guest)?;
            let frame = &bytes[HEADER_BYTES..];
            self.tx_hash.update(&(frame.len() as u64).to_le_bytes());
            self.tx_hash.update(frame);
            self.tx_frames += 1;
            ctx.outputs.transmit(frame);
            queue.add_used(memory, head, 0).map_err(|_| QueueFault::Guest)?;
        }
        // Transmit completions raise no event: the driver reclaims its
        // buffers on its next poll anyway, and an event would cost the guest
        // one more exit per batch (its next wait would return at once).
        Ok(false)
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        FEATURE_VERSION_1 | FEATURE_MAC
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        QUEUE_SIZES
    }

    fn config(&self) -> Vec<u8> {
        self.mac.to_vec()
    }

    fn event_bit(&self) -> u64 {
        events::NET
    }

    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        ctx: &mut DeviceCtx,
    ) -> Result<bool, QueueFault> {
        match index {
            TX => self.transmit_all(&mut queues[TX], ctx),
            // New receive buffers: frames are delivered at the next landmark.
            _ => Ok(false),
        }
    }
}

impl VirtioMmio<Net> {
    /// How many frames the guest can take now (posted receive buffers).
    pub fn rx_capacity(&self, memory: &GuestMemoryMmap) -> usize {
        if !self.is_live() {
            return 0;
        }
        let queue = &self.queues[RX];
        if !queue.ready() {
            return 0;
        }
        match queue.avail_idx(memory, std::sync::atomic::Ordering::Acquire) {
            Ok(avail) => usize::from((avail - std::num::Wrapping(queue.next_avail())).0),
            Err(_) => 0,
        }
    }

    /// Writes `frame` into the next receive buffer. The caller checked
    /// `rx_capacity`; a buffer too small for the frame gets it truncated.
    pub fn deliver(&mut self, frame: &[u8], ctx: &mut DeviceCtx) -> Result<(), QueueFault> {
        let memory = ctx.memory;
        let (net, queues) = self.device_and_queues();
        let queue = &mut queues[RX];
        let chain = queue.pop_descriptor_chain(memory).ok_or(QueueFault::Guest)?;
        let head = chain.head_index();
        let mut writer = Writer::new(memory, chain).map_err(|_| QueueFault::Guest)?;
        let room = writer.available_bytes();
        if room < HEADER_BYTES {
            return Err(QueueFault::Guest);
        }
        let mut header = [0u8; HEADER_BYTES];
        header[10] = 1; // num_buffers
        let fits = frame.len().min(room - HEADER_BYTES);
        if fits < frame.len() {
            net.rx_truncated += 1;
        }
        writer.write_all(&header).map_err(|_| QueueFault::Guest)?;
        writer.write_all(&frame[..fits]).map_err(|_| QueueFault::Guest)?;
        queue
            .add_used(memory, head, (HEADER_BYTES + fits) as u32)
            .map_err(|_| QueueFault::Guest)?;
        net.rx_frames += 1;
        self.signal_used(ctx);
        Ok(())
    }
}
